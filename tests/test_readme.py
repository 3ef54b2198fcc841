"""Every command and Python snippet of README.md runs as written, on a fresh run.

Commands and snippets are extracted from the file, so a README edit is tested without touching
this file. Shell blocks: each command line (continuations joined, ``# comments`` dropped) runs
with ``runs/NAME`` (and ``runs/A``, ``runs/B``, ``runs/mine``) mapped to a fresh one-epoch run in
a temporary folder (before ``--resume`` its checkpoint is removed, as if killed before the first
one, so that there is something to continue). Synopsis lines run twice: with every ``[optional part]`` removed (must exit
0) and with the optional parts spelled out (``a|b`` -> ``a``, ``--flag ...`` dropped; must not be
bad input, exit 0 or 1, since e.g. ``--min-accuracy 0.95`` may not be met after one epoch).
Python blocks run in order in one fresh interpreter (they continue one session). A command this
test cannot run is listed in :data:`SKIP` with the reason; any other new command fails here until
it runs or is listed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: Commands not run here (matched on their start), each with the reason.
SKIP = {
    "make demo": "installs and trains 30 epochs; the same train/evaluate commands run here",
    "make test": "runs this test suite (recursion)",
    "torchrun --nproc_per_node=2": "2-process training: tests/training/test_distributed.py",
    "torchrun --nproc_per_node=gpu": "needs CUDA GPUs",
    "tensorboard --logdir": "starts a web server; the event files: tests/training/test_tensorboard.py",
    "bnn-nested train --config configs/mnist5k_lenet.yaml --out runs/ft --init-from": (
        "needs a trained plain LeNet; the same path runs in examples/from_trained.py "
        "(tests/test_examples.py)"
    ),
}
#: Commands that may exit 1 ("target not reached on validation data"), a valid answer for a
#: one-epoch run; 2 (bad input) never is. (``select``'s README example must choose a width.)
MAY_NOT_FIT = ("bnn-nested cascade",)


def blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block of ``text``."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def shell_commands(text: str) -> list[str]:
    """Command lines of the non-Python blocks: continuations joined, comments dropped."""
    out = []
    for lang, body in blocks(text):
        if lang == "python":
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            line = re.split(r"\s#\s|^#", line, maxsplit=1)[0].strip()
            if line:
                if line.startswith("[") and out:  # a synopsis continued on the next line
                    out[-1] += " " + line
                else:
                    out.append(line)
    return out


def python_snippets(text: str) -> list[str]:
    return [body for lang, body in blocks(text) if lang == "python"]


def variants(cmd: str) -> list[tuple[str, bool]]:
    """``(command, must_succeed)``: without the optional parts (must exit 0) and, when it has
    any, with them spelled out (exit 0 or 1)."""
    base = re.sub(r"\s*\[[^\]]*\]", "", cmd)
    base = base.split(" | ")[0]
    if base == cmd:
        return [(cmd, True)]
    full = []
    tokens = cmd.replace("[", " ").replace("]", " ").split()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t == "|":  # an alternative: drop it and its value
            i += 3
            continue
        if i + 1 < len(tokens) and tokens[i + 1] == "...":
            i += 2
            continue
        full.append(t.split("|")[0] if "|" in t else t)
        i += 1
    return [(base, True), (" ".join(full), False)]


@pytest.fixture(scope="module")
def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BNN_NESTED_LOG_INTERVAL="1")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _run(argv: list[str], cwd: Path, env, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_extraction_finds_the_readme_commands():
    text = README.read_text()
    cmds = shell_commands(text)
    assert any(c.startswith("bnn-nested select") for c in cmds)
    assert any(c.startswith("bnn-nested evaluate") and "--ood" in c for c in cmds)
    assert any("--resume" in c for c in cmds)
    assert len(python_snippets(text)) >= 4
    assert variants("bnn-nested x R [--a 1] [--m sliced|masked] [--w ...] --b 2 | --c 3") == [
        ("bnn-nested x R --b 2", True),
        ("bnn-nested x R --a 1 --m sliced --b 2", False),
    ]


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    """Every command of README.md on a fresh one-epoch digits run (see the module docstring)."""
    from bnn_nested.cli.main import main

    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    os.symlink(REPO / "configs", work / "configs")
    monkeypatch.chdir(work)
    unknown, ran = [], []
    for cmd in shell_commands(README.read_text()):
        if any(cmd.startswith(k) for k in SKIP):
            continue
        if not cmd.startswith("bnn-nested "):
            unknown.append(cmd)
            continue
        for text, must in variants(cmd):
            text = text.replace("train.epochs=5", "train.epochs=1")
            if text.startswith("bnn-nested train --config"):
                if "--set train.epochs" not in text:
                    text += " --set train.epochs=1"
                text += " --overwrite"
            if "--resume runs/NAME" in text:  # unfinish it: killed before its first checkpoint
                (work / "runs" / "NAME" / "checkpoint.pt").unlink()
            if " runs/B" in text and not (work / "runs" / "B").exists():
                shutil.copytree(work / "runs" / "NAME", work / "runs" / "B")
            argv = [a.replace("runs/A", "runs/NAME") for a in shlex.split(text)[1:]]
            code = main(argv)  # in this process: one torch import for all commands
            out, err = capsys.readouterr()
            ok = {0} if must and not text.startswith(MAY_NOT_FIT) else {0, 1}
            assert code in ok, (
                f"README command failed (exit {code}): {text}\n{out[-1500:]}\n{err[-1500:]}"
            )
            ran.append(text)
    assert not unknown, f"README commands neither run here nor in SKIP: {unknown}"
    assert any(r.startswith("bnn-nested select") for r in ran)
    # the README's select example chooses a width (exit 0 above) and the run can be compared
    assert (work / "runs" / "compare" / "compare.json").is_file()


@pytest.mark.slow
def test_readme_python_snippets_run(tmp_path, env):
    """The Python blocks of README.md in order, in one fresh interpreter (training 1 epoch)."""
    parts = []
    for i, code in enumerate(python_snippets(README.read_text())):
        code = code.replace(
            'load_config("configs/digits_mlp.yaml")',
            f'load_config({str(REPO / "configs/digits_mlp.yaml")!r}, ["train.epochs=1"])',
        )
        parts.append(f"print('--- README python block {i + 1}', flush=True)\n{code}")
    res = _run([sys.executable, "-c", "\n".join(parts)], tmp_path, env)
    blocks_done = re.findall(r"--- README python block (\d+)", res.stdout)
    assert res.returncode == 0, (
        f"README python block {blocks_done[-1] if blocks_done else '?'} failed:\n"
        f"{res.stdout[-1500:]}\n{res.stderr[-2500:]}"
    )
    assert (tmp_path / "runs" / "mine" / "report.json").is_file()
    assert (tmp_path / "w050.pt").is_file() and (tmp_path / "w050.pt2").is_file()
