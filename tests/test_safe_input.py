"""Configs and values that must be refused fast, in one short line, before anything is written
(issue 18, items 5, 6 and the binary-config part of 8)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from bnn_nested.cli.main import main
from bnn_nested.config import ConfigError, load_config
from bnn_nested.safeyaml import MAX_BYTES, YamlError, safe_load
from tests.trained_runs import write_config


@pytest.fixture(autouse=True, scope="module")
def _imported():
    """Time the refusal, not the first import of the training modules."""
    import bnn_nested.deploy.select  # noqa: F401
    import bnn_nested.runs.run  # noqa: F401


def _refused(argv: list[str], tmp: Path, capsys, needle: str, seconds: float = 2.0) -> str:
    before = sorted(p.name for p in tmp.iterdir())
    t0 = time.monotonic()
    rc = main(argv)
    took = time.monotonic() - t0
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert rc == 2, out.err[:500]
    assert len(lines) == 1 and lines[0].startswith("bnn-nested: error:"), out.err[:500]
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 300, len(lines[0])
    assert took < seconds, took
    assert sorted(p.name for p in tmp.iterdir()) == before  # nothing written
    return lines[0]


def _train(cfg: Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--out", str(tmp / "run"), "--quiet", *extra]


def _bomb(levels: int = 9, fanout: int = 9) -> str:
    """The classic alias bomb: ``fanout ** levels`` leaves from a few hundred bytes."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fanout) + "]")
    return "\n".join(lines)


@pytest.mark.parametrize("where", ["seed", "model.hidden"])
def test_alias_bomb_is_refused_fast_in_one_short_line(where, tmp_path, capsys):
    if where == "seed":
        text = _bomb() + "\nseed: *l8\n"
    else:
        text = _bomb() + "\nmodel:\n  hidden: *l8\n"
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(text)
    _refused(_train(cfg, tmp_path), tmp_path, capsys, "aliases")


def test_alias_in_an_override_is_refused(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    _refused(_train(cfg, tmp_path, "--set", "seed=*a"), tmp_path, capsys, "seed=*a")


def test_duplicate_keys_are_refused(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("seed: 0\ntrain:\n  epochs: 1\n  lr: 0.1\n  epochs: 5\n")
    _refused(_train(cfg, tmp_path), tmp_path, capsys, "duplicate key 'epochs' (line 5)")
    with pytest.raises(YamlError, match="duplicate key 'a'"):
        safe_load("{a: 1, b: 2, a: 3}")


def test_deep_nesting_and_huge_documents_are_refused(tmp_path, capsys):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("seed: " + "[" * 50_000 + "]" * 50_000 + "\n")
    _refused(_train(cfg, tmp_path), tmp_path, capsys, "nested deeper")
    cfg.write_text("seed: 0\n" + "# padding\n" * (MAX_BYTES // 10 + 1))
    _refused(_train(cfg, tmp_path), tmp_path, capsys, "larger than")


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary file"),
        ("seed: 0\nmodel: {name: ml\xe9p}\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_binary_config_names_the_cause(data, needle, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(data)
    line = _refused(_train(cfg, tmp_path), tmp_path, capsys, needle)
    assert str(cfg) in line


def test_a_config_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer appears
    _refused(_train(fifo, tmp_path), tmp_path, capsys, "not a regular file")
    _refused(_train(Path("/dev/zero"), tmp_path), tmp_path, capsys, "not a regular file")


@pytest.mark.parametrize(
    "yaml_line, field",
    [
        ("train: {lr: .inf}", "train.lr"),
        ("train: {lr: 1.0e400}", "train.lr"),
        ("ordering: {init: .nan}", "ordering.init"),
        ("ordering: {kl_weight: .inf}", "ordering.kl_weight"),
        ("ordering: {temperature: .inf}", "ordering.temperature"),
        ("model: {init_log_alpha: -.inf}", "model.init_log_alpha"),
        ("eval: {widths: [.nan]}", "eval.widths"),
        ("regularization: {other_weight_decay: .nan}", "regularization.other_weight_decay"),
        ("model: {kwargs: {scale: .inf}}", "model.kwargs.scale"),
    ],
)
@pytest.mark.parametrize("as_override", [False, True])
def test_non_finite_floats_are_refused(yaml_line, field, as_override, tmp_path, capsys):
    import yaml

    ((section, value),) = yaml.safe_load(yaml_line).items()
    key, raw = next(iter(value.items()))
    if as_override:
        cfg = write_config(tmp_path / "cfg.yaml")
        text = yaml.safe_dump(raw, default_flow_style=True).strip().removesuffix("...").strip()
        argv = _train(cfg, tmp_path, "--set", f"{section}.{key}={text}")
    else:
        cfg = write_config(tmp_path / "cfg.yaml", **{section: value})
        argv = _train(cfg, tmp_path)
    _refused(argv, tmp_path, capsys, field)


@pytest.mark.parametrize(
    "section, value, field",
    [
        ("data", {"num_workers": 100_000_000}, "data.num_workers"),
        ("model", {"hidden": [1e16]}, "model.hidden"),
        ("data", {"batch_size": 1e21}, "data.batch_size"),
        ("data", {"eval_batch_size": 10**12}, "data.eval_batch_size"),
        ("eval", {"samples": 10**9}, "eval.samples"),
        ("model", {"groups": 10**9}, "model.groups"),
    ],
)
def test_huge_values_are_bounded_at_validation(section, value, field, tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", **{section: value})
    _refused(_train(cfg, tmp_path), tmp_path, capsys, field)


def test_a_long_value_is_not_echoed_in_full(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", model={"hidden": list(range(-1, 12_000))})
    _refused(_train(cfg, tmp_path), tmp_path, capsys, "model.hidden")


@pytest.mark.parametrize("cmd", ["evaluate", "select"])
def test_huge_samples_on_the_command_line_are_refused(cmd, tmp_path, capsys):
    _refused([cmd, str(tmp_path), "--samples", "1000000000"], tmp_path, capsys, "--samples")


@pytest.mark.parametrize("value", ["2", "-0.1", "nan"])
def test_select_min_accuracy_outside_zero_one_is_refused(value, tmp_path, capsys):
    argv = ["select", str(tmp_path), "--min-accuracy", value]
    _refused(argv, tmp_path, capsys, "--min-accuracy must be in [0, 1]")


@pytest.mark.parametrize("metrics", [",", " , ,", ""])
def test_compare_with_no_metric_names_is_refused(metrics, tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        run = tmp_path / name
        run.mkdir()
        (run / "report.json").write_text(json.dumps({"widths": {"0.5": {"cls/acc": 0.9}}}))
        runs.append(str(run))
    out = tmp_path / "cmp"
    argv = ["compare", *runs, "--metrics", metrics, "--out", str(out)]
    _refused(argv, tmp_path, capsys, "--metrics")


def test_the_shipped_configs_still_load(tmp_path):
    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        load_config(path)
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(write_config(tmp_path / "x.yaml", train={"lr": float("inf")}))
