"""The complete diagram sum of K = 4 (estimators/activation/diagrams.py), checked exactly."""

from __future__ import annotations

import itertools
import math

import torch

from estimators.activation.diagrams import SliceContext, block_cost, diagrams

D = torch.float64


def _sym(t: torch.Tensor) -> torch.Tensor:
    perms = list(itertools.permutations(range(t.dim())))
    return sum(t.permute(*p) for p in perms) / len(perms)


def _identity_table(mu, var, pmax: int, kmax: int):
    """V[p][k] = E_G[(z^p)^(k)] = p!/(p−k)!·E_G[z^{p−k}] for z ~ N(μ, var) (Gaussian moments
    by M_m = μM_{m−1} + (m−1)var·M_{m−2})."""
    M = [torch.ones_like(mu), mu.clone()]
    for m in range(2, pmax + 1):
        M.append(mu * M[m - 1] + (m - 1) * var * M[m - 2])
    table = [[]]
    for p in range(1, pmax + 1):
        table.append([math.factorial(p) / math.factorial(p - k) * M[p - k] if k <= p
                      else torch.zeros_like(mu) for k in range(kmax + 1)])
    return table


def test_identity_activation_returns_every_cumulant_slice_unchanged():
    """With φ(z) = z the expansion is exact for cumulants up to order 4 (every power cumulant
    it needs lies within cost 3, and φ^p has no derivative above p): x's joint cumulants on two
    and three units must equal z's own slices — off-diagonal covariance, κ₃_aab, κ₃_abc,
    κ₄_aaab, κ₄_aabb, κ₄_aabc — for arbitrary symmetric κ₃, κ₄ and non-zero means. This checks
    every diagram weight, block placement and the moment/Möbius conversion."""
    g = torch.Generator().manual_seed(0)
    n = 5
    mu = torch.randn(n, generator=g, dtype=D)
    A = torch.randn(n, n, generator=g, dtype=D)
    cov = A @ A.T / n + torch.eye(n, dtype=D)
    k3 = _sym(torch.randn(n, n, n, generator=g, dtype=D)) * 0.3
    k4 = _sym(torch.randn(n, n, n, n, generator=g, dtype=D)) * 0.3
    idx = torch.arange(n)
    eye = torch.eye(n, dtype=D)
    off = cov * (1 - eye)
    K3 = k3[idx[:, None], idx[:, None], idx[None, :]]
    T31 = k4[idx[:, None], idx[:, None], idx[:, None], idx[None, :]]
    Q = k4[idx[:, None], idx[:, None], idx[None, :], idx[None, :]]
    z211 = k4[idx[:, None, None], idx[:, None, None], idx[None, :, None], idx[None, None, :]]
    V = _identity_table(mu, torch.diagonal(cov), 4, 8)
    ctx = SliceContext(V, off, k3[idx, idx, idx], k4[idx, idx, idx, idx], K3, Q, T31, k3,
                       z211, budget=3)
    distinct = (1 - eye)[:, :, None] * (1 - eye)[:, None, :] * (1 - eye)[None, :, :]
    checks = {
        (0, 1): (off, 1 - eye, 2),
        (0, 0, 1): (K3, 1 - eye, 2),
        (0, 0, 0, 1): (T31, 1 - eye, 2),
        (0, 0, 1, 1): (Q, 1 - eye, 2),
        (0, 1, 2): (k3, distinct, 3),
        (0, 0, 1, 2): (z211, distinct, 3),
    }
    for legs, (want, mask, d) in checks.items():
        got = ctx.cumulant(legs, d)
        assert torch.allclose(got * mask, want * mask, atol=1e-12), legs


def test_diagram_enumeration_follows_the_power_counting():
    """Two units at budget 3: the 15 connected diagrams (edges up to Σ³, each two-unit block of
    order ≤ 4, one edge beside a marginal κ₃ or κ₄, an edge beside κ₃_aab or κ₄_aabb), each
    within budget and weighted 1/(Π v! · multiplicity!)."""
    ds = diagrams(2, 3)
    assert len(ds) == 15
    found = {blocks: w for blocks, w, _ in ds}
    assert found[((1, 1), (1, 1), (1, 1))] == 1 / 6
    assert found[((1, 1), (2, 2))] == 1 / 4
    assert found[((1, 1), (4, 0))] == 1 / 24
    assert all(sum(block_cost(v) for v in b) <= 3 for b in found)
    assert len(diagrams(1, 3)) == 2  # the marginal κ₃, κ₄ (Edgeworth)


def _third_dense(k3) -> torch.Tensor:
    """The whole κ₃ [n, n, n] a `ThirdCumulant` represents: pairs, dense part and the
    corrections d (at iii) and R (at iij and its permutations)."""
    U, V = k3.U, k3.V
    T = torch.einsum("as,bs,cs->abc", U, U, V)
    T = T + T.permute(0, 2, 1) + T.permute(2, 1, 0)
    if k3.dense is not None:
        T = T + k3.dense
    n = U.shape[0]
    i = torch.arange(n)
    if k3.R is not None:
        T[i[:, None], i[:, None], i[None, :]] += k3.R
        T[i[:, None], i[None, :], i[:, None]] += k3.R
        T[i[None, :], i[:, None], i[:, None]] += k3.R
    if k3.d is not None:
        T[i, i, i] += k3.d
    return T


def test_k4_third_cumulant_keeps_the_marginal_law_after_a_dense_part():
    """From the second activation on, z's κ₃ has a dense part (the first activation's cost-3
    diagrams, contracted with W): x's κ₃ as represented (pairs + dense + corrections) must
    equal, at iii, x's own marginal third cumulant to 1e-12 (the correction d subtracts the
    pairs' value there, which excludes z's dense part; it once subtracted that too)."""
    from estimators.activation.cumulants import State, activation_state, linear_state
    from estimators.activation.mlp import random_mlp

    n = 8
    mlp = random_mlp([n] * 4, "relu", seed=3)
    x = State(torch.zeros(n, dtype=D), torch.ones(n, dtype=D), torch.eye(n, dtype=D))
    for layer in list(mlp.layers)[:2]:
        z, _ = linear_state(x, layer.weight.detach().to(D), None, 4, False)
        x, _ = activation_state(z, "relu", 4, 4, False)
    assert z.k3.dense is not None and float(torch.einsum("iii->i", z.k3.dense).abs().max()) > 0
    T = _third_dense(x.k3)
    i = torch.arange(n)
    assert torch.allclose(T[i, i, i], x.k3_diag, atol=1e-12, rtol=0)
