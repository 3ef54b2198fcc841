"""Math of the Downhill distribution and the ordering distributions (fixed seeds, stated tolerances)."""

import math

import pytest
import torch
from scipy import stats
from torch.distributions import RelaxedOneHotCategorical, kl_divergence

from bnn_nested.distributions import (
    Downhill,
    categorical_kl,
    keep_probs_from_logits,
    masks_to_simplex,
    simplex_to_masks,
    stick_breaking_logits,
    truncated_geometric_logits,
    uniform_logits,
)
from bnn_nested.nn.ordering_unit import continuation_logits_matching


def test_stick_breaking_closed_form_k2():
    r = torch.tensor([0.3, -1.2])
    b1, b2 = torch.sigmoid(r)
    expected = torch.stack([1 - b1, b1 * (1 - b2), b1 * b2])
    q = stick_breaking_logits(r).exp()
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(
        keep_probs_from_logits(stick_breaking_logits(r)), torch.stack([b1, b1 * b2])
    )


def test_truncated_geometric_and_uniform():
    pi, K = 0.9, 5
    p = truncated_geometric_logits(pi, K).exp()
    expected = torch.tensor([pi**b * (1 - pi) for b in range(K)] + [pi**K])
    torch.testing.assert_close(p, expected)
    assert uniform_logits(K).exp().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prior_pi"):
        truncated_geometric_logits(1.0, K)


def test_continuation_logits_inverse():
    logits = torch.randn(7)
    r = continuation_logits_matching(logits)
    torch.testing.assert_close(
        stick_breaking_logits(r), torch.log_softmax(logits, -1), atol=1e-5, rtol=0
    )


def test_simplex_mask_maps_are_inverse():
    s = torch.softmax(torch.randn(4, 6), -1)
    torch.testing.assert_close(masks_to_simplex(simplex_to_masks(s)), s)


def test_samples_are_downhill_and_in_support():
    d = Downhill(torch.randn(3, 9), temperature=0.7)
    m = d.rsample((500,))
    assert m.shape == (500, 3, 8)
    assert (m[..., 1:] <= m[..., :-1] + 1e-6).all()
    assert ((m >= 0) & (m <= 1)).all()
    assert d.support.check(m).all()


def test_hard_truncation_frequencies_chi_square():
    """Frequencies of b = sum(hard mask) match softmax(logits) (chi-square, 40k samples)."""
    torch.manual_seed(1)
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3, 1.0])
    d = Downhill(logits, temperature=0.8, hard=True)
    m = d.rsample((40_000,))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    b = m.sum(-1).long()
    counts = torch.bincount(b, minlength=6).double()
    expected = torch.softmax(logits.double(), -1) * counts.sum()
    p = stats.chisquare(counts.numpy(), expected.numpy()).pvalue
    assert p > 1e-3, p
    # and the mask itself equals 1[k <= b]
    k = torch.arange(1, 6)
    assert torch.equal(m, (k <= b.unsqueeze(-1)).float())


def test_wrong_logits_convention_would_fail_chi_square():
    """Guard: feeding probabilities as logits (the reference code's bug) is detected by the test."""
    torch.manual_seed(1)
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3, 1.0])
    wrong = Downhill(torch.softmax(logits, -1), temperature=0.8, hard=True)
    b = wrong.rsample((40_000,)).sum(-1).long()
    counts = torch.bincount(b, minlength=6).double()
    expected = torch.softmax(logits.double(), -1) * counts.sum()
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue < 1e-6


@pytest.mark.parametrize("tau", [0.3, 1.0, 2.5])
def test_log_prob_equals_concrete_density_of_differences(tau):
    logits = torch.randn(2, 5, dtype=torch.float64)
    d = Downhill(logits, temperature=tau)
    m = d.rsample((7,))
    ref = RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits)
    plain = m.detach().clone()  # no stored log-simplex: scored from the successive differences
    torch.testing.assert_close(
        d.log_prob(plain), ref.log_prob(masks_to_simplex(plain)), rtol=1e-9, atol=1e-9
    )
    # a sample of rsample is scored at the simplex point the sampler drew
    s = m._log_simplex.exp()
    torch.testing.assert_close(d.log_prob(m), ref.log_prob(s), rtol=1e-9, atol=1e-9)


def test_log_prob_hand_formula_k1():
    """K = 1: m = s_1, density (Maddison et al.) tau a0 a1 m^-tau-1 (1-m)^-tau-1 / (a0 (1-m)^-tau + a1 m^-tau)^2."""
    a0, a1, tau, m = 0.3, 0.7, 0.6, 0.35
    d = Downhill(torch.tensor([math.log(a0), math.log(a1)], dtype=torch.float64), tau)
    dens = (
        tau
        * a0
        * a1
        * m ** (-tau - 1)
        * (1 - m) ** (-tau - 1)
        / (a0 * (1 - m) ** -tau + a1 * m**-tau) ** 2
    )
    assert d.log_prob(torch.tensor([m], dtype=torch.float64)).item() == pytest.approx(
        math.log(dens), rel=1e-10
    )


