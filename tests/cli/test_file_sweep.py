"""Property-based sweep over every command and every file the tool reads (issue 18, item 9).

Coverage (file -> what reads it):

==========================  =====================================================================
file                        command / function
==========================  =====================================================================
``--config`` YAML           ``train --config F --out RUN``
``RUN/config.yaml``         ``train --resume RUN`` of a run stopped before its first checkpoint
``RUN/.bnn-nested-run``     ``train --config ... --out RUN --overwrite`` (recognising a run)
``RUN/checkpoint.pt``       ``evaluate RUN``, ``select RUN``, ``cascade RUN``,
                            ``export-weights RUN --out DIR``, ``train --resume RUN``
``RUN/calibration/          ``evaluate RUN``, ``select RUN``, ``cascade RUN`` (stored temperatures)
temperature.json``
``RUN/report.json``         ``compare RUN RUN2``
``RUN/deploy/*.json``       ``select RUN`` (validation-metrics and profile caches)
``--init-from`` state dict  ``train --config ... --init-from F``
width-weights export        ``load_width_weights(F)`` (the safe loader for shared files)
the above, under torchrun   ``torchrun --nproc_per_node=2 -m bnn_nested train`` with a bad config,
                            ``--init-from`` file or checkpoint (every rank exits 2, one line)
==========================  =====================================================================

Each file is replaced by random bytes, random JSON / YAML-ish data, or a damaged or edited copy of
the real one. Every outcome must be clean: exit status 0 (or 1 for ``select``: nothing fits), or 2
with exactly one line on stderr starting ``bnn-nested: error:`` (under 600 characters), never a
traceback, never a hang (each call under 30 s), never Python's own words as the reason
(:data:`INTERNALS`, e.g. ``('widths')`` or ``'NoneType' object is not subscriptable``), and the
file that was read is never modified (caches excepted: they are rewritten). ``BNN_SWEEP_EXAMPLES`` raises the number of examples per
target (default 5, to keep ``make test`` fast).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnn_nested.cli.main import main
from bnn_nested.deploy.serialize import (
    UnsafeOrInvalidWeights,
    load_width_weights,
    save_width_weights,
)
from bnn_nested.runs.loaded import load_run
from tests.trained_runs import train_tiny, write_config

EXAMPLES = int(os.environ.get("BNN_SWEEP_EXAMPLES", "5"))
#: Python's own words for a failure inside the code (a KeyError's ``('widths')``, a TypeError's
#: ``'NoneType' object is not subscriptable``): never a reason a user can act on.
INTERNALS = re.compile(
    r"NoneType|not subscriptable|list indices must|invalid literal for|object has no attribute"
    r"|: \('\w+'\)|\(\('\w+'\)\)"
)
SWEEP = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # seeded: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
plain = st.recursive(
    leaf,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished tiny run, evaluated and selected (so every file exists), and its exports."""
    tmp = tmp_path_factory.mktemp("sweep")
    run = tmp / "run"
    cfg = write_config(tmp / "cfg.yaml")
    assert train_tiny(run, cfg=cfg) == 0
    argv = ["evaluate", str(run), "--widths", "0.5,1", "--no-plots"]
    assert main([*argv, "--calibrate", "temperature"]) == 0  # writes calibration/temperature.json
    assert main(["select", str(run), "--widths", "0.5,1"]) == 0
    loaded = load_run(run)
    example = torch.stack([loaded.splits.val[0][0], loaded.splits.val[1][0]])
    save_width_weights(loaded.model, loaded.config, 0.5, example, tmp / "w050.pt")
    torch.save(loaded.model.net.state_dict(), tmp / "plain.pt")
    return tmp


def _damaged(valid: bytes):
    """Strategies deriving bad content from a valid file's bytes."""
    n = max(len(valid), 1)
    truncate = st.integers(0, n - 1).map(lambda i: valid[:i])
    flip = st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=64)).map(
        lambda t: valid[: t[0]] + t[1] + valid[t[0] + len(t[1]) :]
    )
    return st.one_of(truncate, flip)


