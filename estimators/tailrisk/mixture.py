"""Pooling samples from the input distribution D with samples from a tilted law q ∝ D·e^{l}.

Both importance samplers spend part of their budget on *reference samples*: plain draws from D
evaluated forward only (1 call each, no gradient). Pooled with the tilted samples they give an
estimate that can be 0 only when no sample of either kind hit, and whose weights are bounded.

* Known proposal density (ITGIS): the balance heuristic of multiple importance sampling (Veach &
  Guibas 1995; Owen & Zhou 2000). With n_D draws from D and n_q from q (counts fixed in
  advance), every sample x of either kind gets the weight D(x)/m(x), m = (n_D·D + n_q·q)/n,
  and p̂ = (1/n)·Σ value(x)·D(x)/m(x) is unbiased; every weight is ≤ n/n_D.
* Unnormalised tilt (MHIS, q = D·e^{l}/Z with Z = E_D[e^{l}] unknown): Z by bridge sampling with
  the optimal bridge (Meng & Wong 1996), iterating

      Z ← [ (1/n_D)·Σ_{x∼D} e^{l}/(n_D + n_q·e^{l}/Z) ] / [ (1/n_q)·Σ_{x∼q} 1/(n_D + n_q·e^{l}/Z) ],

  then the same balance-heuristic sum with D/m = n/(n_D + n_q·e^{l}/Z) (Geyer's 1994 reverse
  logistic regression estimator for two samples). With n_q = 0 it is Monte Carlo; with n_D = 0
  it is the self-normalised (harmonic-mean) estimator. Consistent, not unbiased (Z is
  estimated; chains are correlated).

All sums in log space (logsumexp), float64.
"""

from __future__ import annotations

import math

import torch


def log_balance_weights(log_d: torch.Tensor, log_q: torch.Tensor, n_d: int, n_q: int
                        ) -> torch.Tensor:
    """log D(x)/m(x), m = (n_d·D + n_q·q)/(n_d + n_q), for samples with log D, log q [n]."""
    n = n_d + n_q
    if n_q == 0:
        return torch.zeros_like(log_d)
    if n_d == 0:
        return log_d - log_q
    log_m = torch.logaddexp(log_d + math.log(n_d / n), log_q + math.log(n_q / n))
    return log_d - log_m


def bridge_log_z(l_ref: torch.Tensor, l_tilt: torch.Tensor, iters: int = 200,
                 tol: float = 1e-10) -> float:
    """log Z, Z = E_D[e^{l}], from l at n_D draws from D (`l_ref`) and at n_q draws from
    q ∝ D·e^{l} (`l_tilt`), by the optimal-bridge iteration above (float64)."""
    l1, l2 = l_ref.double(), l_tilt.double()
    n1, n2 = l1.numel(), l2.numel()
    if n2 == 0:
        return float(torch.logsumexp(l1, 0) - math.log(n1))
    if n1 == 0:
        return float(math.log(n2) - torch.logsumexp(-l2, 0))
    # start from the geometric mean of the direct and the harmonic estimates
    lz = 0.5 * (float(torch.logsumexp(l1, 0) - math.log(n1))
                + float(math.log(n2) - torch.logsumexp(-l2, 0)))
    a, b = math.log(n1), math.log(n2)
    for _ in range(iters):
        # log (n1 + n2·e^{l − lz}) per sample
        den1 = torch.logaddexp(torch.full_like(l1, a), b + l1 - lz)
        den2 = torch.logaddexp(torch.full_like(l2, a), b + l2 - lz)
        num = float(torch.logsumexp(l1 - den1, 0)) - a
        den = float(torch.logsumexp(-den2, 0)) - b
        new = num - den
        if abs(new - lz) < tol:
            lz = new
            break
        lz = new
    return lz


def pooled_estimate(v_ref: torch.Tensor, l_ref: torch.Tensor, v_tilt: torch.Tensor,
                    l_tilt: torch.Tensor) -> tuple[float, float]:
    """(p̂, log Z): p̂ = Σ_all value·D/m over both pools, D/m = n/(n_D + n_q·e^{l}/Z), Z from
    `bridge_log_z`. Values ≥ 0 ([n] each); 0 only when every value is 0."""
    v = torch.cat([v_ref, v_tilt]).double()
    l = torch.cat([l_ref, l_tilt]).double()
    n1, n2 = v_ref.numel(), v_tilt.numel()
    lz = bridge_log_z(l_ref, l_tilt)
    hit = v > 0
    if not bool(hit.any()):
        return 0.0, lz
    tilt = math.log(n2) + l - lz if n2 else torch.full_like(l, -math.inf)
    log_den = torch.logaddexp(torch.full_like(l, math.log(n1)), tilt) if n1 else tilt
    log_p = torch.logsumexp(v[hit].log() - log_den[hit], 0)
    return float(torch.exp(log_p).clamp(max=1.0)), lz
