"""The claims table on constructed runs whose verdicts are known."""

import numpy as np

from zigzag import analysis, store
from zigzag.claims import FAILS, HOLDS, NOT_RUN, claims_table

THRESHOLDS = {"early_steps": 10, "smooth_start": 0.5, "zigzag_strong": -0.5, "sign_flip": 0.8,
              "late_smooth": 0.9, "late_fraction": 0.1, "loss_share": 0.25, "batch_gap": 0.3, "gawu_gap": 2,
              "eos_gap": 10}


def write_gd_run(folder, signs, *, lr=0.1, sharpness=None, loss=None, flip_fraction=1.0, change_point=-1,
                 final_accuracy=0.9):
    """A GD run whose gradient k is signs[k] * g on its first ``flip_fraction`` of entries (made 100x
    larger, so they dominate the cosine) and g elsewhere; its analysis (h = 5).
    Returns [(name, trajectory, analysis)]."""
    folder.mkdir(parents=True)
    g = np.random.default_rng(0).standard_normal(200)
    flipping = np.arange(200) < flip_fraction * 200
    g[flipping] *= 100
    grads = np.array([np.where(flipping, s * g, g) for s in signs])
    grads = np.array(grads)
    lags, n = 4, len(signs)
    extra = store.SHARPNESS_SERIES if sharpness is not None else None
    path, apath = folder / "trajectory.h5", folder / "analysis.h5"
    writer = store.TrajectoryWriter.create(path, {"optimizer": "gd"}, n_params=200, n_train=10, lags=lags,
                                           extra_series=extra, attrs={"batches_per_epoch": 1, "total_steps": n})
    loss = np.linspace(2.0, 0.1, n) if loss is None else loss
    for k in range(n):
        dot = np.array([grads[k] @ grads[k - l] if k >= l else np.nan for l in range(lags + 1)])
        opp = np.array([np.mean(grads[k] * grads[k - l] < 0) if k >= l else np.nan for l in range(lags + 1)])
        row = {"loss": loss[k], "lr": lr, "epoch": k, "dot": dot, "opposite": opp,
               "test_accuracy": final_accuracy if k == n - 1 else np.nan}
        if sharpness is not None:
            row["sharpness"] = sharpness[k]
        writer.append(row)
    writer.finish("completed", change_point=change_point)
    traj = store.read_trajectory(path)
    store.write_analysis(apath, analysis.analyze(traj.steps, 5, [], 0.5, -0.5, 0.1), {}, traj.attrs)
    return [(folder.name, str(path), str(apath))]


def alternating(n):
    return [(-1) ** k for k in range(n)]


def test_known_verdicts(tmp_path):
    cnn = write_gd_run(tmp_path / "cnn", [1] * 20 + alternating(40))
    resnet = write_gd_run(tmp_path / "resnet", alternating(30) + [1] * 50)
    half_flips = write_gd_run(tmp_path / "half", [1] * 5 + alternating(30), flip_fraction=0.5)
    # Sharpness crosses 2/lr = 20 at step 18 (within 10%: 21 >= 18). Signs are + for steps 0..20, then
    # alternate from step 21: the first window of 5 with mean_mu < -0.5 starts at step 20 (onset).
    sharp = np.where(np.arange(60) >= 18, 21.0, 5.0)
    eos = write_gd_run(tmp_path / "eos", [1] * 20 + alternating(40), sharpness=sharp)
    df = claims_table({"cnn": [cnn], "resnet": [resnet], "small_lr": [cnn], "loss_share": [cnn, resnet],
                       "sign_flips": [half_flips], "sharpness": [eos]}, THRESHOLDS)
    by_claim = {r["claim"]: r for _, r in df.iterrows()}
    v = {claim.split(",")[0]: r["verdict"] for claim, r in by_claim.items()}
    assert v["CNN starts smooth"] == HOLDS
    assert v["ResNet starts zigzag"] == HOLDS
    assert v["zigzag still appears at small learning rates"] == HOLDS
    # cnn flips every entry, the half run about 50%: not every run reaches 80%.
    flips = by_claim["about 90% of entries flip sign in the zigzag phase"]
    assert flips["verdict"] == FAILS and "cnn 100%" in flips["measured"]
    assert v["mean correlation curves barely change with the batch size (Fig. 9)"] == NOT_RUN
    assert v["the GAWU change point is close to the best WU change point (Table 1)"] == NOT_RUN
    edge = by_claim["zigzag onset coincides with the sharpness reaching 2/lr (edge of stability; not in the paper)"]
    assert edge["verdict"] == HOLDS and "onset 20, 2/lr at 18" in edge["measured"]
    # Loss decreases linearly: the cnn run is zigzag at steps 20..55 (mean_mu defined to 55) -> 36/59.
    share = by_claim["a substantial part of the loss decrease happens in the zigzag phase"]["measured"]
    assert f"cnn {36 / 59:.2f}" in share


def test_resnet_that_never_turns_smooth_does_not_hold(tmp_path):
    resnet = write_gd_run(tmp_path / "resnet", alternating(60))
    df = claims_table({"resnet": [resnet]}, THRESHOLDS)
    row = df[df["claim"].str.startswith("ResNet")].iloc[0]
    assert row["verdict"] == FAILS and "late mean -1.00" in row["measured"]
    assert (df[~df["claim"].str.startswith("ResNet")]["verdict"] == NOT_RUN).all()


def test_gawu_against_the_best_wu(tmp_path):
    gawu = write_gd_run(tmp_path / "gawu", [1] * 30, change_point=11)
    wu = [write_gd_run(tmp_path / f"wu{t}", [1] * 30, change_point=t, final_accuracy=acc)
          for t, acc in ((5, 0.80), (10, 0.85), (12, 0.88))]
    row = claims_table({"gawu": [gawu], "wu": wu}, THRESHOLDS).iloc[6]
    assert row["verdict"] == HOLDS and row["measured"] == "GAWU t = 11; best WU t = 12 (88.0%)"
    far = dict(THRESHOLDS, gawu_gap=0.5)
    assert claims_table({"gawu": [gawu], "wu": wu}, far).iloc[6]["verdict"] == FAILS
