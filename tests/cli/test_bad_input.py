"""Bad input fails cleanly: hypothesis generates malformed configs and argument lists; each must exit
with status 2, print exactly one line on stderr (no traceback) that names the offending key or
value (so an unrelated error, e.g. an internal crash turned into a one-liner, does not pass), and
write nothing."""

from __future__ import annotations

import argparse
import copy
import string
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnn_nested.cli.main import build_parser, main
from bnn_nested.config import Config
from bnn_nested.io import visible

BASE = {
    "seed": 0,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden": [32, 32], "groups": 8, "kept": 1},
    "ordering": {"sampler": "vou", "temperature": 1.0},
    "train": {"epochs": 1, "device": "cpu"},
    "eval": {"widths": [0.5, 1.0]},
}
SECTIONS = ("data", "model", "ordering", "train", "eval")
FIELDS = {s: set(Config.model_fields[s].annotation.model_fields) for s in SECTIONS}
FIELDS["top"] = set(Config.model_fields)

nonpositive = st.floats(max_value=0.0, allow_nan=False) | st.integers(max_value=0)
above_one = st.floats(min_value=1.0001, allow_nan=False, allow_infinity=False)
words = st.text(string.ascii_letters + "_", min_size=1, max_size=12)
junk = st.one_of(
    words,
    st.lists(st.integers(), max_size=2),
    st.none(),  # never int-like
    st.dictionaries(words, st.integers(), max_size=2),
)


class Mutation(NamedTuple):
    """A change to the base config and what the one-line error must contain: every string in
    ``names`` (the offending key, and the value or the rule where the message gives them)."""

    apply: object  # Callable[[dict], dict]
    names: tuple[str, ...]


def _set(path: str, value, *names: str) -> Mutation:
    """Set ``path`` to ``value``; the error must start with ``path`` (or contain ``names``)."""
    return Mutation(lambda raw: _put(raw, path, value), names or (f"error: {path}:",))


def _put(raw: dict, path: str, value) -> dict:
    node = raw
    *head, last = path.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value
    return raw


@st.composite
def unknown_key(draw):
    section = draw(st.sampled_from(SECTIONS + ("top",)))
    key = draw(words.filter(lambda w, s=section: w not in FIELDS[s]))
    path = key if section == "top" else f"{section}.{key}"
    return _set(path, draw(st.integers()), f"error: {path}: unknown key")


@st.composite
def bad_groups(draw):
    groups = draw(st.integers(2, 64))
    hidden = draw(st.integers(1, 512).filter(lambda h: h % groups))
    return Mutation(
        lambda raw: _put(_put(raw, "model.groups", groups), "model.hidden", [hidden]),
        ("groups", f"({groups})", f"[{hidden}]"),
    )


@st.composite
def bad_literal(draw):
    path = draw(
        st.sampled_from(
            [
                "data.name",
                "ordering.sampler",
                "ordering.prior",
                "train.device",
                "train.optimizer",
                "train.precision",
                "model.weight_posterior",
                "ordering.schedule",
                "train.scheduler",
            ]
        )
    )
    value = draw(
        words.filter(
            lambda w: (
                w
                not in {
                    "digits",
                    "mnist5k",
                    "mnist",
                    "vou",
                    "sandwich",
                    "fixed",
                    "geometric",
                    "uniform",
                    "cpu",
                    "cuda",
                    "auto",
                    "adam",
                    "adamw",
                    "sgd",
                    "fp32",
                    "bf16",
                    "fp16",
                    "point",
                    "gaussian",
                    "constant",
                    "exponential",
                    "none",
                    "cosine",
                    "cifar10",
                    "svhn",
                    "imagefolder",
                    "fashion_mnist",
                    "nested_dropout",
                }
            )
        )
    )
    return _set(path, value, f"error: {path}:", f"'{value}'")


