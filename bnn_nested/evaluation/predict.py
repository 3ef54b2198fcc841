"""Monte-Carlo prediction at a given width."""

from __future__ import annotations

import torch

from bnn_nested.nn.model import NestedModel, Width


@torch.no_grad()
def predict(
    model: NestedModel,
    x: torch.Tensor,
    width: Width = 1.0,
    samples: int = 1,
    chunk: int | None = None,
) -> torch.Tensor:
    """Predictive probabilities at ``width``: shape ``(S, B, C)``.

    With ``samples > 1`` the model runs in Monte-Carlo mode (weights sampled, dropout active). The
    ``S`` samples run batched in one forward pass of ``S * B`` inputs, ``chunk`` samples at a time
    (``None``: all at once). Note: with batch norm in eval mode samples are independent per input.

    Example:
        >>> probs = predict(model, x, width=0.5, samples=8)   # (8, B, C)
        >>> p_bar = probs.mean(0)
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    model.eval()
    with model.width(width):
        if samples == 1:
            return torch.softmax(model(x), -1).unsqueeze(0)
        chunk = chunk or samples
        out = []
        with model.stochastic(True):
            for start in range(0, samples, chunk):
                s = min(chunk, samples - start)
                xs = x.unsqueeze(0).expand((s,) + x.shape).reshape((s * x.shape[0],) + x.shape[1:])
                out.append(torch.softmax(model(xs), -1).view(s, x.shape[0], -1))
        return torch.cat(out, 0)


@torch.no_grad()
def predict_loader(
    model: NestedModel, loader, width: Width = 1.0, samples: int = 1, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``predict`` over a loader: ``(probs (S, N, C), targets (N,))`` on the CPU."""
    probs, targets = [], []
    for x, y in loader:
        probs.append(predict(model, x.to(device), width, samples).cpu())
        targets.append(y)
    return torch.cat(probs, 1), torch.cat(targets)
