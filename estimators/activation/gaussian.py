"""Gaussians at a site: masking Σ⊙M, PSD repair, sampling factors, fitting, and distances.

Conventions
-----------
* A site's Gaussian is a mean `[d]` and a covariance `[d, d]` (float64 on CPU by default: the
  propagation compares near-identical covariances, and float32 loses the off-diagonal signal).
* `mask_covariance(cov, mask)` applies an argument's mask (bool or real gates in [0, 1]) as
  Σ ⊙ M with the diagonal always kept (variances always travel), then checks positive
  semi-definiteness with a Cholesky attempt (cheap); only when that fails are negative
  eigenvalues clipped to zero (an `eigh`, expensive) and the repair reported.
* Distances (per site, estimate vs empirical) add a ridge λ·I to both covariances, with
  λ = RIDGE_REL · mean(diag Σ_empirical) + RIDGE_ABS, so that rank-deficient empirical
  covariances (fewer samples than dimensions, dead units) give finite KLs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

RIDGE_REL = 1e-2
RIDGE_ABS = 1e-8
# Relative jitter tried before declaring a masked covariance non-PSD: rank-deficient but valid
# covariances (fitted from K < d samples) would otherwise fail a plain Cholesky.
JITTER_REL = 1e-9


@dataclass
class MaskedGaussian:
    """N(mean, cov) after the mask, with a factor L (L Lᵀ = cov) for sampling.

    repaired: True when Σ⊙M was not PSD and negative eigenvalues were clipped.
    min_eigenvalue: the smallest eigenvalue before the repair (only computed when repaired).
    """

    mean: torch.Tensor  # [d]
    cov: torch.Tensor  # [d, d]
    factor: torch.Tensor | None  # [d, d] lower-triangular (or eigen-factor after a repair)
    repaired: bool = False
    min_eigenvalue: float | None = None
    diagonal: bool = False  # True when the mask keeps only the diagonal (factor = diag(σ))
    flops: float = 0.0  # cost of the factorisation (d³/3 for Cholesky, ~9d³ for eigh)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Samples mean + z Lᵀ for standard-normal z [K, d] (reparameterised: differentiable)."""
        if self.diagonal:
            return self.mean + z * self.factor
        return self.mean + z @ self.factor.T


