"""Hybrid estimator of a plain MLP's output mean: cumulant propagation + control-variate
sampling + an empirical-Bayes combination of the two.

E[f] = E[g] + E[f − βg] with g an explicit function of the input whose expectation is known
exactly:

    g(x) = C·(φ(W₁x + b₁) − E[φ(W₁x + b₁)]),   C = W_L·diag(ã_{L−1})·W_{L−1}···diag(ã_2)·W_2,

the network with its first activation kept (its pre-activation is exactly Gaussian, so E[φ] is
closed form) and every later activation replaced by its Gaussian-equivalent slope
ã_ℓ = E[φ'(z_ℓ)] (from the diagonal propagation), and the radial control r = ‖ζ‖² − d for
x = μ + Lζ (the common "norm" mode every output shares; a bias-free ReLU net is 1-homogeneous).
E[g] = E[r] = 0 exactly. (β1_j, β2_j) per output are the least-squares coefficients of f_j on
(g_j, r) from the same samples (the classical regression estimator, bias O(1/n)). Variance
reduction: Var(f_j)/Var(f_j − β1_j g_j − β2_j r).

The propagation estimate μ_prop (cumulants K, bias b_j, no variance) and the control-variate
estimate μ_cv (variance v_j = Var(f_j − β_j g_j)/n, no bias up to O(1/n)) are combined per
output as w_j·μ_prop + (1 − w_j)·μ_cv with w_j = v_j/(v_j + B·Var_j), where B, the mean squared
relative bias of the propagation, is estimated from T = Σ_j (μ_cv − μ_prop)_j²/Var_j: B =
(T − E₀T − 2·sd₀T)₊/d_out, E₀ and sd₀ its mean and standard deviation were the propagation
unbiased, from the residuals' covariance across outputs (the outputs are strongly correlated,
so T fluctuates like a sum of few χ² terms). Empirical Bayes / James–Stein-type shrinkage,
conservative: the samples replace the propagation only on evidence that it is biased. With many outputs its MSE is close to
min over w of w²b² + (1 − w)²v ≤ min(b², v).

Budget split (automatic): the largest K ∈ {4, 3, 2} whose propagation fits in the budget (none
if even K = 2 does not fit), the cost of C, and the rest on samples; when fewer than
`min_samples` (256) samples remain, the propagation alone is returned. (A half-budget cap on
the propagation measured worse with the earlier term set: at width 256 and 4·10⁹ FLOPs it
picked K = 3 + samples, 4.6·10⁻⁶, where K = 4 alone gave 2.1·10⁻⁶; now K = 4 alone gives
5.0·10⁻⁷ there.)
FLOPs: 2·m·n·k per matrix product as computed (`cumulants.Flops`), per sample Σ 2·n_out·n_in
(the forward pass) + 2·d_out·n₁ (g) + 2·d_in (r), and 2·(2d_out + 1)² per sample for the
first 4096 (the residual covariance).

Seeds: `seed` seeds torch's generator for the inputs; with `random_mlp(seed=s)` and the same
s the first input would be the first weight row (an extreme pre-activation): use different
seeds for the network and the estimator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from estimators.activation.closed_form import activation_moments, hermite_coefficients
from estimators.activation.cumulants import k4_flops_lower_bound, propagate_mlp


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


def control_flops(mlp) -> float:
    """FLOPs of `_control` (counted as it computes them)."""
    layers = list(mlp.layers)
    n1, d = layers[0].weight.shape
    f = 2.0 * n1 * d * (d + 1) + sum(4.0 * l.weight.numel() for l in layers[1:-1])
    d_out = layers[-1].weight.shape[0]
    return f + sum(2.0 * d_out * l.weight.shape[0] * l.weight.shape[1] for l in layers[1:-1])


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
                    batch: int = 65536, min_samples: int = 256) -> HybridResult:
    """Estimate E[mlp(x)], x ~ N(input_mean, input_cov), within `budget_flops` (module
    docstring). cumulants=None picks K automatically; 0 means no propagation (control variate
    only). ValueError when the budget does not cover the control variate and 2 samples."""
    D = torch.float64
    if getattr(mlp, "final_activation", False) or len(mlp.layers) < 2:
        raise ValueError("the hybrid estimator needs ≥ 2 layers and no final activation")
    mean, cov = input_mean.to(D), input_cov.to(D)
    f_ctrl = control_flops(mlp)
    d_out, n1 = mlp.layers[-1].weight.shape[0], mlp.layers[0].weight.shape[0]
    per = per_sample_flops(mlp) + 2.0 * d_out * n1 + 2.0 * mlp.widths[0]
    K = cumulants
    f_prop = 0.0
    if K is None:
        K = 0
        for k in (4, 3, 2):
            if k == 4 and k4_flops_lower_bound(mlp) > budget_flops:
                continue  # K = 4 is O(width⁴): do not run it only to find it does not fit
            fk = propagation_flops(mlp, k, hermite_order)
            if fk <= budget_flops:
                K, f_prop = k, fk
                break
    mu_prop = None
    if K:
        r = propagate_mlp(mlp, mean, cov, K, hermite_order)
        mu_prop, f_prop = r.output_mean, r.flops.total
    rem, corr_per, corr_samples = budget_flops - f_prop - f_ctrl, 2.0 * (2 * d_out + 1) ** 2, 4096
    n = int(rem // (per + corr_per))
    if n > corr_samples:
        n = int((rem - corr_samples * corr_per) // per)
    if n < min_samples:
        if mu_prop is not None and cumulants is None:
            zero = torch.zeros_like(mu_prop)
            return HybridResult(mu_prop, mu_prop, mu_prop, zero, torch.ones_like(zero),
                                torch.ones_like(zero), f_prop, 0, K,
                                {"note": f"fewer than {min_samples} samples affordable after "
                                         f"the propagation: propagation only",
                                 "per_sample_flops": per, "propagation_flops": f_prop,
                                 "control_flops": 0.0})
        raise ValueError(f"budget {budget_flops:.3g} FLOPs does not cover the propagation "
                         f"({f_prop:.3g}), the control variate ({f_ctrl:.3g}) and "
                         f"{min_samples} samples ({per:.3g} each)")
    C, e1, f_ctrl = _control(mlp, mean, cov)
    acc, joint, extra_flops = _sample_stats(mlp, mean, cov, C, e1, n, seed, batch,
                                            corr_samples)
    mu_cv, v, vr, b1, b2 = _regress(acc, n)
    est, w = _combine(mu_prop, mu_cv, v, b1, b2, acc, joint, n)
    flops = f_prop + f_ctrl + n * per + extra_flops
    return HybridResult(est, mu_prop, mu_cv, v, w, vr, flops, n, K or None,
                        {"per_sample_flops": per, "propagation_flops": f_prop,
                         "control_flops": f_ctrl})


@torch.no_grad()
def _sample_stats(mlp, mean, cov, C, e1, n, seed, batch, corr_samples):
    """Sums over n samples of f, g, r and their products (per output), and the joint second
    moments of [f, g, r] over the first `corr_samples`; FLOPs of the latter."""
    D = torch.float64
    d_out = C.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    evals, evecs = torch.linalg.eigh(cov)
    L = evecs * evals.clamp_min(0).sqrt()
    layers = list(mlp.layers)
    acc = {k: torch.zeros(d_out, dtype=D) for k in ("f", "g", "ff", "gg", "fg", "fr", "gr")}
    sr = srr = 0.0
    d_z = mean.shape[0]
    joint = torch.zeros(2 * d_out + 1, 2 * d_out + 1, dtype=D)
    joint_sum = torch.zeros(2 * d_out + 1, dtype=D)
    joint_n, extra_flops = 0, 0.0
    done = 0
    while done < n:
        b = min(batch, n - done)
        z = torch.randn(b, d_z, generator=g, dtype=D)
        x = mean + z @ L.T
        r = (z * z).sum(1) - d_z  # the radial control: E = 0 exactly
        h1 = mlp_act(layers[0](x.to(layers[0].weight.dtype)).double(), mlp.activation)
        y = h1.to(layers[1].weight.dtype)
        for i, layer in enumerate(layers[1:], start=1):
            y = layer(y)
            if i < len(layers) - 1:
                y = mlp_act(y, mlp.activation)
        f = y.double()
        gv = (h1 - e1) @ C.T
        for k, val in (("f", f), ("g", gv), ("ff", f * f), ("gg", gv * gv), ("fg", f * gv),
                       ("fr", f * r[:, None]), ("gr", gv * r[:, None])):
            acc[k] += val.sum(0)
        sr += float(r.sum())
        srr += float((r * r).sum())
        if done < corr_samples:  # joint second moments for the outputs' correlation
            zz = torch.cat([f, gv, r[:, None]], 1)[: corr_samples - done]
            joint = joint + zz.T @ zz
            joint_sum = joint_sum + zz.sum(0)
            joint_n += zz.shape[0]
            extra_flops += 2.0 * zz.shape[0] * zz.shape[1] ** 2
        done += b
    acc["r"], acc["rr"] = sr, srr
    return acc, (joint, joint_sum, joint_n), extra_flops


def _regress(acc, n):
    """Least squares of f_j on (g_j, r): the control-variate estimate, its variance, the
    variance reduction and the coefficients."""
    sr, srr = acc["r"], acc["rr"]
    k1 = n / (n - 1)
    mf, mg, mr = acc["f"] / n, acc["g"] / n, sr / n
    var_f = (acc["ff"] / n - mf * mf) * k1
    var_g = (acc["gg"] / n - mg * mg) * k1
    var_r = (srr / n - mr * mr) * k1
    c_fg = (acc["fg"] / n - mf * mg) * k1
    c_fr = (acc["fr"] / n - mf * mr) * k1
    c_gr = (acc["gr"] / n - mg * mr) * k1
    det = var_g * var_r - c_gr * c_gr
    ok = det > 1e-12 * (var_g * var_r).clamp_min(1e-300)
    b1 = torch.where(ok, (var_r * c_fg - c_gr * c_fr) / det.clamp_min(1e-300),
                     c_fg / var_g.clamp_min(1e-300))
    b2 = torch.where(ok, (var_g * c_fr - c_gr * c_fg) / det.clamp_min(1e-300),
                     torch.zeros_like(b1))
    mu_cv = mf - b1 * mg - b2 * mr  # E[g] = E[r] = 0 exactly
    resid = (var_f - b1 * c_fg - b2 * c_fr).clamp_min(0)
    v = resid / n
    vr = var_f / resid.clamp_min(1e-300)
    acc["var_f"] = var_f
    return mu_cv, v, vr, b1, b2


def _combine(mu_prop, mu_cv, v, b1, b2, acc, joint, n):
    """Per-output weights on the propagation (module docstring) and the combined estimate."""
    D = torch.float64
    d_out = mu_cv.shape[0]
    var_f = acc["var_f"]
    joint, joint_sum, joint_n = joint
    if mu_prop is not None:
        scale = var_f.clamp_min(1e-300)
        # the residuals' covariance S/n (from the first ≤ 4096 samples): under "no bias",
        # T = Σ_j (μ_cv − μ_prop)_j²/Var_j has mean tr(D⁻¹S)/n and variance 2·tr((D⁻¹S)²)/n²
        jm = joint_sum / joint_n
        jc = joint / joint_n - torch.outer(jm, jm)
        A = torch.cat([torch.eye(d_out, dtype=D), -torch.diag(b1), -b2[:, None]], 1)
        S = A @ jc @ A.T  # covariance of the residuals f_j − β1_j g_j − β2_j r
        M = S / scale.unsqueeze(1) / n
        T = float((((mu_cv - mu_prop) ** 2) / scale).sum())
        T0, sdT = float(torch.trace(M)), float(2 * (M * M.T).sum()) ** 0.5
        B = max(T - T0 - 2 * sdT, 0.0) / d_out  # conservative: trust samples on evidence
        w = v / (v + B * scale).clamp_min(1e-300)
        est = w * mu_prop + (1 - w) * mu_cv
    else:
        w = torch.zeros_like(mu_cv)
        est = mu_cv
    return est, w


def mlp_act(x: torch.Tensor, act: str) -> torch.Tensor:
    from estimators.activation.closed_form import apply_activation

    return apply_activation(x, act)
