"""The hybrid estimator (estimators/activation/hybrid.py): exactness where the control variate
is the function itself, unbiasedness, budget accounting."""

import math

import pytest
import torch

from estimators.activation.closed_form import activation_moments
from estimators.activation.hybrid import hybrid_estimate, per_sample_flops
from estimators.activation.mlp import random_mlp

torch.set_num_threads(1)
D = torch.float64


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_one_hidden_layer_control_variate_is_exact(act):
    """With one hidden layer g = f − E[f] exactly: β = 1, the estimate equals the closed-form
    mean W₂E[φ(W₁x + b₁)] + b₂ to rounding, with zero residual variance."""
    mlp = random_mlp([6, 10, 3], act, seed=4, bias_std=0.5)
    mean = torch.linspace(-0.5, 0.5, 6, dtype=D)
    A = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=D) / 3
    cov = A @ A.T + 0.2 * torch.eye(6, dtype=D)
    W1, b1 = mlp.layers[0].weight.detach(), mlp.layers[0].bias.detach()
    W2, b2 = mlp.layers[1].weight.detach(), mlp.layers[1].bias.detach()
    e, _ = activation_moments(W1 @ mean + b1, torch.diagonal(W1 @ cov @ W1.T), act)
    exact = W2 @ e + b2
    h = hybrid_estimate(mlp, mean, cov, 2e6, seed=0, cumulants=0)
    assert torch.allclose(h.mu_cv, exact, atol=1e-10)
    assert float(h.v.max()) < 1e-18


def test_control_variate_is_unbiased_and_reduces_variance():
    """Two hidden layers: the mean of 40 control-variate estimates is within 4 standard errors
    of a 4·10^5-sample control-variate truth; the variance reduction exceeds 1.5."""
    mlp = random_mlp([8, 8, 8, 4], "relu", seed=7)
    mu, cov = torch.zeros(8, dtype=D), torch.eye(8, dtype=D)
    per = per_sample_flops(mlp)
    ref = hybrid_estimate(mlp, mu, cov, per * 5e5, seed=99, cumulants=0)
    ests = torch.stack([hybrid_estimate(mlp, mu, cov, per * 600, seed=s, cumulants=0).mu_cv
                        for s in range(100, 140)])
    se = ests.std(0) / math.sqrt(40)
    assert bool(((ests.mean(0) - ref.mu_cv).abs() < 4 * se + 4 * ref.v.sqrt()).all())
    assert float(ref.variance_reduction.mean()) > 1.5


def test_budget_split_and_accounting():
    mlp = random_mlp([16] * 5, "relu", seed=0)
    mu, cov = torch.zeros(16, dtype=D), torch.eye(16, dtype=D)
    h = hybrid_estimate(mlp, mu, cov, 5e7, seed=0)
    assert h.cumulants == 4 and h.flops <= 5e7 and h.samples > 100
    assert h.info["propagation_flops"] <= 5e7
    assert bool(((h.w >= 0) & (h.w <= 1)).all())
    with pytest.raises(ValueError, match="budget"):
        hybrid_estimate(mlp, mu, cov, 1e3)
