"""Tests for bnn_nested.data.ood: shapes, seeding, noise statistics, natural patches, splits."""

from __future__ import annotations

import math

import pytest
import torch

from bnn_nested.data import ood as D

SHAPES = [(64,), (1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "patches"])
@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_labels_and_seeding(kind, shape):
    ds = D.make_ood_dataset(kind, 12, shape, seed=3)
    x, y = ds.tensors
    assert x.shape == (12, *shape) and x.dtype == torch.float32
    assert y.shape == (12,) and y.dtype == torch.long and (y == 0).all()
    assert len(ds) == 12 and ds[0][0].shape == shape
    again = D.make_ood_dataset(kind, 12, shape, seed=3).tensors[0]
    other = D.make_ood_dataset(kind, 12, shape, seed=4).tensors[0]
    assert torch.equal(x, again)
    assert not torch.allclose(x, other)


def test_gaussian_noise_statistics():
    # n = 2000 x 64 = 128,000 values: standard error of the mean ~0.003, of the std ~0.002.
    x = D.gaussian_noise(2000, (64,), seed=0)
    assert abs(x.mean().item()) < 0.02
    assert abs(x.std().item() - 1.0) < 0.02
    assert abs(x.mean(0)).max() < 0.12  # per feature: 2000 draws, SE ~0.022, ~5 SE


def test_uniform_noise_statistics():
    x = D.uniform_noise(2000, (64,), seed=0)
    half = math.sqrt(3.0)
    assert x.min() >= -half and x.max() <= half
    assert x.min() < -0.99 * half and x.max() > 0.99 * half
    assert abs(x.mean().item()) < 0.02
    assert abs(x.std().item() - 1.0) < 0.02


def test_patches_range_and_not_constant():
    x = D.natural_patches(64, (1, 28, 28), seed=0)
    assert x.min() >= 0.0 and x.max() <= 1.0  # raw pixel range [0, 1] without mean / std
    per_patch_std = x.flatten(1).std(1)
    assert (per_patch_std > 0).all()
    assert per_patch_std.median() > 0.02  # natural texture, not flat colour
    assert x.flatten(1).mean(1).std() > 0.02  # patches differ from one another
    digits = D.natural_patches(64, (64,), seed=0, pixel_range=(0.0, 16.0))
    assert digits.min() >= 0.0 and digits.max() <= 16.0 and digits.max() > 8.0


def test_patches_flat_equals_flattened_image():
    flat = D.natural_patches(10, (64,), seed=5)
    image = D.natural_patches(10, (1, 8, 8), seed=5)
    assert torch.equal(flat, image.reshape(10, 64))


def test_patches_rgb_and_gray_are_the_same_crops():
    rgb = D.natural_patches(16, (3, 32, 32), seed=1)
    gray = D.natural_patches(16, (1, 32, 32), seed=1)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert not torch.allclose(rgb[:, 0], rgb[:, 1])
    # Same seed -> same crops; resizing is linear, so gray = BT.601 luma of the RGB patch.
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(gray, (rgb * luma).sum(1, keepdim=True), atol=1e-5)


def test_patches_standardisation():
    raw = D.natural_patches(20, (1, 8, 8), seed=2)
    std_x = D.natural_patches(20, (1, 8, 8), seed=2, mean=0.1307, std=0.3081)
    assert torch.allclose(std_x, (raw - 0.1307) / 0.3081, atol=1e-6)
    mean = torch.linspace(0.0, 1.0, 64)
    std = torch.linspace(0.5, 2.0, 64)
    flat_raw = D.natural_patches(20, (64,), seed=2)
    flat = D.natural_patches(20, (64,), seed=2, mean=mean, std=std)
    assert torch.allclose(flat, (flat_raw - mean) / std, atol=1e-6)
    rgb_mean = torch.tensor([0.49, 0.48, 0.45]).view(3, 1, 1)
    rgb = D.make_ood_dataset("patches", 5, (3, 4, 4), seed=0, mean=rgb_mean, std=0.25).tensors[0]
    rgb_raw = D.natural_patches(5, (3, 4, 4), seed=0)
    assert torch.allclose(rgb, (rgb_raw - rgb_mean) / 0.25, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_shape=(65,)), "perfect square"),
        (dict(input_shape=(2, 8, 8)), "input_shape"),
        (dict(input_shape=(64,), mean=torch.zeros(63)), "mean"),
        (dict(input_shape=(64,), std=torch.zeros(64)), "std"),
        (dict(input_shape=(64,), pixel_range=(1.0, 0.0)), "pixel_range"),
        (dict(input_shape=(64,), n=0), "n must"),
    ],
)
def test_patches_bad_arguments(kwargs, match):
    args = dict(n=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        D.natural_patches(**args)


def test_unknown_kind_names_accepted_values():
    with pytest.raises(ValueError, match="gaussian.*uniform.*patches"):
        D.make_ood_dataset("svhn", 4, (64,), seed=0)  # type: ignore[arg-type]


def test_held_out_class_split():
    labels = torch.tensor([0, 1, 2, 1, 3, 0])
    in_mask, out_mask = D.held_out_class_split(labels, [1, 3])
    assert out_mask.tolist() == [False, True, False, True, True, False]
    assert torch.equal(in_mask, ~out_mask)
    with pytest.raises(ValueError, match=r"\[7\]"):
        D.held_out_class_split(labels, [1, 7])
    with pytest.raises(ValueError, match="at least one"):
        D.held_out_class_split(labels, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="non-empty"):
        D.held_out_class_split(labels, [])
