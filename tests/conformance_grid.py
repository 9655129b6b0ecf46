"""The grid of small random HookedTransformerConfig models the conformance tests run over.

Each option of issue #9 is one entry (on top of a 2-layer, d_model 16, n_ctx 6 model with
LayerNorm, learned positions, GELU MLPs and random biases), built in float32, float16 and
bfloat16 (every one of them builds and runs on CPU in TransformerLens)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

OPTIONS = {
    "baseline (LN, learned positions)": {},
    "output_logits_soft_cap=2": dict(output_logits_soft_cap=2.0),
    "attn_scores_soft_cap=3": dict(attn_scores_soft_cap=3.0),
    "d_vocab_out=6 < d_vocab=10": dict(d_vocab_out=6),
    "normalization_type=None": dict(normalization_type=None),
    "normalization_type=LNPre": dict(normalization_type="LNPre"),
    "normalization_type=RMS": dict(normalization_type="RMS"),
    "normalization_type=RMSPre": dict(normalization_type="RMSPre"),
    "rotary": dict(positional_embedding_type="rotary", rotary_dim=4),
    "shortformer": dict(positional_embedding_type="shortformer"),
    "alibi": dict(positional_embedding_type="alibi"),
    "grouped-query (n_key_value_heads=2 of 4)": dict(n_key_value_heads=2),
    "parallel_attn_mlp": dict(parallel_attn_mlp=True),
    "use_qk_norm": dict(use_qk_norm=True),
    "attention_dir=bidirectional": dict(attention_dir="bidirectional"),
    "attn_only": dict(attn_only=True, d_mlp=None, act_fn=None),
    "gated_mlp": dict(gated_mlp=True),
    "local attention (window 2)": dict(use_local_attn=True, attn_types=["local", "global"],
                                       window_size=2),
    "OLMo joint QK-norm (OlmoeForCausalLM)": dict(original_architecture="OlmoeForCausalLM",
                                                  normalization_type="RMS"),
    "mixture of experts (4 experts, top 2)": dict(num_experts=4, experts_per_token=2,
                                                  gated_mlp=True),
    "use_normalization_before_and_after (RMS)": dict(normalization_type="RMS",
                                                     use_normalization_before_and_after=True),
    "use_attention_sinks": dict(use_attention_sinks=True),
}

# Options the scrubbing engine refuses, and the config field its one-line reason names:
# post-norm by structure (before anything runs), attention sinks by the numbers alone (no list
# in the engine mentions them: the check catches what nobody listed).
SCRUBBING_REFUSES = {"use_normalization_before_and_after (RMS)":
                     "use_normalization_before_and_after",
                     "use_attention_sinks": "use_attention_sinks"}


def grid_model(option: str, dtype: str):
    """The option's model in `dtype`, random weights and random biases, eval mode."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=2, d_model=16, n_ctx=6, d_head=4, n_heads=4, d_vocab=10, d_mlp=32,
              act_fn="gelu", normalization_type="LN", device="cpu", seed=0)
    kw.update(OPTIONS[option])
    model = HookedTransformer(HookedTransformerConfig(dtype=DTYPES[dtype], **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.copy_((0.3 * torch.randn(p.shape, generator=g)).to(p.dtype))
    return model.eval()


def output_vocab(model) -> int:
    d = getattr(model.cfg, "d_vocab_out", -1)
    return int(d) if d and d > 0 else int(model.cfg.d_vocab)


def tl_runs(model) -> bool:
    """Whether TransformerLens itself runs the model (its MoE layers, for one, cannot run in
    float16/bfloat16 on CPU); such grid cells are skipped, and refused by every engine."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, dtype=torch.long, device=next(model.parameters()).device))
        return True
    except RuntimeError:
        return False
