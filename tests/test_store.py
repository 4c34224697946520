"""The trajectory writer buffers rows and writes them in blocks; the file is the one row-by-row writing gave.
The readers give back what the writers stored, with None where the file stores -1 for "none"."""

import dataclasses
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from zigzag import store


def rows(n, lags=2):
    """Rows of random values, the lag statistics those of random gradients (a reader refuses impossible ones)."""
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((n, 10))
    out = []
    for k in range(n):
        dot = np.array([grads[k] @ grads[k - lag] if lag <= k else np.nan for lag in range(lags + 1)])
        row = {"loss": rng.random(), "accuracy": rng.random(), "lr": 0.1, "epoch": k, "grad_norm": rng.random(),
               "time": 0.5 * k, "dot": dot, "opposite": rng.random(lags + 1)}
        if k % 3 == 0:
            row["test_loss"] = rng.random()
        out.append(row)
    return out


def in_file(writer):
    """Rows the HDF5 file holds (the buffered ones are not there yet)."""
    sizes = {ds.shape[0] for ds in writer.steps.values()}
    assert len(sizes) == 1, "every series has the same length"
    return sizes.pop()


def test_rows_are_written_in_blocks_at_flush_and_hold_every_value(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "FLUSH_SECONDS", 1e9)
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {}, n_params=10, n_train=4, lags=2)
    data = rows(7)
    for row in data[:5]:
        writer.append(row)
    assert writer.n_steps == 5 and in_file(writer) == 0, "rows wait in the buffer"
    writer.flush()
    assert in_file(writer) == 5
    for row in data[5:]:
        writer.append(row)
    writer.finish("completed")
    traj = store.read_trajectory(path)
    assert len(traj) == 7 and traj.status == "completed"
    for name in ("loss", "accuracy", "lr", "epoch", "grad_norm", "time"):
        np.testing.assert_array_equal(traj.steps[name], [r[name] for r in data], err_msg=name)
    np.testing.assert_array_equal(traj.steps["dot"], np.stack([r["dot"] for r in data]))
    np.testing.assert_array_equal(traj.steps["opposite"], np.stack([r["opposite"] for r in data]))
    test_loss = traj.steps["test_loss"]
    assert np.isnan(test_loss[[1, 2, 4, 5]]).all() and test_loss[[0, 3, 6]].tolist() == [data[k]["test_loss"]
                                                                                       for k in (0, 3, 6)]
    assert np.isnan(traj.steps["test_accuracy"]).all()


def test_a_trajectory_written_before_the_later_lag_series_still_reads(tmp_path):
    """A file without ``/steps/opposite_nonzero`` and ``/steps/opposite_weight`` reads (they are absent); a share
    outside [0, 1] in one that has them is refused."""
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {}, n_params=10, n_train=4, lags=2)
    for row in rows(4):
        writer.append({**row, "opposite_nonzero": np.full(3, 0.5), "opposite_weight": np.full(3, 0.5)})
    writer.finish("completed")
    assert store.read_trajectory(path).steps["opposite_weight"][3].tolist() == [0.5] * 3
    with h5py.File(path, "a") as f:
        f["steps/opposite_weight"][1, 1] = 1.5
    with pytest.raises(store.ZigzagError, match="/steps/opposite_weight holds 1.5, outside"):
        store.read_trajectory(path)
    with h5py.File(path, "a") as f:
        for name in store.LATER_LAG_SERIES:
            del f[f"steps/{name}"]
    traj = store.read_trajectory(path)
    assert len(traj) == 4 and not set(store.LATER_LAG_SERIES) & set(traj.steps)


def test_rows_reach_the_file_within_flush_seconds(tmp_path, monkeypatch):
    clock = {"now": 100.0}
    monkeypatch.setattr(store.time, "monotonic", lambda: clock["now"])
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {}, n_params=10, n_train=4, lags=2)
    data = rows(3)
    writer.append(data[0])
    clock["now"] += store.FLUSH_SECONDS / 2
    writer.append(data[1])
    assert in_file(writer) == 0
    clock["now"] += store.FLUSH_SECONDS / 2
    writer.append(data[2])
    assert in_file(writer) == 3
    writer.close()


def test_reopen_keeps_the_flushed_steps_a_checkpoint_claims(tmp_path):
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {}, n_params=10, n_train=4, lags=2)
    for row in rows(6):
        writer.append(row)
    writer.close()
    reopened = store.TrajectoryWriter.reopen(path, 4)
    assert reopened.n_steps == 4
    reopened.append(rows(6)[5])
    reopened.finish("completed")
    loss = store.read_trajectory(path).steps["loss"]
    assert loss.tolist() == pytest.approx([r["loss"] for r in rows(6)[:4]] + [rows(6)[5]["loss"]], abs=0)


def analysis_result(**changes):
    """An ``analysis.Analysis`` (h = 3) of gradients s_k g with signs s = + + + + - + - +: smooth, then random at
    step 2, zigzag from step 3; ``changes`` applied."""
    from zigzag import analysis

    signs = np.array([1, 1, 1, 1, -1, 1, -1, 1.0])
    dot = np.array([[signs[k] * signs[k - lag] if lag <= k else np.nan for lag in range(3)] for k in range(8)])
    result = analysis.analyze({"dot": dot, "opposite": (dot < 0).astype(float), "loss": np.linspace(2, 1, 8)},
                              3, [0, 2], 0.5, -0.5, auto=True)
    return dataclasses.replace(result, **changes)


