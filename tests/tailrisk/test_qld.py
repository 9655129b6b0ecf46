"""QLD and the Gaussian polytope probability on synthetic cases with analytic answers."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.stats import norm

from estimators.tailrisk.actmodel import gaussian_polytope_probability
from estimators.tailrisk.gld import gld_probability
from estimators.tailrisk.qld import (alpha_intervals, qld_probability, shortest_feasible,
                                     split_direction, whiten, whitened_constraints)


def gaussian(n, seed, d=4):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    A = M + 2 * torch.eye(d, dtype=torch.float64)  # a = mu + z Aᵀ: correlated, full rank
    mu = torch.arange(d, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return mu + z @ A.T, mu, A


def wedge(mu, A, c):
    """Constraints whose whitened form is z_i − c_i > 0 (i < len(c)): P = Π Φ(−c_i)."""
    Ainv_T = torch.linalg.inv(A).T  # (a − mu) A^{−T} = z
    G = Ainv_T[:, :len(c)]
    h = -(mu @ G) - torch.tensor(c, dtype=torch.float64)
    return G, h


def test_whitening_is_a_true_whitening():
    a, mu, A = gaussian(5000, 0)
    z, m, Aw = whiten(a)
    cov_z = z.T @ z / (len(z) - 1)
    assert torch.allclose(cov_z, torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(m + z @ Aw.T, a, atol=1e-8)  # a = μ + z Aᵀ
    cov_a = (a - m).T @ (a - m) / (len(a) - 1)
    assert torch.allclose(Aw @ Aw.T, cov_a, atol=1e-8)  # Σ = A Aᵀ


def test_whitening_drops_constant_directions():
    a, _, _ = gaussian(2000, 1)
    a = a - a.mean(1, keepdim=True)  # like LayerNorm: every row sums to 0, rank d − 1
    z, _, A = whiten(a)
    assert z.shape[1] == 3 and A.shape == (4, 3)


def test_shortest_feasible_matches_a_generic_solver():
    g = torch.Generator().manual_seed(3)
    Gz = torch.randn(5, 7, generator=g, dtype=torch.float64)
    hz = torch.randn(7, generator=g, dtype=torch.float64) - 1.0
    z, feasible = shortest_feasible(Gz, hz, iters=20000)
    res = minimize(lambda x: 0.5 * x @ x, np.ones(5), jac=lambda x: x, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda x: x @ Gz.numpy() + hz.numpy()}])
    assert res.success
    assert feasible == bool((res.x @ Gz.numpy() + hz.numpy() >= -1e-6).all())
    np.testing.assert_allclose(z.numpy(), res.x, atol=1e-4)


def test_qld_count_equals_brute_force_over_all_pairs():
    """The interval + binary-search count equals checking all n² combinations directly."""
    a, _, _ = gaussian(70, 4)
    g = torch.Generator().manual_seed(5)
    G = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z, mu, A = whiten(a)
    # margins about one whitened unit below zero at the mean: rare but reachable
    h = -(mu @ G) - (A.T @ G).norm(dim=0) * (0.5 + 0.3 * torch.rand(3, generator=g))
    p, _ = qld_probability(a, G, h)
    Gz, hz, _ = whitened_constraints(G, h, mu, A)
    d, _ = split_direction(Gz, hz)
    alpha = z @ d
    beta = z - alpha[:, None] * d
    combos = alpha[None, :, None] * d + beta[:, None, :]  # [i (β), j (α), r]
    a_comb = mu + combos @ A.T  # back in activation space
    hits = ((a_comb @ G + h) > 0).all(-1)
    assert 0 < int(hits.sum()) < 70 * 70  # a non-trivial case
    assert p == pytest.approx(float(hits.double().mean()), abs=1e-15)
    # and each β's accepted α's form one interval
    lo, hi = alpha_intervals(beta, d, Gz, hz)
    inside = (alpha[None, :] > lo[:, None]) & (alpha[None, :] < hi[:, None])
    assert torch.equal(inside, hits)


@pytest.mark.parametrize("c", [[1.5, 1.5], [2.0, 1.0, 0.5]])
def test_qld_exact_in_the_limit_on_gaussian_activations(c):
    """Gaussian activations, constraints z_i > c_i in the whitened basis: P = Π Φ(−c_i), and α, β
    are truly independent, so QLD is consistent. Its error is driven by the number of sampled α
    beyond ‖z*‖ (≈ n·Φ(−‖c‖)): relative sd ≈ 1/√(n·Φ(−‖c‖)) ≈ 4–5% at n = 40,000 here, so the
    tolerance is 20% (≈ 4 sd), over four seeds; the mean error over seeds must be within 8%."""
    truth = math.prod(norm.cdf(-ci) for ci in c)
    rel = []
    for seed in range(4):
        a, mu, A = gaussian(40_000, seed=10 + seed)
        G, h = wedge(mu, A, c)
        p, _ = qld_probability(a, G, h)
        rel.append(p / truth - 1)
    assert max(abs(r) for r in rel) < 0.20, (rel, truth)
    assert abs(sum(rel) / len(rel)) < 0.08, (rel, truth)


def test_gaussian_polytope_probability_is_analytic():
    _, mu, A = gaussian(10, 0)
    for c in ([2.5, 2.5], [4.0, 3.5], [3.0, 1.0, 2.0]):
        G, h = wedge(mu, A, c)
        truth = math.prod(norm.cdf(-ci) for ci in c)
        p, info = gaussian_polytope_probability(mu, A, G, h, n_draws=50_000, seed=1)
        assert p == pytest.approx(truth, rel=0.03), (c, p, truth, info)
    # a single half-space is exact with no sampling error at all
    G, h = wedge(mu, A, [5.0])
    p, _ = gaussian_polytope_probability(mu, A, G, h, n_draws=10, seed=1)
    assert p == pytest.approx(norm.cdf(-5.0), rel=1e-9)


def test_gld_on_gaussian_difference():
    a, mu, A = gaussian(200_000, 7)
    G, h = wedge(mu, A, [3.0])  # δ = z_0 − 3 ~ N(−3, 1): P = Φ(−3)
    p, info = gld_probability(a, G, h)
    assert p == pytest.approx(norm.cdf(-3.0), rel=0.05)
