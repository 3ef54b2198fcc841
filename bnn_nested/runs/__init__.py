"""A run directory's life: train, resume, load, re-estimate batch norm per width, and the
deployment decisions (select candidates, cascade) taken on a run."""

from __future__ import annotations

from bnn_nested.runs.deployment import cascade_run, run_candidates
from bnn_nested.runs.run import LoadedRun, load_run, recalibrate_bn_widths, resume_run, train_run
from bnn_nested.runs.rundir import RunExistsError, RunLock, RunLockedError

__all__ = [
    "LoadedRun",
    "RunExistsError",
    "RunLock",
    "RunLockedError",
    "cascade_run",
    "load_run",
    "recalibrate_bn_widths",
    "resume_run",
    "run_candidates",
    "train_run",
]
