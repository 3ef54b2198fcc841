"""Tests of ``bnn_nested.data.vision`` on tiny fake data sets written in the real on-disk formats.

Each fixture writes a few random images in the exact format torchvision reads (MNIST idx-ubyte
files, CIFAR python pickles, SVHN ``.mat`` files, an ImageFolder of PNGs) into ``tmp_path`` and
returns the raw pixels and labels, so every loaded tensor can be checked against
``(pixel / 255 - mean[c]) / std[c]`` computed here by hand.

CIFAR and SVHN: torchvision verifies the md5 checksum of the real files, which fake files cannot
match. The ``skip_md5`` fixture therefore monkeypatches ``check_integrity`` inside
``torchvision.datasets.cifar`` / ``torchvision.datasets.svhn`` to a plain "file exists" check; one
test runs without the patch to show that a checksum mismatch becomes our ``DataNotFoundError``.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bnn_nested.data.vision import (
    NORMALIZATION,
    VISION_NAMES,
    DataNotFoundError,
    ImageDataSplits,
    load_torchvision,
    load_torchvision_test,
    ood_pair_default,
)

RNG_SEED = 0


# ----------------------------------------------------------------------------- fake writers


def _balanced_labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_mnist(root: Path, folder: str, n_train_per_class: int = 5, n_test: int = 20) -> dict:
    """MNIST idx files (big-endian header: magic 0x0803 / 0x0801, then the dimensions)."""
    rng = np.random.default_rng(RNG_SEED)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, labels in (
        ("train", _balanced_labels(10, n_train_per_class, rng)),
        ("t10k", rng.integers(0, 10, n_test)),
    ):
        n = len(labels)
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x0803, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes()
        )
        out[prefix] = (images[:, None], labels)  # (N, 1, 28, 28) CHW
    return {"train": out["train"], "test": out["t10k"]}


def write_cifar(root: Path, hundred: bool = False) -> dict:
    """CIFAR python pickles: dicts with 'data' (N, 3072) uint8 RGB planes and the labels."""
    rng = np.random.default_rng(RNG_SEED)
    num_classes = 100 if hundred else 10
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    label_key = "fine_labels" if hundred else "labels"

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)

    train_labels = _balanced_labels(num_classes, 2 if hundred else 4, rng)
    train = rng.integers(0, 256, (len(train_labels), 3072), dtype=np.uint8)
    test_labels = rng.integers(0, num_classes, 12)
    test = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    if hundred:
        dump("train", {"data": train, label_key: train_labels.tolist()})
        dump("test", {"data": test, label_key: test_labels.tolist()})
        dump("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    else:
        for i, chunk in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
            dump(f"data_batch_{i}", {"data": train[chunk], label_key: train_labels[chunk].tolist()})
        dump("test_batch", {"data": test, label_key: test_labels.tolist()})
        dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return {
        "train": (train.reshape(-1, 3, 32, 32), train_labels),
        "test": (test.reshape(-1, 3, 32, 32), test_labels),
    }


def write_svhn(root: Path) -> dict:
    """SVHN .mat files: X (32, 32, 3, N) uint8 (H, W, C, N), y (N, 1) with digit 0 stored as 10."""
    scipy_io = pytest.importorskip("scipy.io", reason="SVHN's .mat files need scipy")
    rng = np.random.default_rng(RNG_SEED)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, labels in (
        ("train", _balanced_labels(10, 4, rng)),
        ("test", rng.integers(0, 10, 12)),
    ):
        x = rng.integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        scipy_io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x.transpose(3, 2, 0, 1), labels)  # (N, C, H, W), labels 0..9
    return out


def write_imagefolder(root: Path, classes=("ant", "bee", "cat"), per_class=(4, 2)) -> dict:
    """root/{train,test}/<class>/<i>.png, 8x8 RGB PNGs (lossless, so pixels are exact)."""
    from PIL import Image

    rng = np.random.default_rng(RNG_SEED)
    out = {}
    for split, n in zip(("train", "test"), per_class):
        images, labels = [], []
        for k, cls in enumerate(classes):  # ImageFolder sorts classes and files by name
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
                images.append(img.transpose(2, 0, 1))
                labels.append(k)
        out[split] = (np.stack(images), np.array(labels))
    return out


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace torchvision's md5 check by an existence check (fake files cannot match md5s)."""
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.svhn as tv_svhn

    def exists(fpath, md5=None) -> bool:
        return os.path.isfile(fpath)

    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_svhn, "check_integrity", exists)


# ----------------------------------------------------------------------------- helpers


