"""Every bad input is one line ``zigzag: error: ...`` and exit 2, never a traceback, and creates nothing.

``CASES`` runs in-process through ``zigzag.cli.main`` (cheap); one case per subcommand also runs as the real
process (``SUBPROCESS``). ``CONFIG_CASES`` are the same mistakes in the workflow's config: the config check
(what ``snakemake -n`` runs) refuses them before any job starts.

Bad inputs tested beside what they concern: damaged or foreign files (a ``config`` attribute that is not
JSON, a trajectory without ``/steps/dot`` or ``lags``, ``lags`` a string, too few dot columns, a flipped
bit, an impossible correlation) in tests/test_integrity.py; a file named ``<out>.resume``, a resume
folder with foreign files, an output that is an input, a second writer, a kill between the final rename
and the cleanup, Ctrl-C and a full disk in tests/test_errors_and_resumes.py; hostile names and strings in
a config in tests/test_pipeline.py and tests/test_workflow.py.
"""

import json
import sys
from pathlib import Path

import h5py
import pytest
from conftest import write_synthetic_dataset, zigzag_cli

from zigzag import cli, configcheck
from zigzag.errors import ZigzagError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
THRESHOLDS = {"early_steps": 2, "smooth_start": 0.5, "zigzag_strong": -0.5, "sign_flip": 0.8,
              "sign_flip_nonzero": 0.8, "sign_flip_weight": 0.8, "late_smooth": 0.9,
              "late_fraction": 0.1, "loss_share": 0.25, "batch_gap": 0.3, "gawu_gap": 2, "gawu_accuracy_sds": 1,
              "eos_gap": 10}


def train_args(dataset, **flags):
    """A valid small run; in-process, so no ``--threads`` (it would change the test process's torch)."""
    settings = {"--model": "cnn", "--width": "0.5", "--lr": "0.05", "--steps": "12", "--lags": "3",
                "--micro-batch": "32", "--checkpoint-every": "5", "--raw-gradients": "every:4",
                "--device": "cpu", "--quiet": None, **flags}
    return ["train", "--dataset", dataset, *[a for kv in settings.items() for a in kv if a is not None]]


def _dataset(tmp, change):
    path = write_synthetic_dataset(tmp / "bad.h5")
    with h5py.File(path, "a") as f:
        change(f)
    return path


def _labels(value):
    def change(f):
        labels = f["train/labels"][()]
        labels[3] = value
        f["train/labels"][...] = labels
    return change


def _empty_train(f):
    for name in ("images", "labels"):
        shape = f[f"train/{name}"].shape
        del f[f"train/{name}"]
        f.create_dataset(f"train/{name}", shape=(0, *shape[1:]), dtype="u1" if name == "images" else "i8")


def _config(f, tmp, text):
    """``train --config`` with a run file that sets ``text`` besides a valid run."""
    path = tmp / "run.yaml"
    valid = {"dataset": f["data"], "model": "cnn", "lr": 0.1, "device": "cpu", "steps": 3}
    path.write_text("".join(f"{key}: {value}\n" for key, value in valid.items() if f"{key}:" not in text) + text)
    return ["train", "--config", path, "--out", tmp / "out.h5"]


def _settings(f, tmp, **values):
    """``train --settings`` (what the workflow passes): a valid run plus ``values``, as JSON."""
    run = {"dataset": str(f["data"]), "model": "cnn", "lr": 0.1, "steps": 3, "device": "cpu", **values}
    return ["train", "--settings", json.dumps(run), "--out", tmp / "out.h5"]


def _png(f, tmp):
    path = tmp / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    return ["train", "--config", path, "--out", tmp / "out.h5"]


def _train(f, tmp, *flags, dataset=None):
    return [*train_args(dataset or f["data"]), *flags, "--out", tmp / "out.h5"]


def _figure(f, tmp, title="x", analysis="analysis", trajectory="traj"):
    return ["figure", "trajectory", "--title", title, "--trajectory", f[trajectory], "--analysis", f[analysis],
            "--png", tmp / "x.png", "--pdf", tmp / "x.pdf"]


