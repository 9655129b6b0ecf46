"""ITGIS: independent token gradient importance sampling (background.md §5).

Proposal per position q_i(v) ∝ p_i(v)·exp(s_{i,v}/T), where s is an exponential moving average
(bias-corrected, as in Adam) of the batch-mean gradient of the behaviour's score (the target
logit) with respect to the one-hot input: the first-order gain of putting token v at position
i. Batch b samples from the proposal built from batches 0…b−1 only, so each batch's weighted
mean is unbiased and so is their average:

    p̂ = mean over all samples of value(x)·Π_i p_i(x_i)/q_i(x_i).

Budget: every sample is evaluated with its gradient (forward + backward = 2 calls), so a budget
of N calls draws N/2 samples. The interval is the normal approximation on the weighted values
(approximate; it can be too narrow when the weights are heavy-tailed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import Behaviour, model_device
from estimators.tailrisk.common import (FORWARD_BACKWARD_CALLS, Clock, EstimatorConfig,
                                        ProgressFn, batches, generator, normal_interval, report)
from estimators.tailrisk.distributions import InputDistribution


@dataclass
class ITGISConfig(EstimatorConfig):
    batch_size: int = 64
    temperature: float = 1.0
    ema_decay: float = 0.9
    confidence: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def proposal_logits(log_p: torch.Tensor, s: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q_i(v) up to a constant: log p_i(v) + s_{i,v}/T (−inf off D's support)."""
    return log_p + s / temperature


def estimate_itgis(model, dist: InputDistribution, behaviour: Behaviour, config: ITGISConfig,
                   progress: ProgressFn | None = None) -> Estimate:
    clock = Clock()
    dev = model_device(model)
    gen = generator(config.seed)
    n = config.budget // FORWARD_BACKWARD_CALLS
    log_p = dist.probs.log()  # [k, V] float64, cpu
    k, V = log_p.shape
    ema = torch.zeros(k, V, dtype=torch.float64)
    updates = 0
    weighted = []
    for start, m in batches(n, config.batch_size):
        if updates:
            s = ema / (1 - config.ema_decay ** updates)
            log_q = torch.log_softmax(proposal_logits(log_p, s, config.temperature), -1)
        else:
            log_q = log_p
        x = torch.multinomial(log_q.exp().float(), m, replacement=True, generator=gen).T
        log_w = (log_p.gather(1, x.T) - log_q.gather(1, x.T)).sum(0)  # [m]
        v, _, grad = behaviour.evaluate_with_grad(model, x.to(dev))
        weighted.append(v.cpu() * log_w.exp())
        # update only after this batch is weighted: later batches see it, this one did not
        ema = config.ema_decay * ema + (1 - config.ema_decay) * grad.double().mean(0).cpu()
        updates += 1
        report(progress, (start + m) / n)
    w = torch.cat(weighted)
    value = float(w.mean())
    interval = normal_interval(w, config.confidence, upper_clip=1.0)
    return Estimate(value=value, interval=interval,
                    cost=Cost(calls=n * FORWARD_BACKWARD_CALLS, seconds=clock.seconds),
                    diagnostics={"samples": n, "hits": int((w > 0).sum()),
                                 "temperature": config.temperature, "batches": updates,
                                 "interval_kind": "normal (approximate)"})
