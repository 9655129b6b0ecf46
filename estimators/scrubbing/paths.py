"""The path graph of a treeified TransformerLens model, and the text form of its paths.

Sources are the embeddings (`embed`: token + positional embedding), each attention head's output
(`a{l}.{h}`: z·W_O of that head, without the layer's bias b_O) and each MLP's output (`m{l}`).
Destinations are each head's query, key and value inputs (`a{l}.{h}:q`, `:k`, `:v`), each MLP's
input (`m{l}`) and the logits (`logits`). A destination reads every source that comes before
it in the residual stream: a head in layer l reads `embed` and every node of layers < l; an MLP
in layer l also reads the heads of layer l (not with `parallel_attn_mlp`, where attention and
MLP both read the block's input); the logits read everything.

A *path* runs from `embed` through a chain of destinations to `logits`; its text form lists the
hops joined by `>`, each hop naming the destination entered:

    embed>logits                       the direct path
    embed>a0.1:k>a1.5:v>logits         embed into head 0.1's key input, that head's output into
                                       head 1.5's value input, that head's output to the logits
    embed>a0.0:v>m0>logits             ... through MLP 0

Patterns (`path_pattern_regex`) match whole paths, hop by hop:
  * inside a hop, `*` matches any characters of that hop (`a1.*:k` is the key input of any
    layer-1 head, `a*` any head through any input, `m*` any MLP);
  * a hop that is exactly `*` matches one or more whole hops (`*>a1.*:k>logits`: any path whose
    last hop before the logits is the key input of a layer-1 head; `*` alone: every path).

Treeified paths are enumerated explicitly (their number grows like (3·heads+1)^layers), so a
model whose path count passes `max_paths` is refused with a clear message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

CHANNELS = ("q", "k", "v")
DEFAULT_MAX_PATHS = 200_000
_HOP_CHARS = re.compile(r"^[a-z0-9.:*]+$")


class PathError(ValueError):
    """A path pattern or partition that does not fit the model."""


@dataclass(frozen=True)
class Node:
    """A source node: the embeddings, one attention head, or one MLP."""

    name: str  # "embed", "a{l}.{h}", "m{l}"
    kind: str  # "embed" | "attn" | "mlp"
    layer: int = -1
    head: int = -1

    @property
    def channels(self) -> tuple[str | None, ...]:
        """The input channels by which a path enters this node."""
        return CHANNELS if self.kind == "attn" else (None,)

    def hop(self, channel: str | None) -> str:
        """The text of the hop that enters this node through `channel`."""
        return f"{self.name}:{channel}" if channel else self.name


class PathGraph:
    """Nodes, destinations and the enumerated paths of one model architecture.

    Layout used by the treeified evaluation: `prefixes(n)` lists the paths from `embed` to the
    output of node n (ordered by channel, then source in topological order, then the source's
    own prefixes), so the prefixes of n entering through (channel c, source s) form one
    contiguous slice `prefix_slice(n, c, s)`. Paths are ordered the same way by their source
    into the logits, and `logits_slice(s)` is the slice of paths whose last source is s.
    """

    def __init__(self, n_layers: int, n_heads: int, attn_only: bool,
                 max_paths: int = DEFAULT_MAX_PATHS, n_ctx: int | None = None,
                 parallel: bool = False):
        if n_layers < 1 or n_heads < 1:
            raise PathError("a path graph needs at least one layer and one head")
        self.n_layers = int(n_layers)
        self.n_heads = int(n_heads)
        self.attn_only = bool(attn_only)
        self.parallel = bool(parallel) and not self.attn_only  # MLPs read resid_pre
        self.n_ctx = n_ctx
        nodes = [Node("embed", "embed")]
        for layer in range(n_layers):
            nodes += [Node(f"a{layer}.{h}", "attn", layer, h) for h in range(n_heads)]
            if not attn_only:
                nodes.append(Node(f"m{layer}", "mlp", layer))
        self.nodes: list[Node] = nodes
        self.index = {n.name: i for i, n in enumerate(nodes)}
        counts = self._prefix_counts()
        n_paths = sum(counts[s.name] for s in self.sources_of(None))
        if n_paths > max_paths:
            raise PathError(
                f"this model has {n_paths:,} treeified paths, more than the {max_paths:,} "
                f"this tool enumerates; use a smaller model (or raise max_paths)")
        self.n_paths = n_paths
        self._counts = counts

    UNIT = "path"  # what a partition assigns (EdgeGraph: "edge")

    @property
    def n_units(self) -> int:
        return self.n_paths

    @classmethod
    def from_model(cls, model, max_paths: int = DEFAULT_MAX_PATHS) -> "PathGraph":
        check_supported(model)
        cfg = model.cfg
        return cls(cfg.n_layers, cfg.n_heads, cfg.attn_only, max_paths, n_ctx=cfg.n_ctx,
                   parallel=bool(getattr(cfg, "parallel_attn_mlp", False)))

    # ------------------------------------------------------------------------------ structure
    def node(self, name: str) -> Node:
        return self.nodes[self.index[name]]

    def sources_of(self, dest: Node | None) -> list[Node]:
        """Sources a destination reads, in topological order; `None` is the logits."""
        if dest is None:
            return list(self.nodes)
        if dest.kind == "attn":
            return [n for n in self.nodes if n.kind == "embed" or n.layer < dest.layer]
        if dest.kind == "mlp":
            return [n for n in self.nodes if n.kind == "embed" or n.layer < dest.layer
                    or (n.layer == dest.layer and n.kind == "attn" and not self.parallel)]
        raise PathError("the embeddings read no sources")

    def _prefix_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            if n.kind == "embed":
                counts[n.name] = 1
            else:
                counts[n.name] = len(n.channels) * sum(counts[s.name] for s in self.sources_of(n))
        return counts

    def n_prefixes(self, node: Node) -> int:
        return self._counts[node.name]

    def prefix_slice(self, node: Node, channel: str | None, source: Node) -> slice:
        """Where, in `prefixes(node)`, the prefixes entering through (channel, source) lie."""
        return self._slices[(node.name, channel, source.name)]

    def logits_slice(self, source: Node) -> slice:
        return self._slices[(None, None, source.name)]

    @cached_property
    def _slices(self) -> dict[tuple, slice]:
        out = {}
        for n in self.nodes[1:] + [None]:
            start = 0
            for c in (n.channels if n is not None else (None,)):
                for s in self.sources_of(n):
                    k = self._counts[s.name]
                    out[(n.name if n is not None else None, c, s.name)] = slice(start, start + k)
                    start += k
        return out

    @cached_property
    def _prefix_texts(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"embed": ["embed"]}
        for n in self.nodes[1:]:
            out[n.name] = [f"{p}>{n.hop(c)}" for c in n.channels for s in self.sources_of(n)
                           for p in out[s.name]]
        return out

    def prefixes(self, node: Node) -> list[str]:
        return self._prefix_texts[node.name]

    @cached_property
    def paths(self) -> list[str]:
        """Every path's text, in the order of `logits_slice`."""
        return [f"{p}>logits" for s in self.sources_of(None) for p in self._prefix_texts[s.name]]

    @cached_property
    def path_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}

    @cached_property
    def _path_blob(self) -> str:
        return "\n".join(self.paths)

    # ------------------------------------------------------------------------------ patterns
    def match(self, pattern: str) -> np.ndarray:
        """Indices of the paths a pattern matches (possibly empty); PathError if malformed."""
        if not isinstance(pattern, str):
            raise PathError(f"a path pattern must be a string, not {pattern!r}")
        if "*" not in pattern:  # a literal path: a lookup
            path_pattern_regex(pattern)  # still reject malformed text
            i = self.path_index.get(pattern.strip())
            return np.zeros(0, dtype=np.int64) if i is None else np.array([i], dtype=np.int64)
        rx = path_pattern_regex(pattern)
        starts = [m.start() for m in re.finditer(rf"^{rx}$", self._path_blob, flags=re.M)]
        if not starts:
            return np.zeros(0, dtype=np.int64)
        # Map character offsets to path indices through cumulative line starts.
        line_starts = self._line_starts
        return np.searchsorted(line_starts, np.asarray(starts), side="right") - 1

    @cached_property
    def _line_starts(self) -> np.ndarray:
        lengths = np.array([len(p) + 1 for p in self.paths], dtype=np.int64)
        return np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def match_required(self, pattern: str) -> np.ndarray:
        idx = self.match(pattern)
        if idx.size == 0:
            raise PathError(f"path pattern {pattern!r} matches no path of this model "
                            f"(paths look like {self.example_paths()})")
        return idx

    def example_paths(self) -> str:
        ex = [p for p in self.paths if p.count(">") == 2][:1] + self.paths[:1] + \
             [p for p in self.paths if p.count(">") == 3][:1]
        return ", ".join(ex)

    def edge_patterns(self) -> list[str]:
        """One pattern per edge source→destination (all paths that use that edge)."""
        out = []
        for d in self.nodes[1:] + [None]:
            for c in (d.channels if d is not None else (None,)):
                dhop = d.hop(c) if d is not None else "logits"
                for s in self.sources_of(d):
                    left = "embed" if s.kind == "embed" else f"*>{s.name}" + (
                        ":*" if s.kind == "attn" else "")
                    right = "" if d is None else ">*"
                    out.append(f"{left}>{dhop}{right}")
        return out

    def node_patterns(self) -> list[str]:
        """One pattern per source node other than embed (all paths through it)."""
        return [f"*>{n.name}{':*' if n.kind == 'attn' else ''}>*" for n in self.nodes[1:]]

    def describe(self) -> dict:
        out = {"n_layers": self.n_layers, "n_heads": self.n_heads, "attn_only": self.attn_only,
               "n_nodes": len(self.nodes), "n_paths": self.n_paths}
        if self.parallel:
            out["parallel_attn_mlp"] = True
        return out


