"""MHIS: Metropolis–Hastings importance sampling (background.md §5).

Parallel chains with stationary law q(x) ∝ D(x)·exp(score(x)/T) (score = the target logit).
Each step picks one non-fixed position uniformly and proposes a token from
r_i(v) ∝ p_i(v)·exp(g_{i,v}(x)/T), g the gradient of the score with respect to the one-hot input
at the current state; the acceptance ratio includes the reverse proposal (built from the
gradient at the proposed state), so the chain is exact MH. Since Σ_x q(x)·e^{−score/T} = 1/Z,

    p̂ = Σ_j value(x_j)·e^{−score_j/T} / Σ_j e^{−score_j/T}

over the kept states (self-normalised, computed with logsumexp). Biased for finite chains,
consistent as they mix; no interval is reported.

Budget: every evaluated chain state costs forward + backward = 2 calls: the chains' initial
states (drawn from D) and every proposal. With C chains, budget N and no reference draws:
N/2 − C steps in all (`samples` = evaluated states = N/2; the literature counts one
forward+backward as one call).

Safe default (auto_temperature, indicator behaviours): during burn-in the temperature adapts by
stochastic approximation, log T ← log T + γ_t·(h_t − e_t), γ_t = 1/√(t+1), where over the
states of the last 8 steps h_t is the fraction in the behaviour and e_t the effective-sample
fraction (Σw)²/(n·Σw²) of the weights w = e^{−score/T} that carry them back to D: the relative
variance of the self-normalised estimate is roughly 1/(n·h) + 1/(n·e) (numerator: hits;
denominator: coverage of D), so T settles where the two balance. It starts at
T = temperature·σ and stays within [σ/2, 4σ], σ the score's standard deviation over the
chains' initial states (drawn from D): a tilt of 1/T shifts a roughly normal score by σ²/T,
i.e. by ¼ to 2 standard deviations. The floor is empirical: at σ/4 and below the chains stop
visiting the inputs that carry D's mass and the self-normalised estimate collapses (measured
100–10,000× low on the test model; the ESS seen by the chains cannot detect it). The floor
also sets MHIS's low bias on hits: on charlm (hex, 2^14 calls) the chains sit at the floor and
visit every input that carries a 13-input target, yet the estimate is 0.03–0.08× the truth,
because the bridge estimate of Z = E_D[e^{score/T}] is e^{2.2–3.2} too low (checked against
Z by enumerating all 2^20 inputs): Z is carried by rare high-score inputs the chains do not
visit in proportion. A floor of 0.75σ (`T_FLOOR`) moved those estimates to 0.5–1.4× and the
benchmark's unfitted IS from 2.6/3.2 to 1.7/1.5 (hex needles / 12–100-input targets), but
cost hits (12, 5 and 9 runs without one, against 10, 3 and 7, with words needles), raised the
fitted IS on the 12–100-input targets from 0.066 to 0.184 and the unfitted IS on words from
2.75 to 6.29, and failed the tiny-model test at 1e-4 (0.13×), so it is not the default
(benchmarks/results/tail_risk_defaults_tfloor075_calfb*.json). T is frozen
after burn-in, so the kept states are a chain at one fixed T (the estimator's form is
unchanged).
auto_temperature=False keeps `temperature` fixed (the literature's tuned runs).

Reference draws (`reference_fraction`, default 0.25 of the calls): forward-only draws from D
(1 call each), joined by the chains' initial states. With them the estimate is no longer the
self-normalised (harmonic-mean) one but the two-sample pooled estimate of mixture.py: the
normaliser Z = E_D[e^{score/T}] by bridge sampling between the reference draws and the kept
chain states, then p̂ = Σ_{both pools} value/(n_D + n_q·e^{score/T}/Z). It is 0 only when no
reference draw and no kept state hit; with n_D = 0 it is the self-normalised estimate above.
σ is measured on the reference draws. Budget N calls: n_ref = ⌊f·N⌋ draws, then chains.
Defaults 16 chains and 30% burn-in: at 2^12 calls on the tests' rare case, 32 chains half as
long gave estimates 0.03–0.8× the truth (kept states still climbing), 16 chains 0.3–2.6×.

Refinement and zero-hit fallback (`refine_fraction`, default 0.9; `fallback`, default true;
the same step in ITGIS and MHIS, `fallback.settle`): see pmc.py (population Monte Carlo around
the search's hits; `refine_fraction=0` is the sampler alone) and fallback.py.

Guide (`guide`): the score whose gradient tilts the chains (the stationary law and the
proposals) — "score", the behaviour's own (the target logit: Wu & Hilton 2024), or "margin"
for argmax, logit_t − logsumexp_{u≠t} logit_u (`Behaviour.guided`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import GUIDES, Behaviour, model_device
from estimators.tailrisk.common import (CALLS_CONVENTION, FORWARD_BACKWARD_CALLS, Clock,
                                        EstimatorConfig, ProgressFn, batches, generator,
                                        report)
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.fallback import settle
from estimators.tailrisk.mixture import pooled_estimate
from estimators.tailrisk.pmc import SearchLog, check_refine_fraction, refine, refine_calls


T_FLOOR = 0.5  # the adaptive temperature's floor, in units of σ (module docstring)


@dataclass
class MHISConfig(EstimatorConfig):
    temperature: float = 1.0  # fixed T; with auto_temperature the start, in units of σ
    n_chains: int = 16  # 32 chains half as long were biased low (measured 0.03-0.8x)
    burn_in: float = 0.3  # fraction of each chain's steps discarded
    auto_temperature: bool = True
    reference_fraction: float = 0.25  # of the calls: forward-only draws from D (mixture.py)
    fallback: bool = True  # no hit: QLD/GLD on the reference draws' activations (fallback.py)
    guide: str = "score"  # the guiding score: "score" (target logit) or "margin" (argmax)
    refine_fraction: float = 0.9  # of the calls: coordinate search, population Monte Carlo

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not isinstance(self.n_chains, int) or self.n_chains < 1:
            raise ValueError(f"n_chains must be a positive integer, got {self.n_chains!r}")
        if not 0 <= self.burn_in < 1:
            raise ValueError(f"burn_in must be in [0, 1), got {self.burn_in}")
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
        chain_calls = self.budget - int(self.reference_fraction * self.budget)
        if chain_calls < FORWARD_BACKWARD_CALLS * self.n_chains * 2:
            need = 4 * self.n_chains / (1 - self.reference_fraction)
            raise ValueError(f"MHIS needs a budget of at least "
                             f"{math.ceil(need)} calls for {self.n_chains} chains (2 calls "
                             f"per evaluated state, {self.reference_fraction:g} of the "
                             f"search's calls on reference draws; the refinement takes what "
                             f"is left)")


def _reference_pool(model, dist, behaviour, n: int, batch_size: int, gen, dev,
                    guide: str = "score", found: SearchLog | None = None):
    """(values, scores, site activations) of n forward-only draws from D (1 call each),
    logged in `found` when given."""
    vs, ss, acts = [], [], []
    for _, m in batches(n, batch_size):
        x = dist.sample(m, gen)
        v, s, a = behaviour.evaluate_site(model, x.to(dev), guide)
        if found is not None:
            found.add(x, v, s)
        vs.append(v.cpu())
        ss.append(s.cpu())
        acts.append(a.cpu())
    if not vs:
        return (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64),
                None)
    return torch.cat(vs).double(), torch.cat(ss).double(), torch.cat(acts)


def _adapt(T, window, v, s, step, lo, hi):
    """One stochastic-approximation step of log T towards hit fraction = ESS fraction."""
    window[:] = (window + [(v > 0, s)])[-8:]
    hits = torch.cat([w[0] for w in window]).double()
    ws = -torch.cat([w[1] for w in window]).double() / T
    ess = float(torch.exp(2 * torch.logsumexp(ws, 0) - torch.logsumexp(2 * ws, 0)))
    gap = float(hits.mean()) - ess / hits.numel()
    log_t = math.log(T) + gap / math.sqrt(step + 1)
    return math.exp(min(max(log_t, lo), hi))


def estimate_mhis(model, dist: InputDistribution, behaviour: Behaviour, config: MHISConfig,
                  progress: ProgressFn | None = None) -> Estimate:
    clock = Clock()
    dev = model_device(model)
    gen = generator(config.seed)
    T = config.temperature
    adapt = config.auto_temperature and behaviour.is_indicator
    C = config.n_chains
    n_refine = refine_calls(config.budget, config.refine_fraction,
                            FORWARD_BACKWARD_CALLS * C * 2,
                            config.reference_fraction) if behaviour.is_indicator else 0
    search = config.budget - n_refine
    n_ref = int(config.reference_fraction * search)
    steps = (search - n_ref) // FORWARD_BACKWARD_CALLS // C - 1
    found = SearchLog(active=n_refine > 0)  # what the search evaluated: the refinement's seeds
    log_p = dist.probs.log().float()  # [k, V]
    free = torch.tensor([i for i, s in enumerate(dist.supports()) if s.numel() > 1])
    ar = torch.arange(C)

    v_ref, s_ref, a_ref = _reference_pool(model, dist, behaviour, n_ref, config.batch_size,
                                          gen, dev, config.guide, found)
    x = dist.sample(C, gen)  # [C, k] cpu
    v, s, g = (t.cpu() for t in behaviour.evaluate_with_grad(model, x.to(dev), config.guide))
    found.add(x, v, s)
    # the chains' initial states are draws from D too: they join the reference pool
    v_ref, s_ref = torch.cat([v_ref, v.double()]), torch.cat([s_ref, s.double()])
    log_d = dist.log_prob(x).float()
    if adapt:  # T in units of the score's spread under D (the reference draws)
        scale = max(float(s_ref.std()), 1e-6) if s_ref.numel() > 1 else 1.0
        T = config.temperature * scale
        # with reference draws the pooled (bridge) estimate tolerates a colder chain
        floor = scale * T_FLOOR
        log_t_lo, log_t_hi = math.log(floor), math.log(4 * scale)
    keep_from = int(math.floor(config.burn_in * steps))
    window: list = []
    kept_v, kept_s = [], []
    accepted = 0
    if len(free) == 0 or steps <= 0:  # a single input, or no steps affordable
        kept_v.append(v)
        kept_s.append(s)
    for step in range(max(steps, 0) if len(free) else 0):
        pos = free[torch.randint(len(free), (C,), generator=gen)]  # [C]
        fwd = torch.log_softmax(log_p[pos] + g[ar, pos] / T, -1)  # [C, V]
        new_tok = torch.multinomial(fwd.exp(), 1, generator=gen).squeeze(1)
        old_tok = x[ar, pos]
        x_new = x.clone()
        x_new[ar, pos] = new_tok
        v2, s2, g2 = (t.cpu() for t in behaviour.evaluate_with_grad(model, x_new.to(dev),
                                                                     config.guide))
        found.add(x_new, v2, s2)
        log_d2 = dist.log_prob(x_new).float()
        rev = torch.log_softmax(log_p[pos] + g2[ar, pos] / T, -1)
        log_a = ((log_d2 + s2.float() / T) - (log_d + s.float() / T)
                 + rev[ar, old_tok] - fwd[ar, new_tok])
        acc = torch.rand(C, generator=gen).log() < log_a
        accepted += int(acc.sum())
        x = torch.where(acc[:, None], x_new, x)
        v = torch.where(acc, v2, v)
        s = torch.where(acc, s2, s)
        g = torch.where(acc[:, None, None], g2, g)
        log_d = torch.where(acc, log_d2, log_d)
        if step >= keep_from:
            kept_v.append(v)
            kept_s.append(s)
        elif adapt:
            T = _adapt(T, window, v, s, step, log_t_lo, log_t_hi)
        report(progress, (step + 1) / steps, step + 1, steps, "steps", "MHIS")
    vv = torch.cat(kept_v).double()
    ss = torch.cat(kept_s).double()
    value, log_z = pooled_estimate(v_ref, s_ref / T, vv, ss / T)
    total_steps = max(steps, 0) * C if len(free) else 0
    stage = refine(model, dist, behaviour, found, n_refine, gen, config.batch_size, dev,
                   progress=progress)
    value, interval, extra, _ = settle(model, behaviour, stage, value, None, config.fallback,
                                       a_ref, int(v_ref.numel()))
    calls = n_ref + (C + total_steps) * FORWARD_BACKWARD_CALLS + extra["refine_calls"]
    return Estimate(value=value, interval=interval, cost=Cost(calls=calls, seconds=clock.seconds),
                    diagnostics={"chains": C, "steps_per_chain": max(steps, 0),
                                 "kept_states": int(vv.numel()),
                                 "acceptance_rate": accepted / max(total_steps, 1),
                                 "hits_in_kept": int((vv > 0).sum()),
                                 "hits_in_reference": int((v_ref > 0).sum()),
                                 "reference_samples": int(v_ref.numel()),
                                 "log_normaliser": log_z, "temperature": T,
                                 "auto_temperature": adapt,
                                 "samples": n_ref + C + total_steps + extra["refine_samples"],
                                 "samples_with_gradient": C + total_steps,
                                 "calls_convention": CALLS_CONVENTION,
                                 "fallback": None, **extra})
