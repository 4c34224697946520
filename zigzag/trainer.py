"""Training with gradient lag statistics at every step: exact full-batch GD or mini-batch SGD.

``Trainer`` wires the parts: the device and its data (zigzag/device.py), the step's arithmetic
(zigzag/step.py), the ``Recorder`` that turns each gradient into the trajectory's rows (zigzag/recorder.py),
the learning-rate schedule (zigzag/runschedule.py), the sharpness solves (zigzag/sharpness.py) and the
checkpoints that let a rerun resume (zigzag/checkpoints.py). Loss and accuracy of step k come from the same
forward passes that computed g_k. The finished trajectory is renamed from ``<out>.resume/`` to ``<out>`` at
the end. A run holds the lock of ``<out>`` (``store.output_lock``) while it trains, so a second run of the
same output stops at once. Under torchrun the run is split across the launch's processes (zigzag/distributed.py):
the step's micro-batches, the lag ring and the sharpness's products; rank 0 alone evaluates, writes and prints.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

from zigzag import gpulease, store
from zigzag.checkpoints import Checkpoint, check_run_paths
from zigzag.device import build_on_device, check_memory, load_data, resolve_device
from zigzag.distributed import gpu_index, join
from zigzag.errors import Interrupted, ZigzagError
from zigzag.models import batch_norm_semantics, count_parameters
from zigzag.precision import Precision
from zigzag.progress import Progress
from zigzag.recorder import Recorder
from zigzag.runconfig import RunConfig
from zigzag.runschedule import RunSchedule
from zigzag.scheduleconfig import WINDOW_H
from zigzag.settings import parse_step_selection
from zigzag.sharpness import SharpnessTracker
from zigzag.step import Batches, StepGradient, diverged, evaluate


class Trainer:
    """Runs one ``RunConfig`` and writes its trajectory file (docs/formats.md, "zigzag-trajectory")."""

    def __init__(self, config: RunConfig, out: str | os.PathLike, progress: bool = True,
                 lease: gpulease.Lease | None = None):
        self.config, self.out, self.group = config, Path(out), join(config.device)  # group: torchrun's processes
        self.gpu_attrs, self.progress = gpulease.attrs(lease), progress and self.group.leader
        check_run_paths(self.out, [config.dataset])
        store.check_writable(self.out)
        self.device = resolve_device(config.device, gpu_index() if lease is None else lease.index)
        self.precision = Precision(config.precision, self.device)
        self.data = load_data(config.dataset, self.device, self.precision.channels_last)
        self.checkpoint = Checkpoint(self.out, config, self.device, self.group.leader)
        self.batches = Batches(config, self.data.train_x, self.data.train_y)
        self.group.check_launch({"settings": config.to_dict(), **self.checkpoint.binding},
                                -(-(self.batches.batch_size or len(self.data.train_x)) // config.micro_batch))
        self.total_steps = self.batches.total_steps
        self.raw_selection = parse_step_selection(config.raw_gradients, self.total_steps, "raw_gradients")
        self.sharpness = SharpnessTracker(config, self.data.train_x, self.data.train_y, self.total_steps, str(out),
                                          self.group)
        self.model = build_on_device(config, self.data, self.device, self.precision.channels_last)
        # the module the training step calls: compiled (same parameters) when ``compile`` is set
        self.step_model = torch.compile(self.model) if config.compile else self.model
        self.n_params, self.gradient = count_parameters(self.model), StepGradient(self.group, self.model, config)
        self.optimizer = torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad],
                                         lr=config.effective_lr, momentum=config.momentum, nesterov=config.nesterov,
                                         weight_decay=config.weight_decay)
        self.schedule = RunSchedule(config, self.optimizer, self.total_steps, self.batches.per_epoch)
        self.recorder: Recorder | None = None  # writes the partial trajectory; set by open_trajectory
        self.at_step: int | None = None  # the step being taken, for the line that reports an interrupt
        # the step's loss sum and correct count reach the host in one copy (pinned: asynchronous on CUDA)
        self._scalars = torch.empty(2, pin_memory=self.device.type == "cuda")

    def step(self, k: int) -> dict:
        """Take step k and return its row (without ``time``): g_k at theta_k and its lag statistics
        (``Recorder.measure``); unless the step diverged (``step.diverged``), the test evaluation and the
        sharpness at theta_k, then theta_k -> theta_k+1 (the optimizer, then the schedule)."""
        cfg, (x, y) = self.config, self.batches(k)
        self.recorder.gradients.zero_()
        with self.precision.autocast():
            loss_sum, correct = self.gradient(self.step_model, x, y, self.recorder.gradients.flat)
        self._scalars.copy_(torch.stack((loss_sum, correct)), non_blocking=True)
        statistics = self.recorder.measure()  # reaches the host after the device is done, so after the copy above
        loss_sum, correct = self._scalars.tolist()
        row = {"loss": loss_sum / len(x), "accuracy": correct / len(x), "lr": self.optimizer.param_groups[0]["lr"],
               "epoch": k // self.batches.per_epoch, **statistics}
        if diverged(row):
            return row
        if self.group.leader and (k % cfg.eval_every == 0 or k == self.total_steps - 1):  # rows: rank 0's
            with self.precision.autocast():
                row["test_loss"], row["test_accuracy"] = evaluate(self.model, self.data.test_x, self.data.test_y,
                                                                  cfg.micro_batch, cfg.loss)
        if self.sharpness.due(k):
            row.update(self.sharpness.measure(self.model, k, row["lr"], self.recorder.gradients.flat))
        self.optimizer.step()
        self.schedule.after_step(k, statistics["dot"])
        return row

    def run(self) -> str:
        """Train to the end (or divergence) under the run's precision flags, holding the output's lock; returns
        the final status. Ctrl-C (``KeyboardInterrupt``) raises ``Interrupted`` saying the step and where a
        rerun resumes."""
        try:
            with store.output_lock(*[self.out][:self.group.leader]):
                status = self.group.decide(self.checkpoint.finished(), (None, "completed", "diverged"))
                if status is not None:
                    return status
                with self.precision.applied(), warnings.catch_warnings():
                    # CPU weights in channels_last accumulate into gradient views of the default layout on purpose
                    warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                    return self._loop()
        except (KeyboardInterrupt, RuntimeError) as err:  # Ctrl-C, SIGTERM, or a peer process gone (torchrun)
            if not self.group.stopped(err):
                raise
            where = "before the first step" if self.at_step is None else f"at step {self.at_step} of {self.total_steps}"
            raise Interrupted(f"interrupted {where}; {self.checkpoint.resume_hint()}") from None

    def _loop(self) -> str:
        start = self.open_trajectory()
        progress = Progress(self.total_steps, start, self.out.parent.name or str(self.out), WINDOW_H, self.progress)
        status, diverged_at = "completed", None
        for k in range(start, self.total_steps):
            self.at_step = k
            row = self.step(k)
            self.recorder.write(row)  # with the seconds since the start, resumed runs continuing the count
            if diverged(row):
                status, diverged_at = "diverged", k
                print(f"warning: {self.out}: training diverged at step {k} (loss {row['loss']}, "
                      f"|g| {row['grad_norm']}); trajectory kept with status=diverged", file=sys.stderr)
                break
            progress.update(k, row["loss"], self.schedule.progress.mean_correlation)
            if (k + 1) % self.config.checkpoint_every == 0 and k + 1 < self.total_steps:
                self.recorder.flush()  # the checkpoint follows the trajectory file, never precedes it
                self.checkpoint.save(self._state(row["time"]), k + 1)
        self.recorder.finish(status, **self.schedule.change_point(),
                             **({} if diverged_at is None else {"diverged_at": diverged_at}))
        progress.close()
        self.checkpoint.publish()
        return status

    def open_trajectory(self) -> int:
        """Set ``self.recorder`` to the partial trajectory, reopened with the parts' state at a matching
        checkpoint or created afresh; returns the first step to take. If the lag ring of L + 1 gradients cannot be
        allocated: one line on the memory it needs, with the checkpoint and partial trajectory kept."""
        try:
            state = self.checkpoint.load()
            if state is not None:
                try:
                    self.recorder = self._recorder(resume=state)
                except ZigzagError as err:
                    print(f"{self.out}: partial trajectory damaged, {err}; starting from step 0", file=sys.stderr)
                    state = None
        except (MemoryError, RuntimeError) as err:  # torch.OutOfMemoryError is a RuntimeError
            if isinstance(err, RuntimeError) and "memory" not in str(err).lower():
                raise
            check_memory(self.config, self.n_params, self.device, failed=True)
        if self.group.decide(state is None, (False, True)):  # rank 0's file decides
            self.checkpoint.start_afresh()
            self.recorder = self._recorder()
            return 0
        for part in ("model", "optimizer", "schedule", "sharpness"):
            getattr(self, part).load_state_dict(state[part])
        torch.set_rng_state(state["torch_rng"])
        self.checkpoint.step = state["n_steps"]
        print(f"{self.out}: resuming at step {state['n_steps']} from {self.checkpoint.path}", file=sys.stderr)
        return state["n_steps"]

    def _state(self, elapsed: float) -> dict:
        """What a checkpoint holds besides the settings: every part's state and the clock."""
        return {"elapsed": elapsed, **{part: getattr(self, part).state_dict()
                                       for part in ("model", "optimizer", "schedule", "sharpness")},
                **self.recorder.state_dict(), "torch_rng": torch.get_rng_state()}  # the lag ring, the file's id

    def _recorder(self, resume: dict | None = None) -> Recorder:
        """The recorder of the partial trajectory: created, or reopened with ``resume`` (``ZigzagError`` if the
        file is damaged)."""
        cfg, bound = self.config, self.checkpoint.binding
        semantics = batch_norm_semantics(self.model, cfg.micro_batch)
        return Recorder(
            self.checkpoint.partial, self.model, cfg.lags,
            settings={**cfg.to_dict(), "dataset_config": self.data.dataset_config},
            n_train=len(self.data.train_x), raw_steps=self.raw_selection, raw_dtype=cfg.raw_dtype,
            parameter_steps=parse_step_selection(cfg.raw_parameters, self.total_steps, "raw_parameters"),
            raw_compression=None if cfg.raw_compression == "none" else cfg.raw_compression,
            extra_series=store.SHARPNESS_SERIES if self.sharpness.enabled else None,
            attrs={"device": str(self.device), "batch_norm_semantics": semantics,
                   "total_steps": self.total_steps, "batches_per_epoch": self.batches.per_epoch,
                   "dataset_sha256": bound["dataset_sha256"], "code_hash": bound["code"],
                   **self.gpu_attrs, **self.sharpness.attrs(), **self.precision.attrs()},
            per_layer=cfg.per_layer, resume=resume, group=self.group)
