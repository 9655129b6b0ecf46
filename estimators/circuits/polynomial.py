"""Exact polynomial expansion of a circuit, and its truncation (Wick/cumulant propagation).

Every variable of a circuit is a polynomial in the inputs. We expand it in the inputs'
*fluctuations* δ_i = z_i − E z_i: a polynomial is `Poly(exps [m, n_inputs] int64, coef [m]
float64)`, one row per monomial Π δ_i^{e_i}. Because the inputs are independent,

    E[δ^α] = Π_i m_i(α_i),       m_i(k) = E[(z_i − E z_i)^k]   (exact central moments:
             Gaussian (k−1)!!σ^k for even k, 0 for odd k — Wick/Isserlis pairings; Bernoulli
             and finite uniform by their finite sums),

so for polynomials x = Σ a_α δ^α and y = Σ b_β δ^β:

    E[x] = Σ a_α E[δ^α],    Cov(x, y) = Σ_{α,β} a_α b_β (E[δ^{α+β}] − E[δ^α] E[δ^β]).

With no truncation this is the exact ground truth for any inputs (`expand_moments`).

**Wick propagation to order K** (`wick_moments(circuit, K)`) keeps only the terms of total degree
≤ K in the fluctuations at every node (a product of truncated factors, truncated again, equals
the full expansion truncated at K, so truncation can be applied node by node), then takes the
mean and covariance of the truncated polynomials exactly. Order 1 is the delta method (linear
noise); order K ≥ the circuit's degree is exact. What is dropped: every term of degree > K in the
fluctuations, i.e. the contribution of input moments beyond those the kept terms pair up.

Sizes: the expansion is capped at `max_terms` distinct monomials over the whole circuit; a larger
circuit raises CircuitError (use enumeration or Monte Carlo there).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from estimators.circuits.model import Circuit, CircuitError
from estimators.circuits.moments import Moments

MAX_TERMS = 4000


@dataclass
class Poly:
    exps: torch.Tensor  # [m, n_inputs] int64
    coef: torch.Tensor  # [m] float64

    @property
    def degree(self) -> int:
        return int(self.exps.sum(1).max()) if len(self.coef) else 0


def _combine(exps: torch.Tensor, coef: torch.Tensor) -> Poly:
    """Sum the coefficients of equal monomials; drop exact zeros."""
    if exps.shape[0] == 0:
        return Poly(exps, coef)
    uniq, inv = torch.unique(exps, dim=0, return_inverse=True)
    c = torch.zeros(uniq.shape[0], dtype=coef.dtype, device=coef.device).index_add_(0, inv, coef)
    keep = c != 0
    return Poly(uniq[keep], c[keep])


def _add(p: Poly, q: Poly, sign: float = 1.0) -> Poly:
    return _combine(torch.cat([p.exps, q.exps]), torch.cat([p.coef, sign * q.coef]))


def _mul(p: Poly, q: Poly, max_degree: int | None, max_terms: int) -> Poly:
    n = p.exps.shape[1]
    if p.coef.numel() * q.coef.numel() > 16_000_000:
        raise CircuitError(f"exact expansion too large ({p.coef.numel()} × {q.coef.numel()} "
                           f"terms in one product); use enumeration or Monte Carlo")
    E = p.exps[:, None, :] + q.exps[None, :, :]
    C = p.coef[:, None] * q.coef[None, :]
    if max_degree is not None:
        keep = E.sum(-1) <= max_degree
        E, C = E[keep], C[keep]
    return _combine(E.reshape(-1, n), C.reshape(-1))


def expand(circuit: Circuit, max_degree: int | None = None, max_terms: int = MAX_TERMS,
           device: str | torch.device = "cpu") -> dict[str, Poly]:
    """Each variable as a polynomial in the input fluctuations (truncated at `max_degree`)."""
    names = list(circuit.inputs)
    n = len(names)
    eye = torch.eye(n, dtype=torch.int64, device=device)
    zero = torch.zeros(1, n, dtype=torch.int64, device=device)
    polys: dict[str, Poly] = {}
    nb = circuit.node_by_id

    def const(c: float) -> Poly:
        return _combine(zero, torch.tensor([c], dtype=torch.float64, device=device))

    for v in circuit.order:
        node = nb.get(v)
        if node is None:  # z = E z + δ (truncation at degree 0 keeps only the mean)
            i = names.index(v)
            p = _add(const(circuit.inputs[v].expectation),
                     Poly(eye[i:i + 1], torch.ones(1, dtype=torch.float64, device=device)))
            if max_degree == 0:
                p = const(circuit.inputs[v].expectation)
        elif node.op == "const":
            p = const(node.value)
        elif node.op == "mul":
            p = _mul(polys[node.args[0]], polys[node.args[1]], max_degree, max_terms)
        else:
            p = _add(polys[node.args[0]], polys[node.args[1]],
                     1.0 if node.op == "add" else -1.0)
        if p.coef.numel() > max_terms:
            raise CircuitError(f"exact expansion too large at node {v!r} ({p.coef.numel()} "
                               f"monomials > {max_terms}); use enumeration or Monte Carlo")
        polys[v] = p
    return polys


def _moment_table(circuit: Circuit, k_max: int, device) -> torch.Tensor:
    """[n_inputs, k_max + 1]: central moments of each input."""
    rows = [d.central_moments(k_max) for d in circuit.inputs.values()]
    return torch.tensor(rows, dtype=torch.float64, device=device)


def polynomial_moments(circuit: Circuit, polys: dict[str, Poly], method: str,
                       device: str | torch.device = "cpu") -> Moments:
    """Exact mean vector and covariance matrix of the given polynomials."""
    ids = circuit.order
    allexp = torch.cat([polys[v].exps for v in ids])
    basis, inv = torch.unique(allexp, dim=0, return_inverse=True)  # [M, n]
    M, n = basis.shape
    if M > MAX_TERMS * 2:
        raise CircuitError(f"exact expansion too large ({M} monomials); use enumeration or "
                           f"Monte Carlo")
    P = torch.zeros(len(ids), M, dtype=torch.float64, device=device)  # coefficients
    start = 0
    for r, v in enumerate(ids):
        m = polys[v].coef.numel()
        P[r].index_add_(0, inv[start:start + m], polys[v].coef)
        start += m
    deg = int(basis.max()) if M else 0
    mom = _moment_table(circuit, 2 * deg, device)  # [n, 2deg+1]
    K1 = mom.shape[1]
    offs = (torch.arange(n, device=device) * K1)[None, :]
    flat = mom.reshape(-1)
    m_basis = flat[offs + basis].prod(-1)  # E[δ^α], [M]
    mean = P @ m_basis
    cov = torch.zeros(len(ids), len(ids), dtype=torch.float64, device=device)
    chunk = max(1, 4_000_000 // max(M * n, 1))  # bounds the [chunk, M, n] index tensor
    for s in range(0, M, chunk):  # H = E[δ^{α+β}] − E[δ^α]E[δ^β], a row block at a time
        A = basis[s:s + chunk]
        G = flat[offs[None] + A[:, None, :] + basis[None, :, :]].prod(-1)  # [c, M]
        H = G - m_basis[s:s + chunk, None] * m_basis[None, :]
        cov += P[:, s:s + chunk] @ H @ P.T
    cov = 0.5 * (cov + cov.T)
    return Moments(ids=ids, mean=mean, cov=cov, method=method)


def expand_moments(circuit: Circuit, device: str | torch.device = "cpu",
                   max_terms: int = MAX_TERMS) -> Moments:
    """Exact means and covariances of every variable by full polynomial expansion."""
    return polynomial_moments(circuit, expand(circuit, None, max_terms, device),
                              "exact (polynomial expansion)", device)


def wick_moments(circuit: Circuit, order: int, device: str | torch.device = "cpu",
                 max_terms: int = MAX_TERMS) -> Moments:
    """Wick/cumulant propagation to `order`: the expansion truncated at that total degree in the
    input fluctuations; exact when order ≥ the circuit's degree."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise CircuitError(f"the Wick order must be an integer >= 1, got {order!r}")
    polys = expand(circuit, order, max_terms, device)
    mom = polynomial_moments(circuit, polys, f"Wick order {order}", device)
    deg = max(circuit.degrees().values())
    mom.notes.append(f"exact: order {order} ≥ circuit degree {deg}" if order >= deg else
                     f"truncated: terms of degree > {order} dropped (circuit degree {deg})")
    return mom
