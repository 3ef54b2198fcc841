"""Linear and convolution layers with point or Gaussian weights, as :func:`~bnn_nested.nest.nestify`
puts them in a network (``weight_posterior="gaussian"``).

A nested model runs a width by masking the inputs of the layers that consume each ordered dimension
(:mod:`bnn_nested.nest.model`), so these layers always use their whole weight; what they add to
``nn.Linear`` / ``nn.Conv2d`` is the weight posterior ``q(w) = N(theta, alpha theta^2)``: its
training estimator, Monte-Carlo weight draws and its KL (:mod:`bnn_nested.nn.bayes`).
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

WeightKind = Literal["point", "gaussian"]
WEIGHT_KINDS: tuple[str, ...] = ("point", "gaussian")


class NestedMixin:
    """Gaussian-weight bookkeeping shared by :class:`NestedLinear` and :class:`NestedConv2d`."""

    #: Training estimator of Gaussian weights (class default, so every nested layer has one).
    weight_noise: str = "lrt"
    #: Prior of Gaussian weights (:data:`~bnn_nested.nn.bayes.WEIGHT_PRIORS`).
    weight_prior: str = "log_uniform"

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
        # Monte-Carlo prediction (eval, see NestedModel.stochastic): sample whole weight tensors,
        # ``mc_samples`` of them over sample-major blocks of the batch (None: one per forward)
        self.stochastic = False
        self.mc_samples: int | None = None
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
        if getattr(self, "weight_posterior", "point") == "point":
            return super().extra_repr()  # type: ignore[misc]
        nested = f"weight_posterior={self.weight_posterior}, weight_noise={self.weight_noise}"
        return f"{super().extra_repr()}, {nested}"  # type: ignore[misc]

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
    """``nn.Linear`` with point or Gaussian weights.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        weight_posterior: ``"point"`` or ``"gaussian"`` (``q(w) = N(theta, alpha theta^2)``, initial
            ``log_alpha = init_log_alpha``); ``weight_noise``: the Gaussian weights' training
            estimator, ``"lrt"`` or ``"shared"`` (:mod:`bnn_nested.nn.bayes`; see also
            :func:`set_weight_noise`).

    Example:
        >>> layer = NestedLinear(64, 128, weight_posterior="gaussian").eval()
        >>> layer(torch.randn(4, 64)).shape  # eval: the mean weights
        torch.Size([4, 128])

    Reference: Cui et al., *Bayesian Nested Neural Networks*, CVPR 2021.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_posterior: WeightKind = "point",
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        weight_noise: str = "lrt",
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_weights_kind(weight_posterior, init_log_alpha, weight_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sampling_weights():
            w, la, b = self.weight, self.log_alpha, self.bias
            if not self.training:  # Monte-Carlo prediction: whole weight draws
                return sampled_linear(x, w, la, b, self.mc_samples or 1)
            if self.weight_noise == "shared":  # one weight draw for the whole batch
                return sampled_linear(x, w, la, b, 1)
            return lrt_linear(x, w, la, b)  # local reparameterisation
        return F.linear(x, self.weight, self.bias)


class NestedConv2d(NestedMixin, nn.Conv2d):
    """``nn.Conv2d`` with point or Gaussian weights (``weight_posterior``, ``init_log_alpha`` and
    ``weight_noise`` as in :class:`NestedLinear`).

    Example:
        >>> conv = NestedConv2d(3, 64, 3, padding=1, weight_posterior="gaussian").eval()
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 64, 8, 8])
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
        self._init_weights_kind(weight_posterior, init_log_alpha, weight_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._sampling_weights():
            w, la, b = self.weight, self.log_alpha, self.bias
            conv = (self.stride, self.padding, self.dilation, self.groups)
            if not self.training:  # Monte-Carlo prediction: whole weight draws
                return sampled_conv2d(x, w, la, b, *conv, samples=self.mc_samples or 1)
            if self.weight_noise == "shared":  # one weight draw for the whole batch
                return sampled_conv2d(x, w, la, b, *conv, samples=1)
            return lrt_conv2d(x, w, la, b, *conv)  # local reparameterisation
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


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
