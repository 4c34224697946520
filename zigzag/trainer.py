"""Training with gradient lag statistics at every step: exact full-batch GD or mini-batch SGD.

Full-batch GD (paper eq. 1): g_k = (1/n) sum_i grad l(f(x_i), y_i) at theta_k, accumulated as
sum-reduced cross-entropy over micro-batches of the device-resident training set, each divided by n;
for a model without batch statistics this equals the one-giant-batch gradient. With BatchNorm the
model runs in train mode, so each micro-batch is normalised by its own statistics ("ghost batches" of
size ``micro_batch``): g_k is then the gradient of the mean of per-micro-batch-normalised losses, the
one-batch gradient only when ``micro_batch >= n``. Running statistics (used for the test evaluation)
are updated once per micro-batch. SGD draws batches of ``batch_size`` from a permutation per epoch,
seeded by (seed, epoch), dropping the last incomplete batch; a step is one iteration.

Loss and accuracy of step k come from the same forward passes that computed g_k. A checkpoint (model,
optimizer, lag ring, schedule, clock) is written every ``checkpoint_every`` steps into
``<out>.resume/`` beside the output, together with the trajectory being written; rerunning with the
same settings, the same dataset file contents (sha256), the same training code (``code_hash``) and the
same arithmetic (device, precision and, on a CPU, the thread count) resumes there, anything else starts
afresh and says why; a damaged partial trajectory, or a checkpoint that holds more than tensors, numbers,
strings and plain containers (``torch.load(weights_only=True)``: nothing in it can run code), also starts
afresh. The finished trajectory is renamed to ``<out>`` at the end; a rerun that finds it beside the
checkpoint of the run that wrote it (killed before the cleanup) only removes the leftover folder. A run
holds the lock of ``<out>`` (``store.output_lock``) while it trains, so a second run of the same output
stops at once, and it deletes its resume folder only while that holds nothing but the files it writes
there (``RESUME_FILES``).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zigzag import gpulease, store
from zigzag.codehash import code_hash
from zigzag.errors import Interrupted, ZigzagError
from zigzag.models import build_model, count_parameters
from zigzag.precision import Precision
from zigzag.recorder import Recorder
from zigzag.runconfig import RunConfig
from zigzag.schedules import GAWU, GradientCorrelationMonitor, WarmupCosine
from zigzag.settings import MAX_STEPS, parse_step_selection
from zigzag.sharpness import NCV_COLD, SolveSteps, gradient_eigenvector_cosine, top_eigenpair

PROGRESS_H = 5  # window of the mean gradient correlation shown while training (paper eq. 3)
RESUME_FILES = ("trajectory.h5", "checkpoint.pt", "checkpoint.tmp")  # all a run writes into <out>.resume/


def resume_folder(out: str | os.PathLike) -> Path:
    """The folder beside output ``out`` that holds its partial trajectory and checkpoint: ``<out>.resume``."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def check_run_paths(out: str | os.PathLike, inputs: list) -> None:
    """Refuse a run one of whose input files is its output, its lock, one of its resume files (through
    symlinks or hard links), or lies inside its resume folder, and a resume folder that is a file or a link;
    before anything is written."""
    folder = resume_folder(out)
    store.check_outputs([Path(out), *(folder / name for name in RESUME_FILES)], inputs, folders=[folder])
    check_resume_folder(folder)


def check_resume_folder(folder: Path) -> None:
    """One line if ``<out>.resume`` exists but is a file or a link, not a folder a run made."""
    if folder.is_symlink() or (os.path.lexists(folder) and not folder.is_dir()):
        out = folder.with_name(folder.name.removesuffix(".resume"))
        raise ZigzagError(f"{folder} exists and is not a folder zigzag wrote (the checkpoint folder of {out}); move "
                          f"or delete it")


def remove_resume_folder(folder: Path) -> None:
    """Delete a resume folder that holds nothing but the files a run writes there (``RESUME_FILES``); if it
    holds anything else (or is a file or a link), raise ``ZigzagError`` saying what, deleting nothing."""
    if not os.path.lexists(folder):
        return
    check_resume_folder(folder)
    foreign = sorted(p.name for p in folder.iterdir()
                     if p.name not in RESUME_FILES or p.is_symlink() or not p.is_file())
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ZigzagError(f"{folder} holds files zigzag did not write there ({listed}); nothing deleted: move them "
                          f"out of it and rerun")
    for name in RESUME_FILES:
        (folder / name).unlink(missing_ok=True)
    folder.rmdir()


