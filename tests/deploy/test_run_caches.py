"""Caches in a run directory are keyed by the checkpoint they were computed from (issue 18, item 3,
and the cache parts of item 8): ``select`` after a resumed run uses the final checkpoint's numbers;
evaluate / select on an unfinished run say so; corrupt or wrong-typed caches are named and
recomputed."""

from __future__ import annotations

import json
import shutil

import pytest

import bnn_nested.training.trainer as trainer_mod
from bnn_nested.cli.main import main
from bnn_nested.deploy.profile import PROFILE_FILE
from bnn_nested.deploy.select import VAL_METRICS_FILE
from bnn_nested.runs.loaded import load_run
from tests.trained_runs import copy_run, train_tiny, write_config

SELECT = ["--widths", "0.25,0.5,1", "--json"]


def _select(run, capsys, *extra) -> tuple[dict, str]:
    capsys.readouterr()
    assert main(["select", str(run), *SELECT, *extra]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 3-epoch run stopped (as by Ctrl-C) after epoch 1: unfinished, checkpoint at epoch 1."""
    tmp = tmp_path_factory.mktemp("caches")
    cfg = write_config(tmp / "cfg.yaml", train={"epochs": 3, "lr": 0.003})
    run = tmp / "run"
    original = trainer_mod.Trainer.train_epoch

    def stop_after_first(self, loader):
        out = original(self, loader)
        if self.epoch == 1:
            self._stop_requested = True  # what the SIGINT handler sets
        return out

    trainer_mod.Trainer.train_epoch = stop_after_first
    try:
        assert train_tiny(run, cfg=cfg) == 130
    finally:
        trainer_mod.Trainer.train_epoch = original
    assert not load_run(run).complete
    return run


@pytest.mark.slow
def test_select_after_resume_uses_the_final_checkpoint(interrupted, tmp_path, capsys):
    run = copy_run(interrupted, tmp_path / "run")
    early, err = _select(run, capsys)
    assert "unfinished" in err and f"--resume {run}" in err  # says so
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    late, err = _select(run, capsys)
    assert "unfinished" not in err
    fresh_run = copy_run(run, tmp_path / "fresh")
    shutil.rmtree(fresh_run / "deploy")  # the same finished run, never cached
    fresh, _ = _select(fresh_run, capsys)
    assert late["chosen"] == fresh["chosen"]
    assert late["chosen"]["accuracy"] != early["chosen"]["accuracy"]  # really recomputed


def test_evaluate_on_an_unfinished_run_says_so(interrupted, tmp_path, capsys):
    run = copy_run(interrupted, tmp_path / "run")
    assert main(["evaluate", str(run), "--widths", "1", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "unfinished" in err and "epoch 1/3" in err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train_tiny(run) == 0
    return run


def _poison(run, rows: dict) -> None:
    path = run / VAL_METRICS_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"samples=1,bins=15": rows}))


def test_a_stale_cache_of_another_checkpoint_is_not_used(finished, tmp_path, capsys):
    """The layout of today's cache, with numbers no checkpoint of this run produced."""
    fresh, _ = _select(copy_run(finished, tmp_path / "fresh"), capsys)
    run = copy_run(finished, tmp_path / "run")
    _poison(
        run,
        {
            "0.25": {"cls/acc": 0.39, "cal/ece": 0.1},
            "0.5": {"cls/acc": 0.69, "cal/ece": 0.1},
            "1": {"cls/acc": 0.76, "cal/ece": 0.1},
        },
    )
    got, _ = _select(run, capsys)
    assert got["chosen"] == fresh["chosen"]


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"samples=1,bins=15": 3}', "[1, 2]", "\x00\x01binary"],
)
def test_a_corrupt_validation_cache_is_named_and_recomputed(finished, tmp_path, capsys, text):
    fresh, _ = _select(copy_run(finished, tmp_path / "fresh"), capsys)
    run = copy_run(finished, tmp_path / "run")
    path = run / VAL_METRICS_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    got, err = _select(run, capsys)
    assert str(path) in err and "recomputing" in err
    assert got["chosen"] == fresh["chosen"]
    json.loads(path.read_text())  # rewritten


def test_a_wrong_typed_cache_entry_of_this_checkpoint_is_recomputed(finished, tmp_path, capsys):
    fresh, _ = _select(copy_run(finished, tmp_path / "fresh"), capsys)
    run = copy_run(finished, tmp_path / "run")
    ident = load_run(run).checkpoint_id
    path = run / VAL_METRICS_FILE
    path.parent.mkdir(exist_ok=True)
    rows = {w: {"cls/acc": "high"} for w in ("0.25", "0.5", "1")}  # no cal/ece, not numbers
    path.write_text(json.dumps({"samples=1,bins=15": {"rows": rows, "checkpoint": ident}}))
    got, err = _select(run, capsys)
    assert str(path) in err and "malformed" in err
    assert got["chosen"] == fresh["chosen"]


@pytest.mark.parametrize("text", ["{broken", '{"k": {"costs": [{"width": "x"}]}}'])
def test_a_corrupt_profile_cache_is_named_and_recomputed(finished, tmp_path, capsys, text):
    run = copy_run(finished, tmp_path / "run")
    _select(run, capsys)
    path = run / PROFILE_FILE
    key = next(iter(json.loads(path.read_text())))
    if text.startswith("{broken"):
        path.write_text(text)
    else:
        ident = load_run(run).checkpoint_id
        entry = {"costs": [{"width": "x"}], "settings": {}, "checkpoint": ident}
        path.write_text(json.dumps({key: entry}))
    got, err = _select(run, capsys)
    assert str(path) in err and "recomputing" in err
    assert got["ok"]
    assert all(e["costs"][0]["width"] == 0.25 for e in json.loads(path.read_text()).values())


def test_caches_record_the_checkpoint(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path / "run")
    _select(run, capsys)
    ident = load_run(run).checkpoint_id
    assert ident["step"] > 0 and len(ident["sha256"]) == 64
    for name in (VAL_METRICS_FILE, PROFILE_FILE):
        entries = json.loads((run / name).read_text()).values()
        assert entries and all(e["checkpoint"] == ident for e in entries)
