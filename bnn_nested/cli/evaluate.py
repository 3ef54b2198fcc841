"""``bnn-nested evaluate RUN``: per-width report of a trained run."""

from __future__ import annotations

from pathlib import Path

from bnn_nested.cli.common import UsageError, parse_widths


def add_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="per-width report of a trained run")
    e.add_argument("run", help="run directory written by `bnn-nested train`")
    e.add_argument("--widths", type=parse_widths, default=None, help="e.g. 0.25,0.5,1.0")
    e.add_argument("--samples", type=int, default=None, help="Monte-Carlo samples per input")
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.set_defaults(handler=run)


def run(args) -> int:
    from bnn_nested.evaluation.evaluate import evaluate_widths
    from bnn_nested.io import atomic_write_json
    from bnn_nested.training.run import load_run

    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    run = load_run(args.run)
    cfg = run.config
    widths = args.widths or cfg.eval.widths
    samples = args.samples or cfg.eval.samples
    data = run.splits.test if args.split == "test" else run.splits.val
    report = evaluate_widths(run.model, data, widths, samples, cfg.eval.ece_bins,
                             cfg.data.eval_batch_size)
    report.meta.update(run=str(args.run), split=args.split, data=cfg.data.name,
                       sampler=cfg.ordering.sampler)
    path = atomic_write_json(Path(args.run) / "report.json", report.to_dict())
    print(f"{cfg.data.name} {args.split} set, sampler {cfg.ordering.sampler}, {samples} sample(s)")
    print(report.table())
    print(f"written: {path}")
    return 0


