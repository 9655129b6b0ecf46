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
