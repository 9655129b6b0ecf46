"""Circuit estimators against exact answers: closed forms, enumeration, Gauss–Hermite quadrature
(an independent exact check of the polynomial expansion on Gaussian inputs), and Monte Carlo
within a stated CI."""

import itertools
import math

import numpy as np
import pytest
import torch

from estimators.circuits import (Circuit, CircuitConfig, CircuitError, analyse, exact_moments,
                                 expand_moments, load_preset, monte_carlo_moments, propagate,
                                 random_circuit, track_all, wick_moments)
from estimators.circuits.enumeration import enumerate_moments
from estimators.circuits.propagate import candidate_pairs, check_tracked


def square(mu, var):
    return Circuit.from_dict({"inputs": {"x": {"dist": "normal", "mean": mu, "var": var}},
                              "nodes": [{"id": "y", "op": "mul", "args": ["x", "x"]}],
                              "output": "y"})


def diff_squares(a, b):
    return Circuit.from_dict({"inputs": {"a": a, "b": b},
                              "nodes": [{"id": "s", "op": "add", "args": ["a", "b"]},
                                        {"id": "d", "op": "sub", "args": ["a", "b"]},
                                        {"id": "y", "op": "mul", "args": ["s", "d"]}],
                              "output": "y"})


@pytest.mark.parametrize("mu, s2", [(1.0, 1.0), (1.5, 0.49), (-2.0, 3.0), (0.0, 2.0)])
def test_square_of_a_gaussian(mu, s2):
    c = square(mu, s2)
    naive = propagate(c)
    tracked = propagate(c, [("x", "x")])
    exact = exact_moments(c)
    assert naive.mean_of("y") == pytest.approx(mu ** 2)
    assert naive.var_of("y") == pytest.approx(s2 ** 2 + 2 * mu ** 2 * s2)  # independent copies
    assert tracked.mean_of("y") == pytest.approx(mu ** 2 + s2)
    assert exact.mean_of("y") == pytest.approx(mu ** 2 + s2, rel=1e-12)
    assert exact.var_of("y") == pytest.approx(2 * s2 ** 2 + 4 * mu ** 2 * s2, rel=1e-12)
    # x is Gaussian, so the tracked (joint-Gaussian) variance is exact too
    assert tracked.var_of("y") == pytest.approx(2 * s2 ** 2 + 4 * mu ** 2 * s2, rel=1e-12)
    # Wick order 1 = delta method: f(μ) and f'(μ)²σ²; order 2 = exact
    w1, w2 = wick_moments(c, 1), wick_moments(c, 2)
    assert w1.mean_of("y") == pytest.approx(mu ** 2) and \
        w1.var_of("y") == pytest.approx(4 * mu ** 2 * s2)
    assert w2.mean_of("y") == pytest.approx(mu ** 2 + s2) and \
        w2.var_of("y") == pytest.approx(2 * s2 ** 2 + 4 * mu ** 2 * s2)


def test_difference_of_squares_gaussian():
    ma, va, mb, vb = 2.0, 1.0, 1.0, 0.25
    c = diff_squares({"dist": "normal", "mean": ma, "var": va},
                     {"dist": "normal", "mean": mb, "var": vb})
    true_mean = ma ** 2 + va - mb ** 2 - vb
    true_var = 2 * va ** 2 + 4 * ma ** 2 * va + 2 * vb ** 2 + 4 * mb ** 2 * vb
    assert propagate(c).mean_of("y") == pytest.approx((ma + mb) * (ma - mb))
    t = propagate(c, [("s", "d")])
    assert t.cov_of("s", "d") == pytest.approx(va - vb)
    assert t.mean_of("y") == pytest.approx(true_mean)
    assert t.var_of("y") == pytest.approx(true_var)  # s, d jointly Gaussian: exact
    e = exact_moments(c)
    assert e.mean_of("y") == pytest.approx(true_mean) and e.var_of("y") == pytest.approx(true_var)


