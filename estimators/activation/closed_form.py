"""Closed-form moment propagation (no sampling): linear maps exactly, ReLU/GELU by moments.

For x ~ N(μ, Σ) and an elementwise φ:

* mean and variance of each φ(x_i) in closed form:
  ReLU  E = μΦ(u) + σφ(u),  E[φ²] = (μ²+σ²)Φ(u) + μσφ(u),  u = μ/σ;
  GELU (exact, x·Φ(x))  E = μΦ(v) + (σ²/s)φ(v),  s = √(1+σ²), v = μ/s;  E[φ²] by 64-node
  Gauss–Hermite quadrature (deterministic; error far below float32 resolution for the
  smooth integrand; see tests).
* off-diagonal covariances through the Hermite (Price) series of the bivariate normal:
      Cov(φ(x_i), φ(x_j)) = Σ_{k≥1} Σ_ij^k / k! · a_k(i) · a_k(j),   a_k(i) = E[φ^{(k)}(x_i)].
  order=1 is the first-order Hermite gain of the issue (ReLU: Φ(u_i)Φ(u_j)Σ_ij); higher
  orders are "or better" (default 4). Each term is a Hadamard product of PSD matrices with a
  positive weight, so every truncation is PSD; the diagonal is then set to the exact variance,
  which only adds a non-negative diagonal, so the result stays PSD.
  ReLU:  a_1 = Φ(u), a_k = σ^{1−k} He_{k−2}(−u) φ(u)  (k ≥ 2; derivatives of the density at 0).
  GELU:  a_k = ∂^k/∂μ^k E[φ(x)], from the mean formula with the Hermite-polynomial derivatives
         of Φ and φ.
All functions are torch, batched over units, and differentiable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ACTIVATIONS = ("relu", "gelu")
DEFAULT_ORDER = 4
_SQRT_2PI = math.sqrt(2 * math.pi)
_GH_NODES = 64


def _pdf(u: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * u * u) / _SQRT_2PI


def _cdf(u: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(u)


def hermite_he(n: int, x: torch.Tensor) -> list[torch.Tensor]:
    """Probabilists' Hermite polynomials He_0..He_n at x (recurrence He_{k+1} = x He_k − k He_{k−1})."""
    out = [torch.ones_like(x)]
    if n >= 1:
        out.append(x)
    for k in range(1, n):
        out.append(x * out[k] - k * out[k - 1])
    return out


def _safe_sigma(var: torch.Tensor) -> torch.Tensor:
    return var.clamp_min(1e-24).sqrt()


def apply_activation(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "relu":
        return torch.relu(x)
    if act == "gelu":
        return torch.nn.functional.gelu(x)  # exact erf form
    raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS}")


def relu_moments(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of relu(x), x ~ N(μ, var), elementwise."""
    sigma = _safe_sigma(var)
    u = (mu / sigma).clamp(-40, 40)
    cdf, pdf = _cdf(u), _pdf(u)
    mean = mu * cdf + sigma * pdf
    second = (mu * mu + var) * cdf + mu * sigma * pdf
    return mean, (second - mean * mean).clamp_min(0)


def _gauss_hermite(dtype, device):
    t, w = np.polynomial.hermite_e.hermegauss(_GH_NODES)
    return (torch.tensor(t, dtype=dtype, device=device),
            torch.tensor(w / math.sqrt(2 * math.pi), dtype=dtype, device=device))


def gelu_moments(mu: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (closed form) and variance (mean closed form, E[φ²] by Gauss–Hermite) of gelu(x)."""
    s = torch.sqrt(1 + var)
    v = mu / s
    mean = mu * _cdf(v) + var / s * _pdf(v)
    t, w = _gauss_hermite(mu.dtype, mu.device)
    x = mu.unsqueeze(-1) + _safe_sigma(var).unsqueeze(-1) * t
    second = (torch.nn.functional.gelu(x) ** 2 * w).sum(-1)
    return mean, (second - mean * mean).clamp_min(0)


def activation_moments(mu, var, act: str):
    if act == "relu":
        return relu_moments(mu, var)
    if act == "gelu":
        return gelu_moments(mu, var)
    raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS}")


def hermite_coefficients(mu: torch.Tensor, var: torch.Tensor, act: str,
                         order: int) -> list[torch.Tensor]:
    """[a_1, …, a_order], a_k = E[φ^{(k)}(x)] for x ~ N(μ, var), elementwise."""
    if order < 1:
        raise ValueError("order must be at least 1")
    if act == "relu":
        sigma = _safe_sigma(var)
        u = (mu / sigma).clamp(-40, 40)
        pdf = _pdf(u)
        coeffs = [_cdf(u)]
        he = hermite_he(max(order - 2, 0), -u)
        for k in range(2, order + 1):
            coeffs.append(sigma ** (1 - k) * he[k - 2] * pdf)
        return coeffs
    if act == "gelu":
        s = torch.sqrt(1 + var)
        v = mu / s
        pdf = _pdf(v)
        he = hermite_he(order, v)

        def d_cdf(n):  # ∂^n/∂μ^n Φ(μ/s)
            if n == 0:
                return _cdf(v)
            return s ** (-n) * (-1) ** (n - 1) * he[n - 1] * pdf

        coeffs = []
        for k in range(1, order + 1):
            d_pdf_k = s ** (-k) * (-1) ** k * he[k] * pdf
            coeffs.append(mu * d_cdf(k) + k * d_cdf(k - 1) + var / s * d_pdf_k)
        return coeffs
    raise ValueError(f"unknown activation {act!r}; choose one of {ACTIVATIONS}")


def activation_gaussian(mu: torch.Tensor, cov: torch.Tensor, act: str,
                        order: int = DEFAULT_ORDER,
                        diagonal_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Moment-matched Gaussian of φ(x), x ~ N(μ, Σ).

    diagonal_only=True takes Σ's diagonal (cov may be a [d] vector of variances then) and
    returns a [d] variance vector: the naive propagation, O(d).
    """
    var = cov if cov.dim() == 1 else torch.diagonal(cov)
    var = var.clamp_min(0)
    mean, out_var = activation_moments(mu, var, act)
    if diagonal_only:
        return mean, out_var
    coeffs = hermite_coefficients(mu, var, act, order)
    out = torch.zeros_like(cov)
    power = torch.ones_like(cov)
    fact = 1.0
    for k, a in enumerate(coeffs, start=1):
        power = power * cov
        fact *= k
        out = out + power * (a.unsqueeze(1) * a.unsqueeze(0)) / fact
    d = out.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    out = out * (1 - eye) + torch.diag(out_var)
    return mean, 0.5 * (out + out.T)


def linear_gaussian(mu: torch.Tensor, cov: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None,
                    diagonal_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact: y = W x + b has mean Wμ + b and covariance W Σ Wᵀ (weight [out, in]).
    diagonal_only: cov is a [in] variance vector (independent inputs); returns [out] variances."""
    mean = weight @ mu
    if bias is not None:
        mean = mean + bias
    if diagonal_only:
        var = cov if cov.dim() == 1 else torch.diagonal(cov)
        return mean, (weight * weight) @ var
    out = weight @ cov @ weight.T
    return mean, 0.5 * (out + out.T)


def linear_flops(n_out: int, n_in: int, diagonal_only: bool) -> float:
    """FLOPs of `linear_gaussian` counted as 2·m·n·k per matrix product."""
    if diagonal_only:
        return 2.0 * n_out * n_in * 2  # W μ and (W∘W) σ²
    return 2.0 * n_out * n_in + 2.0 * n_out * n_in * n_in + 2.0 * n_out * n_in * n_out
