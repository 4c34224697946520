"""The HDF5 schema: the one place that reads and writes zigzag files (DESIGN.md, "HDF5 contracts").

Three formats share the same root attributes: ``format``, ``format_version``, ``config`` (JSON of the
settings that made the file) and ``versions`` (JSON of the package versions). Every dataset carries a
one-line ``description`` with its units. Names are the contract: extend, never rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from zigzag.errors import ZigzagError

FORMAT_VERSION = 1
DATASET = "zigzag-dataset"
TRAJECTORY = "zigzag-trajectory"
ANALYSIS = "zigzag-analysis"
FORMATS = (DATASET, TRAJECTORY, ANALYSIS)
FLUSH_SECONDS = 2.0  # a trajectory writer writes its buffered rows at least this often

# Per-step series of a trajectory: name -> description (one line, units).
STEP_SERIES = {
    "loss": "training loss (mean cross-entropy, nats) at theta_k, from the pass that computed g_k",
    "accuracy": "training accuracy (fraction correct) at theta_k, from the pass that computed g_k",
    "lr": "learning rate used for the update theta_k -> theta_k+1",
    "epoch": "epoch the step belongs to (GD: equals the step)",
    "grad_norm": "Euclidean norm |g_k| of the flattened gradient",
    "time": "seconds since the start of training (wall clock, resumed runs continue the count)",
    "test_loss": "test loss (mean cross-entropy, nats) at theta_k; NaN where not evaluated",
    "test_accuracy": "test accuracy (fraction correct) at theta_k; NaN where not evaluated",
}
SHARPNESS_SERIES = {
    "sharpness": "top eigenvalue of the training-loss Hessian at theta_k on the sharpness subset "
    "(1/lr units of stability: GD is unstable on a quadratic above 2/lr); NaN where not computed",
    "sharpness_hvps": "Hessian-vector products the Lanczos solve used at step k; NaN where not computed",
    "grad_eigvec_cosine": "|cos(g_k, v_k)| between the gradient and the top Hessian eigenvector; NaN where "
    "not computed",
}
LAG_SERIES = {
    "dot": "<g_k, g_k-l> for lag l = column (squared gradient units); NaN where k-l < 0",
    "opposite": "fraction of entries with opposite signs in g_k and g_k-l (an exact 0 in either "
    "is never opposite); NaN where k-l < 0",
}


def package_versions() -> dict:
    """Versions of the packages that shape the numbers in a file."""
    import torch

    import zigzag

    return {
        "python": platform.python_version(),
        "zigzag": zigzag.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }


def _write_root(f: h5py.File, fmt: str, config: dict, **attrs) -> None:
    f.attrs["format"] = fmt
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["versions"] = json.dumps(package_versions(), sort_keys=True)
    for key, value in attrs.items():
        f.attrs[key] = value


def _put(group: h5py.Group, name: str, data, description: str, **kwargs) -> h5py.Dataset:
    ds = group.create_dataset(name, data=data, **kwargs)
    ds.attrs["description"] = description
    return ds


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    check_writable(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: str | os.PathLike) -> None:
    """Create the folder of ``path`` if needed; one clear error if it cannot be written."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ZigzagError(f"cannot create output folder {folder}: {err.strerror}; choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise ZigzagError(f"output folder {folder} is not writable; choose another --out")


def open_file(path: str | os.PathLike, expected: str | None = None, mode: str = "r") -> h5py.File:
    """Open a zigzag file (read-only by default) after checking it is whole and of the expected format."""
    path = Path(path)
    if not path.exists():
        raise ZigzagError(f"{path}: no such file; create it first (see `zigzag --help`)")
    try:
        f = h5py.File(path, mode)
    except OSError:
        raise ZigzagError(f"{path}: not a readable HDF5 file (truncated or foreign); delete it and re-create it") from None
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt not in FORMATS:
        f.close()
        raise ZigzagError(f"{path}: not a zigzag file (no zigzag 'format' attribute); expected one of {', '.join(FORMATS)}")
    if expected is not None and fmt != expected:
        f.close()
        raise ZigzagError(f"{path}: is a {fmt} file, expected a {expected} file")
    if int(f.attrs.get("format_version", -1)) > FORMAT_VERSION:
        f.close()
        raise ZigzagError(f"{path}: format_version {f.attrs['format_version']} is newer than this zigzag reads; upgrade zigzag")
    return f


def file_config(f: h5py.File) -> dict:
    return json.loads(f.attrs["config"])


# ---------------------------------------------------------------------------------------------
# zigzag-dataset


