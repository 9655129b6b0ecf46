"""Small random HookedTransformers for the scrubbing tests."""

import torch


def tiny_model(attn_only: bool, normalization_type="LN", n_layers=2, n_heads=2, seed=0,
               d_vocab=11, n_ctx=8, attention_dir="causal"):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=16, n_ctx=n_ctx, d_head=4, n_heads=n_heads, d_vocab=d_vocab,
        d_mlp=None if attn_only else 32, act_fn=None if attn_only else "gelu",
        normalization_type=normalization_type, attn_only=attn_only, device="cpu", seed=seed,
        positional_embedding_type="standard", attention_dir=attention_dir)
    model = HookedTransformer(cfg)
    # Random biases too, so the test sees every term the treeified sums must carry.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    model.eval()
    return model
