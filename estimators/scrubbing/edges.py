"""Causal scrubbing by patching edges: hypotheses over nodes and edges, for models too large to
treeify (background.md §4; path patching, Wang et al. 2022; AutoCircuit's edge masks).

Nodes are those of `PathGraph` (`embed`, heads `a{l}.{h}`, MLPs `m{l}`); an *edge* runs from a
sender node to a receiver input it reads: a head's query, key or value input (`a{l}.{h}:q`,
`:k`, `:v`), an MLP's input (`m{l}`) or the logits. Every receiver's input is the sum of its
senders' outputs (plus the constant biases the model adds), and each edge carries either

  * the sender's output on a *clean* run of one input stream — the real input for an edge in
    the important group, the group's resampled input for an edge in a block; or
  * for an edge no group names, the sender's output in the *patched* run itself, which runs on
    the shared random ("rest") input with every named edge replaced as above.

So a path (a chain of edges from `embed` to the logits) is fed by the group of the named edge
nearest the logits on it, and by the rest input when it has none. This is the treeified
evaluation of the path partition that gives every path through a named edge that edge's group:
the two engines agree whenever the partition is written in single edges (test
tests/scrubbing/test_edges.py), at the cost of 1 patched forward pass per partition plus 1
clean forward pass per distinct stream, instead of one copy per treeified path.

Partition language (partition.py) restricted to what edges express: each pattern must name a
set of whole edges (every path through them), in one of the forms `PathGraph.edge_patterns` and
`node_patterns` produce:

    embed>logits   *>a1.3:*>logits   *>m0>logits   embed>a0.1:k>*   *>a0.1:*>a1.2:v>*
    *>a0.1:*>*     (every edge into head 0.1, i.e. every path through it)    *  (every edge)

with `*` wildcards inside hops. A pattern that names paths of more than one edge whose routing
matters (a sender hop with a fixed channel such as `*>a1.0:k>logits`, or three or more hops) is
a `PathError` of one line. Two groups whose edges lie on one path would both claim that path,
so, as in the treeified engine, overlapping groups are refused.

Configs: the patched pass is the model's own forward pass (`model.run_with_hooks` with
`use_split_qkv_input` (in the layers whose heads need it) and `use_hook_mlp_in` switched on for
its duration: every head reads its own q/k/v input through the block's ln1 and attention, every
MLP its input through ln2), so whatever the model's modules do is done (rotary, alibi, soft
caps, QK-norm, local/bidirectional attention, MoE, attention sinks, ...); whether it equals
`model(tokens)` is decided numerically by
`estimators.scrubbing.edges_conformance`. Two consequences: grouped-query heads of one key/value
group read one key and one value input, so a partition must give their k (and v) edges the same
groups (else PathError); with OLMo's joint QK-norm a head whose q/k input differs from its
layer-mates' is normalised jointly with their projections of *their* inputs (TransformerLens'
split-input semantics), where the treeified engine normalises each copy as if all heads read
its input — so on those models the two engines differ for such partitions.

Surprise: the same code as `PathPartition.description_parts` (estimators/surprise.py), over the
model's E edges instead of its P treeified paths: S(π) pays b bits per *edge* kept (important,
or the matched share of a matched block's edges), not per path.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from estimators.scrubbing.partition import IMPORTANT, REST, PathPartition, kept_share, \
    resample_rule_bits
from estimators.scrubbing.paths import PathError, PathGraph, check_supported, \
    path_pattern_regex
from estimators.surprise import parameter_bits, subset_bits

UNNAMED = -1  # edge label: the patched run's own sender output


class EdgeGraph:
    """The edges of one model architecture (no path enumeration; any size).

    `dests[d]` = (node name or "logits", channel or None); `sources[d]` = the node indices the
    receiver reads (PathGraph's `sources_of`); edge e = (`edge_dest[e]`, `edge_src[e]`), the
    edges of receiver d are the contiguous slice `dest_slice[d]`."""

    def __init__(self, n_layers: int, n_heads: int, attn_only: bool, parallel: bool = False,
                 n_ctx: int | None = None, n_kv_heads: int | None = None):
        self.graph = PathGraph(n_layers, n_heads, attn_only, max_paths=float("inf"),
                               n_ctx=n_ctx, parallel=parallel)
        g = self.graph
        self.nodes = g.nodes
        self.n_layers, self.n_heads, self.n_ctx = g.n_layers, g.n_heads, n_ctx
        self.attn_only, self.parallel = g.attn_only, g.parallel
        self.n_kv_heads = n_kv_heads
        dests, sources = [], []
        for n in g.nodes[1:] + [None]:
            for c in (n.channels if n is not None else (None,)):
                dests.append((n.name if n is not None else "logits", c))
                sources.append(np.array([g.index[s.name] for s in g.sources_of(n)],
                                        dtype=np.int64))
        self.dests, self.sources = dests, sources
        sizes = np.array([len(s) for s in sources])
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.dest_slice = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.edge_dest = np.repeat(np.arange(len(dests)), sizes)
        self.edge_src = np.concatenate(sources)
        self.n_edges = int(len(self.edge_src))
        self.dest_index = {d: i for i, d in enumerate(dests)}

    @classmethod
    def from_model(cls, model) -> "EdgeGraph":
        check_supported(model)
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, cfg.attn_only,
                   bool(getattr(cfg, "parallel_attn_mlp", False)), n_ctx=cfg.n_ctx,
                   n_kv_heads=getattr(cfg, "n_key_value_heads", None))

    def hop(self, d: int) -> str:
        name, c = self.dests[d]
        return f"{name}:{c}" if c else name

    def edge_text(self, e: int) -> str:
        s = self.nodes[int(self.edge_src[e])].name
        return f"{s}>{self.hop(int(self.edge_dest[e]))}"

    @cached_property
    def downstream(self) -> np.ndarray:
        """[n_nodes, n_nodes] bool: down[x, y] when y is x or reads x (directly or not; the
        graph's reads are transitively closed)."""
        n = len(self.nodes)
        down = np.eye(n, dtype=bool)
        for d, srcs in enumerate(self.sources):
            name, _ = self.dests[d]
            if name != "logits":
                down[srcs, self.graph.index[name]] = True
        return down

    def describe(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "attn_only": self.attn_only,
                "n_nodes": len(self.nodes), "n_edges": self.n_edges}

    # The PathGraph API the page and the search use (units are edges here, paths there).
    UNIT = "edge"

    @property
    def n_units(self) -> int:
        """The number of units a partition assigns: E edges."""
        return self.n_edges

    def sources_of(self, dest):
        return self.graph.sources_of(dest)

    def node(self, name: str):
        return self.graph.node(name)

    @property
    def index(self) -> dict:
        return self.graph.index

    def edge_patterns(self) -> list[str]:
        """One pattern per edge (`edge_text` order is not kept: PathGraph's order, receiver by
        receiver), each naming exactly that edge in the edge language."""
        return self.graph.edge_patterns()

    def node_patterns(self) -> list[str]:
        """One pattern per node other than embed: every edge into it (every path through it)."""
        return self.graph.node_patterns()

    def match_required(self, pattern: str) -> np.ndarray:
        """`match_edges`: the edges a pattern names; PathError (one line) when it names none or
        more than single edges / whole nodes can express."""
        return self.match_edges(pattern)

    def edge_pattern(self, e: int) -> str:
        """The pattern naming edge e alone (the form `edge_patterns` uses)."""
        s = self.nodes[int(self.edge_src[e])]
        name, c = self.dests[int(self.edge_dest[e])]
        left = "embed" if s.kind == "embed" else f"*>{s.name}" + (":*" if s.kind == "attn"
                                                                   else "")
        hop = "logits" if name == "logits" else (f"{name}:{c}" if c else name)
        return f"{left}>{hop}" + ("" if name == "logits" else ">*")

    # ---------------------------------------------------------------------------- patterns
    def match_edges(self, pattern: str) -> np.ndarray:
        """Edge indices a pattern names (module docstring); PathError (one line) otherwise."""
        path_pattern_regex(pattern)  # malformed text
        hops = pattern.strip().split(">")
        if all(h == "*" for h in hops):
            return np.arange(self.n_edges)
        lead = hops[0] == "*"
        trail = hops[-1] == "*"
        core = hops[int(lead): len(hops) - int(trail)]
        if any(h == "*" for h in core) or len(core) > 2:
            raise PathError(self._multi(pattern, "it names a chain of more than one edge"))
        if len(core) == 1:
            return self._one_hop(pattern, core[0], lead, trail)
        s_hop, d_hop = core
        dests = self._dests_matching(d_hop)
        if s_hop == "embed":
            senders = np.array([0]) if not lead else np.zeros(0, dtype=np.int64)
        else:
            senders = self._whole_senders(pattern, s_hop) if lead else np.zeros(0, np.int64)
        if any(self.dests[d][0] == "logits" for d in dests) and trail:
            dests = [d for d in dests if self.dests[d][0] != "logits"]
        if not trail:
            dests = [d for d in dests if self.dests[d][0] == "logits"]
        out = [np.flatnonzero(np.isin(self.sources[d], senders)) + self.dest_slice[d].start
               for d in dests]
        return self._nonempty(pattern, np.concatenate(out) if out else np.zeros(0, np.int64))

    def _one_hop(self, pattern, hop, lead, trail) -> np.ndarray:
        if hop == "embed" and not lead and trail:  # every edge out of embed: every path
            return self._nonempty(pattern, np.flatnonzero(self.edge_src == 0))
        if hop == "logits" and lead and not trail:
            return self._nonempty(pattern, np.arange(*self._span(self.dest_index[("logits",
                                                                                  None)])))
        if lead and trail:  # every edge into the receivers named: every path through them
            dests = [d for d in self._dests_matching(hop) if self.dests[d][0] != "logits"]
            out = [np.arange(*self._span(d)) for d in dests]
            return self._nonempty(pattern, np.concatenate(out) if out else np.zeros(0, int))
        return self._nonempty(pattern, np.zeros(0, dtype=np.int64))

    def _span(self, d: int) -> tuple[int, int]:
        return self.dest_slice[d].start, self.dest_slice[d].stop

    def _multi(self, pattern: str, why: str) -> str:
        return (f"path pattern {pattern!r} names paths of more than one edge whose routing "
                f"matters ({why}); the edge engine takes single edges (e.g. embed>logits, "
                f"*>a0.0:*>logits, *>a0.0:*>a1.0:k>*) or whole nodes (*>a0.0:*>*): use "
                f"--engine treeified on a model small enough to treeify")

    def _nonempty(self, pattern: str, idx: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            raise PathError(f"path pattern {pattern!r} names no edge of this model (edges "
                            f"look like embed>logits, *>a0.0:*>logits, *>a0.0:*>a1.0:k>*)")
        return np.unique(idx)

    def _dests_matching(self, hop: str) -> list[int]:
        rx = re.compile("^" + "".join(r"[^>\n]*" if ch == "*" else re.escape(ch)
                                      for ch in hop) + "$")
        return [d for d in range(len(self.dests)) if rx.match(self.hop(d))]

    def _whole_senders(self, pattern: str, hop: str) -> np.ndarray:
        """Nodes whose every input channel the hop matches; a hop that matches only some
        channels of a node fixes the routing into it: more than one edge."""
        rx = re.compile("^" + "".join(r"[^>\n]*" if ch == "*" else re.escape(ch)
                                      for ch in hop) + "$")
        out = []
        for i, n in enumerate(self.nodes[1:], start=1):
            hit = [bool(rx.match(n.hop(c))) for c in n.channels]
            if all(hit):
                out.append(i)
            elif any(hit):
                raise PathError(self._multi(
                    pattern, f"hop {hop!r} fixes which input of {n.name} the paths enter by"))
        return np.array(out, dtype=np.int64)

    # ---------------------------------------------------------------------------- partitions
    def assign(self, partition: PathPartition) -> np.ndarray:
        """[n_edges] group per edge: 0 important, j ≥ 1 the j-th block, −1 unnamed.

        Raises PathError (one line) for a pattern edges cannot express, an edge in two groups,
        or two groups with edges on one path (that path would be in both)."""
        out = np.full(self.n_edges, REST, dtype=np.int64)
        groups = [(IMPORTANT, "important", partition.important)] + [
            (j + 1, f"blocks[{j}]", b.paths) for j, b in enumerate(partition.blocks)]
        names = {}
        for gid, gname, patterns in groups:
            names[gid] = gname
            mine = np.zeros(self.n_edges, dtype=bool)
            for p in patterns:
                mine[self.match_edges(p)] = True
            clash = mine & (out != REST)
            if clash.any():
                e = int(np.flatnonzero(clash)[0])
                raise PathError(f"edge {self.edge_text(e)} is in both {names[int(out[e])]} "
                                f"and {gname}; blocks must not overlap")
            out[mine] = gid
        self._check_paths(out, names)
        return out

    def _check_paths(self, assignment: np.ndarray, names: dict) -> None:
        down = self.downstream
        gids = [g for g in np.unique(assignment) if g != REST]
        reach, first = {}, {}
        for g in gids:
            edges = np.flatnonzero(assignment == g)
            recv = [self.graph.index[self.dests[d][0]] for d in np.unique(self.edge_dest[edges])
                    if self.dests[d][0] != "logits"]
            reach[g] = down[recv].any(axis=0) if recv else np.zeros(len(self.nodes), bool)
            first[g] = edges
        for g1 in gids:
            for g2 in gids:
                if g1 == g2:
                    continue
                hit = np.flatnonzero(reach[g1][self.edge_src[first[g2]]])
                if hit.size:
                    e2 = int(first[g2][hit[0]])
                    s = int(self.edge_src[e2])
                    e1 = next(int(e) for e in first[g1] if self.dests[self.edge_dest[e]][0]
                              != "logits" and down[self.graph.index[
                                  self.dests[self.edge_dest[e]][0]], s])
                    raise PathError(
                        f"edges {self.edge_text(e1)} ({names[g1]}) and {self.edge_text(e2)} "
                        f"({names[g2]}) lie on one path, which would be in both groups; "
                        f"blocks must not overlap")

    def description_parts(self, partition: PathPartition, bits_per_parameter: float,
                          n_positions: int | None = None,
                          assignment: np.ndarray | None = None) -> dict[str, float]:
        """S(π) term by term in bits: `PathPartition.description_parts`' code over the E edges
        (b bits per edge kept instead of per path). Raises as `assign`."""
        if not bits_per_parameter >= 0:
            raise ValueError("bits_per_parameter must be ≥ 0")
        a = self.assign(partition) if assignment is None else assignment
        k = int((a != REST).sum())
        parts = {"which edges": subset_bits(self.n_edges, k), "grouping": 0.0}
        if not k:
            return parts
        sizes = [int((a == g).sum()) for g in range(len(partition.blocks) + 1)]
        log2_fact = lambda m: math.lgamma(m + 1) / math.log(2)  # noqa: E731
        parts["grouping"] = (1 + len(partition.blocks)) * math.log2(k + 1) + log2_fact(k) - \
            sum(log2_fact(m) for m in sizes)
        n = max(int(n_positions or self.n_ctx or 1), 1)
        if sizes[0]:
            parts[f"important ({sizes[0]} edges)"] = parameter_bits(sizes[0], bits_per_parameter)
        for j, b in enumerate(partition.blocks):
            parts[f"blocks[{j}] {b.resample} ({sizes[j + 1]} edges)"] = \
                resample_rule_bits(b.feature, self.n_ctx) + parameter_bits(
                    sizes[j + 1] * kept_share(b.feature, n), bits_per_parameter)
        return parts


# ================================================================================ the pass
@dataclass
class _Clean:
    """One clean forward pass: logits and the activations the patched pass reads."""

    logits: torch.Tensor
    acts: dict[str, torch.Tensor]


def _capture_names(L: int, attn_only: bool, parallel: bool) -> set[str]:
    names = {f"blocks.{L - 1}.hook_resid_post"}
    for l in range(L):
        names |= {f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z"}
        if not attn_only:
            names.add(f"blocks.{l}.hook_mlp_out")
            if not parallel:
                names.add(f"blocks.{l}.hook_resid_mid")
    return names


@torch.no_grad()
def clean_run(model, tokens: torch.Tensor, eg: EdgeGraph) -> _Clean:
    """`model(tokens)` (the model's own pass, logits [n, T, d_vocab_out]) and, by hooks, every
    sender's output source: resid_pre, hook_z, hook_mlp_out, resid_mid, the last resid_post."""
    names = _capture_names(eg.n_layers, eg.attn_only, eg.parallel)
    acts: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        acts[hook.name] = act.detach()

    logits = model.run_with_hooks(tokens, return_type="logits",
                                  fwd_hooks=[(lambda n: n in names, keep)])
    return _Clean(logits, acts)


def _dest_input_clean(eg: EdgeGraph, clean: _Clean, d: int) -> torch.Tensor:
    """The clean run's residual stream that receiver d reads (all its senders + biases)."""
    name, _ = eg.dests[d]
    L = eg.n_layers
    if name == "logits":
        return clean.acts[f"blocks.{L - 1}.hook_resid_post"]
    node = eg.graph.node(name)
    if node.kind == "attn" or eg.parallel:
        return clean.acts[f"blocks.{node.layer}.hook_resid_pre"]
    return clean.acts[f"blocks.{node.layer}.hook_resid_mid"]


class _Patcher:
    """Hooks of one patched pass over P hypotheses × n examples (rows j·n … (j+1)·n − 1)."""

    def __init__(self, model, eg: EdgeGraph, labels: list[np.ndarray], cleans: list[_Clean],
                 n: int, exact: bool):
        self.model, self.eg, self.labels, self.cleans = model, eg, labels, cleans
        self.n, self.exact = n, exact
        self.plans = [self._plan(lab) for lab in labels]
        # slot buffers: per (hypothesis, stream) the differences clean − patched of the senders
        # that some named edge of that stream reads, [n_slots, n·T·d_model]
        self.slots: list[dict[int, dict[int, int]]] = []
        self.buf: list[dict[int, torch.Tensor]] = []
        for lab in labels:
            per: dict[int, dict[int, int]] = {}
            for g in np.unique(lab[lab >= 0]):
                srcs = np.unique(eg.edge_src[lab == g])
                per[int(g)] = {int(s): i for i, s in enumerate(srcs)}
            self.slots.append(per)
            self.buf.append({})

    def _plan(self, lab: np.ndarray) -> list[tuple]:
        """Per receiver: ("base",) | ("clean", g) | ("corr", {g: sender node indices})."""
        out = []
        for d, sl in enumerate(self.eg.dest_slice):
            lv = lab[sl]
            named = lv >= 0
            if not named.any():
                out.append(("base",))
            elif self.exact and named.all() and (lv == lv[0]).all():
                out.append(("clean", int(lv[0])))
            else:
                srcs = self.eg.sources[d]
                out.append(("corr", {int(g): srcs[lv == g] for g in np.unique(lv[named])}))
        return out

    # -------------------------------------------------------------- sender differences
    def _store(self, node: int, patched_rows: torch.Tensor, clean_of) -> None:
        """Record clean − patched of sender `node` for every (hypothesis, stream) reading it.
        patched_rows: [P·n, T, d_model]; clean_of(g) -> [n, T, d_model]."""
        for j, per in enumerate(self.slots):
            for g, slot in per.items():
                i = slot.get(node)
                if i is None:
                    continue
                diff = clean_of(g) - patched_rows[j * self.n:(j + 1) * self.n]
                buf = self.buf[j].get(g)
                if buf is None:
                    buf = self.buf[j][g] = torch.zeros((len(slot), diff.numel()),
                                                       dtype=diff.dtype, device=diff.device)
                buf[i] = diff.reshape(-1)

    def _correction(self, j: int, spec: dict, shape) -> torch.Tensor:
        out = None
        for g, srcs in spec.items():
            slot = self.slots[j][g]
            idx = torch.as_tensor([slot[int(s)] for s in srcs], device=self.buf[j][g].device)
            c = self.buf[j][g].index_select(0, idx).sum(0).reshape(shape)
            out = c if out is None else out + c
        return out

    def _apply(self, value: torch.Tensor, dests: list[int], head_axis: bool) -> torch.Tensor:
        """value [P·n, T, (H,) d]: receiver inputs of the base pass; returns the patched ones
        (dests[i] is the receiver of head i, or the one receiver when not head_axis)."""
        out = None
        n = self.n
        for j, plan in enumerate(self.plans):
            for i, d in enumerate(dests):
                mode = plan[d]
                if mode[0] == "base":
                    continue
                if out is None:
                    out = value.clone()
                rows = slice(j * n, (j + 1) * n)
                tgt = out[rows, :, i] if head_axis else out[rows]
                if mode[0] == "clean":
                    tgt.copy_(_dest_input_clean(self.eg, self.cleans[mode[1]], d))
                else:
                    tgt.add_(self._correction(j, mode[1], tgt.shape))
        return value if out is None else out

    # -------------------------------------------------------------- hooks
    def hooks(self) -> list[tuple]:
        eg = self.eg
        L, H = eg.n_layers, eg.n_heads
        out = [("blocks.0.hook_resid_pre", self._embed_hook)]
        for l in range(L):
            # A layer whose q/k/v receivers all read the plain residual stream runs unsplit
            # (the flag is read by the block after its hook_resid_pre).
            split = any(plan[eg.dest_index[(f"a{l}.{h}", c)]][0] != "base"
                        for plan in self.plans for h in range(H) for c in "qkv")
            out.append((f"blocks.{l}.hook_resid_pre", self._split_hook(split)))
            for c in "qkv":
                heads = [eg.dest_index[(f"a{l}.{h}", c)] for h in range(H)]
                out.append((f"blocks.{l}.hook_{c}_input", self._qkv_hook(heads)))
            out.append((f"blocks.{l}.attn.hook_z", self._z_hook(l)))
            if not eg.attn_only:
                out.append((f"blocks.{l}.hook_mlp_in",
                            self._single_hook(eg.dest_index[(f"m{l}", None)])))
                out.append((f"blocks.{l}.hook_mlp_out", self._mlp_hook(l)))
        out.append((f"blocks.{L - 1}.hook_resid_post",
                    self._single_hook(eg.dest_index[("logits", None)])))
        return out

    def _split_hook(self, split: bool):
        def fn(act, hook):
            self.model.cfg.use_split_qkv_input = split
            return act
        return fn

    def _embed_hook(self, act, hook):
        self._store(0, act, lambda g: self.cleans[g].acts["blocks.0.hook_resid_pre"])
        return act

    def _qkv_hook(self, heads):
        def fn(act, hook):
            groups = act.shape[2]
            if groups == len(heads):
                return self._apply(act, heads, True)
            per = len(heads) // groups  # grouped-query k/v: one input per group of heads
            return self._apply(act, heads[::per], True)
        return fn

    def _single_hook(self, d):
        return lambda act, hook: self._apply(act, [d], False)

    def _z_hook(self, l):
        W_O = self.model.blocks[l].attn.W_O  # [H, d_head, d_model]

        def fn(z, hook):
            for h in range(self.eg.n_heads):
                node = self.eg.graph.index[f"a{l}.{h}"]
                if not any(node in per.get(g, {}) for per in self.slots for g in per):
                    continue
                self._store(node, z[:, :, h] @ W_O[h],
                            lambda g: self.cleans[g].acts[hook.name][:, :, h] @ W_O[h])
            return z
        return fn

    def _mlp_hook(self, l):
        def fn(act, hook):
            self._store(self.eg.graph.index[f"m{l}"], act,
                        lambda g: self.cleans[g].acts[hook.name])
            return act
        return fn


def check_grouped_kv(eg: EdgeGraph, lab: np.ndarray) -> None:
    """Grouped-query attention: the heads of one key/value group share one key and one value
    input, so the edges into them must carry the same labels (PathError otherwise)."""
    kv = eg.n_kv_heads
    if kv is None or kv == eg.n_heads:
        return
    per = eg.n_heads // kv
    for l in range(eg.n_layers):
        for c in "kv":
            for h in range(eg.n_heads):
                first = eg.dest_index[(f"a{l}.{h - h % per}", c)]
                d = eg.dest_index[(f"a{l}.{h}", c)]
                if not np.array_equal(lab[eg.dest_slice[d]], lab[eg.dest_slice[first]]):
                    raise PathError(f"heads a{l}.{h - h % per} and a{l}.{h} share one {c} "
                                    f"input (grouped-query attention): their {c} edges must "
                                    f"be in the same groups")


@torch.no_grad()
def edge_logits(model, eg: EdgeGraph, labels: list[np.ndarray], stream_tokens: torch.Tensor,
                rest: int = 1, exact: bool = True, cleans: list[_Clean] | None = None
                ) -> torch.Tensor:
    """Logits [P, n, T, d_vocab_out] of P edge labellings by patching edges.

    labels: [n_edges] int arrays: −1 the patched run's own sender output, s ≥ 0 the sender's
    output on a clean run of stream s; stream_tokens [S, n, T]; `rest`: the stream the patched
    run reads at its embeddings. exact: a receiver whose edges all carry one stream reads that
    clean run's residual stream itself (and the logits its logits), so an all-real labelling is
    `model(tokens)` bit for bit; False computes every receiver as base + Σ corrections (the
    conformance check tests that arithmetic). Cost: one clean forward pass per stream used,
    one patched pass over the labellings that need it (P·n rows).
    Raises PathError for grouped-query heads whose shared k/v edges disagree."""
    n = stream_tokens.shape[1]
    for lab in labels:
        check_grouped_kv(eg, lab)
    if cleans is None:
        used = sorted({int(s) for lab in labels for s in np.unique(lab) if s >= 0} | {rest})
        cleans = [clean_run(model, stream_tokens[s], eg) if s in used else None
                  for s in range(stream_tokens.shape[0])]
    logit_d = eg.dest_index[("logits", None)]
    out: list[torch.Tensor | None] = [None] * len(labels)
    need = []
    for j, lab in enumerate(labels):
        lv = lab[eg.dest_slice[logit_d]]
        if exact and (lv >= 0).all() and (lv == lv[0]).all():
            out[j] = cleans[int(lv[0])].logits
        elif not (lab >= 0).any():
            out[j] = cleans[rest].logits
        else:
            need.append(j)
    if need:
        patcher = _Patcher(model, eg, [labels[j] for j in need], cleans, n, exact)
        cfg = model.cfg
        saved = (cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
        try:
            cfg.use_split_qkv_input = True
            cfg.use_hook_mlp_in = True
            tokens = stream_tokens[rest].repeat(len(need), 1)
            logits = model.run_with_hooks(tokens, return_type="logits",
                                          fwd_hooks=patcher.hooks())
        finally:
            cfg.use_split_qkv_input, cfg.use_hook_mlp_in = saved
        for i, j in enumerate(need):
            out[j] = logits[i * n:(i + 1) * n]
    return torch.stack(out)


# ================================================================================ evaluator
def _scrubber_class():
    from estimators.scrubbing.evaluate import Scrubber
    return Scrubber


class EdgeScrubber(_scrubber_class()):
    """`Scrubber` whose partitions are evaluated by patching edges (module docstring): same
    data, resampling streams (common random numbers), losses and result type; partitions must
    be written in single edges or whole nodes. `max_partitions` partitions share one patched
    pass (fewer when `memory_budget_mib` asks), `batch_size` examples per pass.

    Raises PathError for a model without per-head edges and `conformance.EngineUnsupported`
    (one line) when the edge pass fails its conformance check ("scrubbing-edges")."""

    ENGINE = "scrubbing-edges"

    @staticmethod
    def _make_graph(model):
        return EdgeGraph.from_model(model)

    def _assign_uncached(self, partition: PathPartition) -> np.ndarray:
        return self.graph.assign(partition)

    def partitions_per_pass(self, n_examples: int | None = None) -> int:
        """Partitions in one patched pass: max_partitions, fewer when the pass (split q/k/v
        inputs, ~8 d_model-wide buffers and the logits of min(batch_size, n_examples)
        examples per partition, float32) would pass memory_budget_mib. n_examples: the
        reference set's size (default the data's)."""
        cfg = self.model.cfg
        ctx = self.data.batch.tokens.shape[1]
        rows = min(self.batch_size, int(n_examples or len(self.data)))
        per = rows * ctx * 4 * (3 * cfg.n_heads * cfg.d_model + 8 * cfg.d_model
                                + 2 * cfg.d_vocab_out)
        fits = (self.config.memory_budget_mib * 2**20) // max(per, 1)
        return int(max(1, min(self.max_partitions, fits)))

    @torch.no_grad()
    def scrubbed_losses(self, partitions, reference=None, should_stop=None, *, progress=None):
        """Per-example scrubbed losses [n_partitions, n_ref] and diagnostics; `progress` as in
        `Scrubber.scrubbed_losses`."""
        from estimators.progress import report
        from estimators.scrubbing.evaluate import take

        reference = reference or self.data
        assignments = [self.assign(p) for p in partitions]
        out = torch.empty(len(partitions), len(reference))
        k = self.partitions_per_pass(len(reference))
        diag = {"engine": "edges", "n_edges": self.graph.n_edges, "partitions_per_pass": k,
                "fallbacks": {}}
        # One data batch: a stream's clean run is the same for every group of partitions
        # (its draw is a function of its key), so it is run once for the whole call.
        reuse = len(reference) <= self.batch_size
        clean_by_key: dict[str, _Clean] = {}
        for g0 in range(0, len(partitions), k):
            group = list(range(g0, min(g0 + k, len(partitions))))
            keys: dict[str, int] = {"": 0, "rest": 1}
            draws = {"rest": self.draw("rest", PathPartition(), REST, reference)[0]}
            labels = [self.stream_labels(partitions[i], assignments[i], reference, keys, draws,
                                         diag, fill=UNNAMED, skip=(REST,)) for i in group]
            base = g0 == 0 and not self._has_baseline(reference)
            orig, rand = [], []
            used = sorted({int(v) for lab in labels for v in np.unique(lab) if v >= 0} | {1}
                          | ({0} if base else set()))
            for a in range(0, len(reference), self.batch_size):
                if should_stop is not None and should_stop():
                    raise InterruptedError("stopped")
                sl = slice(a, a + self.batch_size)
                ref = take(reference.batch, sl)
                streams = [ref.tokens] + [self.data.batch.tokens[draws[key][sl]]
                                          for key in list(keys)[1:]]
                stream_tokens = torch.stack(streams).to(self.device)
                cleans = []
                for i, key in enumerate(keys):
                    c = clean_by_key.get(key) if reuse and i in used else None
                    if c is None and i in used:
                        c = clean_run(self.model, stream_tokens[i], self.graph)
                        if reuse:
                            clean_by_key[key] = c
                    cleans.append(c)
                ref_dev = ref.to(self.device)
                if base:  # the clean real and rest runs are the baseline passes themselves
                    orig.append(reference.loss_fn(cleans[0].logits, ref_dev).float().cpu())
                    rand.append(reference.loss_fn(cleans[1].logits, ref_dev).float().cpu())
                logits = edge_logits(self.model, self.graph, labels, stream_tokens, rest=1,
                                     cleans=cleans)
                out[g0:g0 + len(group), sl] = torch.stack(
                    [reference.loss_fn(logits[j], ref_dev) for j in range(len(group))]
                ).float().cpu()
                report(progress, g0 * len(reference) + len(group) * min(
                    a + self.batch_size, len(reference)), len(partitions) * len(reference),
                    "examples scored", "scrubbing")
            if base:
                self._keep_baseline(reference, (torch.cat(orig), torch.cat(rand)))
        return out, diag

    def _has_baseline(self, reference) -> bool:
        """Baselines known (this scrubber, or the shared disk store)."""
        return self._stored_baseline(reference) is not None

    def check(self, partition: PathPartition) -> np.ndarray:
        """The edge assignment, refused (PathError, one line) where edges cannot express the
        partition, including a grouped-query key/value group split between groups."""
        a = self.assign(partition)
        check_grouped_kv(self.graph, a)
        return a

    def evaluate(self, partitions, reference=None, should_stop=None, *, progress=None):
        """As `Scrubber.evaluate`; the first pass's clean real and rest runs also give the
        original and all-resampled losses (the same `model(tokens)` passes, bit for bit), so a
        first hypothesis costs no separate baseline passes."""
        reference = reference or self.data
        if partitions and not self._has_baseline(reference):
            t0 = time.perf_counter()
            scrubbed, diag = self.scrubbed_losses(partitions, reference, should_stop,
                                                  progress=progress)
            orig, rand = self.baseline_losses(reference)  # cached by the pass
            seconds = time.perf_counter() - t0
            return [self._result(p, orig, scrubbed[i], rand, dict(
                diag, seconds=seconds, n=len(reference), seed=self.seed,
                source=reference.source)) for i, p in enumerate(partitions)]
        return super().evaluate(partitions, reference, should_stop, progress=progress)

    def description_parts(self, partition, bpp):
        """S(π)'s terms in bits, counted over the model's edges (`EdgeGraph.description_parts`)."""
        return self.graph.description_parts(partition, bpp, self.data.batch.tokens.shape[1],
                                            assignment=self.assign(partition))
