"""The claims table on constructed runs whose verdicts are known."""

import inspect
import re

import h5py
import numpy as np
import pytest

from zigzag import analysis, claims, store
from zigzag.claims import FAILS, HOLDS, MIXED, NOT_RUN, claims_table, overall_verdict
from zigzag.errors import ZigzagError

THRESHOLDS = {"early_steps": 10, "smooth_start": 0.5, "zigzag_strong": -0.5, "sign_flip": 0.8,
              "sign_flip_nonzero": 0.8, "sign_flip_weight": 0.8, "late_smooth": 0.9, "late_fraction": 0.1,
              "loss_share": 0.25, "batch_gap": 0.3, "gawu_gap": 2, "gawu_accuracy_sds": 1, "eos_gap": 10}
GAWU_CLAIM = "GAWU switches close to the best WU change point, with comparable accuracy (Table 1)"
FLIPS_CLAIM = "about 90% of entries flip sign in the zigzag phase"


def one_seed(groups, thresholds=THRESHOLDS):
    """The claims on seed 0 alone: every run's single job is its seed-0 job."""
    return claims_table(groups, thresholds, [0])


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
        dot = np.array([grads[k] @ grads[k - lag] if k >= lag else np.nan for lag in range(lags + 1)])
        opp = np.array([np.mean(grads[k] * grads[k - lag] < 0) if k >= lag else np.nan for lag in range(lags + 1)])
        row = {"loss": loss[k], "lr": lr, "epoch": k, "dot": dot, "opposite": opp,
               "test_accuracy": final_accuracy if k == n - 1 else np.nan}
        if sharpness is not None:
            row["sharpness"] = sharpness[k]
        writer.append(row)
    writer.finish("completed", change_point_step=change_point, change_point_epoch=change_point)
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
    df = one_seed({"cnn": [cnn], "resnet": [resnet], "small_lr": [cnn], "loss_share": [cnn, resnet],
                   "sign_flips": [half_flips], "sharpness": [eos]})
    by_claim = {r["claim"]: r for _, r in df.iterrows()}
    v = {claim.split(",")[0]: r["verdict"] for claim, r in by_claim.items()}
    assert v["CNN starts smooth"] == HOLDS
    assert v["ResNet starts zigzag"] == HOLDS
    assert v["zigzag still appears at small learning rates"] == HOLDS
    # cnn flips every entry, the half run about 50%: not every run reaches 80%.
    flips = by_claim[FLIPS_CLAIM]
    assert flips["verdict"] == flips["seed 0"] == FAILS and "cnn 100%" in flips["measured"]
    assert v["mean correlation curves barely change with the batch size (Fig. 9)"] == NOT_RUN
    assert by_claim[GAWU_CLAIM]["verdict"] == NOT_RUN
    edge = by_claim["zigzag onset coincides with the sharpness reaching 2/lr (edge of stability; not in the paper)"]
    assert edge["verdict"] == HOLDS and "onset 20, 2/lr at 18" in edge["measured"]
    # Loss decreases linearly: the cnn run is zigzag at steps 20..55 (mean_mu defined to 55) -> 36/59.
    share = by_claim["a substantial part of the loss decrease happens in the zigzag phase"]["measured"]
    assert f"cnn {36 / 59:.2f}" in share


def test_margins_give_the_measured_values_against_their_thresholds(tmp_path):
    """The edge-of-stability margin counts the steps between onset and 2/lr against those allowed; the sign-flip
    margin is that of the run the verdict turns on; neither margin changes a verdict."""
    sharp = np.where(np.arange(60) >= 18, 21.0, 5.0)  # 2/lr = 20 reached at step 18; zigzag onset at step 20
    eos = write_gd_run(tmp_path / "eos", [1] * 20 + alternating(40), sharpness=sharp)
    late = write_gd_run(tmp_path / "late", [1] * 20 + alternating(40), sharpness=np.where(np.arange(60) >= 11, 21, 5.))
    half = write_gd_run(tmp_path / "half", [1] * 5 + alternating(30), flip_fraction=0.5)
    df = one_seed({"sharpness": [eos, late], "sign_flips": [eos, half]}).set_index("claim")
    edge = df.loc["zigzag onset coincides with the sharpness reaching 2/lr (edge of stability; not in the paper)"]
    assert edge["margin"] == "seed 0: tightest late: onset 20 against 2/lr at 11: 9 of the 10 steps allowed (+1)"
    assert edge["verdict"] == HOLDS
    flips = df.loc[FLIPS_CLAIM]
    assert flips["margin"] == "seed 0: tightest half: median share 0.50 against 0.8: -0.30"
    assert flips["verdict"] == FAILS
    tighter = one_seed({"sharpness": [late]}, dict(THRESHOLDS, eos_gap=8)).set_index("claim").loc[edge.name]
    assert tighter["verdict"] == FAILS and tighter["margin"].endswith("9 of the 8 steps allowed (-1)")


