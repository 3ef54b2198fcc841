"""Nested (slimmable) layers that run at any width by *slicing* their weights.

A nested layer keeps its full-size parameters and, at width ``r``, uses the leading
``active_groups(r) * group_size`` output channels and as many input channels as its input has
(``weight[:out_active, :in_active]``): the input width follows the previous layer's active width.
The active width is state set by :class:`~bnn_nested.nn.NestedModel` (``model.width(r)``), never read
from a global.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.config import DEFAULT_INIT_LOG_ALPHA
from bnn_nested.nn.bayes import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    check_weight_noise,
    check_weight_prior,
    gaussian_eb_kl,
    lrt_conv2d,
    lrt_linear,
    sampled_conv2d,
    sampled_linear,
    sparse_vd_kl,
)
from bnn_nested.nn.ordering_unit import active_groups, group_size

WeightKind = Literal["point", "gaussian"]
WEIGHT_KINDS: tuple[str, ...] = ("point", "gaussian")


class NestedMixin:
    """Width bookkeeping shared by nested layers.

    Attributes:
        order_groups, kept: output grouping for ordering (``ordered=False`` layers always output
            every channel); named ``order_groups`` so it never shadows ``nn.Conv2d.groups``.
        active_out_groups: groups used now (``None`` = all); set by ``NestedModel.set_width``.
    """

    order_groups: int
    kept: int
    ordered: bool
    active_out_groups: int | None
    #: Training estimator of Gaussian weights (class default, so every nested layer has one).
    weight_noise: str = "lrt"
    #: Prior of Gaussian weights (:data:`~bnn_nested.nn.bayes.WEIGHT_PRIORS`).
    weight_prior: str = "log_uniform"

    def _init_nested(self, out_channels: int, order_groups: int, kept: int, ordered: bool) -> None:
        self.group_size = group_size(out_channels, order_groups)
        if not 0 <= kept < order_groups and ordered:
            raise ValueError(f"kept must be in [0, order_groups) = [0, {order_groups}), got {kept}")
        self.order_groups = order_groups
        self.kept = kept
        self.ordered = ordered
        self.active_out_groups = None
        self.last_active: tuple[int, int] | None = None
        # Monte-Carlo prediction (eval, see NestedModel.stochastic): sample whole weight tensors,
        # ``mc_samples`` of them over sample-major blocks of the batch (None: one per forward)
        self.stochastic = False
        self.mc_samples: int | None = None

    def _init_weights_kind(
        self, weight_posterior: str, init_log_alpha: float, weight_noise: str = "lrt"
    ) -> None:
        """``weight_posterior="gaussian"`` adds ``log_alpha`` (same shape as ``weight``, which stays theta);
        ``weight_noise`` is its training estimator (:data:`~bnn_nested.nn.bayes.WEIGHT_NOISE`)."""
        if weight_posterior not in WEIGHT_KINDS:
            raise ValueError(
                f"weight_posterior must be one of {WEIGHT_KINDS}, got {weight_posterior!r}"
            )
        self.weight_posterior = weight_posterior
        self.weight_noise = check_weight_noise(weight_noise)
        if weight_posterior == "gaussian":
            if not LOG_ALPHA_MIN <= float(init_log_alpha) <= LOG_ALPHA_MAX:
                raise ValueError(
                    f"init_log_alpha must be in [{LOG_ALPHA_MIN}, {LOG_ALPHA_MAX}] (the range "
                    f"log_alpha is kept in), got {init_log_alpha!r}"
                )
            w = self.weight  # type: ignore[attr-defined]
            self.log_alpha = nn.Parameter(torch.full_like(w, float(init_log_alpha)))
        else:
            self.log_alpha = None

    @property
    def bayesian(self) -> bool:
        return getattr(self, "weight_posterior", "point") == "gaussian"

    def _sampling_weights(self) -> bool:
        return self.bayesian and (self.training or self.stochastic)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        nested = f"order_groups={self.order_groups}, kept={self.kept}, ordered={self.ordered}"
        if getattr(self, "weight_posterior", "point") != "point":
            nested += (
                f", weight_posterior={self.weight_posterior}, weight_noise={self.weight_noise}"
            )
        return f"{super().extra_repr()}, {nested}"  # type: ignore[misc]

    def set_width(self, width: float) -> None:
        """Use the leading ``F + ceil(width * K)`` groups (ordered layers only)."""
        self.active_out_groups = (
            active_groups(width, self.order_groups, self.kept) if self.ordered else None
        )

    def set_active_groups(self, n: int | None) -> None:
        """Use exactly ``n`` leading groups (per-layer allocation); ``None`` = all."""
        if n is not None and not 1 <= n <= self.order_groups:
            raise ValueError(f"active groups must be in [1, {self.order_groups}], got {n}")
        self.active_out_groups = n if self.ordered else None

    def out_active(self, full: int) -> int:
        if self.active_out_groups is None:
            return full
        return self.active_out_groups * self.group_size

    def weight_kl(self, channel_keep: torch.Tensor | None = None) -> torch.Tensor:
        """KL of the weight posterior, each output channel's KL weighted by its keep probability.

        ``sum_c P(c kept) * sum_{w in channel c} KL(q(w) || p(w))`` with the sparse-VD approximation
        (:func:`~bnn_nested.nn.bayes.sparse_vd_kl`, Molchanov et al. 2017, eq. 14) over the *full*
        weight tensor (docs/METHODS.md#gaussian-weights-and-the-weight-kl). 0 for point weights.

        Args:
            channel_keep: ``(out_channels,)`` keep probabilities (``None``: all ones).
        """
        w = self.weight  # type: ignore[attr-defined]
        if not self.bayesian:
            return w.new_zeros(())
        if channel_keep is not None and channel_keep.shape != (w.shape[0],):
            raise ValueError(
                f"channel_keep must have shape {(w.shape[0],)}, got {tuple(channel_keep.shape)}"
            )
        # the keep weights of the last KL (the variance update of log_alpha_update: newton reads them)
        self.kl_channel_keep = None if channel_keep is None else channel_keep.detach()
        if self.weight_prior == "gaussian":
            per_channel = gaussian_eb_kl(w, self.log_alpha, channel_keep)
        else:
            per_channel = sparse_vd_kl(self.log_alpha).flatten(1).sum(1)  # (out,)
        if channel_keep is None:
            return per_channel.sum()
        return (per_channel * channel_keep.to(per_channel)).sum()


class NestedLinear(NestedMixin, nn.Linear):
    """``nn.Linear`` that runs at any width by slicing ``weight[:out_active, :in_active]``.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        order_groups: output groups ``G`` for ordering (divides ``out_features``); ``kept``:
            always-kept groups.
        ordered: ``False`` for layers whose outputs are never truncated (e.g. the classifier).
        weight_posterior: ``"point"`` or ``"gaussian"`` (``q(w) = N(theta, alpha theta^2)``, initial
            ``log_alpha = init_log_alpha``); ``weight_noise``: the Gaussian weights' training
            estimator, ``"lrt"`` or ``"shared"`` (:mod:`bnn_nested.nn.bayes`; see also
            :func:`set_weight_noise`).

    Example:
        >>> layer = NestedLinear(64, 128, order_groups=16, kept=2)
        >>> layer.set_width(0.5)
        >>> layer(torch.randn(4, 64)).shape  # 8 channels x (2 + ceil(0.5 * 14) = 9 groups)
        torch.Size([4, 72])

    Reference: Cui et al., *Bayesian Nested Neural Networks*, CVPR 2021.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        order_groups: int = 1,
        kept: int = 0,
        ordered: bool = True,
        weight_posterior: WeightKind = "point",
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        weight_noise: str = "lrt",
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_nested(out_features, order_groups, kept, ordered)
        self._init_weights_kind(weight_posterior, init_log_alpha, weight_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[-1]
        if n_in > self.in_features:
            raise ValueError(f"input has {n_in} features, layer expects at most {self.in_features}")
        n_out = self.out_active(self.out_features)
        self.last_active = (n_out, n_in)
        w = self.weight[:n_out, :n_in]
        b = self.bias[:n_out] if self.bias is not None else None
        if self._sampling_weights():
            la = self.log_alpha[:n_out, :n_in]
            if not self.training:  # Monte-Carlo prediction: whole weight draws
                return sampled_linear(x, w, la, b, self.mc_samples or 1)
            if self.weight_noise == "shared":  # one weight draw for the whole batch
                return sampled_linear(x, w, la, b, 1)
            return lrt_linear(x, w, la, b)  # local reparameterisation
        return F.linear(x, w, b)


class NestedConv2d(NestedMixin, nn.Conv2d):
    """``nn.Conv2d`` that runs at any width by slicing ``weight[:out_active, :in_active]``.

    ``order_groups`` is the number of *channel groups for ordering*; ``groups`` is the
    convolution's own grouping, as in ``nn.Conv2d``, which must be 1 for an ordered (sliced) layer.
    ``weight_posterior``, ``init_log_alpha`` and ``weight_noise`` as in :class:`NestedLinear`.

    Example:
        >>> conv = NestedConv2d(3, 64, 3, padding=1, order_groups=16, kept=2)
        >>> conv.set_width(0.25)
        >>> conv(torch.randn(2, 3, 8, 8)).shape  # 4 channels x (2 + ceil(0.25 * 14) = 6 groups)
        torch.Size([2, 24, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        order_groups: int = 1,
        kept: int = 0,
        ordered: bool = True,
        weight_posterior: WeightKind = "point",
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        groups: int = 1,
        weight_noise: str = "lrt",
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups=groups,
            bias=bias,
        )
        if groups != 1 and ordered:
            raise ValueError(
                f"groups: a grouped convolution ({groups} groups) cannot be ordered by "
                "slicing; use ordered=False (nestify masks its channels instead)"
            )
        self._init_nested(out_channels, order_groups, kept, ordered)
        self._init_weights_kind(weight_posterior, init_log_alpha, weight_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in = x.shape[1]
        if n_in > self.in_channels:
            raise ValueError(f"input has {n_in} channels, layer expects at most {self.in_channels}")
        n_out = self.out_active(self.out_channels)
        self.last_active = (n_out, n_in)
        w = self.weight[:n_out, :n_in]
        b = self.bias[:n_out] if self.bias is not None else None
        if self._sampling_weights():
            la = self.log_alpha[:n_out, :n_in]
            conv = (self.stride, self.padding, self.dilation, self.groups)
            if not self.training:  # Monte-Carlo prediction: whole weight draws
                return sampled_conv2d(x, w, la, b, *conv, samples=self.mc_samples or 1)
            if self.weight_noise == "shared":  # one weight draw for the whole batch
                return sampled_conv2d(x, w, la, b, *conv, samples=1)
            return lrt_conv2d(x, w, la, b, *conv)  # local reparameterisation
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)


def set_weight_noise(model: nn.Module, weight_noise: str) -> nn.Module:
    """Give every nested layer of ``model`` the training estimator ``weight_noise`` (``"lrt"`` or
    ``"shared"``, :mod:`bnn_nested.nn.bayes`); point-weight layers keep it but never use it.

    Example::

        set_weight_noise(model, "shared")   # one weight draw per mini-batch and layer
    """
    check_weight_noise(weight_noise)
    for m in model.modules():
        if isinstance(m, NestedMixin):
            m.weight_noise = weight_noise
    return model


def set_weight_prior(model: nn.Module, weight_prior: str) -> nn.Module:
    """Give every nested layer of ``model`` the Gaussian-weight prior ``weight_prior``
    (``"log_uniform"`` or ``"gaussian"``, :mod:`bnn_nested.nn.bayes`); point weights have no KL.

    Example::

        set_weight_prior(model, "gaussian")   # N(0, s^2) per layer, s^2 by empirical Bayes
    """
    check_weight_prior(weight_prior)
    for m in model.modules():
        if isinstance(m, NestedMixin):
            m.weight_prior = weight_prior
    return model


def active_param_count(layer: nn.Module) -> int:
    """Parameters a nested layer used in its last forward pass (sliced weight and bias)."""
    if not isinstance(layer, NestedMixin) or layer.last_active is None:
        raise ValueError("active_param_count needs a nested layer that has run a forward pass")
    n_out, n_in = layer.last_active
    w = layer.weight  # type: ignore[attr-defined]
    per = w[0, 0].numel()
    bias = n_out if getattr(layer, "bias", None) is not None else 0
    return n_out * n_in * per + bias