def test_density_integrates_to_one_k2():
    """Midpoint rule over the region 1 >= m1 >= m2 >= 0 (tolerance 1e-2)."""
    d = Downhill(torch.tensor([0.2, -0.5, 0.4], dtype=torch.float64), temperature=1.5)
    n = 800
    g = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    m1, m2 = torch.meshgrid(g, g, indexing="ij")
    keep = m2 < m1
    pts = torch.stack([m1[keep], m2[keep]], -1)
    total = d.log_prob(pts).exp().sum() / n**2
    assert total.item() == pytest.approx(1.0, abs=1e-2)


def test_pathwise_gradient_matches_finite_differences():
    """d/dlogits of a common-random-number Monte-Carlo estimate of E[f(m)] (float64 gradcheck)."""
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)

    def objective(logits):
        torch.manual_seed(123)
        m = Downhill(logits, temperature=0.7).rsample((2000,))
        return (m * w).sum(-1).pow(2).mean()

    logits = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-5)


def test_pathwise_gradient_reaches_continuation_logits():
    r = torch.zeros(4, requires_grad=True)
    Downhill(stick_breaking_logits(r), 1.0).rsample((10,)).sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


def test_straight_through_gradient_equals_soft_gradient():
    logits = torch.randn(5, requires_grad=True)
    torch.manual_seed(3)
    Downhill(logits, 0.5, hard=True).rsample().sum().backward()
    g_hard = logits.grad.clone()
    logits.grad = None
    torch.manual_seed(3)
    Downhill(logits, 0.5).rsample().sum().backward()
    torch.testing.assert_close(g_hard, logits.grad)


def test_hard_log_prob_scores_relaxed_sample():
    d_hard = Downhill(torch.randn(4), 0.5, hard=True)
    m = d_hard.rsample()
    assert torch.isfinite(d_hard.log_prob(m))
    torch.testing.assert_close(
        d_hard.log_prob(m), Downhill(d_hard.logits, 0.5).log_prob(m._unquantize)
    )


def test_kl_matches_monte_carlo_over_categoricals():
    q_logits = stick_breaking_logits(torch.tensor([2.0, 0.5, -1.0, 1.0]))
    p_logits = truncated_geometric_logits(0.8, 4)
    kl = kl_divergence(Downhill(q_logits, 1.0, hard=True), Downhill(p_logits, 1.0, hard=True))
    torch.manual_seed(0)
    b = torch.distributions.Categorical(logits=q_logits).sample((200_000,))
    terms = q_logits[b] - p_logits[b]
    se = terms.std() / math.sqrt(len(terms))
    assert abs(kl - terms.mean()) < 4 * se
    assert kl.item() == pytest.approx(categorical_kl(q_logits, p_logits).item())
    same = kl_divergence(Downhill(q_logits, 1.0, hard=True), Downhill(q_logits, 1.0, hard=True))
    assert same.item() == pytest.approx(0, abs=1e-6)


def test_pyro_kl_dispatch():
    from pyro.distributions.kl import kl_divergence as pyro_kl

    q = Downhill(torch.randn(3, 5), 1.0, hard=True)
    p = Downhill(torch.randn(3, 5), 1.0, hard=True)
    torch.testing.assert_close(pyro_kl(q, p), categorical_kl(q.logits, p.logits))


def test_kl_errors_on_mismatch():
    with pytest.raises(ValueError, match="equal K"):
        kl_divergence(Downhill(torch.randn(4), 1.0, True), Downhill(torch.randn(5), 1.0, True))
    with pytest.raises(ValueError, match="temperatures"):
        kl_divergence(Downhill(torch.randn(4), 1.0, True), Downhill(torch.randn(4), 2.0, True))


def test_low_temperature_approaches_binary_masks():
    """Fraction of mask entries within 0.01 of {0, 1} grows as tau -> 0 and exceeds 0.995 at 1e-3."""
    logits = torch.randn(6)

    def near_binary(tau):
        m = Downhill(logits, temperature=tau).rsample((4000,))
        return ((m < 1e-2) | (m > 1 - 1e-2)).float().mean().item()

    fractions = [near_binary(t) for t in (2.0, 0.3, 0.03, 0.001)]
    assert fractions == sorted(fractions), fractions
    assert fractions[0] < 0.5 and fractions[-1] > 0.995


def test_batch_shapes_expand_and_temperature_per_batch():
    d = Downhill(torch.randn(2, 1, 4), temperature=torch.tensor([[0.5], [1.0]]))
    assert d.batch_shape == (2, 1) and d.event_shape == (3,)
    e = d.expand((2, 5))
    assert e.batch_shape == (2, 5)
    assert e.rsample((3,)).shape == (3, 2, 5, 3)
    assert e.log_prob(e.rsample()).shape == (2, 5)


def test_validation_errors():
    with pytest.raises(ValueError):
        Downhill(torch.randn(4), temperature=-1.0, validate_args=True)
    with pytest.raises(ValueError, match="last dimension"):
        Downhill(torch.randn(1), temperature=1.0)
    d = Downhill(torch.randn(4), temperature=1.0, validate_args=True)
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.2, 0.5, 0.1]))  # not non-increasing
    with pytest.raises(ValueError, match="broadcast"):
        Downhill(torch.randn(2, 4), temperature=torch.ones(3))
