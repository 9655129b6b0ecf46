"""Hybrid estimator of a plain MLP's output mean: cumulant propagation + control-variate
sampling + an empirical-Bayes combination of the two.

E[f] = E[g] + E[f − βg] with g an explicit function of the input whose expectation is known
exactly:

    g(x) = C·(φ(W₁x + b₁) − E[φ(W₁x + b₁)]),   C = W_L·diag(ã_{L−1})·W_{L−1}···diag(ã_2)·W_2,

the network with its first activation kept (its pre-activation is exactly Gaussian, so E[φ] is
closed form) and every later activation replaced by its Gaussian-equivalent slope
ã_ℓ = E[φ'(z_ℓ)] (from the diagonal propagation). E[g] = 0 exactly. β_j (one per output) is
the least-squares coefficient Cov(f_j, g_j)/Var(g_j) on the same samples (the classical
regression estimator, bias O(1/n)). Variance reduction: Var(f_j)/Var(f_j − β_j g_j).

The propagation estimate μ_prop (cumulants K, bias b_j, no variance) and the control-variate
estimate μ_cv (variance v_j = Var(f_j − β_j g_j)/n, no bias up to O(1/n)) are combined per
output as w_j·μ_prop + (1 − w_j)·μ_cv with w_j = v_j/(v_j + B·Var_j), where B, the mean squared
relative bias of the propagation, is estimated over all outputs from
mean_j[((μ_cv − μ_prop)_j² − v_j)/Var_j]₊ (empirical Bayes / James–Stein-type shrinkage). With
many outputs its MSE is close to min over w of w²b² + (1 − w)²v ≤ min(b², v).

Budget split (automatic): the largest K ∈ {4, 3, 2} whose propagation costs at most half of
the budget (none if even K = 2 does not fit), the cost of C, and the rest on samples.
FLOPs: 2·m·n·k per matrix product as computed (`cumulants.Flops`), per sample Σ 2·n_out·n_in
(the forward pass) + 2·d_out·n₁ (g).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from estimators.activation.closed_form import activation_moments, hermite_coefficients
from estimators.activation.cumulants import propagate_mlp


@dataclass
class HybridResult:
    """mean [d_out]; the parts: propagation (mu_prop, K or None), control variate (mu_cv,
    its variance v [d_out], the variance reduction per output), weights w on μ_prop; FLOPs;
    samples."""

    mean: torch.Tensor
    mu_prop: torch.Tensor | None
    mu_cv: torch.Tensor
    v: torch.Tensor
    w: torch.Tensor
    variance_reduction: torch.Tensor
    flops: float
    samples: int
    cumulants: int | None
    info: dict = field(default_factory=dict)


def per_sample_flops(mlp) -> float:
    """A forward pass: Σ 2·n_out·n_in over the layers."""
    return float(sum(2 * l.weight.shape[0] * l.weight.shape[1] for l in mlp.layers))


def propagation_flops(mlp, cumulants: int, hermite_order: int = 4) -> float:
    """FLOPs of `propagate_mlp` for this MLP (run on a zero-mean identity input)."""
    d = mlp.widths[0]
    r = propagate_mlp(mlp, torch.zeros(d, dtype=torch.float64),
                      torch.eye(d, dtype=torch.float64), cumulants, hermite_order)
    return r.flops.total


@torch.no_grad()
def _control(mlp, mean, cov):
    """C [d_out, n₁] and E[φ(z₁)] [n₁]; FLOPs. Slopes from the diagonal propagation."""
    D = torch.float64
    layers = list(mlp.layers)
    W1, b1 = layers[0].weight.double(), layers[0].bias.double()
    m = W1 @ mean + b1
    var = ((W1 @ cov) * W1).sum(1)
    flops = 2.0 * W1.shape[0] * W1.shape[1] * (W1.shape[1] + 1)
    e1, v1 = activation_moments(m, var, mlp.activation)
    x_mean, x_var = e1, v1
    slopes = []
    for layer in layers[1:-1]:
        W, b = layer.weight.double(), layer.bias.double()
        zm, zv = W @ x_mean + b, (W * W) @ x_var
        flops += 4.0 * W.numel()
        slopes.append(hermite_coefficients(zm, zv, mlp.activation, 1)[0])
        x_mean, x_var = activation_moments(zm, zv, mlp.activation)
    C = layers[-1].weight.double()
    for layer, a in zip(reversed(layers[1:-1]), reversed(slopes)):
        C = (C * a) @ layer.weight.double()
        flops += 2.0 * C.shape[0] * layer.weight.shape[0] * layer.weight.shape[1]
    if len(layers) == 1:
        C = torch.eye(W1.shape[0], dtype=D)
    return C, e1, flops


@torch.no_grad()
def hybrid_estimate(mlp, input_mean: torch.Tensor, input_cov: torch.Tensor, budget_flops: float,
                    seed: int = 0, hermite_order: int = 4, cumulants: int | None = None,
                    batch: int = 65536) -> HybridResult:
    """Estimate E[mlp(x)], x ~ N(input_mean, input_cov), within `budget_flops` (module
    docstring). cumulants=None picks K automatically; 0 means no propagation (control variate
    only). ValueError when the budget does not cover the control variate and 2 samples."""
    D = torch.float64
    if getattr(mlp, "final_activation", False) or len(mlp.layers) < 2:
        raise ValueError("the hybrid estimator needs ≥ 2 layers and no final activation")
    mean, cov = input_mean.to(D), input_cov.to(D)
    C, e1, f_ctrl = _control(mlp, mean, cov)
    per = per_sample_flops(mlp) + 2.0 * C.shape[0] * C.shape[1]
    K = cumulants
    f_prop = 0.0
    if K is None:
        K = 0
        for k in (4, 3, 2):
            fk = propagation_flops(mlp, k, hermite_order)
            if fk <= budget_flops / 2:
                K, f_prop = k, fk
                break
    mu_prop = None
    if K:
        r = propagate_mlp(mlp, mean, cov, K, hermite_order)
        mu_prop, f_prop = r.output_mean, r.flops.total
    n = int((budget_flops - f_prop - f_ctrl) // per)
    if n < 2:
        raise ValueError(f"budget {budget_flops:.3g} FLOPs does not cover the propagation, the "
                         f"control variate ({f_ctrl:.3g}) and 2 samples ({per:.3g} each)")
    g = torch.Generator().manual_seed(int(seed))
    evals, evecs = torch.linalg.eigh(cov)
    L = evecs * evals.clamp_min(0).sqrt()
    layers = list(mlp.layers)
    d_out = C.shape[0]
    sf, sg = torch.zeros(d_out, dtype=D), torch.zeros(d_out, dtype=D)
    sff, sgg, sfg = (torch.zeros(d_out, dtype=D) for _ in range(3))
    done = 0
    while done < n:
        b = min(batch, n - done)
        x = mean + torch.randn(b, mean.shape[0], generator=g, dtype=D) @ L.T
        h1 = mlp_act(layers[0](x.to(layers[0].weight.dtype)).double(), mlp.activation)
        y = h1.to(layers[1].weight.dtype)
        for i, layer in enumerate(layers[1:], start=1):
            y = layer(y)
            if i < len(layers) - 1:
                y = mlp_act(y, mlp.activation)
        f = y.double()
        gv = (h1 - e1) @ C.T
        sf += f.sum(0)
        sg += gv.sum(0)
        sff += (f * f).sum(0)
        sgg += (gv * gv).sum(0)
        sfg += (f * gv).sum(0)
        done += b
    mf, mg = sf / n, sg / n
    var_f = (sff / n - mf * mf) * n / (n - 1)
    var_g = (sgg / n - mg * mg) * n / (n - 1)
    cov_fg = (sfg / n - mf * mg) * n / (n - 1)
    beta = torch.where(var_g > 0, cov_fg / var_g.clamp_min(1e-300), torch.zeros_like(var_g))
    mu_cv = mf - beta * mg  # E[g] = 0 exactly
    resid = (var_f - 2 * beta * cov_fg + beta * beta * var_g).clamp_min(0)
    v = resid / n
    vr = var_f / resid.clamp_min(1e-300)
    if mu_prop is not None:
        scale = var_f.clamp_min(1e-300)
        B = float((((mu_cv - mu_prop) ** 2 - v) / scale).mean().clamp_min(0))
        w = v / (v + B * scale)
        est = w * mu_prop + (1 - w) * mu_cv
    else:
        w = torch.zeros_like(mu_cv)
        est = mu_cv
    flops = f_prop + f_ctrl + n * per
    return HybridResult(est, mu_prop, mu_cv, v, w, vr, flops, n, K or None,
                        {"per_sample_flops": per, "propagation_flops": f_prop,
                         "control_flops": f_ctrl})


def mlp_act(x: torch.Tensor, act: str) -> torch.Tensor:
    from estimators.activation.closed_form import apply_activation

    return apply_activation(x, act)
