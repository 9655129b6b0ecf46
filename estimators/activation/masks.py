"""The argument: one covariance mask per site (`CovarianceMask`), as plain, compact data.

A site's mask is   diagonal ∪ rules ∪ on \\ off   (the diagonal is always kept: variances
always travel). Rules are the structured presets:

  {"kind": "full"}                                    every pair
  {"kind": "topk", "k": K}                            the K pairs with the largest |empirical
                                                      correlation| at that site
  {"kind": "blocks", "by": "position"|"unit_group"|"feature_group",
   "group_size": S, "pairs": [[g, h], ...]}           all pairs (i, j) with group(i) = g and
                                                      group(j) = h (g = h: within a block).
                                                      by position: group = position index;
                                                      by unit/feature group: group =
                                                      unit index // S (at every position)
`on` / `off` are explicit pairs [i, j] (flat indices, i < j) switched on / off on top.
A site that is absent, or has no rules and no entries, is naive (diagonal only).

JSON (`to_dict`/`from_dict`) stores these rules and entries, never dense matrices, and each
site's layout (positions × units) so a mask can be checked against the chain it is used with.
`hash()` is sha256 of the canonical JSON (sorted keys, sorted pairs, no whitespace).

Description length S(π) (bits), per site, a two-part code on top of `estimators.surprise`:
  * naive: 0 bits;
  * otherwise: the number of rules r by the Elias-gamma length 2·⌊log2(r+1)⌋+1; per rule
    log2 3 bits for its kind, plus: full 0; topk log2(n_pairs+1) for k; blocks 1 bit for
    position vs unit groups, log2(n_units) for the group size (unit groups only) and
    `subset_bits(G(G+1)/2, #pairs)` for which block pairs;
  * explicit entries: `subset_bits(n_pairs, #on) + subset_bits(n_pairs, #off)`;
  * plus `bits_per_parameter` per tracked off-diagonal pair (the union above): each tracked
    covariance is one more number the reader must be given. The default is the MDL price
    ½·log2 N for N input samples (`estimators.surprise.mdl_bits_per_parameter`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import torch

from estimators.surprise import subset_bits

RULE_KINDS = ("full", "topk", "blocks")
BLOCK_BY = ("position", "unit_group", "feature_group")


def _pair(p) -> tuple[int, int]:
    if not isinstance(p, (list, tuple)) or len(p) != 2:
        raise ValueError(f"a mask entry must be a pair [i, j], not {p!r}")
    try:
        i, j = int(p[0]), int(p[1])
    except (TypeError, ValueError):
        raise ValueError(f"a mask entry must hold two integers, not {p!r}") from None
    if isinstance(p[0], float) or isinstance(p[1], float):
        if p[0] != i or p[1] != j:
            raise ValueError(f"a mask entry must hold two integers, not {p!r}")
    return (i, j) if i <= j else (j, i)


@dataclass(frozen=True)
class MaskRule:
    kind: str
    k: int = 0
    by: str = "position"
    group_size: int = 1
    pairs: tuple[tuple[int, int], ...] = ()

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown mask rule {self.kind!r}; choose one of {RULE_KINDS}")
        if self.kind == "topk" and self.k < 0:
            raise ValueError("topk needs k ≥ 0")
        if self.kind == "blocks":
            object.__setattr__(self, "pairs", tuple(sorted({_pair(p) for p in self.pairs})))
            if self.by not in BLOCK_BY:
                raise ValueError(f"blocks rule: 'by' must be one of {BLOCK_BY}")
            if self.group_size < 1:
                raise ValueError("blocks rule: group_size must be at least 1")

    def to_dict(self) -> dict:
        if self.kind == "full":
            return {"kind": "full"}
        if self.kind == "topk":
            return {"kind": "topk", "k": int(self.k)}
        d = {"kind": "blocks", "by": self.by, "pairs": [list(p) for p in sorted(self.pairs)]}
        if self.by != "position":
            d["group_size"] = int(self.group_size)
        return d

    @classmethod
    def from_dict(cls, d) -> "MaskRule":
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"a mask rule must be an object with a 'kind', not {d!r}")
        kind = d["kind"]
        if kind == "full":
            return cls("full")
        if kind == "topk":
            return cls("topk", k=_int(d.get("k"), "topk k"))
        if kind == "blocks":
            return cls("blocks", by=str(d.get("by", "position")),
                       group_size=_int(d.get("group_size", 1), "group_size"),
                       pairs=tuple(sorted({_pair(p) for p in d.get("pairs", [])})))
        raise ValueError(f"unknown mask rule {kind!r}; choose one of {RULE_KINDS}")


def _int(v, what) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise ValueError(f"{what} must be an integer, not {v!r}")
    return int(v)


@dataclass(frozen=True)
class Layout:
    """positions × units of a site (the mask's shape is (n_positions·n_units)²)."""

    n_positions: int
    n_units: int

    @property
    def dim(self) -> int:
        return self.n_positions * self.n_units

    @property
    def n_pairs(self) -> int:
        return self.dim * (self.dim - 1) // 2

    def groups(self, rule: MaskRule) -> torch.Tensor:
        idx = torch.arange(self.dim)
        if rule.by == "position":
            return idx // self.n_units
        return (idx % self.n_units) // rule.group_size

    def n_groups(self, rule: MaskRule) -> int:
        if rule.by == "position":
            return self.n_positions
        return math.ceil(self.n_units / rule.group_size)


@dataclass
class SiteMask:
    """One site's mask: rules ∪ on \\ off (plus the diagonal)."""

    layout: Layout
    rules: tuple[MaskRule, ...] = ()
    on: frozenset = frozenset()
    off: frozenset = frozenset()

    def __post_init__(self):
        self.on = frozenset(_pair(p) for p in self.on)
        self.off = frozenset(_pair(p) for p in self.off)
        d = self.layout.dim
        for i, j in self.on | self.off:
            if i == j:
                raise ValueError(f"mask entry [{i}, {j}] is on the diagonal (always tracked)")
            if not (0 <= i < d and 0 <= j < d):
                raise ValueError(f"mask entry [{i}, {j}] is outside the site's {d}×{d} "
                                 f"covariance")
        for r in self.rules:
            if r.kind == "blocks":
                g = self.layout.n_groups(r)
                for a, b in r.pairs:
                    if not (0 <= a < g and 0 <= b < g):
                        raise ValueError(f"blocks rule pair [{a}, {b}] is outside 0..{g - 1}")

    @property
    def is_naive(self) -> bool:
        return not self.rules and not self.on and not self.off

    def dense(self, correlation: torch.Tensor | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """bool [d, d] mask. `correlation` (the site's empirical correlation) is needed by topk."""
        d = self.layout.dim
        m = torch.zeros(d, d, dtype=torch.bool, device=device)
        for r in self.rules:
            if r.kind == "full":
                m[:] = True
            elif r.kind == "topk":
                m |= topk_pairs_mask(correlation, r.k, exclude=None).to(device)
            else:
                g = self.layout.groups(r).to(device)
                for a, b in r.pairs:
                    blk = (g == a).unsqueeze(1) & (g == b).unsqueeze(0)
                    m |= blk | blk.T
        if self.on:
            idx = torch.tensor(sorted(self.on), device=device)
            m[idx[:, 0], idx[:, 1]] = True
            m[idx[:, 1], idx[:, 0]] = True
        if self.off:
            idx = torch.tensor(sorted(self.off), device=device)
            m[idx[:, 0], idx[:, 1]] = False
            m[idx[:, 1], idx[:, 0]] = False
        m.fill_diagonal_(True)
        return m

    def toggled(self, i: int, j: int, currently_on: bool) -> "SiteMask":
        """The mask with pair (i, j) flipped, given whether it is on now."""
        p = _pair((i, j))
        if p[0] == p[1]:
            raise ValueError("the diagonal is always tracked and cannot be toggled")
        on, off = set(self.on), set(self.off)
        if currently_on:
            if p in on:
                on.discard(p)
            else:
                off.add(p)
        else:
            if p in off:
                off.discard(p)
            else:
                on.add(p)
        return SiteMask(self.layout, self.rules, frozenset(on), frozenset(off))

    def description_bits(self, n_tracked_pairs: int, bits_per_parameter: float) -> float:
        """S(π) of this site (module docstring); n_tracked_pairs from the dense mask."""
        if self.is_naive:
            return 0.0
        n_pairs = self.layout.n_pairs
        r = len(self.rules)
        bits = 2 * math.floor(math.log2(r + 1)) + 1
        for rule in self.rules:
            bits += math.log2(3)
            if rule.kind == "topk":
                bits += math.log2(n_pairs + 1)
            elif rule.kind == "blocks":
                g = self.layout.n_groups(rule)
                bits += 1.0
                if rule.by != "position":
                    bits += math.log2(max(self.layout.n_units, 1))
                bits += subset_bits(g * (g + 1) // 2, len(rule.pairs))
        bits += subset_bits(n_pairs, len(self.on)) + subset_bits(n_pairs, len(self.off))
        return bits + n_tracked_pairs * bits_per_parameter

    def to_dict(self) -> dict:
        d: dict = {"positions": self.layout.n_positions, "units": self.layout.n_units}
        if self.rules:
            d["rules"] = [r.to_dict() for r in self.rules]
        if self.on:
            d["on"] = [list(p) for p in sorted(self.on)]
        if self.off:
            d["off"] = [list(p) for p in sorted(self.off)]
        return d

    @classmethod
    def from_dict(cls, d) -> "SiteMask":
        if not isinstance(d, dict):
            raise ValueError(f"a site mask must be a JSON object, not {type(d).__name__}")
        layout = Layout(_int(d.get("positions", 1), "positions"),
                        _int(d.get("units"), "units"))
        if layout.n_positions < 1 or layout.n_units < 1:
            raise ValueError("a site mask needs positions ≥ 1 and units ≥ 1")
        for key in ("rules", "on", "off"):
            if key in d and not isinstance(d[key], list):
                raise ValueError(f"site mask field {key!r} must be a list")
        return cls(layout, tuple(MaskRule.from_dict(r) for r in d.get("rules", [])),
                   frozenset(_pair(p) for p in d.get("on", [])),
                   frozenset(_pair(p) for p in d.get("off", [])))


def topk_pairs_mask(correlation: torch.Tensor | None, k: int,
                    exclude: torch.Tensor | None = None) -> torch.Tensor:
    """bool [d, d]: the k off-diagonal pairs with the largest |correlation| (symmetric), among
    the pairs not in `exclude` (fewer when fewer are left)."""
    if correlation is None:
        raise ValueError("a topk mask needs the site's empirical correlation")
    d = correlation.shape[0]
    c = correlation.detach().abs().nan_to_num(0.0).clone()
    c = torch.triu(c, diagonal=1) - torch.tril(torch.ones_like(c))  # lower triangle + diag < 0
    if exclude is not None:
        c[exclude] = -1.0
    k = min(int(k), d * (d - 1) // 2)
    m = torch.zeros(d, d, dtype=torch.bool, device=correlation.device)
    if k == 0:
        return m
    vals, idx = torch.topk(c.flatten(), k)
    m.view(-1)[idx[vals >= 0]] = True  # never an excluded pair or the lower triangle
    return m | m.T


_FORMAT = "covariance-mask/1"


@dataclass
class CovarianceMask:
    """The argument: site name → SiteMask. Sites not listed are naive (diagonal)."""

    sites: dict[str, SiteMask] = field(default_factory=dict)

    # ---- constructors ----------------------------------------------------------------
    @classmethod
    def naive(cls) -> "CovarianceMask":
        return cls({})

    @classmethod
    def preset(cls, name: str, layouts: dict[str, Layout], k: int = 16) -> "CovarianceMask":
        """naive | full | topk (k pairs per site) | position-blocks (within each position)."""
        if name == "naive":
            return cls.naive()
        rules: dict[str, tuple[MaskRule, ...]] = {}
        for s, lay in layouts.items():
            if name == "full":
                rules[s] = (MaskRule("full"),)
            elif name == "topk":
                rules[s] = (MaskRule("topk", k=k),)
            elif name == "position-blocks":
                rules[s] = (MaskRule("blocks", by="position",
                                     pairs=tuple((g, g) for g in range(lay.n_positions))),)
            else:
                raise ValueError(f"unknown mask preset {name!r}; choose naive, full, topk or "
                                 f"position-blocks")
        return cls({s: SiteMask(layouts[s], r) for s, r in rules.items()})

    # ---- queries -----------------------------------------------------------------------
    def get(self, site: str, layout: Layout) -> SiteMask:
        m = self.sites.get(site)
        if m is None:
            return SiteMask(layout)
        if m.layout != layout:
            raise ValueError(f"the mask for site {site} has shape "
                             f"{m.layout.n_positions}×{m.layout.n_units} (positions×units), "
                             f"but the site has {layout.n_positions}×{layout.n_units}")
        return m

    def validate(self, layouts: dict[str, Layout]) -> None:
        """Unknown site or wrong shape → ValueError naming it."""
        for s in self.sites:
            if s not in layouts:
                raise ValueError(f"the mask names site {s!r}, which is not in the chain "
                                 f"(sites: {', '.join(layouts)})")
            self.get(s, layouts[s])

    def with_site(self, site: str, mask: SiteMask) -> "CovarianceMask":
        sites = dict(self.sites)
        if mask.is_naive:
            sites.pop(site, None)
        else:
            sites[site] = mask
        return CovarianceMask(sites)

    def description_bits(self, bits_per_parameter: float, tracked_pairs: dict[str, int]
                         | None = None) -> dict[str, float]:
        """Per-site S(π) bits; `tracked_pairs[site]` = off-diagonal pairs on in the dense mask
        (from the engine, which knows the empirical correlations topk needs)."""
        out = {}
        for s, m in self.sites.items():
            if tracked_pairs is None or s not in tracked_pairs:
                tracked = _count_without_data(m)
            else:
                tracked = tracked_pairs[s]
            out[s] = m.description_bits(tracked, bits_per_parameter)
        return out

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT,
                "sites": {s: m.to_dict() for s, m in sorted(self.sites.items())
                          if not m.is_naive}}

    @classmethod
    def from_dict(cls, d) -> "CovarianceMask":
        if not isinstance(d, dict):
            raise ValueError("a covariance mask must be a JSON object")
        unknown = sorted(str(k)[:40] for k in set(d) - {"format", "sites"})
        if unknown:
            raise ValueError(f"a covariance mask has 'format' and 'sites', not {unknown}")
        fmt = d.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"unknown mask format {fmt!r} (expected {_FORMAT!r})")
        sites = d.get("sites", {})
        if not isinstance(sites, dict):
            raise ValueError("'sites' must map site names to site masks")
        out = {}
        for s, m in sites.items():
            try:
                out[str(s)] = SiteMask.from_dict(m)
            except ValueError as e:
                raise ValueError(f"site {s}: {e}") from None
        return cls(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "CovarianceMask":
        try:
            from estimators.validation import loads_json
            d = loads_json(text, "the mask")
        except TypeError as e:
            raise ValueError(f"the mask is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _count_without_data(m: SiteMask) -> int:
    if any(r.kind == "topk" for r in m.rules):
        # Without correlations the exact union is unknown: upper bound by k + the rest.
        dense = SiteMask(m.layout, tuple(r for r in m.rules if r.kind != "topk"),
                         m.on, m.off).dense()
        extra = sum(r.k for r in m.rules if r.kind == "topk")
        return min(int(dense.sum().item() - m.layout.dim) // 2 + extra, m.layout.n_pairs)
    return int(m.dense().sum().item() - m.layout.dim) // 2