def is_diagonal_mask(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    if mask.dtype == torch.bool:
        off = mask.clone()
        off.fill_diagonal_(False)
        return not bool(off.any())
    off = mask.clone()
    off.fill_diagonal_(0)
    return not bool((off != 0).any())


def mask_covariance(mean: torch.Tensor, cov: torch.Tensor, mask: torch.Tensor | None,
                    need_factor: bool = True) -> MaskedGaussian:
    """Σ ⊙ M (diagonal kept), PSD-checked and repaired, with a sampling factor.

    mask: None or a diagonal-only mask gives the naive (independent) Gaussian; a bool [d, d]
    mask or a real [d, d] gate matrix (relaxed masks for gradient search) is applied
    elementwise. Differentiable in `cov` and in a real-valued `mask`.
    """
    d = cov.shape[0]
    if mask is None or (mask.dtype == torch.bool and is_diagonal_mask(mask)):
        var = torch.diagonal(cov).clamp_min(0)
        return MaskedGaussian(mean, torch.diag(var), var.sqrt() if need_factor else None,
                              diagonal=True)
    if mask.shape != (d, d):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, the site's covariance is {d}×{d}")
    m = mask.to(cov.dtype)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    m = m * (1 - eye) + eye  # diagonal always tracked
    masked = cov * m
    masked = 0.5 * (masked + masked.T)
    if not need_factor:
        return MaskedGaussian(mean, masked, None)
    scale = torch.diagonal(masked).mean().clamp_min(1e-30)
    jitter = JITTER_REL * scale
    L, info = torch.linalg.cholesky_ex(masked + jitter * eye)
    flops = d ** 3 / 3
    if int(info) == 0:
        return MaskedGaussian(mean, masked, L, flops=flops)
    # Not PSD: clip negative eigenvalues (nearest PSD matrix in Frobenius norm).
    evals, evecs = torch.linalg.eigh(masked)
    min_eig = float(evals.min())
    evals = evals.clamp_min(0)
    repaired = (evecs * evals) @ evecs.T
    repaired = 0.5 * (repaired + repaired.T)
    factor = evecs * evals.sqrt()
    return MaskedGaussian(mean, repaired, factor, repaired=True, min_eigenvalue=min_eig,
                          flops=flops + 9 * d ** 3)


# ----------------------------------------------------------------------------------- fitting

def fit_gaussian(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [d] and unbiased covariance [d, d] of samples [n, d] (differentiable)."""
    n = samples.shape[0]
    mean = samples.mean(0)
    c = samples - mean
    cov = c.T @ c / max(n - 1, 1)
    return mean, 0.5 * (cov + cov.T)


# --------------------------------------------------------------------------------- distances

def ridge_for(cov_ref: torch.Tensor) -> float:
    """The ridge λ added to both covariances before KL and W2 (module docstring)."""
    return float(RIDGE_REL * torch.diagonal(cov_ref).mean().clamp_min(0) + RIDGE_ABS)


def gaussian_kl(mu0: torch.Tensor, cov0: torch.Tensor, mu1: torch.Tensor, cov1: torch.Tensor,
                ridge: float = 0.0) -> torch.Tensor:
    """KL(N0 ‖ N1) in nats, with λ = ridge added to both covariances."""
    d = mu0.shape[0]
    eye = torch.eye(d, dtype=cov0.dtype, device=cov0.device)
    c0 = cov0 + ridge * eye
    c1 = cov1 + ridge * eye
    L1 = torch.linalg.cholesky(c1)
    L0 = torch.linalg.cholesky(c0)
    diff = (mu1 - mu0).unsqueeze(-1)
    a = torch.cholesky_solve(c0, L1)
    tr = torch.diagonal(a).sum()
    maha = (diff * torch.cholesky_solve(diff, L1)).sum()
    logdet1 = 2 * torch.log(torch.diagonal(L1)).sum()
    logdet0 = 2 * torch.log(torch.diagonal(L0)).sum()
    return 0.5 * (tr + maha - d + logdet1 - logdet0)


def psd_sqrt(cov: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def gaussian_w2(mu0: torch.Tensor, cov0: torch.Tensor, mu1: torch.Tensor, cov1: torch.Tensor,
                sqrt1: torch.Tensor | None = None) -> torch.Tensor:
    """2-Wasserstein distance between Gaussians (Bures formula):
    W2² = ‖μ0−μ1‖² + tr Σ0 + tr Σ1 − 2 tr (Σ1^½ Σ0 Σ1^½)^½.  `sqrt1` may pass a cached Σ1^½."""
    if sqrt1 is None:
        sqrt1 = psd_sqrt(cov1)
    inner = sqrt1 @ cov0 @ sqrt1
    ev = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0)
    w2sq = ((mu0 - mu1) ** 2).sum() + torch.diagonal(cov0).sum() + torch.diagonal(cov1).sum() \
        - 2 * ev.sqrt().sum()
    return w2sq.clamp_min(0).sqrt()


@dataclass
class SiteDistance:
    """Estimate vs empirical at one site. KLs in nats (ridge `ridge` on both covariances);
    mean_error / var_error are RMS over units, relative to the RMS empirical std / variance."""

    kl_emp_est: float  # KL(empirical ‖ estimate)
    kl_est_emp: float  # KL(estimate ‖ empirical)
    w2: float
    mean_error: float
    var_error: float
    ridge: float
    extra: dict = field(default_factory=dict)

    @property
    def kl(self) -> float:
        return self.kl_emp_est

    def to_dict(self) -> dict:
        return {"kl": self.kl_emp_est, "kl_emp_est": self.kl_emp_est,
                "kl_est_emp": self.kl_est_emp, "w2": self.w2, "mean_error": self.mean_error,
                "var_error": self.var_error, "ridge": self.ridge, **self.extra}


def site_distance(mu_est: torch.Tensor, cov_est: torch.Tensor, mu_emp: torch.Tensor,
                  cov_emp: torch.Tensor, emp_sqrt: torch.Tensor | None = None) -> SiteDistance:
    with torch.no_grad():
        mu_est, cov_est = mu_est.detach().double(), cov_est.detach().double()
        mu_emp, cov_emp = mu_emp.double(), cov_emp.double()
        lam = ridge_for(cov_emp)
        kl1 = gaussian_kl(mu_emp, cov_emp, mu_est, cov_est, lam)
        kl2 = gaussian_kl(mu_est, cov_est, mu_emp, cov_emp, lam)
        w2 = gaussian_w2(mu_est, cov_est, mu_emp, cov_emp,
                         None if emp_sqrt is None else emp_sqrt.double())
        var_emp = torch.diagonal(cov_emp)
        scale_sd = var_emp.mean().clamp_min(1e-30).sqrt()
        scale_var = (var_emp ** 2).mean().clamp_min(1e-60).sqrt()
        mean_err = ((mu_est - mu_emp) ** 2).mean().sqrt() / scale_sd
        var_err = ((torch.diagonal(cov_est) - var_emp) ** 2).mean().sqrt() / scale_var
    return SiteDistance(float(kl1), float(kl2), float(w2), float(mean_err), float(var_err), lam)


def multivariate_log2_pdf(y: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                          ridge: float = 0.0) -> torch.Tensor:
    """log2 N(y; mean, cov) for y [n, d] (differentiable)."""
    d = mean.shape[0]
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    L = torch.linalg.cholesky(cov + ridge * eye)
    diff = (y - mean).T  # [d, n]
    sol = torch.linalg.solve_triangular(L, diff, upper=False)
    maha = (sol ** 2).sum(0)
    logdet = 2 * torch.log(torch.diagonal(L)).sum()
    return -0.5 * (maha + logdet + d * math.log(2 * math.pi)) / math.log(2.0)
