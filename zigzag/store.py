"""The HDF5 schema: the one place that reads and writes zigzag files (docs/formats.md).

Three formats share the same root attributes: ``format``, ``format_version``, ``config`` (JSON of the
settings that made the file) and ``versions`` (JSON of the package versions). Every dataset carries a
one-line ``description`` with its units. Names are the contract: extend, never rename.

Every dataset that can take a filter carries HDF5's Fletcher-32 checksum, so a changed byte fails the read;
the readers turn that, and values no run can produce (a correlation outside [-1, 1], series of different
lengths), into one ``ZigzagError`` naming the file and the dataset.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import fcntl
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, make_dataclass
from pathlib import Path

import h5py
import numpy as np

from zigzag.errors import ZigzagError
from zigzag.scheduleconfig import schedule_setting

FORMAT_VERSION = 2  # 2: the change point is ``change_point_step`` and ``change_point_epoch`` (1: ``change_point``)
DATASET = "zigzag-dataset"
TRAJECTORY = "zigzag-trajectory"
ANALYSIS = "zigzag-analysis"
FORMATS = (DATASET, TRAJECTORY, ANALYSIS)
FLUSH_SECONDS = 2.0  # a trajectory writer writes its buffered rows at least this often
CHECKSUM = True  # Fletcher-32 on every dataset written (benchmarks/bench_checksum.py turns it off to time it)
# |cos| may exceed 1 by this much: the lag statistics hold each dot product within 1e-6 of its float64 value
# (BENCHMARKS.md, "Exact dot products"), so a cosine is within 2e-6 of it; more is a damaged file.
COSINE_TOLERANCE = 1e-5
SPACE_MARGIN = 1 << 16  # bytes a write may take beyond its estimate (file metadata, headers)

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
    "sharpness_converged": "1 where the Lanczos solve met its tolerance, 0 where it stopped short of it, after "
    "max_iter cycles or once 34 products in a row had not lowered its residual by a tenth (sharpness is then the "
    "last Rayleigh quotient, a lower bound on lambda_max within sharpness_residual of an eigenvalue); NaN where "
    "not computed",
    "sharpness_residual": "|H v - lambda v| / lambda of the solve's eigenpair at step k (the solve stops once it is "
    "at most sharpness.tol); NaN where not computed",
    "grad_eigvec_cosine": "|cos(g_k, v_k)| between the gradient and the top Hessian eigenvector; NaN where "
    "not computed",
}
LAG_SERIES = {
    "dot": "<g_k, g_k-l> for lag l = column (squared gradient units); NaN where k-l < 0",
    "opposite": "fraction of entries with opposite signs in g_k and g_k-l (an exact 0 in either "
    "is never opposite); NaN where k-l < 0",
    "opposite_nonzero": "the entries with opposite signs in g_k and g_k-l as a fraction of those non-zero in both; "
    "NaN where k-l < 0 or none is",
    "opposite_weight": "(sum |g_k[i] g_k-l[i]| - <g_k, g_k-l>) / (2 sum |g_k[i] g_k-l[i]|): the share of the "
    "overlap sum |g_k[i] g_k-l[i]| carried by entries of opposite signs; NaN where k-l < 0 or the overlap is 0",
}
# Lag series a trajectory written before they were recorded lacks: readers take them as absent, not damaged.
LATER_LAG_SERIES = ("opposite_nonzero", "opposite_weight")
REQUIRED_LAG_SERIES = tuple(name for name in LAG_SERIES if name not in LATER_LAG_SERIES)
SHARE_SERIES = ("opposite", *LATER_LAG_SERIES)  # fractions: within [0, 1] where defined
# Lag series per parameter tensor [K, n_layers, L+1] of a run with per_layer (optional; the tensors' names and sizes
# are the root attributes layer_names and layer_sizes, in model.parameters() order).
LAYER_SERIES = {
    "layer_dot": "<g_k, g_k-l> restricted to the entries of tensor t = row, lag l = column (squared gradient "
    "units; summed over the rows gives /steps/dot); NaN where k-l < 0",
    "layer_opposite": "fraction of the entries of tensor t = row with opposite signs in g_k and g_k-l (an exact 0 "
    "is never opposite), lag l = column; NaN where k-l < 0",
}

RAW_PARAMETERS = {
    "parameters": "raw flattened parameters theta_k (float32) at which g_k was taken, parameter order of "
                  "model.parameters()",
    "parameter_steps": "step k of each row of /raw/parameters",
}
RAW_ROWS = (("raw/gradients", "raw/steps"), ("raw/parameters", "raw/parameter_steps"))  # rows and their steps
# The trajectory attribute that holds the arithmetic's fingerprint (zigzag/fingerprint.py); older files lack it.
ARITHMETIC = "arithmetic"


def torch_version() -> str:
    """torch's ``__version__`` (with its build tag, e.g. ``+cu130``), read without importing torch where it is
    not imported yet: the literal in ``torch/version.py``, parsed, not run (an import costs seconds of CPU)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    source = Path(spec.origin).with_name("version.py").read_text()
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets)
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    return importlib.metadata.version("torch")