@pytest.mark.parametrize("nones", [True, False])
def test_analysis_round_trips_every_field_and_restores_none(tmp_path, nones):
    """What ``write_analysis`` stores, ``read_analysis`` gives back field by field; a "none" step is -1 in the
    file (the format) and None in memory, so no caller compares with -1."""
    from zigzag import analysis

    step = None if nones else 4
    written = analysis_result(change_point_step=step, change_point_epoch=step, zigzag_onset=step, eos_step=step)
    trajectory_attrs = {"status": "completed", "trajectory_id": "abc"} if nones else \
        {"status": "diverged", "trajectory_id": "abc", "diverged_at": 5}
    path = tmp_path / "a.h5"
    store.write_analysis(path, written, {"h": 3}, trajectory_attrs)
    read = store.read_analysis(path)
    for field in dataclasses.fields(analysis.Analysis):  # every computed field comes back as it was
        expected, got = getattr(written, field.name), getattr(read, field.name)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(got, expected, err_msg=field.name)
            assert got.dtype == expected.dtype, field.name
        else:
            assert got == expected, field.name
    with h5py.File(path, "r") as f:
        for name, field in store.ANALYSIS_FIELDS.items():  # every field of the table, in the file and back
            expected = trajectory_attrs.get(field.copies) if field.copies else getattr(written, name)
            got = getattr(read, name)
            if isinstance(expected, np.ndarray):
                np.testing.assert_array_equal(got, expected, err_msg=name)
            else:
                assert got == expected, name
            if field.is_attribute:
                python_type = {"int": int, "float": float, "string": str, "JSON string": str}[field.dtype]
                assert type(store.attr_value(f.attrs[name])) is python_type, name
            else:
                dtype = f[field.where].dtype
                assert str(dtype) == field.dtype or h5py.check_string_dtype(dtype) and field.dtype == "string", name
    assert {f.name for f in dataclasses.fields(read)} == {*store.ANALYSIS_FIELDS, "config", "format_version"}
    assert read.transitions == [(2, "smooth", "random"), (3, "random", "zigzag")]
    assert (read.trajectory_status, read.trajectory_id, read.config, read.format_version) == \
        (trajectory_attrs["status"], "abc", {"h": 3}, store.FORMAT_VERSION)
    assert read.diverged_at == (None if nones else 5) and len(read) == 8
    with h5py.File(path, "r") as f:
        for name in ("change_point_step", "change_point_epoch", "zigzag_onset", "eos_step", "diverged_at"):
            assert f.attrs[name] == (-1 if nones else getattr(read, name)), name


def test_an_analysis_missing_a_name_is_refused_in_one_line(tmp_path):
    path = tmp_path / "a.h5"
    store.write_analysis(path, analysis_result(), {}, {"status": "completed"})
    with h5py.File(path, "a") as f:
        del f.attrs["eos_step"]
        del f["windows/corr"]
    with pytest.raises(store.ZigzagError, match=r"missing windows/corr, @eos_step; re-run `zigzag analyze`"):
        store.read_analysis(path)


def test_trajectory_none_values_are_none(tmp_path):
    """A trajectory's "none" attributes (-1 or absent on disk) read as None: no divergence, no change point."""
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {"schedule": {"kind": "gawu", "unit": "epoch"}}, n_params=3,
                                           n_train=4, lags=2)
    for row in rows(3):
        writer.append(row)
    writer.finish("completed", change_point_step=-1, change_point_epoch=-1)
    traj = store.read_trajectory(path)
    assert traj.diverged_at is None and store.schedule_change_point(traj) is None
    writer = store.TrajectoryWriter.create(path, {"schedule": {"kind": "gawu", "unit": "epoch"}}, n_params=3,
                                           n_train=4, lags=2)
    writer.append(rows(1)[0])
    writer.finish("diverged", diverged_at=0, change_point_step=0, change_point_epoch=0)
    traj = store.read_trajectory(path)
    assert traj.diverged_at == 0 and store.schedule_change_point(traj) == 0


def test_every_trajectory_dataset_keeps_its_checksum_through_a_resume(tmp_path):
    """Fletcher-32 on /steps/* and /raw/*; ``reopen`` truncates (resizes) them, and they keep it."""
    path = tmp_path / "t.h5"
    writer = store.TrajectoryWriter.create(path, {}, n_params=10, n_train=4, lags=2, raw_dtype="float16",
                                           raw_compression="gzip")
    for k, row in enumerate(rows(6)):
        writer.append(row)
        writer.append_raw(k, np.full(10, k, dtype=np.float16))
    writer.close()
    reopened = store.TrajectoryWriter.reopen(path, 4)
    reopened.append(rows(6)[5])
    reopened.append_raw(4, np.ones(10, dtype=np.float16))
    reopened.finish("completed")
    with h5py.File(path, "r") as f:
        datasets = [f[f"steps/{name}"] for name in f["steps"]] + [f["raw/gradients"], f["raw/steps"]]
        assert len(datasets) == len(store.STEP_SERIES) + len(store.LAG_SERIES) + 2
        assert all(ds.fletcher32 for ds in datasets), [ds.name for ds in datasets if not ds.fletcher32]
        assert f["raw/steps"][()].tolist() == [0, 1, 2, 3, 4] and len(f["steps/loss"]) == 5


def test_the_torch_version_is_read_without_importing_torch(monkeypatch):
    import torch

    monkeypatch.delitem(sys.modules, "torch")
    assert store.torch_version() == torch.__version__  # parsed from torch/version.py, build tag included
    assert "torch" not in sys.modules


def test_an_analysis_job_does_not_import_torch(files, tmp_path):
    """``zigzag analyze`` writes the versions without torch's seconds of start-up (each of a workflow's analyses)."""
    out = tmp_path / "analysis.h5"
    check = ("import sys; from zigzag.cli import main; code = main(sys.argv[1:]); "
             "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", check, "analyze", str(files["traj"]), "--out", str(out),
                             "--h", "3", "--windows", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        assert json.loads(f.attrs["versions"])["torch"] == store.torch_version()
