"""Run directories: training and loading runs (:mod:`bnn_nested.runs.run`), their on-disk rules
(:mod:`bnn_nested.runs.rundir`), deployment on a run (:mod:`bnn_nested.runs.deployment`) and the
shareable pretrained directory (:mod:`bnn_nested.runs.pretrained`)."""

from bnn_nested.runs.pretrained import (
    Pretrained,
    PretrainedError,
    from_pretrained,
    from_run,
    save_pretrained,
)

__all__ = ["Pretrained", "PretrainedError", "from_pretrained", "from_run", "save_pretrained"]