def package_versions() -> dict:
    """Versions of the packages that shape the numbers in a file."""
    import zigzag

    return {
        "python": platform.python_version(),
        "zigzag": zigzag.__version__,
        "torch": torch_version(),
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
    """Create a dataset with its description, chunked with the Fletcher-32 checksum (not for variable-length
    strings, which HDF5 cannot filter)."""
    if CHECKSUM and h5py.check_string_dtype(np.asarray(data).dtype) is None:
        kwargs["fletcher32"] = True
    ds = group.create_dataset(name, data=data, **kwargs)
    ds.attrs["description"] = description
    return ds


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    with output_lock(path):
        remove_litter(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# One writer per output: an exclusive flock on ``<output>.lock`` beside it, held while the output is written.
# The kernel drops a flock when its process exits, however it exits, so the file a killed writer leaves is
# never stale: the next writer takes it. A writer that finishes (or fails with an error) deletes the file.

LOCK_RETRY_SECONDS = (0.02, 0.05, 0.1)  # a reader's probe holds a shared lock for microseconds
_held_locks: dict[str, list] = {}  # lock path -> [descriptor, depth]: the locks this process holds


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``<path>.lock`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(*paths: str | os.PathLike):
    """Hold the exclusive lock of each output in ``paths`` for the block (re-entrant within a process).

    Raises ``ZigzagError`` naming the PID of the process that holds one of them, having written nothing.
    """
    taken = []
    try:
        for path in paths:
            taken.append(_acquire(path))
        yield
    finally:
        for key in reversed(taken):
            _release(key)


def _acquire(path) -> str:
    check_writable(path)
    lock = lock_path(path)
    key = os.path.realpath(lock)
    if key in _held_locks:
        _held_locks[key][1] += 1
        return key
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ZigzagError(f"cannot open the lock file {lock}: {err.strerror}; choose another --out") from None
        if not _try_lock(fd, fcntl.LOCK_EX):
            pid = _pid_in(fd)
            os.close(fd)
            raise ZigzagError(f"{path} is being written by another zigzag process (PID {pid or '?'}, lock {lock}); "
                              f"wait for it to finish or stop it, then rerun")
        try:  # a writer that finished after we opened its lock file deleted it: lock the file now at that path
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held_locks[key] = [fd, 1]
    return key


def _release(key: str) -> None:
    held = _held_locks[key]
    held[1] -= 1
    if not held[1]:
        del _held_locks[key]
        Path(key).unlink(missing_ok=True)  # while still holding it, so no other writer holds this file
        os.close(held[0])


def _try_lock(fd: int, kind: int) -> bool:
    for pause in (*LOCK_RETRY_SECONDS, None):
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if pause is None:
                return False
            time.sleep(pause)


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def writer_pid(path: str | os.PathLike) -> int | None:
    """The PID of another process writing ``path`` now (it holds the output's lock; 0 if its PID is not
    yet written), else None. The partial trajectory ``<out>.resume/trajectory.h5`` is written under the
    lock of ``<out>``."""
    path = Path(path)
    outputs = [path]
    if path.parent.name.endswith(".resume"):
        outputs.append(path.parent.with_name(path.parent.name[:-len(".resume")]))
    for output in outputs:
        lock = lock_path(output)
        if os.path.realpath(lock) in _held_locks:
            continue  # this process writes it
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _pid_in(fd) or 0
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return None


def _check_not_being_written(path) -> None:
    pid = writer_pid(path)
    if pid is not None:
        raise ZigzagError(f"{path} is still being written by PID {pid or '?'}; wait for it to finish")


def remove_litter(path: Path) -> None:
    """Delete the ``.NAME.tmpPID`` files that killed writers of ``path`` left (their PID is gone)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp*"):
        pid = tmp.name[len(path.name) + 5:]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_writable(path: str | os.PathLike) -> None:
    """Create the folder of ``path`` if needed; one clear error if it cannot be written."""
    folder = Path(path).parent
    if Path(path).is_dir():
        raise ZigzagError(f"{path} is a folder; --out must name a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ZigzagError(f"cannot create output folder {folder}: {err.strerror}; choose another --out") from None
    if not os.access(folder, os.W_OK):
        raise ZigzagError(f"output folder {folder} is not writable; choose another --out")


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``folder``."""
    return shutil.disk_usage(folder).free


def check_free_space(path: Path, need: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` before writing ``need`` bytes of ``what`` where fewer are free."""
    free = free_bytes(path.parent)
    if free < need:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {what} needs about {need:,} bytes, "
                                    f"{free:,} are free", str(path))


def write_failed(path: Path, err: Exception) -> OSError:
    """The ``OSError`` naming ``path`` for a failed write of it: ``err`` itself if it names an errno, else the
    library's message (e.g. torch.save's "unexpected pos") and the free space left."""
    if isinstance(err, OSError) and err.errno:
        return OSError(err.errno, err.strerror or os.strerror(err.errno), str(path))
    text = " ".join(str(err).split())
    return OSError(errno.EIO, f"{os.strerror(errno.EIO)}: write failed ({text[-120:]}) with "
                              f"{free_bytes(path.parent):,} bytes free", str(path))


def check_outputs(outputs: list, inputs: list, folders: list = ()) -> None:
    """Refuse an output that is (or resolves to, through symlinks or hard links) one of the inputs or another
    output, an input that is an output's lock file, and an input inside one of ``folders`` (folders the
    command deletes or replaces). Call it before anything is written."""
    def same(a, b) -> bool:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        try:
            return os.path.samefile(a, b)  # hard links
        except OSError:
            return False

    for i, out in enumerate(outputs):
        for path in inputs:
            for written in (out, lock_path(out)):
                if same(written, path):
                    raise ZigzagError(f"output {written} is also an input ({path}); writing it would destroy the "
                                      f"input: choose another output path")
        for other in outputs[:i]:
            if same(out, other):
                raise ZigzagError(f"outputs {other} and {out} are the same file; give each output its own path")
    for folder in folders:
        inside = os.path.realpath(folder) + os.sep
        for path in inputs:
            if os.path.realpath(path).startswith(inside):
                raise ZigzagError(f"input {path} is inside {folder}, which zigzag deletes or replaces; "
                                  f"move the input out of it")


def open_file(path: str | os.PathLike, expected: str | None = None, mode: str = "r") -> h5py.File:
    """Open a zigzag file (read-only by default) after checking it is whole and of the expected format."""
    path = Path(path)
    if not path.exists():
        _check_not_being_written(path)
        raise ZigzagError(f"{path}: no such file; create it first (see `zigzag --help`)")
    try:
        f = h5py.File(path, mode)
    except OSError:
        _check_not_being_written(path)
        raise ZigzagError(f"{path}: not a readable HDF5 file (truncated or foreign); "
                          "delete it and re-create it") from None
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt == TRAJECTORY and attr_value(f.attrs.get("status")) == "running":
        try:
            _check_not_being_written(path)
        except ZigzagError:
            f.close()
            raise
    if fmt not in FORMATS:
        f.close()
        raise ZigzagError(f"{path}: not a zigzag file (no zigzag 'format' attribute); "
                          f"expected one of {', '.join(FORMATS)}")
    if expected is not None and fmt != expected:
        f.close()
        raise ZigzagError(f"{path}: is a {fmt} file, expected a {expected} file")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        f.close()
        raise ZigzagError(f"{path}: format_version {version} is newer than this zigzag reads "
                          f"({FORMAT_VERSION}): written by a newer zigzag; upgrade zigzag")
    return f


def file_config(f: h5py.File) -> dict:
    """The ``config`` attribute as a mapping; one clear error if it is not JSON of a mapping."""
    try:
        config = json.loads(f.attrs["config"])
    except (KeyError, TypeError, ValueError) as err:
        reason = "missing" if isinstance(err, KeyError) else "not JSON"
        raise ZigzagError(f"{f.filename}: the 'config' attribute is {reason}: a damaged or foreign file; "
                          "re-create it with zigzag") from None
    if not isinstance(config, dict):
        raise ZigzagError(f"{f.filename}: the 'config' attribute is not a JSON mapping: a damaged or foreign file; "
                          "re-create it with zigzag")
    return config


def read_data(ds: h5py.Dataset, selection=()) -> np.ndarray:
    """``ds[selection]``; a failed read (a checksum that does not match, a damaged chunk) as one
    ``ZigzagError`` naming the file and the dataset."""
    try:
        return ds[selection]
    except OSError as err:
        reason = " ".join(str(err).split()).replace("synchronously ", "")
        raise ZigzagError(f"{ds.file.filename}: {ds.name} cannot be read ({reason}; a changed byte fails its "
                          f"checksum): the file is damaged; re-create it with zigzag") from None


# ---------------------------------------------------------------------------------------------
# zigzag-dataset


IMAGE_DTYPES = {"uint8": "uint8 pixel values 0-255", "float32": "float32 values", "float64": "float64 values"}


@dataclass
class DatasetArrays:
    """A prepared dataset: images N x C x H x W (or N x D vectors), uint8 or float (``IMAGE_DTYPES``), int64
    labels, per-channel mean/std in [0, 1] units (of uint8 images; 0 and 1 for floats, fed as they are)."""

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
            images = np.ascontiguousarray(images)
            chunks = None  # h5py's choice, unless whole images fit: about 1 MiB of them per chunk
            if images.ndim in (2, 4) and images.size:
                chunks = (max(1, min(len(images), (1 << 20) // images[0].nbytes)), *images.shape[1:])
            shape = "N x C x H x W" if images.ndim == 4 else "N x D vectors"
            _put(g, "images", images, f"{split} images, {IMAGE_DTYPES[images.dtype.name]}, {shape}", chunks=chunks)
            _put(g, "labels", np.asarray(labels, dtype=np.int64), f"{split} class labels 0..num_classes-1")


def read_dataset(path: str | os.PathLike) -> DatasetArrays:
    """Read a zigzag-dataset file and check its contract (one clear error for each way it can be wrong)."""
    fix = "re-create it with `zigzag prepare`"
    with open_file(path, DATASET) as f:
        missing = [name for name in ("train/images", "train/labels", "test/images", "test/labels")
                   if not isinstance(f.get(name), h5py.Dataset)]
        missing += [f"attribute {key}" for key in ("mean", "std", "num_classes", "config") if key not in f.attrs]
        if missing:
            raise ZigzagError(f"{path}: damaged zigzag-dataset, missing {', '.join(missing)}; {fix}")
        data = DatasetArrays(
            train_images=read_data(f["train/images"]),
            train_labels=read_data(f["train/labels"]),
            test_images=read_data(f["test/images"]),
            test_labels=read_data(f["test/labels"]),
            mean=np.asarray(f.attrs["mean"]),
            std=np.asarray(f.attrs["std"]),
            num_classes=int(f.attrs["num_classes"]),
            config=file_config(f),
        )
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        if images.ndim not in (2, 4) or images.dtype.name not in IMAGE_DTYPES or labels.ndim != 1 \
                or len(images) != len(labels):
            raise ZigzagError(f"{path}: {split} split is not images N x C x H x W or vectors N x D "
                              f"({', '.join(IMAGE_DTYPES)}) with N labels "
                              f"(images {images.shape} {images.dtype}, labels {labels.shape}); {fix}")
        if not len(labels):
            raise ZigzagError(f"{path}: the {split} split is empty; {fix} from a source with {split} images")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ZigzagError(f"{path}: {split} labels are {labels.dtype}, not integers; {fix}")
        bad = labels[(labels < 0) | (labels >= data.num_classes)]
        if len(bad):
            raise ZigzagError(f"{path}: {split} label(s) {sorted(set(bad.tolist()))[:5]} outside "
                              f"0..{data.num_classes - 1} (num_classes {data.num_classes}); {fix}")
    channels = data.train_images.shape[1] if data.train_images.ndim == 4 else 1
    if data.train_images.shape[1:] != data.test_images.shape[1:] or data.train_images.dtype != \
            data.test_images.dtype or data.mean.shape != (channels,) or data.std.shape != data.mean.shape \
            or not (data.std > 0).all():
        raise ZigzagError(f"{path}: image shapes or per-channel mean/std disagree (train "
                          f"{data.train_images.shape[1:]}, test {data.test_images.shape[1:]}, std {data.std}); {fix}")
    data.train_labels, data.test_labels = data.train_labels.astype(np.int64), data.test_labels.astype(np.int64)
    return data


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the content fingerprint a checkpoint is bound to."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# zigzag-trajectory


class TrajectoryWriter:
    """Appends one row per step to resizable, chunked datasets of a trajectory file.

    ``/steps/<series>`` [K] and the ``LAG_SERIES`` (``/steps/dot``, ``/steps/opposite``, ...) [K, L+1]; optional
    raw gradients ``/raw/gradients`` [R, P] with their steps in ``/raw/steps`` [R]. Rows are buffered and written in
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
               raw_compression: str | None = None, raw_parameters: bool = False,
               attrs: dict | None = None, layers: dict[str, int] | None = None) -> "TrajectoryWriter":
        """``layers``: name -> entries of each parameter tensor (in the flat gradient's order), for the
        ``LAYER_SERIES``."""
        f = h5py.File(path, "w")
        _write_root(f, TRAJECTORY, config, status="running", n_params=int(n_params),
                    n_train=int(n_train), lags=int(lags), trajectory_id=uuid.uuid4().hex, **(attrs or {}))
        steps = f.create_group("steps")
        for name, description in {**STEP_SERIES, **(extra_series or {})}.items():
            _put(steps, name, np.zeros(0), description, maxshape=(None,), chunks=(1024,), dtype="f8")
        for name, description in LAG_SERIES.items():
            _put(steps, name, np.zeros((0, lags + 1)), description, maxshape=(None, lags + 1),
                 chunks=(256, lags + 1), dtype="f8")
        if layers:
            f.attrs["layer_names"] = list(layers)
            f.attrs["layer_sizes"] = np.array(list(layers.values()), dtype=np.int64)
            for name, description in LAYER_SERIES.items():
                _put(steps, name, np.zeros((0, len(layers), lags + 1)), description,
                     maxshape=(None, len(layers), lags + 1), chunks=(64, len(layers), lags + 1), dtype="f8")
        if raw_dtype is not None:
            raw = f.create_group("raw")
            chunk_cols = min(n_params, 1 << 20)
            _put(raw, "gradients", np.zeros((0, n_params), dtype=raw_dtype),
                 f"raw flattened gradients g_k ({raw_dtype}), parameter order of model.parameters()",
                 maxshape=(None, n_params), chunks=(1, chunk_cols), compression=raw_compression)
            _put(raw, "steps", np.zeros(0, dtype=np.int64), "step k of each row of /raw/gradients",
                 maxshape=(None,), chunks=(1024,))
        if raw_parameters:
            raw = f.require_group("raw")
            _put(raw, "parameters", np.zeros((0, n_params), dtype=np.float32), RAW_PARAMETERS["parameters"],
                 maxshape=(None, n_params), chunks=(1, min(n_params, 1 << 20)))
            _put(raw, "parameter_steps", np.zeros(0, dtype=np.int64), RAW_PARAMETERS["parameter_steps"],
                 maxshape=(None,), chunks=(1024,))
        f.flush()
        return cls(f)

    @classmethod
    def reopen(cls, path, keep_steps: int) -> "TrajectoryWriter":
        """Open an unfinished trajectory and truncate it to its first ``keep_steps`` steps (resume).

        The file is checked first (readable, every series present with at least ``keep_steps`` rows, the
        raw gradients matching their steps); a damaged one raises ``ZigzagError`` saying what is wrong.
        """
        try:
            with open_file(path, TRAJECTORY) as f:
                _check_partial(f, keep_steps)
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
            raise ZigzagError(f"{path}: unreadable ({type(err).__name__}: {' '.join(str(err).split())[:120]})") \
                from None
        f = open_file(path, TRAJECTORY, mode="a")
        try:
            for ds in f["steps"].values():
                ds.resize(keep_steps, axis=0)
            for rows, steps in RAW_ROWS:
                if steps in f:
                    keep = int(np.sum(f[steps][()] < keep_steps))
                    f[rows].resize(keep, axis=0)
                    f[steps].resize(keep, axis=0)
            f.attrs["status"] = "running"
            f.flush()
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            f.close()
            raise ZigzagError(f"{path}: cannot be truncated to {keep_steps} steps ({err})") from None
        return cls(f)

    def append(self, row: dict) -> None:
        """Append step ``self.n_steps``; series missing from ``row`` are NaN."""
        self._rows.append(row)
        self.n_steps += 1
        if time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one block per series and flush the file.

        Free space for the chunks the rows start is checked first, and each series is flushed on its own
        before the file: a write that fails then raises ``OSError`` (when H5Fflush's loop over the datasets
        meets a failed chunk write, HDF5 1.14 can crash the process).
        """
        if self._rows:
            k, m = self.n_steps - len(self._rows), len(self._rows)
            need = sum((-(-(k + m) // ds.chunks[0]) - -(-k // ds.chunks[0])) * math.prod(ds.chunks) * ds.dtype.itemsize
                       for ds in self.steps.values())
            check_free_space(Path(self.f.filename), need + SPACE_MARGIN, f"writing steps {k} to {k + m - 1}")
            for name, ds in self.steps.items():
                block = np.empty((m, *ds.shape[1:]))
                for i, row in enumerate(self._rows):
                    block[i] = row.get(name, np.nan)
                ds.resize(k + m, axis=0)
                ds[k:] = block
            self._rows = []
        for ds in self.steps.values():
            ds.flush()
        self.f.flush()
        self._flushed_at = time.monotonic()

    def append_raw(self, step: int, gradient: np.ndarray) -> None:
        """Append g_k as the next row of ``/raw/gradients``."""
        self._append_row("raw/gradients", "raw/steps", step, gradient, "raw gradient")

    def append_parameters(self, step: int, parameters: np.ndarray) -> None:
        """Append theta_k (float32, flat) as the next row of ``/raw/parameters``."""
        self._append_row("raw/parameters", "raw/parameter_steps", step, parameters, "raw parameters")

    def _append_row(self, name: str, steps_name: str, step: int, row: np.ndarray, what: str) -> None:
        """``row`` as the next row of dataset ``name`` and ``step`` as the next entry of ``steps_name``, once the
        disk has room for it (else one line)."""
        rows, steps = self.f[name], self.f[steps_name]
        check_free_space(Path(self.f.filename), row.nbytes + SPACE_MARGIN, f"writing the {what} of step {step}")
        r = rows.shape[0]
        rows.resize(r + 1, axis=0)
        steps.resize(r + 1, axis=0)
        rows[r] = row
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


def _check_partial(f: h5py.File, keep_steps: int) -> None:
    """Raise ``ZigzagError`` unless ``f`` holds a readable first ``keep_steps`` steps of every series."""
    steps = f.get("steps")
    missing = [name for name in (*STEP_SERIES, *REQUIRED_LAG_SERIES) if steps is None or name not in steps]
    if missing:
        raise ZigzagError(f"{f.filename}: missing /steps/{', /steps/'.join(missing)}")
    lags = int(f.attrs["lags"])
    for name, ds in steps.items():
        if ds.shape[0] < keep_steps:
            raise ZigzagError(f"{f.filename}: /steps/{name} has {ds.shape[0]} rows, the checkpoint {keep_steps}")
        if (name in LAG_SERIES or name in LAYER_SERIES) and ds.shape[-1:] != (lags + 1,):
            raise ZigzagError(f"{f.filename}: /steps/{name} has shape {ds.shape}, "
                              f"expected lags + 1 = {lags + 1} columns")
        ds[:keep_steps]  # every chunk the resume keeps must read back
    for rows, steps in RAW_ROWS:
        if steps in f:
            raw_steps = f[steps][()]
            if f[rows].shape[0] != len(raw_steps) or (np.diff(raw_steps) <= 0).any():
                raise ZigzagError(f"{f.filename}: /{rows} and /{steps} disagree")
            kept = int(np.sum(raw_steps < keep_steps))
            if kept:
                f[rows][kept - 1]  # the last row the resume keeps must read back


@dataclass
class Trajectory:
    """A trajectory read into memory (raw gradients stay on disk: open the file for those).

    ``attrs`` holds the root attributes as stored; the properties give the ones that may be "none" with
    None restored (docs/formats.md, "None values").
    """

    steps: dict[str, np.ndarray]
    attrs: dict
    config: dict

    @property
    def status(self) -> str:
        return self.attrs["status"]

    @property
    def diverged_at(self) -> int | None:
        """The step a diverged run stopped at; None for a run that did not diverge."""
        return _none_if_negative(self.attrs.get("diverged_at", -1)) if self.status == "diverged" else None

    def __len__(self) -> int:
        return len(self.steps["loss"])


def _none_if_negative(value) -> int | None:
    """A step index as stored (-1: none) as an int, or None."""
    return None if value is None or int(value) < 0 else int(value)


def attr_value(value):
    """An HDF5 attribute as a plain Python value (str for bytes, int/float for NumPy scalars)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def schedule_change_point(traj: Trajectory) -> int | None:
    """The schedule's change point t in its own unit (``schedule.unit``: epoch or iteration = step), None if
    none: from the trajectory's ``change_point_epoch`` / ``change_point_step`` (format_version 1 stored it
    in schedule units as ``change_point``)."""
    unit = schedule_setting(traj.config.get("schedule"), "unit")
    key = "change_point_epoch" if unit == "epoch" else "change_point_step"
    return _none_if_negative(traj.attrs.get(key, traj.attrs.get("change_point", -1)))


