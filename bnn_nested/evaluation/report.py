"""Evaluate a nested model at every width: classification, calibration and OOD detection.

OOD convention (everywhere in this package): **higher score = more likely OOD; OOD is the positive
class**. Report keys are namespaced: ``cls/acc``, ``cal/ece``, ``ood/<set>/<score>/auroc``, ``cost/flops``.

Example::

    report = evaluate(model, splits, widths=[0.25, 0.5, 1.0], samples=8, ood=["patches"])
    print(report.table()); report.write("runs/demo")
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bnn_nested.config import DEFAULT_OOD_SCORES
from bnn_nested.cost import count_flops
from bnn_nested.data.ood import make_ood_dataset
from bnn_nested.data.vision import VISION_NAMES, load_torchvision_test
from bnn_nested.evaluation.calibration import apply_temperature, temperature_for
from bnn_nested.evaluation.conformal import SET_SCORES, conformal_sets, nested_conformal_sets
from bnn_nested.evaluation.metrics import classification_report, mean_probs, reliability_data
from bnn_nested.evaluation.ood import (
    BELOW_CHANCE_EXPLANATION,
    SCORE_INPUTS,
    below_chance,
    check_scores,
    compute_score,
    ood_metrics,
)
from bnn_nested.evaluation.plots import metric_vs_x, reliability_diagram, risk_coverage_plot
from bnn_nested.evaluation.prediction import predict_loader
from bnn_nested.evaluation.selective import aurc, eaurc, risk_coverage, selective_score
from bnn_nested.io import atomic_write_json, atomic_write_text
from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.utils import module_device
from bnn_nested.progress import Progress

#: Synthetic OOD sets generated to match the in-distribution input shape.
SYNTHETIC_OOD = ("gaussian", "uniform", "patches")
#: Default OOD scores (see :mod:`bnn_nested.evaluation.ood`).
DEFAULT_SCORES = DEFAULT_OOD_SCORES
#: Widest line of :meth:`Report.table` (a wider table is split into blocks).
MAX_TABLE_COLUMNS = 120


@dataclass
class Report:
    """Metrics per width: ``rows[width] = {"cls/acc": .., "cal/ece": .., "ood/patches/entropy/auroc": ..}``.

    ``reliability[width]`` holds the reliability-diagram data of that width, ``risk_coverage[width]``
    its risk-coverage curve ``(coverage, risk)``.
    """

    rows: dict[float, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    reliability: dict[float, Any] = field(default_factory=dict)
    risk_coverage: dict[float, Any] = field(default_factory=dict)

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

    def table(
        self,
        keys: Sequence[str] | None = None,
        markdown: bool = False,
        max_columns: int = MAX_TABLE_COLUMNS,
    ) -> str:
        """One row per width; default columns: accuracy, NLL, Brier, ECE (before temperature scaling
        too, when applied), AURC, set coverage and size, and every OOD AUROC. The plain-text table
        is split into blocks (each starting with the width column) of at most ``max_columns``
        characters per line."""
        if keys is None:
            keys = [
                k
                for k in self.keys()
                if k
                in (
                    "cls/acc",
                    "raw/cls/nll",
                    "cls/nll",
                    "cls/brier",
                    "raw/cal/ece",
                    "cal/ece",
                    "cal/temperature",
                    "sel/aurc",
                )
                or (k.startswith("set/") and k.endswith(("/coverage", "/size")))
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
        return _split_table(cells, max_columns)

    def warnings(self) -> list[str]:
        """One line per OOD AUROC below chance (see :func:`~bnn_nested.evaluation.ood.below_chance`)."""

        return below_chance(self.rows)

    def write(self, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and (optionally) PNG plots atomically."""

        out = Path(out_dir)
        written = {
            "json": atomic_write_json(out / "report.json", self.to_dict()),
            "md": atomic_write_text(out / "report.md", self.markdown()),
        }
        if not plots:
            return written
        widths = sorted(self.rows)
        plot_keys = [k for k in ("cls/acc", "cls/nll", "cal/ece", "sel/aurc") if k in self.keys()]
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
        if self.risk_coverage:
            written["risk_coverage"] = risk_coverage_plot(
                self.risk_coverage, out / "plots" / "risk_coverage.png"
            )
        sets = sorted({k.rsplit("/", 1)[0] for k in self.keys() if k.startswith("set/")})
        for kind in ("coverage", "size"):
            series = {
                name[4:]: (widths, [self.rows[w].get(f"{name}/{kind}", math.nan) for w in widths])
                for name in sets
            }
            if series:
                written[f"sets_{kind}"] = metric_vs_x(
                    {f"alpha {k.replace('/nested', ' nested')}": v for k, v in series.items()},
                    "width",
                    "coverage" if kind == "coverage" else "mean set size",
                    out / "plots" / f"set_{kind}_vs_width.png",
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
        notes = self.warnings()
        if notes:
            head += ["**Warning:**", ""] + [f"- {n}" for n in notes]
            head += ["", BELOW_CHANCE_EXPLANATION, ""]
        return "\n".join(head) + self.table(markdown=True) + "\n"


def _split_table(cells: list[list[str]], max_columns: int) -> str:
    """Right-aligned plain-text table; columns beyond ``max_columns`` characters go to further
    blocks (separated by a blank line), each repeating the first column."""
    sizes = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    blocks, block = [], [0]
    for i in range(1, len(sizes)):
        used = sum(sizes[j] + 1 for j in block) + sizes[i]
        if len(block) > 1 and used > max_columns:
            blocks.append(block)
            block = [0]
        block.append(i)
    blocks.append(block)
    out = []
    for cols in blocks:
        lines = [" ".join(r[i].rjust(sizes[i]) for i in cols) for r in cells]
        lines.insert(1, "-" * len(lines[0]))
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _loader(data: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(data, batch_size=batch_size)


def make_ood_sets(
    splits: Any, names: Sequence[str], n: int, seed: int = 0, root: str | None = None
) -> dict[str, Dataset]:
    """OOD data sets by name: ``gaussian``, ``uniform``, ``patches`` (natural-image crops in the data
    set's standardised space), ``heldout`` (classes held out of training, see ``data.held_out_classes``)
    or a torchvision data set name read from ``root`` (e.g. ``svhn`` for CIFAR-10)."""

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
                raise ValueError(
                    "ood: 'heldout' needs data.held_out_classes set at training time (e.g. "
                    "--set data.held_out_classes=[8,9]); no shipped config sets it"
                )
            sets[name] = held
        else:
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
    temperatures: Mapping[float, float] | None = None,
    alphas: Sequence[float] = (),
    set_score: str = "thr",
    nested_sets: bool = False,
    selective: str | None = "msp",
) -> Report:
    """Per-width report: ``cls/*`` and ``cal/*`` metrics, OOD AUROC/AUPR/FPR95 per set and score,
    ``cost/flops`` (FLOPs = 2 x MACs per example), and the issue-15 actions on uncertainty:

    * ``temperatures`` (width -> ``T``, :mod:`~bnn_nested.evaluation.calibration`): every metric is
      computed on the temperature-scaled probabilities (in each temperature's mode,
      ``per_sample`` for plain numbers); ``raw/cls/nll``, ``raw/cls/brier``, ``raw/cal/ece`` are
      the values before, ``cal/temperature`` the ``T`` used. Scores read off the spread of the
      samples (registered with ``takes="samples"``) use the untempered samples under a ``pooled`` temperature
      (which leaves one distribution); ``max_logit`` and ``energy`` always use the network's
      untempered logits (docs/METHODS.md#ood-detection).
    * ``alphas``: split-conformal sets at level ``1 - alpha`` calibrated on ``splits.val``
      (:mod:`~bnn_nested.evaluation.conformal`, score ``set_score``): ``set/<alpha>/coverage`` and
      ``set/<alpha>/size``; with ``nested_sets`` also ``set/<alpha>/nested/...`` (sets nested
      across the given widths). Needs ``split="test"``.
    * ``selective``: uncertainty score (``msp``, ``entropy``, ``mutual_information``) of the
      risk-coverage curve; ``sel/aurc`` and ``sel/eaurc`` (:mod:`~bnn_nested.evaluation.selective`).

    Args:
        model: a trained nested model.
        splits: :class:`~bnn_nested.data.DataSplits` (``split`` picks test or val) or a dataset.
        widths: widths in ``(0, 1]``.
        samples: Monte-Carlo samples ``S`` per input (weights sampled, dropout active when ``S > 1``).
        ood: OOD set names (see :func:`make_ood_sets`) or ready datasets by name.
        scores: OOD score names from :data:`bnn_nested.evaluation.ood.SCORES`; higher = more OOD.
    """

    check_scores(scores, "scores")  # unknown names: one line listing the accepted ones
    if selective:
        check_scores([selective], "selective", probabilities=True)
    alphas = [float(a) for a in alphas]
    if alphas:
        if set_score not in SET_SCORES:
            raise ValueError(f"set_score must be one of {', '.join(SET_SCORES)}; got {set_score!r}")
        if any(not 0.0 < a < 1.0 for a in alphas):
            raise ValueError(f"alpha must be in (0, 1), got {alphas}")
        if split != "test" or not hasattr(splits, "val"):
            raise ValueError("conformal sets are calibrated on the val split: need split='test'")
        if nested_sets and list(widths) != sorted(widths):
            raise ValueError(f"nested sets need increasing widths, got {list(widths)}")
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
    if temperatures:
        report.meta["temperatures"] = {f"{w:g}": temperature_for(temperatures, w) for w in widths}
        report.meta["temperature_modes"] = {
            f"{w:g}": getattr(temperature_for(temperatures, w), "mode", "per_sample")
            for w in widths
        }
    if selective:
        report.meta["selective_score"] = selective
    if alphas:
        report.meta.update(alphas=alphas, set_score=set_score, nested_sets=nested_sets)
    set_probs: dict[str, list[torch.Tensor]] = {"val": [], "test": []}
    targets_val = None
    if device is None:
        device = module_device(model)
    x0 = data[0][0].unsqueeze(0).to(device)
    sets = [data] + ([splits.val] if alphas else []) + list(ood_sets.values())
    bar = Progress(
        len(widths) * sum(len(_loader(d, batch_size)) for d in sets), "evaluate", enabled=progress
    )

    # max_logit / energy need the logits: carried through prediction (probs = softmax(logits))
    with_logits = bool(ood_sets) and any(SCORE_INPUTS[s] == "logits" for s in report.meta["scores"])

    def counted(dataset, what: str, w: float):
        for batch in _loader(dataset, batch_size):
            yield batch
            bar.update(desc=f"evaluate width {w:g}{what}")

    def predicted(dataset, what: str, w: float):
        """``(probs, logits or None, targets)`` of one data set at width ``w``."""
        out, y = predict_loader(
            model, counted(dataset, what, w), w, samples, device, logits=with_logits
        )
        if with_logits:
            return torch.softmax(out, -1), out, y
        return out, None, y

    def scores_of(probs, spread, logits) -> dict[str, torch.Tensor]:
        return {
            s: compute_score(s, logits=logits)
            if SCORE_INPUTS[s] == "logits"
            else compute_score(s, probs=spread if SCORE_INPUTS[s] == "samples" else probs)
            for s in report.meta["scores"]
        }

    for w in widths:
        probs, logits, targets = predicted(data, "", w)
        t = temperature_for(temperatures, w)
        row = {}
        spread = probs  # the samples that scores of samples read
        if temperatures:
            raw = classification_report(probs, targets, n_bins=n_bins)
            row.update({f"raw/{k}": raw[k] for k in ("cls/nll", "cls/brier", "cal/ece")})
            probs = apply_temperature(probs, t)
            if probs.shape[0] == spread.shape[0]:  # per_sample: the tempered samples
                spread = probs
        row.update(classification_report(probs, targets, n_bins=n_bins))
        if temperatures:
            row["cal/temperature"] = t
        report.reliability[float(w)] = reliability_data(probs, targets, n_bins=n_bins)
        if selective:
            errors = mean_probs(probs).argmax(-1) != targets
            unc = selective_score(
                spread if SCORE_INPUTS[selective] == "samples" else probs, selective
            )
            row["sel/aurc"] = aurc(errors, unc)
            row["sel/eaurc"] = eaurc(errors, unc)
            report.risk_coverage[float(w)] = risk_coverage(errors, unc)
        if alphas:
            pv, targets_val = predict_loader(
                model, counted(splits.val, " val", w), w, samples, device
            )
            set_probs["val"].append(mean_probs(apply_temperature(pv, t)))
            set_probs["test"].append(mean_probs(probs))
        if ood_sets:
            in_scores = scores_of(probs, spread, logits)
            for name, ds in ood_sets.items():
                out_probs, out_logits, _ = predicted(ds, f" ood {name}", w)
                out_spread = out_probs
                if temperatures:  # the same calibrated prediction as the in-distribution scores
                    tempered = apply_temperature(out_probs, t)
                    out_spread = tempered if tempered.shape[0] == out_probs.shape[0] else out_probs
                    out_probs = tempered
                out_scores = scores_of(out_probs, out_spread, out_logits)
                for s, sc_in in in_scores.items():
                    for k, v in ood_metrics(sc_in, out_scores[s]).items():
                        row[f"ood/{name}/{s}/{k.split('/', 1)[1]}"] = v
        row["cost/flops"] = float(count_flops(model, x0, w))
        report.rows[float(w)] = row
    bar.close()
    if alphas:
        _add_sets(
            report, set_probs, targets_val, targets, widths, alphas, set_score, nested_sets, seed
        )
    return report


def _add_sets(report, probs, y_val, y_test, widths, alphas, score, nested, seed) -> None:

    for a in alphas:
        makers = [("", conformal_sets)] + ([("/nested", nested_conformal_sets)] if nested else [])
        for suffix, make in makers:
            res = make(probs["val"], y_val, probs["test"], widths, a, score, seed=seed)
            for w, m in res.metrics(y_test).items():
                report.rows[float(w)][f"set/{a:g}{suffix}/coverage"] = m["coverage"]
                report.rows[float(w)][f"set/{a:g}{suffix}/size"] = m["size"]


def evaluate_widths(
    model: NestedModel,
    dataset,
    widths: list[float],
    samples: int = 1,
    n_bins: int = 15,
    batch_size: int = 512,
    device: str | torch.device | None = None,
    temperatures: Mapping[float, float] | None = None,
) -> Report:
    """Classification and calibration metrics only, on one dataset (no OOD, no FLOPs);
    temperature-scaled per width when ``temperatures`` is given."""
    report = Report(meta={"samples": samples, "ece_bins": n_bins, "n": len(dataset)})
    for w in widths:
        probs, targets = predict_loader(model, _loader(dataset, batch_size), w, samples, device)
        probs = apply_temperature(probs, temperature_for(temperatures, w))
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
