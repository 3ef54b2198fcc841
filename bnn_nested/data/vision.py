"""Image classification data sets from local torchvision files (downloads are always disabled).

``load_torchvision`` returns :class:`ImageDataSplits`: the official training split divided into
train / validation (stratified, fixed seed) and the official test split as the test set. Data stay
lazy: torchvision reads the files it always reads, and our splits are index views
(:class:`TransformSubset`) that apply the transform per example. Missing files raise
:class:`DataNotFoundError` with one line saying which files to put where.

Example::

    splits = load_torchvision("cifar10", "data/", val_fraction=0.1, seed=0)
    x, y = splits.train[0]  # x: (3, 32, 32) float32, normalised per channel; y: int
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.utils.data import Dataset

from bnn_nested.data.base import DataSplits

VisionName = Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder"]
VISION_NAMES: tuple[str, ...] = get_args(VisionName)

# Per-channel mean / std of the training images in [0, 1] pixel units.
#  - MNIST: the constants of PyTorch's official example (github.com/pytorch/examples, mnist/main.py).
#  - Fashion-MNIST, CIFAR-10, CIFAR-100, SVHN: population mean / std over every pixel of the
#    official training split (60k / 50k / 50k / 73,257 images), the values commonly quoted for these
#    data sets. (An often-copied CIFAR-10 std (0.2023, 0.1994, 0.2010) is the std of something else;
#    we use the per-pixel population std.)
#  - ImageFolder: no data-set constant exists; we use the ImageNet statistics of torchvision's
#    pretrained models (pytorch.org/vision/stable/models.html), the usual choice for natural images.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# (channels, native side length in pixels); ImageFolder's side depends on the files.
_NATIVE_SHAPE: dict[str, tuple[int, int | None]] = {
    "mnist": (1, 28),
    "fashion_mnist": (1, 28),
    "cifar10": (3, 32),
    "cifar100": (3, 32),
    "svhn": (3, 32),
    "imagefolder": (3, None),  # torchvision's default loader converts every image to RGB
}
_NUM_CLASSES: dict[str, int] = {
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
}
_OOD_PARTNER: dict[str, str] = {
    "cifar10": "svhn",
    "cifar100": "svhn",
    "svhn": "cifar10",
    "mnist": "fashion_mnist",
    "fashion_mnist": "mnist",
}
_AUGMENTABLE = ("cifar10", "cifar100", "svhn")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DataNotFoundError(FileNotFoundError):
    """A data set's files are missing (or rejected by torchvision) under the given root."""