def read_trajectory(path) -> Trajectory:
    """Read a trajectory's ``/steps`` and attributes; one clear error for a damaged or foreign file."""
    with open_file(path, TRAJECTORY) as f:
        config = file_config(f)
        attrs = {key: attr_value(v) for key, v in f.attrs.items()}
        steps = f.get("steps")
        if not isinstance(steps, h5py.Group):
            raise ZigzagError(f"{path}: damaged zigzag-trajectory, no /steps group; {TRAJECTORY_FIX}")
        traj = Trajectory(
            steps={name: read_data(ds) for name, ds in steps.items() if isinstance(ds, h5py.Dataset)},
            attrs=attrs, config=config)
    check_trajectory(traj, path)
    return traj


TRAJECTORY_FIX = "re-create it (rerun its `zigzag train`)"


def check_trajectory(traj: Trajectory, path) -> None:
    """Refuse what no run writes: a missing series or attribute, series of different lengths, ``lags`` that
    disagrees with the lag matrices, a negative squared norm, a correlation outside [-1, 1] (beyond
    ``COSINE_TOLERANCE``) or an opposite-sign share outside [0, 1] (a count outside [0, n_params]); docs/formats.md,
    "Checksums and checked values"."""
    def bad(what: str):
        fix = TRAJECTORY_FIX if traj.attrs.get("status") != "running" else \
            f"its status is running: if its `zigzag train` still writes it, wait for the end, else {TRAJECTORY_FIX}"
        raise ZigzagError(f"{path}: {what}: a damaged or foreign zigzag-trajectory; {fix}")

    missing = [f"/steps/{name}" for name in ("loss", *REQUIRED_LAG_SERIES) if name not in traj.steps]
    missing += [f"attribute {key}" for key in ("status", "lags") if key not in traj.attrs]
    if missing:
        bad(f"missing {', '.join(missing)}")
    for key in ("lags", "n_params", "n_train", "total_steps", "batches_per_epoch"):
        value, low = traj.attrs.get(key, 1), 0 if key == "n_train" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            bad(f"attribute {key} is {value!r}, not an integer >= {low}")
    lags, n_steps = traj.attrs["lags"], len(traj.steps["dot"])
    n_layers = len(traj.attrs.get("layer_sizes", ()))
    for name, values in traj.steps.items():
        columns = (lags + 1,) if name in LAG_SERIES else (n_layers, lags + 1) if name in LAYER_SERIES else ()
        if values.shape[1:] != columns:
            bad(f"/steps/{name} has shape {values.shape}, expected " +
                (f"[K, lags + 1 = {lags + 1}] (attribute lags is {lags})" if name in LAG_SERIES else
                 f"[K, {n_layers} layers (attribute layer_sizes), lags + 1 = {lags + 1}]" if columns else "[K]"))
        if len(values) != n_steps:
            bad(f"/steps/{name} has {len(values)} rows but /steps/dot {n_steps}: series of different lengths")
    dot = traj.steps["dot"]
    norms_sq = dot[:, 0]
    if (norms_sq < 0).any():
        k = int(np.flatnonzero(norms_sq < 0)[0])
        bad(f"/steps/dot[{k}, 0] = {norms_sq[k]:.4g} is a negative squared norm")
    with np.errstate(invalid="ignore", divide="ignore"):
        for lag in range(1, min(lags, n_steps - 1) + 1):
            cosine = dot[lag:, lag] / np.sqrt(norms_sq[lag:] * norms_sq[:-lag])
            wrong = np.flatnonzero(np.abs(cosine) > 1 + COSINE_TOLERANCE)
            if len(wrong):
                k = int(wrong[0]) + lag
                bad(f"/steps/dot[{k}, {lag}] gives the correlation {cosine[k - lag]:.4g} of steps {k - lag} and {k}, "
                    f"outside [-1, 1]")
    for name in (*SHARE_SERIES, "layer_opposite"):
        share = traj.steps.get(name, np.zeros(0))
        share = share[~np.isnan(share)]
        if ((share < 0) | (share > 1)).any():
            bad(f"/steps/{name} holds {share[(share < 0) | (share > 1)][0]:.4g}, outside [0, 1] (a count of "
                f"opposite signs outside [0, n_params])")


