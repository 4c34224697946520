"""Recording a training run: what each step's gradient becomes in a trajectory file (docs/formats.md)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace

import h5py
import torch
from torch import nn

from zigzag import fingerprint, store
from zigzag.distributed import Group
from zigzag.errors import ZigzagError
from zigzag.lagstats import FlatGradients, LagRing
from zigzag.rawdump import RawGradientWriter
from zigzag.settings import MAX_STEPS, selected
from zigzag.sharpness import ClosureHessian, SharpnessTracker


class Recorder:
    """Writes a zigzag-trajectory file from a training loop's gradients, one row per step.

    Call ``record`` once per step k, after the backward pass and before the optimizer step. It reads g_k,
    the gradient of every parameter that requires one (its ``.grad``; None counts as zero), flattened in
    ``model.parameters()`` order, and stores in ``/steps``:

        grad_norm[k]   = |g_k|
        dot[k, l]      = <g_k, g_(k-l)>                               l = 0..L (L = ``lags``), NaN for l > k
        opposite[k, l] = #{i: g_k[i] g_(k-l)[i] < 0} / P              (P entries; an exact 0 never counts)
        opposite_nonzero[k, l], opposite_weight[k, l]                  the same flips among the entries non-zero
                                                                       in both, and weighted by |g_k[i] g_(k-l)[i]|

    from which ``zigzag analyze`` computes the correlation of two gradients, mu(k, k-l) = dot[k, l] /
    (|g_k| |g_(k-l)|) (paper eq. 2), and its mean over a window of h steps (eq. 3). The dot products are
    within 1e-6 of float64 (float32 blocks added in float64, ``LagRing``). With them go the loop's own
    scalars (``loss``, ``lr``, and any other series the file has: ``accuracy``, ``epoch``, ``test_loss``,
    ...; a series not given is NaN), ``time`` (seconds since the recorder started), and, at the steps
    ``raw_steps`` selects (None, every N-th step, or a set of steps), g_k itself in ``/raw/gradients``; at
    the steps ``parameter_steps`` selects, theta_k (the parameters g_k was taken at, float32, written
    synchronously) in ``/raw/parameters``. With ``per_layer=True`` it also stores, per parameter tensor t
    (``model.named_parameters()`` order, names and sizes in the file's ``layer_names`` and ``layer_sizes``),
    ``layer_dot[k, t, l]`` and ``layer_opposite[k, t, l]``: the dot and the opposite-sign share restricted to t's
    entries. The file's ``arithmetic`` attribute records what decides the last bits of the loop's sums
    (``zigzag.fingerprint``: torch's build, BLAS, CPU, threads, ...).

    At construction every such parameter's ``.grad`` becomes a view into the recorder's flat buffer: a
    loop that zeroes gradients in place (``zero_grad(set_to_none=False)``) is read without a copy; one that
    sets them to None (torch's default) has them copied into the buffer at ``record``.

    ``params``: record the gradients of these parameters only (in this order) instead of every one that requires
    a gradient. Any optimizer and schedule: ``record`` reads the gradient the loop computed, before the step uses
    it. With gradient clipping call ``record`` after ``clip_grad_norm_``, and with mixed precision after
    ``scaler.unscale_(optimizer)``: g_k is then the gradient the optimizer steps with (clipped, unscaled), the
    one whose successive directions the correlations describe. Pass ``lr`` to ``record`` each step.

    Sharpness: with ``closure`` (a function returning the training loss at the parameters as they are, e.g.
    ``lambda: F.cross_entropy(model(x), y)``) and ``sharpness`` (a run's ``sharpness`` settings, e.g.
    ``{"every": "every:10"}``), ``record`` also solves for lambda_max of the closure's Hessian at the steps a run
    would (``SharpnessTracker``: the grid refined near 2/lr) and writes the same series as ``zigzag train``
    (``store.SHARPNESS_SERIES``), so the sharpness figure and the edge-of-stability analysis read the file.
    ``settings`` (stored as the file's ``config``) may hold what the loop is, partially: ``seed`` (what the
    workflow takes as a trajectory run's seed), ``lr``, ``optimizer`` ("sgd" draws curves per iteration), ...

    Resuming a killed loop: create the recorder with ``resume=True`` and call ``checkpoint()`` where the loop
    saves its own model and optimizer (after the optimizer step; ``close`` checkpoints too). The lag ring
    (the last L + 1 gradients, and the sharpness solver's warm start) goes to ``<path>.ring.h5`` beside the
    file, plain arrays. A new ``Recorder(path, model, lags, resume=True)`` on the unfinished file reloads it and
    truncates the file to the steps it covers: continue the loop at ``recorder.step`` with the model and
    optimizer saved at that step, and the statistics equal those of an uninterrupted loop. Without a file there
    it starts afresh; ``finish`` removes the ring file.

    A context manager: leaving the block normally finishes the file (status ``completed``); leaving it by an
    exception closes it as it stands (status ``running``, unfinished).

        with Recorder("run.h5", model, lags=8) as recorder:
            for k in range(steps):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                recorder.record(loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
                optimizer.step()
    """

    def __init__(self, path: str | os.PathLike, model: nn.Module, lags: int = 8, *,
                 params: Iterable[torch.Tensor] | None = None, settings: dict | None = None, n_train: int = 0,
                 raw_steps: set[int] | int | None = None, raw_dtype: str = "float32",
                 raw_compression: str | None = None, extra_series: dict[str, str] | None = None,
                 parameter_steps: set[int] | int | None = None, attrs: dict | None = None,
                 per_layer: bool = False, closure: Callable[[], torch.Tensor] | None = None,
                 sharpness: dict | None = None, resume: dict | bool | None = None, group: Group | None = None):
        """Create ``path`` (``settings``: the run's settings, stored as its ``config``; ``n_train``: training
        examples; ``attrs``: more file attributes, beside the arithmetic's fingerprint), or with ``resume`` (a
        ``state_dict`` with ``n_steps`` and ``elapsed`` added) reopen the unfinished file there, truncated to its
        first ``n_steps`` steps (``store.ZigzagError`` if it is damaged); ``resume=True``: the same from
        ``<path>.ring.h5`` (see the class); ``parameter_steps``: the steps whose theta_k goes to
        ``/raw/parameters`` (None: none). ``group``: the processes of a run split across them
        (zigzag/distributed.py), each keeping the lag ring of its slice of g_k; rank 0 alone writes the file."""
        self.parameters = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        if not self.parameters or not all(p.requires_grad for p in self.parameters):
            raise ValueError("params must be a non-empty iterable of parameters that require grad")
        self.model, self.closure = model, closure
        self.tracker = None
        if closure is not None:
            if (sharpness or {}).get("every", "none") == "none":
                raise ValueError("closure records sharpness: give sharpness={'every': 'every:K' or a list of steps}")
            self.tracker = SharpnessTracker(_sharpness_settings(sharpness, (settings or {}).get("seed", 0)), None, None,
                                            MAX_STEPS, str(path))
            settings = {**(settings or {}), "sharpness": sharpness}
            extra_series = {**(extra_series or {}), **store.SHARPNESS_SERIES}
        self.gradients = FlatGradients(model, self.parameters)
        n_params = self.gradients.flat.numel()
        device = self.gradients.flat.device
        self.group = group or Group()
        if not self.group.leader:
            raw_steps = parameter_steps = None
        self.raw_steps, self.parameter_steps = raw_steps, parameter_steps
        names = {id(p): name for name, p in model.named_parameters()}
        layers = {names.get(id(p), f"parameter{i}"): p.numel() for i, p in enumerate(self.parameters)} \
            if per_layer else None
        self.share = self.group.share(n_params)  # the entries [start, stop) of g_k in this process's ring
        # allocated before the file is touched
        self.ring = LagRing(self.share[1] - self.share[0], lags, device, total=n_params,
                            layer_sizes=_clipped(layers.values(), *self.share) if per_layer else None,
                            layer_totals=list(layers.values()) if per_layer else None)
        self.ring_path = ring_file(path)
        if resume is True:
            resume = self._saved_state(path) if os.path.exists(path) else None
        self.writer = None  # rank 0's alone
        if self.group.leader and resume is None:
            self.writer = store.TrajectoryWriter.create(
                path, settings or {}, n_params=n_params, n_train=n_train, lags=lags,
                raw_dtype=raw_dtype if raw_steps is not None else None, raw_compression=raw_compression,
                raw_parameters=parameter_steps is not None, extra_series=extra_series,
                attrs={**fingerprint.attrs(device), **(attrs or {})}, layers=layers)
        elif self.group.leader:
            self.writer = store.TrajectoryWriter.reopen(path, resume["n_steps"])
        if resume is not None:
            self.load_ring(resume["ring"])
            if self.tracker is not None and "sharpness" in resume:
                self.tracker.load_state_dict(resume["sharpness"])
        elapsed = 0.0 if resume is None else resume["elapsed"]
        self.raw = RawGradientWriter(self.writer, n_params, raw_dtype, device) if raw_steps is not None else None
        self.started = time.perf_counter() - elapsed

    def _saved_state(self, path) -> dict:
        """What ``checkpoint`` saved for the unfinished file ``path``, as a ``resume`` state (``ZigzagError`` if
        there is none for it)."""
        with store.open_file(path, store.TRAJECTORY) as f:
            status, trajectory_id = f.attrs["status"], str(f.attrs["trajectory_id"])
        if status != "running":
            raise ZigzagError(f"{path}: finished (status {status}); nothing to resume: delete it to start afresh")
        try:
            with h5py.File(self.ring_path, "r") as f:
                if str(f.attrs["trajectory_id"]) != trajectory_id:
                    raise ZigzagError(f"{self.ring_path} belongs to another trajectory than {path}; delete both "
                                      f"to start afresh")
                values = torch.from_numpy(f["values"][()])
                state = {"n_steps": int(f.attrs["step"]), "elapsed": float(f.attrs["elapsed"]),
                         "ring": {"values": values, "step": int(f.attrs["step"])}}
                if "eigenvector" in f:
                    state["sharpness"] = {"eigenvector": torch.from_numpy(f["eigenvector"][()]),
                                          "steps": json.loads(f.attrs["solve_steps"])}
        except (OSError, KeyError) as err:
            raise ZigzagError(f"{path}: no lag ring to resume from ({self.ring_path}: {err}); delete {path} to start "
                              f"afresh") from None
        expected = (self.ring.lags + 1, self.gradients.flat.numel())
        if tuple(values.shape) != expected:
            raise ZigzagError(f"{self.ring_path}: a lag ring of shape {tuple(values.shape)}, this recorder's is "
                              f"{expected} (lags + 1, parameters): other lags or parameters")
        return state

    @property
    def step(self) -> int:
        """The step the next ``record`` stores: the number of steps recorded so far."""
        return self.ring.step

    def gradient(self) -> torch.Tensor:
        """g_k, flat, in the recorder's buffer: the parameters' ``.grad`` (copied unless they are its views)."""
        if not self.gradients.intact():
            self.gradients.gather()
        return self.gradients.flat

    def measure(self) -> dict:
        """Lag statistics of g_k (``grad_norm``, ``store.LAG_SERIES`` and, per layer, ``store.LAYER_SERIES``), g_k
        queued for ``/raw/gradients`` if the step is selected and its norm finite, and theta_k written if its step
        is selected; ``record`` without writing the row (call it before the optimizer step)."""
        k, flat = self.step, self.gradient()
        layers, mine = {}, flat[self.share[0]:self.share[1]]
        reduce = self.group.sum if self.group.distributed else None
        if self.ring.layers is None:
            stats = self.ring.push(mine, reduce)
        else:
            stats, per_layer = self.ring.push_layers(mine, reduce)
            layers = {"layer_dot": per_layer.dot.numpy(), "layer_opposite": per_layer.opposite.numpy()}
        grad_norm = math.sqrt(stats.dot[0]) if stats.dot[0] >= 0 else math.nan
        if self.raw is not None and selected(self.raw_steps, k) and math.isfinite(grad_norm):
            self.raw.put(k, flat)
        if self.parameter_steps is not None and selected(self.parameter_steps, k):
            theta = torch.cat([p.detach().reshape(-1) for p in self.parameters]).float().cpu().numpy()
            self.writer.append_parameters(k, theta)
        return {"grad_norm": grad_norm, **{name: series.numpy() for name, series in stats._asdict().items()}, **layers}

    def write(self, row: dict) -> None:
        """Append ``row`` (with ``time`` now, unless it has one) as the next step of the file."""
        row.setdefault("time", time.perf_counter() - self.started)
        if self.writer is not None:
            self.writer.append(row)

    def record(self, **series) -> dict:
        """Record step k: the lag statistics of g_k (see the class) and ``series`` (e.g. ``loss=``, ``lr=``);
        returns the row written."""
        k = self.step
        row = {**series, **self.measure()}
        if self.tracker is not None and self.tracker.due(k):
            if "lr" not in series:
                raise ValueError("record(lr=...) is needed with sharpness: the solve compares it with 2/lr")
            row.update(self.tracker.measure(self.model, k, series["lr"], self.gradients.flat,
                                            ClosureHessian(self.closure, self.parameters)))
        self.write(row)
        return row

    def flush(self) -> None:
        """Put every step recorded so far in the file (raw gradients included)."""
        if self.raw is not None:
            self.raw.drain()
        if self.writer is not None:
            self.writer.flush()

    def checkpoint(self) -> None:
        """Flush the file and save what ``resume=True`` continues from (the class says where and how)."""
        self.flush()
        state = self.ring.state_dict()
        partial = self.ring_path.with_name(self.ring_path.name + ".tmp")
        with h5py.File(partial, "w") as f:
            f.attrs.update(trajectory_id=str(self.writer.f.attrs["trajectory_id"]), step=state["step"],
                           elapsed=time.perf_counter() - self.started)
            f["values"] = state["values"].cpu().numpy()
            if self.tracker is not None and self.tracker.eigenvector is not None:
                f["eigenvector"] = self.tracker.eigenvector.cpu().numpy()
                f.attrs["solve_steps"] = json.dumps(self.tracker.steps.state_dict())
        os.replace(partial, self.ring_path)

    def state_dict(self) -> dict:
        """What a resume needs besides the file: the lag ring (the whole vector's, gathered from every process:
        call it on every rank) and the file's ``trajectory_id``."""
        ring = self.ring.state_dict()
        n_params = self.gradients.flat.numel()
        ring["values"] = self.group.gather(ring["values"], n_params)
        trajectory_id = "" if self.writer is None else str(self.writer.f.attrs["trajectory_id"])
        return {"ring": ring, "trajectory_id": trajectory_id}

    def load_ring(self, state: dict) -> None:
        """Restore the lag ring from a ``state_dict``'s whole-vector ring, taking this process's slice."""
        start, stop = self.share
        self.ring.load_state_dict({**state, "values": state["values"][:, start:stop]})

    def finish(self, status: str = "completed", **attrs) -> None:
        """Write what is left, set ``status`` and ``attrs`` (``total_steps``, unless the file has it: the steps
        recorded), and close the file."""
        if self.writer is None:
            return
        if self.raw is not None:
            self.raw.close()
        if "total_steps" not in self.writer.f.attrs:
            attrs = {"total_steps": self.writer.n_steps, **attrs}
        self.writer.finish(status, **attrs)
        self.ring_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Write what is left and close the file as it stands (unfinished: status ``running``), with the lag ring
        saved for ``resume=True`` (``checkpoint``)."""
        if self.raw is not None:
            self.raw.close()
        if self.writer is not None:
            if not self.group.distributed:
                self.checkpoint()
            self.writer.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish()
        else:
            self.close()



def ring_file(path: str | os.PathLike) -> Path:
    """Where ``Recorder.checkpoint`` saves the lag ring of the trajectory ``path``: ``<path>.ring.h5``."""
    return Path(str(path) + ".ring.h5")


def _sharpness_settings(sharpness: dict, seed: int) -> SimpleNamespace:
    """What ``SharpnessTracker`` reads of a run's settings, for a loop's ``sharpness`` mapping (checked like a
    run's ``sharpness``)."""
    from zigzag.runconfig import SHARPNESS

    for key, value in sharpness.items():
        if key not in SHARPNESS or key == "subset":
            raise ValueError(f"sharpness key {key!r}: valid are {', '.join(k for k in SHARPNESS if k != 'subset')}")
        if key != "every":
            SHARPNESS[key].check(f"sharpness.{key}", value)
    return SimpleNamespace(sharpness_setting=lambda key: sharpness.get(key, SHARPNESS[key].default), micro_batch=0,
                           seed=seed, loss="cross_entropy")  # the default operator's loss; the closure replaces it


def _clipped(sizes, start: int, stop: int) -> list[int]:
    """The entries of each tensor (``sizes``, in flat order) that lie in [start, stop)."""
    clipped, offset = [], 0
    for size in sizes:
        clipped.append(max(0, min(stop, offset + size) - max(start, offset)))
        offset += size
    return clipped
