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
        [--backend ray [--ray-address HOST:PORT] [--workers N]] [--sweep-dir DIR]

Runs on the sweep engine (`estimators.tailrisk.sweep`): per distribution, the temperature
tuning grid and the evaluation are each one sweep (one task per cell, here or on a Ray
cluster), streamed to JSONL files in --sweep-dir (a re-run with the same folder resumes); the
ground truth runs on the same backend. Prints the tables; writes JSON only with --out
(the repository's figures: benchmarks/results/tail_risk.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from estimators.distributed import add_backend_args, backend_from_args, model_ref  # noqa: E402
from estimators.loading import load_model  # noqa: E402
from estimators.tailrisk import Argmax, ESTIMATORS  # noqa: E402
from estimators.tailrisk.distributed import sharded_ground_truth_vector  # noqa: E402
from estimators.tailrisk.distributions import from_table  # noqa: E402
from estimators.tailrisk.sweep import run_sweep  # noqa: E402
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
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "load_average_1_5_15min": list(os.getloadavg())}


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


def sweep_spec(args, name: str, length: int, targets: list[int], methods: list,
               seed: int) -> dict:
    """A sweep over `targets` at one budget, each cell seeded `seed` + target id."""
    return {"model": args.model, "distribution": name, "length": length,
            "behaviour": "argmax", "targets": targets, "methods": methods,
            "budgets": [args.budget], "seeds": [seed], "seed_plus_target": True}


def by_label(summary: dict) -> dict:
    """{label: {target: cell record}} from a sweep's finished cells."""
    out: dict = {}
    for r in summary["records"]:
        out.setdefault(r["label"], {})[r["target"]] = r
    return out


def tune_temperatures(args, backend, name, length, tune, truth, sweep_dir) -> dict:
    """ITGIS/MHIS temperature per method: the grid value with the least IS loss on the tuning
    targets (cells seeded 1000 + target), run as one sweep."""
    methods = [{"method": m, "temperature": T, "label": f"{m} T={T}"}
               for m in ("itgis", "mhis") for T in GRID]
    s = run_sweep(sweep_spec(args, name, length, tune, methods, 1000),
                  sweep_dir / f"{name}-tune.jsonl", backend)
    cells = by_label(s)
    temps = {}
    for m in ("itgis", "mhis"):
        losses = {T: itakura_saito(truth[tune], [cells[f"{m} T={T}"][t]["estimate"] or 0.0
                                                for t in tune]) for T in GRID}
        temps[m] = min(losses, key=losses.get)
    return temps


def evaluate_methods(args, backend, name, length, evaluate, p_eval, temps, sweep_dir):
    """Every method (tuned temperatures) and variant on the evaluation targets, cells seeded
    with the target id, run as one sweep: (score rows, per-target estimates)."""
    methods = [{"method": m, **({"temperature": temps[m]} if m in temps else {}), "label": m}
               for m in ESTIMATORS]
    methods += [{"method": m, **o, "label": label} for label, (m, o) in VARIANTS.items()]
    s = run_sweep(sweep_spec(args, name, length, evaluate, methods, 0),
                  sweep_dir / f"{name}-eval.jsonl", backend)
    cells = by_label(s)
    rows = {"optimal constant": optimal_constant_scores(p_eval)}
    per_target = {}
    for m in methods:
        recs = [cells[m["label"]][t] for t in evaluate]
        ests = [r["estimate"] if r["estimate"] is not None else 0.0 for r in recs]
        sc = score(p_eval, ests)
        sc.update(seconds=sum(r["seconds"] for r in recs), calls=sum(r["calls"] for r in recs),
                  **({"temperature": temps[m["method"]]} if m["method"] in temps else {}))
        rows[m["label"]] = sc
        per_target[m["label"]] = ests
    rows["naive sampling (mc)"] = rows["mc"]
    return rows, per_target


def print_rows(dist, evaluate, p_eval, gt, t_truth, temps, rows, cps) -> None:
    base = rows["optimal constant"]["itakura_saito"]
    print(f"\n{dist.describe()}  [{len(evaluate)} eval targets, p {p_eval.min():.1e}…"
          f"{p_eval.max():.1e}; truth {gt['method']} in {t_truth:.1f}s; T: {temps}]")
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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="charlm")
    ap.add_argument("--budget", type=int, default=2 ** 11)
    ap.add_argument("--max-targets", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="fewer targets, shorter inputs")
    ap.add_argument("--band", type=float, nargs=2, default=BAND,
                    help="true-probability band of the targets (default 1e-9 1e-4)")
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    ap.add_argument("--sweep-dir", default=None,
                    help="keep the sweeps' JSONL files here (a re-run resumes from them); "
                         "default: a temporary folder")
    add_backend_args(ap)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.max_targets = 8
    with tempfile.TemporaryDirectory() as tmp, backend_from_args(args) as backend:
        sweep_dir = Path(args.sweep_dir or tmp)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        results = run_all(args, backend, sweep_dir)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")


def run_all(args, backend, sweep_dir: Path) -> dict:
    lm = load_model(args.model, "cpu")
    model, entry = lm.model, lm.zoo_entry
    vocab = entry.token_labels()
    ref = model_ref(args.model, model) if backend.name == "ray" else None
    results = {"machine": machine(), "model": args.model, "budget": args.budget,
               "floor": DEFAULT_FLOOR, "band": list(args.band), "temperature_grid": GRID,
               "backend": backend.describe(), "distributions": {}}
    t_start = time.perf_counter()
    for name, table in entry.input_distributions().items():
        full = from_table(table, model.cfg.d_vocab, name, vocab)
        length = min(LENGTHS.get(name, 4) - (1 if args.quick else 0), full.length)
        dist = full.truncated(length, keep="last")
        t0 = time.perf_counter()
        gt = sharded_ground_truth_vector(model, dist, Argmax(0), backend, ref)
        truth = np.array(gt["values"])
        t_truth = time.perf_counter() - t0
        targets = pick_targets(truth, args.max_targets, tuple(args.band))
        if len(targets) < 4:
            print(f"{name}: only {len(targets)} targets in the band; skipped")
            continue
        tune, evaluate = targets[0::2], targets[1::2]
        temps = tune_temperatures(args, backend, name, length, tune, truth, sweep_dir)
        p_eval = truth[evaluate]
        rows, per_target = evaluate_methods(args, backend, name, length, evaluate, p_eval,
                                            temps, sweep_dir)
        cps = calls_per_second(model, dist)
        results["distributions"][name] = {
            "description": dist.describe(), "n_inputs": dist.n_inputs(),
            "truth_seconds": t_truth, "truth_method": gt["method"],
            "targets_tuning": tune, "targets_eval": evaluate,
            "target_tokens_eval": [vocab[t] for t in evaluate],
            "truth_eval": p_eval.tolist(), "estimates": per_target, "temperatures": temps,
            "scores": rows, "speed": cps}
        print_rows(dist, evaluate, p_eval, gt, t_truth, temps, rows, cps)
    results["total_seconds"] = time.perf_counter() - t_start
    print(f"\nmachine: {results['machine']}\nbackend: {results['backend']}\n"
          f"total {results['total_seconds']:.0f}s")
    return results


if __name__ == "__main__":
    main()
