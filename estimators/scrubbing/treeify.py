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

Everything but the routing is the model's own code, so the pass follows the config: the first
residual stream comes from `model.input_to_embed` (learned positions for 'standard'; tokens only
for rotary, shortformer and alibi); shortformer positions are added to the query/key inputs
after ln1; per-head QK-norm (`use_qk_norm`), OLMo-style joint QK-norm, `clip_qkv`, rotary
(`attn.apply_rotary`), log-n scaling, the attention-score soft cap, alibi biases, causal and
local-window masks (`attn.apply_causal_mask`) and bidirectional attention follow TransformerLens;
grouped-query heads use the expanded W_K/W_V (each query head reads its key/value group); with
`parallel_attn_mlp` an MLP reads the block's input (the graph has no head→MLP edge within a
layer, and the layer's b_O is not in it); the MLP, the norms and the unembedding are the model's
modules, followed by the output logit soft cap. Whether this equals the model's forward pass on
a given model is decided numerically by `estimators.scrubbing.conformance`, not by this list.
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


def _unique_rows(keys: list[tuple]) -> tuple[list[tuple], list[int]]:
    """Distinct keys (first-seen order) and each key's index among them."""
    table: dict[tuple, int] = {}
    idx = [table.setdefault(k, len(table)) for k in keys]
    return list(table), idx


@dataclass
class _AttnLayer:
    layer: int
    sources: list[str]
    input_rows: np.ndarray        # [U, n_sources] source-version row of each distinct input
    proj: dict[str, tuple[np.ndarray, np.ndarray]]  # channel -> (head, input) per projection
    score_pairs: np.ndarray       # [S, 2] (q projection, k projection) per distinct pattern
    version_score: np.ndarray     # [R] pattern of each head version (heads in order)
    version_v: np.ndarray         # [R] v projection of each head version
    version_head: np.ndarray      # [R]
    counts: list[int]             # versions per head


@dataclass
class _MlpLayer:
    layer: int
    sources: list[str]
    input_rows: np.ndarray        # [U, n_sources]
    version_input: np.ndarray     # [V] distinct input of each version


def compile_plan(graph: PathGraph, plan: TreePlan) -> dict:
    """Index arrays for the batched pass (data-independent, computed once per plan).

    Beyond versions, identical work is shared at three levels: a distinct routed input is
    summed and normalised once per layer, a (head, input) projection is computed once per
    channel, and a (query, key) projection pair gets one attention pattern."""
    if getattr(plan, "_compiled", None) is not None:
        return plan._compiled
    layers = []
    for layer in range(graph.n_layers):
        heads = [n for n in graph.nodes if n.kind == "attn" and n.layer == layer]
        srcs = [s.name for s in graph.sources_of(heads[0])]
        keys, owners = [], []
        for hi, h in enumerate(heads):
            for kids in plan.children[h.name]:
                for c in ("q", "k", "v"):
                    keys.append(tuple(kids[(c, s)] for s in srcs))
                    owners.append((hi, c))
        uniq, inp = _unique_rows(keys)
        proj_keys = {c: [] for c in "qkv"}
        per_version = []
        for j in range(0, len(keys), 3):
            for t, c in enumerate("qkv"):
                hi = owners[j + t][0]
                proj_keys[c].append((hi, inp[j + t]))
            per_version.append(owners[j][0])
        proj, proj_idx = {}, {}
        for c in "qkv":
            u, idx = _unique_rows(proj_keys[c])
            proj[c] = (np.array([k[0] for k in u], dtype=np.int64),
                       np.array([k[1] for k in u], dtype=np.int64))
            proj_idx[c] = idx
        pairs, score_idx = _unique_rows(list(zip(proj_idx["q"], proj_idx["k"])))
        layers.append(_AttnLayer(
            layer, srcs, np.array(uniq, dtype=np.int64).reshape(len(uniq), len(srcs)), proj,
            np.array(pairs, dtype=np.int64).reshape(len(pairs), 2),
            np.array(score_idx, dtype=np.int64), np.array(proj_idx["v"], dtype=np.int64),
            np.array(per_version, dtype=np.int64),
            [len(plan.versions[h.name]) for h in heads]))
        if not graph.attn_only:
            m = graph.node(f"m{layer}")
            msrcs = [s.name for s in graph.sources_of(m)]
            u, idx = _unique_rows([tuple(k[(None, s)] for s in msrcs)
                                   for k in plan.children[m.name]])
            layers.append(_MlpLayer(layer, msrcs, np.array(u, dtype=np.int64).reshape(len(u),
                                                                               len(msrcs)),
                                    np.array(idx, dtype=np.int64)))
    logit_srcs = [s.name for s in graph.sources_of(None)]
    logits = np.array([[p[s] for s in logit_srcs] for p in plan.logits], dtype=np.int64)
    plan._compiled = {"layers": layers, "logit_sources": logit_srcs, "logit_rows": logits}
    return plan._compiled


