"""How good is each gradient of the ordering? Bias and variance against the exact gradient.

For one ordering unit with ``K`` ordered groups the expected loss under hard masks is a finite sum,
``E_q(b)[L(b)] = sum_{b=0..K} q(b) L(b)``, so its gradient in the continuation logits ``r`` can be
computed exactly (enumerate ``b``, autograd through ``q``). On a small nested MLP (digits, one
hidden layer of 32 units in 8 groups, 1 always kept; trained for a few epochs so the loss depends
on the width) this script compares, over ``--draws`` independent draws on the same batch:

* ``straight_through``: the gradient through the relaxed Downhill sample (``ordering.gradient:
  straight_through``, today's default), one masked pass per step;
* ``score``: the score function with a leave-one-out baseline over two masked passes
  (``ordering.gradient: score``), the surrogate of :meth:`NegativeELBO.score_term`.

Reported per estimator: the relative bias ``|mean - exact| / |exact|`` (with the Monte-Carlo standard
error of the mean, so a bias smaller than it is not resolved), the cosine between mean and exact,
and the total variance ``E ||g - mean||^2`` per unit of ``||exact||^2``; both for one temperature
``tau`` of the relaxation (``--temperatures``).

    python benchmarks/ordering_gradient.py --draws 2000
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from bnn_nested.config import build_config
from bnn_nested.data import load_dataset
from bnn_nested.distributions import stick_breaking_logits
from bnn_nested.models.registry import build_model
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.training.objective import NegativeELBO
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer


def _setup(seed: int, epochs: int):
    cfg = build_config(
        {
            "seed": seed,
            "data": {"name": "digits", "batch_size": 64},
            "model": {"name": "mlp", "hidden": [32], "groups": 8, "kept": 1},
            "ordering": {"sampler": "nested_dropout"},  # train every width a little, fixed q
            "train": {"epochs": epochs, "lr": 3e-3, "threads": 1},
        }
    )
    torch.manual_seed(seed)
    splits = load_dataset(cfg.data, seed=seed)
    x, y = _tensors(splits.train)
    model = build_model(
        cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), tuple(x.shape[1:]), 10
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True
    )
    Trainer(model, cfg, n_train=len(x), quiet=True).fit(loader)
    return model, x[:256], y[:256]


def _tensors(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), torch.as_tensor(ys)


def _unit(model) -> OrderingUnit:
    units = [m for m in model.modules() if isinstance(m, OrderingUnit)]
    assert len(units) == 1, "one ordering unit expected"
    return units[0]


def _fixed(unit: OrderingUnit, b: int):
    mask = torch.zeros(unit.K)
    mask[:b] = 1.0
    return lambda batch=None: unit.expand_groups(mask)


def exact_gradient(model, unit, r, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """``d/dr sum_b q(b) L(b)`` by enumeration, and the losses ``L(b)``."""
    losses = []
    for b in range(unit.K + 1):
        unit.sample_mask = _fixed(unit, b)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x), y))
        del unit.sample_mask
    L = torch.stack(losses)
    rr = r.clone().requires_grad_(True)
    (torch.softmax(stick_breaking_logits(rr), -1) * L).sum().backward()
    return rr.grad, L


def estimator_draws(model, unit, x, y, gradient: str, draws: int) -> torch.Tensor:
    unit.gradient = gradient
    unit.hard = True
    grads = []
    objective = NegativeELBO(model, build_sampler(build_config({}).ordering), n_train=1)
    for _ in range(draws):
        unit.r.grad = None
        if gradient == "straight_through":
            F.cross_entropy(model(x), y).backward()
        else:
            objective._scored = []
            for _ in range(2):
                loss = F.cross_entropy(model(x), y)
                objective._scored.append((unit.consume_log_q(), loss.detach()))
            objective.score_term().backward()
        grads.append(unit.r.grad.clone())
    unit.gradient = "straight_through"
    return torch.stack(grads)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--r", type=float, default=1.0, help="continuation logits of q (all equal)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, x, y = _setup(args.seed, args.epochs)
    unit = _unit(model)
    # a learned posterior to differentiate: replace the fixed buffer by a parameter
    del unit.r
    unit.r = torch.nn.Parameter(torch.full((unit.K,), args.r))
    unit.learn = True
    for p in model.parameters():
        if p is not unit.r:
            p.requires_grad_(False)
    model.train()
    for m in model.modules():  # no dropout / BN updates: the loss is a function of b only
        if isinstance(m, (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)):
            m.eval()
    exact, L = exact_gradient(model, unit, unit.r.detach(), x, y)
    print(f"L(b), b = 0..{unit.K}: " + " ".join(f"{v:.3f}" for v in L.tolist()))
    print(f"exact gradient: {' '.join(f'{v:+.4f}' for v in exact.tolist())}\n")
    print(
        "| estimator | tau | relative bias | its s.e. | cosine(mean, exact) | variance / ||exact||^2 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    norm2 = float(exact.pow(2).sum())
    for tau in args.temperatures:
        unit.temperature.fill_(tau)
        for name in ("straight_through", "score"):
            if name == "score" and tau != args.temperatures[0]:
                continue  # the score function does not depend on tau (exact draws of b)
            torch.manual_seed(args.seed + 1)
            g = estimator_draws(model, unit, x, y, name, args.draws)
            mean = g.mean(0)
            bias = float((mean - exact).norm()) / norm2**0.5
            se = float((g.var(0).sum() / args.draws) ** 0.5) / norm2**0.5
            cos = float(F.cosine_similarity(mean, exact, dim=0))
            var = float(g.var(0).sum()) / norm2
            t = "any" if name == "score" else f"{tau:g}"
            print(f"| {name} | {t} | {bias:.3f} | {se:.3f} | {cos:+.3f} | {var:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
