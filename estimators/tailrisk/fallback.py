"""The zero-hit fallback of the importance samplers: a model-based extrapolation, not a 0.

An importance sampler (ITGIS, MHIS) whose samples never hit returns exactly 0, which is no
estimate of a probability that is merely small. With `fallback: true` (the default) such a run
reports instead the extrapolation of the activations it already computed, at 0 extra calls:

* the site activations of its *reference draws* (plain draws from D, forward pass only: the
  search's, and the refinement's draws from D's own component of its mixture; MHIS's chains'
  initial states, draws from D too, count in the zero-hit bound but not here) — the
  behaviour's readout goes through that activation, so they are i.i.d. samples of a ~ D at the
  behaviour's site;
* QLD on them (`qld.qld_probability`, Wu & Hilton 2024's quadratic logit decomposition). When
  QLD counts none of its n² combinations, half a count, 0.5/n² (its resolution, the usual
  continuity correction), or GLD's Φ(μ/σ) (`gld.gld_probability`, the normal fitted to the
  constraint margin) where that is larger (method "qld half count" or "gld"). Chosen on charlm (README, Benchmarks):
  QLD alone, where it counts something, was the better of the two (median 12–90× high on
  hex, 2–6× on words, from 1,638 draws); GLD was 10–20× *low* on hex needles, where half a
  count is closer, and 200× high on words;
* calibrated (QLD only, `calibrate_qld`): the same reference draws measure the behaviour's
  family on the OTHER targets u for free (argmax: how often u is the argmax among the draws;
  logit: how often logit_u > θ). The rarest `CAL_TOKENS` of them with ≥ `CAL_MIN_HITS` hits
  (and fewer than all draws) each give a point (x_u = ln QLD_u from the same activations,
  y_u = ln(hits_u/n)), and the DerSimonian–Laird random-effects offset of y − x
  (`calibration.log_calibration`, fit "offset") estimates QLD's systematic log bias there; the
  fallback is QLD_t·e^offset. Assumption: QLD's bias on the target is, on average, that on the
  rarest tokens the draws still see. Measured on charlm hex (1,638 draws): offset ≈ −1.1
  (QLD ~3× high on tokens with 3–11 hits), while on the needles QLD is 6–530× high, so the
  calibration removes part of the bias, not all of it: in the 2^14-call benchmark (README,
  Benchmarks) the factor was 0.36–0.64 on hex and 0.62–0.84 on words, and the fallbacks'
  median error per row went from 7.6–163× to 4.8–65× high. Where fewer than 2 points exist, no
  calibration ("fallback_calibration": null). GLD and half a count are not calibrated (their
  bias is not what the points measure);
* combined with the refinement's margin-tail extrapolation where the run had a refinement
  stage and the behaviour is a set of linear inequalities (`pmc.tail_fit`: the importance-
  weighted survival of the margin min_j(a·G + h)_j over the refinement's draws, which sit
  close to the behaviour, fitted as an exponential tail and read at 0): the geometric mean of
  the two, the tail floored at guess/`TAIL_FLOOR` so that it lowers the guess by at most 10×
  (method "qld+tail", "gld+tail", …; "tail" alone where QLD/GLD do not apply). Why: on charlm
  the QLD guess is 5–1,000× high on needles (targets carried by 1–8 inputs) and the tail alone
  0.001–2.4× (it extrapolates a smooth tail over a support that is discrete there). At 2^14
  calls the zero-hit runs added to their row's mean IS loss (QLD alone / tail alone / this
  rule): hex needles 0.55 / 3.7 / 0.51 (ITGIS) and 0.63 / 174 / 0.29 (MHIS); words 1.07 / 545
  / 0.72 (ITGIS) and 0.71 / 2.8 / 1.15 (MHIS); 0.004–0.07 on the 12–100-input targets. Over
  all 18 rows at 2^11–2^16 the rule's mean row loss was the lowest of those tried (geometric
  mean unfloored, floors 10 and 100, weights ¼ and ¾, max(tail, guess/10 or /30));
* clipped to the upper bound a run with zero hits implies: with n_D draws from D and none in
  the behaviour, P(no hit) = (1 − p)^{n_D} ≤ 1 − c only for p ≤ −ln(1 − c)/n_D (the "rule of
  three", 3/n_D at c = 95%). The tilted samples only make a miss less likely, so the bound
  holds for the pooled run as well.

The result is biased (a model's guess, not a sampling estimate). For ITGIS, unbiased without
it, the bias it adds is E[fallback·1{no hit}] ∈ [0, bound·P(no hit)]. The estimator's diagnostics
say so (`fallback`, `fallback_note`), and its interval is [0, upper bound]. When the run has a
hit nothing here is used and the estimate is the sampler's own.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from estimators.tailrisk.behaviours import (Argmax, Behaviour, BehaviourError, LogitThreshold,
                                            final_logits, model_device, vocab_out)
from estimators.tailrisk.calibration import family_hits, log_calibration
from estimators.tailrisk.pmc import Refinement, refined_diagnostics

FALLBACK_CONFIDENCE = 0.95
CAL_MIN_HITS = 3  # a calibration token needs this many hits among the reference draws
CAL_TOKENS = 16  # the rarest tokens with enough hits (closest to the target's regime)
TAIL_FLOOR = 100.0  # the tail extrapolation lowers QLD/GLD's guess by at most √100 = 10×
MIN_DRAWS = 3  # a covariance (QLD) or a standard deviation (GLD) needs a few draws
FALLBACK_NOTE = ("no sample hit: the estimate is a model-based extrapolation, biased ({what}), "
                 "clipped to the zero-hit bound {ub:.3g} ({n_draws:,} draws from D)")


LABELS = {"tail": "the refinement's margin-tail extrapolation", "qld": "QLD",
          "gld": "GLD, as QLD counted 0",
          "empty": "the behaviour's inequalities, which no activation meets: exactly 0",
          "qld half count": "half a QLD count, 0.5/n², as QLD counted 0"}


def zero_hit_upper_bound(n_draws: int, confidence: float = FALLBACK_CONFIDENCE) -> float:
    """The largest p with P(no hit in n_draws i.i.d. draws from D) ≥ 1 − confidence:
    −ln(1 − confidence)/n_draws (≈ 3/n at 95%; the rule of three, Hanley & Lippman-Hand 1983),
    capped at 1. Probability units."""
    if n_draws <= 0:
        return 1.0
    return min(1.0, -math.log1p(-confidence) / n_draws)


def extrapolate(model, behaviour: Behaviour, acts: torch.Tensor) -> tuple[float, str] | None:
    """(p, method) from site activations `acts` [n, d] drawn from D: QLD; where QLD counts 0,
    max(GLD, 0.5/n²) ("gld" or "qld half count"); (0, "empty") where a constraint reads
    0·a + h > 0 with h ≤ 0 (no input can meet it: a logit threshold at or above the soft cap).
    None where neither applies (a behaviour that is not a set of linear inequalities, or fewer
    than MIN_DRAWS draws)."""
    from estimators.tailrisk.gld import gld_probability
    from estimators.tailrisk.qld import qld_probability

    if not behaviour.is_indicator or acts.shape[0] < MIN_DRAWS:
        return None
    try:
        G, h = behaviour.constraints(model)
    except BehaviourError:
        return None
    if bool(((G == 0).all(0) & (h <= 0)).any()):  # 0·a + h > 0 with h ≤ 0: no input meets it
        return 0.0, "empty"  # (a logit threshold at or above the model's soft cap)
    acts = acts.double()
    p, _ = qld_probability(acts, G, h)
    if p > 0:
        return float(p), "qld"
    g, _ = gld_probability(acts, G, h)
    half = 0.5 / acts.shape[0] ** 2
    return (float(g), "gld") if g > half else (half, "qld half count")


def _family_hits(model, behaviour: Behaviour, acts: torch.Tensor,
                 rows: int = 256) -> dict[int, int]:
    """{u: hits of the behaviour with target u among the draws `acts` [n, d]} for u ≠ the
    behaviour's target, from one pass of the logits (rows at a time, [rows, V];
    `calibration.family_hits`). {} for behaviours other than argmax and logit."""
    if not isinstance(behaviour, (Argmax, LogitThreshold)):
        return {}
    kind = "argmax" if isinstance(behaviour, Argmax) else "logit"
    threshold = getattr(behaviour, "threshold", 0.0)
    counts = torch.zeros(vocab_out(model), dtype=torch.long)
    dev = model_device(model)  # acts are on the cpu; W_U on the model's device (CUDA/MPS)
    for i in range(0, acts.shape[0], rows):
        logits = final_logits(model, acts[i:i + rows].float().to(dev)).detach()
        counts += family_hits(logits, kind, threshold).cpu()
    return {u: int(c) for u, c in enumerate(counts.tolist()) if u != behaviour.target}


def calibrate_qld(model, behaviour: Behaviour, acts: torch.Tensor) -> dict | None:
    """QLD's log bias on the behaviour's family, from the same draws `acts` [n, d] (0 calls):
    {"offset_ln", "factor" (e^offset), "tau2_ln", "tokens", "hits_range" [lo, hi]}; None with
    fewer than 2 usable tokens. Points: the CAL_TOKENS rarest other targets u with CAL_MIN_HITS
    ≤ hits_u < n and QLD_u > 0; fit: DerSimonian–Laird random-effects offset of
    ln(hits_u/n) − ln QLD_u (calibration.log_calibration, fit "offset"; DerSimonian & Laird
    1986)."""
    from estimators.tailrisk.qld import qld_probability

    n = acts.shape[0]
    hits = _family_hits(model, behaviour, acts)
    order = sorted((h, u) for u, h in hits.items() if CAL_MIN_HITS <= h < n)
    xs, hs = [], []
    for h, u in order[:2 * CAL_TOKENS]:
        try:
            G, c = dataclasses.replace(behaviour, target=u).constraints(model)
        except BehaviourError:
            return None
        q, _ = qld_probability(acts, G, c)
        if q > 0:
            xs.append(math.log(q))
            hs.append(h)
        if len(xs) == CAL_TOKENS:
            break
    if len(xs) < 2:
        return None
    fit = log_calibration(torch.tensor(xs, dtype=torch.float64),
                          torch.tensor(hs, dtype=torch.float64), n, fit="offset")
    return {"offset_ln": fit["intercept_ln"], "factor": math.exp(fit["intercept_ln"]),
            "tau2_ln": fit["tau2_ln"], "tokens": fit["tokens"], "hits_range": [hs[0], hs[-1]]}


def apply_fallback(model, behaviour: Behaviour, acts: torch.Tensor | None, n_draws: int,
                   tail: float | None = None
                   ) -> tuple[float, tuple[float, float], dict]:
    """For a run with no hit: (estimate, interval [0, bound], diagnostics). The estimate is the
    extrapolation of `acts` (the run's `n_draws` draws from D), combined with `tail` (the
    refinement's margin-tail extrapolation, pmc.tail_fit) where given, clipped to
    `zero_hit_upper_bound(n_draws)` (n_draws ≥ len(acts): every draw from D the run made, with
    or without its activation); 0 with `fallback: None` and a note where none applies.
    (The refinement's draws from D's own component of its mixture are among the n_draws:
    `settle`.)"""
    ub = zero_hit_upper_bound(n_draws)
    got = extrapolate(model, behaviour, acts) if acts is not None else None
    if got is None and tail is None:
        return 0.0, (0.0, ub), {
            "fallback": None, "zero_hit_upper_bound": ub,
            "fallback_note": "no sample hit and no extrapolation applies (needs ≥ 3 reference "
                             "draws and a behaviour given by linear inequalities): 0"}
    if got is not None and got[1] == "empty":  # exactly 0, whatever the tail reads
        return 0.0, (0.0, 0.0), {
            "fallback": "empty", "fallback_tail": tail, "zero_hit_upper_bound": ub,
            "fallback_note": f"no sample hit: {LABELS['empty']}"}
    cal, uncal, method, raw = None, None, None, None
    if got is not None:
        raw, method = got
        cal = calibrate_qld(model, behaviour, acts.double()) if method == "qld" else None
        uncal = raw
        if cal is not None:
            raw = min(1.0, raw * cal["factor"])
    guess = raw
    if tail is not None and raw is None:
        raw, method = tail, "tail"
    elif tail is not None:  # one guess high on needles, one low: their geometric mean,
        # the tail floored at raw/TAIL_FLOOR so that it lowers the guess by ≤ √TAIL_FLOOR
        raw, method = math.sqrt(raw * max(tail, raw / TAIL_FLOOR)), f"{method}+tail"
    value = min(raw, ub)
    n = int(acts.shape[0]) if acts is not None else 0
    note = FALLBACK_NOTE.format(what=describe(method, n, cal), ub=ub, n_draws=n_draws)
    return value, (0.0, ub), {
        "fallback": method, "fallback_raw": raw, "fallback_uncalibrated": uncal,
        "fallback_calibration": cal, "fallback_guess": guess, "fallback_tail": tail,
        "fallback_clipped": raw > ub,
        "zero_hit_upper_bound": ub, "fallback_note": note}


def settle(model, behaviour: Behaviour, stage: Refinement | None, value: float,
           interval: tuple[float, float] | None, fallback: bool, acts: torch.Tensor | None,
           n_draws: int) -> tuple[float, tuple[float, float] | None, dict, bool]:
    """An importance sampler's last step, shared by ITGIS and MHIS: (value, interval,
    diagnostics, zero_hit). The refinement's estimate and interval replace the search's
    (`value`, `interval`) where it hit or knows a hit; a run left at 0 with `fallback` on gets
    `apply_fallback` on `acts` (the run's `n_draws` draws from D) and on the refinement's draws
    from D's own component of its mixture (exact draws of D: they join the reference draws and
    count in the zero-hit bound), with its tail extrapolation. The diagnostics are the
    refinement's (`refined_diagnostics`)
    and the fallback's."""
    extra = refined_diagnostics(stage)
    if stage is not None and (stage.hits or stage.known):
        value, interval = stage.value, stage.interval
    zero_hit = value == 0 and fallback
    if zero_hit:
        if stage is not None and stage.d_acts is not None and stage.d_acts.shape[0]:
            # the refinement's draws from D's own component: reference draws as well
            acts = stage.d_acts if acts is None else torch.cat([acts, stage.d_acts])
            n_draws += int(stage.d_acts.shape[0])
        value, interval, fb = apply_fallback(
            model, behaviour, acts, n_draws, tail=stage.tail if stage is not None else None)
        extra.update(fb)
    return value, interval, extra, zero_hit


def label(method: str) -> str:
    """The note's words for a fallback method ("qld", "gld", "qld half count", "tail", or one
    of the first three + "+tail": the geometric mean with the tail extrapolation)."""
    base, _, tail = method.partition("+")
    words = LABELS[base]
    return f"the geometric mean of {words} and {LABELS['tail']}" if tail else words


def describe(method: str, n: int, cal: dict | None) -> str:
    """The note's words for a fallback method with what it rests on: QLD/GLD/half a count
    "from the n reference draws' activations" (and its calibration), the tail extrapolation
    (the refinement's draws, not the reference draws) named after them."""
    base, _, tail = method.partition("+")
    if base == "tail":  # the refinement's draws alone (fewer than MIN_DRAWS reference draws)
        return LABELS["tail"]
    words = f"{LABELS[base]} from the {n:,} reference draws' activations"
    if cal is not None:
        words += f", calibrated ×{cal['factor']:.2g} on {cal['tokens']} other targets"
    return f"the geometric mean of {words}, and {LABELS['tail']}" if tail else words