def expected(raw_chw: np.ndarray, name: str) -> torch.Tensor:
    """(pixel / 255 - mean[c]) / std[c] from raw uint8 (C, H, W), by hand."""
    mean, std = (torch.tensor(v, dtype=torch.float64)[:, None, None] for v in NORMALIZATION[name])
    return ((torch.from_numpy(raw_chw).double() / 255.0 - mean) / std).float()


def check_splits(splits: ImageDataSplits, raw: dict, name: str, val_per_class: int) -> None:
    """Sizes, stratification, labels and exact normalised pixels of every split."""
    train_x, train_y = raw["train"]
    test_x, test_y = raw["test"]
    n_classes = splits.num_classes
    assert len(splits.train) + len(splits.val) == len(train_y)
    assert len(splits.val) == val_per_class * n_classes
    assert len(splits.test) == len(test_y)
    # stratified: the validation split holds the same number of each class
    val_labels = np.array([train_y[i] for i in splits.val.indices])
    assert np.bincount(val_labels, minlength=n_classes).tolist() == [val_per_class] * n_classes
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert splits.mean == NORMALIZATION[name][0] and splits.std == NORMALIZATION[name][1]
    for part, source in ((splits.train, raw["train"]), (splits.val, raw["train"])):
        for i in (0, len(part) - 1):
            x, y = part[i]
            j = part.indices[i]
            assert x.shape == splits.input_shape and x.dtype == torch.float32
            assert y == int(source[1][j]) and 0 <= y < n_classes
            torch.testing.assert_close(x, expected(source[0][j], name), atol=1e-5, rtol=0)
    for i in (0, len(test_y) - 1):
        x, y = splits.test[i]
        assert y == int(test_y[i])
        torch.testing.assert_close(x, expected(test_x[i], name), atol=1e-5, rtol=0)
    xb, yb = next(iter(DataLoader(splits.train, batch_size=4)))
    assert xb.shape == (4, *splits.input_shape) and yb.dtype == torch.int64


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_mnist_formats(tmp_path: Path, name: str, folder: str) -> None:
    raw = write_mnist(tmp_path, folder)
    splits = load_torchvision(name, tmp_path, val_fraction=0.2, seed=0)  # 50 train -> 10 val
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10 and splits.name == name
    check_splits(splits, raw, name, val_per_class=1)
    # same seed -> same split; image_size resizes
    again = load_torchvision(name, str(tmp_path), val_fraction=0.2, seed=0, image_size=32)
    assert again.val.indices == splits.val.indices
    assert again.input_shape == (1, 32, 32) and again.train[0][0].shape == (1, 32, 32)


def test_cifar10(tmp_path: Path, skip_md5: None) -> None:
    raw = write_cifar(tmp_path)
    splits = load_torchvision("cifar10", tmp_path, val_fraction=0.25, seed=3)  # 40 -> 10 val
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    check_splits(splits, raw, "cifar10", val_per_class=1)


def test_cifar10_augment_train_only(tmp_path: Path, skip_md5: None) -> None:
    write_cifar(tmp_path)
    plain = load_torchvision("cifar10", tmp_path, val_fraction=0.25, seed=3)
    aug = load_torchvision("cifar10", tmp_path, val_fraction=0.25, seed=3, augment=True)
    torch.manual_seed(0)
    draws = torch.stack([aug.train[0][0] for _ in range(8)])
    assert draws.shape == (8, 3, 32, 32)
    assert len({d.numpy().tobytes() for d in draws}) > 1  # random, not a fixed transform
    # each draw is a 32x32 window of the zero-padded (40x40) image, possibly mirrored
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION["cifar10"])
    pixels = plain.train[0][0] * std + mean  # (3, 32, 32) in [0, 1]
    padded = torch.nn.functional.pad(pixels, (4, 4, 4, 4))
    windows = [
        w
        for dy in range(9)
        for dx in range(9)
        for w in (
            padded[:, dy : dy + 32, dx : dx + 32],
            padded[:, dy : dy + 32, dx : dx + 32].flip(-1),
        )
    ]
    for d in draws * std + mean:
        assert min(float((d - w).abs().max()) for w in windows) < 1e-5
    torch.testing.assert_close(aug.val[0][0], plain.val[0][0], atol=0, rtol=0)
    torch.testing.assert_close(aug.test[0][0], plain.test[0][0], atol=0, rtol=0)


def test_cifar100(tmp_path: Path, skip_md5: None) -> None:
    raw = write_cifar(tmp_path, hundred=True)
    splits = load_torchvision("cifar100", tmp_path, val_fraction=0.5, seed=0)  # 200 -> 100 val
    assert splits.num_classes == 100 and splits.input_shape == (3, 32, 32)
    check_splits(splits, raw, "cifar100", val_per_class=1)


