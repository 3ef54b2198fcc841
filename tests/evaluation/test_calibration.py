"""Temperature scaling: recovers a known temperature, never raises validation NLL, run-dir storage."""

import json
import math

import numpy as np
import pytest
import torch

from bnn_nested.evaluation.calibration import (
    TEMPERATURE_FILE,
    apply_temperature,
    fit_temperature,
    load_temperatures,
    save_temperatures,
    temperature_for,
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
