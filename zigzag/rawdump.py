"""Raw gradients written off the training step's path: a background writer with a bounded queue.

``put(k, g)`` copies g_k into one of ``depth`` host buffers (pinned memory and a non-blocking copy on
CUDA, so the device does not wait) and hands it to a writer thread, which appends it to
``/raw/gradients`` through ``TrajectoryWriter.append_raw`` (converted to the file's dtype there, as a
synchronous write would). When all buffers wait to be written, ``put`` blocks until one is free:
back-pressure, not unbounded memory. ``drain()`` returns once every row put so far is in the file (the
trainer calls it before a checkpoint and at the end); the rows arrive in the order they were put, so the
file is the one a synchronous writer would produce.
"""

from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from zigzag.store import TrajectoryWriter


class RawGradientWriter:
    """Background appends of flat gradients to a trajectory's ``/raw/gradients``."""

    def __init__(self, writer: TrajectoryWriter, n_params: int, dtype: str, device: torch.device,
                 depth: int = 2):
        self.writer, self.dtype = writer, np.dtype(dtype)
        pinned = device.type == "cuda"
        self.free: queue.Queue = queue.Queue()
        for _ in range(depth):
            self.free.put(torch.empty(n_params, dtype=torch.float32, pin_memory=pinned))
        self.pending: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="zigzag-raw-writer", daemon=True)
        self.thread.start()

    def put(self, step: int, grad: torch.Tensor) -> None:
        """Queue g_k for writing; blocks while all ``depth`` buffers are still waiting to be written."""
        self._raise()
        buffer = self.free.get()
        buffer.copy_(grad, non_blocking=True)
        event = None
        if grad.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.put((step, buffer, event))

    def drain(self) -> None:
        """Wait until every gradient put so far is in the file."""
        self.pending.join()
        self._raise()

    def close(self) -> None:
        """Drain and stop the writer thread."""
        self.drain()
        self.pending.put(None)
        self.thread.join()

    def _write(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                self.pending.task_done()
                return
            step, buffer, event = item
            try:
                if self.error is None:
                    if event is not None:
                        event.synchronize()
                    self.writer.append_raw(step, buffer.numpy().astype(self.dtype, copy=False))
            except BaseException as err:  # re-raised in the training thread by put/drain
                self.error = err
            finally:
                self.free.put(buffer)
                self.pending.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error