@lru_cache(maxsize=4096)
def path_pattern_regex(pattern: str) -> str:
    """The regular expression (without anchors) for a path pattern; PathError if malformed."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise PathError(f"a path pattern must be a non-empty string, not {pattern!r}")
    hops = pattern.strip().split(">")
    parts = []
    for hop in hops:
        if not hop or not _HOP_CHARS.match(hop):
            raise PathError(f"malformed path pattern {pattern!r}: hop {hop!r} (hops look like "
                            f"embed, a0.1:k, m0, logits, with * wildcards)")
        if hop == "*":
            parts.append(r"[^>\n]+(?:>[^>\n]+)*")
        else:
            parts.append("".join(r"[^>\n]*" if ch == "*" else re.escape(ch) for ch in hop))
    return ">".join(parts)


def check_supported(model) -> None:
    """Refuse, before anything is enumerated, models whose blocks cannot be split into
    per-head paths at all (a normalisation applied to a sublayer's summed output). Everything
    else is decided numerically by the scrubbing engine's conformance check
    (`estimators.scrubbing.conformance`), which also catches options nobody listed."""
    cfg = model.cfg
    if not hasattr(model, "blocks") or not hasattr(model, "unembed") \
            or not hasattr(model, "input_to_embed"):
        raise PathError("causal scrubbing needs a HookedTransformer (blocks, unembed)")
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    problems = []
    if getattr(cfg, "use_normalization_before_and_after", False):
        problems.append("use_normalization_before_and_after (a norm on each sublayer's summed "
                        "output)")
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        problems.append(f"original_architecture={cfg.original_architecture!r} (post-norm "
                        f"blocks)")
    if problems:
        raise PathError("causal scrubbing cannot split this model's sublayers into per-head "
                        "paths: " + ", ".join(problems))
