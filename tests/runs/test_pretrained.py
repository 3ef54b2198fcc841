"""The shareable pretrained directory (config.json + model.safetensors): the round trip is exact
(every tensor, the batch-norm statistics of each calibrated width, the temperatures), loading needs
neither the run nor its data nor pickle, and a malformed or tampered directory is refused in one
line; ``bnn-nested export-weights`` writes it, and writes nothing on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch

import bnn_nested.runs.loaded as loaded_mod
from bnn_nested.cli.main import main
from bnn_nested.evaluation.calibration import TemperatureFit, save_temperatures
from bnn_nested.nn.batchnorm import UncalibratedWidthWarning, nested_norms
from bnn_nested.runs import PretrainedError, from_pretrained, from_run, save_pretrained
from bnn_nested.runs.pretrained import CONFIG_FILE, PRETRAINED_FORMAT, WEIGHTS_FILE
from tests.trained_runs import train_tiny, tree_digest, write_config

TEMPS = {0.5: 1.75, 1.0: 0.8}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained MLP with batch norm (BN calibrated at 0.5 and 1.0) and two temperatures."""
    root = tmp_path_factory.mktemp("pretrained")
    cfg = write_config(
        root / "c.yaml", model={"name": "mlp", "hidden": [16], "groups": 4, "norm": "batch"}
    )
    assert train_tiny(root / "run", cfg=cfg) == 0
    step = torch.load(root / "run" / "checkpoint.pt", weights_only=True)["step"]
    fits = {w: TemperatureFit(t, 1.0, 0.9) for w, t in TEMPS.items()}
    save_temperatures(root / "run", fits, step, samples=1)
    return root / "run"


@pytest.fixture()
def saved(run_dir, tmp_path) -> Path:
    return from_run(run_dir).save_pretrained(tmp_path / "shared")


def _checkpoint_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_round_trip_is_exact(run_dir, saved):
    want = _checkpoint_state(run_dir)
    pre = from_pretrained(saved)
    got = pre.model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    # the batch-norm statistics per width are there (two calibrated widths in every nested norm)
    norms = nested_norms(pre.model)
    assert norms and all(sorted(bn.calib_width.tolist()) == [0.5, 1.0] for bn in norms)
    assert pre.bn_calibrated_widths() == [0.5, 1.0]
    assert pre.temperatures == TEMPS and pre.temperature(0.5) == 1.75
    assert pre.temperature(0.25) == 1.0
    assert pre.input_shape == (1, 8, 8) and pre.num_classes == 10
    # same function as the run's model at a calibrated width, without an uncalibrated warning
    loaded = loaded_mod.load_run(run_dir)
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad(), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = pre.model(x, width=0.5)
        assert torch.equal(out, loaded.model(x, width=0.5))
        torch.testing.assert_close(
            pre.predict(x, 0.5), loaded.predict(x, 0.5), atol=0, rtol=0
        )  # the same temperature applied
    assert not [w for w in record if issubclass(w.category, UncalibratedWidthWarning)]


