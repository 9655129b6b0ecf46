"""QLD: quadratic logit decomposition (background.md §5), implemented from the math.

Given n activations a_1…a_n [n, d] at the behaviour's site (for argmax: the unembedding's input,
so logits are exactly a·W_U + b_U) and the behaviour as linear inequalities a·G + h > 0:

1. Whitening. Σ = cov(a) = U diag(λ) Uᵀ. Keep the r eigen-directions with λ > tol·λ_max
   (LayerNorm makes Σ singular: a is constant along the dropped directions, exactly), and set
   A = U_r diag(√λ_r), so Σ = A Aᵀ and z = (a − μ)·U_r diag(1/√λ_r) = (a − μ)A^{−T}
   (pseudo-inverse), with cov(z) = I_r. In z the constraints are z·G_z + h_z > 0 with
   G_z = Aᵀ G and h_z = μ·G + h.
2. Direction. d = z*/‖z*‖, z* the shortest z satisfying every constraint: min ½‖z‖² s.t.
   G_zᵀ z + h_z ≥ 0, solved through its dual min_{λ≥0} ½λᵀ(G_zᵀG_z)λ + λᵀh_z, z* = G_z λ
   (accelerated projected gradient, float64). If the mean already satisfies every constraint
   (z* = 0), d is the unit normal of the tightest constraint.
3. Split z_i = α_i d + β_i with α_i = z_i·d, β_i ⊥ d; presume α and β independent.
4. Count. For a pair (β_i, α_j) the constraint u reads α_j s_u + r_{iu} > 0 with s_u = d·G_z[:,u]
   and r_{iu} = β_i·G_z[:,u] + h_{z,u}: each is affine in α, so the accepting α's form the
   intersection of half-lines, an open interval (lo_i, hi_i) (empty if some s_u = 0 has
   r_{iu} ≤ 0). With α sorted, two binary searches count the α_j inside; the estimate is
   Σ_i count_i / n² over all n² combinations.

Budget: n = budget forward calls (no gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from estimators.estimate import Cost, Estimate
from estimators.tailrisk.behaviours import Behaviour, BehaviourError, model_device
from estimators.tailrisk.common import (Clock, EstimatorConfig, ProgressFn, batches,
                                        generator, report)
from estimators.tailrisk.distributions import InputDistribution

RANK_TOL = 1e-9
S_ZERO = 1e-12
FEASIBLE_TOL = 1e-3  # relative slack accepted from the iterative dual solve
ALPHA_CHUNK_ELEMENTS = 2 ** 22  # elements of one [rows, m] float64 working tensor (32 MiB)


@dataclass
class QLDConfig(EstimatorConfig):
    dual_iters: int = 4000
    max_constraints: int = 2048  # only the tightest constraints enter the direction solve

    def __post_init__(self):
        super().__post_init__()
        if self.dual_iters < 1 or self.max_constraints < 1:
            raise ValueError("dual_iters and max_constraints must be positive")


def whiten(acts: torch.Tensor, tol: float = RANK_TOL):
    """(z [n, r], mu [d], A [d, r]) with Σ = A Aᵀ on its support and z = (a − μ)A^{−T}."""
    a = acts.double()
    mu = a.mean(0)
    X = a - mu
    cov = X.T @ X / max(a.shape[0] - 1, 1)
    lam, U = torch.linalg.eigh(cov)
    keep = lam > tol * lam.max().clamp_min(1e-300)
    lam, U = lam[keep], U[:, keep]
    A = U * lam.sqrt()
    z = (X @ U) / lam.sqrt()
    return z, mu, A


def shortest_feasible(Gz: torch.Tensor, hz: torch.Tensor, iters: int = 4000
                      ) -> tuple[torch.Tensor, bool]:
    """argmin ½‖z‖² s.t. zᵀG_z + h_z ≥ 0, via FISTA on the dual. Returns (z*, feasible)."""
    Q = Gz.T @ Gz
    L = float(torch.linalg.matrix_norm(Q, ord=2)) or 1.0
    lam = torch.zeros(Q.shape[0], dtype=Q.dtype, device=Q.device)
    y, t = lam.clone(), 1.0
    for _ in range(iters):
        new = (y - (Q @ y + hz) / L).clamp_min(0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = new + (t - 1) / t_new * (new - lam)
        lam, t = new, t_new
    z = Gz @ lam
    slack = z @ Gz + hz
    scale = hz.abs().max().clamp_min(1.0)
    return z, bool(slack.min() >= -FEASIBLE_TOL * scale)


def whitened_constraints(G: torch.Tensor, h: torch.Tensor, mu: torch.Tensor, A: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, str | None]:
    """The constraints in whitened coordinates, without those that are constant there.
    Returns (G_z [r, m'], h_z [m'], note); note is set when a constant one is violated."""
    Gz = A.T @ G  # [r, m]
    hz = mu @ G + h  # [m]
    norms = Gz.norm(dim=0)
    const = norms <= S_ZERO * norms.max().clamp_min(1e-300)
    if bool((hz[const] <= 0).any()):
        return Gz[:, :0], hz[:0], "a constraint is constant and violated on the sample's span"
    return Gz[:, ~const], hz[~const], None


def split_direction(Gz: torch.Tensor, hz: torch.Tensor, dual_iters: int = 4000,
                    max_constraints: int = 2048) -> tuple[torch.Tensor | None, dict]:
    """The unit direction d of the shortest feasible z (None if none is feasible)."""
    norms = Gz.norm(dim=0)
    if bool((hz > 0).all()):
        u = int(torch.argmin(hz / norms))
        return Gz[:, u] / norms[u], {
            "direction": "tightest constraint normal (the mean satisfies all constraints)",
            "distance": 0.0}
    idx = torch.argsort(hz / norms)[:max_constraints]
    zstar, feasible = shortest_feasible(Gz[:, idx], hz[idx], dual_iters)
    if feasible and Gz.shape[1] > len(idx):
        tol = FEASIBLE_TOL * hz.abs().max().clamp_min(1.0)
        feasible = bool(((zstar @ Gz + hz) >= -tol).all())
    if not feasible or float(zstar.norm()) == 0.0:
        return None, {"note": "no activation in the sample's span satisfies the behaviour"}
    return zstar / zstar.norm(), {"distance": float(zstar.norm())}


def alpha_intervals(beta: torch.Tensor, d: torch.Tensor, Gz: torch.Tensor, hz: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each β_i [B, r] (⊥ d), the open interval (lo_i, hi_i) of α with α·d + β_i feasible;
    an empty set comes back as lo = +inf, hi = −inf. Memory-bounded: the [B, m] working
    tensors are built `ALPHA_CHUNK_ELEMENTS // m` rows at a time (m = 50,256 constraints of a
    GPT-2 vocabulary's argmax would otherwise need B·m·8 bytes several times over)."""
    rows = max(1, ALPHA_CHUNK_ELEMENTS // max(int(Gz.shape[1]), 1))
    if beta.shape[0] > rows:
        lo = torch.empty(beta.shape[0], dtype=beta.dtype, device=beta.device)
        hi = torch.empty_like(lo)
        for i in range(0, beta.shape[0], rows):
            lo[i:i + rows], hi[i:i + rows] = alpha_intervals(beta[i:i + rows], d, Gz, hz)
        return lo, hi
    s = d @ Gz  # [m]
    r = beta @ Gz + hz  # [B, m]
    pos, neg, zero = s > S_ZERO, s < -S_ZERO, s.abs() <= S_ZERO
    bound = -r / torch.where(pos | neg, s, torch.ones_like(s))
    inf = torch.full_like(bound, torch.inf)
    lo = torch.where(pos, bound, -inf).max(1).values
    hi = torch.where(neg, bound, inf).min(1).values
    ok = ~((r <= 0) & zero).any(1) & (hi > lo)
    lo = torch.where(ok, lo, torch.full_like(lo, torch.inf))
    hi = torch.where(ok, hi, torch.full_like(hi, -torch.inf))
    return lo, hi


def qld_probability(acts: torch.Tensor, G: torch.Tensor, h: torch.Tensor,
                    dual_iters: int = 4000, max_constraints: int = 2048,
                    chunk: int = 4096) -> tuple[float, dict]:
    """The QLD estimate of P(a·G + h > 0 for every column) from samples `acts` [n, d]."""
    G = G.to(acts.device).double()
    h = h.to(acts.device).double()
    n = acts.shape[0]
    z, mu, A = whiten(acts)
    info: dict = {"samples": n, "rank": int(z.shape[1])}
    Gz, hz, note = whitened_constraints(G, h, mu, A)
    if note:
        return 0.0, {**info, "note": note}
    if Gz.shape[1] == 0:
        return 1.0, info
    d, more = split_direction(Gz, hz, dual_iters, max_constraints)
    info.update(more)
    if d is None:
        return 0.0, info
    alpha = z @ d  # [n]
    alpha_sorted = torch.sort(alpha).values
    count = 0
    for start, m in batches(n, chunk):
        beta = z[start:start + m] - alpha[start:start + m, None] * d
        lo, hi = alpha_intervals(beta, d, Gz, hz)
        # strict inequalities: count the α_j in the open interval (lo, hi)
        left = torch.searchsorted(alpha_sorted, lo.contiguous(), right=True)
        right = torch.searchsorted(alpha_sorted, hi.contiguous(), right=False)
        count += int((right - left).clamp_min(0).sum())
    return count / (n * n), info


def estimate_from_site_samples(name: str, probability, model, dist: InputDistribution,
                               behaviour: Behaviour, config: EstimatorConfig,
                               progress: ProgressFn | None = None) -> Estimate:
    """The shared shape of QLD and GLD: `config.budget` activations at the behaviour's site
    (one forward call each), then `probability(acts, G, h) -> (p, info)` for the region
    G·a ≥ h (strictly) that the behaviour's linear inequalities define. No interval."""
    if not behaviour.is_indicator:
        raise BehaviourError(f"{name} needs an indicator behaviour given by linear inequalities "
                             "(argmax, logit or direction threshold)")
    clock = Clock()
    G, h = behaviour.constraints(model)
    acts = sample_site(model, dist, behaviour, config.budget, config.seed, config.batch_size,
                       progress)
    p, info = probability(acts, G, h)
    info["samples"] = config.budget
    return Estimate(value=p, interval=None,
                    cost=Cost(calls=config.budget, seconds=clock.seconds), diagnostics=info)


def estimate_qld(model, dist: InputDistribution, behaviour: Behaviour, config: QLDConfig,
                 progress: ProgressFn | None = None) -> Estimate:
    return estimate_from_site_samples(
        "QLD", lambda acts, G, h: qld_probability(acts, G, h, config.dual_iters,
                                                  config.max_constraints),
        model, dist, behaviour, config, progress)


def sample_site(model, dist: InputDistribution, behaviour: Behaviour, n: int, seed: int,
                batch_size: int, progress: ProgressFn | None = None,
                share: float = 1.0) -> torch.Tensor:
    """n activations at the behaviour's site, last position, inputs drawn from D (n calls)."""
    from estimators.tailrisk.behaviours import site_activations

    dev = model_device(model)
    gen = generator(seed)
    out = []
    for start, m in batches(n, batch_size):
        x = dist.sample(m, gen, dev)
        out.append(site_activations(model, x, behaviour.site()).double())
        report(progress, share * (start + m) / n)
    return torch.cat(out)
