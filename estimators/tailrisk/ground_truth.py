"""Ground truth: exact enumeration of D's support when it is small, else large sampling.

Enumeration visits every input of the support (the product of the per-position supports) in
chunks of `chunk` inputs (memory-bounded: one chunk of tokens, activations and logits at a
time), on the model's device, and sums weight·value in float64. For argmax and
sampled-probability behaviours one pass gives every target at once (a weighted histogram of the
argmax, or the weighted mean softmax), so those are computed and cached for the whole
vocabulary.

Cache: JSON files under `$HEW_CACHE_DIR` (default `~/.cache/heuristic-workbench/`)/tailrisk/,
named by a hash of (`conformance.model_fingerprint`: whole config + weights + code version;
distribution table; behaviour); safe JSON, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from estimators import conformance
from estimators.tailrisk.behaviours import (Argmax, Behaviour, SampledProbability,
                                            _site_activation, final_logits, model_device)
from estimators.tailrisk.common import (Clock, ProgressFn, batches, generator, report,
                                        wilson_interval)
from estimators.tailrisk.distributions import InputDistribution

MAX_EXACT_INPUTS = 2 ** 24
DEFAULT_SAMPLES = 2 ** 22
CACHE_ENV = "HEW_CACHE_DIR"
CACHE_VERSION = 2  # 2: keyed by conformance.model_fingerprint (whole config)


@dataclass
class GroundTruth:
    probability: float
    method: str  # "exact" | "sampled"
    interval: tuple[float, float] | None
    n_inputs: int  # inputs visited (enumerated or sampled)
    seconds: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- enumeration

def enumerate_inputs(dist: InputDistribution, start: int, stop: int,
                     device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs number start…stop−1 of the support in mixed-radix order (last position fastest),
    with their log-probabilities: (tokens [n, k], log D(x) [n] float64)."""
    supports = [s.to(device) for s in dist.supports()]
    idx = torch.arange(start, stop, device=device)
    cols = []
    for s in reversed(supports):
        cols.append(s[idx % s.numel()])
        idx = idx // s.numel()
    tokens = torch.stack(cols[::-1], 1)
    return tokens, dist.log_prob(tokens)


def _per_input_vector(model, behaviour: Behaviour, tokens: torch.Tensor) -> torch.Tensor:
    """[n, V] per-input value for every target at once (argmax one-hot, or softmax row)."""
    with torch.no_grad():
        a = _site_activation(model, tokens, behaviour.site()).float()
        logits = final_logits(model, a)  # the model's own logits (soft cap included)
    if isinstance(behaviour, SampledProbability):
        return torch.softmax(logits / behaviour.temperature, -1).double()
    top = logits.topk(2, dim=-1)
    strict = top.values[:, 0] > top.values[:, 1]  # an exact tie is a miss (as in Argmax)
    out = torch.zeros(logits.shape, dtype=torch.float64, device=logits.device)
    out[torch.arange(len(logits)), top.indices[:, 0]] = strict.double()
    return out


def vector_behaviour(behaviour: Behaviour) -> bool:
    """True when one pass gives the answer for every target (argmax / sampled probability)."""
    return isinstance(behaviour, (Argmax, SampledProbability))


def _weighted_term(model, dist: InputDistribution, behaviour: Behaviour, start: int, m: int,
                   dev) -> torch.Tensor:
    """Σ_i P(x_i)·value(x_i) over the inputs start…start+m−1 of D's support (mixed-radix order):
    a [V] vector for argmax/sampled behaviours, else a 0-d tensor (float64, on `dev`)."""
    tokens, logw = enumerate_inputs(dist, start, start + m, dev)
    w = logw.exp()
    if vector_behaviour(behaviour):
        return w @ _per_input_vector(model, behaviour, tokens)
    v, _ = behaviour.evaluate(model, tokens)
    return (w * v.to(w.device)).sum()


def exact(model, dist: InputDistribution, behaviour: Behaviour, chunk: int = 8192,
          progress: ProgressFn | None = None) -> torch.Tensor:
    """Exact E_D[value]: a [V] vector over targets for argmax/sampled behaviours, else a 0-d
    tensor. float64."""
    dev = model_device(model)
    total = dist.n_inputs()
    acc = None
    for start, m in batches(total, chunk):
        part = _weighted_term(model, dist, behaviour, start, m, dev)
        acc = part if acc is None else acc + part
        report(progress, (start + m) / total, start + m, total, "inputs", "ground truth")
    return acc.cpu()


