"""max-of-K: a one-layer attention-only model that outputs the largest of K tokens.

The compact-proofs setting (Gross et al., 2024): small enough that the whole input space
(64^4 ≈ 1.7e7 sequences) can be reasoned about, with one head whose QK circuit must attend to
the largest token and whose OV circuit must copy it.
"""

from __future__ import annotations

from typing import Any

import torch

from estimators.zoo.base import TrainSpec, ZooBatch, ZooEntry, uniform

D_VOCAB = 64
K = 4


class MaxK(ZooEntry):
    name = "maxk"
    title = "Max of 4 (1-layer attention-only)"
    description = (
        f"One-layer, one-head, attention-only transformer without LayerNorm that reads {K} "
        f"tokens drawn uniformly from 0..{D_VOCAB - 1} and predicts their maximum at the last "
        "position. This is the compact-proofs setting: the input space is small enough to "
        "enumerate, the mechanism (attend to the largest token, copy it) is known, so "
        "estimates of its accuracy and of rare failures can be checked against exact answers."
    )
    sae_hook = "blocks.0.hook_resid_post"
    label_position = -1
    metric = "accuracy"
    data_description = (f"{K} tokens i.i.d. uniform over 0..{D_VOCAB - 1} (torch.Generator "
                        f"seeded per batch); label = max; loss/accuracy at the last position")
    train_spec = TrainSpec(seed=0, steps=3000, batch_size=512, lr=3e-3, weight_decay=0.01,
                           warmup_steps=200, sae_steps=2000, sae_l1=2.0, eval_n=20_000)

    def model_config(self):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=1, d_model=32, n_ctx=K, d_head=32, n_heads=1, d_vocab=D_VOCAB,
            d_vocab_out=D_VOCAB, attn_only=True, normalization_type=None, act_fn=None,
            positional_embedding_type="standard", device="cpu", default_prepend_bos=False,
            original_architecture="zoo-maxk",
        )

    def sample(self, n: int, seed: int = 0) -> ZooBatch:
        g = torch.Generator().manual_seed(int(seed))
        tokens = torch.randint(0, D_VOCAB, (n, K), generator=g)
        return ZooBatch(tokens=tokens, labels=tokens.max(dim=1).values)

    def token_labels(self) -> list[str]:
        return [str(i) for i in range(D_VOCAB)]

    def input_distributions(self) -> dict[str, list[dict[int, float]]]:
        top = list(range(D_VOCAB // 2, D_VOCAB))
        return {
            "uniform": [uniform(list(range(D_VOCAB))) for _ in range(K)],
            "upper-half": [uniform(top) for _ in range(K)],
        }

    def reference_hypotheses(self) -> list[dict[str, Any]]:
        return [{
            "name": "attend-to-max-and-copy",
            "description": "At the last position the head's QK circuit puts most attention on "
                           "the largest token in the context; its OV circuit maps each token to "
                           "a high logit on itself. Errors come from near-ties (max close to "
                           "the second-largest) and from sequences where the max is small.",
            "hooks": ["blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out"],
        }]
