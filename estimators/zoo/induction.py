"""induction: a two-layer attention-only model that continues repeated random sequences.

The classic induction-head setting (Olsson et al., 2022): a previous-token head in layer 0 and
an induction head in layer 1 let the model predict the token that followed the current token
last time. Kept small (d_model 32) because activation modelling propagates covariances over
its residual stream; it is the workbench's default model.
"""

from __future__ import annotations

from typing import Any

import torch

from estimators.zoo.base import TrainSpec, ZooBatch, ZooEntry, point, uniform

D_VOCAB = 32  # token 0 is BOS; 1..31 are content tokens
BOS = 0
N_CTX = 32
L_MIN, L_MAX = 6, 15


class Induction(ZooEntry):
    name = "induction"
    title = "Induction (2-layer attention-only)"
    description = (
        "Two-layer attention-only transformer (d_model 32, 2 heads per layer, pre-LayerNorm) "
        f"trained on BOS followed by a random prefix of {L_MIN}-{L_MAX} distinct tokens that "
        f"then repeats, filling the {N_CTX}-token context. On the repeated part the next token "
        "is determined by the previous occurrence of the current token, which the model finds "
        "with a previous-token head and an induction head: a small, well-understood circuit "
        "for testing covariance propagation, causal scrubbing hypotheses and tail estimates."
    )
    sae_hook = "blocks.0.hook_resid_post"
    metric = "accuracy"
    data_description = (
        f"BOS, then a prefix of L distinct tokens drawn uniformly from 1..{D_VOCAB - 1} "
        f"(L uniform in {L_MIN}..{L_MAX}), repeated cyclically to fill {N_CTX} positions; "
        "targets are next tokens; the loss mask covers every prediction whose answer is "
        "determined by an earlier occurrence (positions >= L+1)")
    train_spec = TrainSpec(seed=0, steps=1200, batch_size=128, lr=1e-3, weight_decay=0.01,
                           warmup_steps=200, sae_steps=2000, eval_n=8192)

    def model_config(self):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=2, d_model=32, n_ctx=N_CTX, d_head=16, n_heads=2, d_vocab=D_VOCAB,
            d_vocab_out=D_VOCAB, attn_only=True, normalization_type="LN", act_fn=None,
            positional_embedding_type="standard", device="cpu", default_prepend_bos=False,
            original_architecture="zoo-induction",
        )

    def sample(self, n: int, seed: int = 0) -> ZooBatch:
        g = torch.Generator().manual_seed(int(seed))
        lengths = torch.randint(L_MIN, L_MAX + 1, (n,), generator=g)
        prefix = torch.rand(n, D_VOCAB - 1, generator=g).argsort(dim=1)[:, :L_MAX] + 1
        j = torch.arange(N_CTX)  # index into the periodic continuation after BOS
        ext = torch.empty(n, N_CTX + 1, dtype=torch.long)
        ext[:, 0] = BOS
        ext[:, 1:] = prefix.gather(1, j.unsqueeze(0) % lengths.unsqueeze(1))
        tokens, targets = ext[:, :N_CTX], ext[:, 1:]
        pos = torch.arange(N_CTX).unsqueeze(0)
        mask = pos >= (lengths.unsqueeze(1) + 1)
        return ZooBatch(tokens=tokens, targets=targets, loss_mask=mask)

    def sae_positions(self, batch: ZooBatch) -> torch.Tensor:
        keep = torch.ones(batch.tokens.shape, dtype=torch.bool)
        keep[:, 0] = False  # BOS: one fixed vector, would dominate the variance
        return keep

    def sae_positions_description(self) -> str:
        return "all positions except BOS (position 0)"

    def token_labels(self) -> list[str]:
        return ["BOS"] + [str(i) for i in range(1, D_VOCAB)]

    def input_distributions(self) -> dict[str, list[dict[int, float]]]:
        content = list(range(1, D_VOCAB))
        return {
            "uniform-after-bos": [point(BOS)] + [uniform(content) for _ in range(N_CTX - 1)],
        }

    def reference_hypotheses(self) -> list[dict[str, Any]]:
        return [{
            "name": "previous-token-then-induction",
            "description": "A layer-0 head attends from each position to the previous one and "
                           "writes that token's identity; a layer-1 head's QK circuit (via "
                           "K-composition with the layer-0 output) attends to the position "
                           "after the earlier occurrence of the current token, and its OV "
                           "circuit copies that token to the logits.",
            "hooks": ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern",
                      "blocks.0.hook_resid_post"],
        }]
