"""The trajectory writer buffers rows and writes them in blocks; the file is the one row-by-row writing gave."""

import numpy as np
import pytest

from zigzag import store


def rows(n, lags=2):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        row = {"loss": rng.random(), "accuracy": rng.random(), "lr": 0.1, "epoch": k, "grad_norm": rng.random(),
               "time": 0.5 * k, "dot": rng.random(lags + 1), "opposite": rng.random(lags + 1)}
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
