"""Arithmetic-circuit playground (background.md §3): circuits, propagation estimators
(independence, sparse covariance, Wick order K, Monte Carlo), exact truth, surprise accounting."""

from estimators.circuits.analysis import (METHODS, CircuitAnalysis, CircuitConfig, analyse,
                                          parse_track_file, run_estimator, track_all)
from estimators.circuits.exact import exact_moments
from estimators.circuits.generate import random_circuit
from estimators.circuits.model import (Circuit, CircuitError, InputDist, Node, list_presets,
                                       load_circuit, load_preset)
from estimators.circuits.moments import Moments
from estimators.circuits.montecarlo import monte_carlo_moments
from estimators.circuits.polynomial import expand_moments, wick_moments
from estimators.circuits.propagate import candidate_pairs, candidate_users, propagate

__all__ = ["METHODS", "Circuit", "CircuitAnalysis", "CircuitConfig", "CircuitError",
           "InputDist", "Moments", "Node", "analyse", "candidate_pairs", "candidate_users",
           "exact_moments", "expand_moments", "list_presets", "load_circuit", "load_preset",
           "monte_carlo_moments", "parse_track_file", "propagate", "random_circuit",
           "run_estimator", "track_all", "wick_moments"]
