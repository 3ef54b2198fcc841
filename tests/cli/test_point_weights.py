"""Monte-Carlo samples of a point-weight model (issue 28): ``evaluate --samples 8`` of a model
without weight noise or dropout does not report (or plot) a mutual-information AUROC, which would
be float noise (its 8 samples are identical); a Gaussian-weight model still reports it."""

from __future__ import annotations

import json

import pytest

from bnn_nested.cli.main import main
from tests.trained_runs import train_tiny, tree_digest, write_config

ARGV = ["--samples", "4", "--ood", "gaussian", "--no-plots", "--widths", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("point")
    out = {}
    for posterior in ("point", "gaussian"):
        cfg = write_config(tmp / f"{posterior}.yaml", model={"weight_posterior": posterior})
        out[posterior] = tmp / posterior
        assert train_tiny(out[posterior], cfg=cfg) == 0
    return out


def _mi_keys(run) -> list[str]:
    report = json.loads((run / "report.json").read_text())
    return [k for row in report["widths"].values() for k in row if "mutual_information" in k]


def test_point_weights_report_no_mutual_information(runs, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(runs["point"]), *ARGV]) == 0
    assert "mutual information" in capsys.readouterr().err
    assert _mi_keys(runs["point"]) == []


def test_gaussian_weights_still_report_mutual_information(runs, capsys):
    assert main(["evaluate", str(runs["gaussian"]), *ARGV]) == 0
    assert "deterministic" not in capsys.readouterr().err
    assert _mi_keys(runs["gaussian"])


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", *ARGV, "--scores", "mutual_information"],
        ["evaluate", *ARGV, "--selective-score", "mutual_information"],
        ["cascade", "--target-accuracy", "0.1", "--samples", "4", "--score", "mutual_information"],
    ],
)
def test_asking_for_mutual_information_of_point_weights_is_refused(runs, capsys, argv):
    before = tree_digest(runs["point"])
    assert main([argv[0], str(runs["point"]), *argv[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mutual_information" in err[0] and "identical" in err[0], err
    assert tree_digest(runs["point"]) == before
