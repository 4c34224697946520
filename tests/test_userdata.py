"""A user's own data (zigzag/userdata.py): .npz files in each layout and image folders become prepared datasets
whose tensors the trainer sees are the source's, with the source's sha256; bad sources are one line and exit 2."""

import h5py
import numpy as np
import pytest
import torch

from zigzag import cli, store, userdata
from zigzag.device import load_data

CPU = torch.device("cpu")
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (18, 3, 8, 8), dtype=np.uint8)  # NCHW
LABELS = np.arange(18) % 3


def npz(path, x_train=IMAGES, y_train=LABELS, x_test=IMAGES[:6], y_test=LABELS[:6], **extra):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, **extra)
    return str(path)


def prepared(tmp_path, source, *flags):
    out = str(tmp_path / f"{len(list(tmp_path.iterdir()))}.h5")
    assert cli.main(["prepare", "--from", str(source), "--out", out, *flags]) == 0
    return out


def test_npz_layouts_give_the_trainer_the_same_tensors(tmp_path):
    """NCHW and NHWC hold the same images; (N, H, W) is one channel; float vectors (N, D) reach the trainer
    exactly; the layout read, the classes and the sha256 are recorded; train_size takes a stratified subset."""
    nchw = prepared(tmp_path, npz(tmp_path / "nchw.npz"))
    nhwc = prepared(tmp_path, npz(tmp_path / "nhwc.npz", IMAGES.transpose(0, 2, 3, 1), x_test=IMAGES[:6].transpose(
        0, 2, 3, 1)))
    a, b = load_data(nchw, CPU), load_data(nhwc, CPU)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x) and a.train_x.shape == (18, 3, 8, 8)
    assert torch.equal(a.train_y, torch.from_numpy(LABELS)) and a.num_classes == b.num_classes == 3
    assert (a.dataset_config["layout"], b.dataset_config["layout"]) == ("NCHW", "NHWC")
    assert b.dataset_config["source_sha256"] == store.file_sha256(tmp_path / "nhwc.npz")
    pixels = IMAGES[:, 0].astype(np.float64) / 255  # the trainer's normalisation, as for the built-in sources
    expected = torch.from_numpy((pixels - pixels.mean()) / pixels.std()).float()
    gray = load_data(prepared(tmp_path, npz(tmp_path / "nhw.npz", IMAGES[:, 0], x_test=IMAGES[:6, 0])), CPU)
    assert gray.train_x.shape == (18, 1, 8, 8) and torch.allclose(gray.train_x[:, 0], expected, atol=1e-5)

    vectors = RNG.standard_normal((18, 5)).astype(np.float32)
    flat = load_data(prepared(tmp_path, npz(tmp_path / "vec.npz", vectors, x_test=vectors[:6])), CPU)
    assert flat.dataset_config["layout"] == "ND" and torch.equal(flat.train_x, torch.from_numpy(vectors))

    subset = store.read_dataset(prepared(tmp_path, tmp_path / "nchw.npz", "--train-size", "9", "--seed", "4"))
    assert np.bincount(subset.train_labels).tolist() == [3, 3, 3] and subset.config["train_size"] == 9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_images_are_stored_as_floats_and_fed_as_they_are(tmp_path, dtype):
    images = (RNG.standard_normal((18, 2, 8, 8)) / 3).astype(dtype)
    path = prepared(tmp_path, npz(tmp_path / "f.npz", images, x_test=images[:6]))
    with h5py.File(path) as f:
        assert f["train/images"].dtype == dtype and np.array_equal(f["train/images"][()], images)
    assert torch.equal(load_data(path, CPU).train_x, torch.from_numpy(images).float())


def write_folder(root):
    from PIL import Image

    for part, n in (("train", 3), ("test", 1)):
        for c, name in enumerate(("cat", "dog")):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(IMAGES[3 * c + i].transpose(1, 2, 0)).save(root / part / name / f"{i}.png")
    return root


