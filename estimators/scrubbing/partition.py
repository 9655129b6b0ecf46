"""A causal-scrubbing hypothesis: a partition of the treeified model's paths (background.md §4).

JSON form (every key but "important"/"blocks" optional):

    {"name": "prev-token → induction K",
     "description": "...",
     "important": ["embed>a1.*:q>logits", "*>a0.3:*>a1.*:k>logits"],
     "blocks": [{"paths": ["embed>a1.*:v>logits"], "resample": "uniform"},
                {"paths": ["embed>logits"], "resample": {"match": "token_at:-1"}}]}

* `important`: patterns whose paths keep the real (reference) input;
* each block: patterns whose paths all share ONE resampled input, drawn uniformly from the data
  (`"uniform"`) or from the data examples that agree with the reference on a feature
  (`{"match": FEATURE}`, see `estimators.scrubbing.sampling.FEATURES`);
* every other path shares one random input: the naive, all-independent estimate.

A pattern that matches no path, a path claimed by two blocks, or a malformed file is a
`PathError` (a ValueError) with a message that names the culprit.

Description length S(π), the code of `estimators.surprise` (derivation there) over the model's
P treeified paths, with n = the number of input positions and b = bits_per_parameter:
  1. which paths are named (important or in a block): `subset_bits(P, k)` (0 when k = 0);
  2. how the k named paths are grouped, when k > 0: log2(k + 1) bits for the number of blocks B
     (0 ≤ B ≤ k), log2(k + 1) bits for each block's size (the important block gets the rest),
     then log2 of the multinomial k! / (k_important! · k_1! ⋯ k_B!) for which paths go where;
  3. each block's resampling rule: 1 bit (uniform or matched), plus for a matched block
     log2(#feature kinds) bits for the kind and the bits of its argument (a position:
     log2(2·n_ctx); a set of positions: n_ctx bits);
  4. the dependences on the real input, one parameter per path at b bits: a path that keeps the
     real input states 1 parameter; a path in a block matched on a feature states the share of
     the input the feature pins (label or token_at: 1/n; tokens_at S: |S|/n); a path in a
     uniform block states none. So the important block costs k_important·b and "every path
     important" costs P·b on top of parts 1–2.
The empty partition (everything independent) costs 0 bits, and S(π) grows with what π claims.
`description_parts` returns the parts, part 4 (with part 3) per block, for display. The code
counts paths, not pattern characters, so two spellings of the same partition cost the same.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from estimators.scrubbing.paths import PathError, PathGraph
from estimators.scrubbing.sampling import FEATURE_KINDS, parse_feature
from estimators.surprise import parameter_bits, subset_bits

UNIFORM = "uniform"
REST = -1  # block id of paths outside every named block
IMPORTANT = 0  # block id of the important block; named blocks are 1..B


@dataclass(frozen=True)
class Block:
    """Paths sharing one resampled input; `resample` is "uniform" or "match:FEATURE"."""

    paths: tuple[str, ...]
    resample: str = UNIFORM

    def __post_init__(self):
        if not self.paths:
            raise PathError("a block must list at least one path pattern")
        if self.resample != UNIFORM:
            if not self.resample.startswith("match:"):
                raise PathError(f"unknown resample rule {self.resample!r}")
            parse_feature(self.resample.split(":", 1)[1])

    @property
    def feature(self) -> str | None:
        return None if self.resample == UNIFORM else self.resample.split(":", 1)[1]

    def to_dict(self) -> dict:
        rs: Any = UNIFORM if self.feature is None else {"match": self.feature}
        return {"paths": list(self.paths), "resample": rs}

    @classmethod
    def from_dict(cls, d: Any, where: str = "block") -> "Block":
        if not isinstance(d, dict):
            raise PathError(f"{where} must be a JSON object with 'paths' and 'resample'")
        unknown = set(d) - {"paths", "resample"}
        if unknown:
            raise PathError(f"{where} has unknown keys {sorted(unknown)}")
        paths = _pattern_list(d.get("paths"), f"{where}.paths")
        rs = d.get("resample", UNIFORM)
        if rs == UNIFORM:
            return cls(paths, UNIFORM)
        if isinstance(rs, dict) and set(rs) == {"match"} and isinstance(rs["match"], str):
            return cls(paths, f"match:{rs['match']}")
        raise PathError(f"{where}.resample must be \"uniform\" or {{\"match\": FEATURE}}, "
                        f"not {json.dumps(rs)}")


def _pattern_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise PathError(f"{where} must be a list of path-pattern strings")
    return tuple(p.strip() for p in value)


@dataclass(frozen=True)
class PathPartition:
    """The argument π of causal scrubbing: important paths and resampled blocks."""

    important: tuple[str, ...] = ()
    blocks: tuple[Block, ...] = ()
    name: str = ""
    description: str = ""

    def __post_init__(self):
        object.__setattr__(self, "important", tuple(self.important))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        for p in self.important:
            if not isinstance(p, str) or not p.strip():
                raise PathError("important patterns must be non-empty strings")

    # --------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        d: dict[str, Any] = {"important": list(self.important),
                             "blocks": [b.to_dict() for b in self.blocks]}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "PathPartition":
        if not isinstance(d, dict):
            raise PathError("a partition must be a JSON object with 'important' and 'blocks'")
        unknown = set(d) - {"important", "blocks", "name", "description"}
        if unknown:
            raise PathError(f"partition has unknown keys {sorted(unknown)} (allowed: "
                            f"important, blocks, name, description)")
        important = _pattern_list(d.get("important", []), "important")
        blocks_raw = d.get("blocks", [])
        if not isinstance(blocks_raw, list):
            raise PathError("'blocks' must be a list of {paths, resample} objects")
        blocks = tuple(Block.from_dict(b, f"blocks[{i}]") for i, b in enumerate(blocks_raw))
        name, desc = d.get("name", ""), d.get("description", "")
        if not isinstance(name, str) or not isinstance(desc, str):
            raise PathError("'name' and 'description' must be strings")
        return cls(important, blocks, name, desc)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> "PathPartition":
        try:
            from estimators.validation import loads_json
            d = loads_json(text, "the partition file")
        except ValueError as e:  # size, depth or syntax: one line
            raise PathError(str(e)) from None
        return cls.from_dict(d)

    @property
    def hash(self) -> str:
        """Stable hash of the partition's content (name and description excluded)."""
        content = {"important": list(self.important), "blocks": [b.to_dict() for b in self.blocks]}
        raw = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def with_name(self, name: str, description: str | None = None) -> "PathPartition":
        return PathPartition(self.important, self.blocks, name,
                             self.description if description is None else description)

    # --------------------------------------------------------------------------- resolution
    def assign(self, graph: PathGraph) -> np.ndarray:
        """[n_paths] block id per path: 0 important, j ≥ 1 the j-th block, −1 the rest.

        Raises PathError for a pattern matching no path or a path claimed by two groups.
        Given an `edges.EdgeGraph`, the [n_edges] group per edge (`EdgeGraph.assign`)."""
        if getattr(graph, "UNIT", "path") == "edge":
            return graph.assign(self)
        out = np.full(graph.n_paths, REST, dtype=np.int64)
        groups = [(IMPORTANT, "important", self.important)] + [
            (j + 1, f"blocks[{j}]", b.paths) for j, b in enumerate(self.blocks)]
        for gid, gname, patterns in groups:
            mine = np.zeros(graph.n_paths, dtype=bool)
            for p in patterns:
                mine[graph.match_required(p)] = True
            clash = mine & (out != REST)
            if clash.any():
                i = int(np.flatnonzero(clash)[0])
                other = "important" if out[i] == IMPORTANT else f"blocks[{out[i] - 1}]"
                raise PathError(f"path {graph.paths[i]} is in both {other} and {gname}; "
                                f"blocks must not overlap")
            out[mine] = gid
        return out

    def description_parts(self, graph: PathGraph, bits_per_parameter: float,
                          n_positions: int | None = None) -> dict[str, float]:
        """S(π) term by term, in bits (module docstring): "which paths", "grouping", then one
        entry per group: "important (k paths)" and "blocks[j] <rule> (m paths)", each the
        group's rule bits plus its parameter bits.

        `bits_per_parameter` ≥ 0 (b); `n_positions`: the input length n (default the model's
        n_ctx). Raises PathError as `assign` does, ValueError for a negative price."""
        if not bits_per_parameter >= 0:
            raise ValueError("bits_per_parameter must be ≥ 0")
        assignment = self.assign(graph)
        k = int((assignment != REST).sum())
        n_blocks = len(self.blocks)
        parts = {"which paths": subset_bits(graph.n_paths, k), "grouping": 0.0}
        if not k:
            return parts
        sizes = [int((assignment == g).sum()) for g in range(n_blocks + 1)]
        log2_fact = lambda m: math.lgamma(m + 1) / math.log(2)  # noqa: E731
        parts["grouping"] = (1 + n_blocks) * math.log2(k + 1) + log2_fact(k) - sum(
            log2_fact(m) for m in sizes)
        n = max(int(n_positions or graph.n_ctx or 1), 1)
        if sizes[0]:
            parts[f"important ({sizes[0]} paths)"] = parameter_bits(sizes[0], bits_per_parameter)
        for j, b in enumerate(self.blocks):
            share = kept_share(b.feature, n)
            parts[f"blocks[{j}] {b.resample} ({sizes[j + 1]} paths)"] = \
                resample_rule_bits(b.feature, graph.n_ctx) + parameter_bits(
                    sizes[j + 1] * share, bits_per_parameter)
        return parts

    def description_bits(self, graph: PathGraph, bits_per_parameter: float,
                         n_positions: int | None = None) -> float:
        """S(π) in bits: the sum of `description_parts`."""
        return float(sum(self.description_parts(graph, bits_per_parameter,
                                                n_positions).values()))


def kept_share(feature: str | None, n_positions: int) -> float:
    """The share of a path's real-input dependence a block's resampling keeps (part 4 of the
    code): 0 for a uniform draw; 1/n for the label or one position; |S|/n for a set S of
    positions (at most 1: matching every position keeps the real input)."""
    if feature is None:
        return 0.0
    kind, arg = parse_feature(feature)
    n = max(int(n_positions), 1)
    if kind == "tokens_at":
        return min(len({p % n for p in arg}), n) / n
    return 1.0 / n


def resample_rule_bits(feature: str | None, n_ctx: int | None) -> float:
    """1 bit for uniform-or-matched, plus the matched feature's kind and argument."""
    if feature is None:
        return 1.0
    kind, arg = parse_feature(feature)
    bits = 1.0 + math.log2(len(FEATURE_KINDS))
    ctx = max(int(n_ctx or 2), 2)
    if kind == "token_at":
        bits += math.log2(2 * ctx)  # a position counted from either end
    elif kind == "tokens_at":
        bits += ctx
    return bits
