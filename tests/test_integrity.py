"""A damaged or foreign file is refused in one line, never analysed: a changed byte fails the Fletcher-32
checksum, and values no run writes (a correlation outside [-1, 1], series of different lengths, a missing
/steps/dot or lags) fail the reader's checks. Files written before the checksum still read."""

import shutil

import h5py
import numpy as np
import pytest
from conftest import write_synthetic_dataset

from zigzag import store
from zigzag.cli import main

LAGS = 3


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A dataset and a real 8-step trajectory of it, trained once for the module."""
    root = tmp_path_factory.mktemp("integrity")
    data = write_synthetic_dataset(root / "data.h5")
    trajectory = root / "t.h5"
    assert main(["train", "--dataset", str(data), "--model", "cnn", "--width", "0.5", "--lr", "0.05",
                 "--steps", "8", "--lags", str(LAGS), "--micro-batch", "48", "--device", "cpu", "--quiet",
                 "--out", str(trajectory)]) == 0
    return {"data": data, "trajectory": trajectory}


def one_line_error(capsys, argv) -> str:
    """Run ``zigzag argv`` in-process; assert exit 2 and exactly one stderr line ``zigzag: error: ...``."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("zigzag: error:") and err.count("\n") == 1, err
    return err


def copy(made, tmp_path, name="t.h5"):
    return shutil.copy(made["trajectory"], tmp_path / name)


def impossible_dot(path, k=5, correlation=-3.58) -> float:
    """The value of dot[k, 1] that makes the correlation of steps k-1 and k ``correlation`` in ``path``."""
    with h5py.File(path, "r") as f:
        dot = f["steps/dot"][()]
    return correlation * np.sqrt(dot[k, 0] * dot[k - 1, 0])


def change_bytes(path, k=5, value=None):
    """Overwrite the 8 bytes of dot[k, 1] inside the file (HDF5 is not told): the case of a flipped disk
    block. Returns the value written."""
    value = impossible_dot(path, k) if value is None else value
    with h5py.File(path, "r") as f:
        ds = f["steps/dot"]
        assert ds.chunks[0] >= len(ds) and ds.compression is None  # one uncompressed chunk, rows in order
        start = ds.id.get_chunk_info(0).byte_offset + (k * (LAGS + 1) + 1) * 8
        before = ds[k, 1]
    with open(path, "r+b") as raw:
        raw.seek(start)
        assert np.frombuffer(raw.read(8), np.float64)[0] == before  # the bytes of dot[k, 1]
        raw.seek(start)
        raw.write(np.float64(value).tobytes())
    return value


def without_checksum(path):
    """Rewrite ``path``'s /steps datasets as a zigzag without the checksum wrote them."""
    with h5py.File(path, "a") as f:
        for name, ds in list(f["steps"].items()):
            data, description, chunks = ds[()], ds.attrs["description"], ds.chunks
            del f["steps"][name]
            new = f["steps"].create_dataset(name, data=data, chunks=chunks, maxshape=(None, *data.shape[1:]))
            new.attrs["description"] = description
            assert not new.fletcher32


@pytest.mark.parametrize("command", ["analyze", "inspect"])
def test_a_changed_byte_in_steps_dot_fails_its_checksum(made, tmp_path, capsys, command):
    """The eight changed bytes that made an adjacent correlation of -3.58: the read fails on the checksum."""
    path = copy(made, tmp_path)
    change_bytes(path)
    argv = ["analyze", path, "--out", tmp_path / "a.h5", "--h", "3"] if command == "analyze" else ["inspect", path]
    err = one_line_error(capsys, argv)
    assert f"{path}: /steps/dot cannot be read" in err and "checksum" in err
    assert not (tmp_path / "a.h5").exists()


