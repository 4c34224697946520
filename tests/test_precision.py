"""Precision modes: the backend flags each sets (and restores), what a trajectory records, CPU = float32."""

import copy
import json

import numpy as np
import pytest
import torch
from conftest import zigzag_cli, zigzag_main

from zigzag import store
from zigzag.precision import Precision
from zigzag.runchoices import PRECISIONS
from zigzag.runconfig import RunConfig
from zigzag.step import accumulate_gradient
from zigzag.trainer import Trainer

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def backend_flags():
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("mode, device, tf32, autocast, channels_last", [
    ("fp32", CUDA, False, "none", False),
    ("tf32", CUDA, True, "none", True),
    ("bf16", CUDA, True, "bfloat16", True),
    ("fp32", CPU, False, "none", True),
    ("tf32", CPU, False, "none", True),
    ("bf16", CPU, False, "none", True),
])
@pytest.mark.parametrize("before", [(True, False), (False, True)])
def test_each_mode_sets_its_flags_and_restores_the_previous_ones(mode, device, tf32, autocast, channels_last,
                                                                  before):
    """Setting the flags needs no GPU, so the CUDA rows run on the CPU too."""
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    precision = Precision(mode, device)
    try:
        with pytest.raises(RuntimeError, match="inside"), precision.applied() as flags:
            assert backend_flags() == (tf32, tf32)
            assert flags == {"cudnn.allow_tf32": tf32, "cuda.matmul.allow_tf32": tf32,
                             "float32_matmul_precision": "high" if tf32 else "highest",
                             "autocast": autocast, "channels_last": channels_last, "device": str(device)}
            raise RuntimeError("inside")  # restored on the way out of an error too
        assert backend_flags() == before
        assert (precision.autocast_dtype is not None) == (autocast != "none")
        assert precision.memory_format() == (torch.channels_last if channels_last else torch.contiguous_format)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # torch defaults


def test_mode_and_flags_are_recorded_and_shown_by_inspect(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "t.h5"
    zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.05",
                "--steps", "2", "--micro-batch", "48", "--device", "cpu", "--precision", "bf16", "--quiet",
                "--out", out)
    traj = store.read_trajectory(out)
    assert traj.attrs["precision"] == traj.config["precision"] == "bf16"
    flags = json.loads(traj.attrs["backend_flags"])
    assert flags == {"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False,
                     "float32_matmul_precision": "highest", "autocast": "none", "channels_last": True,
                     "device": "cpu"}
    shown = zigzag_main(capsys, "inspect", out).stdout
    assert "  precision: bf16" in shown and '"autocast": "none"' in shown


def test_on_a_cpu_every_mode_computes_the_same_float32_numbers(tiny_dataset, tmp_path):
    before = backend_flags()
    runs = {}
    for mode in PRECISIONS:
        config = RunConfig.from_dict(dict(dataset=tiny_dataset, model="cnn", width=0.5, lr=0.05, steps=3, lags=2,
                                          micro_batch=40, eval_every=2, device="cpu", precision=mode))
        Trainer(config, tmp_path / f"{mode}.h5", progress=False).run()
        assert backend_flags() == before
        runs[mode] = store.read_trajectory(tmp_path / f"{mode}.h5")
    for mode in ("tf32", "bf16"):
        for name in ("loss", "accuracy", "grad_norm", "dot", "opposite", "test_loss"):
            np.testing.assert_array_equal(runs[mode].steps[name], runs["fp32"].steps[name], err_msg=f"{mode} {name}")


def test_unknown_precision_is_one_line_and_exit_2(tiny_dataset, tmp_path, capsys):
    result = zigzag_main(capsys, "train", "--dataset", tiny_dataset, "--model", "cnn", "--lr", "0.1", "--steps", "1",
                         "--precision", "fp16", "--out", tmp_path / "t.h5", check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "zigzag: error: invalid precision='fp16': must be one of fp32, tf32, bf16"


def test_on_a_cpu_the_weights_are_channels_last_and_the_flat_gradient_keeps_the_parameters_order(tiny_dataset,
                                                                                                 tmp_path):
    config = RunConfig.from_dict(dict(dataset=tiny_dataset, model="cnn", width=0.5, lr=0.05, steps=1, lags=2,
                                      micro_batch=16, device="cpu"))
    trainer = Trainer(config, tmp_path / "t.h5", progress=False)
    weights = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert any(not p.is_contiguous() for p in weights)  # (one input channel is both layouts at once)
    x, y = trainer.data.train_x, trainer.data.train_y
    trainer.open_trajectory()
    gradient = trainer.recorder.gradients
    gradient.zero_()
    accumulate_gradient(trainer.model, x, y, config.micro_batch)
    trainer.recorder.close()
    assert gradient.intact()
    reference = copy.deepcopy(trainer.model).to(memory_format=torch.contiguous_format)
    for p in reference.parameters():
        p.grad = None
    accumulate_gradient(reference, x.clone(memory_format=torch.contiguous_format), y, config.micro_batch)
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert (gradient.flat - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_cpu_run_says_nothing_of_the_gradient_layout(tiny_dataset, tmp_path):
    """The default-layout gradient views of channels_last weights are deliberate: torch's warning is not shown."""
    result = zigzag_cli("train", "--dataset", tiny_dataset, "--model", "cnn", "--width", "0.5", "--lr", "0.05",
                        "--steps", "1", "--micro-batch", "48", "--device", "cpu", "--quiet", "--out", tmp_path / "t.h5")
    assert "layout contract" not in result.stderr
    assert result.stderr == ""