@dataclass
class ImageDataSplits(DataSplits):
    """:class:`DataSplits` of images plus the normalisation that was applied.

    Attributes:
        mean, std: per-channel mean and std in [0, 1] pixel units; every split's ``x`` is
            ``(pixel / 255 - mean[c]) / std[c]``. One entry per channel (one for grey images).

    Example::

        splits = load_torchvision("mnist", "data/")
        splits.mean, splits.std  # ((0.1307,), (0.3081,))
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]


class TransformSubset(Dataset):
    """Lazy view ``base[indices[i]]`` with ``transform`` applied to the image.

    Lets train and validation share one torchvision dataset (loaded once) with different
    transforms, e.g. augmentation for train only.

    Args:
        base: map-style dataset yielding ``(image, label)`` (a PIL image when untransformed).
        indices: positions in ``base``; ``indices=None`` means all of it.
        transform: applied to the image; ``None`` leaves it unchanged.

    Example::

        val = TransformSubset(base, [3, 7], transforms.ToTensor())
        x, y = val[0]  # == ToTensor()(base[3][0]), base[3][1]
    """

    def __init__(
        self,
        base: Dataset,
        indices: Sequence[int] | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.base = base
        self.indices = list(range(len(base))) if indices is None else list(indices)  # type: ignore[arg-type]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.base[self.indices[i]]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(label)


def ood_pair_default(name: str) -> str:
    """The usual out-of-distribution partner of an in-distribution data set.

    cifar10 / cifar100 -> svhn (as in the BNNN paper's CIFAR-10 vs SVHN), svhn -> cifar10,
    mnist <-> fashion_mnist.

    Example:
        >>> ood_pair_default("cifar10")
        'svhn'
    """
    if name not in _OOD_PARTNER:
        raise ValueError(f"name must be one of {sorted(_OOD_PARTNER)} (got {name!r})")
    return _OOD_PARTNER[name]


def load_torchvision(
    name: VisionName,
    root: str | Path,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    augment: bool = False,
) -> ImageDataSplits:
    """Load a torchvision image data set from local files as train / val / test splits.

    The official training split is divided into train / val by a stratified, fixed-seed split
    (scikit-learn ``train_test_split``); the official test split is the test set. For
    ``"imagefolder"`` the layout is ``root/train/<class>/*.png|jpg`` and ``root/test/<class>/...``
    (same class folders in both). Expected files for the others (torchvision's layout):

    - mnist: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    - fashion_mnist: the same names under ``root/FashionMNIST/raw/``
    - cifar10: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
    - cifar100: ``root/cifar-100-python/{train, test, meta}``
    - svhn: ``root/{train_32x32.mat, test_32x32.mat}`` (needs scipy)

    Args:
        name: data set name.
        root: folder holding the files; nothing is ever downloaded.
        val_fraction: fraction of the official training split used for validation, in [0, 1).
        seed: seed of the train / val split.
        image_size: resize every image to ``image_size x image_size`` first; ``None`` keeps the
            native size (for ImageFolder all images must then share one size).
        augment: training-split augmentation: random 4-pixel-padded crop + horizontal flip for
            CIFAR, crop only for SVHN (mirrored digits are not digits). Only for cifar10,
            cifar100, svhn. Validation and test are never augmented.

    Returns:
        ImageDataSplits whose ``x`` are float32 tensors ``(C, H, W)``, ``ToTensor`` then
        ``Normalize(mean, std)`` with the constants in :data:`NORMALIZATION`, and ``y`` ints.

    Raises:
        ValueError: unknown ``name``, bad ``val_fraction`` / ``image_size``, or ``augment`` for
            a data set without a standard augmentation.
        DataNotFoundError: the files are missing (the message says which to put where) or
            torchvision rejects them (checksum mismatch).

    Example::

        splits = load_torchvision("svhn", "~/data", val_fraction=0.1, augment=True)
        splits.input_shape, splits.num_classes  # (3, 32, 32), 10
    """
    _check_name(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    _check_image_size(image_size)
    if augment and name not in _AUGMENTABLE:
        raise ValueError(f"augment=True is supported for {list(_AUGMENTABLE)} (got name={name!r})")
    root = Path(root).expanduser()
    _check_files(name, root)

    train_base = _open(name, root, train=True)
    test_base = _open(name, root, train=False)
    labels = _labels(name, train_base)
    if name == "imagefolder":
        classes = train_base.classes  # type: ignore[attr-defined]
        if test_base.classes != classes:  # type: ignore[attr-defined]
            raise ValueError(
                f"root: class folders differ between {root / 'train'} ({classes}) and "
                f"{root / 'test'} ({test_base.classes})"  # type: ignore[attr-defined]
            )
        num_classes = len(classes)
    else:
        num_classes = _NUM_CLASSES[name]
    train_idx, val_idx = _stratified_two_way(labels, val_fraction, seed)

    mean, std = NORMALIZATION[name]
    eval_tf = _transform(name, image_size, mean, std, augment=False, channels=len(mean))
    train_tf = _transform(name, image_size, mean, std, augment=augment, channels=len(mean))
    train = TransformSubset(train_base, train_idx, train_tf)
    val = TransformSubset(train_base, val_idx, eval_tf)
    test = TransformSubset(test_base, None, eval_tf)

    channels, side = _NATIVE_SHAPE[name]
    if image_size is not None:
        side = image_size
    if side is None:  # ImageFolder at native size: read one image to learn it
        side_hw = tuple(val[0][0].shape[1:]) if len(val) else tuple(test[0][0].shape[1:])
    else:
        side_hw = (side, side)
    return ImageDataSplits(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=(channels, *side_hw),
        name=name,
        mean=mean,
        std=std,
    )


def load_torchvision_test(
    name: VisionName,
    root: str | Path,
    image_size: int | None = None,
    normalize_like: str | None = None,
) -> Dataset:
    """Official test split of ``name``, normalised with another data set's statistics.

    For out-of-distribution evaluation the OOD images must go through the in-distribution
    model's preprocessing: ``normalize_like="cifar10"`` normalises with CIFAR-10's mean / std,
    and converts grey <-> RGB when the channel counts differ (grey -> RGB repeats the channel;
    RGB -> grey uses ITU-R 601-2 luma, PIL's ``convert("L")``).

    Args:
        name: data set whose test split is returned.
        root: folder holding its files (see :func:`load_torchvision`).
        image_size: resize to ``image_size x image_size`` (e.g. 32 for MNIST vs CIFAR).
        normalize_like: data set whose statistics and channel count to use; ``None`` = ``name``.

    Returns:
        Dataset yielding ``(x, y)``, ``x`` float32 ``(C, H, W)``, ``y`` the label in ``name``.

    Example::

        ood = load_torchvision_test("svhn", "data/", normalize_like="cifar10")
        x, _ = ood[0]  # (3, 32, 32), (pixel / 255 - cifar10_mean) / cifar10_std
    """
    _check_name(name)
    like = name if normalize_like is None else normalize_like
    if like not in NORMALIZATION:
        raise ValueError(f"normalize_like must be one of {list(VISION_NAMES)} (got {like!r})")
    _check_image_size(image_size)
    root = Path(root).expanduser()
    _check_files(name, root, splits=("test",))
    mean, std = NORMALIZATION[like]
    tf = _transform(name, image_size, mean, std, augment=False, channels=len(mean))
    return TransformSubset(_open(name, root, train=False), None, tf)


# ----------------------------------------------------------------------------- helpers


def _check_name(name: str) -> None:
    if name not in VISION_NAMES:
        raise ValueError(f"name must be one of {list(VISION_NAMES)} (got {name!r})")


def _check_image_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None (got {image_size!r})")


def _stratified_two_way(
    labels: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Stratified fixed-seed split of ``range(len(labels))`` into sorted (train, val) indices."""
    idx = list(range(len(labels)))
    if val_fraction == 0.0:
        return idx, []
    from sklearn.model_selection import (
        train_test_split,  # deferred: heavy (sklearn), only this path needs it
    )

    train, val = train_test_split(
        idx, test_size=val_fraction, stratify=list(labels), random_state=seed
    )
    return sorted(train), sorted(val)


def _transform(
    name: str,
    image_size: int | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool,
    channels: int,
) -> Callable[[Any], torch.Tensor]:
    from torchvision import (
        transforms as T,  # deferred: heavy (torchvision), only this path needs it
    )

    steps: list[Any] = []
    native_channels = _NATIVE_SHAPE[name][0]
    if channels != native_channels:
        steps.append(T.Grayscale(num_output_channels=channels))
    if image_size is not None:
        steps.append(T.Resize((image_size, image_size)))
    if augment:
        side = image_size or _NATIVE_SHAPE[name][1]
        steps.append(T.RandomCrop(side, padding=4))
        if name in ("cifar10", "cifar100"):
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _required_files(name: str, root: Path, splits: Sequence[str]) -> tuple[Path, list[str], str]:
    """(folder, file names expected there, where they come from) for the requested splits."""
    if name in ("mnist", "fashion_mnist"):
        folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
        prefixes = {"train": "train", "test": "t10k"}
        files = [
            f"{prefixes[s]}-{kind}"
            for s in splits
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ]
        source = "the gunzipped idx files of the official .gz downloads"
    elif name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = ["batches.meta"]
        if "train" in splits:
            files += [f"data_batch_{i}" for i in range(1, 6)]
        if "test" in splits:
            files += ["test_batch"]
        source = "the extracted 'cifar-10-batches-py/' folder of cifar-10-python.tar.gz"
    elif name == "cifar100":
        folder = root / "cifar-100-python"
        files = ["meta"] + [s for s in ("train", "test") if s in splits]
        source = "the extracted 'cifar-100-python/' folder of cifar-100-python.tar.gz"
    elif name == "svhn":
        folder = root
        files = [f"{s}_32x32.mat" for s in splits]
        source = "the cropped-digits .mat files of ufldl.stanford.edu/housenumbers"
    else:
        raise AssertionError(name)
    return folder, files, source


def _check_files(name: str, root: Path, splits: Sequence[str] = ("train", "test")) -> None:
    """Raise :class:`DataNotFoundError` (one line) unless ``name``'s files exist under ``root``."""
    if name == "imagefolder":
        missing = [s for s in splits if not _has_class_images(root / s)]
        if missing:
            raise DataNotFoundError(
                f"ImageFolder data not found under {root}: put images as "
                + " and ".join(f"{root / s}/<class>/*.png|jpg" for s in splits)
                + f" (missing or empty: {', '.join(missing)}; downloads are disabled)"
            )
        return
    folder, files, source = _required_files(name, root, splits)
    missing = [f for f in files if not (folder / f).is_file()]
    if name in ("mnist", "fashion_mnist") and missing:
        # torchvision also accepts its legacy processed/{training,test}.pt cache
        legacy = folder.parent / "processed"
        if (legacy / "training.pt").is_file() and (legacy / "test.pt").is_file():
            missing = []
    if missing:
        label = {
            "mnist": "MNIST",
            "fashion_mnist": "Fashion-MNIST",
            "cifar10": "CIFAR-10",
            "cifar100": "CIFAR-100",
            "svhn": "SVHN",
        }[name]
        raise DataNotFoundError(
            f"{label} not found under {root}: put {', '.join(files)} ({source}) in {folder} "
            f"(missing: {', '.join(missing)}; downloads are disabled)"
        )


def _has_class_images(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return any(
        f.suffix.lower() in _IMAGE_SUFFIXES
        for d in folder.iterdir()
        if d.is_dir()
        for f in d.iterdir()
    )


def _open(name: str, root: Path, train: bool) -> Dataset:
    """The torchvision dataset (no transform, ``download=False``) of one official split."""
    from torchvision import datasets  # deferred: heavy (torchvision), only this path needs it

    try:
        if name == "mnist":
            return datasets.MNIST(str(root), train=train, download=False)
        if name == "fashion_mnist":
            return datasets.FashionMNIST(str(root), train=train, download=False)
        if name == "cifar10":
            return datasets.CIFAR10(str(root), train=train, download=False)
        if name == "cifar100":
            return datasets.CIFAR100(str(root), train=train, download=False)
        if name == "svhn":
            return datasets.SVHN(str(root), split="train" if train else "test", download=False)
        return datasets.ImageFolder(str(root / ("train" if train else "test")))
    except RuntimeError as err:  # torchvision's "not found or corrupted" (md5 mismatch)
        raise DataNotFoundError(
            f"{name} files under {root} failed torchvision's integrity (md5) check: replace them "
            "with the original, unmodified files (downloads are disabled)"
        ) from err


def _labels(name: str, dataset: Dataset) -> list[int]:
    """Labels of a torchvision dataset without decoding any image."""
    raw = dataset.labels if name == "svhn" else dataset.targets  # type: ignore[attr-defined]
    if hasattr(raw, "tolist"):  # torch tensor (MNIST) or numpy array (SVHN)
        raw = raw.tolist()
    return [int(v) for v in raw]