def test_difference_of_squares_bernoulli_shows_the_gaussian_approximation():
    pa, pb = 0.3, 0.8
    c = diff_squares({"dist": "bernoulli", "p": pa}, {"dist": "bernoulli", "p": pb})
    e = exact_moments(c)
    assert e.method.startswith("exact (enumeration)")
    # a² = a for a coin: (a+b)(a−b) = a − b
    assert e.mean_of("y") == pytest.approx(pa - pb)
    assert e.var_of("y") == pytest.approx(pa * (1 - pa) + pb * (1 - pb))
    t = propagate(c, [("s", "d")])
    assert t.mean_of("y") == pytest.approx(pa - pb)  # means of degree-2 circuits: exact
    # the variance uses Gaussian fourth moments, which coins do not have
    s2 = pa * (1 - pa) + pb * (1 - pb)
    ms, md, cv = pa + pb, pa - pb, pa * (1 - pa) - pb * (1 - pb)
    assert t.var_of("y") == pytest.approx(s2 * s2 + s2 * md ** 2 + s2 * ms ** 2
                                          + 2 * ms * md * cv + cv ** 2)
    assert abs(t.var_of("y") - e.var_of("y")) > 0.01


@pytest.mark.parametrize("seed", range(6))
def test_all_pairs_tracked_degree_two_gaussian_means_are_exact(seed):
    c = random_circuit(seed, n_inputs=3, n_nodes=10, max_degree=2, dists=("normal",))
    est = propagate(c, track_all(c))
    exact = expand_moments(c)
    torch.testing.assert_close(est.mean, exact.mean, rtol=1e-10, atol=1e-10)
    # and every variable's covariance with the inputs (bilinearity to the inputs) is exact
    n_in = len(c.inputs)
    torch.testing.assert_close(est.cov[:, :n_in], exact.cov[:, :n_in], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(8))
