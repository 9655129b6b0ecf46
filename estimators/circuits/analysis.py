"""One entry point for the CLI, the page and notebooks: run an estimator on a circuit, compute the
exact truth beside it, and do the surprise accounting.

    from estimators.circuits import load_preset, CircuitConfig, analyse
    a = analyse(load_preset("square"), CircuitConfig(method="sparse", tracked=[("x", "x")]))
    a.rows()          # per variable: mean_est, var_est, mean_true, var_true, errors
    a.surprise        # SurpriseBreakdown: S(π), S(Y|π), total
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from estimators.circuits.accounting import circuit_surprise, output_epsilon
from estimators.circuits.exact import exact_moments
from estimators.circuits.model import Circuit, CircuitError
from estimators.circuits.moments import Moments
from estimators.circuits.montecarlo import monte_carlo_moments
from estimators.circuits.polynomial import wick_moments
from estimators.circuits.propagate import Pair, candidate_pairs, check_tracked, propagate
from estimators.device import resolve_device
from estimators.estimate import Cost, Estimate

METHODS = {
    "independence": "Independence (mean + variance propagation)",
    "sparse": "Sparse covariance (tracked pairs)",
    "wick": "Wick / cumulant expansion to order K",
    "montecarlo": "Monte Carlo",
}
MAX_ORDER = 16


def _int(x: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise CircuitError(f"{what} must be an integer in [{lo}, {hi}], got {x!r}")
    return x


@dataclass
class CircuitConfig:
    """What to estimate and how. `tracked` is the sparse-covariance argument (pairs of ids);
    `samples` draws of the real output score S(Y|π); `epsilon` None = automatic (see
    accounting.py); `bits_per_parameter` None = ½·log2(mc_samples) (Monte Carlo only)."""

    method: str = "sparse"
    tracked: tuple[tuple[str, str], ...] = ()
    order: int = 2
    mc_samples: int = 10_000
    samples: int = 1_000
    seed: int = 0
    epsilon: float | None = None
    bits_per_parameter: float | None = None
    device: str = "cpu"

    def __post_init__(self):
        if self.method not in METHODS:
            raise CircuitError(f"unknown method {self.method!r}; use one of {list(METHODS)}")
        if isinstance(self.tracked, (str, bytes)):
            raise CircuitError("tracked must be a list of [id, id] pairs")
        pairs = []
        for p in self.tracked:
            if isinstance(p, (str, bytes)) or len(p) != 2 or not all(isinstance(v, str) for v in p):
                raise CircuitError(f"a tracked pair must be two ids, got {p!r}")
            pairs.append((p[0], p[1]))
        self.tracked = tuple(pairs)
        _int(self.order, "order", 1, MAX_ORDER)
        _int(self.mc_samples, "mc_samples", 2, 10_000_000)
        _int(self.samples, "samples", 1, 10_000_000)
        _int(self.seed, "seed", 0, 2 ** 63 - 1)
        if self.epsilon is not None and not (isinstance(self.epsilon, (int, float))
                                             and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise CircuitError(f"epsilon must be a positive number, got {self.epsilon!r}")
        if self.bits_per_parameter is not None and not (
                isinstance(self.bits_per_parameter, (int, float))
                and math.isfinite(self.bits_per_parameter) and self.bits_per_parameter >= 0):
            raise CircuitError(f"bits_per_parameter must be >= 0, got {self.bits_per_parameter!r}")

    def to_dict(self) -> dict:
        return {"method": self.method, "tracked": [list(p) for p in self.tracked],
                "order": self.order, "mc_samples": self.mc_samples, "samples": self.samples,
                "seed": self.seed, "epsilon": self.epsilon,
                "bits_per_parameter": self.bits_per_parameter, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict) -> "CircuitConfig":
        if not isinstance(d, dict):
            raise CircuitError("a circuit config must be a JSON object")
        unknown = set(d) - set(cls().to_dict())
        if unknown:
            raise CircuitError(f"unknown config field(s) {sorted(unknown)}")
        return cls(**{**d, "tracked": tuple(tuple(p) if isinstance(p, list) else p
                                            for p in d.get("tracked", ()))})


@dataclass
class CircuitAnalysis:
    circuit: Circuit
    config: CircuitConfig
    estimate: Moments
    truth: Moments
    surprise: Any  # SurpriseBreakdown
    tracked: list[Pair]
    candidates: list[Pair]
    epsilon: float
    seconds: float
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One row per variable in topological order (inputs first); "warning" is the
        estimator's note for that node ("" when none), e.g. a Gaussian closure applied to
        non-Gaussian variables."""
        out = []
        for i, v in enumerate(self.circuit.order):
            me, ve = float(self.estimate.mean[i]), float(self.estimate.cov[i, i])
            mt, vt = float(self.truth.mean[i]), float(self.truth.cov[i, i])
            out.append({"id": v, "kind": self.circuit.kind(v), "mean_est": me, "var_est": ve,
                        "mean_true": mt, "var_true": vt, "mean_err": me - mt,
                        "var_err": ve - vt,
                        "warning": self.estimate.node_warnings.get(v, "")})
        return out

    def to_estimate(self) -> Estimate:
        """The output's estimate in the library-wide result type."""
        k = self.circuit.index[self.circuit.output]
        interval = None
        if self.estimate.mean_se is not None:
            m, se = float(self.estimate.mean[k]), float(self.estimate.mean_se[k])
            interval = (m - 1.96 * se, m + 1.96 * se)
        return Estimate(value=float(self.estimate.mean[k]), interval=interval,
                        cost=Cost(calls=self.config.mc_samples if self.config.method ==
                                  "montecarlo" else 0, seconds=self.seconds),
                        diagnostics={"var": float(self.estimate.cov[k, k]),
                                     "mean_true": float(self.truth.mean[k]),
                                     "var_true": float(self.truth.cov[k, k])},
                        surprise=self.surprise)

    def to_dict(self) -> dict:
        return {"circuit": self.circuit.name or None, "output": self.circuit.output,
                "method": self.config.method, "estimator": self.estimate.method,
                "truth": self.truth.method,
                "tracked": [list(p) for p in self.tracked],
                "candidates": [list(p) for p in self.candidates],
                "order": self.config.order if self.config.method == "wick" else None,
                "nodes": self.rows(), "surprise": self.surprise.to_dict(),
                "epsilon": self.epsilon, "notes": self.notes}