def test_files_are_plain_json_and_safetensors(saved):
    doc = json.loads((saved / CONFIG_FILE).read_text())
    assert doc["format"] == PRETRAINED_FORMAT
    assert doc["temperatures"] == {"0.5": 1.75, "1": 0.8}
    assert doc["bn_calibrated_widths"] == [0.5, 1.0]
    assert doc["config"]["model"]["norm"] == "batch"
    data = (saved / WEIGHTS_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == doc["weights_sha256"]
    # the safetensors layout read by hand: 8-byte little-endian header size, JSON header, raw bytes
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"] == {"format": PRETRAINED_FORMAT}
    assert any(k.endswith("calib_mean") for k in header)
    assert sorted(safetensors.torch.load_file(saved / WEIGHTS_FILE)) == sorted(
        k for k in header if k != "__metadata__"
    )


def test_loading_needs_no_pickle_no_run_and_no_data(run_dir, saved, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("pickle / torch.load used while loading a pretrained directory")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(loaded_mod, "load_dataset", refuse)
    elsewhere = saved.parent / "moved"
    shutil.move(saved, elsewhere)  # nothing refers back to the run
    pre = from_pretrained(elsewhere)
    assert pre.source["step"] > 0 and pre.source["complete"] is True


def test_from_run_does_not_load_the_data_set(run_dir, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("from_run loaded the data set")

    monkeypatch.setattr(loaded_mod, "load_dataset", refuse)
    assert from_run(run_dir).temperatures == TEMPS


def _rewrite_weights(d: Path, state: dict[str, torch.Tensor]) -> None:
    """Replace the weights and record their new SHA-256 (a consistent but wrong directory)."""
    data = safetensors.torch.save(state, metadata={"format": PRETRAINED_FORMAT})
    (d / WEIGHTS_FILE).write_bytes(data)
    _edit_doc(d, lambda doc: doc.update(weights_sha256=hashlib.sha256(data).hexdigest()))


def _edit_doc(d: Path, edit) -> None:
    doc = json.loads((d / CONFIG_FILE).read_text())
    edit(doc)
    (d / CONFIG_FILE).write_text(json.dumps(doc))


def _flip_a_byte(d: Path) -> None:
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0x01
    (d / WEIGHTS_FILE).write_bytes(bytes(data))


def _reshape_one(d: Path) -> None:
    state = safetensors.torch.load_file(d / WEIGHTS_FILE)
    k = next(k for k, v in state.items() if v.dim() == 2 and "calib" not in k)
    state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])
    _rewrite_weights(d, state)


def _nan_one(d: Path) -> None:
    state = safetensors.torch.load_file(d / WEIGHTS_FILE)
    k = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
    state[k] = state[k].clone().fill_(float("nan"))
    _rewrite_weights(d, state)


def _garbage_weights(d: Path) -> None:
    data = b"\x08" + b"\x00" * 7 + b"garbage!"  # a header length, then no JSON
    (d / WEIGHTS_FILE).write_bytes(data)
    _edit_doc(d, lambda doc: doc.update(weights_sha256=hashlib.sha256(data).hexdigest()))


def _drop_one(d: Path) -> None:
    state = safetensors.torch.load_file(d / WEIGHTS_FILE)
    state.pop(sorted(state)[0])
    _rewrite_weights(d, state)


@pytest.mark.parametrize(
    "tamper, needle",
    [
        (_flip_a_byte, "SHA-256 differs"),
        (_reshape_one, "do not match the architecture"),
        (_drop_one, "do not match the architecture"),
        (_nan_one, "non-finite weights"),
        (lambda d: (d / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda d: _edit_doc(d, lambda doc: doc.update(format="other")), "not a bnn-nested"),
        (lambda d: _edit_doc(d, lambda doc: doc.pop("input_shape")), "malformed"),
        (lambda d: _edit_doc(d, lambda doc: doc.update(num_classes=0)), "malformed"),
        (lambda d: _edit_doc(d, lambda doc: doc["config"].update(model=5)), "malformed"),
        (
            lambda d: _edit_doc(d, lambda doc: doc["temperatures"].update({"0.5": -1})),
            "not a width in \\(0, 1\\] with a temperature > 0",
        ),
        (
            lambda d: _edit_doc(
                d,
                lambda doc: doc["config"]["model"].update(name="import", target="os:getcwd"),
            ),
            "model.name: import",
        ),
        (_garbage_weights, "corrupt safetensors file"),
    ],
)
def test_a_malformed_or_tampered_directory_is_refused_in_one_line(saved, tamper, needle):
    tamper(saved)
    with pytest.raises(PretrainedError, match=needle) as err:
        from_pretrained(saved)
    assert "\n" not in str(err.value) and str(saved) in str(err.value)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_posing_as_weights_is_refused_unrun(saved, tmp_path):
    marker = tmp_path / "code-ran"
    data = pickle.dumps({"w": _Payload(str(marker))})
    (saved / WEIGHTS_FILE).write_bytes(data)
    _edit_doc(saved, lambda doc: doc.update(weights_sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(PretrainedError, match="corrupt safetensors file"):
        from_pretrained(saved)
    assert not marker.exists()


def test_missing_files_and_directories(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained directory not found"):
        from_pretrained(tmp_path / "nope")
    (saved / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="weights file .* not found"):
        from_pretrained(saved)


def test_save_refuses_to_overwrite(run_dir, saved):
    pre = from_run(run_dir)
    before = tree_digest(saved)
    with pytest.raises(FileExistsError, match="already exists"):
        save_pretrained(pre, saved)
    assert tree_digest(saved) == before
    (saved / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        save_pretrained(pre, saved, overwrite=True)
    (saved / "notes.txt").unlink()
    save_pretrained(pre, saved, overwrite=True)  # ours: replaced
    assert from_pretrained(saved).temperatures == TEMPS


# --------------------------------------------------------------------------- command line


def test_cli_export_weights(run_dir, tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["export-weights", str(run_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"written: {out / WEIGHTS_FILE}" in text
    assert "batch-norm statistics for widths: 0.5, 1" in text
    pre = from_pretrained(out)
    want = _checkpoint_state(run_dir)
    assert all(torch.equal(pre.model.state_dict()[k], v) for k, v in want.items())


def _broken_run(run_dir: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "broken"
    shutil.copytree(run_dir, bad)
    data = bytearray((bad / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "checkpoint.pt").write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing run", "run directory not found"),
        ("broken checkpoint", "checkpoint"),
        ("out not empty", "already exists and is not empty"),
        ("out is a file", "exists and is not a directory"),
        ("empty out", "--out: empty path"),
        ("overwrite foreign", "did not write"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(run_dir, tmp_path, capsys, case, needle):
    run, out = run_dir, tmp_path / "w"
    out_arg = str(out)
    extra: list[str] = []
    if case == "missing run":
        run = tmp_path / "no-run"
    elif case == "broken checkpoint":
        run = _broken_run(run_dir, tmp_path)
    elif case in ("out not empty", "overwrite foreign"):
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        extra = ["--overwrite"] if case == "overwrite foreign" else []
    elif case == "out is a file":
        out.write_text("mine")
    elif case == "empty out":
        out_arg = " "
    before = tree_digest(tmp_path)
    run_before = tree_digest(run_dir)
    assert main(["export-weights", str(run), "--out", out_arg, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnn-nested: error:") and needle in err and "\n" not in err
    assert tree_digest(tmp_path) == before and tree_digest(run_dir) == run_before


def test_predict_defaults_to_the_sample_count_the_temperature_was_fitted_with(saved, monkeypatch):
    """Issue 28 item 2: a temperature fitted with S = 4 samples is stored with that S, survives the
    round trip, and ``predict`` then draws 4 samples by default (it drew 1, the deterministic
    network, to which that temperature does not belong); asking for another S warns."""
    import bnn_nested.evaluation.calibration as calibration
    from bnn_nested.evaluation.calibration import Temperature

    monkeypatch.setattr(calibration, "_WARNED", set())
    pre = from_pretrained(saved)
    pre.temperatures = {w: Temperature(t, "per_sample", 4) for w, t in TEMPS.items()}
    again = from_pretrained(pre.save_pretrained(saved.parent / "s4"))
    doc = json.loads((saved.parent / "s4" / CONFIG_FILE).read_text())
    assert doc["temperature_samples"] == 4 and doc["temperature_mode"] == "per_sample"
    t = again.temperature(0.5)
    assert (float(t), t.mode, t.samples) == (1.75, "per_sample", 4)
    x = torch.randn(3, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert again.predict(x, 0.5).shape == (4, 3, 10)
        assert again.predict(x, 0.5, calibrated=False).shape == (1, 3, 10)
    with pytest.warns(UserWarning, match="fitted with 4 Monte-Carlo sample"):
        again.predict(x, 0.5, samples=1)
    # the directory written before (temperatures fitted with one sample) predicts one sample
    assert from_pretrained(saved).predict(x, 0.5).shape == (1, 3, 10)


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("temperature_mode", "mean", "temperature_mode must be one of per_sample, pooled"),
        ("temperature_samples", 0, "temperature_samples must be an integer >= 1 or null"),
    ],
)
def test_a_bad_temperature_field_is_refused_in_one_line(saved, field, value, needle):
    doc = json.loads((saved / CONFIG_FILE).read_text())
    doc[field] = value
    (saved / CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(PretrainedError, match=needle):
        from_pretrained(saved)