def test_resnet_that_never_turns_smooth_does_not_hold(tmp_path):
    resnet = write_gd_run(tmp_path / "resnet", alternating(60))
    df = one_seed({"resnet": [resnet]})
    row = df[df["claim"].str.startswith("ResNet")].iloc[0]
    assert row["verdict"] == FAILS and "late mean -1.00" in row["measured"]
    assert (df[~df["claim"].str.startswith("ResNet")]["verdict"] == NOT_RUN).all()


def gawu_groups(tmp_path, gawu_ts, gawu_accuracy=0.88, wu_accuracies=((0.80, 0.81), (0.85, 0.86), (0.88, 0.90))):
    """GAWU with change point gawu_ts[s] on seed s; WU t = 5, 10, 12 with the given accuracy per seed."""
    gawu = [write_gd_run(tmp_path / f"gawu-seed{s}", [1] * 30, change_point=t, final_accuracy=gawu_accuracy)[0]
            for s, t in enumerate(gawu_ts)]
    wu = [[write_gd_run(tmp_path / f"wu{t}-seed{s}", [1] * 30, change_point=t, final_accuracy=acc)[0]
           for s, acc in enumerate(accs)] for t, accs in zip((5, 10, 12), wu_accuracies)]
    return {"gawu": [gawu], "wu": wu}


def gawu_row(groups, thresholds=THRESHOLDS, seeds=(0, 1)):
    df = claims_table(groups, thresholds, list(seeds))
    return df[df["claim"] == GAWU_CLAIM].iloc[0]


def test_gawu_against_the_best_wu(tmp_path):
    row = gawu_row(gawu_groups(tmp_path, [11, 13]))
    # Best WU: t = 12, mean 89.0%, sample sd 1.41%; GAWU 88.0% >= 89.0 - 1.41.
    assert row["verdict"] == row["seed 0"] == row["seed 1"] == HOLDS
    assert row["measured"] == ("seed 0: GAWU t = 11 (88.0%); best WU t = 12 (89.0% ± 1.4%) | "
                               "seed 1: GAWU t = 13 (88.0%); best WU t = 12 (89.0% ± 1.4%)")
    assert gawu_row(gawu_groups(tmp_path / "far", [11, 13]), dict(THRESHOLDS, gawu_gap=0.5))["verdict"] == FAILS


def test_gawu_that_never_switches_does_not_hold(tmp_path):
    """A seed with change point -1 is a result: it does not hold, and the count of such seeds is given."""
    row = gawu_row(gawu_groups(tmp_path, [-1, 12]))
    assert (row["seed 0"], row["seed 1"], row["verdict"]) == (FAILS, HOLDS, MIXED)
    assert row["measured"].startswith("GAWU never switched on 1 of 2 seeds | seed 0: GAWU never switched")
    row = gawu_row(gawu_groups(tmp_path / "none", [-1, -1]))
    assert row["verdict"] == FAILS and row["measured"].startswith("GAWU never switched on 2 of 2 seeds")


def test_gawu_accuracy_must_be_comparable_to_the_best_wu(tmp_path):
    """Table 1's statement: GAWU switches at t = 12 like the best WU but ends 5 points below it, far
    outside the best WU's spread over seeds (sd 1.4 points)."""
    row = gawu_row(gawu_groups(tmp_path, [12, 12], gawu_accuracy=0.84))
    assert row["verdict"] == FAILS and "GAWU t = 12 (84.0%)" in row["measured"]
    looser = dict(THRESHOLDS, gawu_accuracy_sds=4)  # 89.0 - 4 x 1.41 = 83.3 <= 84.0
    assert gawu_row(gawu_groups(tmp_path / "b", [12, 12], gawu_accuracy=0.84), looser)["verdict"] == HOLDS


def write_window_run(folder, adjacent, opposite, nonzero=None, weight=None):
    """A GD run with unit gradients whose adjacent cosines and opposite-sign shares (among all entries, and
    optionally among those non-zero in both and weighted by the overlap) are given per step."""
    folder.mkdir(parents=True)
    n, path, apath = len(adjacent), folder / "trajectory.h5", folder / "analysis.h5"
    writer = store.TrajectoryWriter.create(path, {"optimizer": "gd"}, n_params=10, n_train=10, lags=4,
                                           attrs={"batches_per_epoch": 1, "total_steps": n})
    shares = {"opposite": opposite, "opposite_nonzero": nonzero, "opposite_weight": weight}
    for k in range(n):
        row = {"loss": 2.0 - k / n, "lr": 0.1, "epoch": k, "dot": np.array([1.0, adjacent[k], 0.0, 0.0, 0.0])}
        row.update({name: np.array([0.0, share[k], 0.5, 0.5, 0.5]) for name, share in shares.items()
                    if share is not None})
        for series in row.values():
            if np.ndim(series):
                series[1:][np.arange(1, 5) > k] = np.nan
        writer.append(row)
    writer.finish("completed", change_point_step=-1, change_point_epoch=-1)
    traj = store.read_trajectory(path)
    store.write_analysis(apath, analysis.analyze(traj.steps, 5, [], 0.5, -0.5), {}, traj.attrs)
    return [(folder.name, str(path), str(apath))]


