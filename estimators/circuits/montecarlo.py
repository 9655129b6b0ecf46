"""Monte Carlo moments: N seeded draws of the inputs, the whole circuit evaluated as one batch.

Standard errors: mean ± s/√N; the sample variance's SE is √((m4 − s⁴)/N) with m4 the sample
fourth central moment (large-N normal approximation)."""

from __future__ import annotations

import torch

from estimators.circuits.model import Circuit, CircuitError
from estimators.circuits.moments import Moments

MAX_CELLS = 50_000_000


def monte_carlo_moments(circuit: Circuit, n: int, seed: int,
                        device: str | torch.device = "cpu") -> Moments:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise CircuitError(f"Monte Carlo needs at least 2 samples, got {n!r}")
    if n * len(circuit.order) > MAX_CELLS:
        raise CircuitError(f"{n} samples × {len(circuit.order)} variables will not fit in "
                           f"memory; use at most {MAX_CELLS // len(circuit.order)} samples")
    vals = circuit.sample(n, seed, device)
    X = torch.stack([vals[v] for v in circuit.order])  # [n_vars, N]
    mean = X.mean(1)
    D = X - mean[:, None]
    cov = D @ D.T / (n - 1)
    var = torch.diagonal(cov)
    m4 = (D ** 4).mean(1)
    return Moments(ids=circuit.order, mean=mean, cov=cov, method=f"Monte Carlo (N={n})",
                   mean_se=(var / n).sqrt(), var_se=((m4 - var ** 2).clamp_min(0) / n).sqrt(),
                   notes=[f"seed {seed}"])