def _claims(f, tmp, **thresholds):
    spec = {"thresholds": {**THRESHOLDS, **thresholds}, "seeds": [0],
            "groups": {"cnn": [[["a", str(f["traj"]), str(f["analysis"])]]]}}
    return ["table", "claims", "--spec", json.dumps(spec), "--out", tmp / "c"]


def _prepare(*flags):
    return lambda f, t: ["prepare", "--dataset", "mnist5k", "--out", t / "d.h5", *flags]


BROKEN_MATH = r"$\frac{$"

# name -> (argv builder taking the files and the test's folder, words the error line must contain)
CASES = {
    # run settings: types, bounds (what a run can index or a machine can hold), values coerced before
    "model mlp": (lambda f, t: _train(f, t, "--model", "mlp"), "cnn, vgg16, resnet18, resnet34"),
    "lr 0": (lambda f, t: _train(f, t, "--lr", "0"), "invalid lr=0.0: must be a number > 0"),
    "lr -1": (lambda f, t: _train(f, t, "--lr", "-1"), "invalid lr=-1.0"),
    "steps 0": (lambda f, t: _train(f, t, "--steps", "0"), "invalid steps=0: must be an integer >= 1"),
    "steps 1e20": (lambda f, t: _train(f, t, "--steps", "1e20"),
                   "'1e20' is not an integer; must be an integer in [1, 10000000]"),
    "steps 10^12": (lambda f, t: _train(f, t, "--steps", "1000000000000"), "must be an integer in [1, 10000000]"),
    "epochs 10^12": (lambda f, t: _train(f, t, "--optimizer", "sgd", "--batch-size", "8", "--epochs", str(10**12)),
                     "invalid epochs=1000000000000: must be an integer in [1, 10000000]"),
    "sgd iterations beyond the bound": (
        lambda f, t: _train(f, t, "--optimizer", "sgd", "--batch-size", "1", "--epochs", "9000000"),
        "96 batches per epoch make 864000000 iterations, more than the 10000000"),
    "seed -1": (lambda f, t: _train(f, t, "--seed", "-1"), "invalid seed=-1: must be an integer in [0, 4294967295]"),
    "seed 2^64": (lambda f, t: _train(f, t, "--seed", str(2**64)), "must be an integer in [0, 4294967295]"),
    "seed written 2^64": (lambda f, t: _train(f, t, "--seed", "2^64"), "'2^64' is not an integer"),
    "width 1e300": (lambda f, t: _train(f, t, "--width", "1e300"),
                    "invalid width=1e+300: must be a number in (0, 1024]"),
    "width nan": (lambda f, t: _train(f, t, "--width", "nan"), "invalid width=nan"),
    "width 1000 (memory)": (lambda f, t: _train(f, t, "--width", "1000"), "GiB available; lower width or lags"),
    "lags 0": (lambda f, t: _train(f, t, "--lags", "0"), "invalid lags=0"),
    "lags 10000000": (lambda f, t: _train(f, t, "--lags", "10000000"), "must be an integer in [1, 1000]"),
    "micro-batch 0": (lambda f, t: _train(f, t, "--micro-batch", "0"), "invalid micro_batch=0"),
    "threads -3": (lambda f, t: _train(f, t, "--threads", "-3"), "invalid --threads -3"),
    "threads 10^20": (lambda f, t: _train(f, t, "--threads", str(10**20)), "must be an integer in [1, 1024]"),
    "raw-gradients 3,99": (lambda f, t: _train(f, t, "--raw-gradients", "3,99"),
                           "step(s) [99] outside the run's steps 0..11"),
    "raw-gradients -1": (lambda f, t: _train(f, t, "--raw-gradients", "-1"),
                         "step(s) [-1] outside the run's steps 0..11"),
    "sgd raw-gradients beyond any run": (
        lambda f, t: _train(f, t, "--optimizer", "sgd", "--batch-size", "8", "--epochs", "2", "--raw-gradients",
                            str(10**7)), "outside the steps a run may have 0..9999999"),
    "settings raw_gradients [1.5]": (lambda f, t: _settings(f, t, raw_gradients=[1.5]), "raw_gradients=[1.5]: use"),
    "settings raw_gradients [true]": (lambda f, t: _settings(f, t, raw_gradients=[True]),
                                      "raw_gradients=[True]: use none, every:N or a list of steps"),
    "settings raw_gradients {}": (lambda f, t: _settings(f, t, raw_gradients={}), "raw_gradients={}: use"),
    "settings steps 1e20": (lambda f, t: _settings(f, t, steps=1e20), "invalid steps=1e+20: must be an integer"),
    "settings seed true": (lambda f, t: _settings(f, t, seed=True), "invalid seed=True"),
    "settings [1]": (lambda f, t: ["train", "--settings", "[1]", "--out", t / "out.h5"], "one JSON mapping"),
    "config raw_gradients [1.5]": (lambda f, t: _config(f, t, "raw_gradients: [1.5]\n"), "raw_gradients=[1.5]"),
    "config raw_gradients [true]": (lambda f, t: _config(f, t, "raw_gradients: [true]\n"), "raw_gradients=[True]"),
    "config raw_gradients {}": (lambda f, t: _config(f, t, "raw_gradients: {}\n"), "raw_gradients={}"),
    "config lr .nan": (lambda f, t: _config(f, t, "lr: .nan\n"), "invalid lr=nan"),
    "config steps '3'": (lambda f, t: _config(f, t, 'steps: "3"\n'), "invalid steps='3'"),
    "config steps 2.5": (lambda f, t: _config(f, t, "steps: 2.5\n"), "invalid steps=2.5"),
    "config sharpness 5": (lambda f, t: _config(f, t, "sharpness: 5\n"), "sharpness=5"),
    "config schedule cosine": (lambda f, t: _config(f, t, "schedule: cosine\n"), "schedule='cosine'"),
    "config syntax error": (lambda f, t: _config(f, t, "steps: [3,\n"), "is not valid YAML"),
    "config duplicate key": (lambda f, t: _config(f, t, "lags: 3\nlags: 4\n"), "key 'lags' is given twice"),
    "config x.png": (_png, "is not a YAML text file"),
    # inputs and outputs
    "dataset without train/labels": (lambda f, t: _train(f, t, dataset=_dataset(t, lambda h: h.__delitem__(
        "train/labels"))), "train/labels"),
    "label 42": (lambda f, t: _train(f, t, dataset=_dataset(t, _labels(42))), "label"),
    "label -1": (lambda f, t: _train(f, t, dataset=_dataset(t, _labels(-1))), "label"),
    "empty train split": (lambda f, t: _train(f, t, dataset=_dataset(t, _empty_train)), "train"),
    "out is a folder": (lambda f, t: [*train_args(f["data"]), "--out", t], "folder"),
    "prepare seed 2^64": (_prepare("--seed", str(2**64)), "invalid --seed 18446744073709551616"),
    "prepare train size 10^12": (_prepare("--train-size", str(10**12)), "train_size must be an integer from 1 to 4000"),
    # analyses, figures, tables
    "eos tolerance 5": (lambda f, t: ["analyze", f["traj"], "--out", t / "x.h5", "--h", "3", "--eos-tolerance", "5"],
                        "invalid eos_tolerance=5.0"),
    "window k + h > K": (lambda f, t: ["analyze", f["traj"], "--out", t / "x.h5", "--h", "3", "--windows", "6"],
                         "invalid windows [6]"),
    "analyze h 1e20": (lambda f, t: ["analyze", f["traj"], "--out", t / "x.h5", "--h", "1e20"],
                       "'1e20' is not an integer"),
    "figure png = pdf": (lambda f, t: [*_figure(f, t)[:-4], "--png", t / "x", "--pdf", t / "x"], "x"),
    "figure analysis of another trajectory": (lambda f, t: _figure(f, t, trajectory="other"), "b.h5"),
    "figure title with broken math": (lambda f, t: _figure(f, t, title=BROKEN_MATH),
                                      r"invalid --title '$\\frac{$': its math text ($...$) does not parse"),
    "figure label with broken math": (lambda f, t: ["figure", "lag1", "--title", "x", "--curve", BROKEN_MATH,
                                                    f["traj"], "--png", t / "x.png", "--pdf", t / "x.pdf"],
                                      "invalid label"),
    "sign-shift step abc": (lambda f, t: ["figure", "sign-shift", "--title", "x", "--panel", f["analysis"], "a",
                                          "abc", "--png", t / "x.png", "--pdf", t / "x.pdf"], "abc"),
    "claims spec {}": (lambda f, t: ["table", "claims", "--spec", "{}", "--out", t / "c"], "--spec must be"),
    "claims spec []": (lambda f, t: ["table", "claims", "--spec", "[]", "--out", t / "c"], "--spec must be"),
    "claims threshold NaN": (lambda f, t: _claims(f, t, smooth_start=float("nan")),
                             "invalid claims threshold smooth_start=nan: must be a number"),
    "claims threshold inf": (lambda f, t: _claims(f, t, batch_gap=float("inf")), "batch_gap=inf"),
    "claims early_steps 1e12": (lambda f, t: _claims(f, t, early_steps=1e12),
                                "early_steps=1000000000000.0: must be an integer in [1, 10000000]"),
    "claims early_steps 10^12": (lambda f, t: _claims(f, t, early_steps=10**12), "must be an integer in [1, 10000000]"),
    "claims early_steps beyond the run": (lambda f, t: _claims(f, t, early_steps=8), "a has 8 steps, so no step"),
    "claims threshold missing": (lambda f, t: _claims(f, t, eos_gap=None), "eos_gap=None"),
    "unknown subcommand": (lambda f, t: ["plot"], "invalid choice: 'plot'"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, case):
    build, expected = CASES[case]
    argv = [str(a) for a in build(files, tmp_path)]
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("zigzag: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert expected in err, err
    assert sorted(tmp_path.rglob("*")) == before  # no output, no resume folder, no temporary file
    assert sys.excepthook is sys.__excepthook__ and sys.unraisablehook is sys.__unraisablehook__


SUBPROCESS = ["steps 1e20", "prepare seed 2^64", "eos tolerance 5", "figure title with broken math",
              "claims threshold NaN"]


@pytest.mark.parametrize("case", SUBPROCESS)
def test_the_real_process_prints_one_line_and_exits_2(files, tmp_path, case):
    """One case per subcommand (``inspect``: tests/test_trainer.py) as the workflow runs it: a process."""
    build, expected = CASES[case]
    argv = build(files, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = zigzag_cli(*argv, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("zigzag: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr and result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before


def _run(**settings):
    return {"dataset": "d", "model": "cnn", "lr": 0.1, "steps": 10, **settings}


def config(runs=None, **sections) -> dict:
    return {"datasets": {"d": {"source": "mnist5k"}}, "figures": {}, "runs": runs or {"r": _run()}, **sections}


# name -> (config, the error line exactly or its start)
CONFIG_CASES = {
    "claims threshold .nan": (config(claims={"thresholds": {"smooth_start": float("nan")}}),
                              "claims.thresholds.smooth_start: nan is not allowed; must be a finite number"),
    "claims threshold .inf": (config(claims={"thresholds": {"gawu_gap": float("-inf")}}),
                              "claims.thresholds.gawu_gap: -inf is not allowed; must be a finite number"),
    "claims early_steps 10^12": (config(claims={"thresholds": {"early_steps": 10**12}}),
                                 "claims.thresholds.early_steps: 1000000000000 is not allowed; must be <= 10000000"),
    "claims early_steps beyond the cnn run": (
        config(claims={"cnn": ["r"], "thresholds": {"early_steps": 10}}),
        "claims.thresholds.early_steps: 10 leaves no later step in runs.r (10 steps); lower it below 10"),
    "claims seed 2^64": (config(claims={"seeds": [2**64]}), "claims.seeds.0: 18446744073709551616 is not allowed"),
    "analysis threshold .nan": (config(analysis={"smooth_above": float("nan")}),
                                "analysis.smooth_above: nan is not allowed; must be a finite number"),
    "lr .nan": (config({"r": _run(lr=float("nan"))}), "runs.r.lr: nan is not allowed; must be a finite number"),
    "width .inf": (config({"r": _run(width=float("inf"))}), "runs.r.width: inf is not allowed"),
    "width 1e300": (config({"r": _run(width=1e300)}), "runs.r.width: 1e+300 is not allowed; must be <= 1024"),
    "steps 10^12": (config({"r": _run(steps=10**12)}),
                    "runs.r.steps: 1000000000000 is not allowed; must be <= 10000000"),
    "epochs 10^12": (config({"r": _run(optimizer="sgd", batch_size=10, epochs=10**12)}),
                     "runs.r.epochs: 1000000000000 is not allowed; must be <= 10000000"),
    "seed 2^64": (config({"r": _run(seed=2**64)}), "runs.r.seed: 18446744073709551616 is not allowed; must be <= "),
    "seeds [2^64]": (config({"r": _run(seeds=[0, 2**64])}), "runs.r.seeds.1: 18446744073709551616 is not allowed"),
    "lags 10^7": (config({"r": _run(lags=10**7)}), "runs.r.lags: 10000000 is not allowed; must be <= 1000"),
    "raw_gradients [1.5]": (config({"r": _run(raw_gradients=[1.5])}),
                            "runs.r.raw_gradients.0: 1.5 is not of type 'integer'"),
    "raw_gradients [true]": (config({"r": _run(raw_gradients=[True])}),
                             "runs.r.raw_gradients.0: True is not of type 'integer'"),
    "raw_gradients {}": (config({"r": _run(raw_gradients={})}),
                         "runs.r.raw_gradients: {} is not allowed; steps whose whole gradient g_k is stored: none, "
                         "every:N or a list"),
    "raw_gradients [1.0]": (config({"r": _run(raw_gradients=[1.0])}),
                            "runs.r: invalid raw_gradients=[1.0]: use none, every:N or a list of steps"),
    "raw_gradients beyond the steps": (config({"r": _run(raw_gradients=[3, 10])}),
                                       "runs.r: invalid raw_gradients: step(s) [10] outside the run's steps 0..9"),
    "raw_gradients -1": (config({"r": _run(raw_gradients="-1")}),
                         "runs.r.raw_gradients: '-1' is not allowed; steps whose"),
    "dataset seed 2^64": (config(datasets={"d": {"source": "mnist5k", "seed": 2**64}}),
                          "datasets.d.seed: 18446744073709551616 is not allowed; must be <= 4294967295"),
    "train_size 10^12": (config(datasets={"d": {"source": "mnist5k", "train_size": 10**12}}),
                         "datasets.d.train_size: 1000000000000 is not allowed; must be <= 73257"),
    "train_size beyond its source": (config(datasets={"d": {"source": "mnist5k", "train_size": 5000}}),
                                     "datasets.d.train_size: 5000 is not allowed; mnist5k has 4000 training images"),
    "figure title with broken math": (
        config(figures={"f": {"kind": "trajectory", "run": "r", "title": BROKEN_MATH}}),
        r"figures.f.title: invalid text '$\\frac{$': its math text ($...$) does not parse"),
    "figure label with broken math": (
        config(figures={"f": {"kind": "lag1", "title": "ok $x$", "curves": [{"run": "r", "label": "$x^$"}]}}),
        "figures.f.curves.0.label: invalid text '$x^$'"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_a_bad_config_is_one_line_before_any_job(case):
    """What the workflow's config check (and so ``snakemake -n``) refuses: bounds, NaN and coerced types."""
    bad, expected = CONFIG_CASES[case]
    with pytest.raises(ZigzagError) as err:
        configcheck.checked_config(bad, SCHEMA)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def test_the_bounds_let_the_largest_valid_values_through():
    """Each bound is inclusive where it says so: the values at the bounds are valid."""
    run = _run(steps=10**7, seed=2**32 - 1, width=1024, lags=1000, raw_gradients=[0, 10**7 - 1])
    checked = configcheck.checked_config(config({"r": run}, claims={"cnn": ["r"], "thresholds": {"early_steps": 9},
                                                                    "seeds": [2**32 - 1]}), SCHEMA)
    assert checked["runs"]["r"]["width"] == 1024
    configcheck.checked_config(config(figures={"f": {"kind": "trajectory", "run": "r",
                                                     "title": r"lr $\eta = 0.1$ costs \$5"}}), SCHEMA)
