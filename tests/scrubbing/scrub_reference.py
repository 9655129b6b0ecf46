"""A straightforward reference for treeified causal scrubbing, kept in the tests.

It evaluates the treeified model node copy by node copy, recursing along each path from the
logits down to the embeddings, with the model's own TransformerLens modules: each head's output
is read from `hook_z` (a hook on the real attention module called with the copy's own q/k/v
inputs). It knows paths only through their text form (`embed>a0.1:k>a1.5:v>logits`), so it
shares no layout logic with the batched-stream implementation it checks.
"""

from __future__ import annotations

import torch


def _sources(cfg, kind: str, layer: int) -> list[str]:
    """Sources a destination reads, derived from the architecture."""
    out = ["embed"]
    last = cfg.n_layers if kind == "logits" else layer
    for l in range(last + (1 if kind == "mlp" else 0)):
        out += [f"a{l}.{h}" for h in range(cfg.n_heads)]
        if not cfg.attn_only and (l < layer or kind == "logits"):
            out.append(f"m{l}")
    return out


def _prefixes(cfg, node: str) -> list[str]:
    if node == "embed":
        return ["embed"]
    if node.startswith("a"):
        layer, _ = (int(x) for x in node[1:].split("."))
        return [f"{p}>{node}:{c}" for c in "qkv" for s in _sources(cfg, "attn", layer)
                for p in _prefixes(cfg, s)]
    layer = int(node[1:])
    return [f"{p}>{node}" for s in _sources(cfg, "mlp", layer) for p in _prefixes(cfg, s)]


def _bias(model, n_attn_layers: int):
    b = 0.0
    for l in range(n_attn_layers):
        b = b + model.blocks[l].attn.b_O
    return b


@torch.no_grad()
def reference_logits(model, path_stream: dict[str, int], stream_tokens: torch.Tensor,
                     memo: bool = False) -> torch.Tensor:
    """Logits [n, ctx, vocab] of the treeified model whose path p reads stream path_stream[p].

    memo=True computes each distinct node copy once (keyed by the streams of the paths below
    it), which is what one-partition-at-a-time evaluation with hooks costs at best."""
    cfg = model.cfg
    cache: dict = {}

    def value(node: str, suffix: str) -> torch.Tensor:
        key = None
        if memo:
            key = (node, tuple(path_stream[f"{p}>{suffix}"] for p in _prefixes(cfg, node)))
            if key in cache:
                return cache[key]
        out = _value(node, suffix)
        if memo:
            cache[key] = out
        return out

    def _value(node: str, suffix: str) -> torch.Tensor:
        if node == "embed":
            t = stream_tokens[path_stream[f"embed>{suffix}"]]
            return model.hook_embed(model.embed(t)) + model.hook_pos_embed(model.pos_embed(t))
        if node.startswith("a"):
            layer, head = (int(x) for x in node[1:].split("."))
            block = model.blocks[layer]
            ins = []
            for c in "qkv":
                x = sum(value(s, f"{node}:{c}>{suffix}") for s in _sources(cfg, "attn", layer))
                ins.append(block.ln1(x + _bias(model, layer)))
            got = {}

            def save(z, hook):
                got["z"] = z

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", save)]):
                block.attn(ins[0], ins[1], ins[2])
            return got["z"][:, :, head] @ block.attn.W_O[head]
        layer = int(node[1:])
        block = model.blocks[layer]
        x = sum(value(s, f"{node}>{suffix}") for s in _sources(cfg, "mlp", layer))
        return block.mlp(block.ln2(x + _bias(model, layer + 1)))

    x = sum(value(s, "logits") for s in _sources(cfg, "logits", cfg.n_layers))
    x = x + _bias(model, cfg.n_layers)
    if cfg.normalization_type is not None:
        x = model.ln_final(x)
    return model.unembed(x)
