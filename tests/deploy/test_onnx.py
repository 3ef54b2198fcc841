"""ONNX export of a width: ONNX Runtime computes the nested model at that width (within 1e-4) for
any batch size; the 'onnxruntime' latency mode; TorchScript is deprecated; a missing extra is one
line saying what to install."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from bnn_nested.config import LATENCY_MODES, build_config
from bnn_nested.deploy import onnx as onnx_mod
from bnn_nested.deploy import serialize
from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.onnx import (
    ONNX_ATOL,
    OnnxMismatch,
    OnnxUnavailable,
    OrtModule,
    onnx_width,
    require_onnx,
    verify_onnx,
)
from bnn_nested.deploy.profile import profile_widths
from bnn_nested.deploy.serialize import load_exported, save_exported
from bnn_nested.models import build_model
from tests.deploy.helpers import cnn, trained_like

for _package in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(
        _package, reason="optional extra [onnx] not installed (make install has it)"
    )

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")

WIDTHS = (0.25, 0.5, 1.0)

#: name -> (model config, input shape): the zoo's MLP, LeNet and ResNet-20, and a nestified
#: torchvision ResNet-18 (random init) at a small input.
MODELS = {
    "mlp": ({"name": "mlp", "hidden": [32, 32], "norm": "batch"}, (64,)),
    "lenet": ({"name": "lenet", "hidden": [8, 16, 32], "norm": "batch"}, (1, 28, 28)),
    "resnet20": ({"name": "resnet", "variant": "20", "norm": "batch"}, (3, 16, 16)),
    "torchvision_resnet18": ({"name": "torchvision", "arch": "resnet18"}, (3, 32, 32)),
}


def _model(name: str):
    model_cfg, shape = MODELS[name]
    cfg = build_config({"model": {"groups": 4, "kept": 1, **model_cfg}})
    torch.manual_seed(0)
    model = build_model(cfg.model, {}, shape, 10)
    x = torch.randn(8, *shape)
    return trained_like(model, x), x


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_runtime_equals_the_nested_model_at_three_widths(tmp_path, name):
    model, x = _model(name)
    for width in WIDTHS:
        plain = export_width(model, width, x[:2])
        path = save_exported(plain, x[:2], tmp_path / f"{name}_{width}.onnx", format="onnx")
        runtime = load_exported(path, format="onnx")
        assert isinstance(runtime, OrtModule)
        # dynamic batch: the graph's batch dimension is symbolic, and two other sizes run
        assert isinstance(runtime.session.get_inputs()[0].shape[0], str)
        for batch in (3, 8):
            xb = x[:batch]
            with torch.no_grad():
                want = model(xb, width=width)
            got = runtime(xb)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=ONNX_ATOL, rtol=0)


@pytest.mark.slow  # an ONNX export: seconds under load
def test_the_file_is_plain_onnx_that_onnxruntime_alone_runs(tmp_path):
    import numpy as np
    import onnx
    import onnxruntime as ort

    model, x = cnn()
    path = save_exported(export_width(model, 0.5, x), x[:2], tmp_path / "m.onnx", format="onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x, width=0.5).numpy()
    assert np.abs(y - want).max() <= ONNX_ATOL


@pytest.mark.slow  # an ONNX export: seconds under load
def test_a_mismatch_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    model, x = cnn()
    plain = export_width(model, 0.5, x)

    class Off(OrtModule):  # ONNX Runtime's output shifted by 10x the tolerance
        def __call__(self, xb):
            return super().__call__(xb) + 10 * ONNX_ATOL

    monkeypatch.setattr(serialize, "OrtModule", Off)
    with pytest.raises(OnnxMismatch, match="differs from PyTorch's by"):
        save_exported(plain, x[:2], tmp_path / "m.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_verify_onnx_measures_the_largest_difference():
    x = torch.zeros(2, 3)
    assert verify_onnx(lambda t: t, lambda t: t + 5e-5, [x]) == pytest.approx(5e-5)
    with pytest.raises(OnnxMismatch, match="by 0.001 > 0.0001"):
        verify_onnx(lambda t: t, lambda t: t + 1e-3, [x])
    with pytest.raises(OnnxMismatch, match="by nan"):
        verify_onnx(lambda t: t, lambda t: t * float("nan"), [x])
    with pytest.raises(OnnxMismatch, match="shape"):
        verify_onnx(lambda t: t, lambda t: t[:1], [x])


def test_load_exported_onnx_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        load_exported(tmp_path / "missing.onnx", format="onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a model ONNX Runtime can load") as err:
        load_exported(bad, format="onnx")
    assert "\n" not in str(err.value)


@pytest.mark.slow  # an ONNX export: seconds under load
def test_threads_are_the_session_setting():
    model, x = cnn()
    runtime = onnx_width(model, 0.5, x[:2], threads=1)
    assert runtime.session.get_session_options().intra_op_num_threads == 1
    assert runtime.threads == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        OrtModule(b"", threads=0)


@pytest.mark.slow  # an ONNX export: seconds under load
def test_onnxruntime_latency_mode(tmp_path):
    assert "onnxruntime" in LATENCY_MODES
    model, x = cnn()
    costs = profile_widths(
        model, x[:1], [0.5, 1.0], batch_size=4, threads=1, warmup=1, repeats=2, mode="onnxruntime"
    )
    assert [c.mode for c in costs] == ["onnxruntime"] * 2
    assert all(c.latency_ms is not None and c.latency_ms > 0 for c in costs)
    # counts do not depend on how latency is measured
    sliced = profile_widths(model, x[:1], [0.5, 1.0], latency=False)
    assert [(c.flops, c.params) for c in costs] == [(c.flops, c.params) for c in sliced]
    with pytest.raises(ValueError, match="'onnxruntime' latency mode runs on the CPU"):
        profile_widths(model, x[:1], [0.5], mode="onnxruntime", device="cuda")


def test_torchscript_is_deprecated(tmp_path):
    model, x = cnn()
    plain = export_width(model, 0.5, x)
    with pytest.warns(DeprecationWarning, match="torchscript.*deprecated"):
        path = save_exported(plain, x[:2], tmp_path / "m.ts", format="torchscript")
    with pytest.warns(DeprecationWarning, match="torchscript.*deprecated"):
        load_exported(path, format="torchscript")


def test_without_the_extra_one_line_says_what_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        onnx_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(
        OnnxUnavailable, match=r"need onnxruntime: pip install 'bnn-nested\[onnx\]'"
    ):
        require_onnx()
    model, x = cnn()
    with pytest.raises(OnnxUnavailable, match="bnn-nested"):
        profile_widths(model, x[:1], [0.5], mode="onnxruntime")
    with pytest.raises(OnnxUnavailable):
        save_exported(export_width(model, 0.5, x), x[:2], tmp_path / "m.onnx", format="onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_select_times_widths_under_onnxruntime(tmp_path, capsys, monkeypatch):
    from bnn_nested.cli.main import main
    from tests.trained_runs import train_tiny, tree_digest

    run = tmp_path / "run"
    assert train_tiny(run) == 0
    capsys.readouterr()
    argv = ["select", str(run), "--latency-mode", "onnxruntime", "--threads", "1", "--json"]
    assert main(argv + ["--batch-size", "4"]) in (0, 1)
    doc = json.loads(capsys.readouterr().out)
    assert doc["chosen"]["latency_ms"] > 0
    # without the extra: one line, exit 2, the run directory untouched
    before = tree_digest(run)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        onnx_mod.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    assert main(argv + ["--batch-size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bnn-nested: error:") and "bnn-nested[onnx]" in err and "\n" not in err
    assert tree_digest(run) == before
