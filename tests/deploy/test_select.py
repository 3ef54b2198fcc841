"""Width selection: every constraint honoured, optimal choice (property test), CLI exit codes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnn_nested.deploy.select import Candidate, Constraints, select_width, violations

C = [
    Candidate(0.25, flops=100, params=10, accuracy=0.80, ece=0.05, latency_ms=1.0),
    Candidate(0.5, flops=300, params=30, accuracy=0.90, ece=0.03, latency_ms=2.0),
    Candidate(0.75, flops=600, params=60, accuracy=0.90, ece=0.02, latency_ms=3.0),
    Candidate(1.0, flops=1000, params=100, accuracy=0.95, ece=0.04, latency_ms=5.0),
]


def test_hand_cases():
    assert select_width(C, Constraints()).chosen.width == 1.0
    assert select_width(C, Constraints(max_flops=999)).chosen.width == 0.5  # tie 0.9 -> cheaper
    assert select_width(C, Constraints(max_flops=999, max_ece=0.025)).chosen.width == 0.75
    assert select_width(C, Constraints(max_latency_ms=1.5)).chosen.width == 0.25
    sel = select_width(C, Constraints(max_params=50, min_accuracy=0.93))
    assert not sel.ok and sel.nearest is not None
    # nearest: 0.5 misses accuracy by 0.93/0.9-1 = 3.3%; 1.0 breaks params by 100%
    assert sel.nearest.width == 0.5 and "No width satisfies" in sel.explanation
    assert "min_accuracy" in sel.explanation
    assert violations(C[3], Constraints(max_params=50)) == {"max_params": pytest.approx(1.0)}


def test_bad_constraints():
    with pytest.raises(ValueError, match="max_flops"):
        Constraints(max_flops=-1)
    with pytest.raises(ValueError, match="latency"):
        select_width([Candidate(1.0, 1, 1, 0.9, 0.1)], Constraints(max_latency_ms=1))


cand = st.builds(
    Candidate,
    width=st.sampled_from([0.125 * k for k in range(1, 9)]),
    flops=st.integers(1, 50),
    params=st.integers(1, 50),
    accuracy=st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9]),
    ece=st.sampled_from([0.01, 0.05, 0.1]),
    latency_ms=st.sampled_from([0.5, 1.0, 2.0]),
)
limit = st.none() | st.integers(1, 50).map(float)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(cand, min_size=1, max_size=8),
    limit,
    st.none() | st.sampled_from([0.5, 1.0, 2.0]),
    limit,
    st.none() | st.sampled_from([0.55, 0.75, 0.85]),
    st.none() | st.sampled_from([0.02, 0.07]),
)
def test_property_feasible_and_optimal(cands, mf, ml, mp, ma, me):
    cons = Constraints(mf, ml, mp, ma, me)

    def fits(c):
        return (
            (mf is None or c.flops <= mf)
            and (ml is None or c.latency_ms <= ml)
            and (mp is None or c.params <= mp)
            and (ma is None or c.accuracy >= ma)
            and (me is None or c.ece <= me)
        )

    sel = select_width(cands, cons)
    feasible = [c for c in cands if fits(c)]
    if not feasible:
        assert not sel.ok and sel.nearest in cands
        return
    b = sel.chosen
    assert fits(b)
    assert b.accuracy == max(c.accuracy for c in feasible)
    ties = [c for c in feasible if c.accuracy == b.accuracy]
    assert b.flops == min(c.flops for c in ties)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_cli_select(tmp_path, capsys):
    from pathlib import Path

    from bnn_nested.cli import select as select_cmd
    from bnn_nested.cli.common import Parser
    from bnn_nested.cli.main import main

    cfg = Path(__file__).parents[2] / "configs" / "digits_mlp.yaml"
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--out",
                str(run),
                "--quiet",
                "--set",
                "train.epochs=2",
                "--set",
                "model.hidden=[32]",
            ]
        )
        == 0
    )
    p = Parser(prog="t")
    select_cmd.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(
        ["select", str(run), "--widths", "0.25,0.5,1", "--max-flops", "1e9", "--json"]
    )
    capsys.readouterr()
    assert args.handler(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["chosen"]["width"] in (0.25, 0.5, 1.0)
    assert (run / "deploy" / "val_metrics.json").is_file()
    assert (run / "deploy" / "profile.json").is_file()
    args = p.parse_args(
        ["select", str(run), "--widths", "0.25,1", "--max-flops", "1", "--max-latency-ms", "1000"]
    )
    assert args.handler(args) == 1
    assert "nearest option is width 0.25" in capsys.readouterr().out
    # latency of the exported module (BN folded, micro-batched) instead of the sliced model
    args = p.parse_args(
        [
            "select",
            str(run),
            "--widths",
            "0.5",
            "--max-latency-ms",
            "1e6",
            "--latency-mode",
            "exported",
            "--batch-size",
            "64",
            "--json",
        ]
    )
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["chosen"]["latency_ms"] > 0
    profiles = json.loads((run / "deploy" / "profile.json").read_text()).values()
    assert {e["settings"]["mode"] for e in profiles} >= {"sliced", "exported"}
    assert main(["select", str(run), "--latency-mode", "fast"]) == 2
    assert "argument --latency-mode: invalid choice: 'fast'" in capsys.readouterr().err