def test_polynomial_expansion_equals_enumeration_on_finite_inputs(seed):
    c = random_circuit(seed, n_inputs=4, n_nodes=10, max_degree=4,
                       dists=("bernoulli", "uniform"))
    enum, poly = enumerate_moments(c), expand_moments(c)
    scale = 1 + float(enum.cov.abs().max())
    torch.testing.assert_close(poly.mean, enum.mean, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(poly.cov, enum.cov, rtol=1e-9, atol=1e-9 * scale)
    assert exact_moments(c).method == "exact (enumeration)"


def _quadrature_moments(c: Circuit, points: int = 12):
    """Exact for polynomials of degree < 2·points in each Gaussian input: Gauss–Hermite nodes
    stand in for a Gaussian's support, and the grid is enumerated like finite inputs."""
    x, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / w.sum()
    supports = []
    for d in c.inputs.values():
        if d.dist == "normal":
            supports.append(list(zip(d.mean + math.sqrt(d.var) * x, w)))
        else:
            supports.append(list(zip(*d.support())))
    grid = list(itertools.product(*supports))
    vals = {k: torch.tensor([g[i][0] for g in grid], dtype=torch.float64)
            for i, k in enumerate(c.inputs)}
    p = torch.tensor([math.prod(t[1] for t in g) for g in grid], dtype=torch.float64)
    out = c.evaluate(vals)
    X = torch.stack([out[v] for v in c.order])
    mean = X @ p
    D = X - mean[:, None]
    return mean, (D * p) @ D.T


@pytest.mark.parametrize("seed", range(6))
def test_polynomial_expansion_equals_quadrature_on_mixed_inputs(seed):
    c = random_circuit(seed, n_inputs=3, n_nodes=9, max_degree=4)
    mean, cov = _quadrature_moments(c)
    poly = exact_moments(c, "polynomial")
    scale = 1 + float(cov.abs().max())
    torch.testing.assert_close(poly.mean, mean, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(poly.cov, cov, rtol=1e-9, atol=1e-9 * scale)


def test_power_chain_closed_form():
    c = load_preset("power_chain")  # y = x⁸, x ~ N(1, 1/4)
    # E[x^8] = Σ_k C(8, 2k) μ^(8−2k) (2k−1)!! σ^(2k)
    ex8 = sum(math.comb(8, 2 * k) * math.prod(range(1, 2 * k, 2)) * 0.25 ** k for k in range(5))
    ex16 = sum(math.comb(16, 2 * k) * math.prod(range(1, 2 * k, 2)) * 0.25 ** k
               for k in range(9))
    e = exact_moments(c)
    assert e.mean_of("y") == pytest.approx(ex8, rel=1e-12)
    assert e.var_of("y") == pytest.approx(ex16 - ex8 ** 2, rel=1e-10)
    assert propagate(c).mean_of("y") == 1.0  # independence: every power has mean 1
    full = propagate(c, track_all(c)).mean_of("y")
    assert 1.0 < full < ex8 * 0.9  # better, still wrong: first-order covariances


@pytest.mark.parametrize("seed", range(6))
def test_wick_at_the_circuit_degree_is_exact(seed):
    c = random_circuit(seed, n_inputs=3, n_nodes=9, max_degree=4,
                       dists=("bernoulli", "uniform"))
    deg = max(c.degrees().values())
    enum = enumerate_moments(c)
    w = wick_moments(c, deg)
    scale = 1 + float(enum.cov.abs().max())
    torch.testing.assert_close(w.mean, enum.mean, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(w.cov, enum.cov, rtol=1e-9, atol=1e-9 * scale)
    assert w.notes[-1].startswith("exact")


def test_wick_below_the_degree_truncates():
    c = load_preset("power_chain")
    e = exact_moments(c)
    errs = [abs(wick_moments(c, k).mean_of("y") - e.mean_of("y")) for k in (1, 2, 4, 8)]
    assert errs[0] > errs[1] > errs[2] > 0 and errs[3] < 1e-9 * e.mean_of("y")
    assert wick_moments(c, 4).notes[-1].startswith("truncated")
    with pytest.raises(CircuitError, match="order"):
        wick_moments(c, 0)


@pytest.mark.parametrize("seed", range(4))
def test_monte_carlo_within_five_standard_errors(seed):
    c = random_circuit(seed, n_inputs=3, n_nodes=8, max_degree=3)
    mc = monte_carlo_moments(c, 200_000, seed=seed)
    exact = exact_moments(c)
    # stated CI: ±5 standard errors (mean: s/√N; variance: √((m4 − s⁴)/N)), plus rounding
    assert torch.all((mc.mean - exact.mean).abs() <= 5 * mc.mean_se + 1e-9)
    assert torch.all((mc.var - exact.var).abs() <= 5 * mc.var_se + 1e-9)


def test_tracked_pairs_must_be_candidates():
    c = load_preset("shared_coin")
    assert candidate_pairs(c) == [("a", "b"), ("b", "c"), ("s", "t")]
    assert check_tracked(c, [["t", "s"], ("s", "t")]) == [("s", "t")]
    with pytest.raises(CircuitError, match="not combined by any node"):
        propagate(c, [("a", "c")])
    with pytest.raises(CircuitError, match="unknown id"):
        propagate(c, [("a", "zz")])


def test_config_round_trip_and_validation():
    cfg = CircuitConfig(method="wick", order=4, samples=10, epsilon=0.5)
    assert CircuitConfig.from_dict(cfg.to_dict()) == cfg
    for bad in [dict(method="magic"), dict(order=0), dict(samples=0), dict(epsilon=-1.0),
                dict(tracked=[("a",)]), dict(mc_samples=1)]:
        with pytest.raises(CircuitError):
            CircuitConfig(**bad)
    with pytest.raises(CircuitError, match="unknown config"):
        CircuitConfig.from_dict({"methd": "wick"})


def test_analysis_rows_are_estimate_and_truth():
    c = load_preset("difference_of_squares")
    a = analyse(c, CircuitConfig(method="sparse", tracked=(("s", "d"),), samples=50))
    rows = {r["id"]: r for r in a.rows()}
    assert rows["y"]["mean_est"] == pytest.approx(3.75) and rows["y"]["mean_true"] == \
        pytest.approx(3.75)
    assert rows["y"]["mean_err"] == pytest.approx(0.0, abs=1e-12)
    est = a.to_estimate()
    assert est.value == pytest.approx(3.75) and est.surprise is a.surprise