MUTATIONS = st.one_of(
    unknown_key(),
    bad_groups(),
    bad_literal(),
    st.builds(_set, st.just("ordering.temperature"), nonpositive),
    st.builds(_set, st.just("ordering.temperature_min"), nonpositive),
    st.builds(_set, st.just("ordering.prior_pi"), nonpositive | above_one),
    st.builds(_set, st.just("ordering.fixed_width"), nonpositive | above_one),
    st.builds(_set, st.just("ordering.min_width"), nonpositive | above_one),
    st.builds(
        _set,
        st.just("eval.widths"),
        st.lists(nonpositive | above_one, min_size=1).map(lambda bad: [0.5, *bad]),
        st.just("error: eval.widths"),  # the list, or the element: eval.widths.1
    ),
    st.builds(_set, st.just("data.batch_size"), st.integers(max_value=0)),
    st.builds(  # 0 is allowed: no validation split
        _set,
        st.just("data.val_fraction"),
        st.floats(max_value=-1e-9) | st.integers(max_value=-1) | st.floats(0.5, 10),
    ),
    st.builds(_set, st.just("train.epochs"), st.integers(max_value=0)),
    st.builds(_set, st.just("train.lr"), nonpositive),
    st.builds(_set, st.just("train.grad_clip"), nonpositive),
    st.builds(_set, st.just("train.checkpoint_every"), st.integers(max_value=-1)),
    st.builds(_set, st.just("seed"), st.integers(max_value=-1)),
    st.integers(8, 100).map(lambda n: _set("model.kept", n, "kept", f"got {n}")),
    st.builds(_set, st.just("model.hidden"), st.just([])),
    st.builds(_set, st.sampled_from(["train.epochs", "data.batch_size", "model.groups"]), junk),
    st.builds(_set, st.sampled_from(["data", "model", "train"]), st.integers() | st.text()),
    st.just(
        Mutation(
            lambda raw: _put(_put(raw, "train.precision", "fp16"), "train.device", "cpu"),
            ("precision 'fp16'", "device"),
        )
    ),
    st.just(
        Mutation(
            lambda raw: _put(
                _put(_put(raw, "ordering.schedule", "exponential"), "ordering.temperature", 0.5),
                "ordering.temperature_min",
                0.9,
            ),
            ("temperature_min (0.9)", "temperature (0.5)", "exponential"),
        )
    ),
)

# (file text, what the error must say besides the file's name)
BAD_FILES = st.one_of(
    st.just(("- a list\n- not a mapping\n", "must hold a mapping")),
    st.just(("key: [unclosed\n", "not valid YAML")),
    st.integers().map(lambda i: (str(i), "must hold a mapping")),
    st.just(("data: {name: digits\n", "not valid YAML")),
)


def _check_fails_cleanly(argv: list[str], tmp: Path, capsys, names: tuple) -> None:
    """Exit 2, one line naming everything in ``names``, nothing on stdout, nothing written."""
    before = sorted(p.relative_to(tmp) for p in tmp.rglob("*"))
    rc = main(argv)
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert rc == 2, (argv, out.err)
    assert len(lines) == 1 and lines[0].startswith("bnn-nested: error:"), (argv, out.err)
    assert "Traceback" not in out.err and out.out == ""
    # an entry of ``names`` that is a tuple: any one of its strings will do; control characters
    # are named escaped (io.visible: what is printed never acts on the terminal)
    missing = [
        n
        for n in names
        if not any(visible(a) in lines[0] for a in ((n,) if isinstance(n, str) else n))
    ]
    assert not missing, f"the error does not name {missing}: {lines[0]!r} (argv {argv})"
    assert sorted(p.relative_to(tmp) for p in tmp.rglob("*")) == before  # nothing written


@pytest.mark.slow
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mutation=MUTATIONS, as_override=st.booleans())
def test_malformed_configs_fail_cleanly(mutation, as_override, capsys):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        raw = mutation.apply(copy.deepcopy(BASE))
        cfg = tmp / "cfg.yaml"
        extra: list[str] = []
        if as_override:  # the same malformation, given on the command line instead
            cfg.write_text(yaml.safe_dump(BASE))
            extra = [a for k, v in _diff(BASE, raw) for a in ("--set", f"{k}={_yaml(v)}")]
        else:
            cfg.write_text(yaml.safe_dump(raw))
        _check_fails_cleanly(
            ["train", "--config", str(cfg), "--out", str(tmp / "run")] + extra,
            tmp,
            capsys,
            mutation.names,
        )


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=BAD_FILES)
def test_malformed_yaml_files_fail_cleanly(case, capsys):
    text, says = case
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "cfg.yaml").write_text(text)
        _check_fails_cleanly(
            ["train", "--config", str(tmp / "cfg.yaml"), "--out", str(tmp / "run")],
            tmp,
            capsys,
            (f"config file {tmp / 'cfg.yaml'}", says),
        )


def _yaml(v) -> str:
    return (
        yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    )


def _diff(a: dict, b: dict, prefix: str = ""):
    """Leaf paths where ``b`` differs from ``a`` (sections that changed type count as leaves)."""
    for k, v in b.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            yield from _diff(a[k], v, path + ".")
        elif a.get(k, object()) != v:
            yield path, v


def _long_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")}


