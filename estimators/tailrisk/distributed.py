"""Ground truth split into tasks for a backend (`estimators.distributed`: this process or Ray).

Exact enumeration: the support, in mixed-radix order, is cut into contiguous index ranges of
`EXACT_SHARD_CHUNKS` chunks; each task returns its per-chunk terms Σ D(x)·value(x) (float64) and
the driver adds every term in index order, exactly as `ground_truth.exact` does in one process,
so the result equals the local one bit for bit (same device and torch build).

Sampling: N samples are cut into shards of a fixed size (`shard_samples`, default 2^20; the last
shard smaller); shard i draws its inputs with seed `distributed.shard_seed(seed, i)`. The result
depends on (N, seed, shard size) only, never on the number of workers or their finishing order.
Counts of an indicator behaviour are integers and are added exactly (int64); the interval is
Wilson's score interval (default) or Clopper–Pearson's exact interval, at 95%, as stated in the
result's `interval_method`. For the expected sampling probability (not an indicator) the
interval is p̂ ± 1.96·√(p̂(1−p̂)/N) (a bound: Var ≤ p(1−p) for values in [0, 1]).

The result is cached (JSON under `ground_truth.cache_dir()`, keyed by
`conformance.model_fingerprint`, the distribution table, the behaviour and the mode), written
once, by the driver, after every task has finished.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch

from estimators import conformance
from estimators.conformance import model_fingerprint
from estimators.distributed import LocalBackend, shard_seed, shard_sizes, worker_model
from estimators.tailrisk.behaviours import behaviour_from_dict
from estimators.tailrisk.common import (Clock, ProgressFn, clopper_pearson_interval, report,
                                        wilson_interval)
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.ground_truth import (CACHE_VERSION, DEFAULT_SAMPLES, MAX_EXACT_INPUTS,
                                              _read_cache, _write_cache, behaviour_key,
                                              bounded_chunk, cache_dir,
                                              exact_range, sampled, vector_behaviour)

DEFAULT_SHARD_SAMPLES = 2 ** 20
EXACT_SHARD_CHUNKS = 16
INTERVALS = ("wilson", "clopper-pearson")


# ------------------------------------------------------------------------------ task payloads

def dist_payload(dist: InputDistribution) -> dict:
    return {"probs": dist.probs.numpy().copy(), "name": dist.name}


def dist_from_payload(d: dict) -> InputDistribution:
    """The driver's table, bit for bit (the constructor's renormalisation is undone)."""
    t = torch.tensor(np.array(d["probs"], dtype=np.float64))
    dist = InputDistribution(t.clone(), d["name"])
    dist.probs = t
    return dist


def _problem(p: dict):
    model = worker_model(p["model"], p.get("preloaded"))
    return model, dist_from_payload(p["dist"]), behaviour_from_dict(p["behaviour"])


def exact_shard_task(p: dict) -> np.ndarray:
    """Task: the per-chunk terms of inputs p["start"]…p["stop"]−1: [chunks, V] or [chunks]."""
    model, dist, b = _problem(p)
    parts = exact_range(model, dist, b, p["start"], p["stop"], p["chunk"])
    return torch.stack(parts).numpy()


def sampled_shard_task(p: dict) -> np.ndarray:
    """Task: the sum of the behaviour's value over p["n"] inputs drawn with seed p["seed"]
    ([V] for argmax/sampled-probability behaviours, else [1]), float64."""
    model, dist, b = _problem(p)
    _, sums = sampled(model, dist, b, p["n"], p["seed"], p["chunk"])
    return sums.reshape(-1).numpy()


def _base_payload(backend, model, ref, dist, behaviour) -> dict:
    p = {"model": ref.to_dict() if ref is not None else None, "dist": dist_payload(dist),
         "behaviour": behaviour.to_dict()}
    if isinstance(backend, LocalBackend):
        p["preloaded"] = model
    elif ref is None:
        raise ValueError("the ray backend needs the model by zoo name or folder (a ModelRef), "
                         "so that every worker can load it")
    return p


# ---------------------------------------------------------------------------------- planning

def exact_payloads(base: dict, n_inputs: int, chunk: int) -> list[dict]:
    span = chunk * EXACT_SHARD_CHUNKS
    return [{**base, "start": s, "stop": min(s + span, n_inputs), "chunk": chunk}
            for s in range(0, n_inputs, span)]


def sampled_payloads(base: dict, n: int, seed: int, shard: int, chunk: int) -> list[dict]:
    return [{**base, "n": m, "seed": shard_seed(seed, i), "chunk": chunk}
            for i, m in enumerate(shard_sizes(n, shard))]


def _fold_in_order(backend, fn, payloads: list[dict], fold, progress) -> None:
    """Run the tasks on `backend` and pass each result to `fold` in index order, as soon as
    every earlier one has arrived (only results that finished early are held in memory)."""
    held, nxt = {}, 0
    for k, (i, r) in enumerate(backend.run(fn, payloads)):
        held[i] = r
        while nxt in held:
            fold(held.pop(nxt))
            nxt += 1
        report(progress, (k + 1) / len(payloads))


def _key(model, dist, behaviour, mode: str) -> str:
    raw = json.dumps({"v": CACHE_VERSION, "engine": "sharded", "model": model_fingerprint(model),
                      "dist": dist.fingerprint(), "behaviour": behaviour_key(behaviour),
                      "mode": mode},
                     sort_keys=True)
    return "sharded-" + hashlib.sha256(raw.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------- front doors

def sharded_ground_truth_vector(model, dist: InputDistribution, behaviour, backend=None,
                                ref=None, max_exact: int = MAX_EXACT_INPUTS,
                                n_samples: int = DEFAULT_SAMPLES, seed: int = 0,
                                force_samples: int | None = None,
                                shard_samples: int = DEFAULT_SHARD_SAMPLES, chunk: int = 8192,
                                use_cache: bool = True, progress: ProgressFn | None = None
                                ) -> dict:
    """Ground truth for every target at once (argmax / sampled probability) or for the one
    behaviour, on `backend` (default: this process).

    Exact when D's support has at most `max_exact` inputs and `force_samples` is None; else
    sampled with `force_samples` or `n_samples` inputs in shards of `shard_samples`.
    `ref` (`distributed.ModelRef`) tells Ray workers how to load the model.
    Returns {"values": [V] or [1] (probabilities), "counts": [V] or [1] (sampled; integers for
    indicators), "method": "exact"|"sampled", "n_inputs", "shards", "shard_samples",
    "seconds", "cached"}. Raises ValueError (one line) for bad sizes or a model a worker
    cannot load."""
    backend = backend or LocalBackend()
    behaviour.validate(model)
    n_inputs = dist.n_inputs()
    if min(max_exact, n_samples, shard_samples, chunk) < 1 or (force_samples or 1) < 1:
        raise ValueError("sample counts, --max-exact, shard and chunk sizes must be positive")
    conformance.require(model, "tailrisk")
    chunk = bounded_chunk(model, dist, chunk)  # one chunk's memory, as the local path does
    use_sampling = force_samples is not None or n_inputs > max_exact
    n = int(force_samples or n_samples)
    # a shard draws its inputs chunk by chunk from one generator, so the chunk size is part of
    # what a sampled result depends on (and of its cache key)
    mode = f"sampled:{n}:{seed}:{shard_samples}:{chunk}" if use_sampling else f"exact:{chunk}"
    path = cache_dir() / f"{_key(model, dist, behaviour, mode)}.json"
    if use_cache:
        hit = _read_cache(path)
        if hit is not None:
            return {**hit, "cached": True}
    clock = Clock()
    base = _base_payload(backend, model, ref, dist, behaviour)
    if use_sampling:
        payloads = sampled_payloads(base, n, seed, shard_samples, chunk)
        acc = SampledSum(behaviour.is_indicator)
        _fold_in_order(backend, sampled_shard_task, payloads, acc.add, progress)
        out = acc.result(n)
    else:
        payloads = exact_payloads(base, n_inputs, chunk)
        acc = ExactSum()
        _fold_in_order(backend, exact_shard_task, payloads, acc.add, progress)
        out = {"values": acc.total.reshape(-1).tolist(), "method": "exact",
               "n_inputs": n_inputs}
    out.update(version=CACHE_VERSION, seconds=clock.seconds, distribution=dist.name,
               indicator=behaviour.is_indicator, shards=len(payloads),
               shard_samples=shard_samples if use_sampling else None, seed=seed)
    if use_cache:
        _write_cache(path, out)
    return {**out, "cached": False}


class ExactSum:
    """Adds the shards' per-chunk terms one at a time, in index order, as `exact` does."""

    def __init__(self):
        self.total = None

    def add(self, rows) -> None:
        for row in torch.from_numpy(np.array(rows)):
            self.total = row if self.total is None else self.total + row


