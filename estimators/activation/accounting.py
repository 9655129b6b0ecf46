"""Surprise accounting for activation models: S(π) from the mask, S(Y|π) from the output site.

S(π): `CovarianceMask.description_bits` (the code is documented in masks.py), one part
"argument:<site>" per site that departs from the naive argument.

S(Y|π), one part "data:<output site>":
  * logits sites (kind "argmax"): the observations are the model's actual argmax tokens on the
    N real inputs. The estimate's probability of token t is
        P(t) = (1 − α) · mean_s softmax(ℓ_s / τ)_t + α / V,
    with ℓ_s, s = 1..M, drawn from the propagated (masked) Gaussian with a fixed seed (Monte
    Carlo with common random numbers, so it is deterministic and differentiable), τ a soft-argmax
    temperature (→ the argmax frequency as τ → 0) and α a floor that keeps every token possible.
    Defaults M = 2048, τ = 0.05, α = 1e-3. Bits = −Σ_n log2 P(y_n).
  * continuous outputs: bits = −Σ_n log2(pdf(y_n) · ε^d) under the propagated (masked) Gaussian
    with a ridge λ·I (λ = 1e-6 · mean variance) for invertibility; ε = chain.output.epsilon
    (default 0.01) per coordinate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from estimators.activation.gaussian import MaskedGaussian, multivariate_log2_pdf


@dataclass(frozen=True)
class DataCode:
    """Parameters of S(Y|π) (module docstring)."""

    mc_samples: int = 2048
    temperature: float = 0.05
    floor: float = 1e-3
    seed: int = 12345
    ridge_rel: float = 1e-6

    def __post_init__(self):
        if self.mc_samples < 1:
            raise ValueError("mc_samples must be ≥ 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not 0 < self.floor < 1:
            raise ValueError("floor must be in (0, 1)")

    def to_dict(self) -> dict:
        return {"mc_samples": self.mc_samples, "temperature": self.temperature,
                "floor": self.floor, "seed": self.seed, "ridge_rel": self.ridge_rel}


def token_probabilities(g: MaskedGaussian, code: DataCode,
                        z: torch.Tensor | None = None) -> torch.Tensor:
    """P(argmax = t) over the output units [V] under the masked Gaussian (differentiable)."""
    V = g.dim
    if z is None:
        gen = torch.Generator(device="cpu").manual_seed(code.seed)
        z = torch.randn(code.mc_samples, V, generator=gen, dtype=g.mean.dtype).to(g.mean.device)
    ell = g.sample(z)
    p = torch.softmax(ell / code.temperature, dim=-1).mean(0)
    return (1 - code.floor) * p + code.floor / V


def data_bits(output, g: MaskedGaussian, code: DataCode,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """S(Y|π) in bits (a 0-d tensor, differentiable) for chain.output under g."""
    if output.kind == "argmax":
        p = token_probabilities(g, code, z)
        return -(torch.log2(p[output.observations])).sum()
    y = output.observations.to(g.mean.dtype)
    lam = code.ridge_rel * float(torch.diagonal(g.cov).detach().mean().clamp_min(1e-30))
    logp = multivariate_log2_pdf(y, g.mean, g.cov, ridge=lam)
    return -(logp.sum() + y.shape[0] * y.shape[1] * math.log2(output.epsilon))
