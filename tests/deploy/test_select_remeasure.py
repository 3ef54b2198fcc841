"""``select`` latencies (issue 28): latencies cached in ``RUN/deploy/profile.json`` are replayed
with a note saying when they were measured, and ``--remeasure`` times the widths again (a timing
taken on a busy machine is otherwise kept for good)."""

from __future__ import annotations

import json

import pytest

from bnn_nested.cli.main import main
from bnn_nested.deploy.profile import PROFILE_FILE
from tests.trained_runs import copy_run, train_tiny

ARGV = ["--widths", "0.5,1", "--latency-mode", "sliced", "--repeats", "3", "--json"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tmp_path_factory.mktemp("remeasure") / "run"
    assert train_tiny(run) == 0
    return run


def _select(run, capsys, *extra):
    capsys.readouterr()
    assert main(["select", str(run), *ARGV, *extra]) == 0
    out = capsys.readouterr()
    data = json.loads(out.out)
    return data["chosen"]["latency_ms"], out.err


def _plant_busy_latencies(run) -> None:
    """What a run under load leaves in the cache: 33 / 90 ms where 0.1 ms is the truth."""
    path = run / PROFILE_FILE
    cache = json.loads(path.read_text())
    for entry in cache.values():
        for cost, slow in zip(entry["costs"], (33.0, 90.0), strict=False):
            cost["latency_ms"], cost["latency_iqr_ms"] = slow, 1.0
    path.write_text(json.dumps(cache))


def test_cached_latencies_are_replayed_with_a_note(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    _, err = _select(run, capsys)
    assert "measured" not in err  # timed now: nothing replayed
    _plant_busy_latencies(run)
    latency, err = _select(run, capsys)
    assert latency in (33.0, 90.0)
    note = [ln for ln in err.splitlines() if "--remeasure" in ln]
    assert len(note) == 1 and str(run / PROFILE_FILE) in note[0] and "measured" in note[0]


def test_remeasure_times_the_widths_again(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    _select(run, capsys)
    _plant_busy_latencies(run)
    latency, err = _select(run, capsys, "--remeasure")
    assert latency not in (33.0, 90.0) and "--remeasure" not in err
    cached = json.loads((run / PROFILE_FILE).read_text())
    stored = [c["latency_ms"] for e in cached.values() for c in e["costs"]]
    assert not {33.0, 90.0} & set(stored)  # the busy timings are gone from the cache
    latency_again, err = _select(run, capsys)  # and the fresh ones are what is replayed
    assert latency_again == latency and "--remeasure" in err
