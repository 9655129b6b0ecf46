"""Monte Carlo: the mean of the behaviour's value over i.i.d. inputs from D.

For an indicator the interval is Wilson's (default) or Clopper–Pearson's; with no hits the
estimate is 0 and the interval [0, upper] is still reported. For an expected probability
(SampledProbability) it is the normal approximation mean ± z·sd/√n. Budget: one call per input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import Behaviour, model_device
from estimators.tailrisk.common import (Clock, EstimatorConfig, ProgressFn, batches,
                                        clopper_pearson_interval, generator, normal_interval,
                                        report, wilson_interval)
from estimators.tailrisk.distributions import InputDistribution

INTERVALS = ("wilson", "clopper-pearson")


@dataclass
class MCConfig(EstimatorConfig):
    interval: str = "wilson"
    confidence: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        if self.interval not in INTERVALS:
            raise ValueError(f"interval must be one of {INTERVALS}, got {self.interval!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")


def estimate_mc(model, dist: InputDistribution, behaviour: Behaviour, config: MCConfig,
                progress: ProgressFn | None = None) -> Estimate:
    clock = Clock()
    dev = model_device(model)
    gen = generator(config.seed)
    n = config.budget
    values = []
    for start, m in batches(n, config.batch_size):
        x = dist.sample(m, gen, dev)
        v, _ = behaviour.evaluate(model, x)
        values.append(v.cpu())
        report(progress, (start + m) / n, start + m, n, "calls", "Monte Carlo")
    v = torch.cat(values)
    est = float(v.mean())
    if behaviour.is_indicator:
        hits = int(v.sum().round())
        f = wilson_interval if config.interval == "wilson" else clopper_pearson_interval
        interval = f(hits, n, config.confidence)
        diag = {"hits": hits, "samples": n, "interval_kind": config.interval}
    else:
        interval = normal_interval(v, config.confidence)
        diag = {"samples": n, "interval_kind": "normal"}
    return Estimate(value=est, interval=interval, cost=Cost(calls=n, seconds=clock.seconds),
                    diagnostics=diag)
