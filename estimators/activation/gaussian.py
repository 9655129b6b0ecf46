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


class Moments:
    """A site's propagated moments: mean [d] and a covariance given densely (closed-form steps)
    or by samples [K, d] (sampled steps), from which only the entries a mask needs are formed:
    variances O(K·d), a block of b units O(K·b²), the full matrix (lazily) O(K·d²)."""

    def __init__(self, mean: torch.Tensor, cov: torch.Tensor | None = None,
                 samples: torch.Tensor | None = None, shrink: bool = True):
        if (cov is None) == (samples is None):
            raise ValueError("Moments needs exactly one of cov and samples")
        self.mean = mean
        self._cov = cov
        self.samples = samples
        self._centered = None if samples is None else samples - mean
        self._var = None
        self._shrink_on = shrink and samples is not None
        self._lambda = None

    @property
    def shrinkage(self) -> float:
        """Off-diagonal shrinkage λ of a sampled covariance toward its diagonal (Schäfer &
        Strimmer 2005, target "D"; a Ledoit–Wolf-type estimate, O(K²·d)): off-diagonal entries
        are multiplied by 1 − λ. With K samples of a d-dimensional site and K ≲ d, the raw
        sample covariance is rank-deficient and its small eigenvalues are far too small; the
        shrunk one is well conditioned. 0 for closed-form moments."""
        if not self._shrink_on:
            return 0.0
        if self._lambda is None:
            with torch.no_grad():
                c = self._centered
                k = c.shape[0]
                if k < 3:
                    self._lambda = 1.0
                    return 1.0
                s_diag = (c * c).sum(0) / (k - 1)
                gram = c @ c.T
                s_fro2 = (gram * gram).sum() / (k - 1) ** 2
                s_off2 = s_fro2 - (s_diag ** 2).sum()
                row2 = (c * c).sum(1)
                w_off2 = (row2 ** 2).sum() - (c ** 4).sum()  # Σ_k Σ_{i≠j} w_kij²
                wbar_off2 = s_off2 * ((k - 1) / k) ** 2
                var_sum = k / (k - 1) ** 3 * (w_off2 - k * wbar_off2)
                lam = float((var_sum / s_off2.clamp_min(1e-300)).clamp(0, 1))
            self._lambda = lam
        return self._lambda

    @classmethod
    def from_samples(cls, samples: torch.Tensor) -> "Moments":
        return cls(samples.mean(0), samples=samples)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n(self) -> int:
        return 0 if self.samples is None else int(self.samples.shape[0])

    @property
    def var(self) -> torch.Tensor:
        if self._var is None:
            if self._cov is not None:
                self._var = torch.diagonal(self._cov)
            else:
                self._var = (self._centered ** 2).sum(0) / max(self.n - 1, 1)
        return self._var

    def block(self, idx: torch.Tensor) -> torch.Tensor:
        if self._cov is not None:
            return self._cov[idx][:, idx]
        c = self._centered[:, idx]
        b = c.T @ c / max(self.n - 1, 1)
        return self._shrunk(0.5 * (b + b.T))

    def _shrunk(self, b: torch.Tensor) -> torch.Tensor:
        lam = self.shrinkage
        if lam == 0.0:
            return b
        eye = torch.eye(b.shape[0], dtype=b.dtype, device=b.device)
        return b * (1 - lam * (1 - eye))

    @property
    def cov(self) -> torch.Tensor:
        """The full propagated covariance [d, d] (computed on first use from samples)."""
        if self._cov is None:
            c = self._centered
            full = c.T @ c / max(self.n - 1, 1)
            self._cov = self._shrunk(0.5 * (full + full.T))
        return self._cov

    def block_flops(self, sizes: list[int]) -> float:
        """FLOPs of forming the needed entries from samples (2·K·b² per block + K·d variances)."""
        if self.samples is None:
            return 0.0
        shrink = 2.0 * self.n * self.n * self.dim if (sizes and self._shrink_on) else 0.0
        return float(self.n * self.dim + sum(2 * self.n * b * b for b in sizes) + shrink)


