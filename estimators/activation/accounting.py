"""Surprise accounting for activation models: S(π) from the mask, S(Y|π) from the output site.

S(π): `CovarianceMask.description_bits` (the code is documented in masks.py), one part
"argument:<site>" per site that departs from the naive argument.

S(Y|π), one part "data:<output site>", −log2 of the probability the estimate assigns to what the
model actually did on the N real inputs (background.md §1). Two codes (`OutputSpec.kind`):

  * "continuous" (the default for every chain, logits included): the observations are the
    output site's real values y_n ∈ R^d (for a transformer: the model's logits at the read-out
    position, in nats), reported to a stated precision ε per coordinate, and coded jointly under
    the propagated (masked) Gaussian:
        bits = −Σ_n log2( N(y_n; μ, Σ⊙M + λI) · ε^d ),   λ = ε²/12 + ridge_rel·mean(diag Σ).
    ε²/12 is the variance of the rounding error of a value reported to precision ε (Sheppard's
    correction): the reported value is y + u with u uniform on the ε-cell, so its density is
    the estimate's convolved with that error, approximated by adding ε²/12 to the covariance.
    It keeps the code finite and close to a true code length (a cell's probability cannot
    exceed 1, and with the correction pdf·ε^d ≤ (6/π)^{d/2}, i.e. at most 0.47 bits below 0
    per coordinate) where the estimate is singular, as the logits of a LayerNorm model are (they
    lie in an affine subspace of dimension ≤ d_model − 1). ridge_rel (1e-6) only guards the
    Cholesky factorisation. For a transformer chain ε = `chain.LOGITS_EPSILON` = 0.01 nats
    (logits are log-probabilities up to a per-input constant), for a plain MLP the
    `epsilon` given to `mlp_chain` (default 0.01). ε shifts every argument's bits by the same
    N·d·log2(1/ε) (the ranking of arguments does not depend on it, except through λ).
    Why continuous by default: with the Gaussian estimate's mean μ and covariance equal to the
    real ones, the expected code length is N·(½·log2 det(2πeΣ) − d·log2 ε), and by Hadamard's
    inequality det Σ ≤ Π_i Σ_ii, with equality only when the outputs are uncorrelated: every
    real correlation the estimate tracks (correctly) lowers S(Y|π) by
    N/2·log2(Π_i Σ_ii / det Σ) bits. The argmax code below cannot reward that: it scores one
    categorical distribution, the marginal of the argmax over the inputs, and an estimate whose
    argmax frequencies are already right (near uniform on `induction` and `charlm`) cannot be
    improved by any covariance argument.
  * "argmax" (`chain.with_output_code(chain, "argmax")`, `--output-code argmax`; and whenever
    the observations are task labels): the observations are the model's actual argmax tokens
    (or the labels). The estimate's probability of token t is
        P(t) = (1 − α) · mean_s softmax(ℓ_s / τ)_t + α / V,
    with ℓ_s, s = 1..M, drawn from the propagated (masked) Gaussian with a fixed seed (Monte
    Carlo with common random numbers, so it is deterministic and differentiable), τ a soft-argmax
    temperature (→ the argmax frequency as τ → 0) and α a floor that keeps every token possible.
    Defaults M = 2048, τ = 0.05, α = 1e-3. Bits = −Σ_n log2 P(y_n).
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


def continuous_ridge(g: MaskedGaussian, epsilon: float, code: DataCode) -> float:
    """λ = ε²/12 + ridge_rel·mean(diag Σ) added to the covariance by the continuous code."""
    return epsilon ** 2 / 12 + code.ridge_rel * float(
        torch.diagonal(g.cov).detach().mean().clamp_min(1e-30))


def continuous_bits(y: torch.Tensor, g: MaskedGaussian, epsilon: float,
                    code: DataCode) -> torch.Tensor:
    """−Σ_n log2(N(y_n; μ, Σ + λI)·ε^d) in bits (0-d tensor, differentiable) for observations
    y [n, d] under g (module docstring)."""
    y = y.to(g.mean.dtype)
    logp = multivariate_log2_pdf(y, g.mean, g.cov, ridge=continuous_ridge(g, epsilon, code))
    return -(logp.sum() + y.shape[0] * y.shape[1] * math.log2(epsilon))


def data_bits(output, g: MaskedGaussian, code: DataCode,
              z: torch.Tensor | None = None) -> torch.Tensor:
    """S(Y|π) in bits (a 0-d tensor, differentiable) for chain.output under g."""
    if output.kind == "argmax":
        p = token_probabilities(g, code, z)
        return -(torch.log2(p[output.observations])).sum()
    return continuous_bits(output.observations, g, output.epsilon, code)
