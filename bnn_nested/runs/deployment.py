"""Deployment decisions for a run directory: the candidates ``bnn-nested select`` ranks and the
cascade ``bnn-nested cascade`` builds, with their caches in the run directory.

The decision rules themselves live in :mod:`bnn_nested.deploy` and work on plain models and
tensors; this module only loads the run, re-estimates batch norm per width and applies the run's
stored temperatures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from bnn_nested.config import LATENCY_MODES, check_choice
from bnn_nested.cost import count_flops
from bnn_nested.deploy.cache import drop_entries, note, read_cache, write_cache, written_at
from bnn_nested.deploy.cascade import CascadeReport, CascadeScore, cascade_report
from bnn_nested.deploy.profile import PROFILE_FILE, profile_widths
from bnn_nested.deploy.select import VAL_METRICS_FILE, Candidate
from bnn_nested.evaluation.ood import check_scores
from bnn_nested.evaluation.report import evaluate_widths
from bnn_nested.io import is_number
from bnn_nested.runs.loaded import load_run

__all__ = ["cascade_run", "run_candidates"]


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
    allow_import: bool = False,
    remeasure: bool = False,
) -> list[Candidate]:
    """Candidates for a trained run: costs from :func:`~bnn_nested.deploy.profile.profile_widths`
    and validation accuracy/ECE from ``evaluate_widths`` on ``run.splits.val``; both cached in the
    run directory (``deploy/profile.json``, ``deploy/val_metrics.json``). ``latency_mode`` is
    ``profile_widths``'s ``mode`` (``"exported"`` times the module a deployment would run).
    With ``temperature`` the run's stored temperatures (``calibration/temperature.json``) scale
    the validation probabilities first (the ECE is then the calibrated one).
    Both caches are keyed by the run's checkpoint (:mod:`bnn_nested.deploy.cache`): after the run
    changed (e.g. ``--resume`` finished it) they are recomputed. ``loaded``: the
    :class:`~bnn_nested.runs.loaded.LoadedRun` of ``run_dir`` if the caller has it already;
    ``allow_import``: :func:`~bnn_nested.runs.loaded.load_run`'s.

    Latencies are timed once and then replayed from the cache, with a note on stderr saying when
    they were measured (a timing taken on a busy machine would otherwise be kept silently);
    ``remeasure`` drops the cached timings of this checkpoint and times the widths again.
    """
    check_choice("latency_mode", latency_mode, LATENCY_MODES)  # before the validation pass

    run = loaded if loaded is not None else load_run(run_dir, allow_import=allow_import)
    require_val(run, run_dir, "select ranks widths by validation accuracy")
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
        run.recalibrate_bn(missing)
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
    profile_path = run_dir / PROFILE_FILE
    if remeasure and latency:
        drop_entries(profile_path, run.checkpoint_id, _timed)
    before = read_cache(profile_path, run.checkpoint_id) if latency else {}
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
    if latency:
        timed = [c.to_dict() for c in costs]
        replayed = [e for e in before.values() if e.get("costs") == timed]
        if replayed:
            note(
                f"latencies replayed from {profile_path}, measured {written_at(replayed[0])}; "
                "pass --remeasure (remeasure=True) to time the widths again"
            )
    return [
        Candidate(
            c.width,
            c.flops,
            c.params,
            rows[f"{c.width:g}"]["cls/acc"],
            rows[f"{c.width:g}"]["cal/ece"],
            c.latency_ms,
            c.latency_iqr_ms,
        )
        for c in costs
    ]


def require_val(run: Any, run_dir: str | Path, why: str) -> None:
    """Refuse (one line) a run whose data has no validation split, saying ``why`` it is needed."""
    if not run.splits.has_val:
        raise ValueError(
            f"{run_dir}: its data set {run.config.data.name!r} has no validation split (the "
            f"loader returned none); {why}"
        )


def _timed(entry: dict[str, Any]) -> bool:
    """A profile cache entry holding latencies (what ``remeasure`` drops)."""
    return bool(entry["settings"]["latency"])


def _rows_valid(entry: dict[str, Any]) -> bool:
    """A cached validation entry: ``{"rows": {width: {"cls/acc": p, "cal/ece": e, ...}}}`` with
    accuracy and ECE numbers in [0, 1] (else it is recomputed)."""
    rows = entry["rows"]
    return isinstance(rows, dict) and all(
        isinstance(r, dict)
        and all(is_number(r.get(k), finite=True) and 0 <= r[k] <= 1 for k in ("cls/acc", "cal/ece"))
        for r in rows.values()
    )


def cascade_run(
    run_dir,
    widths: Sequence[float] | None = None,
    samples: int | None = None,
    target_accuracy: float | None = None,
    max_flops: float | None = None,
    score: CascadeScore = "msp",
    alpha: float = 0.1,
    temperature: bool = True,
    allow_import: bool = False,
) -> CascadeReport:
    """:func:`cascade_report` for a run directory (``bnn-nested cascade RUN``): widths default to
    ``eval.widths``, samples to ``eval.samples``; the run's stored temperatures are applied when
    ``temperature``; FLOPs per width from :func:`~bnn_nested.cost.count_flops`; ``allow_import``:
    :func:`~bnn_nested.runs.loaded.load_run`'s."""
    run = load_run(run_dir, allow_import=allow_import)
    check_scores([score], "--score", probabilities=True)  # a user's, registered by its imports
    require_val(run, run_dir, "cascade chooses its threshold on validation data")
    widths = sorted(float(w) for w in (widths or run.config.eval.widths))
    if len(widths) < 2:  # from the run's eval.widths: say where they came from
        raise ValueError(
            f"{run_dir}: eval.widths has one width ({widths[0]:g}); a cascade needs at least two "
            "widths: give them with --widths, e.g. --widths 0.5,1"
        )
    samples = samples or run.config.eval.samples
    if score == "mutual_information" and samples < 2:
        raise ValueError("score 'mutual_information' needs samples > 1 (it is 0 for one sample)")
    run.recalibrate_bn(widths)
    if score == "mutual_information" and run.samples_identical(max(widths)):
        raise ValueError(
            "--score mutual_information: the model's Monte-Carlo samples are identical (point "
            "weights, no dropout); it would be float noise"
        )
    temps = run.temperatures() if temperature else {}
    bs = run.config.data.eval_batch_size
    x0 = run.splits.val[0][0].unsqueeze(0)
    flops = [float(count_flops(run.model, x0, w)) for w in widths]
    rep = cascade_report(
        run.model,
        DataLoader(run.splits.val, batch_size=bs),
        DataLoader(run.splits.test, batch_size=bs),
        widths,
        flops,
        samples,
        temps or None,
        target_accuracy,
        max_flops,
        score,
        alpha,
        run.config.eval.ece_bins,
    )
    rep.meta["run"] = str(run_dir)
    return rep