def _json_edit(valid: bytes):
    """The valid JSON with one value (at a random path) replaced by random data."""
    doc = json.loads(valid)

    @st.composite
    def edit(draw):
        node = doc = json.loads(valid)
        path = []
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            path.append(key)
            node = node[key]
        new = draw(plain)
        if not path:
            return json.dumps(new).encode()
        target = doc
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = new
        return json.dumps(doc, allow_nan=True).encode()

    assert doc is not None
    return edit()


def _contents(valid: bytes, kind: str):
    base = [st.binary(max_size=300), _damaged(valid), st.just(b"")]
    if kind == "json":
        base += [plain.map(lambda v: json.dumps(v).encode()), _json_edit(valid)]
    if kind == "yaml":
        base += [plain.map(lambda v: json.dumps(v).encode()), _yaml_edit(valid)]
    return st.one_of(*base)


def _yaml_edit(valid: bytes):
    import yaml

    doc = yaml.safe_load(valid)

    @st.composite
    def edit(draw):
        raw = json.loads(json.dumps(doc))
        section = draw(st.sampled_from(sorted(raw)))
        if isinstance(raw[section], dict) and raw[section] and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(raw[section])))
            raw[section][key] = draw(plain)
        else:
            raw[section] = draw(plain)
        return yaml.safe_dump(raw).encode()

    return edit()


def _checkpoint_edit(valid: bytes):
    """The real checkpoint with one entry replaced by random plain data (or removed)."""
    state = torch.load(io.BytesIO(valid), weights_only=True)

    @st.composite
    def edit(draw):
        s = dict(state)
        key = draw(st.sampled_from(sorted(s)))
        if draw(st.booleans()):
            del s[key]
        else:
            s[key] = draw(plain)
        buf = io.BytesIO()
        torch.save(s, buf)
        return buf.getvalue()

    return edit()


def _clean(argv: list[str], capsys, ok=(0,)) -> int:
    t0 = time.monotonic()
    rc = main(argv)
    took = time.monotonic() - t0
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err[-2000:]
    assert took < 30, (argv, took)
    if rc in ok:
        return rc
    lines = out.err.strip().splitlines()
    assert rc == 2, (argv, rc, out.err[-1000:])
    errors = [
        ln for ln in lines if not ln.startswith(("bnn-nested: note:", "bnn-nested: warning:"))
    ]
    assert len(errors) == 1 and errors[0].startswith("bnn-nested: error:"), out.err[-1000:]
    assert len(errors[0]) < 600, errors[0]
    assert not INTERNALS.search(errors[0]), errors[0]
    return rc


#: Every command that reads a run directory, on the run at ``run`` (writing only beside it).
RUN_COMMANDS = {
    "evaluate": lambda run: ["evaluate", str(run), "--widths", "1", "--no-plots"],
    "select": lambda run: ["select", str(run), "--widths", "0.5,1"],
    "cascade": lambda run: ["cascade", str(run), "--target-accuracy", "0.5", "--widths", "0.5,1"],
    "export-weights": lambda run: [
        "export-weights",
        str(run),
        "--out",
        str(run.parent / "exported"),
    ],
    "resume": lambda run: ["train", "--resume", str(run), "--quiet"],
}


def _workspace(template: Path) -> tuple[tempfile.TemporaryDirectory, Path]:
    d = tempfile.TemporaryDirectory()
    tmp = Path(d.name)
    shutil.copytree(template / "run", tmp / "run")
    shutil.copy(template / "cfg.yaml", tmp / "cfg.yaml")
    return d, tmp


# -- one test per file: each draws the content, then runs every command that reads it -----------


@pytest.mark.slow
# a checkpoint whose step was edited no longer matches the stored temperatures: a warning, shown
# (one line) as a user sees it, not an error as the suite makes warnings
@pytest.mark.filterwarnings("default:.*fitted on checkpoint step:UserWarning")
def test_sweep_checkpoint(template, capsys):
    valid = (template / "run" / "checkpoint.pt").read_bytes()
    contents = st.one_of(_contents(valid, "binary"), _checkpoint_edit(valid))

    @SWEEP
    @given(data=contents, command=st.sampled_from(sorted(RUN_COMMANDS)))
    def check(data, command):
        d, tmp = _workspace(template)
        with d:
            run = tmp / "run"
            (run / "checkpoint.pt").write_bytes(data)
            rc = _clean(RUN_COMMANDS[command](run), capsys, ok=(0, 1))
            if rc == 2:
                assert (run / "checkpoint.pt").read_bytes() == data  # never modified
                assert not (tmp / "exported").exists()  # nothing written

    check()


