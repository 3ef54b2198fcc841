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
from pathlib import Path
from typing import Any

from bnn_nested.deploy.cache import read_cache, write_cache
from bnn_nested.io import is_number

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
    lat = c.latency_ms if c.latency_ms is not None else 0.0
    return (c.flops, lat, c.params, c.width)


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
    lat = f", {c.latency_ms:.3g} ms latency" if c.latency_ms is not None else ""
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
        best = min(feasible, key=lambda c: (-c.accuracy, *_cost_key(c)))
        cheaper = [c for c in feasible if _cost_key(c) < _cost_key(best)]
        text = (
            f"Selected {_describe(best)}. Under {limits}, {len(feasible)} of {len(candidates)} "
            f"widths fit; this one has the highest validation accuracy among them"
        )
        if cheaper:
            cheapest = min(cheaper, key=_cost_key)
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


# --------------------------------------------------------------------------- runs


def run_candidates(
    run_dir: str | Path,
    widths: Sequence[float] | None = None,
    samples: int | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    latency: bool = True,
    repeats: int = 20,
    latency_mode: str = "sliced",
    temperature: bool = True,
    loaded: Any = None,
) -> list[Candidate]:
    """Candidates for a trained run: costs from :func:`~bnn_nested.deploy.profile.profile_widths`
    and validation accuracy/ECE from ``evaluate_widths`` on ``run.splits.val``; both cached in the
    run directory (``deploy/profile.json``, ``deploy/val_metrics.json``). ``latency_mode`` is
    ``profile_widths``'s ``mode`` (``"exported"`` times the module a deployment would run).
    With ``temperature`` the run's stored temperatures (``calibration/temperature.json``) scale
    the validation probabilities first (the ECE is then the calibrated one).
    Both caches are keyed by the run's checkpoint (:mod:`bnn_nested.deploy.cache`): after the run
    changed (e.g. ``--resume`` finished it) they are recomputed. ``loaded``: the
    :class:`~bnn_nested.training.run.LoadedRun` of ``run_dir`` if the caller has it already.
    """
    from bnn_nested.deploy.profile import LATENCY_MODES, profile_widths
    from bnn_nested.evaluation.evaluate import evaluate_widths
    from bnn_nested.training.run import load_run

    # profile_widths checks it too, but only after the validation pass has been evaluated
    if latency_mode not in LATENCY_MODES:
        raise ValueError(f"latency_mode must be one of {LATENCY_MODES}, got {latency_mode!r}")

    run = loaded if loaded is not None else load_run(run_dir)
    cfg = run.config
    widths = list(widths or cfg.eval.widths)
    samples = samples or cfg.eval.samples
    run_dir = Path(run_dir)
    cache_path = run_dir / VAL_METRICS_FILE
    cache = read_cache(cache_path, run.checkpoint_id, _rows_valid)
    temps = run.temperatures() if temperature else {}
    key = f"samples={samples},bins={cfg.eval.ece_bins}"
    if temps:
        key += ",T=" + ",".join(f"{w:g}:{t:.6g}" for w, t in sorted(temps.items()))
    rows = dict(cache.get(key, {}).get("rows", {}))
    missing = [w for w in widths if f"{w:g}" not in rows]
    if missing:
        run.calibrate(missing)
        report = evaluate_widths(
            run.model,
            run.splits.val,
            missing,
            samples,
            cfg.eval.ece_bins,
            cfg.data.eval_batch_size,
            temperatures=temps,
        )
        rows.update({f"{w:g}": m for w, m in report.rows.items()})
        cache[key] = {"rows": rows}
        write_cache(cache_path, run.checkpoint_id, cache)
    example = run.splits.val[0][0].unsqueeze(0)
    costs = profile_widths(
        run.model,
        example,
        widths,
        batch_size=batch_size,
        threads=threads,
        latency=latency,
        repeats=repeats,
        mode=latency_mode,  # type: ignore[arg-type]
        cache_dir=run_dir,
        checkpoint=run.checkpoint_id,
    )
    return [
        Candidate(
            c.width,
            c.flops,
            c.params,
            rows[f"{c.width:g}"]["cls/acc"],
            rows[f"{c.width:g}"]["cal/ece"],
            c.latency_ms,
        )
        for c in costs
    ]


def _rows_valid(entry: dict[str, Any]) -> bool:
    """A cached validation entry: ``{"rows": {width: {"cls/acc": p, "cal/ece": e, ...}}}`` with
    accuracy and ECE numbers in [0, 1] (else it is recomputed)."""
    rows = entry["rows"]
    return isinstance(rows, dict) and all(
        isinstance(r, dict)
        and all(is_number(r.get(k), finite=True) and 0 <= r[k] <= 1 for k in ("cls/acc", "cal/ece"))
        for r in rows.values()
    )


def selection_dict(sel: Selection) -> dict[str, Any]:
    return {
        "ok": sel.ok,
        "chosen": asdict(sel.chosen) if sel.chosen else None,
        "nearest": asdict(sel.nearest) if sel.nearest else None,
        "explanation": sel.explanation,
    }
