"""Batch normalisation with statistics re-estimated *per width* (:func:`recalibrate_bn`).

A sub-network at width ``r`` sees different feature statistics than the full network, so the running
statistics learnt in training are wrong for it (Yu et al., *Slimmable Neural Networks*, 2019, and
*Universally Slimmable Networks*, 2019: "BN calibration"; docs/METHODS.md#bn-re-estimation: the
reference re-estimates them for each width on training data). A nested model masks the inputs of
the layers consuming a dimension, so a norm layer always sees its whole dimension; what changes with
the width is what flows into it from upstream. Calibrated statistics are stored per (channel count
``c``, *width key*) of each norm layer (:func:`width_key`), i.e. one row per calibrated width.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nn.utils import call_model, module_device, move_inputs


class UncalibratedWidthWarning(UserWarning):
    """Evaluating a width whose batch-norm statistics were never calibrated (see ``recalibrate_bn``)."""


def width_key(width) -> float:
    """A float naming a model width: ``r`` itself for a global width ``r in (0, 1]``, and a negative
    CRC-32 of the sorted items for a per-layer ``{layer: groups}`` width (stable across processes)."""
    if isinstance(width, Mapping):
        return -1.0 - float(zlib.crc32(repr(sorted(width.items())).encode()))
    return float(width)


class _NestedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm that, in eval, uses the statistics calibrated for the model's current width.

    Buffers ``calib_channels (n,)``, ``calib_width (n,)``, ``calib_mean (n, C)``, ``calib_var (n, C)``
    hold the statistics written by :func:`recalibrate_bn`: row ``i`` is for inputs with
    ``calib_channels[i]`` channels under the model width whose key is ``calib_width[i]`` (see
    :func:`width_key`; the key matters for layers whose own channel count does not change with the
    width while their input does). They are part of the ``state_dict``. In eval mode a width with a
    calibrated row uses it; otherwise the running statistics, with a warning (once per width) when
    calibration exists for other widths.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.num_features
        self.register_buffer("calib_channels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("calib_width", torch.zeros(0, dtype=torch.float64))
        self.register_buffer("calib_mean", torch.zeros(0, c))
        self.register_buffer("calib_var", torch.zeros(0, c))
        self._warned: set[tuple[int, float]] = set()
        self.width_key = 1.0  # set by NestedModel.set_width
        self._acc: dict[str, torch.Tensor] | None = None  # accumulators while calibrating

    # -- calibrated statistics -----------------------------------------------------------------
    def calibrated_channels(self) -> list[int]:
        return [int(c) for c in self.calib_channels]

    def _calib_row(self, c: int) -> int | None:
        hits = ((self.calib_channels == c) & (self.calib_width == self.width_key)).nonzero()
        return int(hits[0, 0]) if len(hits) else None

    def clear_calibration(self) -> None:
        """Forget every calibrated width."""
        self.calib_channels = self.calib_channels.new_zeros(0)
        self.calib_width = self.calib_width.new_zeros(0)
        self.calib_mean = self.calib_mean.new_zeros(0, self.num_features)
        self.calib_var = self.calib_var.new_zeros(0, self.num_features)
        self._warned.clear()

    def start_calibration(self) -> None:
        """Accumulate exact feature sums on the next forward passes (see :func:`recalibrate_bn`)."""
        self._acc = {}

    def finish_calibration(self) -> int | None:
        """Store ``mean`` and unbiased ``var`` of everything seen since :meth:`start_calibration`.

        Returns the channel count calibrated (``None`` if no input was seen).
        """
        acc, self._acc = self._acc, None
        if not acc:
            return None
        n, s1, s2 = acc["n"], acc["s1"], acc["s2"]
        c = s1.shape[0]
        mean = s1 / n
        var = (s2 - n * mean * mean) / max(float(n) - 1.0, 1.0)  # unbiased, as BN's running_var
        full_mean = self.running_mean.new_zeros(self.num_features)
        full_var = self.running_var.new_ones(self.num_features)
        full_mean[:c] = mean.to(full_mean)
        full_var[:c] = var.clamp_min(0).to(full_var)
        row = self._calib_row(c)
        if row is None:
            self.calib_channels = torch.cat(
                [self.calib_channels, self.calib_channels.new_tensor([c])]
            )
            self.calib_width = torch.cat(
                [self.calib_width, self.calib_width.new_tensor([self.width_key])]
            )
            self.calib_mean = torch.cat([self.calib_mean, full_mean[None]])
            self.calib_var = torch.cat([self.calib_var, full_var[None]])
        else:
            self.calib_mean[row] = full_mean
            self.calib_var[row] = full_var
        self._warned.discard((c, self.width_key))
        return c

    def _accumulate(self, x: torch.Tensor) -> None:
        assert self._acc is not None
        dims = [0] + list(range(2, x.dim()))
        xd = x.detach().double()
        n = x.numel() // x.shape[1]
        s1, s2 = xd.sum(dims), (xd * xd).sum(dims)
        if "s1" in self._acc and self._acc["s1"].shape != s1.shape:
            raise ValueError("calibration: the input width changed between calibration batches")
        if "s1" in self._acc:
            s1, s2, n = s1 + self._acc["s1"], s2 + self._acc["s2"], n + self._acc["n"]
        self._acc.update(s1=s1, s2=s2, n=n)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
    ):  # noqa: D401 - torch hook signature
        key = prefix + "calib_channels"
        present = key in state_dict
        if present:  # resize the per-width buffers to the stored number of widths
            n = state_dict[key].shape[0]
            self.calib_channels = self.calib_channels.new_zeros(n)
            self.calib_width = self.calib_width.new_zeros(n)
            self.calib_mean = self.calib_mean.new_zeros(n, self.num_features)
            self.calib_var = self.calib_var.new_zeros(n, self.num_features)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing, unexpected, errors
        )
        if not present:  # checkpoints written before per-width statistics existed
            for name in ("calib_channels", "calib_width", "calib_mean", "calib_var"):
                if prefix + name in missing:
                    missing.remove(prefix + name)
            self.clear_calibration()
        self._warned.clear()

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self._acc is not None:  # calibrating: batch statistics, running buffers untouched
            self._accumulate(x)
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        if not self.training and self.running_mean is not None:
            c = x.shape[1]
            row = self._calib_row(c)
            if row is not None:
                mean, var = self.calib_mean[row], self.calib_var[row]
                return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
            seen = (c, self.width_key)
            if len(self.calib_channels) and seen not in self._warned:
                self._warned.add(seen)
                warnings.warn(
                    f"batch norm: no statistics calibrated for width key {self.width_key:g} (this "
                    "width was not passed to recalibrate_bn); using running statistics",
                    UncalibratedWidthWarning,
                    stacklevel=2,
                )
        return super().forward(x)


class NestedBatchNorm1d(_NestedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics per width. Example: ``bn = NestedBatchNorm1d(128)``."""


