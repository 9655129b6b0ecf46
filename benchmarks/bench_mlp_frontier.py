"""MLP frontier: error against FLOPs for cumulant propagation (K = 2, 3, 4), the hybrid
estimator and Monte Carlo, on random ReLU MLPs.

MLP: widths [w]·(depth+2) (input w, `depth` hidden layers of width w, output w), He
initialisation, zero biases, N(0, I) input (the issue's and the kprop paper's setup). Error:
MSE/Var = mean over output units of (estimate − truth)² / Var(output unit).

Truth: `sampled_truth`, N samples with the hybrid's control variates (no propagation; float32
forward passes, float64 sums; unbiased up to O(1/N)); its own MSE/Var noise, mean_j v_j/Var_j ≈
1/(N·VR), is printed and stored: errors below ~3× it are not resolved. `--truth-cache FILE`
keeps truths between runs (keyed by width, depth, seed). Monte Carlo at F FLOPs:
n = ⌊F / forward FLOPs⌋ samples, MSE/Var = 1/n exactly in expectation (no simulation needed).
Hybrid: mean over `--runs` seeds (1000, 1001, …: the sampler's seeds must differ from the
MLP's, or the first input is the first weight row). FLOPs: 2·m·n·k per matrix product plus the
elementwise work the propagation counts (cumulants.py).

    .venv/bin/python benchmarks/bench_mlp_frontier.py [--widths 64 128 256] [--depth 4]
        [--truth-samples N] [--truth-cache FILE.json] [--budgets 1e7 1e8 1e9 4e9] [--runs 3]
        [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

D = torch.float64
DEFAULT_TRUTH = {64: 8_000_000, 128: 8_000_000, 256: 6_000_000, 512: 1_000_000}


def rel_mse(est, truth, var) -> float:
    return float((((est - truth) ** 2) / var).mean())


@torch.no_grad()
def sampled_truth(mlp, n: int, seed: int, batch: int = 16384) -> dict:
    """E[mlp(x)], x ~ N(0, I), from n samples with the hybrid's control variates (g, the
    radial r; `hybrid._control`), forward passes in float32 and sums in float64. Returns
    {"mean", "var" (Var f per output), "noise" (each output's estimator variance), "samples",
    "variance_reduction"} as lists."""
    from estimators.activation.hybrid import _control, mlp_act

    d = mlp.widths[0]
    C, e1, _ = _control(mlp, torch.zeros(d, dtype=D), torch.eye(d, dtype=D))
    Ws = [(l.weight.float(), l.bias.float()) for l in mlp.layers]
    C32, e32 = C.float(), e1.float()
    g = torch.Generator().manual_seed(int(seed))
    names = ("f", "g", "ff", "gg", "fg", "fr", "gr")
    acc = {k: torch.zeros(C.shape[0], dtype=D) for k in names}
    sr = srr = 0.0
    done = 0
    while done < n:
        b = min(batch, n - done)
        z = torch.randn(b, d, generator=g)
        r = (z * z).sum(1) - d
        y = z
        for i, (W, bias) in enumerate(Ws):
            y = torch.addmm(bias, y, W.T)
            if i < len(Ws) - 1:
                y = mlp_act(y, mlp.activation)
            if i == 0:
                gv = (y - e32) @ C32.T
        f, gv, r = y.double(), gv.double(), r.double()
        for k, val in (("f", f), ("g", gv), ("ff", f * f), ("gg", gv * gv), ("fg", f * gv),
                       ("fr", f * r[:, None]), ("gr", gv * r[:, None])):
            acc[k] += val.sum(0)
        sr += float(r.sum())
        srr += float((r * r).sum())
        done += b
    acc["r"], acc["rr"] = sr, srr
    from estimators.activation.hybrid import _regress

    mu, v, vr, _, _ = _regress(acc, n)
    return {"mean": mu.tolist(), "var": acc["var_f"].tolist(), "noise": v.tolist(),
            "samples": n, "variance_reduction": float(vr.mean())}


def load_truth(path, w: int, depth: int, seed: int) -> dict | None:
    """A cached truth for (width, depth, seed) from `--truth-cache`, or None."""
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text()).get(f"{w}x{depth}s{seed}")


def save_truth(path, w: int, depth: int, seed: int, ref: dict) -> None:
    """Store a truth under (width, depth, seed) in the `--truth-cache` JSON (no-op without)."""
    if not path:
        return
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {}
    data[f"{w}x{depth}s{seed}"] = ref
    p.write_text(json.dumps(data) + "\n")


def run(args) -> dict:
    from estimators.activation.cumulants import propagate_mlp
    from estimators.activation.hybrid import hybrid_estimate, per_sample_flops
    from estimators.activation.mlp import random_mlp

    torch.set_num_threads(1)
    rows = []
    for w in args.widths:
        mlp = random_mlp([w] * (args.depth + 2), "relu", seed=args.seed)
        mu, cov = torch.zeros(w, dtype=D), torch.eye(w, dtype=D)
        per = per_sample_flops(mlp)
        n_truth = args.truth_samples or DEFAULT_TRUTH.get(w, 100_000)
        t0 = time.perf_counter()
        ref = load_truth(args.truth_cache, w, args.depth, args.seed)
        if ref is None or ref["samples"] < n_truth:
            ref = sampled_truth(mlp, n_truth, seed=10_000 + w + args.seed)
            save_truth(args.truth_cache, w, args.depth, args.seed, ref)
        truth, var = torch.tensor(ref["mean"], dtype=D), torch.tensor(ref["var"], dtype=D)
        noise = float((torch.tensor(ref["noise"], dtype=D) / var).mean())
        print(f"\nwidth {w}, {args.depth} hidden layers: truth {ref['samples']:,} control-variate "
              f"samples ({time.perf_counter() - t0:.0f}s; variance reduction "
              f"{ref['variance_reduction']:.2f}), truth noise MSE/Var {noise:.2e}")
        print(f"{'method':28s} {'FLOPs':>9s} {'MSE/Var':>10s} {'MC at same':>10s} "
              f"{'MC/method':>9s}")

        def emit(method, flops, err, extra=None):
            mc = per / flops
            row = {"width": w, "method": method, "flops": flops, "rel_mse": err,
                   "mc_rel_mse": mc, "truth_samples": ref["samples"], "truth_noise": noise,
                   **(extra or {})}
            rows.append(row)
            print(f"{method:28s} {flops:9.3g} {err:10.3g} {mc:10.3g} {mc / err:9.1f}")

        for K in (2, 3, 4):
            for diagonal in ((True, False) if K == 2 else (False,)):
                r = propagate_mlp(mlp, mu, cov, K, args.hermite_order, diagonal=diagonal)
                name = f"propagation K={K}" + (" naive" if diagonal else "")
                emit(name, r.flops.total, rel_mse(r.output_mean, truth, var),
                     {"matmul_flops": r.flops.matmul, "elementwise_flops": r.flops.elementwise})
        for F in args.budgets:
            errs, hs = [], []
            try:
                for s in range(args.runs):
                    h = hybrid_estimate(mlp, mu, cov, F, seed=1000 + s,
                                        hermite_order=args.hermite_order)
                    errs.append(rel_mse(h.mean, truth, var))
                    hs.append(h)
            except ValueError as e:
                print(f"hybrid at {F:.3g} FLOPs: {e}")
                continue
            emit(f"hybrid (K={hs[0].cumulants}, n={hs[0].samples})", hs[0].flops,
                 sum(errs) / len(errs),
                 {"budget": F, "runs": args.runs, "samples": hs[0].samples,
                  "cumulants": hs[0].cumulants,
                  "variance_reduction": float(hs[0].variance_reduction.mean()),
                  "weight_on_propagation": float(hs[0].w.mean())})
    return {"benchmark": "MLP output mean: cumulant propagation, hybrid, Monte Carlo",
            "setup": f"ReLU, widths [w]*{args.depth + 2}, He init, zero bias, N(0, I) input",
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--depth", type=int, default=4, help="hidden layers (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truth-samples", type=int, default=None)
    ap.add_argument("--truth-cache", default=None,
                    help="JSON file of truths by width/depth/seed (read, and written when a "
                         "truth with fewer samples than asked is recomputed)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1e7, 1e8, 1e9, 4e9])
    ap.add_argument("--runs", type=int, default=3, help="hybrid seeds per budget")
    ap.add_argument("--hermite-order", type=int, default=4)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