def sampled(model, dist: InputDistribution, behaviour: Behaviour, n: int, seed: int = 0,
            chunk: int = 8192, progress: ProgressFn | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Large-sample estimate: (mean [V] or 0-d, hit counts / sum of values, same shape)."""
    dev = model_device(model)
    gen = generator(seed)
    acc = None
    for start, m in batches(n, chunk):
        x = dist.sample(m, gen, dev)
        if vector_behaviour(behaviour):
            part = _per_input_vector(model, behaviour, x).sum(0)
        else:
            v, _ = behaviour.evaluate(model, x)
            part = v.sum()
        acc = part if acc is None else acc + part
        report(progress, (start + m) / n, start + m, n, "samples", "ground truth")
    acc = acc.cpu()
    return acc / n, acc


def exact_range(model, dist: InputDistribution, behaviour: Behaviour, start: int, stop: int,
                chunk: int = 8192) -> list[torch.Tensor]:
    """The per-chunk terms of `exact` for inputs start…stop−1 (mixed-radix order), as a list of
    float64 tensors ([V] or 0-d) on the CPU, one per chunk of `chunk` inputs. With `start` a
    multiple of `chunk`, the chunks are those `exact` visits, so adding every range's terms in
    index order reproduces `exact` bit for bit (the distributed backend relies on this)."""
    if start % chunk:
        raise ValueError(f"start {start} is not a multiple of the chunk size {chunk}")
    dev = model_device(model)
    parts = []
    for s, m in batches(stop - start, chunk):
        parts.append(_weighted_term(model, dist, behaviour, start + s, m, dev).cpu())
    return parts


# ---------------------------------------------------------------------------------- cache

def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "heuristic-workbench"
    return base / "tailrisk"


def model_fingerprint(model) -> str:
    """The cache key of the model: `estimators.conformance.model_fingerprint` (the whole config,
    every parameter's bytes and the code version), never a hand-picked subset of fields."""
    return conformance.model_fingerprint(model)


def behaviour_key(behaviour: Behaviour) -> dict:
    """What of a behaviour a cached answer depends on: a vector behaviour's answer covers every
    target (so the target is left out); any other behaviour is keyed by all its fields."""
    if not vector_behaviour(behaviour):
        return behaviour.to_dict()
    desc = {"kind": behaviour.kind}
    if isinstance(behaviour, SampledProbability):
        desc["temperature"] = behaviour.temperature
    return desc


def _key(model_fp: str, dist: InputDistribution, behaviour: Behaviour, mode: str) -> str:
    raw = json.dumps({"v": CACHE_VERSION, "model": model_fp, "dist": dist.fingerprint(),
                      "behaviour": behaviour_key(behaviour), "mode": mode}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a missing or corrupt entry is recomputed
    return d if isinstance(d, dict) and d.get("version") == CACHE_VERSION else None


def _write_cache(path: Path, payload: dict) -> None:
    """The entry as JSON (`estimators.atomic_write`: no reader sees half a file, two processes
    never share a temporary, an interrupted write (Ctrl-C) leaves nothing behind, a read-only
    home only costs recomputation)."""
    from estimators.atomic_write import write_atomically

    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(payload)))


# ------------------------------------------------------------------------------ front door

CHUNK_MEMORY = 2 ** 30  # bytes one chunk of inputs may hold (values, logits, activations)


def bounded_chunk(model, dist: InputDistribution, chunk: int,
                  memory: int = CHUNK_MEMORY) -> int:
    """`chunk` lowered so that one chunk stays under `memory` bytes: per input, the [V]
    float64 values and float32 logits (and their softmax) of a vector behaviour, and ≈ 16
    d_model-wide float32 activations per position of the forward pass. Zoo-sized models keep
    8192; gpt2-small's shape (V = 50,257, d_model 768) on 8 positions gets ≈ 890."""
    cfg = model.cfg
    v = int(getattr(cfg, "d_vocab_out", -1) or -1)
    v = v if v > 0 else int(cfg.d_vocab)
    per_input = v * (8 + 4 + 4) + dist.length * int(cfg.d_model) * 4 * 16
    return max(1, min(int(chunk), memory // per_input))


def ground_truth_vector(model, dist: InputDistribution, behaviour: Behaviour,
                        max_exact: int = MAX_EXACT_INPUTS, n_samples: int = DEFAULT_SAMPLES,
                        seed: int = 0, use_cache: bool = True, chunk: int = 8192,
                        progress: ProgressFn | None = None) -> dict:
    """The full answer: {"values": [V] or [1], "counts": ... (sampled), "method", "n_inputs",
    "seconds", "cached"}."""
    behaviour.validate(model)
    conformance.require(model, "tailrisk")
    chunk = bounded_chunk(model, dist, chunk)
    n_inputs = dist.n_inputs()
    mode = "exact" if n_inputs <= max_exact else f"sampled:{n_samples}:{seed}"
    path = cache_dir() / f"{_key(model_fingerprint(model), dist, behaviour, mode)}.json"
    if use_cache:
        hit = _read_cache(path)
        if hit is not None:
            hit["cached"] = True
            return hit
    clock = Clock()
    if mode == "exact":
        vals = exact(model, dist, behaviour, chunk, progress)
        out = {"values": vals.reshape(-1).tolist(), "method": "exact", "n_inputs": n_inputs}
    else:
        mean, counts = sampled(model, dist, behaviour, n_samples, seed, chunk, progress)
        out = {"values": mean.reshape(-1).tolist(), "counts": counts.reshape(-1).tolist(),
               "method": "sampled", "n_inputs": n_samples}
    out.update(version=CACHE_VERSION, seconds=clock.seconds, distribution=dist.name,
               indicator=behaviour.is_indicator)
    if use_cache:
        _write_cache(path, out)
    out["cached"] = False
    return out


def ground_truth(model, dist: InputDistribution, behaviour: Behaviour,
                 max_exact: int = MAX_EXACT_INPUTS, n_samples: int = DEFAULT_SAMPLES,
                 seed: int = 0, use_cache: bool = True, chunk: int = 8192,
                 progress: ProgressFn | None = None) -> GroundTruth:
    """The true probability of the behaviour under D (exact when D's support has at most
    `max_exact` inputs, else sampled with a Wilson interval)."""
    vec = ground_truth_vector(model, dist, behaviour, max_exact, n_samples, seed, use_cache,
                              chunk, progress)
    i = behaviour.target if vector_behaviour(behaviour) else 0
    p = float(vec["values"][i])
    interval = None
    if vec["method"] == "sampled":
        n = int(vec["n_inputs"])
        if behaviour.is_indicator:
            interval = wilson_interval(int(round(vec["counts"][i])), n)
        else:  # conservative for values in [0, 1]: Var ≤ p(1 − p)
            half = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n)
            interval = (max(0.0, p - half), min(1.0, p + half))
    return GroundTruth(p, vec["method"], interval, int(vec["n_inputs"]),
                       float(vec.get("seconds", 0.0)), bool(vec.get("cached", False)))