def test_image_folder_reads_classes_as_imagefolder_assigns_them(tmp_path):
    folder = write_folder(tmp_path / "imgs")
    data = store.read_dataset(prepared(tmp_path, folder))
    assert data.config["class_names"] == ["cat", "dog"] and data.num_classes == 2
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and data.test_labels.tolist() == [0, 1]
    assert np.array_equal(data.train_images, IMAGES[[0, 1, 2, 3, 4, 5]])  # PNG is lossless
    assert data.config["source_sha256"] == userdata.folder_sha256(folder)
    (folder / "test" / "dog" / "0.png").write_bytes((folder / "test" / "cat" / "0.png").read_bytes())
    assert userdata.folder_sha256(folder) != data.config["source_sha256"]


def _folder_with(change):
    def make(root):
        change(write_folder(root / "imgs"))
        return root / "imgs"
    return make


BAD_SOURCES = {
    "missing array": (lambda root: np.savez(root / "s.npz", x_train=IMAGES, y_train=LABELS, x_test=IMAGES),
                      "missing array(s) y_test"),
    "mismatched lengths": (lambda root: npz(root / "s.npz", y_train=LABELS[:-1]), "18 images but 17 labels"),
    "negative label": (lambda root: npz(root / "s.npz", y_test=-LABELS[:6]), "labels must be 0..C-1"),
    "float labels": (lambda root: npz(root / "s.npz", y_train=LABELS + 0.5), "must be integer class labels"),
    "nan pixels": (lambda root: npz(root / "s.npz", np.full((18, 5), np.nan), x_test=np.zeros((6, 5))),
                   "NaN or infinite"),
    "inf pixels": (lambda root: npz(root / "s.npz", np.full((18, 5), np.inf, np.float32),
                                    x_test=np.zeros((6, 5), np.float32)), "NaN or infinite"),
    "test shape differs": (lambda root: npz(root / "s.npz", x_test=IMAGES[:6, :, :7]), "test images have shape"),
    "object array": (lambda root: npz(root / "s.npz", x_train=np.array([None] * 18)), "not a readable .npz"),
    "missing file": (lambda root: root / "absent.npz", "no such file or folder"),
    "images of different sizes": (_folder_with(lambda f: (f / "train" / "dog" / "9.png").write_bytes(
        _png(IMAGES[0, :, :7, :7]))), "all images must have one size"),
    "empty class folder": (_folder_with(lambda f: (f / "train" / "bird").mkdir()), "bird"),
}


def _png(chw):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(chw.transpose(1, 2, 0)).save(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.parametrize("case", BAD_SOURCES)
def test_bad_source_is_one_line_and_keeps_what_was_written(tmp_path, capsys, case):
    make, message = BAD_SOURCES[case]
    source = make(tmp_path) or tmp_path / "s.npz"
    out = tmp_path / "out.h5"
    out.write_bytes(b"an earlier file")
    capsys.readouterr()
    assert cli.main(["prepare", "--from", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zigzag: error:") and message in err[0], err
    assert out.read_bytes() == b"an earlier file" and sorted(p.name for p in tmp_path.iterdir() if
                                                              p.name.startswith(".")) == []


def test_conv_model_trains_on_nhwc_uint8_and_refuses_vectors_in_one_line(tmp_path, capsys):
    """A conv model trains a step on 12 x 12 NHWC uint8 images of 3 classes; on (N, D) vectors it stops at build
    time with one line."""
    images = RNG.integers(0, 256, (12, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    data = prepared(tmp_path, npz(tmp_path / "rgb.npz", images, labels, images[:3], labels[:3]))
    vectors = prepared(tmp_path, npz(tmp_path / "vec.npz", images.reshape(12, -1), labels, images[:3].reshape(3, -1),
                                     labels[:3]))
    common = ["--model", "cnn", "--width", "0.25", "--lr", "0.1", "--steps", "1", "--lags", "1", "--micro-batch", "12",
              "--device", "cpu", "--quiet"]
    out = tmp_path / "run.h5"
    assert cli.main(["train", "--dataset", data, *common, "--out", str(out)]) == 0
    run = store.read_trajectory(out)
    assert run.status == "completed" and len(run.steps["loss"]) == 1 and np.isfinite(run.steps["loss"]).all()
    capsys.readouterr()
    assert cli.main(["train", "--dataset", vectors, *common, "--out", str(tmp_path / "v.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes images N x C x H x W" in err[0] and not (tmp_path / "v.h5").exists()
