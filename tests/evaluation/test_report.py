"""Per-width evaluation, OOD sets, report writing, the compare command."""

import json

import pytest
import torch
from matplotlib.image import imread
from torch.utils.data import DataLoader

from bnn_nested.cli.main import main
from bnn_nested.data import hold_out_classes, load_digits
from bnn_nested.evaluation.metrics import classification_report
from bnn_nested.evaluation.prediction import predict
from bnn_nested.evaluation.report import Report, evaluate, make_ood_sets
from tests.zoo import mlp


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def _model(num_classes=10, dropout=0.0):
    torch.manual_seed(0)
    return mlp(64, num_classes, hidden=[32], groups=4, kept=1, dropout=dropout).eval()


def test_evaluate_matches_direct_metrics_and_counts_flops(digits):
    model = _model()
    rep = evaluate(model, digits, [0.5, 1.0], ood=["gaussian"], ood_size=50)
    x = digits.test.tensors[0]
    direct = classification_report(predict(model, x, 0.5), digits.test.tensors[1])
    for k, v in direct.items():
        assert rep.rows[0.5][k] == pytest.approx(v, rel=1e-6)
    # 64 -> 24 (3 of 4 groups of 8) -> 10, FLOPs = 2 x MACs per example
    assert rep.rows[0.5]["cost/flops"] == 2 * (64 * 24 + 24 * 10)
    assert 0.0 <= rep.rows[1.0]["ood/gaussian/entropy/auroc"] <= 1.0
    assert "ood/gaussian/mutual_information/auroc" not in rep.rows[1.0]  # needs S > 1


def test_mc_dropout_samples_differ_and_give_mutual_information(digits):
    model = _model(dropout=0.3)
    x = digits.test.tensors[0][:20]
    probs = predict(model, x, 1.0, samples=4)
    assert probs.shape == (4, 20, 10)
    assert not torch.allclose(probs[0], probs[1])
    assert torch.equal(predict(model, x, 1.0)[0], predict(model, x, 1.0)[0])  # S = 1: deterministic
    rep = evaluate(model, digits, [1.0], samples=4, ood=["uniform"], ood_size=40)
    assert "ood/uniform/mutual_information/auroc" in rep.rows[1.0]


def test_hold_out_classes(digits):
    in_dist, ood = hold_out_classes(digits, [8, 9])
    assert in_dist.num_classes == 8
    ys = torch.tensor([in_dist.train[i][1] for i in range(len(in_dist.train))])
    assert ys.min() == 0 and ys.max() == 7
    assert len(ood) == int(((digits.test.tensors[1] == 8) | (digits.test.tensors[1] == 9)).sum())
    with pytest.raises(ValueError, match="held_out_classes"):
        hold_out_classes(digits, [10])
    sets = make_ood_sets(in_dist, ["patches"], 10)
    assert sets["patches"].tensors[0].shape == (10, 64)


def test_unknown_ood_set_is_clear(digits):
    with pytest.raises(ValueError, match="unknown OOD set 'bogus'"):
        make_ood_sets(digits, ["bogus"], 10)
    with pytest.raises(ValueError, match="heldout"):
        make_ood_sets(digits, ["heldout"], 10)


@pytest.mark.slow
def test_report_write_and_round_trip(tmp_path, digits):
    rep = evaluate(_model(), digits, [0.25, 1.0], ood=["gaussian"], ood_size=30)
    written = rep.write(tmp_path)
    assert Report.from_dict(json.loads(written["json"].read_text())).rows == rep.rows
    assert "| width |" in written["md"].read_text()
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert any("reliability" in p.name for p in pngs) and any("vs_flops" in p.name for p in pngs)
    for p in pngs:
        assert imread(p).ndim == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_compare_command(tmp_path, capsys):
    for name, acc in (("a", 0.9), ("b", 0.8)):
        rep = Report(rows={0.5: {"cls/acc": acc - 0.1}, 1.0: {"cls/acc": acc}})
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(rep.to_dict()))
    out = tmp_path / "cmp"
    rc = main(
        [
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--out",
            str(out),
            "--metrics",
            "cls/acc",
        ]
    )
    assert rc == 0
    text = (out / "compare.md").read_text()
    assert "| 1 | 0.9000 | 0.8000 |" in text
    assert (out / "plots" / "cls_acc_vs_width.png").is_file()
    rc = main(["compare", str(tmp_path / "nope")])
    assert rc == 2 and "evaluate" in capsys.readouterr().err


def test_torchvision_ood_pair_reads_local_root(digits, monkeypatch):
    """A torchvision OOD set (e.g. SVHN for CIFAR-10) is loaded from the data root, normalised like
    the in-distribution set; without a root the error says so."""

    calls = []

    def fake(name, root, image_size=None, normalize_like=None):
        calls.append((name, root, normalize_like))
        return torch.utils.data.TensorDataset(torch.zeros(3, 64), torch.zeros(3, dtype=torch.long))

    import bnn_nested.evaluation.report as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "load_torchvision_test", fake)
    sets = make_ood_sets(digits, ["svhn"], 10, root="/data")
    assert calls == [("svhn", "/data", "digits")] and len(sets["svhn"]) == 3
    with pytest.raises(ValueError, match="needs a local data root"):
        make_ood_sets(digits, ["svhn"], 10)


