"""Benchmark 2: random ReLU MLP, closed-form propagation vs Monte Carlo at equal FLOPs.

MLP: widths [w]·6 (input w, 4 hidden layers of width w, output w), He initialisation
(W ~ N(0, 2/fan_in)), zero biases, standard normal input. Error of an estimated output mean:
relative MSE = mean over output units of (estimate − truth)² / Var(output unit). Truth: a large
Monte Carlo reference (its own relative noise 1/N_ref is reported). FLOPs count 2·m·n·k per
matrix product only (the elementwise ReLU moments and Hermite terms are O(w²) and not
counted): full propagation 2w² + 4w³ per layer (Wμ, WΣWᵀ), diagonal-only 4w² per layer
(Wμ, (W∘W)σ²), one MC sample 2w² per layer; MC gets K = ⌊FLOPs / per-sample FLOPs⌋ samples
and its error is averaged over 50 independent runs. Target: full ≥ 30× lower error than MC.

    .venv/bin/python benchmarks/bench_activation_mlp.py [--reference-samples N]
        [--backend ray [--ray-address HOST:PORT] [--workers N]]

The Monte Carlo truth runs in seeded shards (`activation.mlp.monte_carlo_moments`) here or on a
Ray cluster (`--backend ray`), with the same answer either way.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_activation_latency import bench_args, machine_info, write_result  # noqa: E402

D = torch.float64


@torch.no_grad()
def propagate(mlp, w, method: str, order: int):
    from estimators.activation.closed_form import activation_gaussian, linear_flops, \
        linear_gaussian
    diag = method == "diagonal"
    mu = torch.zeros(w, dtype=D)
    cov = torch.ones(w, dtype=D) if diag else torch.eye(w, dtype=D)
    flops = 0.0
    for i, layer in enumerate(mlp.layers):
        mu, cov = linear_gaussian(mu, cov, layer.weight, layer.bias, diagonal_only=diag)
        flops += linear_flops(*layer.weight.shape, diagonal_only=diag)
        if i < len(mlp.layers) - 1:
            mu, cov = activation_gaussian(mu, cov, "relu", order, diagonal_only=diag)
    return mu, flops


def reference(mlp, w, n, seed, backend=None):
    """Monte Carlo truth (mean, variance) of the output from n samples, in seeded shards on
    `backend` (None = this process; a Ray backend spreads the shards over its workers; the
    answer is the same either way)."""
    from estimators.activation.mlp import monte_carlo_moments

    return monte_carlo_moments(mlp, n, seed, backend)


@torch.no_grad()
def mc_error(mlp, w, k, truth, var, runs, seed):
    g = torch.Generator().manual_seed(seed)
    errs = []
    for _ in range(runs):
        y = mlp(torch.randn(k, w, generator=g, dtype=D))
        errs.append(float((((y.mean(0) - truth) ** 2) / var).mean()))
    return sum(errs) / len(errs)


def main(widths=(64, 128, 256), seeds=(0, 1, 2), n_ref=None, runs=50, backend=None,
         out_path: str | None = None) -> dict:
    torch.set_num_threads(1)
    from estimators.activation.mlp import random_mlp

    rows = []
    for w in widths:
        nref = n_ref or {64: 2_000_000, 128: 1_000_000, 256: 400_000}.get(w, 400_000)
        for seed in seeds:
            mlp = random_mlp([w] * 6, "relu", seed=seed).eval()
            t0 = time.perf_counter()
            truth, var = reference(mlp, w, nref, seed + 1000, backend)
            t_ref = time.perf_counter() - t0
            per_sample = sum(2.0 * l.weight.shape[0] * l.weight.shape[1] for l in mlp.layers)
            for method, order in (("full", 4), ("full", 1), ("diagonal", 4)):
                t0 = time.perf_counter()
                mu, flops = propagate(mlp, w, method, order)
                secs = time.perf_counter() - t0
                err = float((((mu - truth) ** 2) / var).mean())
                k = max(1, int(flops // per_sample))
                mc = mc_error(mlp, w, k, truth, var, runs, seed + 2000)
                rows.append({"width": w, "seed": seed, "method": method, "hermite_order": order,
                             "flops": flops, "seconds": secs, "rel_mse": err,
                             "mc_samples_equal_flops": k, "mc_rel_mse": mc,
                             "ratio_mc_over_method": mc / err if err > 0 else float("inf"),
                             "reference_samples": nref, "reference_rel_noise": 1.0 / nref,
                             "reference_seconds": t_ref})
    summary = []
    for w in widths:
        for method, order in (("full", 4), ("full", 1), ("diagonal", 4)):
            sel = [r for r in rows if r["width"] == w and r["method"] == method
                   and r["hermite_order"] == order]
            err = sum(r["rel_mse"] for r in sel) / len(sel)
            mc = sum(r["mc_rel_mse"] for r in sel) / len(sel)
            summary.append({"width": w, "method": method, "hermite_order": order,
                            "flops": sel[0]["flops"], "mc_samples": sel[0]["mc_samples_equal_flops"],
                            "rel_mse": err, "mc_rel_mse": mc, "ratio": mc / err})
    out = {"benchmark": "ReLU MLP output mean: propagation vs Monte Carlo at equal FLOPs",
           "setup": "widths [w]*6 (4 hidden layers), He init, zero bias, N(0, I) input",
           "target_ratio_full": 30, "summary": summary, "rows": rows,
           "machine": machine_info("cpu"),
           "reference_backend": (backend.describe() if backend is not None
                                 else {"backend": "local", "workers": 1})}
    m = out["machine"]
    print(f"machine: {m['cpu']} · {m['cores']} cores · torch {m['torch']} · 1 thread")
    print(f"{'width':>5} {'method':>9} {'order':>5} {'FLOPs':>10} {'MC K':>6} "
          f"{'rel MSE':>10} {'MC rel MSE':>11} {'MC/method':>10}")
    for s in summary:
        print(f"{s['width']:5d} {s['method']:>9} {s['hermite_order']:5d} {s['flops']:10.3g} "
              f"{s['mc_samples']:6d} {s['rel_mse']:10.3g} {s['mc_rel_mse']:11.3g} "
              f"{s['ratio']:10.1f}")
    print(f"(averages over seeds {list(seeds)}; reference MC noise 1/N_ref ≤ "
          f"{max(r['reference_rel_noise'] for r in rows):.1e}; reference on "
          f"{out['reference_backend']['backend']})")
    print(f"wrote {write_result('activation_mlp', out, out_path)}")
    return out


def cli() -> None:
    from estimators.distributed import add_backend_args, backend_from_args

    def extra(ap):
        ap.add_argument("--runs", type=int, default=50)
        ap.add_argument("--reference-samples", type=int, default=None,
                        help="Monte Carlo truth samples per MLP (default 2e6/1e6/4e5 by width)")
        add_backend_args(ap)  # where the Monte Carlo truth runs

    args = bench_args(__doc__, extra=extra)
    with backend_from_args(args) as backend:
        main(n_ref=args.reference_samples, runs=args.runs, out_path=args.out,
             backend=None if backend.name == "local" else backend)


if __name__ == "__main__":
    cli()
