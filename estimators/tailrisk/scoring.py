"""Scoring estimates against ground truth over a set of targets.

- Itakura–Saito loss  L_IS(p, p̂) = p/p̂ − ln(p/p̂) − 1  (≥ 0, 0 iff p̂ = p; punishes
  under-estimates of rare events hard), averaged over targets.
- Squared error of the log:  (ln p̂ − ln p)², averaged.
- Each also "fitted": after the affine map in log space ln p̂ ↦ a·ln p̂ + b chosen to minimise that
  loss over the same targets (in-sample, as in the low-probability-estimation literature; an
  optimistic score that measures how well the estimate *ranks and spreads* the targets).

Zero-estimate convention: p̂ is floored at ε = `floor` (default 1e-12, below every true
probability scored here) before any loss; so a method that says 0 is scored as saying 1e-12.

Baselines: the optimal constant (the constant minimising each loss with the truth known:
mean(p) for IS, the geometric mean for the log squared error) and naive sampling (MC).
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FLOOR = 1e-12


def _arrays(p, p_hat, floor: float):
    p = np.asarray(p, dtype=float)
    q = np.asarray(p_hat, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"truth and estimates differ in shape: {p.shape} vs {q.shape}")
    if not np.all(p > 0):
        raise ValueError("scoring needs targets with positive true probability")
    q = np.where(np.isfinite(q), q, floor)
    return p, np.maximum(q, floor)


def itakura_saito(p, p_hat, floor: float = DEFAULT_FLOOR) -> float:
    p, q = _arrays(p, p_hat, floor)
    r = p / q
    return float(np.mean(r - np.log(r) - 1))


def log_squared_error(p, p_hat, floor: float = DEFAULT_FLOOR) -> float:
    p, q = _arrays(p, p_hat, floor)
    return float(np.mean((np.log(q) - np.log(p)) ** 2))


def fit_affine_log_is(p, p_hat, floor: float = DEFAULT_FLOOR, iters: int = 100
                      ) -> tuple[float, float]:
    """(a, b) minimising mean IS(p, exp(a·ln p̂ + b)). The loss is convex in (a, b) (IS is convex
    in y = ln p̂: p·e^{−y} + y − ln p − 1), so damped Newton converges."""
    p, q = _arrays(p, p_hat, floor)
    x = np.log(q)
    lp = np.log(p)
    X = np.stack([x, np.ones_like(x)], 1)
    # start from the log-least-squares fit (good for spread), fall back to a constant fit
    theta = np.array([0.0, float(np.log(np.mean(p)))])

    def loss(th):
        y = X @ th
        return float(np.mean(np.exp(lp - y) + y - lp - 1))

    cur = loss(theta)
    for _ in range(iters):
        y = X @ theta
        e = np.exp(lp - y)
        grad = X.T @ (1 - e) / len(p)
        hess = (X * e[:, None]).T @ X / len(p) + 1e-12 * np.eye(2)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = grad
        t, accepted = 1.0, False
        while t > 1e-10:
            cand = theta - t * step
            new = loss(cand)
            if new <= cur:
                accepted = True
                break
            t /= 2
        if not accepted:
            break
        improvement = cur - new
        theta, cur = cand, new
        if improvement < 1e-15:
            break
    return float(theta[0]), float(theta[1])


def fit_affine_log_se(p, p_hat, floor: float = DEFAULT_FLOOR) -> tuple[float, float]:
    """Least-squares (a, b) for ln p ≈ a·ln p̂ + b (a = 0 when all estimates are equal)."""
    p, q = _arrays(p, p_hat, floor)
    x, y = np.log(q), np.log(p)
    if np.ptp(x) == 0:
        return 0.0, float(y.mean())
    a, b = np.polyfit(x, y, 1)
    return float(a), float(b)


def apply_affine(p_hat, a: float, b: float, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    q = np.maximum(np.asarray(p_hat, dtype=float), floor)
    return np.exp(a * np.log(q) + b)


def score(p, p_hat, floor: float = DEFAULT_FLOOR) -> dict:
    """All four numbers for one method over a set of targets."""
    a_is, b_is = fit_affine_log_is(p, p_hat, floor)
    a_se, b_se = fit_affine_log_se(p, p_hat, floor)
    return {
        "itakura_saito": itakura_saito(p, p_hat, floor),
        "itakura_saito_fitted": itakura_saito(p, apply_affine(p_hat, a_is, b_is, floor), floor),
        "log_squared_error": log_squared_error(p, p_hat, floor),
        "log_squared_error_fitted": log_squared_error(p, apply_affine(p_hat, a_se, b_se, floor),
                                                      floor),
        "fit_is": [a_is, b_is], "fit_se": [a_se, b_se],
        "n_targets": int(np.size(p)), "zero_estimates": int(np.sum(np.asarray(p_hat) <= 0)),
        "floor": floor,
    }


def optimal_constant(p) -> dict:
    """The best constant guesses with the truth known (a baseline no method should lose to)."""
    p = np.asarray(p, dtype=float)
    return {"itakura_saito": float(np.mean(p)), "log_squared_error": float(math.exp(np.mean(
        np.log(p))))}


def optimal_constant_scores(p, floor: float = DEFAULT_FLOOR) -> dict:
    c = optimal_constant(p)
    p = np.asarray(p, dtype=float)
    s_is = itakura_saito(p, np.full_like(p, c["itakura_saito"]), floor)
    s_se = log_squared_error(p, np.full_like(p, c["log_squared_error"]), floor)
    # an affine fit of a constant can only move the constant, which is already optimal
    return {"itakura_saito": s_is, "itakura_saito_fitted": s_is, "log_squared_error": s_se,
            "log_squared_error_fitted": s_se, "n_targets": int(p.size), "zero_estimates": 0,
            "floor": floor}
