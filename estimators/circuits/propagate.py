"""Mean, variance and sparse-covariance propagation (background.md §3).

The argument π is a set of *tracked pairs* of variables. Only pairs that some node combines are
candidates (the two arguments of an add/sub/mul node, neither a constant, the same variable twice
allowed: x·x): a covariance enters a mean or variance formula only there, so tracking any other
pair could not change the estimate. With no pair tracked this is plain mean + variance
propagation under presumed independence:

    E[a+b] = μa + μb           Var(a+b) = σa² + σb²
    E[a·b] = μa μb             Var(a·b) = σa²σb² + σa²μb² + σb²μa²

For a tracked pair with c = Cov(a, b):

    E[a·b] = μa μb + c         Var(a±b) = σa² + σb² ± 2c
    Var(a·b) = σa²σb² + σa²μb² + σb²μa² + 2 μa μb c + c²

The covariance c of a tracked pair is computed recursively by bilinearity down to the inputs
(which are independent, so Cov(z_i, z_j) = 0 for i ≠ j, Var z_i exactly):

    Cov(a ± b, m) = Cov(a, m) ± Cov(b, m)
    Cov(a·b, m)   ≈ μa Cov(b, m) + μb Cov(a, m)          (first order)
    Cov(m, m)     = the propagated variance estimate of m

The recursion runs over the whole lower triangle, one row per variable in topological order, so
it is an n×n matrix computation (one vectorised row update per node) rather than a memoised
recursion; every covariance is computed, and the argument decides which ones are *used*.

What is approximate, exactly:
  1. an untracked pair is presumed independent (its covariance taken as 0) where it is combined;
  2. Cov(a·b, m) drops the third joint central moment E[(a−μa)(b−μb)(m−μm)] (first order);
  3. Var(a·b) for a tracked pair uses joint-Gaussian fourth moments (Isserlis), exact when a and
     b are jointly Gaussian (e.g. linear in Gaussian inputs), not otherwise;
  4. each step uses the *estimated* means and variances of its arguments, so errors compound.
A variance that comes out negative (possible when approximate covariances exceed what a valid
joint law allows) is clipped to 0 and reported in `notes`.

Where approximation 3 is not needed or not justified (`Moments.node_warnings`, shown in the
error table):
  * x·x with x an input: the moments are exact from the input law's central moments
    (E[x²] = μ² + σ², Var(x²) = 4μ²σ² + 4μ·m3 + m4 − σ⁴), so finite inputs get no closure;
  * a tracked product of two variables that are not both linear in Gaussian inputs (a
    non-Gaussian input, or a product, upstream) and not two distinct (independent) inputs: the
    Gaussian fourth-moment closure is applied to non-Gaussian variables, and the node carries a
    warning saying so (tracking the pair can then make its variance worse than independence);
    every node computed from a warned node carries a warning naming where the closure was
    applied.
Means are exact when all candidate pairs are tracked and the circuit has degree ≤ 2 in Gaussian
inputs (each product then multiplies two linear nodes, whose covariances bilinearity gets exactly).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from estimators.circuits.model import BINARY_OPS, Circuit, CircuitError
from estimators.circuits.moments import Moments

Pair = tuple[str, str]


def normalize_pair(circuit: Circuit, pair: Sequence[str]) -> Pair:
    """(u, v) ordered by the circuit's topological order; unknown ids raise CircuitError."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 \
            or not all(isinstance(v, str) for v in pair):
        raise CircuitError(f"a tracked pair must be two ids, got {str(pair)[:60]}")
    for v in pair:
        if v not in circuit.index:
            raise CircuitError(f"tracked pair {list(pair)}: unknown id {v!r}")
    u, v = pair
    return (u, v) if circuit.index[u] <= circuit.index[v] else (v, u)


def candidate_users(circuit: Circuit) -> dict[Pair, list[str]]:
    """Candidate pair -> the nodes that combine it, in topological order."""
    nb = circuit.node_by_id
    out: dict[Pair, list[str]] = {}
    for vid in circuit.order:
        n = nb.get(vid)
        if n is None or n.op not in BINARY_OPS:
            continue
        if any(circuit.kind(a) == "const" for a in n.args):
            continue  # a constant's covariance with anything is exactly 0
        out.setdefault(normalize_pair(circuit, n.args), []).append(vid)
    return out


def candidate_pairs(circuit: Circuit) -> list[Pair]:
    return list(candidate_users(circuit))