# ---------------------------------------------------------------------------------------------
# zigzag-analysis


@dataclass(frozen=True)
class AnalysisField:
    """How an analysis file keeps one field of the record (docs/formats.md, "zigzag-analysis", and "None values")."""

    where: str             # "@": the root attribute of the field's name; else the dataset's path
    dtype: str             # the attribute's type or the dataset's dtype, as formats.md writes it
    none: str              # "-1": stored for None; "NaN": NaN on disk and in memory; "empty": "" (an older file
                           # lacks the name: all empty); "-": never none
    meaning: str           # formats.md's meaning of the name
    description: str = ""  # a dataset's ``description`` attribute ({h}, {smooth_above}, {zigzag_below} filled in)
    copies: str = ""       # the trajectory attribute it copies; else the ``analysis.Analysis`` field of its name

    @property
    def is_attribute(self) -> bool:
        return self.where == "@"


# The analysis record: field name -> how the file keeps it; the writer, the reader and tests/test_formats.py
# iterate it, so a new field is one line here (and one in ``analysis.Analysis`` unless it copies the trajectory).
ANALYSIS_FIELDS = {
    "mean_mu": AnalysisField(
        "/mean_mu", "float64", "NaN",
        "mean gradient correlation (eq. 3) of the window [k, k+h-1]; NaN for the last h-1 steps",
        description="mean gradient correlation (eq. 3), window of h={h} steps starting at k; NaN for the last "
        "h-1 steps"),
    "adjacent_mu": AnalysisField(
        "/adjacent_mu", "float64", "NaN", "mu(k-1, k) (eq. 2), cosine of adjacent gradients; NaN at k = 0",
        description="mu(k-1, k), cosine of adjacent gradients; NaN at k=0"),
    "phase": AnalysisField(
        "/phase", "int8", "-", "phase of step k: 0 smooth (mean_mu > `smooth_above`), 1 zigzag (mean_mu < "
        "`zigzag_below`), 2 random (between), -1 undefined (mean_mu is NaN)",
        description="int8 phase of step k: 0 smooth (mean_mu > {smooth_above}), 1 zigzag (mean_mu < {zigzag_below}), "
        "2 random (between), -1 undefined"),
    "window_steps": AnalysisField(
        "/windows/steps", "int64", "-", "first step k of each window kept",
        description="first step k of each window"),
    "window_roles": AnalysisField(
        "/windows/roles", "string", "empty", "why each window was kept: `smooth`, `zigzag`, `late` "
        "(comma-separated if several), empty if only asked for by step",
        description="why each window was chosen (analysis.auto_windows): smooth, zigzag, late, or empty if asked for "
        "by step"),
    "window_corr": AnalysisField(
        "/windows/corr", "float64", "NaN",
        "window matrices mu(k+a, k+b); NaN where the window runs past the recorded steps",
        description="h x h matrices mu(k+a, k+b); NaN where past the recorded steps"),
    "window_opposite": AnalysisField(
        "/windows/opposite", "float64", "NaN",
        "sign-shift matrices s(k+a, k+b); NaN where the window runs past the recorded steps",
        description="h x h matrices s(k+a, k+b), fraction of entries with opposite signs (an exact 0 is never "
        "opposite)"),
    "window_opposite_nonzero": AnalysisField(
        "/windows/opposite_nonzero", "float64", "NaN",
        "the same from `/steps/opposite_nonzero`: share of opposite signs among the entries non-zero in both; NaN "
        "where the window runs past the recorded steps or the trajectory lacks the series",
        description="h x h matrices of the share of entries with opposite signs among those non-zero in both; NaN "
        "where not recorded"),
    "window_opposite_weight": AnalysisField(
        "/windows/opposite_weight", "float64", "NaN",
        "the same from `/steps/opposite_weight`: magnitude-weighted share, the part of the overlap sum_i "
        "abs(g[i] g'[i]) carried by entries of opposite signs; NaN where the window runs past the recorded steps or "
        "the trajectory lacks the series",
        description="h x h matrices of the share of the overlap sum_i abs(g[i] g'[i]) carried by entries of "
        "opposite signs; NaN where not recorded"),
    "h": AnalysisField("@", "int", "-", "window size of eq. 3 and of the matrices"),
    "smooth_above": AnalysisField("@", "float", "-", "a step is smooth when mean_mu is above it"),
    "zigzag_below": AnalysisField("@", "float", "-", "a step is zigzag when mean_mu is below it"),
    "zigzag_loss_share": AnalysisField(
        "@", "float", "NaN", "share of the total loss decrease made in zigzag steps; NaN if the loss did not decrease"),
    "transitions": AnalysisField(
        "@", "JSON string", "-", "list of [step, from phase, to phase] wherever the defined phase changes"),
    "change_point_step": AnalysisField(
        "@", "int", "-1", "where GAWU would switch on this run, by the scheduler's own rule: first step of that unit; "
        "-1: none"),
    "change_point_epoch": AnalysisField("@", "int", "-1", "the epoch of `change_point_step`; -1: none"),
    "change_point_rule": AnalysisField(
        "@", "JSON string", "-", "the rule used: `h`, `unit`, `steps_per_unit`, `max_warmup` (null: none)"),
    "zigzag_onset": AnalysisField("@", "int", "-1", "first zigzag step; -1: none"),
    "eos_step": AnalysisField(
        "@", "int", "-1", "first step where sharpness >= (1 - eos_tolerance) 2 / lr; -1: never, or no sharpness "
        "recorded"),
    "eos_tolerance": AnalysisField("@", "float", "-", "the tolerance of `eos_step`"),
    "trajectory_status": AnalysisField(
        "@", "string", "-", "the trajectory's `status` when it was analysed", copies="status"),
    "trajectory_id": AnalysisField(
        "@", "string", "empty", "the trajectory's `trajectory_id` (empty: none, as in files older than ids); "
        "figures and claims refuse an analysis whose id differs from their trajectory's", copies="trajectory_id"),
    "diverged_at": AnalysisField(
        "@", "int", "-1", "the trajectory's `diverged_at`; -1: it did not diverge", copies="diverged_at"),
}
# The names a reader needs (a dataset's path, "@" and an attribute's name); an "empty" field reads as empty if missing.
ANALYSIS_REQUIRED = (*(f"@{name}" if f.is_attribute else f.where[1:] for name, f in ANALYSIS_FIELDS.items()
                       if f.none != "empty"), "@config")


