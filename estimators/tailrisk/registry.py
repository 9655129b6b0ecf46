"""The estimator registry: name -> (config class, function, what it needs).

Every estimator has the signature `fn(model, dist, behaviour, config, progress=None) ->
Estimate`, with the budget in `config.budget` counted in model calls (one forward pass of one
input = 1 call; forward + backward = 2 calls).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from estimators.estimate import Estimate
from estimators.tailrisk.actmodel import ActivationConfig, estimate_activation
from estimators.tailrisk.common import EstimatorConfig, ProgressFn
from estimators.tailrisk.gld import GLDConfig, estimate_gld
from estimators.tailrisk.itgis import ITGISConfig, estimate_itgis
from estimators.tailrisk.mc import MCConfig, estimate_mc
from estimators.tailrisk.mhis import MHISConfig, estimate_mhis
from estimators.tailrisk.qld import QLDConfig, estimate_qld


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    title: str
    config_cls: type[EstimatorConfig]
    run: Callable[..., Estimate]
    linear_only: bool  # needs a behaviour given by linear inequalities at one site
    unbiased: bool  # ITGIS: with `fallback` and `refine_fraction` off (pmc.py is consistent)
    has_temperature: bool
    summary: str


ESTIMATORS: dict[str, EstimatorSpec] = {s.name: s for s in [
    EstimatorSpec("mc", "Monte Carlo", MCConfig, estimate_mc, False, True, False,
                  "mean of the indicator over i.i.d. inputs; Wilson/Clopper–Pearson interval"),
    EstimatorSpec("itgis", "ITGIS", ITGISConfig, estimate_itgis, False, True, True,
                  "importance sampling, per-token proposal tilted by the gradient EMA"),
    EstimatorSpec("mhis", "MHIS", MHISConfig, estimate_mhis, False, False, True,
                  "Metropolis–Hastings with q ∝ D·exp(logit/T), self-normalised"),
    EstimatorSpec("qld", "QLD", QLDConfig, estimate_qld, True, False, False,
                  "quadratic logit decomposition: n² combinations of α d + β"),
    EstimatorSpec("gld", "GLD", GLDConfig, estimate_gld, True, False, False,
                  "normal fit to logit_t − max other logit; Φ(μ/σ)"),
    EstimatorSpec("activation", "Activation model", ActivationConfig, estimate_activation, True,
                  False, False, "§2 Gaussian propagated through the blocks (naive mask), read at the logits"),
]}


def make_config(method: str, budget: int, seed: int = 0, **overrides) -> EstimatorConfig:
    if method not in ESTIMATORS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[method].config_cls.from_dict({"budget": budget, "seed": seed, **overrides})


def require_engines(model, method: str) -> None:
    """Refuse (EngineUnsupported, one line) a model on which the tail-risk readouts — or, for
    the activation method, the activation chain — fail their conformance check."""
    from estimators import conformance

    conformance.require(model, "tailrisk")
    if method == "activation" and "activation" in conformance.engines():
        conformance.require(model, "activation")


def run_estimator(method: str, model, dist, behaviour, budget: int, seed: int = 0,
                  progress: ProgressFn | None = None, **overrides) -> Estimate:
    """Validate the behaviour against the model, then run one estimator."""
    config = make_config(method, budget, seed, **overrides)
    behaviour.validate(model)
    if dist.vocab_size != int(model.cfg.d_vocab):
        raise ValueError(f"the distribution covers {dist.vocab_size} tokens but the model's "
                         f"vocabulary has {model.cfg.d_vocab}")
    if dist.length > int(model.cfg.n_ctx):
        raise ValueError(f"the distribution has {dist.length} positions; the model's context is "
                         f"{model.cfg.n_ctx}")
    require_engines(model, method)
    est = ESTIMATORS[method].run(model, dist, behaviour, config, progress=progress)
    est.diagnostics.setdefault("method", method)
    est.diagnostics.setdefault("config", config.to_dict())
    return est