def check_tracked(circuit: Circuit, tracked: Iterable[Sequence[str]]) -> list[Pair]:
    """Normalise and validate a tracked set: each pair must be a candidate. Order kept,
    duplicates dropped."""
    users = candidate_users(circuit)
    out: list[Pair] = []
    for p in tracked:
        q = normalize_pair(circuit, p)
        if q not in users:
            raise CircuitError(f"pair {q[0]} × {q[1]} is not combined by any node, so tracking "
                               f"it cannot change the estimate; candidates are the argument "
                               f"pairs of add/sub/mul nodes")
        if q not in out:
            out.append(q)
    return out


def propagate(circuit: Circuit, tracked: Iterable[Sequence[str]] = (),
              device: str | torch.device = "cpu") -> Moments:
    """Sparse-covariance propagation; `tracked=()` is mean + variance propagation under
    independence. Returns the propagated means and the covariance matrix computed by
    bilinearity (the diagonal is the variance estimate)."""
    pairs = set(check_tracked(circuit, tracked))
    ids = circuit.order
    n = len(ids)
    idx = circuit.index
    nb = circuit.node_by_id
    mu = torch.zeros(n, dtype=torch.float64, device=device)
    C = torch.zeros(n, n, dtype=torch.float64, device=device)
    notes: list[str] = []
    warnings: dict[str, str] = {}
    origin: dict[str, str] = {}  # node -> the node whose closure its estimate inherits
    linear = [False] * n  # linear (affine) in Gaussian inputs: the Isserlis closure is exact
    for v in ids:
        k = idx[v]
        node = nb.get(v)
        if node is None:  # input: independent of every earlier input
            d = circuit.inputs[v]
            C[k, k] = float(d.central_moments(2)[2])
            mu[k] = d.expectation
            linear[k] = d.dist == "normal"
            continue
        if node.op == "const":
            mu[k] = node.value
            linear[k] = True
            continue
        i, j = idx[node.args[0]], idx[node.args[1]]
        t = normalize_pair(circuit, node.args) in pairs
        mi, mj = float(mu[i]), float(mu[j])
        vi, vj, c = float(C[i, i]), float(C[j, j]), float(C[i, j])
        ci = c if t else 0.0
        # row k against all earlier variables, by bilinearity (vectorised over the row)
        if node.op == "add":
            row = C[i, :k] + C[j, :k]
            m, var = mi + mj, vi + vj + 2 * ci
        elif node.op == "sub":
            row = C[i, :k] - C[j, :k]
            m, var = mi - mj, vi + vj - 2 * ci
        else:
            row = mi * C[j, :k] + mj * C[i, :k]
            m = mi * mj + ci
            var = vi * vj + vi * mj ** 2 + vj * mi ** 2 + (2 * mi * mj * ci + ci ** 2 if t else 0)
            a, b = node.args
            if t and i == j and a in circuit.inputs:
                m, var = _square_of_input(circuit.inputs[a])
            elif t and not (linear[i] and linear[j]) and not (
                    a in circuit.inputs and b in circuit.inputs and i != j):
                what = f"{a} is not Gaussian" if a == b else \
                    f"{a} and {b} are not jointly Gaussian"
                warnings[v] = (f"Var({a}·{b}) uses the joint-Gaussian fourth-moment closure, "
                               f"but {what} (non-Gaussian inputs or products upstream): with "
                               f"this pair tracked the variance can be worse than under "
                               f"independence")
        if v not in warnings:
            src = sorted({origin[a] for a in node.args if a in origin})
            if src:
                origin[v] = src[0]
                warnings[v] = (f"depends on {', '.join(src)}, where the joint-Gaussian "
                               f"fourth-moment closure was applied to non-Gaussian variables")
        else:
            origin[v] = v
        if node.op in ("add", "sub"):
            linear[k] = linear[i] and linear[j]
        else:
            linear[k] = (circuit.kind(node.args[0]) == "const" and linear[j]) or (
                circuit.kind(node.args[1]) == "const" and linear[i])
        if var < 0:
            notes.append(f"variance of {v} came out {var:.4g} < 0 and was clipped to 0")
            var = 0.0
        C[k, :k] = row
        C[:k, k] = row
        C[k, k] = var
        mu[k] = m
    method = "sparse covariance" if pairs else "independence"
    notes += [f"{v}: {w}" for v, w in warnings.items()]
    return Moments(ids=ids, mean=mu, cov=C, method=method, notes=notes,
                   node_warnings=warnings)


def _square_of_input(d) -> tuple[float, float]:
    """Exact (E[x²], Var(x²)) of an input x from its law's central moments."""
    m = d.expectation
    _, _, m2, m3, m4 = d.central_moments(4)
    return m * m + m2, 4 * m * m * m2 + 4 * m * m3 + m4 - m2 * m2