def test_ood_scores_use_the_temperature_scaled_prediction_on_both_sides(digits):
    """With stored temperatures, in- and out-of-distribution scores come from the same calibrated
    predictor: the AUROC equals one computed by hand from T-scaled probabilities on both sides
    (scaling only one side, as before, changes the entropy AUROC)."""
    from sklearn.metrics import roc_auc_score

    model = _model()
    gen = torch.Generator().manual_seed(1)
    ood = torch.utils.data.TensorDataset(
        torch.randn(200, 64, generator=gen) * 3, torch.zeros(200, dtype=torch.long)
    )
    temps = {1.0: 4.0}
    rep = evaluate(model, digits, [1.0], ood={"noise": ood}, scores=["entropy"], temperatures=temps)

    def entropy(x):
        with torch.no_grad():
            p = torch.softmax(model(x, width=1.0).double() / 4.0, -1)
        return -(p * p.clamp_min(1e-300).log()).sum(-1)

    x_in = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    s_in, s_out = entropy(x_in), entropy(ood.tensors[0])
    labels = [0] * len(s_in) + [1] * len(s_out)  # OOD is the positive class
    expected = roc_auc_score(labels, torch.cat([s_in, s_out]).numpy())
    assert rep.rows[1.0]["ood/noise/entropy/auroc"] == pytest.approx(expected, abs=1e-6)


def _noise_set(n=150, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 64, generator=gen) * 3, torch.zeros(n, dtype=torch.long)
    )


def test_logit_scores_are_computed_from_the_logits(digits):
    """Issue 28 item 5: ``energy`` and ``max_logit`` were accepted, then failed ("needs logits")
    after the test split was predicted. Their AUROC now equals one computed by hand from the
    network's logits (Liu et al. eq. 5; -max logit) and scikit-learn."""
    from sklearn.metrics import roc_auc_score

    model, ood = _model(), _noise_set()
    rep = evaluate(model, digits, [0.5], ood={"noise": ood}, scores=["energy", "max_logit"])
    x_in = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
    with torch.no_grad():
        z_in, z_out = model(x_in, width=0.5).double(), model(ood.tensors[0], width=0.5).double()
    labels = [0] * len(z_in) + [1] * len(z_out)
    for name, score in (
        ("energy", lambda z: -torch.logsumexp(z, -1)),
        ("max_logit", lambda z: -z.max(-1).values),
    ):
        expected = roc_auc_score(labels, torch.cat([score(z_in), score(z_out)]).numpy())
        assert rep.rows[0.5][f"ood/noise/{name}/auroc"] == pytest.approx(expected, abs=1e-6)


def test_logit_scores_average_over_mc_samples(digits):
    """With S > 1 the energy is the mean of the per-sample energies (docs/METHODS.md#ood-detection),
    checked on the same seeded samples drawn by hand."""
    from sklearn.metrics import roc_auc_score

    from bnn_nested.evaluation.prediction import predict_loader

    model, ood = _model(dropout=0.3), _noise_set(n=60)
    torch.manual_seed(11)
    rep = evaluate(model, digits, [1.0], samples=3, ood={"noise": ood}, scores=["energy"])
    torch.manual_seed(11)
    z_in, _ = predict_loader(model, DataLoader(digits.test, 512), 1.0, 3, logits=True)
    z_out, _ = predict_loader(model, DataLoader(ood, 512), 1.0, 3, logits=True)
    s = torch.cat(
        [-torch.logsumexp(z_in.double(), -1).mean(0), -torch.logsumexp(z_out.double(), -1).mean(0)]
    )
    expected = roc_auc_score([0] * z_in.shape[1] + [1] * z_out.shape[1], s.numpy())
    assert rep.rows[1.0]["ood/noise/energy/auroc"] == pytest.approx(expected, abs=1e-9)


def test_unknown_score_is_refused_before_any_prediction(digits, monkeypatch):
    import bnn_nested.evaluation.report as evaluate_mod

    def no_prediction(*args, **kwargs):
        raise AssertionError("predicted before refusing")

    monkeypatch.setattr(evaluate_mod, "predict_loader", no_prediction)
    with pytest.raises(ValueError, match="unknown OOD score 'energie'; accepted: msp"):
        evaluate(_model(), digits, [1.0], ood={"noise": _noise_set()}, scores=["energie"])


def test_pooled_temperature_in_evaluate(digits):
    """A ``pooled`` temperature scores softmax(log p̄ / T) (one distribution): the report's NLL
    equals a numpy computation on the same seeded samples, and mutual information (read off the
    untempered samples) is still reported."""
    import numpy as np

    from bnn_nested.evaluation.calibration import Temperature
    from bnn_nested.evaluation.prediction import predict_loader

    model = _model(dropout=0.3)
    temps = {1.0: Temperature(2.0, "pooled", 4)}
    torch.manual_seed(5)
    rep = evaluate(model, digits, [1.0], samples=4, temperatures=temps, selective=None)
    torch.manual_seed(5)
    probs, y = predict_loader(model, DataLoader(digits.test, 512), 1.0, 4)
    logq = np.log(probs.double().numpy().mean(0)) / 2.0
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    assert rep.rows[1.0]["cls/nll"] == pytest.approx(-logq[np.arange(len(y)), y.numpy()].mean())
    assert rep.meta["temperature_modes"] == {"1": "pooled"}
    torch.manual_seed(5)
    rep = evaluate(
        model,
        digits,
        [1.0],
        samples=4,
        temperatures=temps,
        ood={"noise": _noise_set(n=40)},
        selective="mutual_information",
    )
    assert 0.0 < rep.rows[1.0]["ood/noise/mutual_information/auroc"] < 1.0
    assert rep.rows[1.0]["sel/aurc"] > 0.0