def test_a_file_without_checksums_still_reads_and_the_range_check_catches_the_same_bytes(made, tmp_path, capsys):
    path = copy(made, tmp_path)
    without_checksum(path)
    before = store.read_trajectory(made["trajectory"]).steps
    assert all(np.array_equal(v, before[k], equal_nan=True) for k, v in store.read_trajectory(path).steps.items())
    assert main(["analyze", str(path), "--out", str(tmp_path / "ok.h5"), "--h", "3"]) == 0
    capsys.readouterr()
    change_bytes(path)  # no checksum to fail: the value itself is impossible
    err = one_line_error(capsys, ["analyze", path, "--out", tmp_path / "a.h5", "--h", "3"])
    assert "/steps/dot[5, 1] gives the correlation -3.58 of steps 4 and 5, outside [-1, 1]" in err
    assert not (tmp_path / "a.h5").exists()


def test_an_impossible_correlation_written_consistently_is_refused(made, tmp_path, capsys):
    """The same -3.58 written through HDF5 (its checksum matches): refused by the range check."""
    path = copy(made, tmp_path)
    value = impossible_dot(path)
    with h5py.File(path, "a") as f:
        f["steps/dot"][5, 1] = value
    err = one_line_error(capsys, ["analyze", path, "--out", tmp_path / "a.h5", "--h", "3"])
    assert "/steps/dot[5, 1] gives the correlation -3.58" in err and not (tmp_path / "a.h5").exists()


def _set_attr(name, value):
    def change(f):
        f.attrs[name] = value
    return change


def _two_dot_columns(f):
    dot = f["steps/dot"][()]
    del f["steps/dot"]
    f["steps"].create_dataset("dot", data=dot[:, :2], maxshape=(None, 2), chunks=True)


def _set(name, index, value):
    def change(f):
        f[name][index] = value
    return change


DAMAGE = {
    "config not JSON": (_set_attr("config", "{not json"), "the 'config' attribute is not JSON"),
    "no /steps/dot": (lambda f: f.__delitem__("steps/dot"), "missing /steps/dot"),
    "no lags": (lambda f: f.attrs.__delitem__("lags"), "missing attribute lags"),
    "lags a string": (_set_attr("lags", "3"), "attribute lags is '3', not an integer >= 1"),
    "2 dot columns": (_two_dot_columns, "/steps/dot has shape (8, 2), expected [K, lags + 1 = 4]"),
    "loss shorter than dot": (lambda f: f["steps/loss"].resize(6, axis=0), "/steps/loss has 6 rows but /steps/dot 8"),
    "negative squared norm": (_set("steps/dot", (3, 0), -2.0), "/steps/dot[3, 0] = -2 is a negative squared norm"),
    "opposite share 1.5": (_set("steps/opposite", (4, 1), 1.5), "/steps/opposite holds 1.5, outside [0, 1]"),
}


@pytest.mark.parametrize("command", ["analyze", "inspect"])
@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_or_foreign_trajectory_is_one_line(made, tmp_path, capsys, case, command):
    path = copy(made, tmp_path)
    change, expected = DAMAGE[case]
    with h5py.File(path, "a") as f:
        change(f)
    argv = ["analyze", path, "--out", tmp_path / "a.h5", "--h", "3"] if command == "analyze" else ["inspect", path]
    err = one_line_error(capsys, argv)
    assert f"zigzag: error: {path}: " in err and expected in err, err
    assert not (tmp_path / "a.h5").exists()


@pytest.mark.parametrize("command", ["train", "inspect"])
def test_a_dataset_whose_config_is_not_json_is_one_line(made, tmp_path, capsys, command):
    data = shutil.copy(made["data"], tmp_path / "d.h5")
    with h5py.File(data, "a") as f:
        f.attrs["config"] = "[1, 2"
    argv = ["inspect", data] if command == "inspect" else \
        ["train", "--dataset", data, "--model", "cnn", "--lr", "0.1", "--steps", "2", "--device", "cpu",
         "--out", tmp_path / "t.h5"]
    err = one_line_error(capsys, argv)
    assert f"{data}: the 'config' attribute is not JSON" in err and not (tmp_path / "t.h5").exists()
