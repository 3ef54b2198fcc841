"""Your own data (issue 28): a loader registered with ``register_dataset`` and named under the
config's ``imports`` is a first-class way in. It may return no validation split (``val=None`` or
an empty one): training then logs no ``val_acc`` and re-estimates no batch norm for it, and the
commands that need validation data say so in one line. A loader that returns something else than
``DataSplits`` of the declared shape is named in one line before training starts."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from bnn_nested.cli.main import main
from bnn_nested.data import ImageDataSplits, load_dataset
from bnn_nested.data.vision import ImageDataSplits as VisionImageDataSplits

PLUGIN = "tests.data.own_data_plugin"


def _config(tmp_path, name: str, norm: str = "batch"):
    cfg = {
        "imports": [PLUGIN],
        "data": {"name": name, "batch_size": 20},
        "model": {"name": "mlp", "hidden": [8], "groups": 4, "kept": 1, "norm": norm},
        "train": {"epochs": 2, "device": "cpu"},
        "eval": {"widths": [0.5, 1.0], "samples": 2},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if not ln.startswith("bnn-nested: note:")]
    assert len(errors) == 1 and errors[0].startswith("bnn-nested: error:"), err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.fixture(scope="module")
def noval_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    sys.modules.pop(PLUGIN, None)
    runs = {}
    for name in ("own_noval", "own_emptyval"):
        runs[name] = tmp / name
        argv = ["train", "--config", str(_config(tmp, name)), "--out", str(runs[name])]
        assert main([*argv, "--quiet"]) == 0
    return runs


@pytest.mark.parametrize("name", ["own_noval", "own_emptyval"])
def test_no_validation_split_logs_no_val_acc(noval_runs, name):
    history = json.loads((noval_runs[name] / "history.json").read_text())
    records = history if isinstance(history, list) else history.get("epochs", history)
    assert records and all("val_acc" not in r for r in records), records


@pytest.mark.parametrize("name", ["own_noval", "own_emptyval"])
def test_no_validation_split_evaluates_on_test_and_refuses_what_needs_val(noval_runs, name, capsys):
    run = str(noval_runs[name])
    assert main(["evaluate", run, "--allow-import", "--no-plots"]) == 0
    assert "no validation split" in capsys.readouterr().out
    for argv, needle in (
        (["evaluate", run, "--split", "val"], "--split val"),
        (["evaluate", run, "--calibrate", "temperature"], "--calibrate temperature"),
        (["evaluate", run, "--alpha", "0.1"], "--alpha"),
        (["select", run], "select"),
        (["cascade", run, "--target-accuracy", "0.5"], "cascade"),
    ):
        extra = ["--allow-import"] + ([] if argv[0] == "select" else ["--no-plots"])
        assert main([*argv, *extra]) == 2, argv
        line = _one_error_line(capsys)
        assert "no validation split" in line and needle in line, line


@pytest.mark.parametrize(
    "name, needle",
    [
        ("own_none", "returned None, not DataSplits"),
        ("own_badshape", "input_shape"),
        ("own_badlabel", "num_classes"),
        ("own_notrain", "train split is empty"),
    ],
)
def test_a_wrong_loader_result_is_one_line_before_training(tmp_path, capsys, name, needle):
    out = tmp_path / "run"
    argv = ["train", "--config", str(_config(tmp_path, name)), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert needle in line and repr(name) in line, line
    assert not out.exists()


def test_image_data_splits_is_exported():
    assert ImageDataSplits is VisionImageDataSplits


def test_load_dataset_of_a_registered_loader_without_val(tmp_path):
    from bnn_nested.config import load_config

    cfg = load_config(_config(tmp_path, "own_noval"))
    splits = load_dataset(cfg.data)
    assert len(splits.val) == 0 and not splits.has_val and splits.num_train == 60


def test_the_saved_config_of_a_registered_loader_has_no_fractions_it_ignores(noval_runs, tmp_path):
    import torch

    from bnn_nested.config import load_config

    run = noval_runs["own_noval"]
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]
    stored = torch.load(run / "checkpoint.pt", weights_only=True)["config"]["data"]
    for data in (saved, stored):
        assert "val_fraction" not in data and "test_fraction" not in data, data
    # given explicitly, they are the user's (their loader may read them): kept
    path = _config(tmp_path, "own_noval")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["val_fraction"] = 0.3
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).to_dict()["data"]["val_fraction"] == 0.3
    # a built-in data set splits by them: kept
    digits = load_config(path, ["data.name=digits"]).to_dict()["data"]
    assert digits["val_fraction"] == 0.3 and digits["test_fraction"] == 0.2


def test_the_readme_example_trains_and_evaluates(tmp_path, monkeypatch, capsys):
    """The loader of README.md's "Your own data", saved as my_data.py, with the config it names."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_data.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))  # PYTHONPATH=.
    monkeypatch.delitem(sys.modules, "my_data", raising=False)
    flow = re.search(r"`(\{imports: \[my_data\].*?\})`", section, re.S).group(1)
    cfg = yaml.safe_load(flow.replace("\n", " "))
    cfg["train"] = {"epochs": 1, "device": "cpu"}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "runs" / "blobs"
    argv = ["train", "--config", str(tmp_path / "my.yaml"), "--out", str(run), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-plots"]) == 2  # imports a module: trusted only ...
    assert "--allow-import" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--no-plots", "--allow-import"]) == 0  # ... when told
    report = json.loads((run / "report.json").read_text())
    assert report["meta"]["data"] == "my_blobs" and report["widths"]


# -- the built-in data sets: data.val_fraction: 0 means no validation split (issue 28) ----------
@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_builtin_data_with_val_fraction_0_has_no_validation_split(name):
    from bnn_nested.config import DataConfig

    splits = load_dataset(DataConfig(name=name, val_fraction=0.0), seed=0)
    total = {"digits": 1797, "mnist5k": 5000}[name]
    assert not splits.has_val and len(splits.val) == 0
    assert len(splits.train) + len(splits.test) == total
    default = load_dataset(DataConfig(name=name), seed=0)  # the test split is unchanged
    assert len(splits.test) == len(default.test)


def test_training_digits_without_validation_logs_no_val_acc(tmp_path, capsys, monkeypatch):
    import bnn_nested.training.trainer as trainer_module

    validated = []
    original = trainer_module.Trainer.validation_accuracy

    def recording(self, *a, **kw):  # would re-estimate batch norm on the split
        validated.append(1)
        return original(self, *a, **kw)

    monkeypatch.setattr(trainer_module.Trainer, "validation_accuracy", recording)
    cfg = {
        "data": {"name": "digits", "batch_size": 64, "val_fraction": 0},
        "model": {"name": "mlp", "hidden": [8], "groups": 4, "kept": 1, "norm": "batch"},
        "train": {"epochs": 2, "device": "cpu"},
        "eval": {"widths": [0.5, 1.0]},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--quiet"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 2 and all("val_acc" not in r for r in history), history
    assert not validated
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["val_fraction"] == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--no-plots"]) == 0
    assert "no validation split" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--calibrate", "temperature", "--no-plots"]) == 2
    assert "no validation split" in _one_error_line(capsys)
