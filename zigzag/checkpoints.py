"""Checkpoints of a training run: where they live, what they are bound to, and saving and loading them.

Every ``checkpoint_every`` steps a run writes its state (model, optimizer, lag ring, schedule, sharpness solver,
random generator, clock) to ``<out>.resume/checkpoint.pt``, beside the partial trajectory
``<out>.resume/trajectory.h5``. A rerun with the same settings, the same dataset file contents (sha256), the same
training code (``code_hash``, and the file of a ``package.module:factory`` model) and the same arithmetic (device,
precision and, on a CPU, the thread count: ``BINDING``) resumes there; anything else starts afresh and says why. A
checkpoint that holds more than tensors, numbers, strings and plain containers (``torch.load(weights_only=True)``:
nothing in it can run code) or cannot be read also starts afresh. A resume folder is deleted only while it holds
nothing but the files a run writes there (``RESUME_FILES``).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import torch

from zigzag import store
from zigzag.codehash import code_hash
from zigzag.errors import ZigzagError
from zigzag.modelimport import factory_file, is_custom
from zigzag.runconfig import RunConfig

RESUME_FILES = ("trajectory.h5", "checkpoint.pt", "checkpoint.tmp")  # all a run writes into <out>.resume/

# What a checkpoint is bound to besides the settings, each with how a change is named.
BINDING = {"dataset_sha256": "the contents of the dataset file", "code": "the training code (zigzag package sources)",
           "model_sha256": "the file of the model's factory",
           "device": "the device", "precision": "the precision", "threads": "the CPU thread count"}


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


class Checkpoint:
    """The checkpoint of the run of ``config`` on ``device`` that writes ``out``; ``step`` is the step of the
    last checkpoint on disk (None: none yet)."""

    def __init__(self, out: str | os.PathLike, config: RunConfig, device: torch.device, writes: bool = True):
        """``writes``: False in the processes of a launch other than rank 0, which read the checkpoint only."""
        self.out, self.settings, self.dataset, self.device = Path(out), config.to_dict(), config.dataset, device
        self.writes = writes
        # BINDING's values; the thread count changes the CPU's reductions, so it binds CPU runs only
        model_file = factory_file(config.model, (Path.cwd(),)) if is_custom(config.model) else None
        self.binding = {"dataset_sha256": store.file_sha256(config.dataset), "code": code_hash("train"),
                        "model_sha256": None if model_file is None else store.file_sha256(model_file),
                        "device": device.type if device.type != "cuda" else
                        f"cuda ({torch.cuda.get_device_name(device)})",
                        "precision": config.precision,
                        "threads": torch.get_num_threads() if device.type == "cpu" else None}
        self.folder = resume_folder(self.out)
        self.path = self.folder / "checkpoint.pt"
        self.partial = self.folder / "trajectory.h5"  # the trajectory being written
        self.step: int | None = None

    def save(self, state: dict, n_steps: int) -> None:
        """Save ``state`` (the run's parts; only tensors, numbers, strings and plain containers, so that it
        loads with ``weights_only=True``) as the state after ``n_steps`` steps, once the trajectory file holds
        all of them. A failed write (disk full) raises ``OSError`` naming the file, after removing the
        half-written one."""
        if not self.writes:
            self.step = n_steps
            return
        state = {"config": self.settings, **self.binding, "n_steps": n_steps, **state}
        tmp = self.path.with_suffix(".tmp")
        last = self.path.stat().st_size if self.path.exists() else 0
        store.check_free_space(tmp, max(last, _tensor_bytes(state)) + store.SPACE_MARGIN,
                               f"writing the checkpoint at step {n_steps}")
        sink = None
        try:
            with open(tmp, "wb") as f:
                sink = _RecordingFile(f)
                torch.save(state, sink)
            os.replace(tmp, self.path)
        except BaseException as err:  # disk full, Ctrl-C: no half-written checkpoint is left
            tmp.unlink(missing_ok=True)
            if isinstance(err, (OSError, RuntimeError)):  # torch.save reports a failed write as "unexpected pos"
                raise store.write_failed(tmp, sink.error if sink and sink.error else err) from None
            raise
        self.step = n_steps

    def load(self) -> dict | None:
        """The checkpoint of an interrupted run with the same settings, dataset contents, training code and
        arithmetic (``BINDING``) beside its partial trajectory; None (then start afresh, one line saying why)
        otherwise."""
        if not (self.path.exists() and self.partial.exists()):
            return None
        state = self._read()
        if state is None:
            return None
        changed = self._changes(state)
        if changed:
            print(f"{self.out}: {' and '.join(changed)} changed since the interrupted run; not resuming its "
                  f"checkpoint, starting from step 0", file=sys.stderr)
            return None
        return state

    def finished(self) -> str | None:
        """The status of ``out`` if it is the finished trajectory of the run whose checkpoint is still in the
        resume folder (killed between the final rename and the cleanup) and that run is this one; the leftover
        folder is then removed. None otherwise (and in a process that does not write)."""
        if not self.writes or self.partial.exists() or not (self.out.is_file() and self.path.exists()):
            return None
        state = self._read()
        if state is None or self._changes(state):
            return None
        try:
            with store.open_file(self.out, store.TRAJECTORY) as f:
                trajectory_id, status = str(f.attrs.get("trajectory_id")), str(f.attrs.get("status"))
        except (ZigzagError, OSError):
            return None
        if trajectory_id != state.get("trajectory_id") or status not in ("completed", "diverged"):
            return None
        self.remove()
        print(f"{self.out}: already finished ({status}); removed the checkpoint folder {self.folder} left by a kill "
              f"before its cleanup", file=sys.stderr)
        return status

    def resume_hint(self) -> str:
        """Where a rerun starts, as of now."""
        if self.step is None:
            return "no checkpoint yet: a rerun starts from step 0"
        return f"rerun to resume from the checkpoint at step {self.step}"

    def remove(self) -> None:
        """Delete the resume folder (checkpoint and partial trajectory); one line, deleting nothing, if it holds
        anything else (``remove_resume_folder``)."""
        if self.writes:
            remove_resume_folder(self.folder)

    def publish(self) -> None:
        """Rename the finished partial trajectory to ``out`` and delete the resume folder (a warning, keeping the
        exit status, if it holds anything else)."""
        if not self.writes:
            return
        os.replace(self.partial, self.out)
        try:
            self.remove()
        except ZigzagError as err:  # the output is complete: say what was left, keep the exit status
            print(f"warning: {err}", file=sys.stderr)

    def start_afresh(self) -> None:
        """An empty resume folder for a run from step 0 (what was there removed)."""
        self.remove()
        if self.writes:
            self.folder.mkdir(parents=True)

    def _read(self) -> dict | None:
        """The checkpoint's state, loaded so that nothing in it can run code (``weights_only=True``); None
        (then start afresh, one line saying why) if it cannot be loaded so."""
        try:
            return torch.load(self.path, map_location=self.device, weights_only=True)
        except Exception as err:  # a damaged file fails in pickle, zipfile or torch with assorted types
            if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
                why = "holds objects other than tensors, numbers, strings and plain containers (they could run code)"
            else:
                why = f"is unreadable ({type(err).__name__})"
            print(f"{self.out}: checkpoint {self.path} {why}; starting from step 0", file=sys.stderr)
            return None

    def _changes(self, state: dict) -> list[str]:
        """What differs between the run that wrote the checkpoint ``state`` and this one, each named."""
        def short(value) -> str:
            text = repr(value)
            return text if len(text) <= 40 else text[:37] + "..."

        saved, now = state.get("config"), self.settings
        saved = saved if isinstance(saved, dict) else {}
        settings = [f"{key} {short(saved.get(key))}, now {short(now.get(key))}"
                    for key in sorted((saved.keys() | now.keys()) - set(BINDING)) if saved.get(key) != now.get(key)]
        changed = [f"the settings ({'; '.join(settings)})"] if settings else []
        for key, what in BINDING.items():
            if state.get(key) != self.binding[key]:
                if key == "dataset_sha256":
                    changed.append(f"{what} {self.dataset}")
                elif key in ("code", "model_sha256"):
                    changed.append(what)
                else:
                    changed.append(f"{what} ({state.get(key)}, now {self.binding[key]})")
        return changed


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
