"""A width sampler and an uncertainty score registered by the user's own module (listed under the
config's ``imports``) are used by the CLI: ``train`` runs the sampler, ``evaluate`` reports the
score for OOD detection and selective prediction, ``cascade`` escalates on it."""

from __future__ import annotations

import json
import math

import yaml

from bnn_nested.cli.main import main
from bnn_nested.runs.loaded import load_run

CFG = {
    "imports": ["tests.user_plugin_width"],
    "data": {"name": "digits", "batch_size": 128},
    "model": {"name": "mlp", "hidden": [16], "groups": 4, "kept": 1},
    "ordering": {"sampler": "full_and_half"},
    "train": {"epochs": 1},
    "eval": {"widths": [0.5, 1.0], "samples": 1},
}


def test_user_sampler_and_score_from_the_cli(tmp_path, capsys):
    from tests.user_plugin_width import CALLS

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CFG))
    run = tmp_path / "run"
    before = CALLS["passes"]
    assert main(["train", "--config", str(path), "--out", str(run), "--quiet"]) == 0
    n_train = len(load_run(run, allow_import=True).splits.train)
    assert CALLS["passes"] - before == math.ceil(n_train / 128)  # one plan per training step

    scores = ["--scores", "margin,entropy", "--selective-score", "margin", "--ood", "gaussian"]
    assert main(["evaluate", str(run), "--allow-import", *scores]) == 0, capsys.readouterr().err
    report = json.loads((run / "report.json").read_text())
    assert report["meta"]["sampler"] == "full_and_half"
    assert report["meta"]["selective_score"] == "margin"
    for row in report["widths"].values():
        assert 0.0 <= row["ood/gaussian/margin/auroc"] <= 1.0 and "sel/aurc" in row

    cascade = ["--max-flops", "1e12", "--score", "margin", "--widths", "0.5,1", "--json"]
    capsys.readouterr()
    assert main(["cascade", str(run), "--allow-import", *cascade, "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["score"] == "margin"


def test_unknown_sampler_lists_the_registered_ones(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**CFG, "ordering": {"sampler": "full_and_quarter"}}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ordering.sampler: unknown width sampler 'full_and_quarter'" in err
    assert "full_and_half" in err  # the user's, after the built-in ones
    assert not (tmp_path / "r").exists()


def test_unknown_score_lists_the_registered_ones(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(CFG))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--quiet"]) == 0
    before = sorted(p.name for p in run.iterdir())
    # without --allow-import no user module runs: only the built-in names exist
    assert main(["evaluate", str(run), "--scores", "margin"]) == 2
    assert "with --allow-import" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--allow-import", "--scores", "margn"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--scores: unknown OOD score 'margn'" in err and "margin" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written
