"""Tail risk: probabilities of rare outputs (background.md §5).

    from estimators.tailrisk import Argmax, run_estimator, ground_truth, resolve_distribution
    dist = resolve_distribution("hex", model, zoo_entry)
    est = run_estimator("itgis", model, dist, Argmax(target=17), budget=2048, seed=0)
    truth = ground_truth(model, dist, Argmax(target=17))   # exact when ≤ 2^24 inputs

Modules: `distributions` (input distributions and their JSON format), `behaviours` (what is
rare), one module per estimator (`mc`, `itgis`, `mhis`, `qld`, `gld`, `actmodel`) listed in
`registry.ESTIMATORS` (ITGIS and MHIS end with `pmc`'s population Monte Carlo refinement and,
without a hit, `fallback`'s extrapolation), `ground_truth` (enumeration / sampling, cached), `scoring` (Itakura–Saito
and log squared error, fitted and not), `tuning` (temperatures on held-out targets), `cli`.
Budgets are counted in model calls: one input through one forward pass = 1 call; forward +
backward = 2 calls.
"""

from estimators.tailrisk.behaviours import (Argmax, Behaviour, BehaviourError,
                                            DirectionThreshold, LogitThreshold,
                                            SampledProbability, behaviour_from_dict,
                                            parse_direction, parse_target, probe_direction,
                                            residual_hooks, sae_feature)
from estimators.tailrisk.distributions import (DistributionError, InputDistribution, from_json,
                                               parse_file, resolve_distribution, uniform)
from estimators.tailrisk.ground_truth import GroundTruth, ground_truth, ground_truth_vector
from estimators.tailrisk.registry import ESTIMATORS, make_config, run_estimator
from estimators.tailrisk.scoring import itakura_saito, log_squared_error, score

__all__ = ["Argmax", "Behaviour", "BehaviourError", "DirectionThreshold", "LogitThreshold",
           "SampledProbability", "behaviour_from_dict", "parse_target", "sae_feature",
           "parse_direction", "probe_direction", "residual_hooks",
           "DistributionError", "InputDistribution", "from_json", "parse_file",
           "resolve_distribution", "uniform", "GroundTruth", "ground_truth",
           "ground_truth_vector", "ESTIMATORS", "make_config", "run_estimator",
           "itakura_saito", "log_squared_error", "score"]
