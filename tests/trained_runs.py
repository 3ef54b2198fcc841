"""A tiny trained run shared by the hardening tests (digits, MLP [16], one epoch: about a second).

Tests that change a run work on a copy (:func:`copy_run`), never on the template.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import yaml

from bnn_nested.cli.main import main

TINY = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [16], "groups": 4, "kept": 1},
    "ordering": {"sampler": "vou"},
    "train": {"epochs": 1, "device": "cpu"},
    "eval": {"widths": [0.5, 1.0]},
}


def write_config(path: Path, **sections) -> Path:
    """``TINY`` with ``sections`` merged in (one level deep), written as YAML."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_tiny(out: Path, *extra: str, cfg: Path | None = None) -> int:
    """``bnn-nested train`` of the tiny config into ``out``; returns the exit status."""
    if cfg is None:
        cfg = write_config(out.parent / f"{out.name}.yaml")
    return main(["train", "--config", str(cfg), "--out", str(out), "--quiet", *extra])


def copy_run(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def tree_digest(root: Path) -> str:
    """Hash of every path, file mode and file content under ``root`` (and ``root`` itself)."""
    h = hashlib.sha256()
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        h.update(f"{p.relative_to(root.parent)}|{st.st_mode}|".encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()