_PARSER = build_parser()
#: every long option ``train`` accepts (its own and the top-level ones), read from the parser
TRAIN_FLAGS = _long_flags(_PARSER) | _long_flags(
    next(a for a in _PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
)


def _shown(text: str) -> bool:
    """Whether ``text`` is printed as is (printable ASCII: nothing escaped)."""
    return text.isascii() and text.isprintable()


@st.composite
def bad_argv(draw, cfg: str, out: str):
    """A malformed argument list and what its one-line error must name."""
    good = ["train", "--config", cfg, "--out", out]
    kind = draw(st.integers(0, 9))
    text = draw(st.text(max_size=15))
    if kind == 0:  # an unknown command
        cmd = draw(words.filter(lambda w: w not in {"train", "evaluate", "compare", "select"}))
        return [cmd, *draw(st.lists(st.text(max_size=5), max_size=3))], (
            f"invalid choice: '{cmd}'",
        )
    if kind == 1:  # missing required options
        argv = draw(
            st.sampled_from(
                [
                    ["train"],
                    ["train", "--config", cfg],
                    ["train", "--out", out],
                    ["train", "--device", "cpu"],
                    [],
                ]
            )
        )
        return argv, ("--config FILE and --out RUN",) if argv else ("required: command",)
    if kind == 2:  # --set without '='
        value = text.replace("=", "")
        if value.startswith("-"):  # argparse may take it for an option: then --set is named
            return good + ["--set", value], (("argument --set", "expected KEY=VALUE"),)
        return good + ["--set", value], ("expected KEY=VALUE",) + (
            (f"override {value!r}",) if _shown(value) and "'" not in value else ()
        )
    if kind == 3:  # a device that does not exist
        device = draw(words.filter(lambda w: w not in {"cpu", "cuda", "auto"}))
        return good + ["--device", device], ("--device", f"'{device}'")
    if kind == 4:  # a config file that does not exist
        missing = str(Path(out).parent / ("missing" + text.replace("/", "")))
        argv = ["train", "--config", missing, "--out", out]
        # a name with a line break is cut at it by the CLI's first-line rule (reported, not fixed
        # here): then only the start of the message is checked
        return argv, ("config file",) + (
            (f"config file {missing} does not exist",) if _shown(missing) else ()
        )
    if kind == 5:  # resume something that is not a run
        nothing = str(Path(out).parent / ("nothing" + text.replace("/", "")))
        return ["train", "--resume", nothing], (nothing.splitlines()[0],) + (  # as for kind 4
            (f"{nothing}: run directory not found",) if _shown(nothing) else ()
        )
    if kind == 6:  # resume combined with config options
        extra = draw(
            st.sampled_from(
                [
                    ["--config", cfg],
                    ["--set", "train.epochs=2"],
                    ["--overwrite"],
                    ["--out", out],
                ]
            )
        )
        return ["train", "--resume", out, *extra], ("--resume", f"drop {extra[0]}")
    if kind == 7:  # an unknown flag (argparse accepts unambiguous prefixes of known ones)
        flag = "--" + draw(words.filter(lambda w: not any(k.startswith(w) for k in TRAIN_FLAGS)))
        return good + [flag], (f"unrecognized arguments: {flag}",)
    if kind == 8:  # an override of an unknown or mistyped key
        key = draw(words.filter(lambda w: w not in FIELDS["train"]))
        return good + ["--set", f"train.{key}={text}"], (f"train.{key}",)
    value = draw(st.sampled_from(["[", "{a", "0", "-3", "x"]))
    return good + ["--set", f"train.epochs={value}"], ("train.epochs",)


@pytest.mark.slow
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_malformed_argument_lists_fail_cleanly(data, capsys):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = tmp / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(BASE))
        argv, names = data.draw(bad_argv(str(cfg), str(tmp / "run")))
        _check_fails_cleanly(argv, tmp, capsys, names)


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"precious")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == b"precious"


def test_debug_shows_the_traceback(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    argv = [
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "r"),
        "--set",
        "ordering.temperature=0",
    ]
    with pytest.raises(ValueError, match="ordering.temperature"):
        main(["--debug", *argv])


def test_a_run_name_with_a_carriage_return_is_named_whole(tmp_path, capsys):
    """Found by the argument-list test: the one-line error was cut at the name's "\r"
    (str.splitlines splits there), so what was printed did not name the run."""
    run = str(tmp_path / "nothing \r")
    _check_fails_cleanly(["train", "--resume", run], tmp_path, capsys, (run,))


def test_a_config_name_with_a_null_byte_is_named(tmp_path, capsys):
    """Found by the argument-list test: os.stat's bare "embedded null byte" named no option."""
    bad = str(tmp_path / "missing\x00")
    _check_fails_cleanly(
        ["train", "--config", bad, "--out", str(tmp_path / "run")],
        tmp_path,
        capsys,
        (f"config file {bad!r} is not a valid file name",),
    )
