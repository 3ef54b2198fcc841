"""A model and a data set registered by the user's own module reach every command through the
config's ``imports`` (train, and evaluate / select with ``--allow-import``), and the safe loaders
refuse them unless told to trust the file."""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

from bnn_nested.cli.main import main
from bnn_nested.deploy.serialize import (
    UnsafeOrInvalidWeights,
    load_width_weights,
    save_width_weights,
)
from bnn_nested.runs.loaded import load_run
from bnn_nested.runs.pretrained import PretrainedError, from_pretrained, from_run


def test_user_model_and_data_from_config(tmp_path, capsys):
    cfg = {
        "imports": ["tests.user_plugin"],
        "data": {"name": "blobs", "batch_size": 30},
        "model": {"name": "tiny", "groups": 4, "kept": 1},
        "ordering": {"sampler": "nested_dropout"},
        "train": {"epochs": 1},
        "eval": {"widths": [0.5, 1.0], "samples": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sys.modules.pop("tests.user_plugin", None)  # a fresh process would not have it either
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--quiet"]) == 0
    assert main(["evaluate", str(run)]) == 2  # the run imports a module: trusted only when told
    assert "--allow-import" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--allow-import"]) == 0, capsys.readouterr().err
    assert "0.5" in capsys.readouterr().out
    loaded = load_run(run, allow_import=True)
    assert loaded.splits.name == "blobs"
    x = loaded.splits.val[0][0].unsqueeze(0).repeat(2, 1)
    save_width_weights(loaded.model, loaded.config, 0.5, x, tmp_path / "w.pt")
    with pytest.raises(UnsafeOrInvalidWeights, match=r"imports \['tests.user_plugin'\]"):
        load_width_weights(tmp_path / "w.pt")
    assert load_width_weights(tmp_path / "w.pt", allow_import=True)(x).shape == (2, 3)
    # the pretrained directory is read with the same trust rule
    from_run(run, allow_import=True).save_pretrained(tmp_path / "pre")
    with pytest.raises(PretrainedError, match=r"imports \['tests.user_plugin'\]"):
        from_pretrained(tmp_path / "pre")
    with torch.no_grad():
        out = from_pretrained(tmp_path / "pre", allow_import=True).model(x)
    assert torch.equal(out, loaded.model.eval()(x))


def test_unknown_registered_name_lists_what_is_accepted(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"imports": ["tests.user_plugin"], "model": {"name": "tinny"}}))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnn-nested: error: model.name: unknown model 'tinny'; accepted: ")
    assert "tiny" in err and "mlp" in err
    assert not (tmp_path / "r").exists()
