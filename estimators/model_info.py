"""What the "Model & SAE" page and `python -m estimators info` show about a model and its SAE.

Every number here is computed from the real model on real inputs; tests recompute them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from estimators.loading import sae_hook_name

CONFIG_KEYS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out",
               "n_ctx", "act_fn", "normalization_type", "attn_only", "attention_dir",
               "positional_embedding_type")


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def config_summary(model) -> dict:
    cfg = model.cfg
    out = {k: getattr(cfg, k) for k in CONFIG_KEYS if hasattr(cfg, k)}
    if getattr(cfg, "attn_only", False):
        out.pop("d_mlp", None)  # TransformerLens fills in a d_mlp even where no MLP exists
        out.pop("act_fn", None)
    out["n_params"] = n_parameters(model)
    return out


def hook_shapes(model, n_ctx: int | None = None) -> list[dict]:
    """Every hook point and the shape of its activations on a batch of one sequence."""
    length = min(n_ctx or model.cfg.n_ctx, model.cfg.n_ctx)
    tokens = torch.zeros((1, length), dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return [{"hook": name, "shape": list(cache[name].shape)} for name in model.hook_dict
            if name in cache]


@dataclass
class TokenPrediction:
    position: int
    token: str
    top: list[tuple[str, float]]  # the model's top-k next tokens with their probabilities
    target: str | None  # what the data says comes next (None where nothing is scored)
    target_prob: float | None


def token_predictions(model, tokens: Int[Tensor, "pos"], labels: list[str],
                      targets: Int[Tensor, "pos"] | None = None,
                      mask: torch.Tensor | None = None, k: int = 3) -> list[TokenPrediction]:
    """Per-position top-k predictions of one sequence, with the target's probability."""
    with torch.no_grad():
        logits = model(tokens[None].to(model.cfg.device))[0].float()
    probs = logits.softmax(-1).cpu()
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    out_labels = labels if probs.shape[-1] == len(labels) else [str(i) for i in
                                                                 range(probs.shape[-1])]
    rows = []
    for pos in range(tokens.shape[0]):
        scored = targets is not None and (mask is None or bool(mask[pos]))
        tgt = int(targets[pos]) if scored else None
        rows.append(TokenPrediction(
            position=pos, token=labels[int(tokens[pos])],
            top=[(out_labels[int(i)], float(p)) for p, i in zip(top_p[pos], top_i[pos])],
            target=out_labels[tgt] if tgt is not None else None,
            target_prob=float(probs[pos, tgt]) if tgt is not None else None))
    return rows


def sae_activations(model, sae, tokens: Int[Tensor, "batch pos"]
                    ) -> tuple[Float[Tensor, "n d_in"], Float[Tensor, "n d_sae"],
                               Float[Tensor, "n d_in"]]:
    """(activations at the SAE's hook, SAE latents, reconstructions), flattened over positions."""
    hook = sae_hook_name(sae)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=[hook])
        x = cache[hook].reshape(-1, cache[hook].shape[-1]).to(sae.W_dec.device, sae.W_dec.dtype)
        z = sae.encode(x)
        x_hat = sae.decode(z)
    return x, z, x_hat


def sae_quality(model, sae, tokens: Int[Tensor, "batch pos"]) -> dict:
    """Reconstruction quality on the model's data: explained variance
    1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², MSE per element, mean L0 and the dead-latent fraction."""
    x, z, x_hat = sae_activations(model, sae, tokens)
    resid = ((x - x_hat) ** 2).sum()
    total = ((x - x.mean(0)) ** 2).sum()
    active = z > 0
    return {
        "hook": sae_hook_name(sae),
        "d_in": int(x.shape[-1]),
        "d_sae": int(z.shape[-1]),
        "n_activations": int(x.shape[0]),
        "explained_variance": float(1 - resid / total),
        "mse": float(resid / x.numel()),
        "l0": float(active.sum(-1).float().mean()),
        "dead_fraction": float((~active.any(0)).float().mean()),
    }


