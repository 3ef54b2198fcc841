"""A run directory's life: train, resume, load, re-estimate batch norm per width, the
deployment decisions (select candidates, cascade) taken on a run, and the shareable pretrained
directory (safetensors + config.json) made from one."""

from __future__ import annotations

from bnn_nested.runs.batchnorm import recalibrate_bn_widths
from bnn_nested.runs.deployment import cascade_run, run_candidates
from bnn_nested.runs.loaded import LoadedRun, load_run
from bnn_nested.runs.pretrained import (
    Pretrained,
    PretrainedError,
    from_pretrained,
    from_run,
    save_pretrained,
)
from bnn_nested.runs.run import resume_run, train_run
from bnn_nested.runs.rundir import RunExistsError, RunLock, RunLockedError

__all__ = [
    "LoadedRun",
    "Pretrained",
    "PretrainedError",
    "RunExistsError",
    "RunLock",
    "RunLockedError",
    "cascade_run",
    "from_pretrained",
    "from_run",
    "load_run",
    "recalibrate_bn_widths",
    "resume_run",
    "run_candidates",
    "save_pretrained",
    "train_run",
]
