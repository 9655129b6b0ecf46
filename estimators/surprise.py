"""Surprise accounting (background.md §1): S_total(π) = S(π) + S(Y | π), in bits.

One code for S(π), shared by the three argument kinds
----------------------------------------------------
Every argument the workbench scores is a set of *departures from independence*: the empty
argument presumes every variable independent of every other, and an argument switches some
dependences on. The code has two parts (a two-part MDL code, Rissanen; Grünwald, "The Minimum
Description Length Principle", ch. 1):

  1. *which* of the n candidate dependences are switched on, k of them:
     `subset_bits(n, k)` = log2(n + 1) (the count k) + log2 C(n, k) (which k), 0 for k = 0;
  2. the *numbers* the argument carries: each switched-on dependence is stated by one real
     number (the covariance it tracks, or the share of the real input a path keeps), priced at
     `bits_per_parameter` bits each. The MDL default is ½·log2 N for a number fitted on N
     samples (`mdl_bits_per_parameter`); the value is a visible parameter everywhere.

`argument_bits(n, k, n_parameters, bits_per_parameter)` is that sum; structured arguments add
the few bits that name their structure (a preset, a block layout, a resampling rule). Because
part 2 grows with every dependence switched on, the code is *not* symmetric in k ↔ n − k: the
naive argument costs 0 bits and "everything depends on everything" costs at least
n·bits_per_parameter, the price of stating one number per candidate. The three kinds:

  * covariance masks (activation model, `estimators.activation.masks`): a candidate is an
    off-diagonal entry of a site's covariance; each tracked entry carries its covariance
    (1 parameter);
  * path partitions (causal scrubbing, `estimators.scrubbing.partition`): a candidate is a
    treeified path; the naive argument feeds every path a random input independent of the real
    one. A path that keeps the real input switches on its dependence on the real input: one
    parameter, like one tracked covariance between the path's input copy and the real input.
    A path in a block resampled to agree with the real input on a feature (the label, the
    token at a position) keeps only part of that dependence and pays the share of the input's
    n positions the feature pins (1/n for a label or one position, |S|/n for a set S of
    positions, so matching on every position costs what keeping the real input costs); a path
    in a uniformly resampled block keeps none and pays nothing beyond part 1. So "every path
    important" costs at least P·bits_per_parameter for P paths: one number per path of the
    model's computation, the price the activation model pays per tracked covariance;
  * circuits (`estimators.circuits.accounting`): a candidate is an argument pair of a node;
    part 1 prices which pairs are tracked. Part 2 is empty: a tracked covariance there is an
    exact deterministic function of the circuit and the argument (no number is fitted from
    samples, unlike the activation model's moment-matched covariances), so there is no number
    to state; the Monte Carlo estimator, which fits two numbers, pays for them.

S(Y | π) is −log2 of the probability the estimate assigns to what happened, summed over the data;
for continuous observations a quantisation ε is stated and bits = −log2(pdf(y)·ε).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

LN2 = math.log(2.0)


def log2_binomial(n: int, k: int) -> float:
    """log2 C(n, k), exact through lgamma, 0 for k in {0, n}."""
    if k < 0 or k > n:
        raise ValueError(f"cannot choose {k} of {n}")
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / LN2


def mdl_bits_per_parameter(n_samples: int) -> float:
    """½·log2 N: the MDL price of one real parameter fitted on N samples."""
    return 0.5 * math.log2(max(int(n_samples), 2))


def subset_bits(n_candidates: int, k: int) -> float:
    """Bits to state which k of n candidates are switched on (0 when k = 0)."""
    if k == 0:
        return 0.0
    return math.log2(n_candidates + 1) + log2_binomial(n_candidates, k)


def argument_bits(n_candidates: int, k: int, n_parameters: float = 0,
                  bits_per_parameter: float = 0.0) -> float:
    """S(π) in bits for an argument switching on k of n_candidates dependences and stating
    `n_parameters` numbers (a real count where a dependence is kept in part, see the module
    docstring) at `bits_per_parameter` bits each. ValueError for k outside 0..n_candidates or a
    negative count or price."""
    if n_parameters < 0 or bits_per_parameter < 0:
        raise ValueError("n_parameters and bits_per_parameter must be ≥ 0")
    return subset_bits(n_candidates, k) + parameter_bits(n_parameters, bits_per_parameter)


def parameter_bits(n_parameters: float, bits_per_parameter: float) -> float:
    """Part 2 of the code: `n_parameters` stated numbers at `bits_per_parameter` bits each."""
    return float(n_parameters) * float(bits_per_parameter)


def nats_to_bits(x):
    return x / LN2


def gaussian_bits(y: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                  epsilon: float) -> torch.Tensor:
    """−log2(pdf(y)·ε) for independent normals, elementwise (the quantised continuous code)."""
    var = torch.as_tensor(var, dtype=y.dtype, device=y.device).clamp_min(1e-30)
    log_pdf = -0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)
    return -(log_pdf + math.log(epsilon)) / LN2


@dataclass
class SurpriseBreakdown:
    """Both terms of surprise accounting and their sum; `parts` breaks either term down
    (per site, per block, ...) as ordered name → bits pairs for the waterfall."""

    argument_bits: float
    data_bits: float
    parts: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    @property
    def total_bits(self) -> float:
        return self.argument_bits + self.data_bits

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_bits"] = self.total_bits
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SurpriseBreakdown":
        return cls(argument_bits=float(d["argument_bits"]), data_bits=float(d["data_bits"]),
                   parts=dict(d.get("parts", {})), notes=d.get("notes", ""))
