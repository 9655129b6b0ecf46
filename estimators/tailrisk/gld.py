"""GLD: Gaussian logit difference (background.md §5).

Fit a normal to δ(x) = min over the behaviour's linear constraints of (a·G + h) — for argmax,
δ = logit_t − max_{u≠t} logit_u — from n samples, and report P(δ > 0) = Φ(μ/σ), computed
from log Φ so that tiny probabilities do not underflow. Budget: n = budget forward calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Estimate
from estimators.tailrisk.behaviours import Behaviour, constraint_margin
from estimators.tailrisk.common import EstimatorConfig, ProgressFn, log_ndtr
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.qld import estimate_from_site_samples


@dataclass
class GLDConfig(EstimatorConfig):
    pass


def gld_probability(acts: torch.Tensor, G: torch.Tensor, h: torch.Tensor) -> tuple[float, dict]:
    delta = constraint_margin(acts.double(), G, h)
    mu = float(delta.mean())
    sd = float(delta.std(unbiased=True))
    if sd == 0.0:
        return (1.0 if mu > 0 else 0.0), {"mu": mu, "sigma": sd}
    log_p = float(log_ndtr(torch.tensor(mu / sd)))
    return math.exp(log_p), {"mu": mu, "sigma": sd, "log10_p": log_p / math.log(10),
                             "empirical_fraction": float((delta > 0).double().mean())}


def estimate_gld(model, dist: InputDistribution, behaviour: Behaviour, config: GLDConfig,
                 progress: ProgressFn | None = None) -> Estimate:
    return estimate_from_site_samples("GLD", gld_probability, model, dist, behaviour, config,
                                      progress)
