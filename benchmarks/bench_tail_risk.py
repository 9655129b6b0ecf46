"""Tail-risk estimators against exact truth on the zoo's character LM (background.md §5).

For each built-in input distribution of `charlm`, shortened to its last few positions so that
exact enumeration is cheap, the targets are the tokens whose exact probability of being the
argmax lies in [1e-9, 1e-4]. Targets are split in two halves by rank: the *tuning* half picks
the ITGIS/MHIS temperature from a small grid; every method is scored on the *evaluation* half
at the same budget of model calls (1 call = one input's forward pass; forward+backward = 2).

Scores: mean Itakura–Saito loss, unfitted and after the in-sample affine fit in log space, and
the log squared error; zero estimates floored at ε = 1e-12 (scoring.DEFAULT_FLOOR). Baselines:
the optimal constant (mean of the true probabilities, known only with the truth) and naive
sampling (MC). Also: model calls per second (forward, and forward+backward) on this machine.

    .venv/bin/python benchmarks/bench_tail_risk.py [--budget 2048] [--quick] [--out FILE]

Prints a table; writes JSON only with --out FILE (the tracked results are
benchmarks/results/tail_risk.json and tail_risk_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.loading import load_model  # noqa: E402
from estimators.tailrisk import Argmax, ESTIMATORS, run_estimator  # noqa: E402
from estimators.tailrisk.distributions import from_table  # noqa: E402
from estimators.tailrisk.ground_truth import ground_truth_vector  # noqa: E402
from estimators.tailrisk.scoring import (DEFAULT_FLOOR, itakura_saito,  # noqa: E402
                                         optimal_constant_scores, score)

# how many trailing positions of each built-in to keep (support sizes: hex 16, words 27,
# code 39 then the fixed "(")
LENGTHS = {"hex": 5, "words": 4, "code-then-delimiter": 5}
BAND = (1e-9, 1e-4)
GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# extra rows: (method, overrides) beside each method at its defaults
VARIANTS = {"activation (full mask)": ("activation", {"mask": "full"})}


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def calls_per_second(model, dist, batch=256, reps=5) -> dict:
    x = dist.sample(batch, torch.Generator().manual_seed(0), next(model.parameters()).device)
    b = Argmax(0)
    b.evaluate(model, x)
    t0 = time.perf_counter()
    for _ in range(reps):
        b.evaluate(model, x)
    fwd = batch * reps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        b.evaluate_with_grad(model, x)
    fb = 2 * batch * reps / (time.perf_counter() - t0)  # counted as 2 calls per input
    return {"forward_calls_per_s": fwd, "forward_backward_calls_per_s": fb, "batch": batch,
            "length": dist.length}


def pick_targets(p: np.ndarray, max_targets: int, band=BAND) -> list[int]:
    ok = np.nonzero((p >= band[0]) & (p <= band[1]))[0]
    ok = ok[np.argsort(p[ok])]
    if len(ok) > max_targets:
        ok = ok[np.linspace(0, len(ok) - 1, max_targets).round().astype(int)]
    return [int(i) for i in ok]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="charlm")
    ap.add_argument("--budget", type=int, default=2 ** 11)
    ap.add_argument("--max-targets", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="fewer targets, shorter inputs")
    ap.add_argument("--band", type=float, nargs=2, default=BAND,
                    help="true-probability band of the targets (default 1e-9 1e-4)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.max_targets = 8
    lm = load_model(args.model, "cpu")
    model, entry = lm.model, lm.zoo_entry
    vocab = entry.token_labels()
    results = {"machine": machine(), "model": args.model, "budget": args.budget,
               "floor": DEFAULT_FLOOR, "band": list(args.band), "temperature_grid": GRID,
               "distributions": {}}
    t_start = time.perf_counter()
    for name, table in entry.input_distributions().items():
        full = from_table(table, model.cfg.d_vocab, name, vocab)
        length = LENGTHS.get(name, 4) - (1 if args.quick else 0)
        dist = full.truncated(min(length, full.length), keep="last")
        t0 = time.perf_counter()
        gt = ground_truth_vector(model, dist, Argmax(0))
        truth = np.array(gt["values"])
        t_truth = time.perf_counter() - t0
        targets = pick_targets(truth, args.max_targets, tuple(args.band))
        if len(targets) < 4:
            print(f"{name}: only {len(targets)} targets in the band; skipped")
            continue
        tune, evaluate = targets[0::2], targets[1::2]
        temps = {}
        for method in ("itgis", "mhis"):
            losses = {}
            for T in GRID:
                est = [run_estimator(method, model, dist, Argmax(t), args.budget, seed=1000 + t,
                                     temperature=T).value for t in tune]
                losses[T] = itakura_saito(truth[tune], est)
            temps[method] = min(losses, key=losses.get)
        p_eval = truth[evaluate]
        rows = {"optimal constant": optimal_constant_scores(p_eval)}
        per_target = {}
        runs = [(m, m, {"temperature": temps[m]} if m in temps else {}) for m in ESTIMATORS]
        runs += [(name, m, dict(o)) for name, (m, o) in VARIANTS.items()]
        for row_name, method, extra in runs:
            ests, secs, calls = [], 0.0, 0
            for t in evaluate:
                e = run_estimator(method, model, dist, Argmax(t), args.budget, seed=t, **extra)
                ests.append(e.value)
                secs += e.cost.seconds
                calls += e.cost.calls
            s = score(p_eval, ests)
            s.update(seconds=secs, calls=calls, **({"temperature": temps[method]}
                                                   if method in temps else {}))
            rows[row_name] = s
            per_target[row_name] = ests
        rows["naive sampling (mc)"] = rows["mc"]
        cps = calls_per_second(model, dist)
        results["distributions"][name] = {
            "description": dist.describe(), "n_inputs": dist.n_inputs(),
            "truth_seconds": t_truth, "truth_method": gt["method"],
            "targets_tuning": tune, "targets_eval": evaluate,
            "target_tokens_eval": [vocab[t] for t in evaluate],
            "truth_eval": p_eval.tolist(), "estimates": per_target, "temperatures": temps,
            "scores": rows, "speed": cps}
        base = rows["optimal constant"]["itakura_saito"]
        print(f"\n{dist.describe()}  [{len(evaluate)} eval targets, p {p_eval.min():.1e}…"
              f"{p_eval.max():.1e}; truth {gt['method']} in {t_truth:.1f}s; "
              f"T: {temps}]")
        print(f"{'method':22s} {'IS':>10s} {'IS fitted':>10s} {'vs const':>9s} "
              f"{'logSE':>8s} {'logSE fit':>9s} {'zeros':>5s} {'sec':>6s}")
        for m, s in rows.items():
            if m == "naive sampling (mc)":
                continue
            label = "mc (naive sampling)" if m == "mc" else m
            print(f"{label:22s} {s['itakura_saito']:10.3g} {s['itakura_saito_fitted']:10.3g} "
                  f"{100 * (s['itakura_saito_fitted'] / base - 1):+8.0f}% "
                  f"{s['log_squared_error']:8.3g} {s['log_squared_error_fitted']:9.3g} "
                  f"{s['zero_estimates']:5d} {s.get('seconds', 0):6.1f}")
        print(f"speed (length {cps['length']}): {cps['forward_calls_per_s']:,.0f} forward "
              f"calls/s, {cps['forward_backward_calls_per_s']:,.0f} calls/s with backward")
    results["total_seconds"] = time.perf_counter() - t_start
    out = "nothing (pass --out FILE to save the JSON)"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        out = args.out
    print(f"\nmachine: {results['machine']}\ntotal {results['total_seconds']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