@dataclass
class MaskedGaussian:
    """N(mean, Σ⊙M) after the mask, stored as a diagonal plus dense blocks on the connected
    components of the mask's graph (units linked by tracked pairs), each with a factor L
    (L Lᵀ = block) for sampling. A naive mask has no blocks; the full mask one block.

    repaired: True when some block of Σ⊙M was not PSD and its negative eigenvalues were clipped
    (repairing block by block is the same as repairing the whole block-diagonal matrix).
    min_eigenvalue: the smallest eigenvalue before repair (only when repaired).
    """

    mean: torch.Tensor  # [d]
    var: torch.Tensor  # [d] the diagonal (after any repair)
    blocks: list = field(default_factory=list)  # [(idx [b], cov [b, b], factor [b, b])]
    repaired: bool = False
    min_eigenvalue: float | None = None
    flops: float = 0.0  # factorisations (b³/3 each; eigh counted as 9b³) + forming entries
    _dense: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def diagonal(self) -> bool:
        return not self.blocks

    @property
    def cov(self) -> torch.Tensor:
        """Dense Σ⊙M [d, d] (built on first use)."""
        if self._dense is None:
            c = torch.diag(self.var)
            for idx, blk, _ in self.blocks:
                c = c.index_put((idx.unsqueeze(1), idx.unsqueeze(0)), blk)
            self._dense = c
        return self._dense

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """Samples mean + z·Lᵀ for standard-normal z [K, d] (reparameterised: differentiable)."""
        x = self.mean + z * self.var.clamp_min(0).sqrt()
        for idx, _, L in self.blocks:
            x = x.index_copy(1, idx, self.mean[idx] + z[:, idx] @ L.T)
        return x


def is_diagonal_mask(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    off = mask.clone()
    off.fill_diagonal_(0)
    return not bool(off.any())


def mask_components(mask: torch.Tensor) -> list[torch.Tensor]:
    """Connected components (≥ 2 units) of the graph whose edges are the mask's non-zero
    off-diagonal entries, as index tensors (on the mask's device)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    d = mask.shape[0]
    if mask.dtype == torch.bool and bool(mask.all()):
        return [torch.arange(d, device=mask.device)]  # the full mask: one component
    nz = torch.nonzero(mask)
    nz = nz[nz[:, 0] < nz[:, 1]].cpu().numpy()
    if len(nz) == 0:
        return []
    g = coo_matrix((np.ones(len(nz)), (nz[:, 0], nz[:, 1])), shape=(d, d))
    _, labels = connected_components(g, directed=False)
    labels_t = torch.from_numpy(labels)
    counts = torch.bincount(labels_t)
    out = []
    for lab in torch.nonzero(counts >= 2).flatten().tolist():
        out.append(torch.nonzero(labels_t == lab).flatten().to(mask.device))
    return out


def mask_covariance(moments: "Moments | tuple", mask: torch.Tensor | None) -> MaskedGaussian:
    """Σ ⊙ M (diagonal kept), block by block on the mask's components, PSD-checked (Cholesky
    with a tiny jitter) and repaired (negative eigenvalues clipped) where needed.

    moments: a `Moments` (or a (mean, cov) pair). mask: None / diagonal-only gives the naive
    Gaussian; a bool [d, d] mask or real [d, d] gates (relaxed masks) is applied elementwise.
    Differentiable in the moments and in a real-valued mask.
    """
    if isinstance(moments, tuple):
        moments = Moments(moments[0], cov=moments[1])
    d = moments.dim
    mean = moments.mean
    var = moments.var.clamp_min(0)
    if mask is None:
        return MaskedGaussian(mean, var, flops=moments.block_flops([]))
    if mask.shape != (d, d):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, the site's covariance is {d}×{d}")
    comps = mask_components(mask)
    blocks = []
    repaired = False
    min_eig = None
    flops = moments.block_flops([len(c) for c in comps])
    for idx in comps:
        b = len(idx)
        m = mask[idx][:, idx].to(mean.dtype)
        eye = torch.eye(b, dtype=mean.dtype, device=mean.device)
        m = m * (1 - eye) + eye  # diagonal always tracked
        blk = moments.block(idx) * m
        blk = 0.5 * (blk + blk.T)
        jitter = JITTER_REL * torch.diagonal(blk).detach().mean().clamp_min(1e-30)
        L, info = torch.linalg.cholesky_ex(blk + jitter * eye)
        flops += b ** 3 / 3
        if int(info) != 0:  # not PSD: nearest PSD block in Frobenius norm
            evals, evecs = torch.linalg.eigh(blk)
            e_min = float(evals.min().detach())
            min_eig = e_min if min_eig is None else min(min_eig, e_min)
            evals = evals.clamp_min(0)
            blk = (evecs * evals) @ evecs.T
            blk = 0.5 * (blk + blk.T)
            L = evecs * evals.sqrt()
            repaired = True
            flops += 9 * b ** 3
            var = var.index_copy(0, idx, torch.diagonal(blk))
        blocks.append((idx, blk, L))
    return MaskedGaussian(mean, var, blocks, repaired, min_eig, flops)


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
    mean_error / var_error are RMS over units, relative to the RMS empirical std / variance
    (absolute where the real activations do not vary: extra["error_kind"], `_moment_errors`)."""

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


