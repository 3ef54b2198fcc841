"""Synthetic and natural-image out-of-distribution (OOD) inputs shaped like a data set's inputs.

All generators return float32 tensors of shape ``(n, *input_shape)`` living in the same
*standardised* input space as the in-distribution data (the models see standardised inputs):

* ``gaussian``: i.i.d. ``N(0, 1)`` per feature (mean 0, std 1, i.e. the standardised scale);
* ``uniform``: i.i.d. ``U[-sqrt(3), sqrt(3)]`` per feature (also mean 0, variance 1);
* ``patches``: random crops of scikit-learn's two bundled sample photos
  (``sklearn.datasets.load_sample_images``; shipped with scikit-learn, no download), grayscale
  (or RGB for 3-channel shapes), resized with anti-aliasing to the spatial size, scaled to the
  data set's pixel range (``[0, 1]`` by default) and standardised with the data set's
  ``mean``/``std`` — natural-image structure that is not a digit/object of the training classes.

Supported ``input_shape``: ``(D,)`` with ``D`` a perfect square (flat ``sqrt(D) x sqrt(D)``
images, e.g. ``(64,)`` for 8x8 digits), ``(H, W)``, ``(1, H, W)`` and ``(3, H, W)``. Noise kinds
accept any shape.

Example:
    >>> ds = make_ood_dataset("patches", 500, (1, 28, 28), seed=0, mean=0.1307, std=0.3081)
    >>> x, y = ds[0]   # x (1, 28, 28), y == 0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = [
    "OODKind",
    "CROP_MIN",
    "CROP_MAX",
    "gaussian_noise",
    "uniform_noise",
    "natural_patches",
    "held_out_class_split",
    "make_ood_dataset",
]

OODKind = Literal["gaussian", "uniform", "patches"]

#: Side length range (pixels, in the 427 x 640 sample photos) of the square-ish crops taken before
#: resizing: small enough that patches differ from whole-photo thumbnails, large enough that an
#: 8x8 or 28x28 result still shows edges and texture rather than one flat colour.
CROP_MIN: int = 32
CROP_MAX: int = 160

#: ITU-R BT.601 luma weights for RGB -> grayscale.
_LUMA = (0.299, 0.587, 0.114)

_Scalar = float | int | Sequence[float] | Tensor


def _check_common(n: int, input_shape: Sequence[int], seed: int) -> tuple[int, ...]:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int; got {seed!r}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints; got {shape!r}")
    return shape


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_noise(n: int, input_shape: Sequence[int], seed: int) -> Tensor:
    """I.i.d. standard normal inputs ``N(0, 1)`` in the standardised input space.

    Args:
        n: number of inputs; input_shape: shape of one input; seed: RNG seed.

    Returns:
        ``(n, *input_shape)`` float32 tensor with mean 0 and std 1 per feature.

    Example:
        >>> gaussian_noise(100, (1, 28, 28), seed=0).shape
        torch.Size([100, 1, 28, 28])
    """
    shape = _check_common(n, input_shape, seed)
    return torch.randn((n, *shape), generator=_generator(seed))


def uniform_noise(n: int, input_shape: Sequence[int], seed: int) -> Tensor:
    """I.i.d. ``U[-sqrt(3), sqrt(3)]`` inputs (mean 0, variance 1) in the standardised space.

    Args:
        n: number of inputs; input_shape: shape of one input; seed: RNG seed.

    Returns:
        ``(n, *input_shape)`` float32 tensor.

    Example:
        >>> uniform_noise(100, (64,), seed=0).abs().max() <= 3 ** 0.5
        tensor(True)
    """
    shape = _check_common(n, input_shape, seed)
    half_width = math.sqrt(3.0)
    return (torch.rand((n, *shape), generator=_generator(seed)) * 2.0 - 1.0) * half_width


@lru_cache(maxsize=1)
def _sample_photos() -> Tensor:
    """scikit-learn's bundled photos as a ``(2, 3, 427, 640)`` float32 tensor in ``[0, 1]``."""
    from sklearn.datasets import (
        load_sample_images,  # deferred: heavy (sklearn), only this path needs it
    )

    images = load_sample_images().images
    sizes = {img.shape for img in images}
    if len(sizes) != 1:
        raise ValueError(f"sklearn sample images differ in shape: {sorted(sizes)}")
    stacked = torch.stack([torch.tensor(img).permute(2, 0, 1) for img in images])
    return stacked.float() / 255.0


