"""Surprise accounting (background.md §1): S_total(π) = S(π) + S(Y | π), in bits.

The code used for S(π) (the argument's description length) is a two-part code:
  * which entries are switched on: log2 C(n_candidates, k) bits (the naive argument, k = 0,
    costs 0 bits), plus log2(n_candidates + 1) bits to state k itself when k > 0;
  * each real number the argument carries: `bits_per_parameter` bits. The MDL default is
    ½·log2 N for a parameter fitted on N samples; the value is a visible parameter everywhere.
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


def argument_bits(n_candidates: int, k: int, n_parameters: int = 0,
                  bits_per_parameter: float = 0.0) -> float:
    """S(π) for an argument switching on k of n_candidates entries and carrying numbers."""
    return subset_bits(n_candidates, k) + n_parameters * bits_per_parameter


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
