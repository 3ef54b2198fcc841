"""Evaluate a nested model at every width: classification, calibration and OOD detection.

OOD convention (everywhere in this package): **higher score = more likely OOD; OOD is the positive
class**. Report keys are namespaced: ``cls/acc``, ``cal/ece``, ``ood/<set>/<score>/auroc``, ``cost/flops``.

Example:
    >>> report = evaluate(model, splits, widths=[0.25, 0.5, 1.0], samples=8, ood=["patches"])
    >>> print(report.table()); report.write("runs/demo")
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bnn_nested.evaluation.metrics import classification_report, reliability_data
from bnn_nested.evaluation.ood import compute_score, ood_metrics
from bnn_nested.evaluation.predict import predict_loader
from bnn_nested.io import atomic_write_json, atomic_write_text
from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.utils import module_device

#: Synthetic OOD sets generated to match the in-distribution input shape.
SYNTHETIC_OOD = ("gaussian", "uniform", "patches")
#: Default OOD scores (see :mod:`bnn_nested.evaluation.ood`).
DEFAULT_SCORES = ("entropy", "mutual_information", "msp")


@dataclass
class Report:
    """Metrics per width: ``rows[width] = {"cls/acc": .., "cal/ece": .., "ood/patches/entropy/auroc": ..}``.

    ``reliability[width]`` holds the reliability-diagram data of that width.
    """

    rows: dict[float, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    reliability: dict[float, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "widths": {f"{w:g}": m for w, m in sorted(self.rows.items())}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(rows={float(w): m for w, m in d["widths"].items()}, meta=d.get("meta", {}))

    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.rows.values():
            seen.update(dict.fromkeys(m))
        return list(seen)

    def table(self, keys: Sequence[str] | None = None, markdown: bool = False) -> str:
        """One row per width; default columns: accuracy, NLL, Brier, ECE and every OOD AUROC."""
        if keys is None:
            keys = [
                k
                for k in self.keys()
                if k in ("cls/acc", "cls/nll", "cls/brier", "cal/ece")
                or k.endswith(("/entropy/auroc", "/mutual_information/auroc"))
            ]
        keys = [k for k in keys if k in self.keys()]
        cells = [["width", *keys]] + [
            [f"{w:g}", *(f"{m.get(k, math.nan):.4f}" for k in keys)]
            for w, m in sorted(self.rows.items())
        ]
        if markdown:
            lines = ["| " + " | ".join(r) + " |" for r in cells]
            lines.insert(1, "|" + "|".join("---" for _ in cells[0]) + "|")
            return "\n".join(lines)
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        lines = [" ".join(c.rjust(n) for c, n in zip(r, widths)) for r in cells]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    def write(self, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and (optionally) PNG plots atomically."""
        from bnn_nested.evaluation.plots import metric_vs_x, reliability_diagram

        out = Path(out_dir)
        written = {
            "json": atomic_write_json(out / "report.json", self.to_dict()),
            "md": atomic_write_text(out / "report.md", self.markdown()),
        }
        if not plots:
            return written
        widths = sorted(self.rows)
        plot_keys = [k for k in ("cls/acc", "cls/nll", "cal/ece") if k in self.keys()]
        plot_keys += [k for k in self.keys() if k.endswith("/auroc")]
        for key in plot_keys:
            ys = [self.rows[w].get(key, math.nan) for w in widths]
            name = key.replace("/", "_")
            written[f"{name}_width"] = metric_vs_x(
                {"model": (widths, ys)}, "width", key, out / "plots" / f"{name}_vs_width.png"
            )
            if all("cost/flops" in self.rows[w] for w in widths):
                flops = [self.rows[w]["cost/flops"] for w in widths]
                written[f"{name}_flops"] = metric_vs_x(
                    {"model": (flops, ys)},
                    "FLOPs per example (2 x MACs)",
                    key,
                    out / "plots" / f"{name}_vs_flops.png",
                )
        for w, data in self.reliability.items():
            written[f"reliability_{w:g}"] = reliability_diagram(
                data, out / "plots" / f"reliability_w{w:g}.png", title=f"width {w:g}"
            )
        return written

    def markdown(self) -> str:
        m = self.meta
        head = [f"# Evaluation report: {m.get('run', '')}".rstrip(), ""]
        head += [f"- {k}: {v}" for k, v in m.items() if k != "run"]
        head += [
            "",
            "OOD convention: higher score = more likely OOD; OOD is the positive class.",
            "",
        ]
        return "\n".join(head) + self.table(markdown=True) + "\n"