# What a checkpoint is bound to besides the settings, each with how a change is named.
BINDING = {"dataset_sha256": "the contents of the dataset file", "code": "the training code (zigzag package sources)",
           "device": "the device", "precision": "the precision", "threads": "the CPU thread count"}


@dataclass
class DeviceData:
    """Normalised float32 images and int64 labels, resident on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    dataset_config: dict


def resolve_device(name: str, gpu: int | None = None) -> torch.device:
    """The training device; on CUDA, pinned to GPU ``gpu`` when a lease chose one (zigzag/gpulease.py)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ZigzagError("device=cuda but no CUDA GPU is visible; use device auto or cpu")
    if name == "cuda" and gpu is not None:
        torch.cuda.set_device(gpu)
        return torch.device("cuda", gpu)
    return torch.device(name)


def load_data(path: str, device: torch.device) -> DeviceData:
    arrays = store.read_dataset(path)
    mean = torch.tensor(arrays.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(arrays.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def images(a: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(a).to(device).float().div_(255.0) - mean) / std

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return DeviceData(images(arrays.train_images), labels(arrays.train_labels),
                      images(arrays.test_images), labels(arrays.test_labels),
                      arrays.num_classes, arrays.config)


def available_memory() -> int:
    """Bytes of RAM the kernel can hand out without swapping (MemAvailable), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batch: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (BatchNorm uses running statistics)."""
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(x), micro_batch):
        out = model(x[i:i + micro_batch])
        loss += F.cross_entropy(out, y[i:i + micro_batch], reduction="sum")
        correct += (out.argmax(1) == y[i:i + micro_batch]).sum()
    model.train()
    return loss.item() / len(x), correct.item() / len(x)


def accumulate_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the gradient of the mean loss over (x, y) to the parameters' ``.grad``.

    Sum-reduced loss per micro-batch divided by n = len(x); returns (loss sum, correct count) as tensors.
    """
    n = len(x)
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, n, micro_batch):
        xb, yb = x[i:i + micro_batch], y[i:i + micro_batch]
        out = model(xb)
        loss = F.cross_entropy(out, yb, reduction="sum")
        (loss / n).backward()
        loss_sum += loss.detach()
        correct += (out.detach().argmax(1) == yb).sum()
    return loss_sum, correct


class Progress:
    """tqdm bar on a terminal; otherwise one line about every 10% of the run."""

    def __init__(self, total: int, start: int, name: str, enabled: bool = True):
        self.total, self.enabled, self.name = total, enabled, name
        self.every = max(1, math.ceil(total / 10))
        self.bar = None
        self.t0, self.k0 = time.perf_counter(), start
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, unit="step")

    def update(self, k: int, loss: float, mean_mu: float) -> None:
        if not self.enabled:
            return
        rate = (k + 1 - self.k0) / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", mean_mu=f"{mean_mu:+.3f}", refresh=False)
            self.bar.update(1)
        elif (k + 1) % self.every == 0 or k + 1 == self.total:
            print(f"{self.name}: step {k + 1}/{self.total} loss {loss:.4f} mean_mu(h={PROGRESS_H}) "
                  f"{mean_mu:+.3f} {rate:.2f} steps/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Runs one ``RunConfig`` and writes its trajectory file (docs/formats.md, "zigzag-trajectory")."""

    def __init__(self, config: RunConfig, out: str | os.PathLike, progress: bool = True,
                 lease: gpulease.Lease | None = None):
        self.config, self.out, self.progress = config, Path(out), progress
        self.gpu_attrs = gpulease.attrs(lease)
        self.resume_dir = resume_folder(self.out)
        self.partial = self.resume_dir / "trajectory.h5"
        self.checkpoint = self.resume_dir / "checkpoint.pt"
        check_run_paths(self.out, [config.dataset])
        store.check_writable(self.out)
        self.device = resolve_device(config.device, None if lease is None else lease.index)
        self.precision = Precision(config.precision, self.device)
        self.data = load_data(config.dataset, self.device)
        if self.precision.channels_last:
            self.data.train_x = self.data.train_x.contiguous(memory_format=torch.channels_last)
            self.data.test_x = self.data.test_x.contiguous(memory_format=torch.channels_last)
        # What a checkpoint is bound to besides the settings (BINDING). The thread count changes the CPU's
        # reductions, so it binds CPU runs only.
        self.binding = {"dataset_sha256": store.file_sha256(config.dataset), "code": code_hash("train"),
                        "device": self.device.type if self.device.type != "cuda" else
                        f"cuda ({torch.cuda.get_device_name(self.device)})",
                        "precision": config.precision,
                        "threads": torch.get_num_threads() if self.device.type == "cpu" else None}
        n = len(self.data.train_x)
        if config.optimizer == "sgd":
            if config.batch_size > n:
                raise ZigzagError(f"invalid batch_size={config.batch_size}: larger than the training set ({n})")
            self.batches_per_epoch = n // config.batch_size
            self.total_steps = config.epochs * self.batches_per_epoch
            if self.total_steps > MAX_STEPS:
                raise ZigzagError(f"invalid epochs={config.epochs}: {self.batches_per_epoch} batches per epoch make "
                                  f"{self.total_steps} iterations, more than the {MAX_STEPS} a run may have; "
                                  f"lower epochs or raise batch_size")
        else:
            self.batches_per_epoch = 1
            self.total_steps = config.steps
        self.raw_selection = parse_step_selection(config.raw_gradients, self.total_steps, "raw_gradients")
        self.solve_steps = SolveSteps(
            parse_step_selection(config.sharpness_setting("every"), self.total_steps, "sharpness.every"),
            *(config.sharpness_setting(f"refine_{key}") for key in ("every", "from", "until")))
        subset = config.sharpness_setting("subset") or n
        if subset > n:
            raise ZigzagError(f"invalid sharpness.subset={subset}: larger than the training set ({n})")
        # A fixed seeded subset, in the order of the training set, so its micro-batches stay the same.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))[:subset].sort().values
        self.sharpness_data = (self.data.train_x[order.to(self.device)], self.data.train_y[order.to(self.device)])
        self.eigenvector: torch.Tensor | None = None  # warm start of the next Lanczos solve
        shape = self.data.train_x.shape
        model_args = dict(width=config.width, in_channels=shape[1], image_size=shape[2],
                          num_classes=self.data.num_classes, batch_norm=config.batch_norm)
        with torch.device("meta"):  # shapes only: the parameters are counted before anything is allocated
            self._check_memory(count_parameters(build_model(config.model, **model_args)))
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, **model_args).to(self.device)
        if self.precision.channels_last and self.device.type == "cpu":  # the gradient views keep the default layout
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        # the module the training step calls: compiled (same parameters) when ``compile`` is set
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.n_params = count_parameters(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=config.effective_lr, momentum=config.momentum,
                                         nesterov=config.nesterov, weight_decay=config.weight_decay)
        self.scheduler, self.steps_per_unit = self._build_scheduler()
        self.progress_monitor = GradientCorrelationMonitor(PROGRESS_H)
        self._epoch_order: tuple[int, torch.Tensor] | None = None
        self.prev_sq: float | None = None  # |g_(k-1)|^2, for the cosine of adjacent gradients
        self.recorder: Recorder | None = None  # writes the partial trajectory; set by open_trajectory
        self.at_step: int | None = None  # the step being taken, for the line that reports an interrupt
        self.checkpoint_step: int | None = None  # the step of the last checkpoint on disk, if any
        # the step's loss sum and correct count reach the host in one copy (pinned: asynchronous on CUDA)
        self._scalars = torch.empty(2, pin_memory=self.device.type == "cuda")

    def _memory_estimate(self, n_params: int) -> tuple[str, int, int]:
        """What the run keeps per parameter, in words, the bytes it needs at least (float32: the parameters,
        their gradient, the momentum buffer, the lag ring's lags + 1 gradients with their int8 signs, the
        Lanczos basis in float64 when sharpness is recorded; activations come on top) and the bytes available."""
        c = self.config
        per_param = 4 * (2 + (c.momentum > 0)) + (c.lags + 1) * (4 + 1)
        if c.sharpness_setting("every") != "none":
            per_param += 8 * ((c.sharpness_setting("ncv") or NCV_COLD) + 1)
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else available_memory()
        what = (f"the {c.model} at width {c.width:g} has {n_params:,} parameters; with its gradient and a lag ring of "
                f"lags + 1 = {c.lags + 1} gradients it needs {n_params * per_param / 2**30:,.1f} GiB")
        return what, n_params * per_param, free

    def _check_memory(self, n_params: int, failed: bool = False) -> None:
        """One line, before anything is allocated, if the model and its lag ring cannot fit in the device's
        available memory (or, ``failed``, because an allocation failed)."""
        what, need, free = self._memory_estimate(n_params)
        if need > free or failed:
            available = f"{free / 2**30:,.1f} GiB available"
            raise ZigzagError(f"invalid width={self.config.width:g} or lags={self.config.lags}: {what}, but "
                              f"{self.device.type} " + (f"could not allocate it ({available})" if failed else
                                                        f"has {available}") + "; lower width or lags")

    def _recorder(self, resume: dict | None = None) -> Recorder:
        """The recorder of the partial trajectory: created, or reopened with ``resume`` (``ZigzagError`` if the
        file is damaged)."""
        cfg = self.config
        return Recorder(
            self.partial, self.model, cfg.lags,
            settings={**cfg.to_dict(), "dataset_config": self.data.dataset_config},
            n_train=len(self.data.train_x), raw_steps=self.raw_selection, raw_dtype=cfg.raw_dtype,
            raw_compression=None if cfg.raw_compression == "none" else cfg.raw_compression,
            extra_series=store.SHARPNESS_SERIES if self.solve_steps.selection is not None else None,
            attrs={"device": str(self.device), "batch_norm_semantics": self._bn_semantics(),
                   "total_steps": self.total_steps, "batches_per_epoch": self.batches_per_epoch,
                   "dataset_sha256": self.binding["dataset_sha256"], "code_hash": self.binding["code"],
                   **self.gpu_attrs, **self._sharpness_attrs(), **self.precision.attrs()},
            resume=resume)

    def _build_scheduler(self) -> tuple[WarmupCosine | GAWU | None, int]:
        """The run's LR schedule and how many steps make one of its units (epoch or iteration)."""
        sched = self.config.schedule
        kind = self.config.schedule_setting("kind")
        per_unit = self.batches_per_epoch if self.config.schedule_setting("unit") == "epoch" else 1
        total = self.total_steps // per_unit
        if kind == "constant":
            return None, 1
        eta0 = sched["eta0"] * self.config.lr_scale
        if kind == "warmup_cosine":
            self.config.check_change_point(self.batches_per_epoch)
            return WarmupCosine(self.optimizer, eta0, sched["omega"], sched["change_point"], total,
                                growth=self.config.schedule_setting("growth")), per_unit
        return GAWU(self.optimizer, eta0, sched["omega"], total, h=self.config.schedule_setting("h"),
                    max_warmup=sched.get("max_warmup"), growth=self.config.schedule_setting("growth")), per_unit

    # -- one step -------------------------------------------------------------------------------

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples of step k: the whole set (GD) or batch k of its epoch's permutation (SGD)."""
        if self.config.optimizer == "gd":
            return self.data.train_x, self.data.train_y
        epoch, b = divmod(k, self.batches_per_epoch)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.data.train_x), generator=gen).to(self.device)
            self._epoch_order = (epoch, order)
        idx = self._epoch_order[1][b * self.config.batch_size:(b + 1) * self.config.batch_size]
        return self.data.train_x[idx], self.data.train_y[idx]

    # -- checkpoints ----------------------------------------------------------------------------

    def _save_checkpoint(self, n_steps: int, elapsed: float) -> None:
        """Save the state after ``n_steps`` steps, once the trajectory file holds all of them.

        Only tensors, numbers, strings and plain containers, so that it loads with ``weights_only=True``. A
        failed write (disk full) raises ``OSError`` naming the file, after removing the half-written one.
        """
        self.recorder.flush()
        state = {
            "config": self.config.to_dict(),
            **self.binding,
            "n_steps": n_steps,
            "elapsed": elapsed,
            "prev_sq": self.prev_sq,
            "progress_monitor": self.progress_monitor.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "eigenvector": self.eigenvector,
            "solve_steps": self.solve_steps.state_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            **self.recorder.state_dict(),  # the lag ring and the trajectory's id
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.checkpoint.with_suffix(".tmp")
        last = self.checkpoint.stat().st_size if self.checkpoint.exists() else 0
        store.check_free_space(tmp, max(last, _tensor_bytes(state)) + store.SPACE_MARGIN,
                               f"writing the checkpoint at step {n_steps}")
        sink = None
        try:
            with open(tmp, "wb") as f:
                sink = _RecordingFile(f)
                torch.save(state, sink)
            os.replace(tmp, self.checkpoint)
        except BaseException as err:  # disk full, Ctrl-C: no half-written checkpoint is left
            tmp.unlink(missing_ok=True)
            if isinstance(err, (OSError, RuntimeError)):  # torch.save reports a failed write as "unexpected pos"
                raise store.write_failed(tmp, sink.error if sink and sink.error else err) from None
            raise
        self.checkpoint_step = n_steps

    def _read_checkpoint(self) -> dict | None:
        """The checkpoint's state, loaded so that nothing in it can run code (``weights_only=True``); None
        (then start afresh, one line saying why) if it cannot be loaded so."""
        try:
            return torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        except Exception as err:  # a damaged file fails in pickle, zipfile or torch with assorted types
            if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
                why = "holds objects other than tensors, numbers, strings and plain containers (they could run code)"
            else:
                why = f"is unreadable ({type(err).__name__})"
            print(f"{self.out}: checkpoint {self.checkpoint} {why}; starting from step 0", file=sys.stderr)
            return None

    def _changes(self, state: dict) -> list[str]:
        """What differs between the run that wrote the checkpoint ``state`` and this one, each named."""
        def short(value) -> str:
            text = repr(value)
            return text if len(text) <= 40 else text[:37] + "..."

        saved, now = state.get("config"), self.config.to_dict()
        saved = saved if isinstance(saved, dict) else {}
        settings = [f"{key} {short(saved.get(key))}, now {short(now.get(key))}"
                    for key in sorted((saved.keys() | now.keys()) - set(BINDING)) if saved.get(key) != now.get(key)]
        changed = [f"the settings ({'; '.join(settings)})"] if settings else []
        for key, what in BINDING.items():
            if state.get(key) != self.binding[key]:
                if key == "dataset_sha256":
                    changed.append(f"{what} {self.config.dataset}")
                elif key == "code":
                    changed.append(what)
                else:
                    changed.append(f"{what} ({state.get(key)}, now {self.binding[key]})")
        return changed

    def _load_checkpoint(self) -> dict | None:
        """The checkpoint of an interrupted run with the same settings, dataset contents, training code and
        arithmetic (``BINDING``), loaded, with ``self.recorder`` reopened at its step; None (then start afresh,
        one line saying why) if any of them differs or the partial trajectory is damaged."""
        if not (self.checkpoint.exists() and self.partial.exists()):
            return None
        state = self._read_checkpoint()
        if state is None:
            return None
        changed = self._changes(state)
        if changed:
            print(f"{self.out}: {' and '.join(changed)} changed since the interrupted run; not resuming its "
                  f"checkpoint, starting from step 0", file=sys.stderr)
            return None
        try:
            self.recorder = self._recorder(resume=state)
        except ZigzagError as err:
            print(f"{self.out}: partial trajectory damaged, {err}; starting from step 0", file=sys.stderr)
            return None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.progress_monitor.load_state_dict(state["progress_monitor"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        self.eigenvector = state["eigenvector"]
        self.solve_steps.load_state_dict(state["solve_steps"])
        torch.set_rng_state(state["torch_rng"])
        return state

    def _finished_before(self) -> str | None:
        """The status of ``<out>`` if it is the finished trajectory of the run whose checkpoint is still in
        the resume folder (killed between the final rename and the cleanup) and that run is this one; the
        leftover folder is then removed. None otherwise."""
        if self.partial.exists() or not (self.out.is_file() and self.checkpoint.exists()):
            return None
        state = self._read_checkpoint()
        if state is None or self._changes(state):
            return None
        try:
            with store.open_file(self.out, store.TRAJECTORY) as f:
                trajectory_id, status = str(f.attrs.get("trajectory_id")), str(f.attrs.get("status"))
        except (ZigzagError, OSError):
            return None
        if trajectory_id != state.get("trajectory_id") or status not in ("completed", "diverged"):
            return None
        self._remove_resume_dir()
        print(f"{self.out}: already finished ({status}); removed the checkpoint folder {self.resume_dir} left by "
              f"a kill before its cleanup", file=sys.stderr)
        return status

    def _remove_resume_dir(self) -> None:
        """Delete the resume folder (checkpoint and partial trajectory) of ``<out>``; one line, deleting
        nothing, if it holds anything else (``remove_resume_folder``)."""
        remove_resume_folder(self.resume_dir)

    # -- one step -------------------------------------------------------------------------------

    def step(self, k: int) -> dict:
        """Take step k and return its row (without ``time``).

        Computes g_k at theta_k, its lag statistics and, where selected, its raw dump (``Recorder.measure``);
        unless the step diverged (see ``diverged``), it then evaluates the test set, solves for the sharpness
        and moves theta_k -> theta_k+1 (optimizer, correlation monitors, schedule).
        """
        cfg = self.config
        x, y = self.batch(k)
        gradient = self.recorder.gradients
        gradient.zero_()
        with self.precision.autocast():
            loss_sum, correct = accumulate_gradient(self.step_model, x, y, cfg.micro_batch)
        self._scalars.copy_(torch.stack((loss_sum, correct)), non_blocking=True)
        # the statistics reach the host after the device is done, and so after the copy above
        statistics = self.recorder.measure()
        loss_sum, correct = self._scalars.tolist()
        row = {"loss": loss_sum / len(x), "accuracy": correct / len(x), "lr": self.optimizer.param_groups[0]["lr"],
               "epoch": k // self.batches_per_epoch, **statistics}
        dot = statistics["dot"]
        if self.diverged(row):
            return row
        if k % cfg.eval_every == 0 or k == self.total_steps - 1:
            with self.precision.autocast():
                row["test_loss"], row["test_accuracy"] = evaluate(self.model, self.data.test_x, self.data.test_y,
                                                                  cfg.micro_batch)
        if self.solve_steps.due(k):
            row.update(self.sharpness(k, row["lr"], gradient.flat))
            if not row["sharpness_converged"]:
                print(f"warning: {self.out}: the Lanczos solve at step {k} stopped after max_iter="
                      f"{cfg.sharpness_setting('max_iter')} cycles short of tol={cfg.sharpness_setting('tol')}; "
                      f"its sharpness {row['sharpness']:.6g} is a lower bound (sharpness_converged 0)",
                      file=sys.stderr)
        self.optimizer.step()
        if self.prev_sq is not None:
            cosine = float(dot[1]) / math.sqrt(float(dot[0]) * self.prev_sq)
            self.progress_monitor.add_cosine(cosine)
            if isinstance(self.scheduler, GAWU):
                self.scheduler.monitor.add_cosine(cosine)
        self.prev_sq = float(dot[0])
        if self.scheduler and (k + 1) % self.steps_per_unit == 0:
            self.scheduler.step()
        return row

    @staticmethod
    def diverged(row: dict) -> bool:
        """A non-finite loss or gradient norm ends the run (no update is taken from such a step)."""
        return not (math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]))

    # -- the loop -------------------------------------------------------------------------------

    def open_trajectory(self) -> int:
        """Set ``self.recorder`` to the partial trajectory, reopened at the checkpoint or created afresh;
        returns the first step to take. If the lag ring of L + 1 gradients cannot be allocated: one line on the
        memory it needs, with the checkpoint and partial trajectory kept."""
        try:
            return self._open_trajectory()
        except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if isinstance(err, RuntimeError) and "memory" not in str(err).lower():
                raise
            self._check_memory(self.n_params, failed=True)

    def _open_trajectory(self) -> int:
        state = self._load_checkpoint()
        if state is not None:
            print(f"{self.out}: resuming at step {state['n_steps']} from {self.checkpoint}", file=sys.stderr)
            self.prev_sq = state["prev_sq"]
            self.checkpoint_step = state["n_steps"]
            return state["n_steps"]
        self._remove_resume_dir()
        self.resume_dir.mkdir(parents=True)
        self.recorder = self._recorder()
        self.prev_sq = None
        return 0

    def run(self) -> str:
        """Train to the end (or divergence) under the run's precision flags, holding the output's lock; returns
        the final status.

        Ctrl-C (``KeyboardInterrupt``) raises ``Interrupted`` saying the step and where a rerun resumes.
        """
        try:
            with store.output_lock(self.out):
                status = self._finished_before()
                if status is not None:
                    return status
                with self.precision.applied(), warnings.catch_warnings():
                    # CPU weights in channels_last accumulate into gradient views of the default layout on purpose
                    warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                    return self._loop()
        except KeyboardInterrupt:
            if self.checkpoint_step is None:
                then = "no checkpoint yet: a rerun starts from step 0"
            else:
                then = f"rerun to resume from the checkpoint at step {self.checkpoint_step}"
            where = "before the first step" if self.at_step is None else f"at step {self.at_step} of {self.total_steps}"
            raise Interrupted(f"interrupted {where}; {then}") from None

    def _loop(self) -> str:
        start = self.open_trajectory()
        progress = Progress(self.total_steps, start, self.out.parent.name or str(self.out), self.progress)
        status, diverged_at = "completed", None
        for k in range(start, self.total_steps):
            self.at_step = k
            row = self.step(k)
            self.recorder.write(row)  # with the seconds since the start, resumed runs continuing the count
            if self.diverged(row):
                status, diverged_at = "diverged", k
                print(f"warning: {self.out}: training diverged at step {k} (loss {row['loss']}, "
                      f"|g| {row['grad_norm']}); trajectory kept with status=diverged", file=sys.stderr)
                break
            progress.update(k, row["loss"], self.progress_monitor.mean_correlation)
            if (k + 1) % self.config.checkpoint_every == 0 and k + 1 < self.total_steps:
                self._save_checkpoint(k + 1, row["time"])
        self.recorder.finish(status, **self._change_point(),
                             **({} if diverged_at is None else {"diverged_at": diverged_at}))
        progress.close()
        os.replace(self.partial, self.out)
        try:
            self._remove_resume_dir()
        except ZigzagError as err:  # the output is complete: say what was left, keep the exit status
            print(f"warning: {err}", file=sys.stderr)
        return status

    def sharpness(self, k: int, lr: float, grad: torch.Tensor) -> dict:
        """Top Hessian eigenvalue at theta_k (step k, learning rate lr) on the sharpness subset, warm-started
        from the last eigenvector; ``grad`` is g_k."""
        setting = self.config.sharpness_setting
        pair = top_eigenpair(self.model, *self.sharpness_data, self.config.micro_batch, v0=self.eigenvector,
                             tol=setting("tol"), max_iter=setting("max_iter"), ncv=setting("ncv"),
                             seed=self.config.seed)
        self.eigenvector = pair.eigenvector
        self.solve_steps.record(k, pair.eigenvalue, lr)
        return {"sharpness": pair.eigenvalue, "sharpness_hvps": pair.n_hvp,
                "sharpness_converged": float(pair.converged), "sharpness_residual": pair.residual,
                "grad_eigvec_cosine": gradient_eigenvector_cosine(grad, pair.eigenvector)}

    def _sharpness_attrs(self) -> dict:
        """The sample the sharpness is taken on and the batches its loss is split into (none: no sharpness)."""
        if self.solve_steps.selection is None:
            return {}
        subset = len(self.sharpness_data[0])
        return {"sharpness_subset": subset, "sharpness_batch": min(self.config.micro_batch, subset)}

    def _change_point(self) -> dict:
        """The schedule's change point t (GAWU: the detected one) as ``change_point_step``, the first step
        of unit t (t x steps per unit), and ``change_point_epoch``, its epoch; -1 if none."""
        t = getattr(self.scheduler, "change_point", None)
        if t is None:
            return {"change_point_step": -1, "change_point_epoch": -1}
        step = int(t) * self.steps_per_unit
        return {"change_point_step": step, "change_point_epoch": step // self.batches_per_epoch}

    def _bn_semantics(self) -> str:
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        if not has_bn:
            return "no batch normalisation: g_k equals the one-giant-batch gradient"
        return (f"ghost batches: BatchNorm in train mode normalises each micro-batch of {self.config.micro_batch} "
                f"by its own statistics; running statistics updated once per micro-batch")


def _tensor_bytes(state) -> int:
    """Bytes of the tensors in a nested state (dicts, lists, tuples): about a checkpoint's size on disk."""
    if isinstance(state, torch.Tensor):
        return state.nbytes
    if isinstance(state, dict):
        return sum(_tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(value) for value in state)
    return 0


class _RecordingFile:
    """A file for ``torch.save`` that keeps the ``OSError`` of a failed write, which torch reports only as a
    ``RuntimeError`` ("unexpected pos ...") without the system's reason."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.f.flush()
