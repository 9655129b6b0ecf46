"""Error bars and calibration of the activation-model tail estimate (`actmodel.py`).

Error bars (the Gaussian's own sampling error). The propagated Gaussian at the output site is
moment-matched from the K samples of the last sampled transition. A nonparametric bootstrap
over those K rows (Efron & Tibshirani 1993, ch. 6 and 13: percentile interval) redraws the
mean and the standard deviations, holds the masked correlation fixed, and re-reads the
probability with the same exact reader; the 2.5/97.5% quantiles of log10 p* give the interval.
It costs no model call (the samples are already paid for). It does NOT cover the error of the
upstream transitions and of the input fit to the N real inputs (re-running those would cost
the whole budget again per replicate), nor the Gaussian closure's own bias: it is an interval
for "what this Gaussian says", not for the truth.

Calibration (the closure's systematic bias). The same N real inputs that fit the input
Gaussian went through the real model: their logits are in the chain (`chain.empirical`), so the
behaviour's family on the other tokens u ("argmax = u", "logit_u > θ") is measured there for
free: hits_u of N, p̂_u = hits_u/N (a plain-sample frequency). Every token u ≠ t with
≥ `min_hits` hits gives one point (x_u = ln p_act(u), y_u = ln p̂_u) with within-token variance
v_u ≈ 1/hits_u − 1/N (delta method for a binomial proportion). The fit is a random-effects
meta-regression (DerSimonian & Laird 1986; Thompson & Sharp 1999 for the regression form):
y = x + a ("offset", b = 1: a constant factor e^a; the default) or y = a + b·x ("affine",
from 4 tokens), with a between-token variance τ² estimated by moments, so the scatter of the
Gaussian's error from token to token is part of the uncertainty. The calibrated estimate is
exp(a + b·ln p_act(t)); its 95% interval is the PREDICTION interval for a new token (Higgins,
Thompson & Spiegelhalter 2009), t_df·√(τ² + gᵀCov(β)g), g = (1, x_t) (g = 1 for the offset),
widened in quadrature by b × the bootstrap's half-width. Why no slope by default: on charlm the
naive closure's log-probabilities are spread far too wide — over all tokens of `hex` (4
positions) ln p_true ≈ −3.6 + 0.27·ln p_act, and the calibration tokens alone give the same
slope (0.29) — but the rare targets do not lie on that line: extrapolated to them, the affine
fit overestimated by 10^3.3 on average (hex, 5 positions, 2048 calls), where the offset moved
the mean |log10 error| from 2.35 to 2.21 (README, Tail risk). The offset's stated assumption
is that the Gaussian's log bias on a rare token is, on average, that on the frequent ones;
the between-token scatter τ² (~3–4 in ln², i.e. ±0.8 decades one sd) says how far one token
strays from it, and the interval is correspondingly wide (2–4 decades on charlm).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

LN10 = math.log(10.0)


def bootstrap_log10_interval(samples: torch.Tensor,
                             reader: Callable[[torch.Tensor, torch.Tensor], float],
                             n_boot: int = 64, seed: int = 0, level: float = 0.95
                             ) -> dict:
    """Percentile bootstrap of log10 p over the K output samples of the last transition.

    samples: [K, d] float; reader(mean [d], sd [d]) -> probability (the reader holds the
    masked correlation fixed itself). Returns {"log10_low", "log10_high", "log10_sd",
    "replicates", "zero_replicates"} (log10 of probabilities; a replicate reading 0 is floored
    at 1e-300 and counted). No model calls. Raises ValueError for K < 2 or n_boot < 2."""
    K = samples.shape[0]
    if K < 2 or n_boot < 2:
        raise ValueError("the bootstrap needs K ≥ 2 samples and n_boot ≥ 2 replicates")
    x = samples.double()
    g = torch.Generator().manual_seed(int(seed))
    logs, zeros = [], 0
    for _ in range(n_boot):
        xb = x[torch.randint(0, K, (K,), generator=g)]
        m, sd = xb.mean(0), xb.std(0, unbiased=True)
        p = reader(m, sd)
        zeros += p <= 0
        logs.append(math.log10(max(p, 1e-300)))
    t = torch.tensor(logs, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return {"log10_low": float(q[0]), "log10_high": float(q[1]), "log10_sd": float(t.std()),
            "replicates": n_boot, "zero_replicates": int(zeros)}


def family_hits(values: torch.Tensor, kind: str, threshold: float = 0.0) -> torch.Tensor:
    """[V] hits of the behaviour family on N inputs' output values [N, V]: kind "argmax":
    #(u strictly above every other value — a tie is a miss, as in `Argmax`); "logit":
    #(logit_u > threshold)."""
    if kind == "argmax":
        V = values.shape[1]
        if V == 1:
            return torch.full((1,), values.shape[0], dtype=torch.long, device=values.device)
        top = values.topk(2, dim=1)
        strict = top.values[:, 0] > top.values[:, 1]
        return torch.bincount(top.indices[strict, 0], minlength=V)
    if kind == "logit":
        return (values > threshold).sum(0)
    raise ValueError(f"no behaviour family for {kind!r}")