def _layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, H, W)`` of the image behind ``input_shape``."""
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side * side != shape[0]:
            raise ValueError(
                f"input_shape (D,) for patches needs D to be a perfect square; got D={shape[0]}"
            )
        return 1, side, side
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[0], shape[1], shape[2]
    raise ValueError(
        f"input_shape for patches must be (D,), (H, W), (1, H, W) or (3, H, W); got {shape}"
    )


def _as_stat(value: _Scalar | None, default: float, shape: tuple[int, ...], name: str) -> Tensor:
    stat = torch.as_tensor(default if value is None else value, dtype=torch.float32)
    try:
        torch.broadcast_shapes(stat.shape, shape)
    except RuntimeError as err:
        raise ValueError(
            f"{name} must be broadcastable to input_shape {shape}; got shape {tuple(stat.shape)}"
        ) from err
    if torch.broadcast_shapes(stat.shape, shape) != shape:
        raise ValueError(f"{name} must broadcast to input_shape {shape}, not enlarge it")
    return stat


def natural_patches(
    n: int,
    input_shape: Sequence[int],
    seed: int,
    mean: _Scalar | None = None,
    std: _Scalar | None = None,
    pixel_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Random natural-image crops resized to ``input_shape`` and standardised like the data set.

    Each patch: pick one of the two scikit-learn sample photos, a crop height uniform in
    ``[CROP_MIN, CROP_MAX]`` pixels (width scaled to the target aspect ratio) at a uniform
    position, convert to grayscale (BT.601 luma) unless 3 channels are wanted, resize with
    bilinear anti-aliased ``F.interpolate`` to ``(H, W)``, map ``[0, 1]`` linearly to
    ``pixel_range``, flatten for ``(D,)`` shapes, then standardise ``(x - mean) / std``.

    Args:
        n: number of patches.
        input_shape: ``(D,)`` (``D`` a perfect square), ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``.
        seed: RNG seed (same seed, same patches).
        mean: data set mean, a scalar or tensor broadcastable to ``input_shape``; default 0.
        std: data set std, broadcastable to ``input_shape``, all ``> 0``; default 1.
        pixel_range: ``(lo, hi)`` raw pixel range of the data set (``(0, 16)`` for sklearn digits).

    Returns:
        ``(n, *input_shape)`` float32 tensor. With ``mean=None, std=None`` values lie in
        ``pixel_range``.

    Raises:
        ValueError: unsupported ``input_shape``, bad ``mean``/``std``/``pixel_range``.

    Example::

        x = natural_patches(256, (64,), seed=0, pixel_range=(0.0, 16.0), mean=m, std=s)
        x.shape
        torch.Size([256, 64])
    """
    shape = _check_common(n, input_shape, seed)
    channels, height, width = _layout(shape)
    lo, hi = (float(v) for v in pixel_range)
    if not hi > lo:
        raise ValueError(f"pixel_range must be (lo, hi) with hi > lo; got {pixel_range!r}")
    mean_t = _as_stat(mean, 0.0, shape, "mean")
    std_t = _as_stat(std, 1.0, shape, "std")
    if not (std_t > 0).all():
        raise ValueError("std must be > 0 everywhere")

    photos = _sample_photos()
    n_photos, _, img_h, img_w = photos.shape
    gen = _generator(seed)
    aspect = width / height
    crop_max = min(CROP_MAX, img_h, int(img_w / aspect))
    crop_min = min(CROP_MIN, crop_max)
    luma = torch.tensor(_LUMA).view(3, 1, 1)
    out = torch.empty((n, channels, height, width))
    for i in range(n):
        k = int(torch.randint(n_photos, (1,), generator=gen))
        ch = int(torch.randint(crop_min, crop_max + 1, (1,), generator=gen))
        cw = max(1, min(img_w, round(ch * aspect)))
        top = int(torch.randint(img_h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(img_w - cw + 1, (1,), generator=gen))
        crop = photos[k, :, top : top + ch, left : left + cw]
        if channels == 1:
            crop = (crop * luma).sum(0, keepdim=True)
        resized = F.interpolate(
            crop[None], size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
        out[i] = resized[0]
    x = lo + (hi - lo) * out.clamp(0.0, 1.0)
    x = x.reshape(n, *shape)
    return ((x - mean_t) / std_t).float()


def held_out_class_split(labels: Tensor, held_out: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Boolean masks splitting examples into kept classes (in) and held-out classes (OOD).

    Args:
        labels: ``(N,)`` integer class labels.
        held_out: classes treated as OOD; each must occur in ``labels``, and at least one class
            must remain in-distribution.

    Returns:
        ``(in_mask, out_mask)``, two ``(N,)`` bool tensors with ``in_mask == ~out_mask``.

    Example:
        >>> in_mask, out_mask = held_out_class_split(torch.tensor([0, 1, 2, 1]), [1])
        >>> out_mask
        tensor([False,  True, False,  True])
    """
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point():
        raise ValueError("labels must be a 1-D integer tensor of shape (N,)")
    classes = list(held_out)
    if not classes or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        raise ValueError(f"held_out must be a non-empty list of int class labels; got {held_out!r}")
    present = set(labels.unique().tolist())
    missing = sorted(set(classes) - present)
    if missing:
        raise ValueError(f"held_out classes {missing} do not occur in labels {sorted(present)}")
    out_mask = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype, device=labels.device))
    if out_mask.all():
        raise ValueError("held_out must leave at least one in-distribution class")
    return ~out_mask, out_mask


def make_ood_dataset(
    kind: OODKind,
    n: int,
    input_shape: Sequence[int],
    seed: int,
    mean: _Scalar | None = None,
    std: _Scalar | None = None,
    pixel_range: tuple[float, float] = (0.0, 1.0),
) -> TensorDataset:
    """A ``TensorDataset`` of ``n`` OOD inputs of ``kind`` with all-zero (dummy) labels.

    Args:
        kind: ``"gaussian"``, ``"uniform"`` or ``"patches"`` (see module docstring).
        n: number of inputs; input_shape: shape of one input; seed: RNG seed.
        mean, std, pixel_range: the in-distribution data set's standardisation and raw pixel
            range; used by ``"patches"`` only (noise is generated directly in standardised space).

    Returns:
        ``TensorDataset(x (n, *input_shape) float32, y (n,) long zeros)``.

    Raises:
        ValueError: unknown ``kind`` (message lists the accepted values) or bad arguments.

    Example:
        >>> ds = make_ood_dataset("gaussian", 1000, (64,), seed=0)
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=256)
    """
    kinds = get_args(OODKind)
    if kind not in kinds:
        raise ValueError(f"kind must be one of {list(kinds)}; got {kind!r}")
    if kind == "gaussian":
        x = gaussian_noise(n, input_shape, seed)
    elif kind == "uniform":
        x = uniform_noise(n, input_shape, seed)
    else:
        x = natural_patches(n, input_shape, seed, mean=mean, std=std, pixel_range=pixel_range)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))