def run_estimator(circuit: Circuit, config: CircuitConfig) -> Moments:
    device = resolve_device(config.device)
    if config.method == "independence":
        return propagate(circuit, (), device)
    if config.method == "sparse":
        return propagate(circuit, config.tracked, device)
    if config.method == "wick":
        return wick_moments(circuit, config.order, device)
    return monte_carlo_moments(circuit, config.mc_samples, config.seed, device)


def analyse(circuit: Circuit, config: CircuitConfig | None = None,
            truth: Moments | None = None) -> CircuitAnalysis:
    """Estimate, truth, and surprise. Pass `truth` to reuse a ground truth already computed."""
    config = config or CircuitConfig()
    device = resolve_device(config.device)
    tracked = check_tracked(circuit, config.tracked) if config.method == "sparse" else []
    cands = candidate_pairs(circuit)
    t0 = time.perf_counter()
    est = run_estimator(circuit, config)
    seconds = time.perf_counter() - t0
    truth = truth if truth is not None else exact_moments(circuit, "auto", device)
    if config.epsilon is None:
        eps, how = output_epsilon(circuit, device)
    else:
        eps, how = float(config.epsilon), f"ε = {config.epsilon} (stated)"
    k = circuit.index[circuit.output]
    s = circuit_surprise(circuit, config.method, float(est.mean[k]), float(est.cov[k, k]),
                         len(cands), len(tracked), config.order, config.mc_samples,
                         config.bits_per_parameter, config.samples, config.seed, eps, how,
                         device)
    return CircuitAnalysis(circuit=circuit, config=config, estimate=est, truth=truth,
                           surprise=s, tracked=tracked, candidates=cands, epsilon=eps,
                           seconds=seconds, notes=list(est.notes))


def parse_track_file(doc: Any) -> list[tuple[str, str]]:
    """The track file format: {"pairs": [["x", "y"], ...]}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pairs"), list):
        raise CircuitError('a track file must be a JSON object {"pairs": [["x", "y"], ...]}')
    out = []
    for p in doc["pairs"]:
        if not isinstance(p, list) or len(p) != 2 or not all(isinstance(v, str) for v in p):
            raise CircuitError(f"each tracked pair must be a list of two ids, got {p!r}")
        out.append((p[0], p[1]))
    return out


def track_all(circuit: Circuit) -> list[Pair]:
    return candidate_pairs(circuit)


def pairs_label(pairs: Sequence[Sequence[str]]) -> str:
    return ", ".join(f"{u}×{v}" for u, v in pairs) or "none"
