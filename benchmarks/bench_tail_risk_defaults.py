"""Tail-risk samplers at their defaults: the literature's table on the zoo's character LM.

For built-in input distributions of `charlm` shortened to their last few positions (exact
enumeration), 4 targets whose exact argmax probability lies in a band (default 1e-9…1e-5),
each run with several seeds at a budget of model calls. Rows: naive sampling (MC); ITGIS and
MHIS at the old fixed default T = 1; ITGIS and MHIS at the new defaults (automatic
temperature, defensive mixture for ITGIS); MHIS at T = 0.2 (the reference code's best tuned
run). Scores: mean Itakura–Saito loss (unfitted, zero estimates floored at 1e-12), the number
of zero estimates out of targets × seeds, and the mean log squared error.

Budget convention: 1 call = one input's forward pass, a backward pass = one more call; ITGIS
and MHIS evaluate every input with its gradient, so N calls are N/2 samples. The literature
counts one forward+backward as one sample: its "2^14" is `--budgets 32768` here.

    .venv/bin/python benchmarks/bench_tail_risk_defaults.py [--budgets 16384 32768]
        [--seeds 3] [--dists hex] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LENGTHS = {"hex": 5, "words": 4, "code-then-delimiter": 5}
ROWS = [("mc", "mc", {}),
        ("itgis T=1 fixed (old default)", "itgis", {"temperature": 1.0,
                                                    "auto_temperature": False}),
        ("itgis auto (new default)", "itgis", {}),
        ("mhis T=1 fixed (old default)", "mhis", {"temperature": 1.0, "auto_temperature": False}),
        ("mhis T=0.2 fixed (reference tuned)", "mhis", {"temperature": 0.2,
                                                        "auto_temperature": False}),
        ("mhis auto (new default)", "mhis", {})]


def pick_targets(p: np.ndarray, n: int, band) -> list[int]:
    ok = np.nonzero((p >= band[0]) & (p <= band[1]))[0]
    ok = ok[np.argsort(p[ok])]
    if len(ok) > n:
        ok = ok[np.linspace(0, len(ok) - 1, n).round().astype(int)]
    return [int(i) for i in ok]


def run(args) -> dict:
    from estimators.loading import load_model
    from estimators.tailrisk import Argmax, run_estimator
    from estimators.tailrisk.distributions import from_table
    from estimators.tailrisk.ground_truth import ground_truth_vector
    from estimators.tailrisk.scoring import itakura_saito, log_squared_error

    torch.set_num_threads(1)
    lm = load_model("charlm", "cpu")
    model, entry = lm.model, lm.zoo_entry
    vocab = entry.token_labels()
    out = {"model": "charlm", "budgets_calls": args.budgets, "seeds": args.seeds,
           "band": args.band, "floor": 1e-12, "distributions": {}}
    for name in args.dists:
        table = entry.input_distributions()[name]
        full = from_table(table, model.cfg.d_vocab, name, vocab)
        dist = full.truncated(min(LENGTHS.get(name, 4), full.length), keep="last")
        truth = np.array(ground_truth_vector(model, dist, Argmax(0))["values"])
        targets = pick_targets(truth, args.targets, args.band)
        p = np.repeat(truth[targets], args.seeds)
        res = {"targets": targets, "truth": truth[targets].tolist(), "rows": {}}
        print(f"\n{dist.describe()}: targets {[vocab[t] for t in targets]} p "
              f"{[f'{x:.1e}' for x in truth[targets]]}, {args.seeds} seeds each")
        print(f"{'budget (calls)':>14} {'samples':>8} {'row':36s} {'IS loss':>9} {'zeros':>6} "
              f"{'logSE':>7} {'sec':>6}")
        for budget in args.budgets:
            for label, method, extra in ROWS:
                t0 = time.perf_counter()
                ests, samples = [], 0
                for t in targets:
                    for seed in range(args.seeds):
                        e = run_estimator(method, model, dist, Argmax(t), budget,
                                          seed=1000 * seed + t, **extra)
                        ests.append(e.value)
                        samples = e.diagnostics.get("samples", e.cost.calls)
                secs = time.perf_counter() - t0
                row = {"budget_calls": budget, "samples_per_run": samples,
                       "itakura_saito": itakura_saito(p, ests),
                       "zero_estimates": int(sum(v == 0 for v in ests)),
                       "runs": len(ests), "log_squared_error": log_squared_error(p, ests),
                       "seconds": secs, "estimates": ests}
                res["rows"][f"{label} @ {budget}"] = row
                print(f"{budget:14d} {samples:8d} {label:36s} {row['itakura_saito']:9.3g} "
                      f"{row['zero_estimates']:3d}/{len(ests):<2d} "
                      f"{row['log_squared_error']:7.3g} {secs:6.1f}")
        out["distributions"][name] = res
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2 ** 14],
                    help="budgets in model calls (default 16384)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--band", type=float, nargs=2, default=[1e-9, 1e-5])
    ap.add_argument("--dists", nargs="+", default=["hex"], choices=sorted(LENGTHS))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