class SampledSum:
    """Adds the shards' sums: as int64 for an indicator (0/1 sums within a shard are exact
    integers in float64), else in float64 in shard order (deterministic whatever the workers)."""

    def __init__(self, indicator: bool):
        self.indicator = indicator
        self.total = None

    def add(self, sums) -> None:
        a = np.asarray(sums, dtype=np.float64)
        a = np.rint(a).astype(np.int64) if self.indicator else a
        self.total = a if self.total is None else self.total + a

    def result(self, n: int) -> dict:
        counts = [int(c) for c in self.total] if self.indicator else self.total.tolist()
        values = (self.total / n).tolist() if not self.indicator else [c / n for c in counts]
        return {"values": values, "counts": counts, "method": "sampled", "n_inputs": n}


def target_truth(vec: dict, behaviour, interval: str = "wilson",
                 confidence: float = 0.95) -> dict:
    """One target's answer from a vector result: {"probability", "interval", "interval_method",
    "method", "n_inputs", ...}. Intervals: module docstring."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; choose one of {', '.join(INTERVALS)}")
    i = behaviour.target if vector_behaviour(behaviour) else 0
    p = float(vec["values"][i])
    lohi, how = None, None
    if vec["method"] == "sampled":
        n = int(vec["n_inputs"])
        if behaviour.is_indicator:
            hits = int(vec["counts"][i])
            lohi = (wilson_interval(hits, n, confidence) if interval == "wilson"
                    else clopper_pearson_interval(hits, n, confidence))
            how = f"{interval} {confidence:.0%}"
        else:
            half = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n)
            lohi = (max(0.0, p - half), min(1.0, p + half))
            how = "normal 95%, variance bound p(1-p)"
    return {"probability": p, "interval": list(lohi) if lohi else None,
            "interval_method": how, "method": vec["method"], "n_inputs": int(vec["n_inputs"]),
            "hits": int(vec["counts"][i]) if vec["method"] == "sampled" and
            behaviour.is_indicator else None,
            "shards": vec.get("shards"), "shard_samples": vec.get("shard_samples"),
            "seconds": float(vec.get("seconds", 0.0)), "cached": bool(vec.get("cached"))}