class NestedBatchNorm2d(_NestedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with statistics per width. Example: ``bn = NestedBatchNorm2d(64)``."""


def nested_norms(model: nn.Module) -> list[_NestedBatchNorm]:
    return [m for m in model.modules() if isinstance(m, _NestedBatchNorm)]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable,
    widths: Sequence[float],
    num_batches: int | None = None,
    device: str | torch.device | None = None,
    stochastic: bool = False,
) -> dict[float, int]:
    """Re-estimate batch-norm statistics at each width and store them per width.

    For each width ``r`` the model runs ``num_batches`` batches of ``loader`` (``None``: all, i.e.
    one epoch as in the reference) in eval mode except for its nested norm layers, which normalise
    with batch statistics (as in training) and accumulate exact per-channel sums; the stored statistics
    are the cumulative mean and unbiased variance over all those batches (equivalent to BN's
    ``momentum=None`` cumulative average, without its per-batch variance bias). Ordering masks are
    off; weight noise and dropout are off (the mean network, as the deterministic prediction and
    export run) unless ``stochastic``: then each batch runs a network drawn from the posterior (as
    Monte-Carlo prediction runs), so the statistics include the weight noise. Other widths'
    statistics are left untouched.

    Args:
        model: a :class:`~bnn_nested.nn.NestedModel` (anything with ``model.width(r)``).
        loader: yields ``(x, y)`` or ``x`` batches.
        widths: widths ``r in (0, 1]`` or per-layer ``{layer: groups}`` dicts (statistics are kept
            per active channel count of each norm layer, so either kind is looked up later).
        num_batches: batches per width (``None``: the whole loader).

    Returns:
        ``{width: number of batches used}`` (a per-layer width is keyed by its sorted items).

    Example::

        recalibrate_bn(model, train_loader, widths=[0.25, 0.5, 1.0], num_batches=50)
        probs = predict(model, x, width=0.25)      # uses the width-0.25 statistics
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    if not widths:
        raise ValueError("widths must name at least one width in (0, 1]")
    norms = nested_norms(model)
    was_training = model.training
    if device is None:
        device = module_device(model)
    used: dict[float, int] = {}
    model.eval()
    try:
        for r in widths:
            for bn in norms:
                bn.train()
                bn.start_calibration()
            n = 0
            noise = model.stochastic(True) if stochastic else contextlib.nullcontext()  # type: ignore
            with model.width(r), noise:  # type: ignore[attr-defined]
                for batch in loader:
                    if num_batches is not None and n >= num_batches:
                        break
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    call_model(model, move_inputs(x, device))
                    n += 1
                if n == 0:
                    raise ValueError("loader: yielded no batch to calibrate with")
                for bn in norms:  # inside the width block: rows are keyed by this width
                    bn.eval()
                    bn.finish_calibration()
            used[tuple(sorted(r.items())) if isinstance(r, Mapping) else float(r)] = n  # type: ignore[index]
    finally:
        for bn in norms:
            bn._acc = None
        model.train(was_training)
    return used