def _t_quantile(df: int, q: float = 0.975) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(q, max(df, 1)))


FITS = ("affine", "offset")


def log_calibration(log_p_act: torch.Tensor, hits: torch.Tensor, n: int,
                    fit: str = "affine") -> dict:
    """Random-effects fit of ln p̂ on ln p_act over calibration tokens (module docstring).

    log_p_act: [k] natural-log activation-model probabilities (finite); hits: [k] real hits
    among n inputs (each ≥ 1, < n). fit "affine": ln p̂ = a + b·ln p_act (k ≥ 4); "offset":
    b = 1. Within-token variances v = 1/hits − 1/n; τ² by the DerSimonian–Laird moment
    estimator for meta-regression (Thompson & Sharp 1999): (Q − (k − q)) / (tr W − tr(W X
    (XᵀWX)⁻¹ XᵀW)), q parameters; then WLS with w = 1/(v + τ²), Cov(β) = (XᵀWX)⁻¹.
    Returns {"fit", "intercept_ln", "slope", "cov_beta" [[..]] (q × q), "tau2_ln", "tokens",
    "df"}. Raises ValueError when k ≤ q."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    k = int(log_p_act.numel())
    q = 2 if fit == "affine" else 1
    if k <= q:
        raise ValueError(f"the {fit} calibration needs more than {q} tokens with enough hits")
    h = hits.double()
    x = log_p_act.double()
    y = torch.log(h / n)
    v = (1.0 / h - 1.0 / n).clamp_min(1e-12)
    if fit == "affine":
        X = torch.stack([torch.ones_like(x), x], 1)
        r = y
    else:
        X = torch.ones(k, 1, dtype=torch.float64)
        r = y - x

    def wls(w):
        XtW = X.T * w
        cov_b = torch.linalg.inv(XtW @ X)
        return cov_b @ (XtW @ r), cov_b

    w = 1.0 / v
    beta, cov_b = wls(w)
    Q = float((w * (r - X @ beta) ** 2).sum())
    W = torch.diag(w)
    denom = float(w.sum() - torch.trace(W @ X @ cov_b @ X.T @ W))
    tau2 = max(0.0, (Q - (k - q)) / denom) if denom > 0 else 0.0
    beta, cov_b = wls(1.0 / (v + tau2))
    return {"fit": fit, "intercept_ln": float(beta[0]),
            "slope": float(beta[1]) if fit == "affine" else 1.0,
            "cov_beta": cov_b.tolist(), "tau2_ln": tau2, "tokens": k, "df": k - q}


def calibrate(p_raw: float, boot: dict | None, fit: dict, level: float = 0.95) -> dict:
    """Apply the fit to the raw estimate: {"calibrated_estimate", "calibrated_interval" [lo,
    hi] (probabilities in [0, 1])}. The interval is the fit's prediction interval for a new
    token, x0 = ln p_raw: t_df·√(τ² + x0ᵀCov(β)x0) (Higgins et al. 2009), with the raw
    bootstrap's half-width times the slope added in quadrature (log space). p_raw = 0 stays 0."""
    if p_raw <= 0:
        return {"calibrated_estimate": 0.0, "calibrated_interval": [0.0, 0.0]}
    x0 = math.log(p_raw)
    cov_b = torch.tensor(fit["cov_beta"], dtype=torch.float64)
    if fit["fit"] == "affine":
        centre = fit["intercept_ln"] + fit["slope"] * x0
        g = torch.tensor([1.0, x0], dtype=torch.float64)
    else:
        centre = x0 + fit["intercept_ln"]
        g = torch.tensor([1.0], dtype=torch.float64)
    var_fit = float(g @ cov_b @ g)
    boot_half = 0.0 if boot is None else \
        0.5 * (boot["log10_high"] - boot["log10_low"]) * LN10 * abs(fit["slope"])
    half = math.sqrt((_t_quantile(fit["df"], (1 + level) / 2) ** 2)
                     * (fit["tau2_ln"] + var_fit) + boot_half ** 2)
    return {"calibrated_estimate": min(1.0, math.exp(centre)),
            "calibrated_interval": [min(1.0, math.exp(centre - half)),
                                    min(1.0, math.exp(centre + half))]}