NONE_STORED = {"-1": -1, "empty": ""}  # what the file keeps for None, by ``AnalysisField.none``


def _stored(name: str, field: AnalysisField, value):
    """A field's value as the file keeps it (its dtype, "none" encoded)."""
    if value is None:
        if field.none not in NONE_STORED:
            raise ValueError(f"analysis field {name} is None, but it is never none")
        value = NONE_STORED[field.none]
    if not field.is_attribute:
        return np.asarray(value, dtype=h5py.string_dtype() if field.dtype == "string" else field.dtype)
    return {"int": int, "float": float, "string": str,
            "JSON string": lambda v: json.dumps(v, sort_keys=True)}[field.dtype](value)


def _restored(field: AnalysisField, value):
    """A field's value as stored, back in memory: -1 as None, strings as str, JSON rows as tuples."""
    if not field.is_attribute:
        return [attr_value(v) for v in value] if field.dtype == "string" else value
    if field.none == "-1":
        return _none_if_negative(value)
    if field.dtype == "JSON string":
        loaded = json.loads(value)
        return [tuple(row) for row in loaded] if isinstance(loaded, list) else loaded
    return {"int": int, "float": float, "string": str}[field.dtype](value)


def write_analysis(path, analysis, config: dict, trajectory_attrs: dict) -> None:
    """Write an ``analysis.Analysis`` atomically, every field of ``ANALYSIS_FIELDS``: those it ``copies`` from
    ``trajectory_attrs``, the others from ``analysis``."""
    values = {name: trajectory_attrs.get(field.copies) if field.copies else getattr(analysis, name)
              for name, field in ANALYSIS_FIELDS.items()}
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root(f, ANALYSIS, config, **{name: _stored(name, field, values[name])
                                            for name, field in ANALYSIS_FIELDS.items() if field.is_attribute})
        for name, field in ANALYSIS_FIELDS.items():
            if not field.is_attribute:
                group, _, dataset = field.where[1:].rpartition("/")
                _put(f.require_group(group) if group else f, dataset, _stored(name, field, values[name]),
                     field.description.format(h=analysis.h, smooth_above=analysis.smooth_above,
                                              zigzag_below=analysis.zigzag_below))


