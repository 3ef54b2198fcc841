"""Multiplicative Gaussian weight noise: local reparameterisation and the sparse-VD KL.

A Gaussian weight posterior ``q(w_ij) = N(theta_ij, alpha_ij * theta_ij^2)`` (variational dropout,
Kingma, Salimans & Welling, NeurIPS 2015) is sampled with the *local reparameterisation trick*
(LRT, same paper, §2.3): instead of a weight sample, the pre-activation of a linear map is Gaussian,
``b ~ N(x theta^T, x^2 (alpha theta^2)^T)``, and is sampled directly (one draw per output element,
independent across examples). The KL to the log-uniform prior uses the approximation of Molchanov,
Ashukha & Vetrov, *Variational Dropout Sparsifies Deep Neural Networks*, ICML 2017, eq. 14:

``-KL(q || p) ~= k1 * sigmoid(k2 + k3 * log_alpha) - 0.5 * log1p(exp(-log_alpha)) - k1``.

Training uses one of two estimators of the expected log-likelihood's gradient (``weight_noise``):

- ``"lrt"`` (default): the LRT above, noise independent across examples and output elements; two
  convolutions / matrix products per layer (mean and variance), the lower-variance gradient.
- ``"shared"``: one weight tensor ``w ~ q(w)`` per mini-batch, shared by every example and location
  (:func:`sampled_linear` / :func:`sampled_conv2d` with one sample; the plain reparameterisation of
  Kingma & Welling 2014 applied to the weights, as in Blundell et al., *Weight Uncertainty in Neural
  Networks*, ICML 2015). The same unbiased objective, one convolution per layer (the cost of a
  point-weight layer plus the weight draw); its gradient has more variance, because the examples of
  a batch share one noise draw (Kingma et al. 2015, §2.3).

Monte-Carlo *prediction* must
draw networks from ``q(W)``: per-element noise is not such a draw (a globally pooled output gets the
wrong variance; two equal inputs disagree). :func:`sampled_linear` and :func:`sampled_conv2d` draw
one weight tensor per Monte-Carlo sample, shared by the sample's inputs and locations, and run one
matrix product / convolution per sample instead of the LRT's two.

Example::

    out = lrt_linear(x, theta, log_alpha, bias)          # (B, out)
    kl = sparse_vd_kl(log_alpha).sum()
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Constants of the sparse-VD KL approximation (Molchanov et al. 2017, eq. 14).
MOLCHANOV_K1 = 0.63576
MOLCHANOV_K2 = 1.87320
MOLCHANOV_K3 = 1.48695
#: ``log_alpha`` is clipped to this range in the forward pass and the KL (numerical safety; the
#: approximation is fitted on roughly [-8, 8] in Molchanov et al. 2017).
LOG_ALPHA_MIN = -12.0
LOG_ALPHA_MAX = 8.0
#: Added to the LRT variance before the square root (keeps the gradient finite at zero variance).
VAR_EPS = 1e-16
#: Training estimators of Gaussian-weight layers (module docstring): ``"lrt"`` samples each
#: pre-activation (two convolutions), ``"shared"`` one weight tensor per forward pass (one).
WEIGHT_NOISE: tuple[str, ...] = ("lrt", "shared")
#: Weight priors: ``"log_uniform"`` (improper, sparse VD's; its KL's constant is a convention, and
#: Hron, Matthews & Ghahramani 2018 show the objective is then ill-posed) or ``"gaussian"`` (a
#: proper ``N(0, s^2)`` per layer with the empirical-Bayes variance, :func:`gaussian_eb_kl`).
WEIGHT_PRIORS: tuple[str, ...] = ("log_uniform", "gaussian")


def check_weight_prior(weight_prior: str) -> str:
    """``weight_prior`` if it is one of :data:`WEIGHT_PRIORS`, else a one-line ``ValueError``."""
    if weight_prior not in WEIGHT_PRIORS:
        raise ValueError(f"weight_prior must be one of {WEIGHT_PRIORS}, got {weight_prior!r}")
    return weight_prior


def check_weight_noise(weight_noise: str) -> str:
    """``weight_noise`` if it is one of :data:`WEIGHT_NOISE`, else a one-line ``ValueError``."""
    if weight_noise not in WEIGHT_NOISE:
        raise ValueError(f"weight_noise must be one of {WEIGHT_NOISE}, got {weight_noise!r}")
    return weight_noise


def clip_log_alpha(log_alpha: torch.Tensor) -> torch.Tensor:
    """``log_alpha`` limited to ``[LOG_ALPHA_MIN, LOG_ALPHA_MAX]`` in value, with the gradient of the
    identity (straight-through): a parameter at or beyond a bound still gets its gradient and can
    come back (``torch.clamp``'s own gradient is 0 there, even exactly at the bound). Training keeps
    the parameters inside the range by projection (:meth:`~bnn_nested.nn.NestedModel.project_`)."""
    return log_alpha + (log_alpha.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX) - log_alpha).detach()


def sparse_vd_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(theta, alpha theta^2) || log-uniform)``, Molchanov et al. 2017 eq. 14.

    Args:
        log_alpha: any shape; clipped to ``[LOG_ALPHA_MIN, LOG_ALPHA_MAX]``.

    Returns:
        KL per weight, same shape, >= 0 up to the approximation's error (about 0 as alpha -> inf).
    """
    la = clip_log_alpha(log_alpha)
    neg_kl = (
        MOLCHANOV_K1 * torch.sigmoid(MOLCHANOV_K2 + MOLCHANOV_K3 * la)
        - 0.5 * F.softplus(-la)
        - MOLCHANOV_K1
    )
    return -neg_kl


def gaussian_eb_kl(
    theta: torch.Tensor, log_alpha: torch.Tensor, channel_keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-output-channel ``KL(N(theta, alpha theta^2) || N(0, s^2))`` summed over each channel's
    weights, with the layer's prior variance ``s^2`` set to its empirical-Bayes optimum.

    For a zero-mean Gaussian prior the KL of one weight is
    ``0.5 * (log(s^2 / sigma^2) + (sigma^2 + theta^2) / s^2 - 1)`` with ``sigma^2 = alpha theta^2``.
    The keep-weighted sum ``sum_c keep_c KL_c`` is minimised in ``s^2`` by the keep-weighted mean
    second moment ``s^2 = sum_c keep_c sum_w (theta^2 + sigma^2) / sum_c keep_c n_c`` (type-II
    maximum likelihood of the ELBO, one variance per layer), which is what is used; at that optimum
    the derivative in ``s^2`` is 0, so its dependence on the keep weights adds no gradient
    (docs/METHODS.md#gaussian-weights-and-the-weight-kl).

    Args:
        theta, log_alpha: ``(out, ...)``; ``log_alpha`` clipped as everywhere.
        channel_keep: ``(out,)`` keep weights of the output channels (``None``: all ones).

    Returns:
        ``(out,)``: the KL of each output channel's weights (not yet keep-weighted).
    """
    la = clip_log_alpha(log_alpha).flatten(1)
    t2 = theta.flatten(1).pow(2)
    var = torch.exp(la) * t2 + VAR_EPS
    second = t2 + var
    s2 = eb_prior_variance(second, channel_keep)
    return 0.5 * (torch.log(s2) - torch.log(var) + second / s2 - 1.0).sum(1)


def eb_prior_variance(second: torch.Tensor, channel_keep: torch.Tensor | None) -> torch.Tensor:
    """The empirical-Bayes prior variance of one layer: the keep-weighted mean of the weights'
    second moments ``second = theta^2 + sigma^2`` (``(out, n)``) over the output channels
    (:func:`gaussian_eb_kl`)."""
    if channel_keep is None:
        s2 = second.mean()
    else:
        k = channel_keep.to(second).unsqueeze(1)
        s2 = (k * second).sum() / (k.sum() * second.shape[1]).clamp_min(VAR_EPS)
    return s2.clamp_min(VAR_EPS)


@torch.no_grad()
def newton_log_alpha(
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    grad: torch.Tensor,
    channel_keep: torch.Tensor | None,
    kl_scale: float,
    rate: float,
) -> torch.Tensor:
    """The new ``log_alpha`` of one layer with the Gaussian prior, by a damped fixed-point
    (variational online Newton, Khan et al., ICML 2018) update of each weight's posterior precision
    ``lambda = 1 / sigma^2``, instead of a gradient step (docs/METHODS.md#gaussian-weights-and-the-weight-kl).

    The per-example objective in one weight's variance is ``data(sigma^2) + a KL(sigma^2)`` with
    ``a = kl_scale * keep_c`` (the KL weight over ``N`` times the output channel's keep weight); it is
    stationary where ``1 / sigma^2 = h / a + 1 / s^2``, with ``h = E_q[d^2 data / dw^2]``. By Price's
    theorem the reparameterised gradient of the data term in ``sigma^2`` estimates ``h / 2``; it is
    the total gradient ``grad`` of ``log_alpha`` minus the KL's own, ``a (sigma^2 / s^2 - 1) / 2``,
    divided by ``sigma^2``. The precision moves a fraction ``rate`` toward its target
    ``max(h, 0) / a + 1 / s^2``; the fixed point does not depend on ``rate``. A channel with keep
    weight 0 gets the prior.

    Args:
        theta, log_alpha, grad: ``(out, ...)``: means, log-variance ratios and the gradient of the
            per-example loss in ``log_alpha``.
        channel_keep: ``(out,)`` keep weights the KL used (``None``: all ones).
        kl_scale: ``kl_weight / N``.
        rate: the damping in ``(0, 1]``.
    """
    shape = theta.shape
    la = log_alpha.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX).flatten(1)
    t2 = theta.flatten(1).pow(2)
    var = torch.exp(la) * t2 + VAR_EPS
    s2 = eb_prior_variance(t2 + var, channel_keep)
    keep = (
        torch.ones(t2.shape[0], 1, dtype=t2.dtype, device=t2.device)
        if channel_keep is None
        else channel_keep.detach().to(t2).unsqueeze(1)
    )
    a = kl_scale * keep
    data_grad = grad.flatten(1) - 0.5 * a * (var / s2 - 1.0)
    h = (2.0 * data_grad / var).clamp_min(0.0)
    target = torch.where(a > 0, h / a.clamp_min(1e-30), torch.zeros_like(h)) + 1.0 / s2
    precision = (1.0 - rate) / var + rate * target
    new = -torch.log(precision) - torch.log(t2 + VAR_EPS)
    return new.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX).reshape(shape)


def lrt_linear(
    x: torch.Tensor, theta: torch.Tensor, log_alpha: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """One LRT sample of ``x w^T + b`` with ``w ~ N(theta, alpha theta^2)`` (Kingma et al. 2015).

    Shapes: ``x (..., in)``, ``theta, log_alpha (out, in)``, ``bias (out,)`` -> ``(..., out)``.
    """
    mean = F.linear(x, theta, bias)
    var = F.linear(x * x, torch.exp(clip_log_alpha(log_alpha)) * theta * theta)
    return mean + torch.sqrt(var + VAR_EPS) * torch.randn_like(mean)


def lrt_conv2d(
    x: torch.Tensor,
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    groups: int = 1,
) -> torch.Tensor:
    """One LRT sample of ``conv2d(x, w) + b`` with ``w ~ N(theta, alpha theta^2)``.

    Shapes: ``x (B, C_in, H, W)``, ``theta, log_alpha (C_out, C_in, kh, kw)`` -> ``(B, C_out, H', W')``.
    Every output element gets its own noise (the LRT of Kingma et al. 2015 applied per location, as
    in Molchanov et al. 2017's convolutional layers).
    """
    mean, var = lrt_conv2d_moments(x, theta, log_alpha, bias, stride, padding, dilation, groups)
    return mean + torch.sqrt(var + VAR_EPS) * torch.randn_like(mean)


def lrt_conv2d_moments(
    x: torch.Tensor,
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    groups: int = 1,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``conv2d(x, theta) + b`` and variance ``conv2d(x^2, alpha theta^2)`` of the LRT's
    pre-activation, both ``(B, C_out, H', W')``.

    ``fused=True`` computes both in one grouped convolution of ``[x, x^2]`` (channels stacked) with
    the weights ``[theta, alpha theta^2]``: the same numbers in one call. It was slower than two
    convolutions on the CPU (docs/RESULTS.md, "Bayesian layer cost"), so :func:`lrt_conv2d` uses
    two; it is kept for measurement.
    """
    w_var = torch.exp(clip_log_alpha(log_alpha)) * theta * theta
    if not fused:
        mean = F.conv2d(x, theta, bias, stride, padding, dilation, groups)
        var = F.conv2d(x * x, w_var, None, stride, padding, dilation, groups)
        return mean, var
    c_out = theta.shape[0]
    both = F.conv2d(
        torch.cat([x, x * x], 1),
        torch.cat([theta, w_var], 0),
        None if bias is None else torch.cat([bias, torch.zeros_like(bias)]),
        stride,
        padding,
        dilation,
        2 * groups,
    )
    return both[:, :c_out], both[:, c_out:]


def weight_samples(theta: torch.Tensor, log_alpha: torch.Tensor, samples: int) -> torch.Tensor:
    """``samples`` draws of ``w ~ N(theta, alpha theta^2)``: ``theta (1 + sqrt(alpha) eps)``,
    shape ``(samples, *theta.shape)``."""
    if torch.is_grad_enabled() and log_alpha.requires_grad:
        la = clip_log_alpha(log_alpha)
    else:  # no gradient: the plain clamp (fewer passes over the weights in Monte-Carlo prediction)
        la = log_alpha.clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
    std = theta * torch.exp(0.5 * la)
    eps = torch.randn((samples,) + theta.shape, dtype=theta.dtype, device=theta.device)
    return torch.addcmul(theta, std, eps)


def sampled_linear(
    x: torch.Tensor,
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    bias: torch.Tensor | None,
    samples: int = 1,
) -> torch.Tensor:
    """``x w_s^T + b`` with one weight sample ``w_s ~ q(w)`` per block of ``x``'s first dimension.

    ``x (S * B, ..., in)`` is sample-major (rows ``s B .. (s + 1) B - 1`` use ``w_s``); ``samples``
    must divide ``x.shape[0]``. Returns ``(S * B, ..., out)``.
    """
    if x.shape[0] % samples:
        raise ValueError(f"samples={samples} must divide the batch {x.shape[0]}")
    w = weight_samples(theta, log_alpha, samples)  # (S, out, in)
    xs = x.reshape(samples, -1, x.shape[-1])
    out = torch.bmm(xs, w.transpose(1, 2))
    if bias is not None:
        out = out + bias
    return out.reshape(x.shape[:-1] + (theta.shape[0],))


def sampled_conv2d(
    x: torch.Tensor,
    theta: torch.Tensor,
    log_alpha: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    groups: int = 1,
    samples: int = 1,
) -> torch.Tensor:
    """``conv2d(x, w_s) + b`` with one weight sample per block of ``x``'s batch (sample-major, as
    :func:`sampled_linear`): one convolution per sample, shared by every location."""
    if x.shape[0] % samples:
        raise ValueError(f"samples={samples} must divide the batch {x.shape[0]}")
    w = weight_samples(theta, log_alpha, samples)
    blocks = x.chunk(samples, 0) if samples > 1 else (x,)
    outs = [F.conv2d(xb, ws, bias, stride, padding, dilation, groups) for xb, ws in zip(blocks, w)]
    return torch.cat(outs, 0) if samples > 1 else outs[0]
