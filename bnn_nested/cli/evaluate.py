"""``bnn-nested evaluate RUN``: per-width report (classification, calibration, OOD, FLOPs, and
temperature scaling / conformal sets / selective prediction: :mod:`bnn_nested.cli.uncertainty`).

Writes ``RUN/report.json``, ``RUN/report.md`` and ``RUN/plots/*.png`` atomically
(``--calibrate temperature`` also ``RUN/calibration/temperature.json``); with ``--out DIR`` the
report goes to ``DIR`` and nothing is written into the run (a read-only or shared run). ``DIR``
must be new, empty, or a folder an earlier ``evaluate --out`` wrote (it holds :data:`MARKER`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bnn_nested.cli import uncertainty
from bnn_nested.cli.common import (
    UsageError,
    add_allow_import_argument,
    bounded_int,
    note_unfinished,
    parse_widths,
    precheck_scores,
)
from bnn_nested.config import DEFAULT_OOD_SCORES, MAX_SAMPLES
from bnn_nested.io import FileWriteError, atomic_write_json
from bnn_nested.threads import add_threads_argument, apply_threads

#: Written into an ``--out`` folder first: only a folder holding it is written again.
MARKER = ".bnn-nested-report"


def _names(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def drop_mutual_information(args, scores: list[str]) -> list[str]:
    """``scores`` without mutual information, for a model whose samples are identical; asked for
    by name (``--scores``, ``--selective-score``) it is refused: it would be float noise."""
    why = "the model's Monte-Carlo samples are identical (point weights, no dropout)"
    if args.scores and "mutual_information" in args.scores:
        raise UsageError(f"--scores mutual_information: {why}; it would be float noise")
    if args.selective_score == "mutual_information":
        raise UsageError(f"--selective-score mutual_information: {why}; it would be float noise")
    return [s for s in scores if s != "mutual_information"]


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="per-width report of a trained run")
    e.add_argument("run", help="run directory written by `bnn-nested train`")
    e.add_argument("--widths", type=parse_widths, default=None, help="e.g. 0.25,0.5,1.0")
    e.add_argument("--samples", type=int, default=None, help="Monte-Carlo samples per input")
    e.add_argument(
        "--ood",
        type=_names,
        default=[],
        help="OOD sets: gaussian, uniform, patches, heldout (needs data.held_out_classes at "
        "training), or a torchvision name (svhn)",
    )
    e.add_argument(
        "--scores",
        type=_names,
        default=None,
        help="OOD scores (higher = more OOD): entropy, mutual_information, msp, max_logit, "
        "energy, expected_entropy, or one registered by a module in the run's imports",
    )
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    e.add_argument(
        "--out",
        default=None,
        help="write report.json, report.md and plots/ here instead of into the run (which is then "
        "left untouched, e.g. a read-only run); a new or empty folder, or one evaluate --out wrote",
    )
    uncertainty.add_arguments(e)
    add_threads_argument(e)
    add_allow_import_argument(e)
    e.set_defaults(handler=run)


def check_out(out: Path) -> None:
    """Refuse ``--out`` unless evaluate may write it: missing, an empty folder, or one an earlier
    ``evaluate --out`` wrote (it holds :data:`MARKER`). Touches nothing."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder; choose another --out")
    if out.is_dir() and next(out.iterdir(), None) is not None and not (out / MARKER).is_file():
        raise UsageError(
            f"--out: {out} already exists and was not written by evaluate --out (no {MARKER}); "
            "evaluate does not replace files it did not write; choose another --out"
        )


def run(args) -> int:
    bounded_int("--samples", args.samples, 1, MAX_SAMPLES)
    if args.out is not None:
        if not args.out.strip():  # Path("") would be the current folder
            raise UsageError("--out: empty path; name the folder to write the report to")
        check_out(Path(args.out))
        if args.calibrate == "temperature":
            raise UsageError(
                "--calibrate temperature stores the temperatures in the run; use it without --out"
            )
    scores = args.scores or list(DEFAULT_OOD_SCORES)
    precheck_scores(scores, "--scores", args.allow_import)
    uncertainty.check(args)
    apply_threads(args.threads)
    from bnn_nested.evaluation.ood import (
        check_scores,  # deferred: imports torch; --help and usage errors stay fast
    )
    from bnn_nested.evaluation.report import (
        evaluate,  # deferred: imports torch; --help and usage errors stay fast
    )
    from bnn_nested.runs.loaded import (
        load_run,  # deferred: imports torch; --help and usage errors stay fast
    )

    run_dir = Path(args.run)
    loaded = load_run(run_dir, allow_import=args.allow_import)
    check_scores(scores, "--scores")  # after the run's imports, which may register scores
    note_unfinished(loaded, run_dir)
    cfg = loaded.config
    if args.split == "val" and not loaded.splits.has_val:
        raise UsageError(
            f"{run_dir}: its data set {cfg.data.name!r} has no validation split; --split val "
            "has nothing to evaluate (use --split test)"
        )
    widths = args.widths or cfg.eval.widths
    samples = args.samples or cfg.eval.samples
    loaded.recalibrate_bn(widths)
    if samples > 1 and loaded.samples_identical(max(widths)):
        scores = drop_mutual_information(args, scores)
        print(
            f"bnn-nested: note: {run_dir}'s model is deterministic (point weights, no dropout): its "
            f"{samples} Monte-Carlo samples are identical, so mutual information (0 up to float "
            "rounding) is not reported",
            file=sys.stderr,
        )
    extra, notes = uncertainty.evaluate_kwargs(args, loaded, run_dir, widths, samples)
    report = evaluate(
        loaded.model,
        loaded.splits,
        widths,
        samples=samples,
        ood=args.ood,
        scores=scores,
        n_bins=cfg.eval.ece_bins,
        batch_size=cfg.data.eval_batch_size,
        split=args.split,
        progress=True,
        seed=cfg.seed,
        root=cfg.data.root,
        **extra,
    )
    report.meta.update(
        run=str(run_dir),
        data=cfg.data.name,
        sampler=cfg.ordering.sampler,
        model=cfg.model.name,
        weight_posterior=cfg.model.weight_posterior,
    )
    out = run_dir
    if args.out is not None:
        out = Path(args.out)
        check_out(out)  # again: the evaluation may have taken a while
        atomic_write_json(out / MARKER, {"tool": "bnn-nested", "kind": "report"})
    try:
        written = report.write(out, plots=not args.no_plots)
    except FileWriteError as err:
        hint = "; evaluate --out DIR writes the report elsewhere" if args.out is None else ""
        raise FileWriteError(err.errno, f"{err.strerror}{hint}") from None
    print(
        f"{cfg.data.name} {args.split} set, {cfg.model.name} / {cfg.ordering.sampler}, "
        f"{samples} sample(s)"
    )
    for line in notes:
        print(line)
    print(report.table())
    warnings = report.warnings()
    for line in warnings:
        print(f"bnn-nested: warning: {line}", file=sys.stderr)
    if warnings:
        print(
            "bnn-nested: warning: an AUROC below 0.5 means the score is reversed on that set; "
            "see report.md",
            file=sys.stderr,
        )
    print(
        f"written: {written['json']}, {written['md']}"
        + ("" if args.no_plots else f", {out / 'plots'}/")
    )
    return 0
