"""Exact moments by exhaustive enumeration over finite inputs (Bernoulli, finite uniform).

All combinations of the inputs' support points are evaluated in one batch (torch.cartesian_prod);
each combination's probability is the product of the inputs' probabilities (independence)."""

from __future__ import annotations

import math

import torch

from estimators.circuits.model import Circuit, CircuitError
from estimators.circuits.moments import Moments

MAX_CELLS = 20_000_000  # combinations × variables held at once


def n_combinations(circuit: Circuit) -> int:
    return math.prod(len(d.support()[0]) for d in circuit.inputs.values())


def enumerate_values(circuit: Circuit, device: str | torch.device = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [n_vars, n_comb], probabilities [n_comb]) over every input combination."""
    if not circuit.all_inputs_finite:
        raise CircuitError("enumeration needs every input finite (bernoulli or uniform)")
    combos = n_combinations(circuit)
    if combos * len(circuit.order) > MAX_CELLS:
        raise CircuitError(f"enumeration too large: {combos} input combinations × "
                           f"{len(circuit.order)} variables; use polynomial expansion")
    vals, probs = [], []
    for d in circuit.inputs.values():
        v, p = d.support()
        vals.append(torch.tensor(v, dtype=torch.float64, device=device))
        probs.append(torch.tensor(p, dtype=torch.float64, device=device))
    if len(vals) == 1:
        grid, pgrid = vals[0][:, None], probs[0][:, None]
    else:
        grid, pgrid = torch.cartesian_prod(*vals), torch.cartesian_prod(*probs)
    w = pgrid.prod(-1)
    x = circuit.evaluate({k: grid[:, i] for i, k in enumerate(circuit.inputs)})
    return torch.stack([x[v] for v in circuit.order]), w


def enumerate_moments(circuit: Circuit, device: str | torch.device = "cpu") -> Moments:
    X, w = enumerate_values(circuit, device)
    mean = X @ w
    D = X - mean[:, None]
    cov = (D * w) @ D.T
    return Moments(ids=circuit.order, mean=mean, cov=0.5 * (cov + cov.T),
                   method="exact (enumeration)")


def output_support(circuit: Circuit, device: str | torch.device = "cpu",
                   decimals: int = 9) -> torch.Tensor | None:
    """Distinct values of the output (rounded), or None when the inputs are not all finite or
    there are too many combinations."""
    if not circuit.all_inputs_finite or \
            n_combinations(circuit) * len(circuit.order) > MAX_CELLS:
        return None
    X, w = enumerate_values(circuit, device)
    y = X[circuit.index[circuit.output]][w > 0]
    return torch.unique(torch.round(y, decimals=decimals))
