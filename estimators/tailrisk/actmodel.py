"""Activation-model estimate read at the behaviour's site (background.md §2 and §5).

Minimal version, used because `estimators.activation` exposes no propagation API yet: the
Gaussian N(μ, Σ) at the site (for argmax the unembedding's input, so the logits are the
Gaussian's exact linear image N(μW_U + b_U, W_UᵀΣW_U)) is fitted by moments from n sampled
inputs, and the behaviour's probability under that Gaussian, P(a·G + h > 0), is computed
(not sampled naively, which could never see 1e-9):

whiten (z ~ N(0, I_r)), take the QLD split direction d, and since α = z·d ~ N(0, 1) is exactly
independent of β under a Gaussian, P = E_β[Φ(hi(β)) − Φ(lo(β))] with (lo, hi) the accepting
α-interval for β — averaged over `n_draws` Gaussian draws of β (no model calls; a
Rao-Blackwellised estimate whose error the diagnostics report as a standard error).

Budget: n = budget forward calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import Behaviour, BehaviourError
from estimators.tailrisk.common import Clock, EstimatorConfig, ProgressFn, generator, phi_interval
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.qld import (alpha_intervals, sample_site, split_direction, whiten,
                                     whitened_constraints)


@dataclass
class ActivationConfig(EstimatorConfig):
    n_draws: int = 16384  # Gaussian draws of β (free: no model calls)

    def __post_init__(self):
        super().__post_init__()
        if self.n_draws < 2:
            raise ValueError("n_draws must be at least 2")


def gaussian_polytope_probability(mu: torch.Tensor, A: torch.Tensor, G: torch.Tensor,
                                  h: torch.Tensor, n_draws: int = 16384, seed: int = 0
                                  ) -> tuple[float, dict]:
    """P(a·G + h > 0 column-wise) for a ~ N(mu, A Aᵀ) (A [d, r])."""
    G, h = G.double().to(mu.device), h.double().to(mu.device)
    Gz, hz, note = whitened_constraints(G, h, mu.double(), A.double())
    if note:
        return 0.0, {"note": note}
    if Gz.shape[1] == 0:
        return 1.0, {}
    d, info = split_direction(Gz, hz)
    if d is None:
        return 0.0, info
    z = torch.randn(n_draws, Gz.shape[0], generator=generator(seed), dtype=torch.float64)
    z = z.to(Gz.device)
    beta = z - (z @ d)[:, None] * d
    lo, hi = alpha_intervals(beta, d, Gz, hz)
    p_i = phi_interval(lo, hi)
    p = float(p_i.mean())
    info["draw_standard_error"] = float(p_i.std()) / math.sqrt(n_draws)
    return p, info


def estimate_activation(model, dist: InputDistribution, behaviour: Behaviour,
                        config: ActivationConfig, progress: ProgressFn | None = None
                        ) -> Estimate:
    if not behaviour.is_indicator:
        raise BehaviourError("the activation-model estimate needs an indicator behaviour "
                             "given by linear inequalities (argmax, logit or direction)")
    clock = Clock()
    G, h = behaviour.constraints(model)
    acts = sample_site(model, dist, behaviour, config.budget, config.seed, config.batch_size,
                       progress)
    _, mu, A = whiten(acts)
    p, info = gaussian_polytope_probability(mu, A, G, h, config.n_draws, config.seed + 1)
    info.update(samples=config.budget, rank=int(A.shape[1]),
                gaussian="moment fit at the site from sampled inputs (minimal engine)")
    return Estimate(value=p, interval=None, cost=Cost(calls=config.budget, seconds=clock.seconds),
                    diagnostics=info)
