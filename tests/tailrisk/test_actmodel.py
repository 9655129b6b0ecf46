"""The activation-model estimate (§2's propagated Gaussian read at the logits) and its
Gaussian readers, on cases whose answers are analytic."""

import math

import pytest
import torch
from scipy.stats import norm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators.tailrisk import (Argmax, DirectionThreshold, LogitThreshold, run_estimator)
from estimators.tailrisk.actmodel import (argmax_probability, covariance_factor,
                                          gaussian_polytope_probability,
                                          independent_argmax_probability)
from estimators.tailrisk.distributions import from_table

from .conftest import tiny_model


def test_independent_argmax_two_logits_is_the_normal_cdf_even_at_1e_minus_20():
    # P(X0 > X1) = Φ((μ0 − μ1)/√(σ0² + σ1²)); here ≈ 1e-20, far below anything sampled
    mu = torch.tensor([0.0, 11.3], dtype=torch.float64)
    sd = torch.tensor([1.0, 0.7], dtype=torch.float64)
    p, _ = independent_argmax_probability(mu, sd, 0)
    exact = norm.cdf(-11.3 / math.sqrt(1 + 0.49))
    assert 1e-21 < exact < 1e-19
    assert p == pytest.approx(exact, rel=1e-4)
    # a constant target logit: a product of normal CDFs
    p0, _ = independent_argmax_probability(mu, torch.tensor([0.0, 0.7]), 0)
    assert p0 == pytest.approx(norm.cdf(-11.3 / 0.7), rel=1e-6)


def test_independent_argmax_matches_the_polytope_and_a_large_sample():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, generator=g, dtype=torch.float64)
    mu[2] -= 0.5  # target 2: p ≈ 2e-3
    sd = 0.5 + torch.rand(6, generator=g, dtype=torch.float64)
    p, _ = independent_argmax_probability(mu, sd, 2)
    # the same Gaussian through the general polytope reader (diagonal covariance)
    G = torch.zeros(6, 5, dtype=torch.float64)
    G[2] = 1.0
    G[[0, 1, 3, 4, 5], torch.arange(5)] = -1.0
    q, info = gaussian_polytope_probability(mu, torch.diag(sd), G, torch.zeros(5), 2 ** 16)
    assert abs(q - p) < 4 * info["draw_standard_error"] + 1e-3 * p
    x = mu + sd * torch.randn(2 ** 22, 6, generator=g, dtype=torch.float64)
    hits = float((x.argmax(1) == 2).double().mean())
    se = math.sqrt(p * (1 - p) / 2 ** 22)
    assert abs(hits - p) < 4 * se and 1e-4 < p < 1e-2, p


def test_correlated_argmax_reader_against_a_large_sample():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(5, 3, generator=g, dtype=torch.float64)  # rank-3 covariance, like logits
    cov = M @ M.T
    mu = torch.tensor([0.0, 1.0, 0.5, -0.2, 0.3], dtype=torch.float64)
    p, info = argmax_probability(mu, cov, 0, n_draws=2 ** 15)
    assert "polytope" in info["reader"]
    A = covariance_factor(cov)
    assert torch.allclose(A @ A.T, cov, atol=1e-10)
    x = mu + torch.randn(2 ** 21, 3, generator=g, dtype=torch.float64) @ M.T
    hits = float((x.argmax(1) == 0).double().mean())
    se = math.sqrt(hits * (1 - hits) / 2 ** 21)
    assert abs(hits - p) < 4 * se + 4 * info["draw_standard_error"], (p, hits)


