"""SAE quality on a model's data from the shared activation cache: what `info --model M --sae S
--data D` prints and what the Model page shows, for any model with data.

    from estimators.sae_stats import sae_quality_on_data
    data_info, quality = sae_quality_on_data(loaded_model, sae, "text:corpus.txt,n=128,len=64")

Statistics are those of `model_info.sae_quality` (explained variance, MSE, L0, dead fraction),
computed from cached activations in memory-bounded batches and accumulated in float64.
"""

from __future__ import annotations

import hashlib
import json
import math

import torch
from jaxtyping import Float
from torch import Tensor

from estimators.loading import sae_hook_name


def sae_quality_from_activations(sae, x: Float[Tensor, "batch pos *rest"],
                                 memory_budget: int = 256 * 2 ** 20, *, progress=None) -> dict:
    """`sae_quality`'s statistics from activations already at hand (e.g. the activation cache).

    x: run_with_cache's activations at the SAE's hook, [batch, pos, *rest]; one activation is
    one (sequence, position), its trailing dims kept as they are (hook_z's [heads, d_head] is
    flattened by the SAE itself) and their product must equal the SAE's d_in.
    Rows go through encode/decode as a pair, in batches so that the latents [rows, d_sae] stay
    under `memory_budget` bytes (sae_lens keeps normalisation state between the two calls);
    every sum accumulates in float64, so a float16 SAE gives finite statistics.
    Returns hook, d_in, d_sae, sae_dtype, n_activations, explained_variance
    1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (None with a note when the activations do not vary), mse per
    element, l0 (mean number of non-zero latents per position), dead_fraction (latents zero on
    every position). Raises ValueError when the activations' width is not d_in.
    progress: optional `estimators.progress` callback, called after each batch with
    (positions done, n, "positions", "SAE statistics"); what it raises propagates."""
    from estimators.progress import report

    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    rows = x.reshape(-1, *x.shape[2:]) if x.dim() > 2 else x
    if rows[0].numel() != d_in:
        raise ValueError(f"the SAE expects d_in={d_in}, but an activation at its hook has "
                         f"shape {list(rows.shape[1:])}")
    n = int(rows.shape[0])
    dev, dt = sae.W_dec.device, sae.W_dec.dtype
    step = max(1, memory_budget // (8 * d_sae * 3))
    mean = rows.double().mean(0).to(dev)
    resid = total = l0 = 0.0
    fired = torch.zeros(d_sae, dtype=torch.bool, device=dev)
    with torch.no_grad():
        for start in range(0, n, step):
            xb = rows[start:start + step].to(dev)
            z = sae.encode(xb.to(dt))
            x_hat = sae.decode(z).double().reshape(xb.shape)
            resid += float(((xb.double() - x_hat) ** 2).sum())
            total += float(((xb.double() - mean) ** 2).sum())
            active = z != 0
            l0 += float(active.sum(dtype=torch.float64))
            fired |= active.any(0)
            report(progress, min(start + step, n), n, "positions", "SAE statistics")
    out = {"hook": sae_hook_name(sae), "d_in": d_in, "d_sae": d_sae,
           "sae_dtype": str(dt).replace("torch.", ""), "n_activations": n,
           "explained_variance": 1 - resid / total if total > 0 else None,
           "mse": resid / (n * d_in), "l0": l0 / n,
           "dead_fraction": float((~fired).double().mean())}
    if total <= 0:
        out["explained_variance_note"] = ("undefined: the activations at the hook do not vary "
                                          "over these inputs (zero total variance)")
    if not all(math.isfinite(v) for v in (resid, total, l0)):
        out["note"] = "the SAE's reconstructions are not finite on these inputs"
    return out


_QUALITY_MEMO: dict[tuple, dict] = {}


def sae_fingerprint(sae) -> str:
    """sha256 over the SAE's class, config and every state-dict tensor (24 hex digits)."""
    h = hashlib.sha256(type(sae).__name__.encode())
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    h.update(json.dumps(cfg, sort_keys=True, default=repr).encode())
    for name, p in sae.state_dict().items():
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def sae_quality_on_data(loaded, sae, spec: str = "zoo", n: int = 256, seed: int = 1, *,
                        progress=None) -> tuple[dict, dict]:
    """(the data's description, SAE quality on it) for any model with data — what `info
    --data` prints and what the Model page should show.

    loaded: an `estimators.loading.LoadedModel`; spec: a data spec (`estimators.data`), whose
    unset n / seed default to 256 / 1 (the zoo default of earlier versions). Activations at the
    SAE's hook come from the shared activation cache; the statistics
    (`sae_quality_from_activations`) are memoised per (model, data, SAE) in-process.
    progress: optional `estimators.progress` callback for both stages (activations, SAE
    statistics); what it raises (e.g. `Cancelled`) propagates and nothing is memoised.
    Raises DataError / ValueError (one line)."""
    from estimators.activation_cache import activations
    from estimators.conformance import model_fingerprint
    from estimators.data import load_data

    data = load_data(spec, loaded, n=n, seed=seed)
    key = (model_fingerprint(loaded.model), data.fingerprint, sae_fingerprint(sae))
    if key not in _QUALITY_MEMO:
        hook = sae_hook_name(sae)
        x = activations(loaded.model, data, [hook], progress=progress)[hook]
        quality = sae_quality_from_activations(sae, x, progress=progress)
        if len(_QUALITY_MEMO) >= 64:
            _QUALITY_MEMO.clear()
        _QUALITY_MEMO[key] = quality
    return data.to_dict(), dict(_QUALITY_MEMO[key])
