"""Choose the width to deploy under a compute budget.

Rule: among the widths that satisfy *every* constraint, take the one with the highest validation
accuracy; ties go to the cheaper width (fewer FLOPs, then lower latency, then fewer parameters, then
narrower). If nothing fits, say so and name the *nearest* option: the width with the smallest total
relative violation ``sum_k max(0, value_k / limit_k - 1)`` (for a minimum: ``limit_k / value_k - 1``).

Example::

    sel = select_width(candidates, Constraints(max_flops=2e5, min_accuracy=0.9))
    print(sel.explanation); sel.chosen.width if sel.ok else None
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

#: Validation-metric cache inside a run directory.
VAL_METRICS_FILE = "deploy/val_metrics.json"


@dataclass(frozen=True)
class Candidate:
    """One width with its costs (FLOPs = 2 x MACs and params per example; latency per batch, ms)
    and validation metrics."""

    width: float
    flops: float
    params: float
    accuracy: float
    ece: float
    latency_ms: float | None = None
    #: interquartile range of the timed passes (ms): latencies closer than this are not ranked
    latency_iqr_ms: float | None = None


@dataclass(frozen=True)
class Constraints:
    """Upper bounds on cost/ECE and a lower bound on accuracy; ``None`` = unconstrained."""

    max_flops: float | None = None
    max_latency_ms: float | None = None
    max_params: float | None = None
    min_accuracy: float | None = None
    max_ece: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(f"{f.name} must be a finite number >= 0 or None, got {v}")

    def active(self) -> dict[str, float]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


#: constraint name -> (candidate attribute, True if it is an upper bound)
_LIMITS: dict[str, tuple[str, bool]] = {
    "max_flops": ("flops", True),
    "max_latency_ms": ("latency_ms", True),
    "max_params": ("params", True),
    "min_accuracy": ("accuracy", False),
    "max_ece": ("ece", True),
}


def violations(c: Candidate, cons: Constraints) -> dict[str, float]:
    """Relative violation per broken constraint (empty dict = feasible).

    Raises:
        ValueError: a latency limit is set but the candidate has no latency.
    """
    out = {}
    for name, limit in cons.active().items():
        attr, upper = _LIMITS[name]
        value = getattr(c, attr)
        if value is None:
            raise ValueError(f"{name}: candidate width {c.width:g} has no {attr} measured")
        if upper and value > limit:
            out[name] = value / limit - 1 if limit > 0 else math.inf
        elif not upper and value < limit:
            out[name] = limit / value - 1 if value > 0 else math.inf
    return out


def _cost_key(c: Candidate) -> tuple:
    """Cheaper first: FLOPs, then params, then width. Latency is not in the key: it is compared
    only where two latencies differ by more than their spread (:func:`latency_differs`)."""
    return (c.flops, c.params, c.width)


def latency_differs(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` and ``b``'s median latencies differ by more than the larger of their
    interquartile ranges (timings of one width vary between passes; a smaller difference is noise
    and does not rank them)."""
    if a.latency_ms is None or b.latency_ms is None:
        return False
    spread = max(a.latency_iqr_ms or 0.0, b.latency_iqr_ms or 0.0)
    return abs(a.latency_ms - b.latency_ms) > spread


def _cheapest(cands: Sequence[Candidate]) -> Candidate:
    """The cheapest candidate: fewest FLOPs; among equal FLOPs, a latency lower by more than the
    spread, then fewer parameters, then narrower."""
    best = min(cands, key=_cost_key)
    for c in cands:
        if c.flops == best.flops and c is not best and latency_differs(c, best):
            if c.latency_ms < best.latency_ms:  # type: ignore[operator]
                best = c
    return best


@dataclass
class Selection:
    """Result of :func:`select_width`: ``chosen`` (or ``None``), ``nearest`` when nothing fits."""

    chosen: Candidate | None
    nearest: Candidate | None
    feasible: list[Candidate]
    explanation: str

    @property
    def ok(self) -> bool:
        return self.chosen is not None


def _describe(c: Candidate) -> str:
    lat = ""
    if c.latency_ms is not None:
        iqr = f" (IQR {c.latency_iqr_ms:.2g})" if c.latency_iqr_ms is not None else ""
        lat = f", {c.latency_ms:.3g} ms latency{iqr}"
    return (
        f"width {c.width:g} ({c.flops:.4g} FLOPs, {c.params:.4g} params{lat}; "
        f"val accuracy {c.accuracy:.4f}, ECE {c.ece:.4f})"
    )


def select_width(candidates: Sequence[Candidate], constraints: Constraints) -> Selection:
    """Best feasible width: highest validation accuracy, ties to the cheaper (see module doc).

    Example::

        select_width(cands, Constraints(max_params=5e4)).chosen
    """
    if not candidates:
        raise ValueError("candidates must contain at least one width")
    cons = constraints.active()
    viol = {c: violations(c, constraints) for c in candidates}
    feasible = [c for c in candidates if not viol[c]]
    limits = ", ".join(f"{k}={v:g}" for k, v in cons.items()) or "no constraints"
    if feasible:
        top = max(c.accuracy for c in feasible)
        best = _cheapest([c for c in feasible if c.accuracy == top])
        cheaper = [c for c in feasible if _cost_key(c) < _cost_key(best)]
        text = (
            f"Selected {_describe(best)}. Under {limits}, {len(feasible)} of {len(candidates)} "
            f"widths fit; this one has the highest validation accuracy among them"
        )
        if cheaper:
            cheapest = _cheapest(cheaper)
            text += (
                f"; the cheapest fitting width {cheapest.width:g} would save "
                f"{1 - cheapest.flops / best.flops:.0%} of the FLOPs at "
                f"{best.accuracy - cheapest.accuracy:.4f} lower accuracy"
            )
        wider = [c for c in candidates if c not in feasible and c.accuracy > best.accuracy]
        if wider:
            w = max(wider, key=lambda c: c.accuracy)
            text += (
                f". Width {w.width:g} would reach {w.accuracy:.4f} but breaks "
                f"{', '.join(sorted(viol[w]))}"
            )
        return Selection(best, None, feasible, text + ".")
    nearest = min(candidates, key=lambda c: (sum(viol[c].values()), -c.accuracy, *_cost_key(c)))
    broken = ", ".join(f"{k} by {v:.1%}" for k, v in sorted(viol[nearest].items()))
    text = (
        f"No width satisfies {limits}. The nearest option is {_describe(nearest)}, which "
        f"breaks {broken}."
    )
    return Selection(None, nearest, [], text)


def selection_dict(sel: Selection) -> dict[str, Any]:
    return {
        "ok": sel.ok,
        "chosen": asdict(sel.chosen) if sel.chosen else None,
        "nearest": asdict(sel.nearest) if sel.nearest else None,
        "explanation": sel.explanation,
    }
