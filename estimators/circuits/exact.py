"""Ground truth for every variable's mean and (co)variance: enumeration when every input is
finite and the combinations fit, exact polynomial expansion otherwise."""

from __future__ import annotations

import torch

from estimators.circuits.enumeration import MAX_CELLS, enumerate_moments, n_combinations
from estimators.circuits.model import Circuit, CircuitError
from estimators.circuits.moments import Moments
from estimators.circuits.polynomial import expand_moments


def exact_moments(circuit: Circuit, method: str = "auto",
                  device: str | torch.device = "cpu") -> Moments:
    """method: 'auto' | 'enumerate' | 'polynomial'."""
    if method not in ("auto", "enumerate", "polynomial"):
        raise CircuitError(f"unknown exact method {method!r}")
    if method == "enumerate" or (
            method == "auto" and circuit.all_inputs_finite
            and n_combinations(circuit) * len(circuit.order) <= MAX_CELLS):
        return enumerate_moments(circuit, device)
    return expand_moments(circuit, device)
