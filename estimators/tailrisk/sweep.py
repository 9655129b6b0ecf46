"""Benchmark sweeps: a grid of methods × targets × budgets × seeds, one task per cell, on a
backend (`estimators.distributed`: this process or a Ray cluster).

    python -m estimators sweep --spec sweep.json --out results.jsonl [--backend ray ...]

Spec (JSON object; paths relative to the spec file's folder):

    {"model": "charlm",                 # zoo name or model folder (every worker loads it)
     "device": "cpu",                   # optional (Ray tasks given a GPU use "cuda")
     "distribution": "hex",             # built-in name of the zoo model or a JSON file
     "length": 4,                       # optional: keep only the last `length` positions
     "behaviour": "argmax",             # or {"kind": "sampled", "temperature": 1.0}
                                        # or {"kind": "logit", "threshold": 2.0}
     "targets": ["q", "id:12", 5],      # or {"band": [1e-9, 1e-4], "max": 8} (argmax/sampled)
     "methods": ["mc", "itgis", {"method": "itgis", "temperature": 0.3, "label": "itgis T=.3"}],
     "budgets": [512, 2048],            # model calls (1 call = one input's forward pass)
     "seeds": [0, 1],
     "seed_plus_target": false,         # true: a cell's seed is seed + target id
     "truth": {"max_exact": 16777216, "samples": 4194304, "seed": 0,
               "shard_samples": 1048576}}   # optional: ground-truth settings

Results are appended to the JSONL file as cells finish, one JSON object a line: first a
`{"kind": "truth", ...}` record, then `{"kind": "cell", "key": ..., "estimate": ..., ...}` per
cell. A cell's key is its problem (model fingerprint, distribution table, behaviour) and its
(method, overrides, target, budget, seed); a re-run skips every cell whose key is already in the
file, so an interrupted sweep resumes, and a grown grid computes only the new cells. The table
printed at the end scores each (method, budget) over its targets × seeds against the truth
(Itakura–Saito and log squared error, fitted and not: `scoring.score`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from estimators.distributed import LocalBackend, worker_model

CellHook = Callable[[dict], None]


class SweepError(ValueError):
    """A malformed spec or results file: one line naming the field."""


@dataclass
class Problem:
    """The loaded problem a sweep runs on: model, distribution, behaviour template."""

    spec: dict
    lm: Any
    dist: Any
    behaviour: dict  # behaviour dict without the target
    key: str  # hash of (model fingerprint, distribution table, behaviour)
    vocab: list[str] | None


# ------------------------------------------------------------------------------------- spec

REQUIRED = ("model", "distribution", "targets", "methods", "budgets", "seeds")
KNOWN = set(REQUIRED) | {"device", "length", "behaviour", "seed_plus_target", "truth", "name"}


def read_spec(path: str | Path) -> dict:
    """Read and check a spec file (format: module docstring); SweepError when malformed."""
    from estimators.loading import read_json

    path = Path(path)
    spec = read_json(path, "sweep spec")
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: a sweep spec is a JSON object")
    check_spec(spec)
    base = path.resolve().parent
    for field in ("model", "distribution"):  # a relative path is relative to the spec's folder
        v = spec[field]
        if isinstance(v, str) and (base / v).exists() and not Path(v).is_absolute():
            spec[field] = str(base / v)
    return spec


def check_spec(spec: dict) -> None:
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise SweepError(f"sweep spec: missing {', '.join(missing)}")
    unknown = sorted(set(spec) - KNOWN)
    if unknown:
        raise SweepError(f"sweep spec: unknown field(s) {unknown}; known: {sorted(KNOWN)}")
    for k in ("budgets", "seeds"):
        v = spec[k]
        if not (isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool)
                                                  for x in v)):
            raise SweepError(f"sweep spec: {k!r} must be a non-empty list of integers")
    if not isinstance(spec["methods"], list) or not spec["methods"]:
        raise SweepError("sweep spec: 'methods' must be a non-empty list")
    methods_of(spec)


def methods_of(spec: dict) -> list[tuple[str, str, dict]]:
    """(label, method, overrides) per entry of spec["methods"]."""
    from estimators.tailrisk.registry import ESTIMATORS

    out = []
    for m in spec["methods"]:
        if isinstance(m, str):
            m = {"method": m}
        if not isinstance(m, dict) or not isinstance(m.get("method"), str):
            raise SweepError(f"sweep spec: a method is a name or {{\"method\": name, ...}}, "
                             f"not {m!r}")
        over = {k: v for k, v in m.items() if k not in ("method", "label")}
        if m["method"] not in ESTIMATORS:
            raise SweepError(f"sweep spec: unknown method {m['method']!r}; choose one of "
                             f"{', '.join(ESTIMATORS)}")
        label = m.get("label") or (m["method"] if not over else m["method"] + " " + " ".join(
            f"{k}={v}" for k, v in sorted(over.items())))
        out.append((str(label), m["method"], over))
    labels = [o[0] for o in out]
    if len(set(labels)) != len(labels):
        raise SweepError(f"sweep spec: method labels must differ, got {labels}")
    return out


def behaviour_template(spec: dict) -> dict:
    b = spec.get("behaviour", "argmax")
    b = {"kind": b} if isinstance(b, str) else dict(b)
    if b.get("kind") not in ("argmax", "sampled", "logit"):
        raise SweepError("sweep spec: 'behaviour' kind must be argmax, sampled or logit")
    return b


def load_problem(spec: dict) -> Problem:
    from estimators.conformance import model_fingerprint
    from estimators.loading import load_model
    from estimators.tailrisk.behaviours import behaviour_from_dict
    from estimators.tailrisk.distributions import resolve_distribution

    lm = load_model(spec["model"], spec.get("device", "cpu"))
    entry = lm.zoo_entry
    vocab = entry.token_labels() if entry is not None else None
    dist = resolve_distribution(spec["distribution"], lm.model, entry, vocab)
    if spec.get("length") is not None:
        dist = dist.truncated(min(int(spec["length"]), dist.length), keep="last")
    b = behaviour_template(spec)
    behaviour_from_dict({**b, "target": 0}).validate(lm.model)
    raw = json.dumps({"model": model_fingerprint(lm.model), "dist": dist.fingerprint(),
                      "behaviour": b}, sort_keys=True)
    return Problem(spec, lm, dist, b, hashlib.sha256(raw.encode()).hexdigest()[:20], vocab)


# ------------------------------------------------------------------------------- truth, cells

def _truth_settings(spec: dict) -> dict:
    t = dict(spec.get("truth") or {})
    unknown = sorted(set(t) - {"max_exact", "samples", "seed", "shard_samples"})
    if unknown:
        raise SweepError(f"sweep spec: unknown truth field(s) {unknown}")
    return t


def resolve_targets(problem: Problem, backend, ref) -> tuple[list[int], dict, dict]:
    """(target ids, {target: true probability}, the last ground-truth result) from the spec;
    a band needs the whole vector."""
    from estimators.tailrisk.behaviours import behaviour_from_dict, parse_target
    from estimators.tailrisk.distributed import sharded_ground_truth_vector

    spec, model = problem.spec, problem.lm.model
    settings = _truth_settings(spec)
    t_spec = spec["targets"]

    def truth_vector(target: int) -> dict:
        b = behaviour_from_dict({**problem.behaviour, "target": target})
        return sharded_ground_truth_vector(model, problem.dist, b, backend, ref,
                                           max_exact=settings.get("max_exact", 2 ** 24),
                                           n_samples=settings.get("samples", 2 ** 22),
                                           seed=settings.get("seed", 0),
                                           shard_samples=settings.get("shard_samples", 2 ** 20))

    vector = problem.behaviour["kind"] in ("argmax", "sampled")
    if isinstance(t_spec, dict):
        band, most = t_spec.get("band"), t_spec.get("max", 8)
        if not vector or not (isinstance(band, list) and len(band) == 2):
            raise SweepError("sweep spec: targets {\"band\": [lo, hi], \"max\": n} needs an "
                             "argmax or sampled behaviour")
        vec = truth_vector(0)
        p = np.asarray(vec["values"])
        ok = np.nonzero((p >= band[0]) & (p <= band[1]))[0]
        ok = ok[np.argsort(p[ok], kind="stable")]
        if len(ok) > most:
            ok = ok[np.linspace(0, len(ok) - 1, most).round().astype(int)]
        targets = [int(i) for i in ok]
        if not targets:
            raise SweepError(f"sweep spec: no target's true probability lies in {band}")
        return targets, {t: float(p[t]) for t in targets}, vec
    if not isinstance(t_spec, list) or not t_spec:
        raise SweepError("sweep spec: 'targets' must be a list of tokens or {\"band\": ...}")
    targets = [parse_target(t, model, problem.vocab) for t in t_spec]
    if vector:
        vec = truth_vector(0)
        return targets, {t: float(vec["values"][t]) for t in targets}, vec
    truths, vec = {}, None
    for t in targets:
        vec = truth_vector(t)
        truths[t] = float(vec["values"][0])
    return targets, truths, vec


def cell_key(problem_key: str, method: str, over: dict, target: int, budget: int,
             seed: int) -> str:
    raw = json.dumps({"problem": problem_key, "method": method, "overrides": over,
                      "target": target, "budget": budget, "seed": seed}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def make_cells(problem: Problem, targets: list[int]) -> list[dict]:
    spec = problem.spec
    plus = bool(spec.get("seed_plus_target", False))
    cells = []
    for label, method, over in methods_of(spec):
        for t in targets:
            for budget in spec["budgets"]:
                for s in spec["seeds"]:
                    seed = s + t if plus else s
                    cells.append({"key": cell_key(problem.key, method, over, t, budget, seed),
                                  "label": label, "method": method, "overrides": over,
                                  "target": t, "budget": budget, "seed": seed})
    return cells


def sweep_cell_task(p: dict) -> dict:
    """Task: one estimator run (method, overrides, target, budget, seed) → estimate, interval,
    calls, seconds (non-finite numbers become null)."""
    from estimators.tailrisk.behaviours import behaviour_from_dict
    from estimators.tailrisk.distributed import dist_from_payload
    from estimators.tailrisk.registry import run_estimator

    model = worker_model(p["model"], p.get("preloaded"))
    dist = dist_from_payload(p["dist"])
    b = behaviour_from_dict({**p["behaviour"], "target": p["target"]})
    est = run_estimator(p["method"], model, dist, b, p["budget"], p["seed"], **p["overrides"])
    return {"estimate": _finite(est.value),
            "interval": [_finite(x) for x in est.interval] if est.interval else None,
            "calls": int(est.cost.calls), "seconds": float(est.cost.seconds)}


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------- results file

def read_results(path: Path) -> list[dict]:
    """The records of a results file; a line cut short by a crash is ignored (recomputed)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class ResultsFile:
    """Append-only JSONL, one line per record, flushed as each is written."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with path.open("a") as f:  # finish a line a crash cut short
                f.write("\n")

    def append(self, rec: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
            f.flush()


# ------------------------------------------------------------------------------------- run

def run_sweep(spec: dict, out: str | Path, backend=None, source_ref: bool = True,
              max_cells: int | None = None, on_cell: CellHook | None = None,
              progress=None) -> dict:
    """Run (or resume) a sweep; results stream to `out` (JSONL). Returns {"out", "cells",
    "computed", "skipped" (found in the file), "remaining", "complete", "targets", "truth",
    "scores" (`score_cells`), "backend", "workers", "records" (the grid's finished cells)}.

    `max_cells` stops after that many new cells (the rest wait for a re-run); `on_cell(record)`
    is called after each record is written (an exception there stops the sweep, as a crash
    would). Raises SweepError/ValueError (one line) for a bad spec."""
    from estimators.distributed import model_ref
    from estimators.tailrisk.distributed import dist_payload

    check_spec(spec)
    backend = backend or LocalBackend()
    problem = load_problem(spec)
    ref = model_ref(spec["model"], problem.lm.model, spec.get("device", "cpu")) \
        if backend.name == "ray" else None
    path = Path(out)
    records = read_results(path)
    results = ResultsFile(path)
    truth_id = hashlib.sha256(json.dumps({"problem": problem.key, "targets": spec["targets"],
                                          "truth": _truth_settings(spec)}, sort_keys=True)
                              .encode()).hexdigest()[:20]
    truth_rec = next((r for r in records if r.get("kind") == "truth"
                      and r.get("truth_id") == truth_id), None)
    if truth_rec is None:
        targets, truths, vec = resolve_targets(problem, backend, ref)
        truth_rec = {"kind": "truth", "truth_id": truth_id, "problem": problem.key,
                     "targets": targets, "truth": {str(t): truths[t] for t in targets},
                     "method": vec["method"], "n_inputs": vec["n_inputs"],
                     "distribution": problem.dist.describe()}
        results.append(truth_rec)
    targets = [int(t) for t in truth_rec["targets"]]
    cells = make_cells(problem, targets)
    done = {r["key"]: r for r in records if r.get("kind") == "cell"}
    skipped = sum(1 for c in cells if c["key"] in done)
    todo = [c for c in cells if c["key"] not in done]
    if max_cells is not None:
        todo = todo[:max(0, int(max_cells))]
    base = {"model": ref.to_dict() if ref is not None else None,
            "dist": dist_payload(problem.dist), "behaviour": problem.behaviour}
    if isinstance(backend, LocalBackend):
        base["preloaded"] = problem.lm.model
    payloads = [{**base, **{k: c[k] for k in ("method", "overrides", "target", "budget",
                                              "seed")}} for c in todo]
    computed = 0
    for i, r in backend.run(sweep_cell_task, payloads):
        c = todo[i]
        rec = {"kind": "cell", "problem": problem.key, **c, **r,
               "truth": truth_rec["truth"][str(c["target"])]}
        results.append(rec)
        done[c["key"]] = rec
        computed += 1
        if progress is not None:
            progress(computed / max(1, len(todo)))
        if on_cell is not None:
            on_cell(rec)
    remaining = sum(1 for c in cells if c["key"] not in done)
    return {"out": str(path), "cells": len(cells), "computed": computed,
            "skipped": skipped, "remaining": remaining,
            "complete": remaining == 0, "targets": targets, "truth": truth_rec["truth"],
            "scores": score_cells(cells, done, truth_rec["truth"]), **backend.describe(),
            "records": [{**done[c["key"]], "label": c["label"]} for c in cells
                        if c["key"] in done]}


def score_cells(cells: list[dict], done: dict, truth: dict) -> list[dict]:
    """One row per (method label, budget) over its finished cells (targets × seeds):
    `scoring.score` of the estimates against the truth, plus seconds and model calls; and the
    optimal-constant baseline over the targets."""
    from estimators.tailrisk.scoring import optimal_constant_scores, score

    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        if c["key"] in done:
            groups.setdefault((c["label"], c["budget"]), []).append(done[c["key"]])
    rows = []
    p_all = [truth[str(t)] for t in sorted({c["target"] for c in cells}) if truth[str(t)] > 0]
    if p_all:
        rows.append({"method": "optimal constant", "budget": None,
                     **optimal_constant_scores(p_all)})
    for (label, budget), recs in groups.items():
        recs = [r for r in recs if r["truth"] > 0]
        if not recs:
            continue
        p = [r["truth"] for r in recs]
        est = [r["estimate"] if r["estimate"] is not None else 0.0 for r in recs]
        s = score(p, est)
        rows.append({"method": label, "budget": budget, **s,
                     "seconds": sum(r["seconds"] for r in recs),
                     "calls": sum(r["calls"] for r in recs)})
    return rows


def format_table(summary: dict) -> str:
    head = (f"{'method':24s} {'budget':>7s} {'IS':>10s} {'IS fitted':>10s} {'logSE':>8s} "
            f"{'logSE fit':>9s} {'zeros':>5s} {'n':>4s} {'sec':>7s}")
    lines = [head]
    for r in summary["scores"]:
        b = "" if r["budget"] is None else str(r["budget"])
        lines.append(f"{r['method'][:24]:24s} {b:>7s} {r['itakura_saito']:10.3g} "
                     f"{r['itakura_saito_fitted']:10.3g} {r['log_squared_error']:8.3g} "
                     f"{r['log_squared_error_fitted']:9.3g} {r['zero_estimates']:5d} "
                     f"{r['n_targets']:4d} {r.get('seconds', 0.0):7.1f}")
    state = "complete" if summary["complete"] else \
        f"{summary['remaining']} cells left: re-run the same command to resume"
    lines.append(f"\n{summary['cells']} cells: {summary['computed']} computed now, "
                 f"{summary['skipped']} already in {summary['out']}; {state} "
                 f"[{summary['backend']}, {summary['workers']} workers]")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- CLI

def register(subparsers) -> None:
    from estimators.cli import add_common_json, progress_flag
    from estimators.distributed import add_backend_args

    p = subparsers.add_parser(
        "sweep", help="benchmark grid: methods x targets x budgets x seeds (resumable)",
        description="Run every cell of a sweep spec (JSON: see the README or "
                    "estimators.tailrisk.sweep) as a task, here or on a Ray cluster; results "
                    "stream to --out (JSONL) as cells finish, a re-run skips finished cells, "
                    "and the scoring table is printed at the end.")
    p.add_argument("--spec", required=True, help="sweep spec (JSON file)")
    p.add_argument("--out", required=True, help="results file (JSONL; appended, resumable)")
    p.add_argument("--max-cells", type=int, default=None,
                   help="stop after this many new cells (re-run to continue)")
    add_backend_args(p)
    progress_flag(p)
    add_common_json(p)
    p.set_defaults(func=run_sweep_cli)


def run_sweep_cli(args):
    from estimators.cli import progress_printer
    from estimators.distributed import backend_from_args

    if args.max_cells is not None and args.max_cells < 0:
        raise SweepError("--max-cells must be ≥ 0")
    spec = read_spec(args.spec)
    with backend_from_args(args) as backend:
        summary = run_sweep(spec, args.out, backend, max_cells=args.max_cells,
                            progress=progress_printer("sweep", getattr(args, "progress", None)))
    summary.pop("records")
    return summary if args.json else format_table(summary)
