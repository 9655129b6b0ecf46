"""The fourth-cumulant slices cumulant propagation carries exactly from K = 3 on (the marginal
κ₄_iiii and the two-unit slice κ₄_iijj), checked against exact contractions and against a
distribution whose joint cumulants are known in closed form (a Gaussian scale mixture)."""

import math

import torch

from estimators.activation.cumulants import State, ThirdCumulant, _fourth_pairs, activation_state

torch.set_num_threads(1)
D = torch.float64


def _dense_fourth(d4, S):
    """The symmetric 4-tensor whose only non-zero entries are κ_aaaa = d4_a and the three
    pairings of κ_aabb = S_ab (a ≠ b)."""
    n = d4.shape[0]
    T = torch.zeros(n, n, n, n, dtype=D)
    for a in range(n):
        T[a, a, a, a] = d4[a]
        for b in range(n):
            if a != b:
                T[a, a, b, b] = T[a, b, a, b] = T[a, b, b, a] = S[a, b]
    return T


def test_linear_map_of_the_fourth_cumulant_slices_is_exact():
    """q_i = κ₄(Wx)_iiii and T_ij = κ₄(Wx)_iiij exactly, and Q_ij equals the (ii|jj) pairing
    plus the a = b terms of κ₄(Wx)_iijj (the two cross pairings are the documented omission),
    to 1e-12."""
    g = torch.Generator().manual_seed(1)
    n, m = 6, 5
    d4 = torch.randn(n, generator=g, dtype=D)
    S = torch.randn(n, n, generator=g, dtype=D)
    S = (S + S.T) * (1 - torch.eye(n, dtype=D))
    W = torch.randn(m, n, generator=g, dtype=D)
    q, Q, T, flops = _fourth_pairs(W, W * W, S, d4, True)
    full = torch.einsum("abcd,ia,jb,kc,ld->ijkl", _dense_fourth(d4, S), W, W, W, W)
    assert torch.allclose(q, torch.einsum("iiii->i", full), atol=1e-12)
    W2 = W * W
    want = W2 @ S @ W2.T + W2 @ torch.diag(d4) @ W2.T
    off = 1 - torch.eye(m, dtype=D)
    assert torch.allclose(Q, want * off, atol=1e-12)
    cross = 2 * torch.einsum("ia,ja,ab,ib,jb->ij", W, W, S, W, W)
    assert torch.allclose(Q + cross * off, torch.einsum("iijj->ij", full) * off, atol=1e-12)
    assert torch.allclose(T, torch.einsum("iiij->ij", full) * off, atol=1e-12)
    assert flops == 2.0 * m * n * n + 2.0 * m * n + 2 * 2.0 * m * n * m
    q2, Q2, T2, _ = _fourth_pairs(W, W * W, S, d4, False)
    assert Q2 is None and T2 is None and torch.allclose(q2, q, atol=1e-12)


def _relu_moments(mu, s, p):
    """E[relu(μ + s·g)^p], g ~ N(0, 1), p = 1..4 (closed form via the Stein recursion)."""
    u = mu / s
    cdf = 0.5 * (1 + math.erf(u / math.sqrt(2)))
    pdf = math.exp(-u * u / 2) / math.sqrt(2 * math.pi)
    M = [cdf, mu * cdf + s * pdf]
    for k in range(2, p + 1):
        M.append(mu * M[k - 1] + (k - 1) * s * s * M[k - 2])
    return M[p]