def test_sign_flips_are_read_inside_the_zigzag_window(tmp_path):
    """Adjacent cosines -1 at steps 11..14 only: the one zigzag window starts at k = 10 and holds the
    pairs (10, 11) .. (13, 14), i.e. opposite[11..14, 1] = 0.9; the pair (9, 10) before it has 0.1."""
    adjacent, opposite = np.ones(30), np.full(30, 0.05)
    adjacent[11:15], opposite[11:15], opposite[10] = -1.0, 0.9, 0.1
    zig = write_window_run(tmp_path / "zig", adjacent, opposite)
    smooth = write_window_run(tmp_path / "smooth", np.ones(30), np.full(30, 0.05))
    row = one_seed({"sign_flips": [zig, smooth]}).set_index("claim").loc[FLIPS_CLAIM]
    assert row["verdict"] == HOLDS
    assert row["measured"] == "seed 0: zig 90%; smooth no zigzag step"
    assert row["runs"] == "zig, smooth"
    only_smooth = one_seed({"sign_flips": [smooth]}).set_index("claim").loc[FLIPS_CLAIM]
    assert only_smooth["verdict"] == NOT_RUN and "smooth no zigzag step" in only_smooth["measured"]


NONZERO_CLAIM = "about 90% of the entries non-zero in both flip sign in the zigzag phase"
WEIGHT_CLAIM = "the flipped entries carry about 90% of the adjacent gradients' overlap in the zigzag phase"


def test_the_three_sign_flip_counts_are_judged_each_by_its_own_threshold(tmp_path):
    """Zigzag pairs at steps 11..14 flip 50% of all entries, 85% of those non-zero in both and 99% of the overlap:
    the paper's count fails, the other two hold; each row reads its own threshold; a trajectory that predates
    the later counts is named "not recorded" there and not judged."""
    adjacent = np.ones(30)
    adjacent[11:15] = -1.0
    shares = {name: np.full(30, 0.05) for name in ("opposite", "nonzero", "weight")}
    shares["opposite"][11:15], shares["nonzero"][11:15], shares["weight"][11:15] = 0.5, 0.85, 0.99
    run = write_window_run(tmp_path / "zig", adjacent, **shares)
    rows = one_seed({"sign_flips": [run]}).set_index("claim")
    assert [rows.loc[c, "verdict"] for c in (FLIPS_CLAIM, NONZERO_CLAIM, WEIGHT_CLAIM)] == [FAILS, HOLDS, HOLDS]
    assert [rows.loc[c, "measured"] for c in (FLIPS_CLAIM, NONZERO_CLAIM, WEIGHT_CLAIM)] == \
        ["seed 0: zig 50%", "seed 0: zig 85%", "seed 0: zig 99%"]
    assert ">= 0.8 in every run" in rows.loc[NONZERO_CLAIM, "threshold"]
    stricter = one_seed({"sign_flips": [run]}, dict(THRESHOLDS, sign_flip_nonzero=0.9, sign_flip_weight=0.995))
    assert (stricter.set_index("claim").loc[[FLIPS_CLAIM, NONZERO_CLAIM, WEIGHT_CLAIM], "verdict"] == FAILS).all()
    looser = one_seed({"sign_flips": [run]}, dict(THRESHOLDS, sign_flip=0.5)).set_index("claim")
    assert looser.loc[FLIPS_CLAIM, "verdict"] == HOLDS and looser.loc[WEIGHT_CLAIM, "verdict"] == HOLDS

    older = write_window_run(tmp_path / "older", adjacent, shares["opposite"])
    with h5py.File(older[0][1], "a") as f:
        for name in store.LATER_LAG_SERIES:
            del f[f"steps/{name}"]
    rows = one_seed({"sign_flips": [older]}).set_index("claim")
    assert rows.loc[FLIPS_CLAIM, "verdict"] == FAILS
    for claim in (NONZERO_CLAIM, WEIGHT_CLAIM):
        assert rows.loc[claim, "verdict"] == NOT_RUN and rows.loc[claim, "measured"] == "seed 0: older not recorded"
    both = one_seed({"sign_flips": [run, older]}).set_index("claim")
    assert both.loc[NONZERO_CLAIM, "verdict"] == HOLDS
    assert both.loc[NONZERO_CLAIM, "measured"] == "seed 0: zig 85%; older not recorded"