def _loader(data: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(data, batch_size=batch_size)


def make_ood_sets(
    splits: Any, names: Sequence[str], n: int, seed: int = 0, root: str | None = None
) -> dict[str, Dataset]:
    """OOD data sets by name: ``gaussian``, ``uniform``, ``patches`` (natural-image crops in the data
    set's standardised space), ``heldout`` (classes held out of training, see ``data.held_out_classes``)
    or a torchvision data set name read from ``root`` (e.g. ``svhn`` for CIFAR-10)."""
    from bnn_nested.data.ood import make_ood_dataset

    sets: dict[str, Dataset] = {}
    for name in names:
        if name in SYNTHETIC_OOD:
            mean = getattr(splits, "mean", None)
            std = getattr(splits, "std", None)
            if mean is not None and not torch.is_tensor(mean):  # per-channel tuples
                shape = (
                    (-1,) + (1,) * (len(splits.input_shape) - 1)
                    if len(splits.input_shape) > 1
                    else (-1,)
                )
                mean = torch.tensor(mean).view(shape)
                std = torch.tensor(std).view(shape)
            sets[name] = make_ood_dataset(
                name,
                n,
                splits.input_shape,
                seed,
                mean=mean,
                std=std,
                pixel_range=getattr(splits, "pixel_range", (0.0, 1.0)),
            )
        elif name == "heldout":
            held = getattr(splits, "held_out", None)
            if held is None:
                raise ValueError("ood: 'heldout' needs data.held_out_classes set at training time")
            sets[name] = held
        else:
            from bnn_nested.data.vision import VISION_NAMES, load_torchvision_test

            if name not in VISION_NAMES:
                raise ValueError(
                    f"ood: unknown OOD set {name!r}; accepted: {', '.join(SYNTHETIC_OOD)}, heldout, "
                    f"{', '.join(VISION_NAMES)}"
                )
            if root is None:
                raise ValueError(f"ood: {name!r} needs a local data root (data.root)")
            sets[name] = load_torchvision_test(name, root, normalize_like=splits.name)
    return sets


def evaluate(
    model: NestedModel,
    splits: Any,
    widths: Sequence[float],
    samples: int = 1,
    ood: Sequence[str] | dict[str, Dataset] = (),
    scores: Sequence[str] = DEFAULT_SCORES,
    n_bins: int = 15,
    batch_size: int = 512,
    split: str = "test",
    device: str | torch.device | None = None,
    progress: bool = False,
    ood_size: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> Report:
    """Per-width report: ``cls/*`` and ``cal/*`` metrics, OOD AUROC/AUPR/FPR95 per set and score,
    and ``cost/flops`` (FLOPs = 2 x MACs per example).

    Args:
        model: a trained nested model.
        splits: :class:`~bnn_nested.data.DataSplits` (``split`` picks test or val) or a dataset.
        widths: widths in ``(0, 1]``.
        samples: Monte-Carlo samples ``S`` per input (weights sampled, dropout active when ``S > 1``).
        ood: OOD set names (see :func:`make_ood_sets`) or ready datasets by name.
        scores: OOD score names from :data:`bnn_nested.evaluation.ood.SCORES`; higher = more OOD.
    """
    from bnn_nested.deploy.profile import count_flops

    data = getattr(splits, split) if hasattr(splits, split) else splits
    if isinstance(ood, dict):
        ood_sets = dict(ood)
    else:
        ood_sets = make_ood_sets(splits, list(ood), ood_size or len(data), seed, root)
    report = Report(
        meta={
            "samples": samples,
            "ece_bins": n_bins,
            "n": len(data),
            "split": split,
            "ood_sets": list(ood_sets),
            # mutual information needs S > 1 samples (it is 0 for a single deterministic pass)
            "scores": [s for s in scores if s != "mutual_information" or samples > 1],
        }
    )
    if device is None:
        device = module_device(model)
    x0 = data[0][0].unsqueeze(0).to(device)
    it = widths
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        it = tqdm(widths, desc="widths", leave=False)
    for w in it:
        probs, targets = predict_loader(model, _loader(data, batch_size), w, samples, device)
        row = classification_report(probs, targets, n_bins=n_bins)
        report.reliability[float(w)] = reliability_data(probs, targets, n_bins=n_bins)
        if ood_sets:
            in_scores = {s: compute_score(s, probs=probs) for s in report.meta["scores"]}
            for name, ds in ood_sets.items():
                out_probs, _ = predict_loader(model, _loader(ds, batch_size), w, samples, device)
                for s, sc_in in in_scores.items():
                    sc_out = compute_score(s, probs=out_probs)
                    for k, v in ood_metrics(sc_in, sc_out).items():
                        row[f"ood/{name}/{s}/{k.split('/', 1)[1]}"] = v
        row["cost/flops"] = float(count_flops(model, x0, w))
        report.rows[float(w)] = row
    return report


def evaluate_widths(
    model: NestedModel,
    dataset,
    widths: list[float],
    samples: int = 1,
    n_bins: int = 15,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> Report:
    """Classification and calibration metrics only, on one dataset (no OOD, no FLOPs)."""
    report = Report(meta={"samples": samples, "ece_bins": n_bins, "n": len(dataset)})
    for w in widths:
        probs, targets = predict_loader(model, _loader(dataset, batch_size), w, samples, device)
        report.rows[float(w)] = classification_report(probs, targets, n_bins=n_bins)
    return report


__all__ = [
    "DEFAULT_SCORES",
    "SYNTHETIC_OOD",
    "Report",
    "evaluate",
    "evaluate_widths",
    "make_ood_sets",
]