def check_analysis_of(trajectory: Trajectory, trajectory_path, analysis: AnalysisFile, analysis_path) -> None:
    """Refuse an analysis that was made from another trajectory than ``trajectory`` (its ``trajectory_id``)."""
    made_from = analysis.trajectory_id
    if made_from != trajectory.attrs.get("trajectory_id", ""):
        raise ZigzagError(f"{analysis_path} was made from another trajectory than {trajectory_path} (trajectory_id "
                          f"{made_from or 'none'} vs {trajectory.attrs.get('trajectory_id') or 'none'}); "
                          f"re-run `zigzag analyze {trajectory_path}`")


# Every field of the table, not a subclass of ``analysis.Analysis``: importing the analysis here would tie every
# stage's code hash to it (a change to the analysis would retrain every run).
AnalysisFile = make_dataclass(
    "AnalysisFile", [*ANALYSIS_FIELDS, ("config", dict), ("format_version", int)],
    namespace={
        "__module__": __name__, "__len__": lambda self: len(self.mean_mu),
        "__doc__": "An analysis file read into memory: the ``analysis.Analysis`` that ``write_analysis`` stored, "
                   "None restored where the file stores -1, the fields it copied from its trajectory "
                   "(``ANALYSIS_FIELDS``) and the settings of `zigzag analyze` (``config``)."})


def read_analysis(path) -> AnalysisFile:
    """Read a zigzag-analysis file; one clear error if a name it needs is missing (an older or damaged file)."""
    with open_file(path, ANALYSIS) as f:
        missing = [name for name in ANALYSIS_REQUIRED
                   if (name[1:] not in f.attrs if name.startswith("@") else not isinstance(f.get(name), h5py.Dataset))]
        if missing:
            raise ZigzagError(f"{path}: damaged or older zigzag-analysis, missing {', '.join(missing)}; "
                              f"re-run `zigzag analyze` on its trajectory")
        values = {}
        for name, field in ANALYSIS_FIELDS.items():
            stored = f.attrs.get(name) if field.is_attribute else f.get(field.where)
            if stored is None:  # an "empty" field an older file lacks: an attribute, or one string per window
                values[name] = "" if field.is_attribute else [""] * len(values["window_steps"])
            else:
                values[name] = _restored(field, attr_value(stored) if field.is_attribute else read_data(stored))
        return AnalysisFile(**values, config=file_config(f), format_version=int(attr_value(f.attrs["format_version"])))