@dataclass
class DatasetArrays:
    """A prepared dataset: uint8 images N x C x H x W, int64 labels, per-channel mean/std in [0, 1] units."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    num_classes: int
    config: dict


def write_dataset(path: str | os.PathLike, data: DatasetArrays) -> None:
    """Write a zigzag-dataset file atomically (a temporary name, renamed when complete)."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root(
            f, DATASET, data.config,
            mean=np.asarray(data.mean, dtype=np.float64),
            std=np.asarray(data.std, dtype=np.float64),
            num_classes=int(data.num_classes),
        )
        for split, images, labels in (
            ("train", data.train_images, data.train_labels),
            ("test", data.test_images, data.test_labels),
        ):
            g = f.create_group(split)
            _put(g, "images", np.ascontiguousarray(images, dtype=np.uint8),
                 f"{split} images, uint8 pixel values 0-255, N x C x H x W")
            _put(g, "labels", np.asarray(labels, dtype=np.int64), f"{split} class labels 0..num_classes-1")


def read_dataset(path: str | os.PathLike) -> DatasetArrays:
    with open_file(path, DATASET) as f:
        return DatasetArrays(
            train_images=f["train/images"][()],
            train_labels=f["train/labels"][()],
            test_images=f["test/images"][()],
            test_labels=f["test/labels"][()],
            mean=np.asarray(f.attrs["mean"]),
            std=np.asarray(f.attrs["std"]),
            num_classes=int(f.attrs["num_classes"]),
            config=file_config(f),
        )


# ---------------------------------------------------------------------------------------------
# zigzag-trajectory


