"""A user's own data (``zigzag prepare --from PATH``; a config's ``datasets: {name: {from: PATH}}``).

Two kinds of source:

- a ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (read with ``allow_pickle=False``). Images
  are uint8 or float, (N, C, H, W), (N, H, W, C) or (N, H, W) for one channel; (N, D) arrays are vectors, for
  models that take (batch, D). The layout rule: a 4-d array is channels last (NHWC) when its last axis is 1, 3
  or 4 and its second is not; otherwise NCHW.
- a folder ``train/<class>/*``, ``test/<class>/*`` of images, read with torchvision's ``ImageFolder`` (class
  indices as it assigns them: the sorted class folder names); pixels as the files hold them (L: one channel,
  RGB: three, RGBA: four; other modes converted to RGB).

Labels are integers 0..C-1 with C = max label + 1. uint8 images are stored as uint8 (the trainer feeds
(x / 255 - mean) / std per channel, as for the built-in sources); float images as float32 (float16 and float32
exactly) or float64, fed to the model as they are (mean 0, std 1 recorded). The source's sha256 (``source_sha256``)
is recorded: of a file, its bytes; of a folder, ``folder_sha256``.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from zigzag.errors import ZigzagError

ARRAYS = ("x_train", "y_train", "x_test", "y_test")
CHANNEL_COUNTS = (1, 3, 4)  # a 4-d array's last axis of this size (and its second not) means channels last
SPLITS = ("train", "test")


def source_files(path: str | os.PathLike) -> list[str]:
    """The files a source consists of, sorted: the file itself, or every file under the folder (the prepare
    job's inputs, so the workflow re-prepares when one changes, appears or goes)."""
    root = Path(path)
    if not root.is_dir():
        return [str(root)]
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def folder_sha256(path: str | os.PathLike) -> str:
    """sha256 over the folder's files in the sorted order of their relative POSIX paths: for each, the path
    (UTF-8), a NUL byte, the hex sha256 of its bytes and a newline."""
    from zigzag.store import file_sha256

    root, digest = Path(path), hashlib.sha256()
    for relative in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        digest.update(f"{relative}\0{file_sha256(root / relative)}\n".encode())
    return digest.hexdigest()


def train_count(path: str | os.PathLike) -> int:
    """The number of training examples of a source, read cheaply (the .npz's ``y_train``, or the files under
    ``train/``); 1 where that fails (the prepare job then reports why)."""
    root = Path(path)
    if root.is_dir():
        return max(1, sum(p.is_file() for p in (root / "train").rglob("*")))
    try:
        with np.load(root, allow_pickle=False) as f:
            return max(1, len(f["y_train"]))
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return 1


def read(path: str | os.PathLike):
    """Train and test arrays of a user's source, checked: (train_x, train_y, test_x, test_y, num_classes, extra),
    images N x C x H x W (or N x D vectors), labels int64; ``extra`` is what the dataset's ``config`` records."""
    root = Path(path)
    if not root.exists():
        raise ZigzagError(f"--from {path}: no such file or folder")
    if root.is_dir():
        train_x, train_y, test_x, test_y, classes = _read_folder(root)
        extra = {"kind": "image folder", "layout": "NCHW", "class_names": classes}
        sha256 = folder_sha256(root)
    else:
        train_x, train_y, test_x, test_y, layout = _read_npz(root)
        extra = {"kind": "npz", "layout": layout}
        from zigzag.store import file_sha256

        sha256 = file_sha256(root)
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise ZigzagError(f"{path}: {part} split has {len(x)} images but {len(y)} labels")
        if not len(y):
            raise ZigzagError(f"{path}: the {part} split is empty")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ZigzagError(f"{path}: y_{part} must be integer class labels of shape (N,), got {y.dtype} {y.shape}")
        if y.min() < 0:
            raise ZigzagError(f"{path}: y_{part} has label {y.min()}; labels must be 0..C-1")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ZigzagError(f"{path}: x_{part} holds NaN or infinite values")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ZigzagError(f"{path}: test images have shape {test_x.shape[1:]}, train images {train_x.shape[1:]}")
    num_classes = len(extra["class_names"]) if "class_names" in extra else int(max(train_y.max(), test_y.max())) + 1
    extra.update(source_sha256=sha256, dtype=str(train_x.dtype))
    return (train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), num_classes, extra)


def _read_npz(path: Path):
    """The four arrays of an .npz, images converted to N x C x H x W (or N x D), and the layout read."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [name for name in ARRAYS if name not in f.files]
            if missing:
                raise ZigzagError(f"{path}: missing array(s) {', '.join(missing)}; an .npz source holds "
                                  f"{', '.join(ARRAYS)}")
            arrays = {name: f[name] for name in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ZigzagError(f"{path}: not a readable .npz of plain arrays ({' '.join(str(err).split())[:200]})") from None
    images, layouts = [], []
    for part in SPLITS:
        x = arrays[f"x_{part}"]
        if x.dtype == np.float16:
            x = x.astype(np.float32)  # exact
        if x.dtype not in (np.uint8, np.float32, np.float64):
            raise ZigzagError(f"{path}: x_{part} is {x.dtype}; images must be uint8 or float")
        x, layout = _channels_first(x, f"{path}: x_{part}")
        images.append(x)
        layouts.append(layout)
    if layouts[0] != layouts[1] or images[0].dtype != images[1].dtype:
        raise ZigzagError(f"{path}: x_test ({layouts[1]}, {images[1].dtype}) differs from x_train "
                          f"({layouts[0]}, {images[0].dtype})")
    return images[0], arrays["y_train"], images[1], arrays["y_test"], layouts[0]


def _channels_first(x: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """``x`` as N x C x H x W (or N x D vectors) and the layout it was read in (the module's rule)."""
    if x.ndim == 2:
        return x, "ND"
    if x.ndim == 3:
        return x[:, None], "NHW"
    if x.ndim == 4:
        if x.shape[3] in CHANNEL_COUNTS and x.shape[1] not in CHANNEL_COUNTS:
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), "NHWC"
        return x, "NCHW"
    raise ZigzagError(f"{what} has shape {x.shape}; expected (N, C, H, W), (N, H, W, C), (N, H, W) or (N, D)")


def _read_folder(root: Path):
    """Both splits of an image folder as uint8 N x C x H x W, labels as ImageFolder assigns them, the class names."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    def load(file: str) -> np.ndarray:
        with Image.open(file) as image:
            pixels = np.asarray(image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB"))
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)

    splits, classes = [], None
    for part in SPLITS:
        folder = root / part
        if not folder.is_dir():
            raise ZigzagError(f"{root}: no {part}/ folder; an image folder holds train/<class>/* and test/<class>/*")
        try:
            found = ImageFolder(str(folder), loader=load)
        except (FileNotFoundError, OSError) as err:  # an empty class folder, no class folder at all
            raise ZigzagError(f"{folder}: {' '.join(str(err).split())[:300]}") from None
        if classes is not None and found.classes != classes:
            raise ZigzagError(f"{folder}: classes {found.classes} differ from train/'s {classes}")
        classes = found.classes
        images = []
        for file, _ in found.samples:
            try:
                images.append(found.loader(file))
            except OSError as err:
                raise ZigzagError(f"{file}: not a readable image ({err})") from None
            if images[-1].shape != images[0].shape:
                raise ZigzagError(f"{file}: image of shape {images[-1].shape} (C x H x W), but "
                                  f"{found.samples[0][0]} has {images[0].shape}; all images must have one size")
        splits += [np.stack(images).astype(np.uint8), np.array(found.targets, dtype=np.int64)]
    return (*splits, classes)
