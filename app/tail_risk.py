"""Streamlit-side glue of the "Tail risk" page: settings (URL + file), and running the library's
estimators over targets with progress. No science here: everything is `estimators.tailrisk`."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import pandas as pd

from estimators.tailrisk import (ESTIMATORS, Argmax, BehaviourError, LogitThreshold,
                                 SampledProbability, ground_truth_vector, make_config,
                                 probe_direction, run_estimator, sae_feature)
from estimators.tailrisk.distributions import (DistributionError, InputDistribution, from_json,
                                               from_table)
from estimators.tailrisk.scoring import optimal_constant_scores, score
from estimators.tailrisk.actmodel import MASKS as ACTIVATION_MASKS

SETTINGS_KIND = "tail-risk"
URL_KEY = "tr"
UPLOADED = "uploaded file"
FROM_DATA = {"from data: empirical": "empirical",      # per-position frequencies
             "from data: data tokens": "data-tokens"}  # uniform over the data's tokens
BEHAVIOURS = {"argmax": "t is the argmax (temperature 0)",
              "sampled": "probability of sampling t at temperature τ",
              "logit": "logit of t above a threshold",
              "sae": "SAE latent above a threshold (the sidebar's SAE)",
              "probe": "probe direction above a threshold (residual stream)"}
FEATURE_BEHAVIOURS = ("sae", "probe")  # one behaviour, no target token
PROBE_SOURCES = ("unit", "upload")
DEFAULT_MAX_INPUTS = 2 ** 16
BUDGETS = [2 ** k for k in range(5, 17)]  # the page's budget slider (model calls)
MAX_SEED = 2 ** 31 - 1
# field -> (lowest, highest, integer): the page's widgets take their ranges from here, and link
# or settings-file values outside them are clamped with a message (`settings_from_untrusted`).
RANGES = {"sampling_temperature": (0.01, 100.0, False), "threshold": (-1e6, 1e6, False),
          "band_low": (1e-12, 1.0, False), "band_high": (1e-12, 1.0, False),
          "n_targets": (1, 64, True), "seed": (0, MAX_SEED, True),
          "itgis_temperature": (0.001, 1000.0, False), "mhis_temperature": (0.001, 1000.0, False),
          "probe_bias": (-1e6, 1e6, False), "target": (0, 2 ** 31 - 1, True),
          "length": (0, 2 ** 31 - 1, True), "sae_feature": (0, 2 ** 31 - 1, True),
          "probe_unit": (0, 2 ** 31 - 1, True), "refine_fraction": (0.0, 0.95, False)}


@dataclass
class Settings:
    behaviour: str = "argmax"
    sampling_temperature: float = 1.0
    threshold: float = 0.0
    distribution: str = ""  # a built-in name, or UPLOADED
    uploaded: dict | None = None  # the uploaded distribution in file format
    length: int = 0  # keep the last `length` positions (0: as many as fit DEFAULT_MAX_INPUTS)
    target_mode: str = "band"  # "one" | "band"
    target: int = 0
    band_low: float = 1e-6
    band_high: float = 1e-2
    n_targets: int = 4
    budget: int = 512
    methods: list[str] = field(default_factory=lambda: ["mc", "gld"])
    seed: int = 0
    itgis_temperature: float = 1.0
    mhis_temperature: float = 1.0
    activation_mask: str = "naive"  # the activation method's argument (CovarianceMask preset)
    zero_hit_fallback: bool = True  # ITGIS/MHIS with no hit: QLD/GLD extrapolation, not 0
    refine_fraction: float = 0.9  # ITGIS/MHIS: share of the calls on the refinement (pmc.py)
    sae_feature: int = 0  # behaviour "sae": latent index of the sidebar's SAE
    probe_hook: str = ""  # behaviour "probe": a residual-stream hook ("" = the last one)
    probe_source: str = "unit"  # "unit": e_unit; "upload": probe_vector
    probe_unit: int = 0
    probe_vector: list[float] | None = None
    probe_bias: float = 0.0

    def __post_init__(self):
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}")
        if self.probe_source not in PROBE_SOURCES:
            raise ValueError(f"probe source must be 'unit' or 'upload', not "
                             f"{self.probe_source!r}")
        if self.sae_feature < 0 or self.probe_unit < 0:
            raise ValueError("SAE feature and probe unit must be ≥ 0")
        if self.behaviour == "sae" and self.threshold < 0:
            raise ValueError("an SAE latent threshold must be ≥ 0 (the latent is a ReLU)")
        if self.probe_vector is not None and not (
                isinstance(self.probe_vector, list) and self.probe_vector and all(
                    isinstance(v, (int, float)) and math.isfinite(v)
                    for v in self.probe_vector)):
            raise ValueError("the probe vector must be a non-empty list of finite numbers")
        if self.activation_mask not in ACTIVATION_MASKS:
            raise ValueError(f"activation mask must be one of {', '.join(ACTIVATION_MASKS)}, "
                             f"not {self.activation_mask!r}")
        if not isinstance(self.zero_hit_fallback, bool):
            raise ValueError("zero_hit_fallback must be true or false")
        if self.target_mode not in ("one", "band"):
            raise ValueError(f"target mode must be 'one' or 'band', not {self.target_mode!r}")
        unknown = [m for m in self.methods if m not in ESTIMATORS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}")
        for name in ("sampling_temperature", "threshold", "band_low", "band_high",
                     "itgis_temperature", "mhis_temperature", "probe_bias", "refine_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number")
        if not 0 <= self.refine_fraction < 1:
            raise ValueError(f"refine_fraction (the refinement's share of the budget) must be "
                             f"in [0, 1), not {self.refine_fraction:g}")
        if not (0 < self.band_low < self.band_high <= 1):
            raise ValueError("the band needs 0 < low < high ≤ 1")
        if self.budget < 2 or self.n_targets < 1 or self.length < 0:
            raise ValueError("budget ≥ 2, at least one target and length ≥ 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        if not isinstance(d, dict):
            raise ValueError("tail-risk settings must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown tail-risk settings {unknown}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ValueError(f"bad tail-risk settings: {e}") from e


def model_ranges(model, sae=None) -> dict:
    """`RANGES` narrowed to this model: target < d_vocab_out, length ≤ n_ctx, unit < d_model,
    SAE latent < d_sae."""
    cfg = model.cfg
    r = dict(RANGES)
    r["target"] = (0, int(getattr(cfg, "d_vocab_out", cfg.d_vocab) or cfg.d_vocab) - 1, True)
    r["length"] = (0, int(cfg.n_ctx), True)
    r["probe_unit"] = (0, int(cfg.d_model) - 1, True)
    if sae is not None:
        r["sae_feature"] = (0, int(sae.cfg.d_sae) - 1, True)
    return r


def settings_from_untrusted(d, model=None, sae=None) -> tuple[Settings, list[str]]:
    """Settings from a link or a settings file: numbers outside the page's ranges are clamped
    (each clamp is a message), a budget off the slider is moved to the nearest one; anything
    else wrong (unknown field, NaN, a word for a number, low ≥ high) raises one-line ValueError.
    Returns (settings, messages)."""
    from estimators.validation import clamp_fields, number

    if not isinstance(d, dict):
        raise ValueError("tail-risk settings must be a JSON object")
    d, notes = clamp_fields(d, model_ranges(model, sae) if model is not None else RANGES)
    if "budget" in d:
        b = number(d["budget"], "budget", integer=True)
        near = min(BUDGETS, key=lambda x: abs(math.log2(max(b, 1)) - math.log2(x)))
        if near != b:
            notes.append(f"budget = {b:,} is not on the slider ({BUDGETS[0]}…{BUDGETS[-1]:,}); "
                         f"using {near:,}")
        d["budget"] = near
    for key in ("methods",):
        if key in d and not (isinstance(d[key], list)
                             and all(isinstance(m, str) for m in d[key])):
            raise ValueError(f"{key} must be a list of method names")
    return Settings.from_dict(d), notes


def make_behaviour(s: Settings, target: int, model=None, sae=None):
    """The library behaviour for a target token (feature behaviours ignore `target`)."""
    if s.behaviour == "sae":
        if sae is None:
            raise BehaviourError("the SAE-latent behaviour needs an SAE: pick one in the sidebar")
        return sae_feature(sae, s.sae_feature, s.threshold, model=model)
    if s.behaviour == "probe":
        if model is None:
            raise BehaviourError("the probe behaviour needs the model")
        hook = s.probe_hook or default_probe_hook(model)
        if s.probe_source == "upload":
            if s.probe_vector is None:
                raise BehaviourError("no probe vector uploaded yet")
            return probe_direction(model, hook, direction=s.probe_vector,
                                   threshold=s.threshold, bias=s.probe_bias)
        return probe_direction(model, hook, unit=s.probe_unit, threshold=s.threshold,
                               bias=s.probe_bias)
    if s.behaviour == "argmax":
        return Argmax(target)
    if s.behaviour == "sampled":
        return SampledProbability(target, s.sampling_temperature)
    return LogitThreshold(target, s.threshold)


def default_probe_hook(model) -> str:
    from estimators.tailrisk import residual_hooks

    return residual_hooks(model)[-1]


def feature_key(s: Settings) -> int:
    """The "target" column of a feature behaviour: the SAE latent, or 0 for a probe."""
    return s.sae_feature if s.behaviour == "sae" else 0


def feature_label(s: Settings, model=None, sae=None) -> str:
    try:
        return make_behaviour(s, 0, model, sae).label()
    except ValueError:
        return s.behaviour


def default_length(full: InputDistribution, max_inputs: int = DEFAULT_MAX_INPUTS) -> int:
    """The longest suffix whose support has at most `max_inputs` inputs (at least 1)."""
    sizes = [int(x.numel()) for x in full.supports()]
    n, length = 1, 0
    for size in reversed(sizes):
        if n * size > max_inputs and length >= 1:
            break
        n *= size
        length += 1
    return length


def build_distribution(s: Settings, model, entry, vocab, data=None) -> InputDistribution:
    """The settings' input distribution: a built-in, the uploaded file, or one of FROM_DATA
    built from `data` (`estimators.data.Data`, the sidebar's; `distributions.from_tokens`:
    empirical per-position frequencies, or uniform over the tokens that occur), kept to the
    last `s.length` positions (0: the longest with ≤ 2^16 inputs). Raises DistributionError."""
    V = int(model.cfg.d_vocab)
    if s.distribution in FROM_DATA:
        from estimators.tailrisk.distributions import from_tokens

        if data is None:
            raise DistributionError("no data: give a data spec in the sidebar's Data field")
        kind = FROM_DATA[s.distribution]
        full = from_tokens(data.tokens, V, kind, f"{kind}({data.source.spec})", vocab)
    elif s.distribution == UPLOADED:
        if s.uploaded is None:
            raise DistributionError("no distribution file uploaded yet")
        if vocab is None:  # token strings through the model's tokenizer (GPT-2: " the")
            from estimators.data import token_texts
            vocab = token_texts(model)
        full = from_json(s.uploaded, V, int(model.cfg.n_ctx), vocab, "uploaded")
    else:
        builtins = entry.input_distributions() if entry is not None else {}
        if s.distribution not in builtins:
            raise DistributionError(f"{s.distribution!r} is not a built-in distribution of "
                                    f"this model (built-ins: {', '.join(builtins) or 'none'})")
        full = from_table(builtins[s.distribution], V, s.distribution, vocab)
    length = s.length or default_length(full)
    return full.truncated(min(length, full.length)) if length < full.length else full


def seed_for(s: Settings, index: int) -> int:
    """Each target gets its own seed so their runs are independent; shown in the table."""
    return s.seed + index


def truths(s: Settings, model, dist, targets: list[int] | None, progress=None, sae=None
           ) -> tuple[dict[int, float], str, np.ndarray | None]:
    """True probabilities (exact when the support is small, else sampled; cached on disk).
    Argmax and sampled behaviours get every target in one pass (the vector is returned too);
    a logit threshold is computed per target, so it needs explicit targets."""
    from estimators.tailrisk import ground_truth

    if s.behaviour in ("argmax", "sampled"):
        vec = ground_truth_vector(model, dist, make_behaviour(s, 0), progress=progress)
        values = np.array(vec["values"])
        return {i: float(v) for i, v in enumerate(values)}, vec["method"], values
    if s.behaviour in FEATURE_BEHAVIOURS:
        g = ground_truth(model, dist, make_behaviour(s, 0, model, sae), progress=progress)
        return {feature_key(s): g.probability}, g.method, None
    if targets is None:
        raise ValueError("a band of targets needs the argmax or sampled behaviour; pick one "
                         "target for a logit threshold")
    out, method = {}, "exact"
    for t in targets:
        g = ground_truth(model, dist, make_behaviour(s, t), progress=progress)
        out[t], method = g.probability, g.method
    return out, method, None


def choose_targets(s: Settings, truth: np.ndarray | None) -> list[int]:
    if s.behaviour in FEATURE_BEHAVIOURS:
        return [feature_key(s)]
    if s.target_mode == "one":
        return [s.target]
    assert truth is not None
    ok = np.nonzero((truth >= s.band_low) & (truth <= s.band_high))[0]
    if len(ok) == 0:
        raise ValueError(f"no target has a true probability in [{s.band_low:g}, "
                         f"{s.band_high:g}] under this distribution; widen the band")
    rng = np.random.default_rng(s.seed)
    pick = rng.choice(ok, size=min(s.n_targets, len(ok)), replace=False)
    return sorted(int(t) for t in pick)


def run_methods(s: Settings, model, dist, targets: list[int], truth: dict[int, float],
                labels: Callable[[int], str], progress: Callable[[float, str], None],
                budgets: list[int] | None = None, sae=None, lock=None, *,
                estimator_progress: Callable | None = None) -> pd.DataFrame:
    """One row per (budget, target, method): estimate, interval, calls, seconds, seed.
    `lock` (optional) is held around each estimator run, not the whole loop.
    estimator_progress(k, n_jobs, p): called inside job k's estimator run after each batch
    with its `estimators.progress.Progress` p (with the lock held); it may raise to cancel."""
    budgets = budgets or [s.budget]
    rows = []
    refused = refused_runs(s, budgets)
    if len(refused) == len(budgets) * len(s.methods):
        raise ValueError(next(iter(refused.values())))
    jobs = [(b, i, t, m) for b in budgets for i, t in enumerate(targets) for m in s.methods
            if (b, m) not in refused]
    for k, (budget, i, t, m) in enumerate(jobs):
        extra = method_options(s, m)
        seed = seed_for(s, i)
        progress(k / len(jobs), f"{ESTIMATORS[m].title} on target {labels(t)} "
                                f"({budget} calls)")
        with lock if lock is not None else contextlib.nullcontext():
            e = run_estimator(m, model, dist, make_behaviour(s, t, model, sae), budget, seed,
                              progress=None if estimator_progress is None else
                              functools.partial(estimator_progress, k, len(jobs)), **extra)
        lo, hi = e.interval if e.interval is not None else (None, None)
        clo, chi = e.diagnostics.get("calibrated_interval") or (None, None)  # activation only
        rows.append({"target": t, "token": labels(t), "truth": truth.get(t), "method": m,
                     "budget": budget, "estimate": e.value, "low": lo, "high": hi,
                     "calibrated": e.diagnostics.get("calibrated_estimate"),
                     "calibrated_low": clo, "calibrated_high": chi,
                     "calls": e.cost.calls,
                     "samples": int(e.diagnostics.get("samples", e.cost.calls)),
                     "seconds": e.cost.seconds, "seed": seed,
                     "fallback": e.diagnostics.get("fallback"),
                     "refine": e.diagnostics.get("refine")})
    progress(1.0, "done")
    out = pd.DataFrame(rows)
    out.attrs["refused"] = [f"{ESTIMATORS[m].title} at {b} calls: {msg}"
                            for (b, m), msg in refused.items()]
    return out


def method_options(s: Settings, m: str) -> dict:
    """The settings that reach estimator `m`'s config (temperatures, fallback, refinement
    share, activation mask)."""
    extra: dict = {}
    if m in ("itgis", "mhis"):
        extra["temperature"] = s.itgis_temperature if m == "itgis" else s.mhis_temperature
        extra["fallback"] = s.zero_hit_fallback
        extra["refine_fraction"] = float(s.refine_fraction)
    if m == "activation":
        extra["mask"] = s.activation_mask
    return extra


def refused_runs(s: Settings, budgets: list[int]) -> dict[tuple[int, str], str]:
    """{(budget, method): the config's one-line refusal} for the runs whose configuration is
    refused before any model call (a budget below a method's minimum, e.g. MHIS's 86 calls
    for 16 chains), so that the other methods' rows still run."""
    out = {}
    for b in budgets:
        for m in s.methods:
            try:
                make_config(m, b, 0, **method_options(s, m))
            except ValueError as e:
                out[(b, m)] = str(e)
    return out


def fallback_note(results: pd.DataFrame) -> str | None:
    """One line when some ITGIS/MHIS run had no hit and reported the model-based
    extrapolation instead of 0 (`estimators.tailrisk.fallback`); None otherwise."""
    if "fallback" not in results or not results["fallback"].notna().any():
        return None
    fb = results["fallback"]
    used = results[fb.notna() & (fb != "empty")]
    empty = int((fb == "empty").sum())
    exact = (f" In {empty} run(s) no activation can meet the behaviour's inequalities: "
             f"exactly 0." if empty else "")
    if used.empty:
        return exact.strip()
    runs = ", ".join(f"{m} {len(g)}" for m, g in used.groupby("method", sort=False))
    return (f"No sample hit in {len(used)} run(s) ({runs}): their estimates are model-based "
            f"extrapolations (QLD or GLD on the run's own reference draws, with the "
            f"refinement's margin-tail extrapolation where it ran; biased), clipped to the "
            f"zero-hit bound ≈ 3/draws — the `fallback` column names the method. Untick "
            f"*Zero-hit fallback* to get 0 instead.{exact}")


def loss_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: IS and log-SE losses (fitted and not), plus the optimal-constant baseline."""
    rows = []
    df = results[results["truth"].notna() & (results["truth"] > 0)]
    if df.empty:
        return pd.DataFrame()
    for m, g in df.groupby("method", sort=False):
        s = score(g["truth"].to_numpy(), g["estimate"].to_numpy())
        rows.append({"method": m, **{k: s[k] for k in ("itakura_saito", "itakura_saito_fitted",
                                                       "log_squared_error",
                                                       "log_squared_error_fitted",
                                                       "zero_estimates")}})
    first = df[df["method"] == df["method"].iloc[0]]
    c = optimal_constant_scores(first["truth"].to_numpy())
    rows.append({"method": "optimal constant", **{k: c[k] for k in (
        "itakura_saito", "itakura_saito_fitted", "log_squared_error",
        "log_squared_error_fitted", "zero_estimates")}})
    return pd.DataFrame(rows)