class TrajectoryWriter:
    """Appends one row per step to resizable, chunked datasets of a trajectory file.

    ``/steps/<series>`` [K] and ``/steps/dot``, ``/steps/opposite`` [K, L+1]; optional raw gradients
    ``/raw/gradients`` [R, P] with their steps in ``/raw/steps`` [R]. Rows are buffered and written in
    blocks: at the first ``append`` ``FLUSH_SECONDS`` after the last write, at ``flush()`` (the trainer
    flushes before every checkpoint, so the file holds every step a checkpoint claims) and at
    ``finish``/``close``. ``status`` is kept current.
    """

    def __init__(self, f: h5py.File):
        self.f = f
        self.steps = f["steps"]
        self.n_steps = self.steps["loss"].shape[0]  # rows appended, written or buffered
        self._rows: list[dict] = []
        self._flushed_at = time.monotonic()

    @classmethod
    def create(cls, path, config: dict, *, n_params: int, n_train: int, lags: int,
               extra_series: dict[str, str] | None = None, raw_dtype: str | None = None,
               raw_compression: str | None = None, attrs: dict | None = None) -> "TrajectoryWriter":
        f = h5py.File(path, "w")
        _write_root(f, TRAJECTORY, config, status="running", n_params=int(n_params),
                    n_train=int(n_train), lags=int(lags), **(attrs or {}))
        steps = f.create_group("steps")
        for name, description in {**STEP_SERIES, **(extra_series or {})}.items():
            _put(steps, name, np.zeros(0), description, maxshape=(None,), chunks=(1024,), dtype="f8")
        for name, description in LAG_SERIES.items():
            _put(steps, name, np.zeros((0, lags + 1)), description, maxshape=(None, lags + 1),
                 chunks=(256, lags + 1), dtype="f8")
        if raw_dtype is not None:
            raw = f.create_group("raw")
            chunk_cols = min(n_params, 1 << 20)
            _put(raw, "gradients", np.zeros((0, n_params), dtype=raw_dtype),
                 f"raw flattened gradients g_k ({raw_dtype}), parameter order of model.parameters()",
                 maxshape=(None, n_params), chunks=(1, chunk_cols), compression=raw_compression)
            _put(raw, "steps", np.zeros(0, dtype=np.int64), "step k of each row of /raw/gradients",
                 maxshape=(None,), chunks=(1024,))
        f.flush()
        return cls(f)

    @classmethod
    def reopen(cls, path, keep_steps: int) -> "TrajectoryWriter":
        """Open an unfinished trajectory and truncate it to its first ``keep_steps`` steps (resume)."""
        f = open_file(path, TRAJECTORY, mode="a")
        for ds in f["steps"].values():
            ds.resize(keep_steps, axis=0)
        if "raw" in f:
            keep = int(np.sum(f["raw/steps"][()] < keep_steps))
            f["raw/gradients"].resize(keep, axis=0)
            f["raw/steps"].resize(keep, axis=0)
        f.attrs["status"] = "running"
        f.flush()
        return cls(f)

    def append(self, row: dict) -> None:
        """Append step ``self.n_steps``; series missing from ``row`` are NaN."""
        self._rows.append(row)
        self.n_steps += 1
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one block per series and flush the file."""
        if self._rows:
            k, m = self.n_steps - len(self._rows), len(self._rows)
            for name, ds in self.steps.items():
                block = np.empty((m, *ds.shape[1:]))
                for i, row in enumerate(self._rows):
                    block[i] = row.get(name, np.nan)
                ds.resize(k + m, axis=0)
                ds[k:] = block
            self._rows = []
        self.f.flush()
        self._flushed_at = time.monotonic()

    def append_raw(self, step: int, gradient: np.ndarray) -> None:
        grads, steps = self.f["raw/gradients"], self.f["raw/steps"]
        r = grads.shape[0]
        grads.resize(r + 1, axis=0)
        steps.resize(r + 1, axis=0)
        grads[r] = gradient
        steps[r] = step

    def finish(self, status: str, **attrs) -> None:
        self.flush()
        self.f.attrs["status"] = status
        for key, value in attrs.items():
            self.f.attrs[key] = value
        self.f.close()

    def close(self) -> None:
        self.flush()
        self.f.close()


@dataclass
class Trajectory:
    """A trajectory read into memory (raw gradients stay on disk: open the file for those)."""

    steps: dict[str, np.ndarray]
    attrs: dict
    config: dict

    @property
    def status(self) -> str:
        return self.attrs["status"]

    def __len__(self) -> int:
        return len(self.steps["loss"])


def attr_value(value):
    """An HDF5 attribute as a plain Python value (str for bytes, int/float for NumPy scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_trajectory(path) -> Trajectory:
    with open_file(path, TRAJECTORY) as f:
        return Trajectory(
            steps={name: ds[()] for name, ds in f["steps"].items()},
            attrs={key: attr_value(v) for key, v in f.attrs.items()},
            config=file_config(f),
        )


# ---------------------------------------------------------------------------------------------
# zigzag-analysis


def write_analysis(path, analysis, config: dict, trajectory_attrs: dict) -> None:
    """Write an ``analysis.Analysis`` atomically: mean_mu, phase, windows and the scalar results."""
    a = analysis
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root(
            f, ANALYSIS, config, h=a.h, smooth_above=a.smooth_above, zigzag_below=a.zigzag_below,
            zigzag_loss_share=a.zigzag_loss_share,
            transitions=json.dumps(a.transitions),
            change_point=-1 if a.change_point is None else a.change_point,
            zigzag_onset=-1 if a.zigzag_onset is None else a.zigzag_onset,
            eos_step=-1 if a.eos_step is None else a.eos_step,
            eos_tolerance=a.eos_tolerance,
            trajectory_status=trajectory_attrs["status"],
            diverged_at=int(trajectory_attrs.get("diverged_at", -1)),
        )
        _put(f, "mean_mu", a.mean_mu, f"mean gradient correlation (eq. 3), window of h={a.h} steps starting at k; "
             "NaN for the last h-1 steps")
        _put(f, "adjacent_mu", a.adjacent_mu, "mu(k-1, k), cosine of adjacent gradients; NaN at k=0")
        _put(f, "phase", a.phase, f"int8 phase of step k: 0 smooth (mean_mu > {a.smooth_above}), 1 zigzag "
             f"(mean_mu < {a.zigzag_below}), 2 random (between), -1 undefined")
        w = f.create_group("windows")
        _put(w, "steps", a.window_steps, "first step k of each window")
        _put(w, "corr", a.window_corr, "h x h matrices mu(k+a, k+b); NaN where past the recorded steps")
        _put(w, "opposite", a.window_opposite, "h x h matrices s(k+a, k+b), fraction of entries with opposite "
             "signs (an exact 0 is never opposite)")


def read_analysis(path) -> dict:
    """Arrays and attributes of an analysis file as plain Python/NumPy values."""
    with open_file(path, ANALYSIS) as f:
        out = {name: f[name][()] for name in ("mean_mu", "adjacent_mu", "phase")}
        out.update({f"windows/{name}": f["windows"][name][()] for name in ("steps", "corr", "opposite")})
        out["attrs"] = {key: attr_value(v) for key, v in f.attrs.items()}
        out["attrs"]["transitions"] = json.loads(out["attrs"]["transitions"])
        out["config"] = file_config(f)
    return out
