"""bnn_nested: Bayesian nested (slimmable) neural networks.

The objects most programs need are importable from the top level, as pyro and timm do; each is
imported on first use (``import bnn_nested`` itself does not import torch)::

    import bnn_nested as bn

    model = bn.nestify(torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 32, 32))
    cfg = bn.build_config({"ordering": {"sampler": "vou"}})
    trainer = bn.Trainer(model, cfg, n_train=len(train_set))
    probs = bn.predict(model, x, width=0.5, samples=8)      # (S, B, C)
    run = bn.load_run("runs/my_run")                          # a run the CLI trained
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

#: top-level name -> (module, attribute): the front door (docs/ARCHITECTURE.md)
_EXPORTS: dict[str, tuple[str, str]] = {
    "nestify": ("bnn_nested.nest", "nestify"),
    "NestifiedModel": ("bnn_nested.nest", "NestifiedModel"),
    "build_config": ("bnn_nested.config", "build_config"),
    "Config": ("bnn_nested.config", "Config"),
    "Trainer": ("bnn_nested.training.trainer", "Trainer"),
    "NegativeELBO": ("bnn_nested.training.objective", "NegativeELBO"),
    "train_run": ("bnn_nested.runs.run", "train_run"),
    "resume_run": ("bnn_nested.runs.run", "resume_run"),
    "load_run": ("bnn_nested.runs", "load_run"),
    "from_pretrained": ("bnn_nested.runs", "from_pretrained"),
    "save_pretrained": ("bnn_nested.runs", "save_pretrained"),
    "evaluate": ("bnn_nested.evaluation.report", "evaluate"),
    "predict": ("bnn_nested.evaluation.prediction", "predict"),
    "export_width": ("bnn_nested.deploy", "export_width"),
    "register_model": ("bnn_nested.models.registry", "register_model"),
    "register_dataset": ("bnn_nested.data", "register_dataset"),
    "register_sampler": ("bnn_nested.training.samplers", "register_sampler"),
    "register_score": ("bnn_nested.evaluation.ood", "register_score"),
}

__all__ = ["__version__", *_EXPORTS]


def _version() -> str:
    try:
        return metadata.version("bnn-nested")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return "0+unknown"


__version__ = _version()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'bnn_nested' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