def _norm(module, x: torch.Tensor) -> torch.Tensor:
    """The model's normalisation on x; TransformerLens' LayerNorm/LayerNormPre (float32/64)
    through the fused F.layer_norm, which computes the same biased-variance formula."""
    from transformer_lens.components import LayerNorm, LayerNormPre

    if x.dtype in (torch.float32, torch.float64):
        if type(module) is LayerNorm:
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), module.w, module.b,
                                                  module.eps)
        if type(module) is LayerNormPre:
            return torch.nn.functional.layer_norm(x, (x.shape[-1],), None, None, module.eps)
    return module(x)


def _routed_sum(store: dict[str, torch.Tensor], sources: list[str], rows: torch.Tensor,
                base: torch.Tensor) -> torch.Tensor:
    """base + Σ_j store[sources[j]][rows[:, j]]: one gather per source node, summed in place."""
    out = store[sources[0]].index_select(0, rows[:, 0])
    for j in range(1, len(sources)):
        out.add_(store[sources[j]].index_select(0, rows[:, j]))
    return out.add_(base)


def _embed_streams(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[S, n, ctx] tokens -> (the model's first residual stream [S, n, ctx, d_model], the
    shortformer positional embedding [ctx, d_model] or None), by the model's own
    `input_to_embed` (token + learned positions for 'standard'; tokens only for rotary,
    shortformer and alibi models)."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    residual, _, shortformer, mask = model.input_to_embed(flat)
    if mask is not None and not bool(mask.all()):
        raise ValueError("the data holds the tokenizer's padding token, which the model masks "
                         "out; causal scrubbing needs unpadded sequences")
    x = residual.reshape(*tokens.shape, residual.shape[-1])
    return x, (None if shortformer is None else shortformer[0])


def _per_head(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a TransformerLens [batch, pos, head, d_head] method to x [R, n, ctx, d_head]."""
    R, n, ctx, dh = x.shape
    return fn(x.reshape(R * n, ctx, 1, dh)).reshape(R, n, ctx, dh)


# Architectures whose QK-norm normalises the projections of all heads together (OLMo family).
JOINT_QK_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _joint_norm_projection(attn, c: str, xi: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                           head: torch.Tensor) -> torch.Tensor:
    """OLMo-style QK-norm: every head's projection of the copy's own input xi [P, n, ctx, d],
    normalised together over (head, d_head) by the model's q_norm/k_norm, then each row's own
    head [P, n, ctx, d_head] (the copy normalises as if all heads read its input, as a
    treeified copy recomputes LayerNorm on its own routed stream)."""
    full = torch.einsum("rnpd,hdk->rnphk", xi, w) + b
    P, n, ctx, H, dh = full.shape
    norm = attn.q_norm if c == "q" else attn.k_norm
    full = norm(full.reshape(P, n, ctx, H * dh)).reshape(P, n, ctx, H, dh)
    return full.permute(0, 3, 1, 2, 4)[torch.arange(P, device=full.device), head]


def _projections(model, attn, spec: "_AttnLayer", x: torch.Tensor,
                 shortformer: torch.Tensor | None, as_t) -> dict[str, torch.Tensor]:
    """q, k, v [P, n, ctx, d_head] of every distinct (head, input) projection, with the
    model's own post-processing: shortformer positions on q/k inputs, QK-norm (per head),
    clipped QKV, rotary embeddings, log-n scaling."""
    cfg = model.cfg
    joint = getattr(cfg, "original_architecture", None) in JOINT_QK_NORM
    proj = {}
    for c, (w, b) in (("q", (attn.W_Q, attn.b_Q)), ("k", (attn.W_K, attn.b_K)),
                      ("v", (attn.W_V, attn.b_V))):
        head, inp = as_t(spec.proj[c][0]), as_t(spec.proj[c][1])
        xi = x.index_select(0, inp)
        if shortformer is not None and c != "v":
            xi = xi + shortformer
        if c != "v" and joint and (c == "q" or cfg.n_key_value_heads is None):
            p = _joint_norm_projection(attn, c, xi, w, b, head)
        else:
            p = torch.einsum("rnpd,rdk->rnpk", xi, w.index_select(0, head)) + \
                b[head][:, None, None]
        if getattr(cfg, "use_qk_norm", False) and c != "v":
            p = attn._apply_qk_norm(p, attn.q_norm if c == "q" else attn.k_norm)
        if getattr(cfg, "clip_qkv", None) is not None:
            p = p.clamp(min=-cfg.clip_qkv, max=cfg.clip_qkv)
        if cfg.positional_embedding_type == "rotary" and c != "v":
            p = _per_head(lambda t: attn.apply_rotary(t, 0, None), p)
        if c == "q" and getattr(cfg, "use_logn_attn", False) and not attn.training:
            p = _per_head(lambda t: attn._apply_logn_scaling(t, 0), p)
        proj[c] = p
    return proj


def _attention_layer(model, spec: "_AttnLayer", x: torch.Tensor,
                     shortformer: torch.Tensor | None, as_t) -> torch.Tensor:
    """Outputs [R, n, ctx, d_model] (without b_O) of every head version of one layer, from
    the normalised distinct inputs x [U, n, ctx, d_model]."""
    from transformer_lens.components.abstract_attention import AbstractAttention
    from transformer_lens.utilities.activation_functions import apply_softcap

    cfg = model.cfg
    attn = model.blocks[spec.layer].attn
    proj = _projections(model, attn, spec, x, shortformer, as_t)
    pairs = as_t(spec.score_pairs)
    scores = torch.einsum("rnqd,rnsd->rnqs", proj["q"].index_select(0, pairs[:, 0]),
                          proj["k"].index_select(0, pairs[:, 1])) / attn.attn_scale
    scores = apply_softcap(scores, cfg.attn_scores_soft_cap)
    ctx = scores.shape[-1]
    if cfg.positional_embedding_type == "alibi":
        alibi = AbstractAttention.create_alibi_bias(cfg.n_heads, ctx, scores.device)
        pair_head = as_t(spec.proj["q"][0]).index_select(0, pairs[:, 0])
        scores = scores + alibi[:, :ctx, :ctx].to(scores.dtype).index_select(0, pair_head)[:, None]
    if (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal":
        scores = attn.apply_causal_mask(scores, 0, None)
    pattern = torch.softmax(scores, dim=-1)
    pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)
    v = proj["v"]
    z = torch.einsum("rnqs,rnsd->rnqd", pattern.index_select(0, as_t(spec.version_score)).to(
        v.dtype), v.index_select(0, as_t(spec.version_v)))
    return torch.einsum("rnqd,rdm->rnqm", z, attn.W_O.index_select(0, as_t(spec.version_head)))


@torch.no_grad()
def treeified_logits(model, graph: PathGraph, plan: TreePlan, stream_tokens: torch.Tensor,
                     return_store: bool = False):
    """Logits [n_partitions, n, ctx, d_vocab_out] of every planned partition, as the model
    computes them (final normalisation, unembedding, output soft cap).

    stream_tokens: [n_streams, n, ctx]; stream s of a version label s feeds that leaf.
    return_store: also return {node: [versions, n, ctx, d_model]} (node outputs, without
    attention biases b_O) — the conformance check compares them with the model's hooks.
    Raises ValueError when the tokens hold the padding token of a left-padding tokenizer."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    cfg = model.cfg
    dev = stream_tokens.device
    n = stream_tokens.shape[1]
    compiled = compile_plan(graph, plan)
    as_t = (lambda a: torch.as_tensor(a, device=dev))  # noqa: E731
    store: dict[str, torch.Tensor] = {}
    stream_ids = as_t(np.array([int(v[0]) for v in plan.versions["embed"]], dtype=np.int64))
    store["embed"], shortformer = _embed_streams(model, stream_tokens.index_select(0, stream_ids))
    dtype, ctx, d_model = store["embed"].dtype, store["embed"].shape[2], store["embed"].shape[3]
    bias = torch.zeros((), device=dev, dtype=dtype)  # Σ b_O over attention layers passed
    bias_before = bias
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    heads_of = {}
    for nd in graph.nodes:
        if nd.kind == "attn":
            heads_of.setdefault(nd.layer, []).append(nd.name)

    for spec in compiled["layers"]:
        block = model.blocks[spec.layer]
        if isinstance(spec, _AttnLayer):
            names = heads_of[spec.layer]
            if spec.version_head.size == 0:
                for h in names:
                    store[h] = torch.zeros((0, n, ctx, d_model), device=dev, dtype=dtype)
            else:
                x = _norm(block.ln1, _routed_sum(store, spec.sources, as_t(spec.input_rows),
                                                 bias))
                out = _attention_layer(model, spec, x, shortformer, as_t)
                for h, chunk in zip(names, torch.split(out, spec.counts)):
                    store[h] = chunk
            bias_before = bias
            bias = bias + block.attn.b_O
        else:
            name = f"m{spec.layer}"
            if spec.version_input.size == 0:
                store[name] = torch.zeros((0, n, ctx, d_model), device=dev, dtype=dtype)
                continue
            base = bias_before if parallel else bias
            x = _norm(block.ln2, _routed_sum(store, spec.sources, as_t(spec.input_rows), base))
            u = x.shape[0]
            out = block.mlp(x.reshape(u * n, ctx, -1)).reshape(u, n, ctx, -1)
            store[name] = out.index_select(0, as_t(spec.version_input))

    x = _routed_sum(store, compiled["logit_sources"], as_t(compiled["logit_rows"]), bias)
    if cfg.normalization_type is not None:
        x = _norm(model.ln_final, x)
    n_part = x.shape[0]
    logits = model.unembed(x.reshape(n_part * n, ctx, -1))
    logits = apply_softcap(logits, cfg.output_logits_soft_cap).reshape(n_part, n, ctx, -1)
    return (logits, store) if return_store else logits
