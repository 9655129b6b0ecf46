"""Surprise accounting for circuit estimates (background.md §1, code in estimators/surprise.py).

S(π), the argument, under this code:
  * independence: 0 bits (the empty argument);
  * sparse covariance: which of the circuit's candidate pairs are tracked,
    `subset_bits(n_candidates, k)` = log2(n_candidates + 1) + log2 C(n_candidates, k) bits (0 for
    k = 0). Candidates are the argument pairs of add/sub/mul nodes (see propagate.py); the
    tracked covariances are computed, not stated, so they cost no parameter bits;
  * Wick order K: "track every candidate pair" (subset_bits(n, n) = log2(n + 1)) plus K in
    Elias-gamma code (2⌊log2 K⌋ + 1 bits);
  * Monte Carlo: its estimate carries two numbers fitted on N samples (the output's mean and
    variance) at `bits_per_parameter` each (default ½·log2 N, the MDL price).

S(Y|π), the data: N seeded draws y_1..y_N of the real output (seed + 1, a stream separate from the
Monte Carlo estimator's own samples), each coded under the estimate's Gaussian N(μ̂, σ̂²) of the
output, quantised at ε: bits = Σ −log2(pdf(y_n)·ε) (`gaussian_bits`). ε: when every input is finite,
the output takes finitely many values and ε is the smallest gap between them (so pdf·ε
approximates the probability of the exact value; 1 for a constant output); otherwise ε = 0.01
unless stated. A variance below ε²/(2π) would give one quantisation bin a probability above 1, so
σ̂² is floored there (the floor is reported in the notes when it bites).
"""

from __future__ import annotations

import math

import torch

from estimators.circuits.enumeration import output_support
from estimators.circuits.model import Circuit
from estimators.surprise import SurpriseBreakdown, gaussian_bits, mdl_bits_per_parameter, \
    subset_bits

DEFAULT_EPSILON = 0.01


def elias_gamma_bits(k: int) -> float:
    """Length of the Elias-gamma code of a positive integer."""
    return float(2 * int(math.floor(math.log2(k))) + 1)


def output_epsilon(circuit: Circuit, device: str | torch.device = "cpu") -> tuple[float, str]:
    """The quantisation ε for the output and how it was chosen."""
    support = output_support(circuit, device)
    if support is None:
        return DEFAULT_EPSILON, f"default ε = {DEFAULT_EPSILON}"
    if support.numel() < 2:
        return 1.0, "constant output: ε = 1"
    gap = float(torch.diff(support).min())
    return gap, f"ε = {gap:.4g}, the smallest gap between the output's {support.numel()} values"


def argument_surprise(method: str, n_candidates: int, n_tracked: int, order: int,
                      mc_samples: int, bits_per_parameter: float | None
                      ) -> tuple[float, dict[str, float], str]:
    """(S(π) in bits, its named parts, a one-line description of the code)."""
    if method == "independence":
        return 0.0, {"argument:independence": 0.0}, "the empty argument costs 0 bits"
    if method == "sparse":
        b = subset_bits(n_candidates, n_tracked)
        return b, {f"argument:{n_tracked} of {n_candidates} pairs": b}, \
            f"log2({n_candidates}+1) + log2 C({n_candidates},{n_tracked})" if n_tracked else \
            "no pair tracked: 0 bits"
    if method == "wick":
        a, k = subset_bits(n_candidates, n_candidates), elias_gamma_bits(order)
        return a + k, {f"argument:all {n_candidates} pairs": a, f"argument:order {order}": k}, \
            "all pairs + Elias-gamma(K)"
    bpp = mdl_bits_per_parameter(mc_samples) if bits_per_parameter is None else bits_per_parameter
    return 2 * bpp, {"argument:2 fitted numbers": 2 * bpp}, \
        f"2 numbers × {bpp:.3g} bits (½·log2 N = {mdl_bits_per_parameter(mc_samples):.3g})"


def data_surprise(circuit: Circuit, mean: float, var: float, n: int, seed: int,
                  epsilon: float, device: str | torch.device = "cpu"
                  ) -> tuple[float, list[str]]:
    """(S(Y|π) in bits over n seeded draws of the real output, notes)."""
    y = circuit.sample(n, seed + 1, device)[circuit.output]
    floor = epsilon ** 2 / (2 * math.pi)
    notes = []
    if not var >= floor:  # also catches NaN
        notes.append(f"estimated variance {var:.3g} floored at ε²/2π = {floor:.3g}")
        var = floor
    bits = gaussian_bits(y, torch.tensor(mean, dtype=y.dtype, device=y.device),
                         torch.tensor(var, dtype=y.dtype, device=y.device), epsilon)
    return float(bits.sum()), notes


def circuit_surprise(circuit: Circuit, method: str, mean: float, var: float, n_candidates: int,
                     n_tracked: int, order: int, mc_samples: int,
                     bits_per_parameter: float | None, samples: int, seed: int,
                     epsilon: float, eps_how: str, device="cpu") -> SurpriseBreakdown:
    a_bits, parts, code = argument_surprise(method, n_candidates, n_tracked, order, mc_samples,
                                            bits_per_parameter)
    d_bits, notes = data_surprise(circuit, mean, var, samples, seed, epsilon, device)
    parts[f"data:{samples} draws of {circuit.output}"] = d_bits
    notes = [f"S(π): {code}", f"S(Y|π): {samples} draws (seed {seed + 1}), {eps_how}"] + notes
    return SurpriseBreakdown(argument_bits=a_bits, data_bits=d_bits, parts=parts,
                             notes="; ".join(notes))