@pytest.mark.slow
def test_sweep_temperatures(template, capsys):
    name = "calibration/temperature.json"
    valid = (template / "run" / name).read_bytes()

    @SWEEP
    @given(
        data=_contents(valid, "json"), command=st.sampled_from(["evaluate", "select", "cascade"])
    )
    def check(data, command):
        d, tmp = _workspace(template)
        with d:
            run = tmp / "run"
            (run / name).write_bytes(data)
            _clean(RUN_COMMANDS[command](run), capsys, ok=(0, 1))
            assert (run / name).read_bytes() == data  # read, never rewritten

    check()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deploy/val_metrics.json", "deploy/profile.json"])
def test_sweep_caches(template, capsys, name):
    valid = (template / "run" / name).read_bytes()

    @SWEEP
    @given(data=_contents(valid, "json"))
    def check(data):
        d, tmp = _workspace(template)
        with d:
            run = tmp / "run"
            (run / name).write_bytes(data)
            _clean(["select", str(run), "--widths", "0.5,1"], capsys, ok=(0, 1))

    check()


@pytest.mark.slow
def test_sweep_report(template, capsys):
    valid = (template / "run" / "report.json").read_bytes()

    @SWEEP
    @given(data=_contents(valid, "json"))
    def check(data):
        d, tmp = _workspace(template)
        with d:
            shutil.copytree(tmp / "run", tmp / "other")
            (tmp / "other" / "report.json").write_bytes(data)
            argv = ["compare", str(tmp / "run"), str(tmp / "other"), "--out", str(tmp / "cmp")]
            argv += ["--metrics", "cls/acc"]
            if _clean(argv, capsys) == 2:
                assert not (tmp / "cmp").exists()  # nothing written
            assert (tmp / "other" / "report.json").read_bytes() == data

    check()


@pytest.mark.slow
def test_sweep_config_files(template, capsys):
    valid = (template / "cfg.yaml").read_bytes()

    @SWEEP
    @given(data=_contents(valid, "yaml"), resume=st.booleans())
    def check(data, resume):
        d, tmp = _workspace(template)
        with d:
            run = tmp / "run"
            if resume:  # a run stopped before its first checkpoint starts over from config.yaml
                for p in run.iterdir():
                    if p.name not in (".bnn-nested-run", ".bnn-nested.lock"):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                (run / "config.yaml").write_bytes(data)
                argv = ["train", "--resume", str(run), "--quiet"]
                path = run / "config.yaml"
            else:
                path = tmp / "cfg.yaml"
                path.write_bytes(data)
                argv = ["train", "--config", str(path), "--out", str(tmp / "new"), "--quiet"]
            if _clean(argv, capsys) == 2:
                assert not (tmp / "new").exists()
            assert path.read_bytes() == data

    check()


@pytest.mark.slow
def test_sweep_marker_and_overwrite(template, capsys):
    valid = (template / "run" / ".bnn-nested-run").read_bytes()

    @SWEEP
    @given(data=_contents(valid, "json"), legacy=st.booleans())
    def check(data, legacy):
        d, tmp = _workspace(template)
        with d:
            run = tmp / "run"
            (run / ".bnn-nested-run").write_bytes(data)
            if not legacy:  # then only the marker can say it is a run
                (run / "checkpoint.pt").unlink()
            before = sorted(p.name for p in run.rglob("*"))
            argv = ["train", "--config", str(tmp / "cfg.yaml"), "--out", str(run), "--quiet"]
            if _clean([*argv, "--overwrite"], capsys) == 2:
                assert sorted(p.name for p in run.rglob("*")) == before

    check()


@pytest.mark.slow
def test_sweep_init_from(template, capsys):
    valid = (template / "plain.pt").read_bytes()

    @SWEEP
    @given(data=_contents(valid, "binary"))
    def check(data):
        d, tmp = _workspace(template)
        with d:
            path = tmp / "plain.pt"
            path.write_bytes(data)
            argv = ["train", "--config", str(tmp / "cfg.yaml"), "--out", str(tmp / "new")]
            if _clean([*argv, "--quiet", "--init-from", str(path)], capsys) == 2:
                assert not (tmp / "new").exists()
            assert path.read_bytes() == data

    check()


