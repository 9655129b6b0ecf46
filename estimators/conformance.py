"""Conformance of our own re-implementations against the model's own forward pass.

Every engine that computes on a model by its own code (the treeified scrubbing pass, the
activation chain, tail-risk behaviours and readouts, ...) registers a *check*: a function that,
on a few random inputs of the loaded model, compares what the engine computes against
`model(...)` / `model.run_with_cache(...)` and returns an `EngineVerdict`. An engine refuses a
model whose verdict is not ok (`require`), with one line naming the engine and, where the check
can tell, the config field responsible.

Verdicts are cached per (model fingerprint, engine): the fingerprint covers the whole config, every
parameter's bytes and `CODE_VERSION`, so two models that differ in any config field (or weight)
never share a verdict — nor any other cache entry keyed by `model_fingerprint`.

    from estimators import conformance
    conformance.require(model, "scrubbing")      # raises EngineUnsupported, one line
    conformance.verdicts(model)                  # {engine: EngineVerdict} for the Model page
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

# Bump when an engine's numerics change, so cached results computed by older code are not reused.
CODE_VERSION = "2026-11-30.1"


class EngineUnsupported(ValueError):
    """This engine cannot compute faithfully on this model; the message is one line saying why."""


@dataclass
class EngineVerdict:
    """Result of one engine's conformance check on one model.

    max_abs_error / tolerance are in the units of the compared quantity (logits, activations).
    reason: one line, None when ok. config_fields: the config fields blamed, where known."""

    engine: str
    ok: bool
    max_abs_error: float | None = None
    tolerance: float | None = None
    reason: str | None = None
    config_fields: list[str] = field(default_factory=list)
    dtype: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        if self.ok:
            err = "" if self.max_abs_error is None else \
                f" (max error {self.max_abs_error:.2e} ≤ {self.tolerance:.0e})"
            return f"{self.engine}: supported{err}"
        return f"{self.engine}: not supported on this model: {self.reason}"


CheckFn = Callable[[object], EngineVerdict]
_CHECKS: dict[str, CheckFn] = {}
_VERDICTS: dict[tuple[str, str], EngineVerdict] = {}
_LOCK = threading.Lock()


def register_engine(name: str) -> Callable[[CheckFn], CheckFn]:
    """Decorator: register `check(model) -> EngineVerdict` as the conformance check of `name`."""
    def deco(fn: CheckFn) -> CheckFn:
        _CHECKS[name] = fn
        return fn
    return deco


def engines() -> list[str]:
    _import_engine_checks()
    return sorted(_CHECKS)


def _import_engine_checks() -> None:
    """Import the modules that register checks (each engine package's `conformance` module)."""
    import importlib
    for mod in ("estimators.scrubbing.conformance", "estimators.scrubbing.edges_conformance",
                "estimators.activation.conformance",
                "estimators.tailrisk.conformance"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def config_json(model) -> str:
    """The whole config as canonical JSON (every field; values that are not JSON become repr)."""
    cfg = model.cfg
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    d = {k: v for k, v in d.items() if k != "device"}
    return json.dumps(d, sort_keys=True, default=repr)


def model_fingerprint(model) -> str:
    """sha256 over CODE_VERSION, the whole config and every state-dict tensor (name, dtype,
    shape, bytes). Cached on the model object (weights are not expected to change in place)."""
    cached = getattr(model, "_hew_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    h.update(CODE_VERSION.encode())
    h.update(type(model).__name__.encode())
    h.update(config_json(model).encode())
    for name, p in model.state_dict().items():
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    fp = h.hexdigest()[:24]
    try:
        object.__setattr__(model, "_hew_fingerprint", fp)
    except Exception:  # noqa: BLE001 - a model that refuses attributes is just not memoised
        pass
    return fp


def verdict(model, engine: str) -> EngineVerdict:
    """The engine's verdict on this model, computed once per (fingerprint, engine)."""
    _import_engine_checks()
    if engine not in _CHECKS:
        raise KeyError(f"no conformance check registered for engine {engine!r}")
    key = (model_fingerprint(model), engine)
    with _LOCK:
        hit = _VERDICTS.get(key)
    if hit is not None:
        return hit
    try:
        v = _CHECKS[engine](model)
    except EngineUnsupported as e:
        v = EngineVerdict(engine, False, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crash in the check is a refusal, never a traceback
        v = EngineVerdict(engine, False,
                          reason=f"the engine could not run on this model "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
    with _LOCK:
        _VERDICTS[key] = v
    return v


def verdicts(model) -> dict[str, EngineVerdict]:
    return {e: verdict(model, e) for e in engines()}


def require(model, engine: str) -> None:
    """Raise EngineUnsupported (one line) unless the engine's check passes on this model."""
    v = verdict(model, engine)
    if not v.ok:
        raise EngineUnsupported(v.line())


def tolerance_for(dtype: torch.dtype, scale: float = 1.0) -> float:
    """Absolute tolerance for comparing an engine with the model's own pass in `dtype`, for
    quantities of magnitude ~`scale`: float64 1e-9, float32 1e-4, bfloat16 5e-2, float16 1e-2."""
    base = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2,
            torch.bfloat16: 5e-2}.get(dtype, 1e-4)
    return base * max(1.0, float(scale))


def _finite_or_none(x: float | None) -> float | None:
    import math
    return None if x is None or not math.isfinite(x) else float(x)


def summary(model) -> dict[str, dict]:
    """{engine: {ok, max_abs_error, tolerance, reason}} for every registered engine — what
    `python -m estimators info` prints and the Model page shows. JSON-safe: a non-finite
    error is null (the reason says why)."""
    return {e: {"ok": v.ok, "max_abs_error": _finite_or_none(v.max_abs_error),
                "tolerance": _finite_or_none(v.tolerance), "reason": v.reason}
            for e, v in verdicts(model).items()}