def _moment_errors(mu_est, mu_emp, var_est, var_emp) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(mean error, variance error, kind): RMS over units of the mean and variance errors,
    relative to the RMS empirical std and variance ("relative"). Where the real activations do
    not vary (RMS std ≤ 1e-6 · max(1, RMS |mean|): a point-mass input), a relative error would
    divide rounding noise by ~0, so both are absolute RMS errors instead ("absolute")."""
    mean_abs = ((mu_est - mu_emp) ** 2).mean().sqrt()
    var_abs = ((var_est - var_emp) ** 2).mean().sqrt()
    sd = var_emp.mean().clamp_min(0).sqrt()
    if float(sd) <= 1e-6 * max(1.0, float((mu_emp ** 2).mean().sqrt())):
        return mean_abs, var_abs, "absolute"
    return mean_abs / sd, var_abs / (var_emp ** 2).mean().sqrt(), "relative"


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
        mean_err, var_err, kind = _moment_errors(mu_est, mu_emp, torch.diagonal(cov_est), var_emp)
        mk = marginal_kl(mu_emp, var_emp, mu_est, torch.diagonal(cov_est), lam).mean()
    return SiteDistance(float(kl1), float(kl2), float(w2), float(mean_err),
                        float(var_err), lam, {"covariance_method": "ridge",
                                              "kl_marginal": float(mk), "error_kind": kind})


# ----------------------------------------------------- distances when N < dimension

def ledoit_wolf(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Ledoit–Wolf shrinkage covariance of samples [n, d]: (mean [d], Σ* [d, d], δ).

    Σ* = δ·μ·I + (1 − δ)·S with S = XᵀX / n (X centred; the maximum-likelihood covariance),
    μ = tr S / d, and the intensity δ = min(b̄², d²) / d², where d² = ‖S − μI‖²_F and
    b̄² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖²_F (Ledoit & Wolf 2004, "A well-conditioned estimator for
    large-dimensional covariance matrices", J. Multivariate Anal. 88, Lemma 3.2–3.4; Frobenius
    norms here are unnormalised, which leaves δ unchanged). O(n²·d + n·d²). Σ* is positive
    definite whenever δ > 0 and tr S > 0, so KL and W2 need no ridge even when n < d.
    δ = 0 for n < 2 or S = μI."""
    x = samples.double()
    n, d = x.shape
    mean = x.mean(0)
    c = x - mean
    s = c.T @ c / max(n, 1)
    s = 0.5 * (s + s.T)
    mu = float(torch.diagonal(s).sum()) / d
    eye = torch.eye(d, dtype=s.dtype, device=s.device)
    d2 = float(((s - mu * eye) ** 2).sum())
    if n < 2 or d2 <= 0:
        return mean, s, 0.0
    # Σ_k ‖x_k x_kᵀ − S‖² = Σ_k ‖x_k‖⁴ − n‖S‖² (since Σ_k x_k x_kᵀ = nS)
    row2 = (c * c).sum(1)
    b2_bar = float((row2 ** 2).sum() - n * (s * s).sum()) / n ** 2
    delta = min(max(b2_bar, 0.0), d2) / d2
    return mean, delta * mu * eye + (1 - delta) * s, delta


