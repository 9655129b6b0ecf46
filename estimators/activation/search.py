"""Argument search: greedy forward selection and gradient descent on relaxed masks.

Candidates (both searches): per site, the `candidates_per_site` off-diagonal pairs with the
largest |empirical correlation| that the current mask does not track; greedy search also
offers, at multi-position sites, each within-position block not yet tracked. Limiting
candidates this way keeps a step at (#sites × candidates) re-propagations, each of which only
recomputes from the changed site on.

Greedy: at each step evaluate every candidate added to the current mask, keep the one with the
lowest S_total = S(π) + S(Y|π); stop when none lowers it, after max_steps, or on should_stop().

Gradient: a gate g_c = sigmoid(θ_c) per candidate pair (θ starts at `init_logit`), the site's
mask entry (c) set to g_c, and the loss  S(Y|π)(relaxed) + Σ_c g_c · bits_per_gate  minimised
by Adam, where bits_per_gate = bits_per_parameter + log2(n_pairs of the site) (the price of a
tracked number plus roughly the bits to name the entry). After every update the hard argument
(gates > 0.5) is evaluated exactly with the real code; the best hard argument is returned.

Both report `path`: one dict per step with argument_bits, data_bits, total_bits (hard, exact),
and `on_step(i, total, info)` / `should_stop()` callbacks for progress and cancellation; `info`
carries `best_total_bits` and `best_mask`, the best argument so far, so a caller that is
interrupted can keep it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from estimators.activation.engine import Propagator
from estimators.activation.masks import CovarianceMask, MaskRule, SiteMask, topk_pairs_mask


@dataclass
class SearchResult:
    mask: CovarianceMask  # the best argument found
    path: list[dict] = field(default_factory=list)
    cancelled: bool = False
    best_total_bits: float = math.inf

    def to_dict(self) -> dict:
        return {"mask": self.mask.to_dict(), "path": self.path, "cancelled": self.cancelled,
                "best_total_bits": self.best_total_bits}


def _noop(*_a, **_k):
    return None


def _candidate_pairs(prop: Propagator, site: str, k: int) -> list[tuple[int, int]]:
    cur = prop.dense_mask(site)
    m = topk_pairs_mask(prop.chain.correlation(site), k, exclude=cur)
    idx = torch.nonzero(torch.triu(m, diagonal=1)).tolist()
    return [(int(i), int(j)) for i, j in idx]


def _sites(prop: Propagator, sites: list[str] | None) -> list[str]:
    names = [s.name for s in prop.chain.sites] if sites is None else sites
    return [prop.chain.site(s).name for s in names if prop.chain.site(s).dim > 1]


def _totals(prop: Propagator) -> dict:
    s = prop.surprise()
    return {"argument_bits": s.argument_bits, "data_bits": s.data_bits,
            "total_bits": s.total_bits}


def greedy_search(prop: Propagator, max_steps: int = 10, candidates_per_site: int = 16,
                  sites: list[str] | None = None, include_blocks: bool = True,
                  on_step: Callable[[int, int, dict], None] = _noop,
                  should_stop: Callable[[], bool] = lambda: False) -> SearchResult:
    """Greedy forward selection from prop's current mask (module docstring). The propagator is
    left holding the best mask found."""
    names = _sites(prop, sites)
    saved_dist = prop.want_distances
    prop.want_distances = False
    try:
        prop.run()
        best = _totals(prop)
        path = [{"step": 0, **best, "added": None}]
        current = prop.mask
        cancelled = False
        evals = 0
        for step in range(1, max_steps + 1):
            cands: list[tuple[str, SiteMask, str]] = []
            for s in names:
                sm = current.get(s, prop.chain.layouts[s])
                for i, j in _candidate_pairs(prop, s, candidates_per_site):
                    cands.append((s, sm.toggled(i, j, False), f"{s}[{i},{j}]"))
                lay = prop.chain.layouts[s]
                if include_blocks and lay.n_positions > 1:
                    dense = prop.dense_mask(s)
                    for g in range(lay.n_positions):
                        blk = slice(g * lay.n_units, (g + 1) * lay.n_units)
                        if not bool(dense[blk, blk].all()):
                            rule = MaskRule("blocks", by="position", pairs=((g, g),))
                            cands.append((s, SiteMask(lay, sm.rules + (rule,), sm.on, sm.off),
                                          f"{s}[position block {g}]"))
            total_evals = evals + len(cands) * (max_steps - step + 1)
            choice = None
            for s, new_sm, desc in cands:
                if should_stop():
                    cancelled = True
                    break
                prop.set_mask(current.with_site(s, new_sm))
                prop.run()
                t = _totals(prop)
                evals += 1
                on_step(evals, total_evals, {"step": step, "candidate": desc, **t,
                                             "best_total_bits": best["total_bits"],
                                             "best_mask": current})
                if t["total_bits"] < best["total_bits"] - 1e-9 and (
                        choice is None or t["total_bits"] < choice[0]["total_bits"]):
                    choice = (t, s, new_sm, desc)
            if cancelled or choice is None:
                break
            t, s, new_sm, desc = choice
            current = current.with_site(s, new_sm)
            best = t
            path.append({"step": step, **t, "added": desc})
        prop.set_mask(current)
        prop.run()
    finally:
        prop.want_distances = saved_dist
    return SearchResult(current, path, cancelled, best["total_bits"])


def gradient_search(prop: Propagator, steps: int = 30, lr: float = 0.2,
                    candidates_per_site: int = 32, sites: list[str] | None = None,
                    init_logit: float = -2.0,
                    on_step: Callable[[int, int, dict], None] = _noop,
                    should_stop: Callable[[], bool] = lambda: False) -> SearchResult:
    """Adam on sigmoid gates over candidate pairs (module docstring). The propagator is left
    holding the best hard mask found."""
    names = _sites(prop, sites)
    start = prop.mask
    prop.run()
    cand = {s: _candidate_pairs(prop, s, candidates_per_site) for s in names}
    cand = {s: c for s, c in cand.items() if c}
    dev = prop.chain.device
    theta = {s: torch.full((len(c),), float(init_logit), dtype=torch.float64, device=dev,
                           requires_grad=True) for s, c in cand.items()}
    base = {s: prop.dense_mask(s).to(torch.float64) for s in cand}
    idx = {s: torch.tensor(c, device=dev) for s, c in cand.items()}
    bits_per_gate = {s: prop.bits_per_parameter + math.log2(max(prop.chain.layouts[s].n_pairs, 2))
                     for s in cand}
    opt = torch.optim.Adam(list(theta.values()), lr=lr) if theta else None

    def hard_mask() -> CovarianceMask:
        m = start
        for s, c in cand.items():
            on = (torch.sigmoid(theta[s]) > 0.5).tolist()
            sm = start.get(s, prop.chain.layouts[s])
            chosen = frozenset(p for p, o in zip(c, on) if o)
            m = m.with_site(s, SiteMask(sm.layout, sm.rules, sm.on | chosen, sm.off))
        return m

    saved_dist = prop.want_distances
    prop.want_distances = False
    best_mask, best = start, _totals(prop)
    path = [{"step": 0, **best, "relaxed_loss": None, "n_gates_on": 0}]
    cancelled = False
    try:
        for it in range(1, steps + 1):
            if should_stop() or opt is None:
                cancelled = should_stop()
                break
            gates = {}
            penalty = torch.zeros((), dtype=torch.float64, device=dev)
            for s in cand:
                g = torch.sigmoid(theta[s])
                m = base[s].clone()
                m = m.index_put((idx[s][:, 0], idx[s][:, 1]), g)
                m = m.index_put((idx[s][:, 1], idx[s][:, 0]), g)
                gates[s] = m
                penalty = penalty + g.sum() * bits_per_gate[s]
            data, _ = prop.relaxed(gates)
            loss = data + penalty
            opt.zero_grad()
            loss.backward()
            opt.step()
            hm = hard_mask()
            prop.set_mask(hm)
            prop.run()
            t = _totals(prop)
            n_on = sum(int((torch.sigmoid(v) > 0.5).sum()) for v in theta.values())
            rec = {"step": it, **t, "relaxed_loss": float(loss.detach()), "n_gates_on": n_on}
            path.append(rec)
            if t["total_bits"] < best["total_bits"]:
                best, best_mask = t, hm
            on_step(it, steps, {**rec, "best_total_bits": best["total_bits"],
                                "best_mask": best_mask})
        prop.set_mask(best_mask)
        prop.run()
    finally:
        prop.want_distances = saved_dist
    return SearchResult(best_mask, path, cancelled, best["total_bits"])
