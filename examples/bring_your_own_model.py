"""Bring your own model: nest a user-defined network (a residual block and an attention block), train
it 1-2 epochs on scikit-learn's digits with variational ordering units, evaluate it per width and
export the width-0.5 sub-network as a physically smaller plain module.

Usage: ``.venv/bin/python examples/bring_your_own_model.py [--epochs 2] [--out runs/byom]``
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.config import load_config
from bnn_nested.data import load_dataset
from bnn_nested.deploy.export import export_width
from bnn_nested.evaluation.report import evaluate
from bnn_nested.nest import nestify, sliced_cost
from bnn_nested.nn import recalibrate_bn
from bnn_nested.training.trainer import Trainer


class MyNet(nn.Module):
    """8x8 digits -> conv stem -> residual block -> 16 tokens of 32 features -> attention -> head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.res = nn.Sequential(
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)
        )
        self.attn = nn.TransformerEncoderLayer(
            32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x.reshape(-1, 1, 8, 8))
        h = F.relu(h + self.res(h))  # residual addition: stem and res.2 share one width
        tokens = F.max_pool2d(h, 2).flatten(2).transpose(1, 2)  # (B, 16, 32)
        return self.head(self.attn(tokens).mean(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="runs/byom")
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(
        "configs/digits_mlp.yaml",
        overrides=[f"train.epochs={a.epochs}", "train.lr=0.003", "regularization.kind=none"],
    )
    splits = load_dataset(cfg.data)
    x = torch.stack([splits.train[i][0] for i in range(8)])  # (8, 64) flat digits

    model = nestify(
        MyNet(), x, groups=8, kept=1
    )  # any nn.Module; weight_posterior="gaussian" for Bayesian
    print("ordered dimensions:")
    for d in model.structure:
        print(
            f"  {d.name:<28} {d.kind:<8} {d.size:>3} channels in {d.groups} groups: {[m.module for m in d.members]}"
        )
    print("left whole:", {k: v[:60] for k, v in model.structure.unordered.items()})

    trainer = Trainer(model, cfg, n_train=splits.num_train)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)
    trainer.fit(loader, epochs=a.epochs)
    widths = [0.25, 0.5, 0.75, 1.0]
    recalibrate_bn(model, torch.utils.data.DataLoader(splits.train, batch_size=256), widths)
    report = evaluate(model, splits, widths=widths, samples=1)
    print(report.table())
    report.write(a.out)

    small = export_width(model, 0.5, x)  # plain torch modules only, physically sliced
    model.eval()
    diff = (small(x) - model(x, width=0.5)).abs().max().item()
    f_half, p_half = sliced_cost(model, 0.5, x)
    f_full, p_full = sliced_cost(model, 1.0, x)
    print(
        f"export at width 0.5: max |difference| {diff:.2e}; FLOPs {f_half / f_full:.3f}x, params {p_half / p_full:.3f}x of full"
    )


if __name__ == "__main__":
    main()