def marginal_kl(mu0: torch.Tensor, var0: torch.Tensor, mu1: torch.Tensor, var1: torch.Tensor,
                floor: float = 0.0) -> torch.Tensor:
    """Per-unit KL(N(μ0ᵢ, σ0ᵢ²) ‖ N(μ1ᵢ, σ1ᵢ²)) in nats, [d]: ½(σ0²/σ1² + (μ1−μ0)²/σ1² − 1
    + ln σ1²/σ0²), with `floor` added to both variances (the closed form for univariate
    Gaussians, e.g. Bishop, PRML, ex. 1.30 / 2.13)."""
    v0 = var0.double() + floor
    v1 = var1.double() + floor
    return 0.5 * (v0 / v1 + (mu1.double() - mu0.double()) ** 2 / v1 - 1 + torch.log(v1 / v0))


def site_distance_shrunk(mu_est: torch.Tensor, cov_est: torch.Tensor,
                         empirical: torch.Tensor, lw: tuple | None = None,
                         lw_sqrt: torch.Tensor | None = None) -> SiteDistance:
    """Estimate vs the real activations empirical [N, d] when N < d: the joint KLs and W2
    against the Ledoit–Wolf covariance of the real activations (`ledoit_wolf`, intensity δ),
    the estimate's covariance shrunk by the same δ toward its own μ·I (so the same
    regularisation acts on both sides: a sampled or fitted estimate is as rank-deficient as the
    real one; a jitter of JITTER_REL·mean variance + RIDGE_ABS only for dead units), plus the mean
    over units of the per-unit marginal KL(real ‖ est) (`marginal_kl`, Gaussian marginals,
    unbiased real variances). extra: covariance_method, shrinkage, kl_marginal,
    kl_marginal_est_emp, n_inputs, dim. lw: a cached `ledoit_wolf(empirical)`; lw_sqrt: a
    cached `psd_sqrt` of its covariance."""
    with torch.no_grad():
        mu_emp, cov_lw, delta = lw if lw is not None else ledoit_wolf(empirical)
        mu_est, cov_est = mu_est.detach().double(), cov_est.detach().double()
        jit = float(JITTER_REL * torch.diagonal(cov_lw).mean().clamp_min(0) + RIDGE_ABS)
        d = cov_est.shape[0]
        eye = torch.eye(d, dtype=cov_est.dtype, device=cov_est.device)
        cov_est_s = delta * float(torch.diagonal(cov_est).mean()) * eye + (1 - delta) * cov_est
        kl1 = gaussian_kl(mu_emp, cov_lw, mu_est, cov_est_s, jit)
        kl2 = gaussian_kl(mu_est, cov_est_s, mu_emp, cov_lw, jit)
        w2 = gaussian_w2(mu_est, cov_est_s, mu_emp, cov_lw, lw_sqrt)
        n = empirical.shape[0]
        var_emp = empirical.double().var(0, unbiased=n > 1)
        var_est = torch.diagonal(cov_est)
        mk1 = marginal_kl(mu_emp, var_emp, mu_est, var_est, jit).mean()
        mk2 = marginal_kl(mu_est, var_est, mu_emp, var_emp, jit).mean()
        mean_err, var_err, kind = _moment_errors(mu_est, mu_emp, var_est, var_emp)
    extra = {"covariance_method": "ledoit-wolf", "shrinkage": float(delta), "error_kind": kind,
             "kl_marginal": float(mk1), "kl_marginal_est_emp": float(mk2),
             "n_inputs": int(n), "dim": int(empirical.shape[1])}
    return SiteDistance(float(kl1), float(kl2), float(w2), float(mean_err), float(var_err),
                        jit, extra)


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
