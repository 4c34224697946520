"""The background raw-gradient writer: the same file as synchronous writing, bounded memory, errors surface."""

import threading

import h5py
import numpy as np
import pytest
import torch

from zigzag import store
from zigzag.rawdump import RawGradientWriter

P = 3000


def gradients(n):
    return [torch.randn(P, generator=torch.Generator().manual_seed(k)) * 10 ** (k % 5 - 2) for k in range(n)]


def new_file(path, dtype, compression):
    return store.TrajectoryWriter.create(path, {}, n_params=P, n_train=4, lags=1, raw_dtype=dtype,
                                         raw_compression=compression)


@pytest.mark.parametrize("dtype, compression", [("float32", None), ("float16", "gzip")])
def test_background_writer_file_is_identical_to_synchronous_writing(tmp_path, dtype, compression):
    steps, grads = [0, 3, 4, 9, 10, 20, 21], gradients(7)
    sync = new_file(tmp_path / "sync.h5", dtype, compression)
    for k, g in zip(steps, grads):  # what the trainer wrote before the writer thread
        sync.append_raw(k, g.cpu().numpy().astype(dtype, copy=False))
    sync.close()
    writer = new_file(tmp_path / "async.h5", dtype, compression)
    dump = RawGradientWriter(writer, P, dtype, torch.device("cpu"), depth=2)
    for k, g in zip(steps, grads):
        dump.put(k, g)
        g.mul_(-3.0)  # the trainer reuses the gradient buffer at once: the dump must hold its own copy
    dump.close()
    writer.close()
    with h5py.File(tmp_path / "sync.h5", "r") as a, h5py.File(tmp_path / "async.h5", "r") as b:
        for name in ("raw/gradients", "raw/steps"):
            assert a[name].dtype == b[name].dtype and a[name].chunks == b[name].chunks
            assert a[name].compression == b[name].compression
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
            assert a[name][()].tobytes() == b[name][()].tobytes()


def test_put_blocks_while_all_buffers_wait_to_be_written(tmp_path, monkeypatch):
    writer = new_file(tmp_path / "t.h5", "float32", None)
    gate, written = threading.Event(), []
    original = writer.append_raw

    def slow_append(step, gradient):
        gate.wait()
        original(step, gradient)
        written.append(step)

    monkeypatch.setattr(writer, "append_raw", slow_append)
    dump = RawGradientWriter(writer, P, "float32", torch.device("cpu"), depth=2)
    grads = gradients(3)
    dump.put(0, grads[0])
    dump.put(1, grads[1])
    third = threading.Thread(target=dump.put, args=(2, grads[2]))
    third.start()
    third.join(0.5)
    assert third.is_alive(), "a third put must wait while both buffers are queued"
    gate.set()
    third.join(10)
    dump.close()
    assert written == [0, 1, 2]
    writer.close()


def test_a_write_error_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    writer = new_file(tmp_path / "t.h5", "float32", None)

    def broken(step, gradient):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "append_raw", broken)
    dump = RawGradientWriter(writer, P, "float32", torch.device("cpu"))
    dump.put(0, gradients(1)[0])
    with pytest.raises(OSError, match="disk full"):
        dump.drain()
    writer.close()