@pytest.mark.slow
def test_sweep_width_weights(template):
    valid = (template / "w050.pt").read_bytes()
    contents = st.one_of(_contents(valid, "binary"), _checkpoint_edit(valid))

    @SWEEP
    @given(data=contents)
    def check(data):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "w.pt"
            path.write_bytes(data)
            try:
                module = load_width_weights(path)
            except UnsafeOrInvalidWeights as err:
                assert "\n" not in str(err) and len(str(err)) < 600 and str(path) in str(err)
            else:
                assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)

    check()


# -- under torchrun: every rank meets the same bad input; rank 0 alone says why ----------------
ROOT = Path(__file__).parents[2]


def _bad_torchrun_inputs(tmp: Path, template: Path) -> dict[str, list[str]]:
    """Bad inputs of ``train`` launched by torchrun (each case writes only its own files)."""
    import random

    rng = random.Random(0)  # seeded: the same bytes every run
    cases: dict[str, list[str]] = {}
    cfg = tmp / "cfg.yaml"
    junk = tmp / "junk.yaml"
    junk.write_bytes(bytes(rng.randrange(256) for _ in range(200)))
    cases["random bytes as config"] = ["--config", str(junk)]
    typo = tmp / "typo.yaml"
    typo.write_text(cfg.read_text().replace("hidden:", "hiden:"))
    cases["unknown key"] = ["--config", str(typo)]
    cases["missing config"] = ["--config", str(tmp / "absent.yaml")]
    truncated = tmp / "plain.pt"
    truncated.write_bytes((template / "plain.pt").read_bytes()[:300])
    cases["truncated --init-from"] = ["--config", str(cfg), "--init-from", str(truncated)]
    run = tmp / "stopped"
    shutil.copytree(template / "run", run)
    state = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(state[: len(state) // 2])
    cases["truncated checkpoint (--resume)"] = ["--resume", str(run)]
    return cases


def _files(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` and its bytes (a run's lock file, rewritten by each reader that
    takes it, left out)."""
    return {
        p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".bnn-nested.lock"
    }


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="torchrun on a POSIX system")
def test_sweep_train_under_torchrun(template, tmp_path):
    """``torchrun --nproc_per_node=2 -m bnn_nested train`` on bad input: torchrun fails (it exits 1
    whenever a rank fails), rank 0 exits 2 (rank 1 too, unless torchrun ended it first), exactly
    one ``bnn-nested: error:`` line (rank 0's), no traceback through bnn_nested's code, nothing
    written."""
    import subprocess
    import sys

    shutil.copy(template / "cfg.yaml", tmp_path / "cfg.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for case, args in _bad_torchrun_inputs(tmp_path, template).items():
        out = tmp_path / "new"
        argv = ["-m", "bnn_nested", "train", *args, "--quiet"]
        if "--resume" not in args:
            argv += ["--out", str(out)]
        before = _files(tmp_path)
        p = subprocess.run(
            [*launch, *argv], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        err = p.stderr
        assert p.returncode != 0, (case, err[-2000:])
        # rank 0 exits 2; rank 1 too, or is ended by torchrun (SIGTERM: -15) once rank 0 failed
        codes = dict(re.findall(r"rank\s+: (\d+) \(local_rank: \d+\)\s+exitcode\s+: (-?\d+)", err))
        assert codes.get("0") == "2" and codes.get("1") in ("2", "-15"), (case, err[-2000:])
        ours = [ln for ln in err.splitlines() if ln.startswith("bnn-nested")]
        assert len(ours) == 1 and ours[0].startswith("bnn-nested: error: "), (case, err[-2000:])
        assert "rank 1" not in ours[0] and not INTERNALS.search(ours[0]), (case, ours[0])
        frames = [ln for ln in err.splitlines() if 'File "' in ln and "bnn_nested" in ln]
        assert not frames, (case, err[-2000:])
        assert not out.exists(), case  # nothing written
        assert _files(tmp_path) == before, case  # the inputs are never modified