def test_svhn_relabels_zero(tmp_path: Path, skip_md5: None) -> None:
    raw = write_svhn(tmp_path)
    splits = load_torchvision("svhn", tmp_path, val_fraction=0.25, seed=0)
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    check_splits(splits, raw, "svhn", val_per_class=1)
    all_labels = {splits.train[i][1] for i in range(len(splits.train))}
    assert all_labels == set(range(10))  # the stored 10 became 0


def test_imagefolder(tmp_path: Path) -> None:
    raw = write_imagefolder(tmp_path)
    splits = load_torchvision("imagefolder", tmp_path, val_fraction=0.25, seed=0)  # 12 -> 3 val
    assert splits.num_classes == 3 and splits.input_shape == (3, 8, 8)
    check_splits(splits, raw, "imagefolder", val_per_class=1)
    resized = load_torchvision("imagefolder", tmp_path, val_fraction=0.0, image_size=16)
    assert len(resized.val) == 0 and len(resized.train) == 12
    assert resized.input_shape == (3, 16, 16) and resized.test[0][0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- OOD helpers


def test_test_split_normalised_like_other(tmp_path: Path, skip_md5: None) -> None:
    raw_svhn = write_svhn(tmp_path)
    ood = load_torchvision_test("svhn", tmp_path, normalize_like="cifar10")
    assert len(ood) == 12
    x, y = ood[5]
    assert y == int(raw_svhn["test"][1][5])
    torch.testing.assert_close(x, expected(raw_svhn["test"][0][5], "cifar10"), atol=1e-5, rtol=0)
    # grey MNIST as OOD for a CIFAR model: 3 repeated channels, resized to 32x32
    write_mnist(tmp_path, "MNIST")
    grey = load_torchvision_test("mnist", tmp_path, image_size=32, normalize_like="cifar10")
    x, _ = grey[0]
    assert x.shape == (3, 32, 32)
    mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION["cifar10"])
    pixels = x * std + mean  # undo the normalisation: the three channels must be equal
    torch.testing.assert_close(pixels[0], pixels[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(pixels[0], pixels[2], atol=1e-5, rtol=0)
    # default: normalised with its own statistics
    own = load_torchvision_test("mnist", tmp_path)
    assert own[0][0].shape == (1, 28, 28)


def test_normalization_constants() -> None:
    assert NORMALIZATION["mnist"] == ((0.1307,), (0.3081,))  # PyTorch's MNIST example
    assert set(NORMALIZATION) == set(VISION_NAMES)
    for mean, std in NORMALIZATION.values():
        assert len(mean) == len(std) in (1, 3)
        assert all(0.1 < m < 0.6 for m in mean) and all(0.15 < s < 0.4 for s in std)


def test_ood_pair_default() -> None:
    assert ood_pair_default("cifar10") == "svhn"
    assert ood_pair_default("cifar100") == "svhn"
    assert ood_pair_default("svhn") == "cifar10"
    assert ood_pair_default("mnist") == "fashion_mnist"
    assert ood_pair_default("fashion_mnist") == "mnist"
    with pytest.raises(ValueError, match="name must be one of"):
        ood_pair_default("imagefolder")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "folder", "file"),
    [
        ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST/raw", "t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py", "data_batch_5"),
        ("cifar100", "cifar-100-python", "meta"),
        ("svhn", "", "test_32x32.mat"),
        ("imagefolder", "train", "<class>/*.png|jpg"),
    ],
)
def test_missing_files_one_line_message(tmp_path: Path, name: str, folder: str, file: str) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_torchvision(name, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "\n" not in message
    assert str(tmp_path / folder) in message and file in message
    assert "downloads are disabled" in message


def test_partly_missing_names_the_missing_file(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing: data_batch_3;"):
        load_torchvision("cifar10", tmp_path)
    # the test split alone is still available
    with pytest.raises(DataNotFoundError, match="md5"):  # without skip_md5: checksum mismatch
        load_torchvision_test("cifar10", tmp_path)


def test_checksum_mismatch_becomes_our_error(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    with pytest.raises(DataNotFoundError, match="failed torchvision's integrity"):
        load_torchvision("cifar10", tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="name must be one of") as info:
        load_torchvision("imagenet", tmp_path)  # type: ignore[arg-type]
    for accepted in VISION_NAMES:
        assert accepted in str(info.value)
    with pytest.raises(ValueError, match="val_fraction"):
        load_torchvision("mnist", tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="image_size"):
        load_torchvision("mnist", tmp_path, image_size=0)
    with pytest.raises(ValueError, match="augment"):
        load_torchvision("mnist", tmp_path, augment=True)
    with pytest.raises(ValueError, match="normalize_like"):
        load_torchvision_test("mnist", tmp_path, normalize_like="imagenet")
