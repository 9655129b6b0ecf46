"""Sites: where the activation model places a Gaussian.

A site is named by a TransformerLens hook name (or an MLP layer name) and says which positions
and units it models; its variable is the flattened vector positions × units (position-major:
flat index = position_index · n_units + unit_index).

Site names
----------
Transformer (TransformerLens HookedTransformer):
  blocks.{l}.hook_resid_pre / blocks.{l}.hook_resid_post   residual stream (chain sites)
  blocks.{l}.mlp.hook_post                                   MLP hidden layer (read-out site)
  sae:<hook>                                                 SAE latents at <hook>
  logits@<pos>                                               logits at one position
Plain MLP (`estimators.activation.mlp`):
  input, hidden.{i} (after layer i's activation), output

*Chain* sites are propagated one from the next: a mask at a chain site changes everything
after it. *Read-out* sites (MLP hidden layers, SAEs at non-residual hooks) are estimated from
the chain site that feeds their block, by moment matching through the same real component, and
are shown and scored; the chain itself continues through the residual stream (the residual
after an MLP needs both the MLP input and its output, so the hidden layer is not a Markov
state on its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("resid", "mlp", "sae", "logits", "input", "hidden", "output")

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_MLP = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")
_LOGITS = re.compile(r"^logits@(-?\d+)$")
_HIDDEN = re.compile(r"^hidden\.(\d+)$")


@dataclass(frozen=True)
class Site:
    """One site of the chain.

    name:      the site's name (module docstring).
    kind:      resid | mlp | sae | logits | input | hidden | output.
    hook:      the TransformerLens hook the values are read at (for sae: the SAE's hook; for
               logits: "logits"; for MLP sites the name itself).
    positions: token positions modelled, in order (empty for a plain MLP).
    units:     the units of the last axis modelled (indices into 0..width-1).
    width:     the full width of the last axis (d_model, d_mlp, d_sae, d_vocab, MLP width).
    role:      "chain" or "readout".
    """

    name: str
    kind: str
    hook: str
    positions: tuple[int, ...]
    units: tuple[int, ...]
    width: int
    role: str = "chain"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}")
        if self.role not in ("chain", "readout"):
            raise ValueError(f"site role must be chain or readout, not {self.role!r}")
        if not self.units:
            raise ValueError(f"site {self.name} models no units")
        if any(u < 0 or u >= self.width for u in self.units):
            raise ValueError(f"site {self.name}: unit index out of range 0..{self.width - 1}")

    @property
    def n_positions(self) -> int:
        return max(len(self.positions), 1)

    @property
    def n_units(self) -> int:
        return len(self.units)

    @property
    def dim(self) -> int:
        return self.n_positions * self.n_units

    @property
    def layer(self) -> int | None:
        m = re.match(r"^(?:sae:)?blocks\.(\d+)\.", self.name)
        return int(m.group(1)) if m else None

    def flat_index(self, position_index: int, unit_index: int) -> int:
        return position_index * self.n_units + unit_index

    def unpack(self, i: int) -> tuple[int | None, int]:
        """(position, unit) of flat index i (position None for a plain MLP site)."""
        p, u = divmod(int(i), self.n_units)
        return (self.positions[p] if self.positions else None), self.units[u]

    def label(self, i: int) -> str:
        p, u = self.unpack(i)
        return f"u{u}" if p is None else f"p{p}·u{u}"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "hook": self.hook,
                "positions": list(self.positions), "units": list(self.units),
                "width": self.width, "role": self.role, "dim": self.dim}


def parse_site_name(name: str) -> tuple[str, dict]:
    """Classify a site name: (kind, info) with info holding layer / position; ValueError else."""
    name = name.strip()
    if name.startswith("sae:"):
        return "sae", {"hook": name[4:]}
    m = _RESID.match(name)
    if m:
        layer = int(m.group(1)) + (1 if m.group(2) == "post" else 0)
        return "resid", {"layer": int(m.group(1)), "boundary": layer}
    m = _MLP.match(name)
    if m:
        return "mlp", {"layer": int(m.group(1))}
    m = _LOGITS.match(name)
    if m:
        return "logits", {"position": int(m.group(1))}
    if name in ("input", "output"):
        return name, {}
    m = _HIDDEN.match(name)
    if m:
        return "hidden", {"layer": int(m.group(1))}
    raise ValueError(
        f"unknown site {name!r}: use blocks.L.hook_resid_pre|post, blocks.L.mlp.hook_post, "
        f"sae:<hook>, logits@POS (transformers) or input, hidden.I, output (plain MLPs)")


def resid_boundary(name: str) -> int:
    """Residual stream boundary index: resid_pre of block l is l, resid_post of l is l+1."""
    kind, info = parse_site_name(name)
    if kind != "resid":
        raise ValueError(f"{name} is not a residual-stream site")
    return info["boundary"]


def resid_site_name(boundary: int, n_layers: int) -> str:
    """Canonical name of residual boundary b: resid_pre of block 0 for b = 0, else the
    resid_post of block b − 1."""
    if boundary == 0:
        return "blocks.0.hook_resid_pre"
    if not 1 <= boundary <= n_layers:
        raise ValueError(f"residual boundary {boundary} out of range 0..{n_layers}")
    return f"blocks.{boundary - 1}.hook_resid_post"
