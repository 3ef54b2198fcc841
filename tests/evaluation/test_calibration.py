"""Temperature scaling: recovers a known temperature, never raises validation NLL, run-dir storage."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

import bnn_nested.evaluation.calibration as calibration
from bnn_nested.evaluation.calibration import (
    TEMPERATURE_FILE,
    Temperature,
    apply_temperature,
    fit_temperature,
    load_temperatures,
    save_temperatures,
    temperature_for,
    temperature_nll,
)


def _synthetic(t_true: float, n: int = 50000, c: int = 10, seed: int = 0):
    """Logits z; labels drawn from softmax(z / t_true); the model reports softmax(z)."""
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z / t_true, -1), 1, generator=g).squeeze(1)
    return torch.softmax(z, -1), y


def _nll_numpy(probs: torch.Tensor, y: torch.Tensor, t: float) -> float:
    """Independent NLL of mean_s softmax(log p_s / T) in numpy (probs (S, N, C))."""
    logp = np.log(np.clip(probs.double().numpy(), 1e-300, None)) / t
    logp = logp - logp.max(-1, keepdims=True)
    q = np.exp(logp)
    q = q / q.sum(-1, keepdims=True)
    pbar = q.mean(0)
    return float(-np.log(pbar[np.arange(len(y)), y.numpy()]).mean())


@pytest.mark.slow
@pytest.mark.parametrize("t_true", [0.5, 1.0, 1.7, 3.0])
def test_recovers_known_temperature_within_2_percent(t_true):
    probs, y = _synthetic(t_true)
    fit = fit_temperature(probs, y)
    assert abs(fit.temperature / t_true - 1) < 0.02
    assert fit.nll_after <= fit.nll_before


@pytest.mark.slow
def test_recovers_temperature_with_mc_samples():
    """S identical MC samples give the same fit as one sample."""
    probs, y = _synthetic(2.0, n=20000, seed=1)
    fit1 = fit_temperature(probs, y)
    fit8 = fit_temperature(probs.unsqueeze(0).expand(4, -1, -1), y)
    assert fit8.temperature == pytest.approx(fit1.temperature, rel=1e-6)
    assert abs(fit8.temperature / 2.0 - 1) < 0.02


@pytest.mark.slow
def test_fit_matches_brute_force_grid():
    """The fitted T is the minimiser of an independent numpy NLL over a fine grid."""
    g = torch.Generator().manual_seed(3)
    z = 2.0 * torch.randn(4, 2000, 5, generator=g, dtype=torch.float64)  # 4 MC samples
    y = torch.randint(0, 5, (2000,), generator=g)
    probs = torch.softmax(z, -1)
    fit = fit_temperature(probs, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nlls = [_nll_numpy(probs, y, t) for t in grid]
    t_star = grid[int(np.argmin(nlls))]
    assert fit.temperature == pytest.approx(t_star, rel=3e-3)
    assert fit.nll_after == pytest.approx(_nll_numpy(probs, y, fit.temperature), abs=1e-9)
    assert fit.nll_after <= min(nlls) + 1e-9


def test_never_raises_validation_nll():
    """On 50 random problems (including mis-specified ones, float32, tiny sets) NLL(T) <= NLL(1)."""
    g = torch.Generator().manual_seed(7)
    for i in range(50):
        n = int(torch.randint(5, 400, (1,), generator=g))
        s = int(torch.randint(1, 5, (1,), generator=g))
        z = float(torch.rand(1, generator=g) * 6) * torch.randn(s, n, 7, generator=g)
        probs = torch.softmax(z, -1)  # float32
        y = torch.randint(0, 7, (n,), generator=g)
        fit = fit_temperature(probs, y)
        before = _nll_numpy(probs, y, 1.0)
        after = _nll_numpy(probs, y, fit.temperature)
        assert after <= before + 1e-6, i


def test_apply_temperature_closed_form():
    p = torch.tensor([[0.8, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(
        apply_temperature(p, 2.0), torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64)
    )
    assert apply_temperature(p, 1.0) is p
    z = torch.randn(3, 4, 6)
    torch.testing.assert_close(
        apply_temperature(torch.softmax(z, -1), 0.7), torch.softmax(z / 0.7, -1), atol=1e-6, rtol=0
    )
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            apply_temperature(p, bad)


def test_store_and_load(tmp_path):
    probs, y = _synthetic(1.5, n=500)
    fits = {0.5: fit_temperature(probs, y), 1.0: fit_temperature(probs, y)}
    save_temperatures(tmp_path, fits, step=42, samples=8)
    doc = json.loads((tmp_path / TEMPERATURE_FILE).read_text())
    assert doc["step"] == 42 and doc["samples"] == 8 and set(doc["widths"]) == {"0.5", "1"}
    temps = load_temperatures(tmp_path, step=42)
    assert temps[0.5] == pytest.approx(fits[0.5].temperature)
    assert temperature_for(temps, 0.25) == 1.0 and temperature_for(temps, 1) == temps[1.0]
    with pytest.warns(UserWarning, match="step 42"):
        assert load_temperatures(tmp_path, step=43) == {}
    assert load_temperatures(tmp_path / "nothing") == {}


# --------------------------------------------------------------------------- issue 28, items 2-3


def _pooled_nll_numpy(probs: torch.Tensor, y: torch.Tensor, t: float) -> float:
    """Independent NLL of softmax(log mean_s p_s / T) in numpy (probs (S, N, C))."""
    logq = np.log(np.clip(probs.double().numpy().mean(0), 1e-300, None)) / t
    logq = logq - logq.max(-1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(-1, keepdims=True))
    return float(-logq[np.arange(len(y)), y.numpy()].mean())


def _mixture(seed: int = 5, s: int = 6, n: int = 3000, c: int = 5):
    """MC samples that disagree (per-sample logits = shared part + large per-sample noise), with
    labels drawn from the sharpened shared part: an under-confident mixture."""
    g = torch.Generator().manual_seed(seed)
    base = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    z = base + 2.5 * torch.randn(s, n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(base / 0.5, -1), 1, generator=g).squeeze(1)
    return torch.softmax(z, -1), y


@pytest.mark.parametrize("mode", ["per_sample", "pooled"])
def test_fit_in_each_mode_matches_a_brute_force_grid(mode):
    """Issue 28 item 3: ``pooled`` fits T on softmax(log p̄ / T), ``per_sample`` on
    mean_s softmax(log p_s / T); each fitted T minimises its own independent numpy NLL on a fine
    grid (and the two differ on disagreeing samples)."""
    probs, y = _mixture()
    fit = fit_temperature(probs, y, mode=mode)
    nll = _pooled_nll_numpy if mode == "pooled" else _nll_numpy
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    nlls = [nll(probs, y, t) for t in grid]
    t_star = grid[int(np.argmin(nlls))]
    assert fit.temperature == pytest.approx(t_star, rel=5e-3)
    assert fit.nll_after == pytest.approx(nll(probs, y, fit.temperature), abs=1e-9)
    assert temperature_nll(probs, y, fit.temperature, mode) == pytest.approx(fit.nll_after)
    assert fit.temperature.mode == mode and fit.temperature.samples == probs.shape[0]
    other = fit_temperature(probs, y, mode="per_sample" if mode == "pooled" else "pooled")
    assert abs(other.temperature / fit.temperature - 1) > 0.05


def test_pooled_apply_is_the_tempered_average():
    probs, _ = _mixture(n=50)
    got = apply_temperature(probs, Temperature(1.7, "pooled", 6))
    logq = np.log(probs.numpy().mean(0)) / 1.7
    want = np.exp(logq) / np.exp(logq).sum(-1, keepdims=True)
    assert got.shape == (1, 50, 5)
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-10, atol=0)
    # a plain number is per-sample unless told; the mode argument overrides
    torch.testing.assert_close(apply_temperature(probs, 1.7, mode="pooled"), got)
    assert apply_temperature(probs, 1.7).shape == probs.shape
    with pytest.raises(ValueError, match="temperature_mode must be one of per_sample, pooled"):
        apply_temperature(probs, 1.7, mode="mean")
    with pytest.raises(ValueError, match="temperature_mode"):
        fit_temperature(probs, torch.zeros(50, dtype=torch.long), mode="averaged")


def test_a_temperature_warns_once_when_applied_at_another_sample_count(monkeypatch):
    """Issue 28 item 2: a temperature fitted with S = 8 samples, applied to one sample (the
    deterministic network, PretrainedModel.predict's old default), warns once; at S = 8 it is
    silent."""
    monkeypatch.setattr(calibration, "_WARNED", set())
    probs, y = _mixture(s=8, n=400)
    t = fit_temperature(probs, y).temperature
    assert t.samples == 8 and t != 1.0
    with pytest.warns(UserWarning, match=r"fitted with 8 Monte-Carlo sample\(s\) .* with 1"):
        apply_temperature(probs[:1], t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_temperature(probs[:1], t)  # once per pair of sample counts
        apply_temperature(probs, t)  # the fitted S: silent
        apply_temperature(probs[:1], float(t))  # a plain number knows nothing to check


def test_store_and_load_keep_mode_and_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "_WARNED", set())
    probs, y = _mixture(s=4, n=300)
    fits = {1.0: fit_temperature(probs, y, mode="pooled")}
    save_temperatures(tmp_path, fits, step=3, samples=4)
    doc = json.loads((tmp_path / TEMPERATURE_FILE).read_text())
    assert doc["mode"] == "pooled" and doc["samples"] == 4
    t = load_temperatures(tmp_path, step=3)[1.0]
    assert (float(t), t.mode, t.samples) == (float(fits[1.0].temperature), "pooled", 4)
    with pytest.warns(UserWarning, match="fitted with 4"):
        apply_temperature(probs[:2], temperature_for({1.0: t}, 1.0))
    # a file written before modes existed is per-sample; an unknown mode is refused
    del doc["mode"]
    (tmp_path / TEMPERATURE_FILE).write_text(json.dumps(doc))
    assert load_temperatures(tmp_path)[1.0].mode == "per_sample"
    doc["mode"] = "mean"
    (tmp_path / TEMPERATURE_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="mode must be one of per_sample, pooled"):
        load_temperatures(tmp_path)
    with pytest.raises(ValueError, match="share one mode"):
        save_temperatures(tmp_path, {0.5: fit_temperature(probs, y), **fits}, step=3, samples=4)
