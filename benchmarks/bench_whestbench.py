"""Our MLP estimators scored by the WhestBench harness (PyPI `whestbench` + `flopscope`) on a
locally baked suite.

The suite: `whestbench.scoring.make_contest` with ContestSpec(width, depth, n_mlps, flop_budget,
ground_truth_samples, seed) — He-initialised bias-free ReLU MLPs x_{l+1} = relu(W_lᵀ x_l) with a
ReLU after every layer (our plain-MLP format with "final_activation": true), N(0, I) input,
ground truth = the harness's own sampler (`sample_layer_statistics`, `ground_truth_samples`
inputs; its noise ≈ avg Var / samples is printed). Scores are the harness's
(`evaluate_estimator`): final-layer MSE (raw, not divided by the variance), all-layers MSE, and
the budget-adjusted score MSE·max(0.1, C/B).

FLOPs: the harness counts the FLOPs of `flopscope.numpy` operations, so its baselines
(MeanPropagation, CovariancePropagation, Combined) are counted the harness's way. Ours run in
torch, which flopscope cannot see (it reports 0 for them); for ours the table gives our own
count (2·m·n·k per matrix product plus the elementwise work, `cumulants.py`) and the adjusted
score recomputed with it. Monte Carlo with the whole budget: n = ⌊B / (depth·2·width²)⌋ samples
through the same MLP in torch, scored against the same truth.

    .venv/bin/python benchmarks/bench_whestbench.py [--width 256] [--depth 8]
        [--n-mlps 2] [--budget 6.8e10] [--truth-samples 1000000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def to_plain_mlp(mlp):
    """A whestbench MLP as our PlainMLP (float64): Linear weight = Wᵀ, zero bias, ReLU after
    every layer."""
    from estimators.activation.mlp import PlainMLP

    net = PlainMLP([mlp.width] * (mlp.depth + 1), "relu", final_activation=True).double()
    with torch.no_grad():
        for layer, w in zip(net.layers, mlp.weights):
            layer.weight.copy_(torch.from_numpy(np.array(np.asarray(w), dtype=np.float64)).T)
            layer.bias.zero_()
    return net


def make_ours(K: int, log: dict):
    import flopscope.numpy as fnp
    from whestbench import BaseEstimator

    from estimators.activation.cumulants import propagate_mlp

    class CumulantPropagation(BaseEstimator):
        def predict(self, mlp, budget):
            net = to_plain_mlp(mlp)
            d = mlp.width
            r = propagate_mlp(net, torch.zeros(d, dtype=torch.float64),
                              torch.eye(d, dtype=torch.float64), cumulants=K)
            log.setdefault("flops", []).append(r.flops.total)
            means = torch.stack(r.layer_means).numpy().astype(np.float32)
            return fnp.asarray(means)

    return CumulantPropagation()


@torch.no_grad()
def monte_carlo(mlp, n: int, seed: int) -> np.ndarray:
    net = to_plain_mlp(mlp)
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(mlp.width, dtype=torch.float64)
    done = 0
    while done < n:
        b = min(65536, n - done)
        s += net(torch.randn(b, mlp.width, generator=g, dtype=torch.float64)).sum(0)
        done += b
    return (s / n).numpy()


def run(args) -> dict:
    from whestbench.estimators import (CombinedEstimator, CovariancePropagationEstimator,
                                       MeanPropagationEstimator)
    from whestbench.scoring import ContestSpec, evaluate_estimator, make_contest

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    spec = ContestSpec(width=args.width, depth=args.depth, n_mlps=args.n_mlps,
                       flop_budget=int(args.budget), ground_truth_samples=args.truth_samples,
                       seed=args.seed, wall_time_limit_s=None, residual_wall_time_limit_s=None,
                       predict_timeout_s=3600.0)
    t0 = time.perf_counter()
    data = make_contest(spec)
    noise = float(np.mean(data.avg_variances)) / args.truth_samples
    print(f"suite: {args.n_mlps} MLPs, width {args.width}, depth {args.depth}, budget "
          f"{args.budget:.3g} FLOPs; truth {args.truth_samples:,} harness samples in "
          f"{time.perf_counter() - t0:.0f}s (truth noise ≈ {noise:.2e} in final-layer MSE)")
    rows = {}
    print(f"{'estimator':34s} {'final MSE':>10s} {'all MSE':>10s} {'FLOPs':>9s} "
          f"{'counted by':>10s} {'adj. score':>10s}")

    def emit(name, final, all_l, flops, counter, adj):
        rows[name] = {"final_layer_mse": final, "all_layers_mse": all_l, "flops": flops,
                      "flops_counted_by": counter, "adjusted_score": adj}
        all_s = "—" if all_l is None else f"{all_l:.3g}"
        print(f"{name:34s} {final:10.3g} {all_s:>10s} {flops:9.3g} {counter:>10s} "
              f"{adj:10.3g}")

    for name, est in (("harness: mean propagation", MeanPropagationEstimator()),
                      ("harness: covariance propagation", CovariancePropagationEstimator()),
                      ("harness: combined", CombinedEstimator())):
        r = evaluate_estimator(est, data)
        emit(name, r["final_layer_mse"], r["all_layers_mse"], r["mean_effective_compute"],
             "harness", r["adjusted_final_layer_score"])
    for K in args.cumulants:
        log: dict = {}
        r = evaluate_estimator(make_ours(K, log), data)
        flops = float(np.mean(log["flops"]))
        adj = float(np.mean([m["final_layer_mse"] * max(0.1, f / args.budget)
                             for m, f in zip(r["per_mlp"], log["flops"])]))
        emit(f"ours: cumulant propagation K={K}", r["final_layer_mse"], r["all_layers_mse"],
             flops, "ours", adj)
    n = int(args.budget // (args.depth * 2 * args.width ** 2))
    mses = []
    for i, mlp in enumerate(data.mlps):
        est = monte_carlo(mlp, n, args.seed + i)
        mses.append(float(np.mean((est - np.asarray(data.final_targets[i])) ** 2)))
    emit(f"Monte Carlo, whole budget (n={n:,})", float(np.mean(mses)), None,
         n * args.depth * 2.0 * args.width ** 2, "ours", float(np.mean(mses)))
    return {"spec": {"width": args.width, "depth": args.depth, "n_mlps": args.n_mlps,
                     "flop_budget": args.budget, "ground_truth_samples": args.truth_samples,
                     "seed": args.seed}, "truth_noise_final_mse": noise, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--n-mlps", type=int, default=2)
    ap.add_argument("--budget", type=float, default=6.8e10)
    ap.add_argument("--truth-samples", type=int, default=1_000_000)
    # K=4 carries the whole fourth cumulant (O(width⁴) per layer: ~2e12 FLOPs and several GB at
    # width 256, depth 8), so it is run only when asked for
    ap.add_argument("--cumulants", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    try:
        import whestbench  # noqa: F401
    except ImportError:
        print("whestbench is not installed: pip install whestbench flopscope")
        return 2
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