@pytest.fixture(scope="module")
def linear_case():
    """One attention-only block with W_O = 0 and no LayerNorm: every block is the identity, so
    the logits are an exact linear image of the embeddings. With x_last ~ D_last the last
    position's logit t has exact moments; the propagated Gaussian must match them, and its
    tail Φ((μ − θ)/σ) is the analytic answer of the Gaussian model."""
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=6,
                                  n_ctx=3, attn_only=True, normalization_type=None, seed=3)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.blocks[0].attn.W_O.zero_()
        model.blocks[0].attn.b_O.zero_()
    model.eval()
    probs = [{0: 0.5, 1: 0.5}, {2: 1.0}, {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.15, 4: 0.15, 5: 0.1}]
    dist = from_table(probs, 6, "linear")
    p_last = dist.probs[-1]
    W = (model.W_E + model.W_pos[2]).detach().double()
    model.requires_grad_(False)  # residual at the last position
    return model, dist, p_last, W


def test_logit_threshold_on_a_linear_model_is_the_analytic_gaussian_tail(linear_case):
    model, dist, p_last, W = linear_case
    t = 3
    vals = W @ model.W_U[:, t].double() + model.b_U[t].double()  # logit_t per last token
    m = float(p_last @ vals)
    sd = math.sqrt(float(p_last @ (vals - m) ** 2))
    theta = m + 3.0 * sd  # Gaussian tail ≈ 1.35e-3 (the true discrete answer may be 0)
    analytic = norm.sf(3.0)
    est = run_estimator("activation", model, dist, LogitThreshold(t, theta), 2 ** 14, seed=0,
                        mask="full")  # the naive mask drops the embedding's correlations
    assert est.diagnostics["engine"] == "activation"
    assert est.diagnostics["logit_mean_target"] == pytest.approx(m, abs=0.1 * sd)
    assert est.diagnostics["logit_sd_target"] == pytest.approx(sd, rel=0.05)
    # μ, σ known to a few % of σ from N = K = 8192 samples (seed-to-seed spread measured:
    # ±4% of σ in μ, ±2% in σ); d log P/d log σ ≈ z² ≈ 9 → factor 1.5
    assert analytic / 1.5 < est.value < analytic * 1.5
    assert est.cost.calls == 2 ** 14


def test_direction_threshold_at_a_residual_hook_is_the_analytic_tail(linear_case):
    model, dist, p_last, W = linear_case
    w = torch.linspace(-1, 1, 8, dtype=torch.float64)
    vals = W @ w
    m = float(p_last @ vals)
    sd = math.sqrt(float(p_last @ (vals - m) ** 2))
    b = DirectionThreshold(hook="blocks.0.hook_resid_post", direction=w.tolist(), bias=0.5,
                           threshold=m + 0.5 + 2.5 * sd)
    est = run_estimator("activation", model, dist, b, 2 ** 14, seed=1, mask="full")
    assert est.diagnostics["engine"] == "activation"
    assert est.diagnostics["projection_sd"] == pytest.approx(sd, rel=0.05)
    assert norm.sf(2.5) / 1.4 < est.value < norm.sf(2.5) * 1.4


def test_budget_split_and_fallback_are_stated():
    model = tiny_model(vocab=5, seed=0, n_ctx=4)
    dist = from_table([{0: 0.5, 1: 0.5}] * 3, 5, "small")
    est = run_estimator("activation", model, dist, Argmax(2), 300, seed=0)
    d = est.diagnostics
    # 2 blocks + unembedding: 3 transitions; N = 150, K = 50
    assert (d["real_inputs"], d["transitions"], d["samples_per_transition"]) == (150, 3, 50)
    assert est.cost.calls == 300
    hook = "blocks.0.attn.hook_z"  # inside a block: not a chain site → stated fallback
    b = DirectionThreshold(hook=hook, direction=[1.0] * 32, threshold=0.0)
    est = run_estimator("activation", model, dist, b, 64, seed=0)
    assert est.diagnostics["engine"] == "moment-fit fallback"
    assert "not a residual-stream site" in est.diagnostics["fallback_reason"]
    with pytest.raises(ValueError, match="too small"):
        run_estimator("activation", model, dist, Argmax(2), 8)
    with pytest.raises(ValueError, match="mask"):
        run_estimator("activation", model, dist, Argmax(2), 300, mask="diagonal")
