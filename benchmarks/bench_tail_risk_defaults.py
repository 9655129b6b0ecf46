"""Tail-risk samplers at their defaults: the literature's table on the zoo's character LM.

Set up as in Wu & Hilton 2024 ("Estimating the probabilities of rare outputs in language
models", and its public code's `pick_random_tokens`): for each input distribution, the targets
are tokens drawn at random (seeded) among those whose exact argmax probability lies in
[1e-9, 1e-5]; every method gets the same budget; each (target, seed) is one estimate. Our zoo
`charlm` has a 97-token vocabulary, so the distributions are shortened to their last few
positions until the support can be enumerated (exact truth): `hex` keeps 5 positions (16⁵ =
2^20 inputs), so a target at 1e-5 is carried by ~10 inputs and one at 1e-6 by ~1; `words`
keeps 4 (27⁴ inputs).

Scores per (row, budget) over its targets × seeds: Itakura–Saito loss p/p̂ − ln(p/p̂) − 1
unfitted and after the affine fit in log space (ln p̂ ↦ a·ln p̂ + b fitted per row and budget
across its targets × seeds, in-sample, as in the paper), the number of zero estimates, the
squared log error; zero estimates are floored at 1e-12 before any loss (the public code has no
scoring; the floor is ours). Baseline: the optimal constant. ITGIS and MHIS report a
model-based extrapolation when no sample hits (`fallback`, fallback.py): each row counts the
runs that used it and also scores the same runs with those estimates set to 0 (what the
sampler alone returned), so one run gives both. By default both end with the refinement (pmc.py,
the last 0.9 of the calls: the greedy coordinate search of coordinate.py, then population Monte
Carlo with the known-set estimate); the rows "… refinement F" set its share and "… no
refinement" turns it off (the earlier rows, "previous default" and the reference code's form,
have it off too).

Budget convention: 1 call = one input's forward pass, a backward pass = one more call.
ITGIS/MHIS evaluate their tilted samples with gradients (2 calls each) and their reference
draws from D forward only (1 call each); `samples` is printed beside the budget. The literature
counts one forward+backward as one call, so its "2^14" is up to 2^15 of our calls.

    .venv/bin/python benchmarks/bench_tail_risk_defaults.py [--budgets 2048 4096 16384]
        [--seeds 4] [--targets 8] [--dists hex] [--rows default] [--out FILE.json]
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
ROWS = {
    "mc": ("mc", {}),
    "itgis (default)": ("itgis", {}),
    "mhis (default)": ("mhis", {}),
    "itgis previous default (no reference draws)":
        ("itgis", {"reference_fraction": 0.0, "refine_fraction": 0.0}),
    "mhis previous default (no reference draws, 32 chains, 20% burn-in)":
        ("mhis", {"reference_fraction": 0.0, "n_chains": 32, "burn_in": 0.2,
                  "refine_fraction": 0.0}),
    "mhis 32 chains, 20% burn-in, reference draws":
        ("mhis", {"n_chains": 32, "burn_in": 0.2}),
    "itgis T=1 fixed, no reference draws (reference code's form)":
        ("itgis", {"temperature": 1.0, "auto_temperature": False, "reference_fraction": 0.0,
                   "refine_fraction": 0.0}),
    "mhis T=0.67 fixed, no reference draws (reference code's form)":
        ("mhis", {"temperature": 0.67, "auto_temperature": False, "reference_fraction": 0.0,
                  "refine_fraction": 0.0}),
    "itgis, no refinement (the sampler alone)": ("itgis", {"refine_fraction": 0.0}),
    "mhis, no refinement (the sampler alone)": ("mhis", {"refine_fraction": 0.0}),
    **{f"{m}, refinement {f}": (m, {"refine_fraction": f})
       for f in (0.5, 0.65, 0.8) for m in ("itgis", "mhis")},
    "itgis, margin guide": ("itgis", {"guide": "margin"}),
    "mhis, margin guide": ("mhis", {"guide": "margin"}),
    "itgis, target-logit guide": ("itgis", {"guide": "score"}),
    "mhis, target-logit guide": ("mhis", {"guide": "score"}),
}
DEFAULT_ROWS = ["mc", "itgis (default)", "mhis (default)"]


def pick_targets(p: np.ndarray, n: int, band, seed: int = 0) -> list[int]:
    """`n` tokens drawn at random (seeded) among those with p in [band[0], band[1]]."""
    ok = np.nonzero((p >= band[0]) & (p <= band[1]))[0]
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.permutation(ok)[:n])


def score_row(p: np.ndarray, ests: list[float]) -> dict:
    from estimators.tailrisk.scoring import score

    s = score(p, ests)
    return {k: s[k] for k in ("itakura_saito", "itakura_saito_fitted", "log_squared_error",
                              "fit_is", "zero_estimates")}


def run_dist(name: str, args, model, entry) -> dict:
    from estimators.tailrisk import Argmax, run_estimator
    from estimators.tailrisk.distributions import from_table
    from estimators.tailrisk.ground_truth import ground_truth_vector
    from estimators.tailrisk.scoring import optimal_constant_scores

    vocab = entry.token_labels()
    full = from_table(entry.input_distributions()[name], model.cfg.d_vocab, name, vocab)
    dist = full.truncated(min(LENGTHS.get(name, 4), full.length), keep="last")
    t0 = time.perf_counter()
    truth = np.array(ground_truth_vector(model, dist, Argmax(0))["values"])
    truth_s = time.perf_counter() - t0
    targets = pick_targets(truth, args.targets, args.band, args.target_seed)
    p = np.repeat(truth[targets], args.seeds)
    res = {"length": dist.length, "n_inputs": dist.n_inputs(), "truth_seconds": truth_s,
           "targets": [vocab[t] for t in targets], "target_ids": targets,
           "truth": truth[targets].tolist(),
           "inputs_carrying": (truth[targets] * dist.n_inputs()).tolist(),
           "optimal_constant": optimal_constant_scores(p), "rows": {}}
    print(f"\n{dist.describe()}: {len(targets)} targets {[vocab[t] for t in targets]}, p "
          f"{[f'{x:.1e}' for x in truth[targets]]}, {args.seeds} seeds each; optimal constant "
          f"IS {res['optimal_constant']['itakura_saito']:.3g}")
    print(f"{'calls':>6} {'samples':>8} {'row':28s} {'IS':>9} {'IS fit':>7} {'zeros':>6} "
          f"{'logSE':>7} {'sec':>6} {'fallbacks':>9}")
    for budget in args.budgets:
        for label in args.rows:
            method, extra = ROWS[label]
            t0 = time.perf_counter()
            ests, samples, fb, parts = [], 0, [], []
            for t in targets:
                for seed in range(args.seeds):
                    e = run_estimator(method, model, dist, Argmax(t), budget,
                                      seed=1000 * seed + t, **extra)
                    ests.append(e.value)
                    fb.append(e.diagnostics.get("fallback"))
                    parts.append({k: e.diagnostics.get(f"fallback_{k}") for k in
                                  ("guess", "tail", "uncalibrated")}
                                 | {"bound": e.diagnostics.get("zero_hit_upper_bound"),
                                    "refine": e.diagnostics.get("refine")})
                    samples = e.diagnostics.get("samples", e.cost.calls)
            row = {"budget_calls": budget, "samples_per_run": samples, "runs": len(ests),
                   **score_row(p, ests), "seconds": time.perf_counter() - t0,
                   "estimates": ests, "fallbacks": sum(f is not None for f in fb),
                   "fallback_methods": fb, "fallback_parts": parts}
            if row["fallbacks"]:
                sampler = [0.0 if f is not None else x for x, f in zip(ests, fb)]
                row["without_fallback"] = score_row(p, sampler)
            res["rows"][f"{label} @ {budget}"] = row
            print(f"{budget:6d} {samples:8d} {label[:28]:28s} {row['itakura_saito']:9.3g} "
                  f"{row['itakura_saito_fitted']:7.3g} {row['zero_estimates']:3d}/{len(ests):<2d} "
                  f"{row['log_squared_error']:7.3g} {row['seconds']:6.1f} "
                  f"{row['fallbacks']:9d}", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=int, nargs="+", default=[2 ** 11, 2 ** 12, 2 ** 14],
                    help="budgets in model calls (default 2048 4096 16384)")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--target-seed", type=int, default=0)
    ap.add_argument("--band", type=float, nargs=2, default=[1e-9, 1e-5])
    ap.add_argument("--dists", nargs="+", default=["hex"], choices=sorted(LENGTHS))
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS),
                    metavar="ROW", help=f"rows (default {DEFAULT_ROWS}; all: {list(ROWS)})".replace("%", "%%"))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    from estimators.loading import load_model

    torch.set_num_threads(1)
    lm = load_model("charlm", "cpu")
    out = {"model": "charlm", "budgets_calls": args.budgets, "seeds": args.seeds,
           "band": args.band, "floor": 1e-12, "rows": args.rows,
           "machine": {"torch": torch.__version__, "threads": 1}, "distributions": {}}
    for name in args.dists:
        out["distributions"][name] = run_dist(name, args, lm.model, lm.zoo_entry)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