def test_scale_mixture_fourth_cumulant_through_relu():
    """z_i = μ_i + s·g_i with one common s (s² = 1 ± h, equally likely) and independent
    standard g_i: κ₂ = I, κ₃ = 0, κ₄_iiii = 3h², κ₄_iijj = h² (the "radial" fluctuation every
    unit shares). The K = 3 activation step's mean, off-diagonal covariance, κ₄(x)_iijj and
    κ₃(x)_iij agree with the exact values (mixtures of closed forms) to within 2 % of their
    size at h = 0.1 (the neglected terms are O(h⁴), the kept ones O(h²)), and the covariance
    error shrinks ≥ 10× from h = 0.1 to h = 0.03."""
    mu = [0.3, -0.5, 0.8]
    n = len(mu)

    def run(h):
        st = State(torch.tensor(mu, dtype=D), torch.ones(n, dtype=D), torch.eye(n, dtype=D))
        empty = torch.zeros(n, 0, dtype=D)
        st.k3 = ThirdCumulant(empty, empty.clone())
        st.k3_diag = torch.zeros(n, dtype=D)
        st.k4_diag = torch.full((n,), 3 * h * h, dtype=D)
        st.k4_pair = h * h * (1 - torch.eye(n, dtype=D))
        x, _ = activation_state(st, "relu", 3, 4, False)
        ss = [math.sqrt(1 - h), math.sqrt(1 + h)]

        def E(f):
            return sum(f(s) for s in ss) / 2

        m = [E(lambda s, i=i: _relu_moments(mu[i], s, 1)) for i in range(n)]
        err = {"mean": 0.0, "cov": 0.0, "k4": 0.0, "k3": 0.0}
        size = dict.fromkeys(err, 0.0)
        for i in range(n):
            err["mean"] = max(err["mean"], abs(float(x.mean[i]) - m[i]))
            size["mean"] = max(size["mean"], abs(m[i] - _relu_moments(mu[i], 1.0, 1)))
            for j in range(n):
                if i == j:
                    continue

                def mom(p, q, i=i, j=j):
                    return E(lambda s: _relu_moments(mu[i], s, p) * _relu_moments(mu[j], s, q))

                X, Y = m[i], m[j]
                XX = E(lambda s, i=i: _relu_moments(mu[i], s, 2))
                YY = E(lambda s, j=j: _relu_moments(mu[j], s, 2))
                c11 = mom(1, 1) - X * Y
                c21 = mom(2, 1) - XX * Y
                c12 = mom(1, 2) - X * YY
                c22 = mom(2, 2) - XX * YY
                k4 = c22 - 2 * Y * c21 - 2 * X * c12 + 4 * X * Y * c11 - 2 * c11 ** 2
                k3 = c21 - 2 * X * c11  # κ(X, X, Y)
                k3_model = float(x.k3.slice_iij()[0][i, j] + x.k3.R[i, j])
                for key, got, want in (("cov", float(x.cov[i, j]), c11),
                                       ("k4", float(x.k4_pair[i, j]), k4),
                                       ("k3", k3_model, k3)):
                    err[key] = max(err[key], abs(got - want))
                    size[key] = max(size[key], abs(want))
        return err, size

    err, size = run(0.1)
    for key in err:
        assert err[key] < 0.02 * size[key], (key, err, size)
    err_small, _ = run(0.03)
    assert err_small["cov"] * 10 < err["cov"]


def test_every_hermite_order_runs_and_k3_pays_for_its_fourth_cumulant_slices():
    """Hermite orders 1 and 12 at K = 3 and 4 run (order 1 once indexed past the coefficient
    list), and K = 3's FLOPs include at least the two n³ products of the κ₄ slices."""
    from estimators.activation.cumulants import propagate_mlp
    from estimators.activation.mlp import random_mlp

    w = 8
    mlp = random_mlp([w] * 4, "relu", seed=0)
    mu, cov = torch.zeros(w, dtype=D), torch.eye(w, dtype=D)
    for K in (3, 4):
        for order in (1, 12):
            r = propagate_mlp(mlp, mu, cov, K, order)
            assert bool(torch.isfinite(r.output_mean).all())
    f2 = propagate_mlp(mlp, mu, cov, 2, 4).flops.matmul
    f3 = propagate_mlp(mlp, mu, cov, 3, 4).flops.matmul
    assert f3 > f2 + 2 * 2.0 * w ** 3
