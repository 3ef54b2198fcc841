"""Issue 15 end to end: temperatures in evaluate / select / cascade / export / LoadedRun.predict,
conformal sets and AURC in the report, the CLI (``evaluate --calibrate``, ``cascade``) and its bad
input (exit 2, one line, nothing written)."""

import json

import pytest
import torch
from matplotlib.image import imread

from bnn_nested.cli.main import main
from bnn_nested.data import load_digits
from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.serialize import load_exported, save_exported
from bnn_nested.evaluation.calibration import TEMPERATURE_FILE, apply_temperature
from bnn_nested.evaluation.conformal import conformal_threshold
from bnn_nested.evaluation.metrics import classification_report
from bnn_nested.evaluation.prediction import predict
from bnn_nested.evaluation.report import evaluate
from tests.zoo import mlp


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def _model():
    torch.manual_seed(0)
    return mlp(64, 10, hidden=[32], groups=4, kept=1).eval()


def test_evaluate_applies_temperatures_and_reports_before(digits):
    model = _model()
    temps = {0.5: 2.0, 1.0: 0.5}
    rep = evaluate(model, digits, [0.5, 1.0], temperatures=temps, alphas=[0.1], selective="msp")
    x, y = digits.test.tensors
    for w, t in temps.items():
        raw = predict(model, x, w)
        before = classification_report(raw, y)
        after = classification_report(torch.softmax(raw.log() / t, -1), y)
        assert rep.rows[w]["raw/cal/ece"] == pytest.approx(before["cal/ece"], rel=1e-6)
        assert rep.rows[w]["cal/ece"] == pytest.approx(after["cal/ece"], rel=1e-5)
        assert rep.rows[w]["cls/nll"] == pytest.approx(after["cls/nll"], rel=1e-5)
        assert rep.rows[w]["cal/temperature"] == t
        # set coverage of the thr sets, recomputed by hand from val calibration
        xv, yv = digits.val.tensors
        pv = torch.softmax(predict(model, xv, w).log() / t, -1)[0].double()
        q = conformal_threshold(1 - pv[torch.arange(len(yv)), yv], 0.1)
        pt = torch.softmax(raw.log() / t, -1)[0].double()
        sets = (1 - pt) <= q
        assert rep.rows[w]["set/0.1/coverage"] == pytest.approx(
            float(sets[torch.arange(len(y)), y].double().mean())
        )
        assert rep.rows[w]["set/0.1/size"] == pytest.approx(float(sets.sum(1).double().mean()))
        assert 0 <= rep.rows[w]["sel/aurc"] <= 1
    assert set(rep.risk_coverage) == {0.5, 1.0}
    with pytest.raises(ValueError, match="split='test'"):
        evaluate(model, digits, [1.0], alphas=[0.1], split="val")


@pytest.mark.slow
def test_export_bakes_the_temperature(tmp_path, digits):
    model = _model()
    x = digits.val.tensors[0][:16]
    plain = export_width(model, 0.5, x[:2], temperature=2.5)
    torch.testing.assert_close(plain(x), model(x, width=0.5) / 2.5, atol=1e-5, rtol=1e-5)
    path = save_exported(plain, x[:2], tmp_path / "w.pt2")
    torch.testing.assert_close(load_exported(path)(x), plain(x))
    probs = torch.softmax(load_exported(path)(x), -1)
    expected = apply_temperature(predict(model, x, 0.5), 2.5)[0]
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=0)


def _train(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--config", "configs/digits_mlp.yaml", "--out", str(run), "--quiet"]
    argv += ["--set", "train.epochs=2", "--set", "model.hidden=[32]"]
    assert main(argv) == 0
    return run


@pytest.mark.slow
def test_cli_calibrate_then_everything_applies_it(tmp_path, capsys):
    from bnn_nested.runs.loaded import load_run

    run = _train(tmp_path)
    rc = main(["evaluate", str(run), "--widths", "0.5,1", "--calibrate", "temperature"])
    out = capsys.readouterr().out
    assert rc == 0 and "temperature per width" in out and "raw/cal/ece" in out
    doc = json.loads((run / TEMPERATURE_FILE).read_text())
    loaded = load_run(run)
    assert doc["step"] == loaded.checkpoint["step"] and set(doc["widths"]) == {"0.5", "1"}
    for w in doc["widths"].values():
        assert w["nll_after"] <= w["nll_before"]
    report = json.loads((run / "report.json").read_text())["widths"]
    assert report["1"]["cal/temperature"] == pytest.approx(doc["widths"]["1"]["temperature"])
    assert "set/0.1/coverage" in report["1"] and "sel/aurc" in report["1"]
    for name in ("risk_coverage", "set_coverage_vs_width", "set_size_vs_width"):
        img = imread(run / "plots" / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img[..., :3].std() > 0.05  # not blank
    # LoadedRun.predict applies the stored temperature
    x = loaded.splits.test.tensors[0][:8]
    t = doc["widths"]["0.5"]["temperature"]
    torch.testing.assert_close(
        loaded.predict(x, 0.5), apply_temperature(predict(loaded.model, x, 0.5), t)
    )
    torch.testing.assert_close(
        loaded.predict(x, 0.5, calibrated=False), predict(loaded.model, x, 0.5)
    )
    # evaluate without --calibrate applies them; --calibrate none does not
    assert main(["evaluate", str(run), "--widths", "0.5,1", "--no-plots"]) == 0
    assert "applying stored temperatures" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--widths", "1", "--calibrate", "none", "--no-plots"]) == 0
    assert "cal/temperature" not in json.loads((run / "report.json").read_text())["widths"]["1"]
    capsys.readouterr()
    # the cascade reads them too and writes its report
    rc = main(["cascade", str(run), "--widths", "0.5,1", "--target-accuracy", "0.5", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["choice"]["feasible"]
    assert res["meta"]["temperatures"]["1"] == pytest.approx(doc["widths"]["1"]["temperature"])
    assert (run / "cascade.json").is_file()
    assert (run / "plots" / "cascade_acc_vs_flops.png").is_file()
    # select with and without temperatures caches both
    assert main(["select", str(run), "--widths", "0.5,1", "--json"]) == 0
    assert main(["select", str(run), "--widths", "0.5,1", "--json", "--no-temperature"]) == 0
    capsys.readouterr()
    cache = json.loads((run / "deploy" / "val_metrics.json").read_text())
    assert len(cache) == 2 and any("T=" in k for k in cache)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["evaluate", "--calibrate", "platt"], "--calibrate"),
        (["evaluate", "--alpha", "0"], "--alpha"),
        (["evaluate", "--alpha", "x"], "--alpha"),
        (["evaluate", "--set-score", "lac"], "--set-score"),
        (["evaluate", "--split", "val", "--alpha", "0.1"], "--alpha"),
        (["evaluate", "--selective-score", "mutual_information", "--samples", "1"], "samples"),
        (["cascade"], "--target-accuracy"),
        (["cascade", "--target-accuracy", "2"], "--target-accuracy"),
        (["cascade", "--max-flops", "-1"], "--max-flops"),
        (["cascade", "--max-flops", "10", "--target-accuracy", "0.5"], "exactly one"),
        (["cascade", "--max-flops", "10", "--score", "energy"], "--score"),
        (["cascade", "--max-flops", "10", "--alpha", "1"], "--alpha"),
    ],
)
def test_bad_input_exits_2_one_line_nothing_written(tmp_path, capsys, extra, needle):
    run = tmp_path / "notrun"  # flags are checked before the run is read: nothing to write into
    run.mkdir()
    rc = main([extra[0], str(run), *extra[1:]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err
    assert list(run.iterdir()) == []
