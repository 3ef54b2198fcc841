"""From a trained network to a nested Bayesian one: train a plain MLP on digits, nestify it with
importance ordering and Gaussian weights (MOPED: std = 0.1 |w|), fine-tune with in-place distillation
from the original network, and print the per-width table of the plain network, the untuned
conversion (with and without ordering) and the fine-tuned one.

Usage: ``.venv/bin/python examples/from_trained.py [--epochs 10] [--finetune 3]``
"""

from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn.functional as F

from bnn_nested.config import load_config
from bnn_nested.data import load_dataset
from bnn_nested.evaluation.report import evaluate_widths
from bnn_nested.models import MLP
from bnn_nested.nest import nestify, plain_copy
from bnn_nested.training.trainer import Trainer

WIDTHS = [0.25, 0.5, 0.75, 1.0]


def accuracies(model, dataset) -> list[float]:
    return [evaluate_widths(model, dataset, [w]).rows[w]["cls/acc"] for w in WIDTHS]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--finetune", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(
        "configs/digits_mlp.yaml",
        overrides=[
            f"train.epochs={a.finetune}",
            "train.teacher=/unused",
            "regularization.kind=none",
        ],
    )
    splits = load_dataset(cfg.data)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)

    plain = MLP(64, 10, [256, 256])  # 1. an ordinary trained network
    opt = torch.optim.Adam(plain.parameters(), 1e-3)
    for _ in range(a.epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(plain(x), y).backward()
            opt.step()
    plain.eval()
    x = torch.stack([splits.train[i][0] for i in range(8)])

    rows = {}
    untuned = nestify(copy.deepcopy(plain), x, groups=16, kept=1)  # 2a. no ordering
    rows["converted, no ordering"] = accuracies(untuned.eval(), splits.test)
    model = nestify(  # 2b. importance ordering, Gaussian weights from the trained values
        copy.deepcopy(plain),
        x,
        groups=16,
        kept=1,
        order="importance",
        importance="l1",
        weight_posterior="gaussian",
        init_log_alpha=2 * math.log(0.1),
    )
    rows["converted, importance order"] = accuracies(model.eval(), splits.test)

    teacher = plain_copy(untuned)  # 3. fine-tune: VOU + distillation from the original network
    trainer = Trainer(model, cfg, n_train=splits.num_train, teacher=teacher)
    trainer.fit(loader, epochs=a.finetune)
    rows[f"+ {a.finetune} epochs distillation"] = accuracies(model.eval(), splits.test)

    with torch.no_grad():
        test = torch.utils.data.DataLoader(splits.test, 512)
        correct = sum(int((plain(xb).argmax(-1) == yb).sum()) for xb, yb in test)
    full = correct / len(splits.test)
    print(
        f"\ntest accuracy (digits, {len(splits.test)} images); plain network at full width: {full:.4f}"
    )
    print(f"{'':<34}" + "".join(f"  w={w:<5}" for w in WIDTHS))
    for name, accs in rows.items():
        print(f"{name:<34}" + "".join(f"  {v:.4f}" for v in accs))


if __name__ == "__main__":
    main()
