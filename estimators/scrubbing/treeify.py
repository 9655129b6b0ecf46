"""Treeified evaluation of path partitions in batched streams (background.md §4).

Treeification gives every path from the embeddings to the logits its own copy of the input, so
a node of the model appears once per route from it to the logits, and each copy reads, at each
of its inputs, the sum of its sources' copies. A partition labels every path with the *stream*
(the real input, or one resampled input) that feeds its leaf.

Key fact used here: the value of one copy of node n is determined by the labels of the paths
*below* it, i.e. by one label per prefix (route from `embed` to n's output). Call that label
vector a *version* of n. Two copies with the same version compute the same tensor, so instead
of one computation per tree node we compute each distinct version once:

  1. plan (top-down, cheap, numpy): the logits of partition π need, from each source s, the
     version `labels_π[logits_slice(s)]`; a version v of node n needs, for each input channel c
     and source s, the version `v[prefix_slice(n, c, s)]` of s (contiguous slices, by the
     graph's layout). Versions are deduplicated per node across all partitions of the batch.
  2. evaluate (bottom-up, batched torch): stack every version of every node on a leading axis;
     for each layer, build all destination inputs at once by gathering the sources' versions
     (a loop over source nodes, never over samples or versions), and run every (head, version)
     with einsums over the head's own W_Q/W_K/W_V/W_O.

So a partition, and a batch of partitions, costs one batched pass per data batch whose width is
the number of distinct versions: for an all-important partition every node has one version and
the pass is exactly the model's forward pass; paths are trees, so routing respects the whole
path, not only its last edge.

LayerNorm: a destination's input is LN(sum of the sources routed to it, plus the constant
biases b_O of the attention layers before it): the normalisation is recomputed per copy, on
the per-copy sum (each treeified copy of a head normalises its own routed residual stream).
Attention-layer biases b_O and MLP biases are input-independent, so they do not belong to any
path; b_O is added to every destination downstream of its layer, the MLP's biases travel with
the MLP's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from estimators.scrubbing.paths import PathGraph


@dataclass
class TreePlan:
    """The distinct versions each node must be computed in, and how they connect."""

    versions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # children[node][version][(channel, source)] = index of the source's version
    children: dict[str, list[dict[tuple, int]]] = field(default_factory=dict)
    # logits[partition][source] = index of the source's version
    logits: list[dict[str, int]] = field(default_factory=list)

    def n_versions(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.versions.items()}

    @property
    def width(self) -> int:
        """Total number of node versions computed (the cost of the pass)."""
        return sum(len(v) for v in self.versions.values())


def plan_versions(graph: PathGraph, labels: list[np.ndarray]) -> TreePlan:
    """Top-down deduplication of node versions for a batch of stream labellings.

    labels: one [n_paths] int array per partition: the stream feeding each path."""
    plan = TreePlan()
    keys: dict[str, dict[bytes, int]] = {n.name: {} for n in graph.nodes}
    for n in graph.nodes:
        plan.versions[n.name] = []
        plan.children[n.name] = []

    def register(node_name: str, v: np.ndarray) -> int:
        table = keys[node_name]
        key = v.tobytes()
        idx = table.get(key)
        if idx is None:
            idx = len(plan.versions[node_name])
            table[key] = idx
            plan.versions[node_name].append(v)
        return idx

    sources_logits = graph.sources_of(None)
    for lab in labels:
        lab = np.ascontiguousarray(lab, dtype=np.int64)
        if lab.shape != (graph.n_paths,):
            raise ValueError(f"labels must have shape ({graph.n_paths},), not {lab.shape}")
        plan.logits.append({s.name: register(s.name, lab[graph.logits_slice(s)])
                            for s in sources_logits})
    # Reverse topological order: every version of n is registered before n is expanded,
    # because only later nodes and the logits read n.
    for n in reversed(graph.nodes[1:]):
        srcs = graph.sources_of(n)
        for v in plan.versions[n.name]:
            kids = {}
            for c in n.channels:
                for s in srcs:
                    kids[(c, s.name)] = register(s.name, v[graph.prefix_slice(n, c, s)])
            plan.children[n.name].append(kids)
    return plan


def _embed(model, tokens: torch.Tensor) -> torch.Tensor:
    """[..., ctx] tokens -> [..., ctx, d_model] token + positional embeddings."""
    lead = tokens.shape[:-1]
    flat = tokens.reshape(-1, tokens.shape[-1])
    x = model.embed(flat) + model.pos_embed(flat)
    return x.reshape(*lead, *x.shape[1:])


def _routed_sum(store: dict[str, torch.Tensor], rows: dict[str, torch.Tensor],
                base: torch.Tensor) -> torch.Tensor:
    """base + Σ_s store[s][rows[s]]: one gather per source node."""
    out = None
    for s, idx in rows.items():
        term = store[s].index_select(0, idx)
        out = term if out is None else out + term
    return out + base


@torch.no_grad()
def treeified_logits(model, graph: PathGraph, plan: TreePlan,
                     stream_tokens: torch.Tensor) -> torch.Tensor:
    """Logits [n_partitions, n, ctx, vocab] of every planned partition.

    stream_tokens: [n_streams, n, ctx]; stream s of a version label s feeds that leaf."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    cfg = model.cfg
    dev = stream_tokens.device
    n, ctx = stream_tokens.shape[1], stream_tokens.shape[2]
    dtype = model.embed.W_E.dtype
    store: dict[str, torch.Tensor] = {}
    stream_ids = torch.tensor([int(v[0]) for v in plan.versions["embed"]], device=dev,
                              dtype=torch.long)
    store["embed"] = _embed(model, stream_tokens.index_select(0, stream_ids))
    zero = torch.zeros((), device=dev, dtype=dtype)
    bias_before = zero  # Σ b_O over attention layers already passed
    causal = torch.ones(ctx, ctx, dtype=torch.bool, device=dev).tril()
    node_at = {n.name: n for n in graph.nodes}

    def rows_for(node_name: str, channel) -> dict[str, torch.Tensor]:
        node = node_at[node_name]
        kids = plan.children[node_name]
        return {s.name: torch.tensor([k[(channel, s.name)] for k in kids], device=dev,
                                     dtype=torch.long) for s in graph.sources_of(node)}

    for layer in range(cfg.n_layers):
        block = model.blocks[layer]
        attn = block.attn
        heads = [nd for nd in graph.nodes if nd.kind == "attn" and nd.layer == layer]
        counts = [len(plan.versions[h.name]) for h in heads]
        head_of_row = torch.repeat_interleave(torch.arange(len(heads), device=dev),
                                              torch.tensor(counts, device=dev))
        if head_of_row.numel():
            inputs = {}
            for c in ("q", "k", "v"):
                per_head = [rows_for(h.name, c) for h in heads if plan.versions[h.name]]
                rows = {s: torch.cat([r[s] for r in per_head]) for s in per_head[0]}
                # Every head of a layer reads the same sources, so rows line up by source.
                srcs_store = {s: store[s] for s in rows}
                inputs[c] = block.ln1(_routed_sum(srcs_store, rows, bias_before))
            wq, wk, wv, wo = (attn.W_Q[head_of_row], attn.W_K[head_of_row],
                              attn.W_V[head_of_row], attn.W_O[head_of_row])
            q = torch.einsum("rnpd,rdk->rnpk", inputs["q"], wq) + attn.b_Q[head_of_row][:, None, None]
            k = torch.einsum("rnpd,rdk->rnpk", inputs["k"], wk) + attn.b_K[head_of_row][:, None, None]
            v = torch.einsum("rnpd,rdk->rnpk", inputs["v"], wv) + attn.b_V[head_of_row][:, None, None]
            scores = torch.einsum("rnqk,rnsk->rnqs", q, k) / attn.attn_scale
            scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
            scores = torch.where(causal, scores, torch.tensor(-torch.inf, device=dev,
                                                              dtype=scores.dtype))
            pattern = torch.softmax(scores, dim=-1)
            z = torch.einsum("rnqs,rnsk->rnqk", pattern, v)
            out = torch.einsum("rnqk,rkd->rnqd", z, wo)
            for h, chunk in zip(heads, torch.split(out, counts)):
                store[h.name] = chunk
        else:
            for h in heads:
                store[h.name] = torch.zeros((0, n, ctx, cfg.d_model), device=dev, dtype=dtype)
        if not cfg.attn_only:
            bias_mid = bias_before + attn.b_O
            name = f"m{layer}"
            if plan.versions[name]:
                rows = rows_for(name, None)
                x = block.ln2(_routed_sum(store, rows, bias_mid))
                vn = x.shape[0]
                out = block.mlp(x.reshape(vn * n, ctx, -1)).reshape(vn, n, ctx, -1)
                store[name] = out
            else:
                store[name] = torch.zeros((0, n, ctx, cfg.d_model), device=dev, dtype=dtype)
        bias_before = bias_before + attn.b_O

    rows = {s.name: torch.tensor([p[s.name] for p in plan.logits], device=dev, dtype=torch.long)
            for s in graph.sources_of(None)}
    x = _routed_sum(store, rows, bias_before)
    if cfg.normalization_type is not None:
        x = model.ln_final(x)
    n_part = x.shape[0]
    logits = model.unembed(x.reshape(n_part * n, ctx, -1))
    return logits.reshape(n_part, n, ctx, -1)
