"""The shared activation cache: real activations at given hooks, computed once per
(model fingerprint, data fingerprint, hook, dtype) and reused by every page, session and CLI run.

    from estimators.activation_cache import activations
    acts = activations(model, data, ["blocks.6.hook_resid_pre"])   # {hook: [n, len, ...] CPU}

Keys: `estimators.conformance.model_fingerprint(model)` (whole config, every weight, code
version), `estimators.data.tokens_fingerprint(tokens)` (the token tensor itself), the hook name
and the stored dtype. One entry per hook, so a view that adds a hook computes only that hook.

Compute: on the model's device (CPU, CUDA or MPS) in batches of sequences sized so that one
batch's working memory stays under `memory_budget` bytes (estimate below), with
`run_with_cache(names_filter=hooks, stop_at_layer=…)` so no block after the deepest requested
hook (and no unembedding, [batch, len, d_vocab]) is computed. Results move to the CPU as they
are produced; the values are exactly those of `model.run_with_cache` on the same batch.

Storage: an in-process LRU bounded in bytes (`HEW_ACTIVATION_MEMORY_MB`, default 1024), and on
disk one safetensors file per entry under `$HEW_CACHE_DIR` (default
`~/.cache/heuristic-workbench/`)/activations/, written atomically, with the key's parts in its
metadata; a corrupt or foreign file is recomputed. Never pickle. `HEW_ACTIVATION_DISK=0` turns
the disk off. `stats()` counts forward passes (batches), sequences and hits, for tests and the
benchmark.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

CACHE_ENV = "HEW_CACHE_DIR"
MEMORY_ENV = "HEW_ACTIVATION_MEMORY_MB"
DISK_ENV = "HEW_ACTIVATION_DISK"
FORMAT_VERSION = 1
DEFAULT_MEMORY_BUDGET = 512 * 2 ** 20  # bytes of working memory per batch on the CPU
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class CacheStats:
    """Counters since the last `reset_stats()`: forward passes are batched model calls."""

    forward_passes: int = 0
    sequences: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


_STATS = CacheStats()
_LOCK = threading.RLock()
_MEMORY: "OrderedDict[str, Tensor]" = OrderedDict()


def stats() -> CacheStats:
    return CacheStats(**asdict(_STATS))


def reset_stats() -> None:
    global _STATS
    _STATS = CacheStats()


def clear_memory() -> None:
    """Drop the in-process stores, activations and small derived tensors (the disk entries
    stay)."""
    with _LOCK:
        _MEMORY.clear()
        _SMALL.clear()


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "heuristic-workbench"
    return base / "activations"


def entry_key(model_fp: str, data_fp: str, hook: str, dtype: torch.dtype) -> str:
    """The entry's name: sha256 over the format version, model and data fingerprints, hook and
    dtype (24 hex digits)."""
    raw = json.dumps({"v": FORMAT_VERSION, "model": model_fp, "data": data_fp, "hook": hook,
                      "dtype": str(dtype)}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------ front door

def activations(model, data, hooks: Sequence[str], dtype: torch.dtype | None = None,
                memory_budget: int | None = None, use_disk: bool | None = None,
                batch_size: int | None = None, *, progress=None) -> dict[str, Tensor]:
    """Real activations of `model` on `data` at `hooks`, from the cache or computed once.

    model: a HookedTransformer (or TransformerBridge) on any device.
    data: an `estimators.data.Data` or a [n, len] int64 token tensor.
    hooks: hook names of the model (KeyError-free: an unknown hook is a ValueError naming it).
    dtype: the stored dtype (default: the model's own, cfg.dtype); part of the key.
    memory_budget: bytes of working memory per batch (default: 512 MiB on the CPU, a quarter
      of the free memory on CUDA). batch_size overrides the estimate.
    progress: optional `estimators.progress` callback, called after each batch with
      (sequences done, n, "sequences", "activations"); when it raises (e.g. `Cancelled`) the
      exception propagates and no entry is stored (memory or disk), so the next call
      recomputes from scratch.
    Returns {hook: tensor on the CPU}, each with run_with_cache's shape [n, len, ...].
    """
    from estimators.conformance import model_fingerprint
    from estimators.data import tokens_fingerprint

    tokens = data.tokens if hasattr(data, "tokens") else data
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (
            torch.long, torch.int32, torch.int64):
        raise ValueError("activations need a [n, len] tensor of token ids (or estimators.data."
                         "Data)")
    hooks = list(dict.fromkeys(hooks))
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"the model has no hook point {unknown[0]!r}")
    dtype = dtype or getattr(model.cfg, "dtype", torch.float32)
    data_fp = data.fingerprint if hasattr(data, "fingerprint") else tokens_fingerprint(tokens)
    keys = {h: entry_key(model_fingerprint(model), data_fp, h, dtype) for h in hooks}
    disk = _disk_enabled() if use_disk is None else use_disk
    out: dict[str, Tensor] = {}
    for h in hooks:
        hit = _lookup(keys[h], disk)
        if hit is not None:
            out[h] = hit
    missing = [h for h in hooks if h not in out]
    if missing:
        _STATS.misses += len(missing)
        fresh = compute(model, tokens, missing, dtype, memory_budget, batch_size,
                        progress=progress)
        for h in missing:
            _store(keys[h], fresh[h], disk, {"hook": h, "dtype": str(dtype), "data": data_fp})
            out[h] = fresh[h]
    return {h: out[h] for h in hooks}


def compute(model, tokens: Tensor, hooks: Sequence[str], dtype: torch.dtype,
            memory_budget: int | None = None, batch_size: int | None = None, *,
            progress=None) -> dict[str, Tensor]:
    """run_with_cache over `tokens` in memory-bounded batches, stopping after the deepest hook;
    {hook: [n, len, ...] CPU tensor in `dtype`}. Counts forward passes in `stats()`.
    `progress` (estimators.progress) is called after each batch; what it raises propagates."""
    from estimators.progress import report

    device = _model_device(model)
    n, length = int(tokens.shape[0]), int(tokens.shape[1])
    if n == 0:
        raise ValueError("no sequences to run")
    stop = stop_layer(model, hooks)
    bs = batch_size or batch_size_for(model, length, len(hooks), stop, memory_budget)
    out: dict[str, Tensor] = {}
    for start in range(0, n, bs):
        batch = tokens[start:start + bs].to(device)
        with torch.no_grad():
            cache = _run(model, batch, hooks, stop)
        for h in hooks:
            a = cache[h].detach().to("cpu", dtype)
            if h not in out:
                out[h] = torch.empty((n,) + tuple(a.shape[1:]), dtype=dtype)
            out[h][start:start + a.shape[0]] = a
        del cache
        _STATS.forward_passes += 1
        _STATS.sequences += int(batch.shape[0])
        report(progress, min(start + bs, n), n, "sequences", "activations")
    return out


def _run(model, batch: Tensor, hooks: list[str], stop: int | None):
    if stop is None:
        _, cache = model.run_with_cache(batch, names_filter=hooks)
        return cache
    try:
        _, cache = model.run_with_cache(batch, names_filter=hooks, stop_at_layer=stop)
    except TypeError:  # a model class without stop_at_layer: run the whole pass
        _, cache = model.run_with_cache(batch, names_filter=hooks)
    return cache


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """The `stop_at_layer` that still runs every hook: 1 + the deepest block named, 0 for
    embedding hooks only, None (the whole pass) when a hook lies after the last block."""
    deepest = -1
    for h in hooks:
        m = _BLOCK_RE.match(h)
        if m:
            deepest = max(deepest, int(m.group(1)))
        elif h.startswith(("hook_embed", "hook_pos_embed", "hook_tokens")):
            continue
        else:
            return None
    n_layers = int(model.cfg.n_layers)
    return None if deepest + 1 >= n_layers else deepest + 1


def batch_size_for(model, length: int, n_hooks: int, stop: int | None,
                   memory_budget: int | None = None) -> int:
    """Sequences per batch so that one batch's working memory stays under the budget.

    Per sequence (bytes = element size × length ×): the live block's activations
    ≈ 8·d_model + 2·d_mlp + 3·n_heads·length (attention scores, pattern, masked scores), the
    stored hooks ≈ n_hooks·max(d_model, d_mlp), and d_vocab_out·2 (logits and their float copy)
    when the whole pass runs."""
    cfg = model.cfg
    elem = torch.finfo(getattr(cfg, "dtype", torch.float32)).bits // 8
    d_model, d_mlp = int(cfg.d_model), int(getattr(cfg, "d_mlp", None) or 4 * cfg.d_model)
    n_heads = int(getattr(cfg, "n_heads", 1) or 1)
    per_token = 8 * d_model + 2 * d_mlp + 3 * n_heads * length + n_hooks * max(d_model, d_mlp)
    if stop is None:
        per_token += 2 * int(getattr(cfg, "d_vocab_out", None) or cfg.d_vocab)
    per_seq = max(1, per_token * length * elem)
    budget = memory_budget or _default_budget(_model_device(model))
    return max(1, int(budget // per_seq))


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device.index if device.index is not None
                                          else torch.cuda.current_device())
        return max(DEFAULT_MEMORY_BUDGET, free // 4)
    return DEFAULT_MEMORY_BUDGET


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


# ---------------------------------------------------------------------------------- storage

def _disk_enabled() -> bool:
    return os.environ.get(DISK_ENV, "1") not in ("0", "false", "no")


def _memory_limit() -> int:
    try:
        return int(float(os.environ.get(MEMORY_ENV, "1024")) * 2 ** 20)
    except ValueError:
        return 1024 * 2 ** 20


def _lookup(key: str, disk: bool) -> Tensor | None:
    with _LOCK:
        t = _MEMORY.get(key)
        if t is not None:
            _MEMORY.move_to_end(key)
            _STATS.memory_hits += 1
            return t
    if not disk:
        return None
    t = _read_disk(cache_dir() / f"{key}.safetensors", key)
    if t is not None:
        _STATS.disk_hits += 1
        _remember(key, t)
    return t


def _remember(key: str, t: Tensor) -> None:
    limit = _memory_limit()
    size = t.numel() * t.element_size()
    if size > limit:
        return
    with _LOCK:
        _MEMORY[key] = t
        _MEMORY.move_to_end(key)
        total = sum(v.numel() * v.element_size() for v in _MEMORY.values())
        while total > limit and len(_MEMORY) > 1:
            _, old = _MEMORY.popitem(last=False)
            total -= old.numel() * old.element_size()


def _store(key: str, t: Tensor, disk: bool, meta: dict) -> None:
    _remember(key, t)
    if disk:
        _write_disk(cache_dir() / f"{key}.safetensors", key, t, meta)


def _read_disk(path: Path, key: str) -> Tensor | None:
    hit = _read_small(path, key)  # the same file format, one tensor named "activations"
    return None if hit is None else hit.get("activations")


def _write_disk(path: Path, key: str, t: Tensor, meta: dict) -> None:
    _save_atomic(path, key, {"activations": t.contiguous()}, meta)


def _save_atomic(path: Path, key: str, tensors: dict[str, Tensor], meta: dict) -> None:
    """A safetensors entry (`estimators.atomic_write`: no reader sees half a file, an
    interrupted write leaves nothing behind, a full disk only costs recomputation)."""
    from safetensors.torch import save_file

    from estimators.atomic_write import write_atomically

    write_atomically(path, lambda tmp: save_file(
        tensors, str(tmp), metadata={"key": key, "version": str(FORMAT_VERSION),
                                     **{k: str(v) for k, v in meta.items()}}))


# ------------------------------------------------------------------ small derived tensors
# Per-example results derived from full forward passes (e.g. causal scrubbing's baseline
# losses: the original and all-resampled loss of each example), keyed like the activations by
# the model's fingerprint and the data, plus whatever else they depend on, through the same
# disk store (one safetensors file per entry, several named tensors). Only small tensors
# belong here (bounded: `SMALL_MAX_BYTES` per entry; larger ones are computed, not stored):
# at gpt2-small size one layer's residual stream over 128 × 64 tokens is 25 MiB, every hook
# of every layer ~ 4 GiB, so whole-model activations are not cached by this path.

SMALL_MAX_BYTES = 64 * 2 ** 20
_SMALL: "OrderedDict[str, dict[str, Tensor]]" = OrderedDict()
_SMALL_STATS = {"memory_hits": 0, "disk_hits": 0, "misses": 0}


def small_stats() -> dict:
    """Counters of `cached_tensors` since the last `reset_small_stats()`."""
    return dict(_SMALL_STATS)


def reset_small_stats() -> None:
    for k in _SMALL_STATS:
        _SMALL_STATS[k] = 0


def small_key(kind: str, parts: dict) -> str:
    """sha256 (24 hex digits) over the format version, the kind and the key's parts (JSON)."""
    raw = json.dumps({"v": FORMAT_VERSION, "kind": kind, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def cached_tensors(kind: str, parts: dict, compute, use_disk: bool | None = None,
                   memory: bool = True) -> dict[str, Tensor]:
    """`compute()` → {name: CPU tensor}, computed once per (kind, parts) and reused from the
    in-process store or the disk (`$HEW_CACHE_DIR/activations/small-<key>.safetensors`).

    parts: JSON-able key parts (model fingerprint, data fingerprint, settings); the caller
    names everything the result depends on. Entries over SMALL_MAX_BYTES are not stored.
    `HEW_ACTIVATION_DISK=0` (or use_disk=False) keeps it in process; memory=False skips the
    in-process store (a test of the disk path)."""
    hit = lookup_tensors(kind, parts, use_disk, memory)
    if hit is not None:
        return hit
    out = {k: v.detach().to("cpu").contiguous() for k, v in compute().items()}
    store_tensors(kind, parts, out, use_disk)
    return dict(out)


def lookup_tensors(kind: str, parts: dict, use_disk: bool | None = None,
                   memory: bool = True) -> dict[str, Tensor] | None:
    """The stored entry of (kind, parts), or None (counted as a miss)."""
    key = small_key(kind, parts)
    with _LOCK:
        hit = _SMALL.get(key) if memory else None
        if hit is not None:
            _SMALL.move_to_end(key)
            _SMALL_STATS["memory_hits"] += 1
            return dict(hit)
    if _disk_enabled() if use_disk is None else use_disk:
        hit = _read_small(cache_dir() / f"small-{key}.safetensors", key)
        if hit is not None:
            _SMALL_STATS["disk_hits"] += 1
            _remember_small(key, hit)
            return dict(hit)
    _SMALL_STATS["misses"] += 1
    return None


def store_tensors(kind: str, parts: dict, tensors: dict[str, Tensor],
                  use_disk: bool | None = None) -> None:
    """Store {name: tensor} (moved to the CPU) under (kind, parts), unless over
    SMALL_MAX_BYTES."""
    key = small_key(kind, parts)
    out = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if sum(v.numel() * v.element_size() for v in out.values()) > SMALL_MAX_BYTES:
        return
    _remember_small(key, out)
    if _disk_enabled() if use_disk is None else use_disk:
        _write_small(cache_dir() / f"small-{key}.safetensors", key, out, {"kind": kind})


def _remember_small(key: str, tensors: dict[str, Tensor]) -> None:
    with _LOCK:
        _SMALL[key] = tensors
        _SMALL.move_to_end(key)
        while len(_SMALL) > 256:
            _SMALL.popitem(last=False)


def _read_small(path: Path, key: str) -> dict[str, Tensor] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # noqa: BLE001 - a corrupt or truncated entry is recomputed
        return None


def _write_small(path: Path, key: str, tensors: dict[str, Tensor], meta: dict) -> None:
    _save_atomic(path, key, tensors, meta)
