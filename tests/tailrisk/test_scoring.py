import math

import numpy as np
import pytest

from estimators.tailrisk.scoring import (apply_affine, fit_affine_log_is, itakura_saito,
                                         log_squared_error, optimal_constant,
                                         optimal_constant_scores, score)


def test_losses_by_hand():
    p = [1e-6, 1e-4]
    q = [2e-6, 1e-4]
    assert itakura_saito(p, q) == pytest.approx((0.5 - math.log(0.5) - 1) / 2)
    assert log_squared_error(p, q) == pytest.approx(math.log(2) ** 2 / 2)
    assert itakura_saito(p, p) == 0.0


def test_zero_estimates_are_floored():
    p = [1e-6]
    assert itakura_saito(p, [0.0], floor=1e-12) == pytest.approx(1e6 - math.log(1e6) - 1)
    assert score(p * 2, [0.0, 1e-6])["zero_estimates"] == 1


def test_affine_fit_recovers_a_power_law_and_never_hurts():
    rng = np.random.default_rng(0)
    p = 10 ** rng.uniform(-9, -4, 40)
    q = np.exp(0.5 * np.log(p) - 3.0)  # a perfect ranking with the wrong spread and offset
    a, b = fit_affine_log_is(p, q)
    assert a == pytest.approx(2.0, rel=1e-4) and b == pytest.approx(6.0, rel=1e-3)
    np.testing.assert_allclose(apply_affine(q, a, b), p, rtol=1e-3)
    s = score(p, q)
    assert s["itakura_saito_fitted"] < 1e-6 < s["itakura_saito"]
    assert s["log_squared_error_fitted"] < 1e-12


def test_optimal_constant_is_optimal():
    p = np.array([1e-9, 1e-7, 1e-5, 1e-4])
    c = optimal_constant(p)
    base = optimal_constant_scores(p)
    for scale in (0.5, 0.9, 1.1, 2.0):
        assert itakura_saito(p, np.full(4, c["itakura_saito"] * scale)) > base["itakura_saito"]
        assert log_squared_error(p, np.full(4, c["log_squared_error"] * scale)) > \
            base["log_squared_error"]
    with pytest.raises(ValueError, match="positive"):
        itakura_saito([0.0], [1.0])
