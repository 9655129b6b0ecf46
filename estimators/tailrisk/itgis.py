"""ITGIS: independent token gradient importance sampling (background.md §5).

Proposal per position q_i(v) ∝ p_i(v)·exp(s_{i,v}/T), where s is an exponential moving average
(bias-corrected, as in Adam) of the batch-mean gradient of the behaviour's score (the target
logit) with respect to the one-hot input: the first-order gain of putting token v at position
i. Batch b samples from the proposal built from batches 0…b−1 only, so each batch's weighted
mean is unbiased and so is their average:

    p̂ = mean over all samples of value(x)·Π_i p_i(x_i)/q_i(x_i),

reported capped at 1 (a probability; near p = 1 the unbiased mean can exceed 1: 1.001 seen).

Budget: every tilted sample is evaluated with its gradient (forward + backward = 2 calls), so
without reference draws a budget of N calls draws N/2 samples (`samples` in the diagnostics;
the literature counts one forward+backward as one call and quotes budgets in samples). The interval is the normal
approximation on the weighted values (approximate; it can be too narrow when the weights are
heavy-tailed).

Safe defaults (auto_temperature, defensive):
* the proposal is a defensive mixture per position, q_i = α·p_i + (1 − α)·q_{T,i} (Hesterberg
  1995), so every weight Π p_i/q_i ≤ α^{−k}: never worse than k-fold bounded;
* the temperature is chosen before every batch from the batches already drawn (so each batch
  stays unbiased): while no sample has hit, T is halved each batch (more tilt, from
  `temperature` down to `min_temperature`); after the first hit, T is the grid value (T₀·2^j,
  j = −8…2) that minimises the importance-sampling second moment estimated by re-weighting
  every earlier sample, m₂(T) = mean_j v_j²·p(x_j)²/(q_T(x_j)·q_j(x_j)) (adaptive importance
  sampling; the same criterion as cross-entropy/variance-minimising schemes). T never goes
  below a tenth of the gains' spread over each position's support (a tilt of e^{±10}: beyond
  it the proposal collapses onto the tokens with the largest first-order gain).
auto_temperature=False keeps `temperature` fixed (the literature's tuned runs).

Reference draws (`reference_fraction`, default 0.1 of the calls): forward-only draws from D
(1 call each), spread evenly over the batches and pooled with each batch's tilted samples by
the balance heuristic (mixture.py): every sample of the batch, of either kind, is weighted
D(x)/m_b(x), m_b = (r_b·D + m_b'·q_b)/(r_b + m_b') for r_b reference draws and m_b' tilted
samples, so each batch stays unbiased and every weight is ≤ (r_b + m_b')/r_b. A hit among the
reference draws alone makes the estimate positive. Budget N calls: n_ref = ⌊f·N⌋ reference
draws and (N − n_ref)/2 samples with gradients; `samples` counts both.

Refinement and zero-hit fallback (`refine_fraction`, default 0.9; `fallback`, default true;
the same step in ITGIS and MHIS, `fallback.settle`): see pmc.py (population Monte Carlo around
the search's hits; `refine_fraction=0` is the sampler alone) and fallback.py.

Guide (`guide`): the score whose gradient tilts the proposal — "score", the behaviour's own
(the target logit: Wu & Hilton 2024), or "margin" for argmax, logit_t − logsumexp_{u≠t}
logit_u (`Behaviour.guided`). Only the proposal changes, so each batch stays unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import GUIDES, Behaviour, model_device
from estimators.tailrisk.common import (CALLS_CONVENTION, FORWARD_BACKWARD_CALLS, Clock,
                                        EstimatorConfig, ProgressFn, batches, generator,
                                        normal_interval, report)
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.fallback import settle
from estimators.tailrisk.mixture import log_balance_weights
from estimators.tailrisk.pmc import (KNOWN_SET_INTERVAL, SearchLog, check_refine_fraction, refine,
                                     refine_calls)


@dataclass
class ITGISConfig(EstimatorConfig):
    batch_size: int = 64
    temperature: float = 1.0
    ema_decay: float = 0.9
    confidence: float = 0.95
    auto_temperature: bool = True
    defensive: float = 0.1
    min_temperature: float = 1e-3
    reference_fraction: float = 0.1  # of the calls: forward-only draws from D (mixture.py)
    fallback: bool = True  # no hit: QLD/GLD on the reference draws' activations (fallback.py)
    guide: str = "score"  # the guiding score: "score" (target logit) or "margin" (argmax)
    refine_fraction: float = 0.9  # of the calls: coordinate search, population Monte Carlo

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0 <= self.defensive < 1:
            raise ValueError(f"defensive must be in [0, 1), got {self.defensive}")
        if not 0 < self.min_temperature <= self.temperature:
            raise ValueError(f"min_temperature must be in (0, temperature], got "
                             f"{self.min_temperature}")
        if not isinstance(self.auto_temperature, bool):
            raise ValueError("auto_temperature must be true or false")
        if not isinstance(self.fallback, bool):
            raise ValueError("fallback must be true or false")
        if self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {self.guide!r}")
        if not 0 <= self.reference_fraction < 1:
            raise ValueError(f"reference_fraction must be in [0, 1), got "
                             f"{self.reference_fraction}")
        check_refine_fraction(self.refine_fraction)
        if (self.budget - int(self.reference_fraction * self.budget)) < FORWARD_BACKWARD_CALLS:
            raise ValueError(f"ITGIS needs a budget of at least one sample with its gradient "
                             f"(2 calls) beside the reference draws, got {self.budget}")


def proposal_logits(log_p: torch.Tensor, s: torch.Tensor, temperature: float) -> torch.Tensor:
    """log q_i(v) up to a constant: log p_i(v) + s_{i,v}/T (−inf off D's support)."""
    return log_p + s / temperature


def _log_q(log_p: torch.Tensor, s: torch.Tensor | None, T: float,
           alpha: float) -> torch.Tensor:
    """[k, V] log of the defensive mixture α·p + (1 − α)·softmax(log p + s/T) per position."""
    if s is None:
        return log_p
    log_tilt = torch.log_softmax(proposal_logits(log_p, s, T), -1)
    if alpha <= 0:
        return log_tilt
    return torch.logaddexp(log_p + math.log(alpha), log_tilt + math.log1p(-alpha))


def _gain_spread(s: torch.Tensor, log_p: torch.Tensor) -> float:
    """Mean over positions of the standard deviation of the gains s_{i,v} over D's support."""
    sup = torch.isfinite(log_p)
    sd = []
    for i in range(s.shape[0]):
        v = s[i][sup[i]]
        if v.numel() > 1:
            sd.append(float(v.std()))
    return sum(sd) / len(sd) if sd else 0.0


def _best_temperature(log_p, s, T0, alpha, xs, vals, log_ms, grid_lo, ref_share) -> float:
    """argmin over T = T₀·2^j (j = −8…2, ≥ grid_lo) of the re-weighted second moment
    m₂(T) = mean_j v_j²·D(x_j)²/(m_T(x_j)·m_j(x_j)), m the pooled (reference + tilted) density
    each sample was drawn from and m_T the one a batch at T would have."""
    x = torch.cat(xs)  # [n, k]
    v = torch.cat(vals).double()
    lm_used = torch.cat(log_ms)
    hit = v != 0
    x, v, lm_used = x[hit], v[hit], lm_used[hit]
    k = log_p.shape[0]
    rows = torch.arange(k)
    lp = log_p[rows, x].sum(1)
    best, best_m2 = T0, math.inf
    for j in range(-8, 3):
        T = T0 * 2.0 ** j
        if T < grid_lo:
            continue
        lq = _log_q(log_p, s, T, alpha)[rows, x].sum(1)
        if ref_share > 0:
            lq = torch.logaddexp(lp + math.log(ref_share), lq + math.log1p(-ref_share))
        m2 = float(torch.logsumexp(2 * v.log() + 2 * lp - lq - lm_used, 0))
        if m2 < best_m2:
            best, best_m2 = T, m2
    return best


def _split(n_ref: int, n: int, start: int, m: int) -> int:
    """Reference draws that go with gradient samples start…start+m−1 (spread evenly)."""
    return round(n_ref * (start + m) / n) - round(n_ref * start / n)


def estimate_itgis(model, dist: InputDistribution, behaviour: Behaviour, config: ITGISConfig,
                   progress: ProgressFn | None = None) -> Estimate:
    clock = Clock()
    dev = model_device(model)
    gen = generator(config.seed)
    n_refine = refine_calls(config.budget, config.refine_fraction, FORWARD_BACKWARD_CALLS,
                            config.reference_fraction) if behaviour.is_indicator else 0
    search = config.budget - n_refine
    n_ref = int(config.reference_fraction * search)
    n = (search - n_ref) // FORWARD_BACKWARD_CALLS
    found = SearchLog(active=n_refine > 0)  # what the search evaluated: the refinement's seeds
    log_p = dist.probs.log()  # [k, V] float64, cpu
    k, V = log_p.shape
    rows = torch.arange(k)
    alpha = config.defensive if config.auto_temperature else 0.0
    ema = torch.zeros(k, V, dtype=torch.float64)
    updates = 0
    weighted, xs, vals, log_ms, temps = [], [], [], [], []
    T = config.temperature
    hits = 0
    ref_acts = []  # site activations of the reference draws, for the zero-hit fallback
    for start, m in batches(n, config.batch_size):
        s = ema / (1 - config.ema_decay ** updates) if updates else None
        if config.auto_temperature and updates:
            floor = max(config.min_temperature, 0.1 * _gain_spread(s, log_p))
            if hits == 0:
                T = max(T / 2, floor)
            else:
                T = _best_temperature(log_p, s, config.temperature, alpha, xs, vals, log_ms,
                                      floor, n_ref / (n_ref + n))
        log_q = _log_q(log_p, s, T, alpha)
        r = _split(n_ref, n, start, m)
        x = torch.multinomial(log_q.exp().float(), m, replacement=True, generator=gen).T
        x_ref = dist.sample(r, gen) if r else x[:0]
        x_all = torch.cat([x, x_ref])
        lp = log_p[rows, x_all].sum(1)
        lq = log_q[rows, x_all].sum(1)
        log_w = log_balance_weights(lp, lq, r, m)  # [m + r], D/m for the pooled batch
        v, sc, grad = behaviour.evaluate_with_grad(model, x.to(dev), config.guide)
        v, sc = v.cpu(), sc.cpu()
        if r:
            v_ref, s_ref, a_ref = behaviour.evaluate_site(model, x_ref.to(dev), config.guide)
            if config.fallback:
                ref_acts.append(a_ref.cpu())
            v, sc = torch.cat([v, v_ref.cpu()]), torch.cat([sc, s_ref.cpu()])
        found.add(x_all, v, sc)
        weighted.append(v * log_w.exp())
        hits += int((v != 0).sum())
        if config.auto_temperature:
            xs.append(x_all)
            vals.append(v)
            log_ms.append(lp - log_w)
        temps.append(T if updates else None)
        # update only after this batch is weighted: later batches see it, this one did not
        g = grad.mean(0) if grad.device.type == "mps" else grad.double().mean(0)  # no f64 on MPS
        ema = config.ema_decay * ema + (1 - config.ema_decay) * g.cpu().double()
        updates += 1
        report(progress, (start + m) / n, (start + m) * FORWARD_BACKWARD_CALLS,
               n * FORWARD_BACKWARD_CALLS, "calls", "ITGIS")
    w = torch.cat(weighted)
    value = min(1.0, float(w.mean()))  # a probability: unbiased weights can average above 1
    interval = normal_interval(w, config.confidence, upper_clip=1.0)
    used = [t for t in temps if t is not None]
    stage = refine(model, dist, behaviour, found, n_refine, gen, config.batch_size, dev,
                   config.confidence, progress)
    value, interval, extra, zero_hit = settle(
        model, behaviour, stage, value, interval, config.fallback,
        torch.cat(ref_acts) if ref_acts else None, n_ref)
    return Estimate(value=value, interval=interval,
                    cost=Cost(calls=n * FORWARD_BACKWARD_CALLS + n_ref + extra["refine_calls"],
                              seconds=clock.seconds),
                    diagnostics={"samples": n + n_ref + extra["refine_samples"],
                                 "samples_with_gradient": n,
                                 "reference_samples": n_ref, "hits": int((w > 0).sum()),
                                 "temperature": used[-1] if used else config.temperature,
                                 "temperatures_used": sorted(set(used)),
                                 "auto_temperature": config.auto_temperature,
                                 "defensive": alpha, "batches": updates,
                                 "calls_convention": CALLS_CONVENTION,
                                 "interval_kind": "[0, zero-hit bound]" if zero_hit else
                                 KNOWN_SET_INTERVAL if extra["refine"] == "estimate" else
                                 "normal (approximate)", "fallback": None, **extra})
