"""Monte-Carlo prediction at a given width."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.utils import Inputs, call_model, map_inputs, module_device, move_inputs


def keep_scaled(model: NestedModel, enabled: bool = True) -> AbstractContextManager[NestedModel]:
    """Inside the block, every ordering unit scales (in eval) its kept channels by their learned keep
    probability ``P(b >= k)`` (the reference evaluation's option,
    docs/METHODS.md#variational-ordering-units)."""
    return model.unit_flag("keep_scaling", enabled)


@torch.no_grad()
def predict(
    model: NestedModel,
    x: Inputs,
    width: Width = 1.0,
    samples: int = 1,
    chunk: int | None = 1,
    keep_scaling: bool = False,
    logits: bool = False,
) -> torch.Tensor:
    """Predictive probabilities at ``width``: shape ``(S, B, C)`` (with ``logits``: each sample's
    logits instead, ``softmax`` of which are the probabilities).

    With ``samples > 1`` the model runs in Monte-Carlo mode (dropout active; each Bayesian layer
    draws one weight tensor from ``q(W)`` per sample, shared by the batch and every location: the
    ``S`` outputs are those of ``S`` networks drawn from the posterior); with ``samples == 1`` it is
    the deterministic mean network. The samples run ``chunk`` at a time, batched into one forward
    pass of ``chunk * B`` inputs (``None``: all ``S`` at once). The default, one sample per forward
    pass, was the fastest on the CPU (docs/RESULTS.md, "Monte-Carlo prediction time"): with whole
    weight draws nothing is gained by batching samples, and large batches cost memory traffic.
    Batch norm is in eval mode, so chunking does not change the distribution (nor the values, for a
    model without weight noise or dropout).

    Args:
        x: ``(B, ...)`` inputs: a tensor, a tuple of positional inputs or a dict of keyword
            inputs (a tokenizer's batch), as the model takes them.
        keep_scaling: scale kept channels by their keep probability.

    Example::

        probs = predict(model, x, width=0.5, samples=8)   # (8, B, C)
        p_bar = probs.mean(0)
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None, got {chunk}")
    was_training = model.training
    model.eval()
    try:
        with model.width(width), keep_scaled(model, keep_scaling):
            out_fn = (lambda z: z) if logits else (lambda z: torch.softmax(z, -1))
            if samples == 1:
                return out_fn(call_model(model, x)).unsqueeze(0)
            chunk = chunk or samples
            out = []
            for start in range(0, samples, chunk):
                s = min(chunk, samples - start)
                xs = map_inputs(x, lambda t, s=s: t.repeat((s,) + (1,) * (t.dim() - 1)))
                with model.stochastic(True, samples=s):
                    z = out_fn(call_model(model, xs))
                    out.append(z.view(s, z.shape[0] // s, -1))
            return torch.cat(out, 0)
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_loader(
    model: NestedModel,
    loader,
    width: Width = 1.0,
    samples: int = 1,
    device: str | torch.device | None = None,
    keep_scaling: bool = False,
    logits: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``predict`` over a loader: ``(probs (S, N, C), targets (N,))`` on the CPU (``logits``: the
    logits ``(S, N, C)`` instead of the probabilities).

    Inputs are moved to ``device`` (``None``: the device of the model's parameters)."""
    if device is None:
        device = module_device(model)
    probs, targets = [], []
    for x, y in loader:
        out = predict(
            model, move_inputs(x, device), width, samples, keep_scaling=keep_scaling, logits=logits
        )
        probs.append(out.cpu())
        targets.append(y)
    return torch.cat(probs, 1), torch.cat(targets)
