"""GLD: Gaussian logit difference (background.md §5).

Fit a normal to δ(x) = min over the behaviour's linear constraints of (a·G + h) — for argmax,
δ = logit_t − max_{u≠t} logit_u — from n samples, and report P(δ > 0) = Φ(μ/σ), computed
from log Φ so that tiny probabilities do not underflow. Budget: n = budget forward calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import Behaviour, BehaviourError
from estimators.tailrisk.common import Clock, EstimatorConfig, ProgressFn, log_ndtr
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.qld import sample_site


@dataclass
class GLDConfig(EstimatorConfig):
    pass


def gld_probability(acts: torch.Tensor, G: torch.Tensor, h: torch.Tensor) -> tuple[float, dict]:
    delta = (acts.double() @ G.to(acts.device).double() + h.to(acts.device).double()).min(1).values
    mu = float(delta.mean())
    sd = float(delta.std(unbiased=True))
    if sd == 0.0:
        return (1.0 if mu > 0 else 0.0), {"mu": mu, "sigma": sd}
    log_p = float(log_ndtr(torch.tensor(mu / sd)))
    return math.exp(log_p), {"mu": mu, "sigma": sd, "log10_p": log_p / math.log(10),
                             "empirical_fraction": float((delta > 0).double().mean())}


def estimate_gld(model, dist: InputDistribution, behaviour: Behaviour, config: GLDConfig,
                 progress: ProgressFn | None = None) -> Estimate:
    if not behaviour.is_indicator:
        raise BehaviourError("GLD needs an indicator behaviour given by linear inequalities "
                             "(argmax, logit or direction threshold)")
    clock = Clock()
    G, h = behaviour.constraints(model)
    acts = sample_site(model, dist, behaviour, config.budget, config.seed, config.batch_size,
                       progress)
    p, info = gld_probability(acts, G, h)
    info["samples"] = config.budget
    return Estimate(value=p, interval=None, cost=Cost(calls=config.budget, seconds=clock.seconds),
                    diagnostics=info)
