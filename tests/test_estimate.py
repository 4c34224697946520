"""zigzag/estimate.py: a run's work in counts and a config's seconds from per-epoch timings, computed by hand."""

import pytest

from zigzag import estimate

PRESET = {
    "datasets": {"c": {"source": "cifar10"}},  # 50,000 training and 10,000 test images
    "runs": {
        "gd": {"dataset": "c", "model": "cnn", "batch_norm": False, "lr": 0.1, "steps": 10, "eval_every": 5,
               "micro_batch": 100},
        "sgd": {"dataset": "c", "model": "cnn", "batch_norm": False, "lr": 0.1, "optimizer": "sgd",
                "batch_size": 20_000, "epochs": 2, "seeds": [0, 1], "eval_every": 1, "micro_batch": 100},
        "eos": {"dataset": "c", "model": "cnn", "batch_norm": False, "lr": 0.1, "steps": 10, "micro_batch": 100,
                "sharpness": {"every": "every:4", "subset": 5000}},
    },
}


def test_preset_estimate_follows_the_preset():
    timings = {("cnn", False, 100): {"epoch_s": 2.0, "forward_s": 1.0, "hvp_s": 3.0}}
    rows = {r["run"]: r for r in estimate.preset_hours(PRESET, timings)}
    # GD: 10 epochs x 2 s + evaluations at steps 0, 5, 9 over 10,000 test images (1 s per 50,000)
    assert rows["gd"]["seconds"] == pytest.approx(10 * 2 + 3 * 0.2)
    # SGD: 2 batches of 20,000 per epoch, 4 steps over 80,000 images, 4 evaluations, 2 seeds
    assert rows["sgd"]["steps"] == 4 and rows["sgd"]["seeds"] == 2
    assert rows["sgd"]["seconds"] == pytest.approx(2 * (80_000 / 50_000 * 2 + 4 * 0.2))
    # sharpness at steps 0, 4, 8: one cold solve (21 products) and two warm ones (9 each) on 5,000 images; the
    # default eval_every (10) evaluates at steps 0 and 9
    assert rows["eos"]["seconds"] == pytest.approx(10 * 2 + 2 * 0.2 + (21 + 2 * 9) * 0.1 * 3.0)


def test_preset_estimate_prices_each_run_of_a_sweep_and_names_its_sweep():
    timings = {("cnn", False, 100): {"epoch_s": 2.0, "forward_s": 1.0, "hvp_s": 3.0}}
    preset = {**PRESET, "sweeps": {"s": {"base": "eos", "lr": [0.05, 0.2], "seeds": [0, 1]}}}
    rows = {r["run"]: r for r in estimate.preset_hours(preset, timings)}
    assert rows["s-lr0.05"]["sweep"] == rows["s-lr0.2"]["sweep"] == "s" and rows["eos"]["sweep"] is None
    assert rows["s-lr0.2"]["seconds"] == pytest.approx(2 * rows["eos"]["seconds"])  # the base's cost, two seeds


def test_run_work_counts_steps_images_evaluations_and_solves():
    run = {"optimizer": "gd", "steps": 10, "eval_every": 3, "sharpness": {"every": "0,9"}}
    # evaluations at 0, 3, 6, 9 (the last among them); two solves on the whole set
    assert estimate.run_work(run, 100) == estimate.RunWork(10, 1000, 4, 2, 100)
    run.update(eval_every=4, sharpness={})  # 0, 4, 8 and the last, 9; no sharpness
    assert estimate.run_work(run, 100) == estimate.RunWork(10, 1000, 4, 0, 100)
    sgd = {"optimizer": "sgd", "epochs": 3, "batch_size": 30, "eval_every": 100, "sharpness": {"every": "every:2",
                                                                                                 "subset": 40}}
    # 3 whole batches of 30 per epoch (10 images left out), 9 steps; solves at 0, 2, 4, 6, 8
    assert estimate.run_work(sgd, 100) == estimate.RunWork(9, 270, 2, 5, 40)
