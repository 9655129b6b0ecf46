"""Activation-model estimate: §2's propagated Gaussian read at the logits (background.md §2, §5).

The real engine (`estimators.activation`) does the propagation:

1. Draw N inputs from the tail-risk distribution D and build the chain with
   `transformer_chain(model, tokens, sites, logits_position=-1, samples=K)`: sites are the
   residual stream at every block boundary (or only the input, `intermediate=False`) and the
   last position's logits. The input Gaussian N(μ_0, Σ_0) is fitted to the real embeddings of the
   N inputs.
2. Run a `Propagator` under a `CovarianceMask` preset (`naive` by default: only variances travel;
   `position-blocks`, `topk` or `full` track more), which moment-matches each transition through
   the real blocks with K fixed-seed samples.
3. Read the behaviour's probability off the propagated Gaussian of the output site, exactly
   where the Gaussian allows it (no naive sampling, which could never see 1e-30):
   * argmax t, logits Gaussian with diagonal covariance (the naive mask at the logits):
     P = ∫ φ(x) Π_{u≠t} Φ((μ_t + σ_t x − μ_u)/σ_u) dx, a 1-D integral evaluated in log space by
     the trapezoid rule on an adaptive grid (`independent_argmax_probability`);
   * argmax t, correlated logits (any other mask): the Gaussian probability of the polytope
     {ℓ_t − ℓ_u > 0 ∀u}, Rao–Blackwellised along the QLD split direction
     (`gaussian_polytope_probability`; its draw standard error is in the diagnostics);
   * logit_t > θ: Φ((μ_t − θ)/σ_t), exact (log Φ for the tail);
   * a direction/SAE-latent threshold at a residual hook: w·a + b ~ N(w·μ + b, wᵀΣw) at the
     last position of that residual site, so P = Φ((w·μ + b − θ)/√(wᵀΣw)), exact.
   Any other behaviour site (a hook inside a block, a vocabulary above `MAX_ENGINE_VOCAB`) is not
   represented by the engine's chain: the estimate falls back to a Gaussian moment-fitted at the
   behaviour's own site from `budget` sampled inputs, and `diagnostics["engine"]` says so.

4. Error bars and calibration (`calibration.py`, which gives the formulas and sources):
   `Estimate.interval` is a percentile bootstrap over the K output samples of the last
   transition (the Gaussian's own sampling error at the output; no model calls; upstream
   transitions and the input fit held fixed); `diagnostics["calibrated_estimate"]` and
   `["calibrated_interval"]` come from a random-effects fit of ln p̂_u on ln p_act(u) over the
   tokens u ≠ t that the N real inputs (already paid for: 0 extra calls) hit ≥ `min_hits`
   times, for argmax and logit-threshold behaviours; its 95% prediction interval for a new
   token, widened by the bootstrap, is the calibrated interval. `Estimate.value` stays the raw
   reading.

Cost convention: N calls for the real inputs (one forward pass each) plus K calls per sampled
transition (K sequences through at most every block: counted as K full calls, conservatively).
budget = N + K·T with N = ⌊input_share·budget⌋ and T the number of transitions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import (UNEMBED_IN, Argmax, Behaviour, BehaviourError,
                                            DirectionThreshold, LogitThreshold, model_device,
                                            vocab_out)
from estimators.tailrisk.calibration import (bootstrap_log10_interval, calibrate,
                                             family_hits, log_calibration, FITS)
from estimators.tailrisk.common import (Clock, EstimatorConfig, ProgressFn, generator, log_ndtr,
                                        phi_interval, report)
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.qld import (alpha_intervals, sample_site, split_direction, whiten,
                                     whitened_constraints)

MASKS = ("naive", "position-blocks", "topk", "full")
MAX_ENGINE_VOCAB = 4096  # the logits site's covariance is [V, V]
EIG_TOL = 1e-9


@dataclass
class ActivationConfig(EstimatorConfig):
    mask: str = "naive"  # CovarianceMask preset (the argument)
    topk: int = 16  # pairs per site for the "topk" preset
    input_share: float = 0.5  # share of the budget spent on real inputs (the input Gaussian)
    intermediate: bool = True  # a residual site at every block boundary (else one transition)
    n_draws: int = 16384  # Gaussian draws for the correlated-logits polytope (no model calls)
    grid: int = 20001  # trapezoid points of the 1-D integral (independent logits)
    bootstrap: int = 64  # replicates of the output-sample bootstrap (0: no interval)
    calibrate: bool = True  # fitted on the real inputs' frequent tokens (calibration.py)
    calibration_fit: str = "offset"  # ln p ≈ ln p_act + a ("offset") or a + b·ln p_act
    min_hits: int = 5  # hits among the N real inputs for a token to enter the calibration
    max_calibration_tokens: int = 32  # the most-hit tokens only (one reader call each)

    def __post_init__(self):
        super().__post_init__()
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if not 0.0 < self.input_share < 1.0:
            raise ValueError(f"input_share must lie in (0, 1), got {self.input_share}")
        if self.n_draws < 2 or self.grid < 101 or self.topk < 1:
            raise ValueError("n_draws must be ≥ 2, grid ≥ 101 and topk ≥ 1")
        if self.calibration_fit not in FITS:
            raise ValueError(f"calibration_fit must be one of {', '.join(FITS)}")
        if self.bootstrap < 0 or self.bootstrap == 1 or self.min_hits < 1 or \
                self.max_calibration_tokens < 2:
            raise ValueError("bootstrap must be 0 or ≥ 2, min_hits ≥ 1 and "
                             "max_calibration_tokens ≥ 2")


# ------------------------------------------------------------------------ Gaussian readers

def normal_tail(mean: float, sd: float, threshold: float) -> float:
    """P(N(mean, sd²) > threshold), exact in the tail (log Φ); sd = 0 gives the indicator."""
    if sd <= 0:
        return float(mean > threshold)
    return float(torch.exp(log_ndtr(torch.tensor((mean - threshold) / sd))))


def independent_argmax_probability(mu: torch.Tensor, sd: torch.Tensor, t: int,
                                   grid: int = 20001) -> tuple[float, dict]:
    """P(X_t > X_u ∀u≠t) for independent X_u ~ N(mu_u, sd_u²).

    = ∫ φ(x) Π_u Φ((μ_t + σ_t x − μ_u)/σ_u) dx. Coordinates with σ_u = 0 are hard bounds
    x > (μ_u − μ_t)/σ_t, which set the lower limit. A coarse pass on [−40, 40] (h = 0.01) finds
    where log f > max − 40; the trapezoid rule with `grid` points over that range (log-sum-exp)
    gives the value. σ_t = 0 needs no integral: Π Φ((μ_t − μ_u)/σ_u)."""
    mu, sd = mu.double().cpu(), sd.double().clamp_min(0).cpu()
    others = torch.arange(mu.numel()) != t
    mo, so = mu[others], sd[others]
    mt, st = float(mu[t]), float(sd[t])
    soft = so > 0
    if st == 0.0:
        if bool((mo[~soft] >= mt).any()):
            return 0.0, {"reader": "product of normal CDFs (constant target logit)"}
        logp = float(log_ndtr((mt - mo[soft]) / so[soft]).sum())
        return math.exp(logp), {"reader": "product of normal CDFs (constant target logit)",
                                "log10_probability": logp / math.log(10)}
    lower = -40.0
    if bool((~soft).any()):
        lower = max(lower, float(((mo[~soft] - mt) / st).max()))
    if lower >= 40.0:
        return 0.0, {"reader": "1-D integral: empty range"}
    mo, so = mo[soft], so[soft]

    def logf(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for s in range(0, x.numel(), 2048):  # bounded memory: [2048, V]
            xs = x[s:s + 2048]
            z = (mt + st * xs[:, None] - mo) / so
            out[s:s + 2048] = (-0.5 * xs * xs - 0.5 * math.log(2 * math.pi)
                               + log_ndtr(z).sum(1))
        return out

    coarse = torch.linspace(lower, 40.0, max(int((40.0 - lower) / 0.01), 2) + 1,
                            dtype=torch.float64)
    lc = logf(coarse)
    keep = (lc > lc.max() - 40).nonzero().flatten()
    h0 = float(coarse[1] - coarse[0])
    a = max(lower, float(coarse[int(keep[0])]) - h0)
    b = min(40.0, float(coarse[int(keep[-1])]) + h0)
    x = torch.linspace(a, b, grid, dtype=torch.float64)
    lf = logf(x)
    w = torch.full_like(x, math.log(float(x[1] - x[0])))
    w[0] = w[-1] = w[0] - math.log(2)
    logp = float(torch.logsumexp(lf + w, 0))
    return math.exp(logp), {"reader": "exact 1-D integral (independent logits), trapezoid "
                            f"on [{a:.3g}, {b:.3g}] with {grid} points",
                            "log10_probability": logp / math.log(10)}


def logit_tail(model, mean: float, sd: float, threshold: float) -> tuple[float, dict]:
    """P(logit_t > θ) for the logits site's Gaussian N(mean, sd²): Φ((μ − θ)/σ), except that
    on a model with an output soft cap c (logits = c·tanh(raw/c), so |logit| < c) a threshold
    θ ≥ c is never exceeded (0) and θ ≤ −c always is (1), whatever the Gaussian says."""
    from estimators.tailrisk.behaviours import soft_cap

    c = soft_cap(model)
    if c is not None and threshold >= c:
        return 0.0, {"reader": f"threshold at or above the soft cap {c:g}: never exceeded"}
    if c is not None and threshold <= -c:
        return 1.0, {"reader": f"threshold at or below −(soft cap {c:g}): always exceeded"}
    return normal_tail(mean, sd, threshold), {"reader": "exact normal tail Φ((μ_t − θ)/σ_t)"}


def covariance_factor(cov: torch.Tensor, tol: float = EIG_TOL) -> torch.Tensor:
    """A [d, r] with A Aᵀ = cov on its support (eigenvalues > tol·λ_max)."""
    lam, U = torch.linalg.eigh(cov.double())
    keep = lam > tol * lam.max().clamp_min(1e-300)
    return U[:, keep] * lam[keep].sqrt()


def gaussian_polytope_probability(mu: torch.Tensor, A: torch.Tensor, G: torch.Tensor,
                                  h: torch.Tensor, n_draws: int = 16384, seed: int = 0
                                  ) -> tuple[float, dict]:
    """P(a·G + h > 0 column-wise) for a ~ N(mu, A Aᵀ) (A [d, r]).

    Whiten (z ~ N(0, I_r)), take the QLD split direction d; under a Gaussian α = z·d ~ N(0, 1)
    is exactly independent of β, so P = E_β[Φ(hi(β)) − Φ(lo(β))] with (lo, hi) the accepting
    α-interval: averaged over `n_draws` Gaussian draws of β (Rao–Blackwellised)."""
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
    info["reader"] = (f"Gaussian polytope probability, Rao–Blackwellised along the split "
                      f"direction ({n_draws} draws)")
    return p, info


def argmax_probability(mean: torch.Tensor, cov: torch.Tensor, t: int, n_draws: int = 16384,
                       grid: int = 20001, seed: int = 0) -> tuple[float, dict]:
    """P(argmax = t) for logits ~ N(mean, cov): exact 1-D integral when cov is diagonal, the
    polytope probability otherwise."""
    cov = cov.double()
    off = cov - torch.diag(torch.diagonal(cov))
    if not bool(off.abs().max() > 0):
        return independent_argmax_probability(mean, torch.diagonal(cov).clamp_min(0).sqrt(),
                                              t, grid)
    G, h = _argmax_constraints(mean.numel(), t, mean.device)
    return gaussian_polytope_probability(mean.double(), covariance_factor(cov), G, h,
                                         n_draws, seed)


def _argmax_constraints(V: int, t: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """G [V, V−1], h [V−1] with ℓ·G + h > 0 ⇔ ℓ_t > ℓ_u for every u ≠ t."""
    keep = torch.arange(V, device=device) != t
    G = torch.zeros(V, V - 1, dtype=torch.float64, device=device)
    G[t] = 1.0
    G[keep, torch.arange(V - 1, device=device)] = -1.0
    return G, torch.zeros(V - 1, dtype=torch.float64, device=device)


# ------------------------------------------------------------------------ the estimator

def _residual_boundary(hook: str, n_layers: int) -> int | None:
    from estimators.activation.sites import parse_site_name

    try:
        kind, info = parse_site_name(hook)
    except ValueError:
        return None
    if kind != "resid" or not 0 <= info["layer"] < n_layers:
        return None
    return info["boundary"]


def engine_plan(model, behaviour: Behaviour) -> tuple[str | None, int | None, str]:
    """(output kind 'logits'|'resid' or None, residual boundary, reason when None)."""
    if isinstance(behaviour, (Argmax, LogitThreshold)):
        if vocab_out(model) > MAX_ENGINE_VOCAB:
            return None, None, (f"vocabulary {vocab_out(model)} > {MAX_ENGINE_VOCAB}: the "
                                "logits covariance would not fit")
        return "logits", None, ""
    if isinstance(behaviour, DirectionThreshold):
        b = _residual_boundary(behaviour.hook, int(model.cfg.n_layers))
        if b is None:
            return None, None, (f"{behaviour.hook} is not a residual-stream site of the "
                                "engine's chain")
        return "resid", b, ""
    return None, None, f"behaviour {behaviour.kind!r} has no reader in the engine"


def estimate_activation(model, dist: InputDistribution, behaviour: Behaviour,
                        config: ActivationConfig, progress: ProgressFn | None = None
                        ) -> Estimate:
    """P_{x~D}[behaviour] read off the propagated Gaussian (module docstring). Returns the raw
    reading as `value`, the bootstrap interval as `interval` (None without output samples),
    `diagnostics["calibrated_estimate"/"calibrated_interval"]` for argmax/logit behaviours;
    cost N + K·T calls. Raises BehaviourError (non-indicator behaviour), ValueError (budget
    too small for K ≥ 2)."""
    if not behaviour.is_indicator:
        raise BehaviourError("the activation-model estimate needs an indicator behaviour "
                             "given by linear inequalities (argmax, logit or direction)")
    kind, boundary, reason = engine_plan(model, behaviour)
    if kind is None:
        return _moment_fit_fallback(model, dist, behaviour, config, progress, reason)
    from estimators.activation import CovarianceMask, Propagator, transformer_chain
    from estimators.activation.sites import resid_site_name

    clock = Clock()
    L = int(model.cfg.n_layers)
    last = boundary if kind == "resid" else L
    resid_sites = [resid_site_name(b, L) for b in (range(last + 1) if config.intermediate
                                                   else sorted({0, last}))]
    sites = resid_sites + (["logits@-1"] if kind == "logits" else [])
    T = len(sites) - 1  # 0 when the behaviour reads the input site itself
    N = max(2, int(config.input_share * config.budget))
    K = (config.budget - N) // T if T else 0
    if T and K < 2:
        raise ValueError(f"budget {config.budget} is too small for the activation model: "
                         f"N={N} real inputs + {T} transitions × K≥2 samples")
    dev = model_device(model)
    tokens = dist.sample(N, generator(config.seed), dev)
    report(progress, 0.2)
    chain = transformer_chain(model, tokens, sites=sites, samples=max(K, 2), seed=config.seed,
                              logits_position=-1, max_logit_units=vocab_out(model))
    report(progress, 0.5)
    mask = CovarianceMask.preset(config.mask, chain.layouts, k=config.topk)
    prop = Propagator(chain, mask, distances=False)
    out_name = sites[-1]
    with torch.no_grad():
        est_site = prop.estimate(out_name)
    report(progress, 0.9)
    mean, cov = est_site.mean.double(), est_site.cov.double()
    info = {"engine": "activation", "mask": config.mask, "sites": sites, "real_inputs": N,
            "samples_per_transition": K, "transitions": T, "output_site": out_name,
            "repaired_sites": [s.name for s in chain.sites
                               if prop.estimate(s.name).repaired],
            "cost_convention": "N real inputs + K calls per sampled transition"}
    if kind == "logits":
        p, more, reader, cols = _read_logits(model, behaviour, mean, cov, config)
    else:
        p, more, reader, cols = _read_direction(behaviour, int(model.cfg.d_model),
                                                chain.info["positions"].index(
                                                    tokens.shape[1] - 1), mean, cov)
    info.update(more)
    p = float(min(max(p, 0.0), 1.0))
    interval = None
    samples = est_site.samples
    if config.bootstrap and samples is not None and samples.shape[0] >= 2:
        boot = bootstrap_log10_interval(samples[:, cols], reader, config.bootstrap,
                                        config.seed + 2)
        # the percentile interval, stretched to contain the reading itself (p = 0 included)
        interval = (min(p, 10 ** boot["log10_low"]), max(p, min(1.0, 10 ** boot["log10_high"])))
        info["bootstrap"] = {**boot, "what": "percentile bootstrap over the K output samples "
                             "of the last transition (no model calls); upstream transitions "
                             "and the input fit held fixed"}
    else:
        boot = None
    if kind == "logits" and config.calibrate:
        info["calibration"] = _calibration(model, behaviour, chain.empirical[out_name],
                                           mean, cov, config, p, boot)
        info["calibrated_estimate"] = info["calibration"].get("calibrated_estimate")
        info["calibrated_interval"] = info["calibration"].get("calibrated_interval")
    calls = N + K * T
    return Estimate(value=p, interval=interval,
                    cost=Cost(calls=calls, seconds=clock.seconds), diagnostics=info)


def _masked_correlation(cov: torch.Tensor) -> torch.Tensor | None:
    """The correlation of a masked covariance, or None when it is diagonal."""
    off = cov - torch.diag(torch.diagonal(cov))
    if not bool(off.abs().max() > 0):
        return None
    sd = torch.diagonal(cov).clamp_min(0).sqrt()
    inv = torch.where(sd > 0, 1 / sd.clamp_min(1e-300), torch.zeros_like(sd))
    return cov * inv[:, None] * inv[None, :]


def _read_logits(model, behaviour, mean, cov, config):
    """(p, diagnostics, bootstrap reader, columns it reads) at the logits site."""
    t = behaviour.target
    if isinstance(behaviour, Argmax):
        p, more = argmax_probability(mean, cov, t, config.n_draws, config.grid, config.seed + 1)
        corr = _masked_correlation(cov)
        cols = torch.arange(mean.numel())
        if corr is None:
            def reader(m, sd):  # a cheaper grid for the replicates
                return independent_argmax_probability(m, sd, t, 2001)[0]
        else:  # A_R (R = A_R A_Rᵀ) once; a replicate's factor is sd ⊙ A_R
            A_R = covariance_factor(corr)
            G, h = _argmax_constraints(mean.numel(), t, mean.device)

            def reader(m, sd):
                return gaussian_polytope_probability(m, sd[:, None] * A_R, G, h, 2048,
                                                     config.seed + 3)[0]
    else:
        p, more = logit_tail(model, float(mean[t]), float(cov[t, t].clamp_min(0).sqrt()),
                             behaviour.threshold)
        cols = torch.tensor([t])

        def reader(m, sd):
            return logit_tail(model, float(m[0]), float(sd[0]), behaviour.threshold)[0]
    more = {**more, "logit_mean_target": float(mean[t]),
            "logit_sd_target": float(cov[t, t].clamp_min(0).sqrt())}
    return p, more, reader, cols


def _read_direction(behaviour, d_model: int, j: int, mean, cov):
    """(p, diagnostics, bootstrap reader, columns) for w·a + b at the last position (j: its
    index among the modelled positions; the last position is always modelled)."""
    cols = torch.arange(j * d_model, (j + 1) * d_model)
    w = torch.tensor(behaviour.direction, dtype=torch.float64, device=mean.device)
    if w.numel() != d_model:
        raise BehaviourError(f"direction has {w.numel()} entries; {behaviour.hook} has "
                             f"width {d_model}")
    m = float(mean[cols] @ w) + behaviour.bias
    s = float((w @ cov[cols][:, cols] @ w).clamp_min(0).sqrt())
    p = normal_tail(m, s, behaviour.threshold)
    more = {"reader": "exact normal tail of w·a + b at the last position",
            "projection_mean": m, "projection_sd": s}

    corr = _masked_correlation(cov[cols][:, cols])

    def reader(mb, sd):
        ws = w * sd
        var = (ws * ws).sum() if corr is None else ws @ corr @ ws
        return normal_tail(float(mb @ w) + behaviour.bias, float(var.clamp_min(0).sqrt()),
                           behaviour.threshold)
    return p, more, reader, cols


def _calibration(model, behaviour, values, mean, cov, config, p_raw, boot) -> dict:
    """Offset calibration on the frequent tokens of the N real inputs (calibration.py)."""
    t = behaviour.target
    N = int(values.shape[0])
    if isinstance(behaviour, Argmax):
        hits = family_hits(values, "argmax")

        def p_act(u):
            return argmax_probability(mean, cov, u, config.n_draws, config.grid,
                                      config.seed + 1)[0]
    else:
        hits = family_hits(values, "logit", behaviour.threshold)

        def p_act(u):
            return logit_tail(model, float(mean[u]), float(cov[u, u].clamp_min(0).sqrt()),
                              behaviour.threshold)[0]
    toks = [u for u in torch.argsort(hits, descending=True, stable=True).tolist()
            if u != t and config.min_hits <= int(hits[u]) < N][:config.max_calibration_tokens]
    pa = {u: p_act(u) for u in toks}
    toks = [u for u in toks if pa[u] > 0]
    out = {"data": f"the N={N} real inputs already paid for (no extra calls): tokens with "
                   f"≥ {config.min_hits} hits, target excluded",
           "token_ids": toks, "hits": [int(hits[u]) for u in toks],
           "activation_probabilities": [pa[u] for u in toks], "extra_calls": 0}
    kind = config.calibration_fit
    if kind == "affine" and len(toks) < 4:
        kind = "offset"  # a slope from 2–3 tokens would be noise
    if len(toks) < 2:
        out["note"] = (f"only {len(toks)} token(s) with ≥ {config.min_hits} hits among the "
                       f"{N} real inputs: no calibration")
        return out
    fit = log_calibration(torch.log(torch.tensor([pa[u] for u in toks], dtype=torch.float64)),
                          torch.tensor([int(hits[u]) for u in toks]), N, kind)
    out.update(fit)
    out.update(calibrate(p_raw, boot, fit))
    out["method"] = (f"random-effects {kind} fit of ln p̂ on ln p_act (DerSimonian–Laird τ²), "
                     "95% prediction interval (Higgins et al. 2009) ⊕ bootstrap half-width")
    return out


def _moment_fit_fallback(model, dist, behaviour, config, progress, reason) -> Estimate:
    """Gaussian moment-fitted at the behaviour's own site from `budget` sampled inputs, read
    by the polytope probability (used only where the engine cannot represent the case)."""
    clock = Clock()
    G, h = behaviour.constraints(model)
    acts = sample_site(model, dist, behaviour, config.budget, config.seed, config.batch_size,
                       progress)
    _, mu, A = whiten(acts)
    p, info = gaussian_polytope_probability(mu, A, G, h, config.n_draws, config.seed + 1)
    info.update(engine="moment-fit fallback", fallback_reason=reason, samples=config.budget,
                rank=int(A.shape[1]), site=behaviour.site() if behaviour.site() != UNEMBED_IN
                else "unembedding input")
    return Estimate(value=p, interval=None, cost=Cost(calls=config.budget, seconds=clock.seconds),
                    diagnostics=info)