def test_every_claim_is_judged_per_seed_and_combined_by_the_configured_rule(tmp_path):
    """Seed 0's CNN starts smooth then zigzags; seed 1's never zigzags; seed 2's job is not configured."""
    good = write_gd_run(tmp_path / "cnn-seed0", [1] * 20 + alternating(40))[0]
    flat = write_gd_run(tmp_path / "cnn-seed1", [1] * 60)[0]
    groups = {"cnn": [[good, flat, None]]}
    df = claims_table(groups, THRESHOLDS, [0, 1, 2])
    row = df.set_index("claim").loc["CNN starts smooth, then turns zigzag"]
    assert (row["seed 0"], row["seed 1"], row["seed 2"], row["verdict"]) == (HOLDS, FAILS, NOT_RUN, MIXED)
    assert row["measured"].startswith("seed 0: first 10: +1.00; later min -1.00 | seed 1: first 10: +1.00; "
                                      "later min +1.00 | seed 2: -")
    assert list(df.columns) == ["claim", "paper", "measured", "runs", "threshold", "margin", "seed 0", "seed 1",
                                "seed 2", "verdict"]
    assert row["margin"] == ("seed 0: early mean 1.00 against 0.5: +0.50; later min -1.00 against -0.5: +0.50 | "
                             "seed 1: early mean 1.00 against 0.5: +0.50; later min 1.00 against -0.5: -1.50 | "
                             "seed 2: -")
    majority = claims_table({"cnn": [[good, good, flat]]}, THRESHOLDS, [0, 1, 2], "majority")
    assert majority.set_index("claim").loc["CNN starts smooth, then turns zigzag", "verdict"] == HOLDS


@pytest.mark.parametrize(("verdicts", "every", "majority"), [
    ([HOLDS, HOLDS, HOLDS], HOLDS, HOLDS),
    ([HOLDS, FAILS, HOLDS], MIXED, HOLDS),
    ([FAILS, FAILS, HOLDS], MIXED, FAILS),
    ([FAILS, NOT_RUN, FAILS], FAILS, FAILS),
    ([HOLDS, NOT_RUN, HOLDS], MIXED, HOLDS),
    ([HOLDS, NOT_RUN, FAILS], MIXED, MIXED),
    ([NOT_RUN, NOT_RUN, NOT_RUN], NOT_RUN, NOT_RUN),
])
def test_overall_verdict_rules(verdicts, every, majority):
    assert overall_verdict(verdicts, "every_seed") == every
    assert overall_verdict(verdicts, "majority") == majority


def test_claims_cli_writes_a_verdict_per_seed(tmp_path):
    """`zigzag table claims --spec` as the all_claims rule calls it (pipeline.claims_spec's JSON)."""
    import json

    import pandas as pd
    from conftest import zigzag_cli

    good = write_gd_run(tmp_path / "cnn", [1] * 20 + alternating(40))[0]
    flat = write_gd_run(tmp_path / "cnn-seed1", [1] * 60)[0]
    spec = {"thresholds": THRESHOLDS, "seeds": [0, 1], "overall": "every_seed", "groups": {"cnn": [[good, flat]]}}
    result = zigzag_cli("table", "claims", "--spec", json.dumps(spec), "--out", tmp_path / "claims")
    assert "seed 0" in result.stdout and "seed 1" in result.stdout and MIXED in result.stdout
    df = pd.read_csv(tmp_path / "claims.csv")
    row = df[df["claim"] == "CNN starts smooth, then turns zigzag"].iloc[0]
    assert (row["seed 0"], row["seed 1"], row["verdict"]) == (HOLDS, FAILS, MIXED)
    assert "| seed 0 | seed 1 | verdict |" in (tmp_path / "claims.md").read_text()
    bad = zigzag_cli("table", "claims", "--spec", json.dumps({**spec, "overall": "most"}), "--out",
                     tmp_path / "bad", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("zigzag: error: claims: invalid overall rule 'most'")


def test_the_claims_read_exactly_the_declared_groups():
    """Every group of ``claims.GROUPS`` is read by ``claims_table`` (which names them in its source) and a group
    not declared is one error line, not a claim silently not run."""
    read = set(re.findall(r'(?:at|first|loaded\.get)\("(\w+)"', inspect.getsource(claims.claims_table)))
    assert read == set(claims.GROUPS)
    with pytest.raises(ZigzagError, match="unknown group.*cnns"):
        claims_table({"cnns": []}, THRESHOLDS, [0])
