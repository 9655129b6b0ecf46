"""The common result of every circuit estimator: a mean vector and a covariance matrix over all
variables of a circuit (in `circuit.order`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Moments:
    """mean: [n_vars], cov: [n_vars, n_vars] (float64), indexed like `ids` (= circuit.order).

    For propagation estimators `cov` holds the covariances the estimator *computed*; which of
    them it actually *used* is recorded by the estimator (`tracked`)."""

    ids: tuple[str, ...]
    mean: torch.Tensor
    cov: torch.Tensor
    method: str
    notes: list[str] = field(default_factory=list)
    mean_se: torch.Tensor | None = None  # standard errors (Monte Carlo only)
    var_se: torch.Tensor | None = None
    node_warnings: dict[str, str] = field(default_factory=dict)  # id -> why a node's
    # estimate may be unreliable (e.g. a Gaussian closure applied to non-Gaussian variables)

    @property
    def var(self) -> torch.Tensor:
        return torch.diagonal(self.cov)

    def mean_of(self, vid: str) -> float:
        return float(self.mean[self.ids.index(vid)])

    def var_of(self, vid: str) -> float:
        i = self.ids.index(vid)
        return float(self.cov[i, i])

    def cov_of(self, u: str, v: str) -> float:
        return float(self.cov[self.ids.index(u), self.ids.index(v)])

    def as_dicts(self) -> tuple[dict[str, float], dict[str, float]]:
        m = self.mean.tolist()
        v = self.var.tolist()
        return dict(zip(self.ids, m)), dict(zip(self.ids, v))