def sae_quality_from_activations(sae, x: Float[Tensor, "batch pos *rest"],
                                 memory_budget: int = 256 * 2 ** 20) -> dict:
    """`sae_quality`'s statistics from activations already at hand (e.g. the activation cache).

    x: run_with_cache's activations at the SAE's hook, [batch, pos, *rest]; one activation is
    one (sequence, position), its trailing dims kept as they are (hook_z's [heads, d_head] is
    flattened by the SAE itself) and their product must equal the SAE's d_in.
    Rows go through encode/decode as a pair, in batches so that the latents [rows, d_sae] stay
    under `memory_budget` bytes (sae_lens keeps normalisation state between the two calls);
    every sum accumulates in float64, so a float16 SAE gives finite statistics.
    Returns hook, d_in, d_sae, n_activations, explained_variance 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²,
    mse (per element), l0 (mean active latents), dead_fraction. Raises ValueError."""
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
            active = z > 0
            l0 += float(active.sum())
            fired |= active.any(0)
    return {"hook": sae_hook_name(sae), "d_in": d_in, "d_sae": d_sae, "n_activations": n,
            "explained_variance": 1 - resid / total if total > 0 else None,
            "mse": resid / (n * d_in), "l0": l0 / n,
            "dead_fraction": float((~fired).float().mean())}


_QUALITY_MEMO: dict[tuple, dict] = {}


def sae_fingerprint(sae) -> str:
    """sha256 over the SAE's class, config and every state-dict tensor (24 hex digits)."""
    import hashlib
    import json

    h = hashlib.sha256(type(sae).__name__.encode())
    cfg = sae.cfg.to_dict() if hasattr(sae.cfg, "to_dict") else dict(vars(sae.cfg))
    h.update(json.dumps(cfg, sort_keys=True, default=repr).encode())
    for name, p in sae.state_dict().items():
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{p.dtype}|{tuple(p.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def sae_quality_on_data(loaded, sae, spec: str = "zoo", n: int = 256, seed: int = 1
                        ) -> tuple[dict, dict]:
    """(the data's description, SAE quality on it) for any model with data — what `info
    --data` prints and what the Model page should show.

    loaded: an `estimators.loading.LoadedModel`; spec: a data spec (`estimators.data`), whose
    unset n / seed default to 256 / 1 (the zoo default of earlier versions). Activations at the
    SAE's hook come from the shared activation cache; the statistics
    (`sae_quality_from_activations`) are memoised per (model, data, SAE) in-process.
    Raises DataError / ValueError (one line)."""
    from estimators.activation_cache import activations
    from estimators.conformance import model_fingerprint
    from estimators.data import load_data

    data = load_data(spec, loaded, n=n, seed=seed)
    key = (model_fingerprint(loaded.model), data.fingerprint, sae_fingerprint(sae))
    if key not in _QUALITY_MEMO:
        hook = sae_hook_name(sae)
        x = activations(loaded.model, data, [hook])[hook]
        if len(_QUALITY_MEMO) >= 64:
            _QUALITY_MEMO.clear()
        _QUALITY_MEMO[key] = sae_quality_from_activations(sae, x)
    return data.to_dict(), dict(_QUALITY_MEMO[key])


def top_features(model, sae, tokens: Int[Tensor, "batch pos"], labels: list[str],
                 k: int = 10, examples: int = 5) -> list[dict]:
    """The k latents that fire most often, with their mean activation when firing and the
    input tokens (with position) where they fire most strongly."""
    x, z, _ = sae_activations(model, sae, tokens)
    freq = (z > 0).float().mean(0)
    order = freq.argsort(descending=True)[:k]
    flat_tokens = tokens.reshape(-1)
    n_pos = tokens.shape[-1]
    rows = []
    for f in order.tolist():
        acts = z[:, f]
        firing = acts > 0
        mean_act = float(acts[firing].mean()) if firing.any() else 0.0
        top = acts.topk(min(examples, acts.numel()))
        ex = [f"{labels[int(flat_tokens[i])]}@{int(i) % n_pos}" for i, a in
              zip(top.indices.tolist(), top.values.tolist()) if a > 0]
        rows.append({"feature": f, "frequency": float(freq[f]), "mean_activation": mean_act,
                     "top_tokens": ex})
    return rows
