"""Activation-model tail estimate: raw vs calibrated, and its intervals' coverage, on charlm.

Targets as in `bench_tail_risk_defaults.py` (tokens drawn at random, seeded, among those whose
exact argmax probability lies in the band; distributions shortened to their last positions so
that the truth is exact). Each (target, seed) is one run of `--method activation` at the budget
(default naive mask). Reported per distribution: mean |log10(estimate / truth)| for the raw
estimate, the offset calibration (b = 1, the default) and the affine one (both refitted here
from the same run's calibration data, no extra calls), and how often each 95% interval covers
the truth. A zero estimate is floored at 1e-300 before the log.

    .venv/bin/python benchmarks/bench_act_calibration.py [--budget 2048] [--seeds 2]
        [--targets 8] [--dists hex words] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_tail_risk_defaults import LENGTHS, pick_targets  # noqa: E402


def _err(est: float, p: float) -> float:
    return abs(math.log10(max(est, 1e-300) / p))


def _covers(iv, p: float) -> bool:
    return iv is not None and iv[0] <= p <= iv[1]


def refit(diag: dict, p_raw: float, kind: str) -> dict:
    """The `kind` calibration ("offset" or "affine") refitted from a run's stored calibration
    data (the same tokens and hits the run used; no model calls)."""
    from estimators.tailrisk.calibration import calibrate, log_calibration

    c = diag.get("calibration", {})
    if len(c.get("token_ids", [])) < (2 if kind == "offset" else 4):
        return {"calibrated_estimate": None, "calibrated_interval": None}
    fit = log_calibration(torch.log(torch.tensor(c["activation_probabilities"],
                                                 dtype=torch.float64)),
                          torch.tensor(c["hits"]), diag["real_inputs"], kind)
    return calibrate(p_raw, diag.get("bootstrap"), fit)


def run_dist(name: str, args, model, entry) -> dict:
    from estimators.tailrisk import Argmax, run_estimator
    from estimators.tailrisk.distributions import from_table
    from estimators.tailrisk.ground_truth import ground_truth_vector

    vocab = entry.token_labels()
    full = from_table(entry.input_distributions()[name], model.cfg.d_vocab, name, vocab)
    dist = full.truncated(min(LENGTHS.get(name, 4), full.length), keep="last")
    truth = np.array(ground_truth_vector(model, dist, Argmax(0))["values"])
    targets = pick_targets(truth, args.targets, args.band, args.target_seed)
    runs = []
    for t in targets:
        for seed in range(args.seeds):
            e = run_estimator("activation", model, dist, Argmax(t), args.budget,
                              seed=1000 * seed + t)
            d = e.diagnostics
            off, aff = refit(d, e.value, "offset"), refit(d, e.value, "affine")
            runs.append({"target": vocab[t], "truth": float(truth[t]), "raw": e.value,
                         "raw_interval": list(e.interval) if e.interval else None,
                         "affine": aff["calibrated_estimate"],
                         "affine_interval": aff["calibrated_interval"],
                         "offset": off["calibrated_estimate"],
                         "offset_interval": off["calibrated_interval"],
                         "calibration_tokens": d.get("calibration", {}).get("tokens"),
                         "slope": d.get("calibration", {}).get("slope"),
                         "calls": e.cost.calls})
    summary = {}
    for key in ("raw", "affine", "offset"):
        ok = [r for r in runs if r[key] is not None]
        summary[key] = {
            "mean_abs_log10_error": float(np.mean([_err(r[key], r["truth"]) for r in ok])),
            "mean_log10_error": float(np.mean([math.log10(max(r[key], 1e-300) / r["truth"])
                                               for r in ok])),
            "coverage_95": float(np.mean([_covers(r[f"{key}_interval"], r["truth"])
                                          for r in ok])),
            "mean_interval_decades": float(np.mean([
                math.log10(max(r[f"{key}_interval"][1], 1e-300) /
                           max(r[f"{key}_interval"][0], 1e-300))
                for r in ok if r[f"{key}_interval"] is not None])),
            "runs": len(ok)}
    print(f"\n{dist.describe()}: {len(targets)} targets, p "
          f"{[f'{truth[t]:.1e}' for t in targets]}, {args.seeds} seeds, {args.budget} calls")
    print(f"{'':8s} {'mean|log10 err|':>16s} {'mean log10 err':>15s} {'coverage':>9s} "
          f"{'width (dec)':>11s}")
    for key, s in summary.items():
        print(f"{key:8s} {s['mean_abs_log10_error']:16.2f} {s['mean_log10_error']:15.2f} "
              f"{s['coverage_95']:9.2f} {s['mean_interval_decades']:11.2f}")
    return {"length": dist.length, "n_inputs": dist.n_inputs(), "summary": summary,
            "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=int, default=2048, help="model calls per run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--target-seed", type=int, default=0)
    ap.add_argument("--band", type=float, nargs=2, default=[1e-9, 1e-5])
    ap.add_argument("--dists", nargs="+", default=["hex", "words"], choices=sorted(LENGTHS))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from estimators.loading import load_model

    torch.set_num_threads(1)
    lm = load_model("charlm", "cpu")
    t0 = time.perf_counter()
    out = {"model": "charlm", "budget_calls": args.budget, "seeds": args.seeds,
           "band": args.band, "machine": {"torch": torch.__version__, "threads": 1},
           "distributions": {n: run_dist(n, args, lm.model, lm.zoo_entry) for n in args.dists}}
    out["seconds"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
