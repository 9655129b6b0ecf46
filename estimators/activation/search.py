"""Argument search: greedy forward selection and gradient descent on relaxed masks.

Both score an argument by its exact total surprise S(π) + S(Y|π) in bits (the code of
`estimators.surprise`, the data code of `accounting.py` / `mixture.py`), start from the
propagator's current argument (the naive one by default) and report `path`: one dict per
accepted step with `argument_bits`, `data_bits`, `total_bits` (exact) and `switched_on` (the
entries, blocks or mixture the step switched on). The returned argument is verified: it is
re-evaluated from scratch (a fresh `Propagator` on the reported mask, plus the mixture) and
`verified_total_bits` must equal the last step's total.

Candidates. Per site, the `candidates_per_site` off-diagonal pairs with the largest |empirical
correlation| that the current mask does not track; at multi-position sites each
within-position block not yet tracked; and, while no mixture is set, each mixture argument
(`mixture.py`) over `variables` at the chain's output site and, when the variable takes at most
`max_components` values, at its input site (a mixture there propagates every component, so each
later evaluation costs C propagations; with charlm's last token, 22 values at N = 64, at the
input, a 3-step search took 618 s on one CPU core). A pair or block
candidate is evaluated exactly by re-propagating from its site on (the engine's cache keeps
everything upstream, so candidates at one site share their upstream work). Batched: the
candidates of one site are scored `batch_size` at a time by
`Propagator.surprise_of_site_masks`, which stacks their samples on the sample axis and runs
each transition from the site on once for all of them (C·K rows per pass); the scores equal
the one-at-a-time ones (`batch_size=1`, and always while a mixture is set, when each candidate
is scored under the mixture). A mixture candidate propagates its components, stacked the same
way.

Greedy: at each step evaluate every candidate, keep the one with the lowest total if it lowers
the current total; otherwise stop and say why: "no candidate lowers total bits; the best one
(NAME) would cost X bits and save Y" (X = its change in S(π), Y = its fall in S(Y|π)).

Gradient (covariance gates only): a logit θ_c per candidate pair, initialised at `init_logit`
(gates off). Straight-through relaxation: the forward pass uses the hard gate 1[θ_c > 0], the
backward pass the gradient of sigmoid(θ_c / T); the temperature follows the stated geometric
schedule T_t = T_0·(T_1/T_0)^{t/(steps−1)} (T_0 = `temperature_start`, T_1 = `temperature_end`).
The loss is S(Y|π)(gates) + λ_t·Σ_c gate_c·bits_per_gate, with bits_per_gate =
bits_per_parameter + 2·log2(n_pairs of the site) (one tracked number plus about the bits to
name the entry) and a continuation on the price (`price_weight`): λ_t = 0 over the first half
of the steps, then rising linearly to 1 at the last step, so gates whose entries lower S(Y|π)
switch on first and the rising price then switches off those that do not pay. The update is
normalised gradient descent, θ ← θ − lr·∇/max_c|∇_c|: the gate with the largest first-order
saving moves by lr and every other in proportion, so gates switch on in the order of their
saving (the top one after ⌈|init_logit|/lr⌉ updates). (Adam, used before, takes sign steps at
first, so every gate with any saving switched on at the same update; on maxk's logits that
formed components with untracked entries between units correlated at |ρ| ≈ 0.99, whose Σ⊙M
needed PSD repair and coded the real logits at ~10⁷ bits.) An off gate's forward value is
OFF_GATE = 1e-9 rather than 0, so that its entry stays in the masked covariance and receives a
gradient. After every update the hard argument is evaluated exactly; the best one is returned.

`on_step(i, total, info)` / `should_stop()` report progress and cancel; `info` carries
`best_total_bits` and `best_mask`, the best argument so far, so an interrupted caller can keep it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from estimators.activation.engine import Propagator
from estimators.activation.masks import CovarianceMask, MaskRule, SiteMask, topk_pairs_mask
from estimators.activation.mixture import MixtureArgument, mixture_surprise, variable_values


OFF_GATE = 1e-9  # the forward value of an off gate in the gradient search (module docstring)


@dataclass
class SearchResult:
    mask: CovarianceMask  # the best argument found
    path: list[dict] = field(default_factory=list)
    cancelled: bool = False
    best_total_bits: float = math.inf
    mixture: MixtureArgument | None = None
    stop_reason: str = ""
    verified_total_bits: float | None = None

    def to_dict(self) -> dict:
        return {"mask": self.mask.to_dict(), "path": self.path, "cancelled": self.cancelled,
                "best_total_bits": self.best_total_bits,
                "mixture": None if self.mixture is None else self.mixture.to_dict(),
                "stop_reason": self.stop_reason,
                "verified_total_bits": self.verified_total_bits}


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


class _Scorer:
    """Exact totals of (mask, mixture) arguments; variable values computed once."""

    def __init__(self, prop: Propagator, tokens, labels, n_ctx):
        self.prop, self.tokens, self.labels, self.n_ctx = prop, tokens, labels, n_ctx
        self._values: dict[str, torch.Tensor] = {}

    def values(self, variable: str) -> torch.Tensor:
        if variable not in self._values:
            self._values[variable] = variable_values(variable, self.prop.chain, self.tokens,
                                                     self.labels)
        return self._values[variable]

    def totals(self, mixture: MixtureArgument | None) -> dict:
        if mixture is None:
            s = self.prop.surprise()
        else:
            s = mixture_surprise(self.prop, mixture, self.values(mixture.variable),
                                 self.n_ctx).surprise
        return {"argument_bits": s.argument_bits, "data_bits": s.data_bits,
                "total_bits": s.total_bits}


def default_variables(tokens, labels) -> list[str]:
    """Mixture variables the search tries by default: the label (when the data has labels)
    and the token at the last position (when the tokens are known)."""
    return (["label"] if labels is not None else []) + (
        ["token_at:-1"] if tokens is not None else [])


def _mask_candidates(prop: Propagator, current: CovarianceMask, names: list[str],
                     k: int, include_blocks: bool) -> list[tuple[str, SiteMask, str]]:
    cands = []
    for s in names:
        sm = current.get(s, prop.chain.layouts[s])
        for i, j in _candidate_pairs(prop, s, k):
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
    return cands


def _mixture_candidates(prop: Propagator, scorer: "_Scorer", variables: list[str],
                        max_components: int) -> list[MixtureArgument]:
    """Mixtures over `variables` at the input site and at the output site; one upstream of the
    output (whose C components must each be propagated, C times the cost of every later
    evaluation) only when V takes at most max_components values."""
    ch = prop.chain
    sites = list(dict.fromkeys([ch.sites[0].name, ch.output.site]))
    out = []
    for v in variables:
        try:
            n_values = len(torch.unique(scorer.values(v)))
        except ValueError:  # a variable the data cannot give
            continue
        out += [MixtureArgument(s, v) for s in sites
                if s == ch.output.site or n_values <= max_components]
    return out


def _why_stop(best: dict, choice) -> str:
    if choice is None:
        return "no candidates left to try"
    t, desc = choice[0], choice[-1]
    cost = t["argument_bits"] - best["argument_bits"]
    save = best["data_bits"] - t["data_bits"]
    return (f"no candidate lowers total bits; the best one ({desc}) would cost {cost:,.1f} "
            f"bits and save {save:,.1f}")


def verify(prop: Propagator, mask: CovarianceMask, mixture: MixtureArgument | None,
           tokens=None, labels=None, n_ctx=None) -> float:
    """Total bits of (mask, mixture) re-evaluated from scratch on a fresh Propagator."""
    fresh = Propagator(prop.chain, mask, bits_per_parameter=prop.bits_per_parameter,
                       data_code=prop.data_code, distances=False)
    fresh.run()
    return _Scorer(fresh, tokens, labels, n_ctx).totals(mixture)["total_bits"]


def _groups(cands: list, batch_size: int) -> list[list]:
    """Consecutive candidates of one kind and site, at most batch_size per group."""
    out: list[list] = []
    for c in cands:
        last = out[-1] if out else None
        if last and c[0] == "mask" and last[0][0] == "mask" and last[0][1] == c[1] \
                and len(last) < batch_size:
            last.append(c)
        else:
            out.append([c])
    return out


def _score_group(prop: Propagator, scorer: "_Scorer", current: CovarianceMask,
                 mixture: MixtureArgument | None, group: list, batch_size: int) -> list:
    """Totals (or None for a candidate the data cannot give) of a group of candidates."""
    prop.set_mask(current)
    kind, site = group[0][0], group[0][1]
    if kind == "mask" and mixture is None and batch_size > 1:
        return [{"argument_bits": s.argument_bits, "data_bits": s.data_bits,
                 "total_bits": s.total_bits}
                for s in prop.surprise_of_site_masks(site, [c[2] for c in group], batch_size)]
    out = []
    for kind, a, b, _ in group:
        if kind == "mask":
            prop.set_mask(current.with_site(a, b))
            prop.run()
            out.append(scorer.totals(mixture))
        else:
            try:
                out.append(scorer.totals(a))
            except ValueError:  # e.g. a variable the data cannot give
                out.append(None)
    return out


def greedy_search(prop: Propagator, max_steps: int = 10, candidates_per_site: int = 16,
                  sites: list[str] | None = None, include_blocks: bool = True,
                  on_step: Callable[[int, int, dict], None] = _noop,
                  should_stop: Callable[[], bool] = lambda: False,
                  variables: list[str] | None = None, tokens=None, labels=None,
                  n_ctx: int | None = None, batch_size: int | None = None,
                  max_components: int = 16) -> SearchResult:
    """Greedy forward selection from prop's current mask (module docstring). The propagator is
    left holding the best mask found.

    variables: mixture variables to try (None: `default_variables(tokens, labels)`); tokens
    [N, ctx] / labels [N]: the chain's real inputs, needed by label / token_at variables.
    batch_size: candidates scored per batched pass (None: `prop.default_batch_size()`; 1: one
    at a time through the cached engine; the scores are the same).
    max_components: a mixture upstream of the output site is offered only when its variable
    takes at most this many values (each component is propagated, so every later evaluation
    costs C propagations); at the output site always.
    Raises ValueError for a negative max_steps, a batch_size < 1 or an unknown site."""
    if max_steps < 0:
        raise ValueError("max_steps must be ≥ 0")
    batch_size = prop.default_batch_size() if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    names = _sites(prop, sites)
    variables = default_variables(tokens, labels) if variables is None else list(variables)
    scorer = _Scorer(prop, tokens, labels, n_ctx)
    saved_dist = prop.want_distances
    prop.want_distances = False
    mixture = None
    reason = f"reached the step limit ({max_steps})"
    try:
        prop.run()
        best = scorer.totals(None)
        path = [{"step": 0, **best, "added": None, "switched_on": []}]
        current = prop.mask
        cancelled = False
        evals = 0
        for step in range(1, max_steps + 1):
            prop.set_mask(current)  # candidates exclude what the current argument tracks
            cands = [("mask", s, sm, d) for s, sm, d in
                     _mask_candidates(prop, current, names, candidates_per_site, include_blocks)]
            if mixture is None:
                cands += [("mixture", m, None, f"mixture on {m.variable} at {m.site}")
                          for m in _mixture_candidates(prop, scorer, variables,
                                                       max_components)]
            total_evals = evals + len(cands) * (max_steps - step + 1)
            choice = None
            for group in _groups(cands, batch_size):
                if should_stop():
                    cancelled = True
                    break
                for (kind, a, b, desc), t in zip(group, _score_group(
                        prop, scorer, current, mixture, group, batch_size)):
                    if t is None:
                        continue
                    evals += 1
                    on_step(evals, total_evals, {"step": step, "candidate": desc, **t,
                                                 "best_total_bits": best["total_bits"],
                                                 "best_mask": current})
                    if choice is None or t["total_bits"] < choice[0]["total_bits"]:
                        choice = (t, kind, a, b, desc)
            if cancelled:
                reason = "cancelled"
                break
            if choice is None or choice[0]["total_bits"] >= best["total_bits"] - 1e-9:
                reason = _why_stop(best, choice)
                break
            t, kind, a, b, desc = choice
            if kind == "mask":
                current = current.with_site(a, b)
            else:
                mixture = a
            best = t
            path.append({"step": step, **t, "added": desc, "switched_on": [desc]})
        prop.set_mask(current)
        prop.run()
    finally:
        prop.want_distances = saved_dist
    out = SearchResult(current, path, cancelled, best["total_bits"], mixture, reason)
    out.verified_total_bits = verify(prop, current, mixture, tokens, labels, n_ctx)
    return out


def temperature(step: int, steps: int, start: float, end: float) -> float:
    """The straight-through temperature at update `step` (0-based) of `steps`: geometric from
    `start` to `end`."""
    if steps <= 1:
        return float(end)
    return float(start * (end / start) ** (step / (steps - 1)))


def price_weight(step: int, steps: int) -> float:
    """λ at update `step` (0-based) of `steps`: 0 for the first half, then linear up to 1."""
    half = steps / 2
    if step < half or steps <= 1:
        return 0.0 if steps > 1 else 1.0
    return float(min(1.0, (step - half + 1) / max(steps - half, 1)))


def _normalised_step(params: list[torch.Tensor], lr: float) -> None:
    """θ ← θ − lr·∇/max|∇| over all gates (module docstring); clears the gradients."""
    with torch.no_grad():
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        gmax = max(float(g.abs().max()) for g in grads)
        for p, g in zip(params, grads):
            if gmax > 0 and gmax < float("inf"):
                p -= lr * g / gmax
            p.grad = None


def gradient_search(prop: Propagator, steps: int = 30, lr: float = 0.2,
                    candidates_per_site: int = 32, sites: list[str] | None = None,
                    init_logit: float = -0.5, temperature_start: float = 1.0,
                    temperature_end: float = 0.05,
                    on_step: Callable[[int, int, dict], None] = _noop,
                    should_stop: Callable[[], bool] = lambda: False) -> SearchResult:
    """Straight-through gradient search over candidate pairs (module docstring). The propagator
    is left holding the best hard mask found. Raises ValueError for non-positive
    temperatures."""
    if not (temperature_start > 0 and temperature_end > 0):
        raise ValueError("temperatures must be > 0")
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
    bits_per_gate = {s: prop.bits_per_parameter +
                     2 * math.log2(max(prop.chain.layouts[s].n_pairs, 2)) for s in cand}
    params = list(theta.values())

    def hard_mask() -> CovarianceMask:
        m = start
        for s, c in cand.items():
            on = (theta[s] > 0).tolist()
            sm = start.get(s, prop.chain.layouts[s])
            chosen = frozenset(p for p, o in zip(c, on) if o)
            m = m.with_site(s, SiteMask(sm.layout, sm.rules, sm.on | chosen, sm.off))
        return m

    saved_dist = prop.want_distances
    prop.want_distances = False
    t0 = prop.surprise()
    best_mask = start
    best = {"argument_bits": t0.argument_bits, "data_bits": t0.data_bits,
            "total_bits": t0.total_bits}
    path = [{"step": 0, **best, "relaxed_loss": None, "n_gates_on": 0, "switched_on": [],
             "temperature": None}]
    cancelled = False
    on_before: dict[str, set] = {s: set() for s in cand}
    try:
        for it in range(1, steps + 1):
            if should_stop() or not params:
                cancelled = should_stop()
                break
            temp = temperature(it - 1, steps, temperature_start, temperature_end)
            lam = price_weight(it - 1, steps)
            gates = {}
            penalty = torch.zeros((), dtype=torch.float64, device=dev)
            for s in cand:
                soft = torch.sigmoid(theta[s] / temp)
                # straight-through: the hard gate forward, sigmoid(θ/T)'s gradient backward; an
                # off gate carries OFF_GATE (not 0) so its entry stays in the mask's graph and
                # gets a gradient
                hard = (theta[s] > 0).to(soft.dtype).clamp_min(OFF_GATE)
                g = hard + soft - soft.detach()
                m = base[s].clone()
                m = m.index_put((idx[s][:, 0], idx[s][:, 1]), g)
                m = m.index_put((idx[s][:, 1], idx[s][:, 0]), g)
                gates[s] = m
                penalty = penalty + g.sum() * bits_per_gate[s]
            data, _ = prop.relaxed(gates)
            loss = data + lam * penalty
            loss.backward()
            _normalised_step(params, lr)
            hm = hard_mask()
            prop.set_mask(hm)
            prop.run()
            s_ = prop.surprise()
            t = {"argument_bits": s_.argument_bits, "data_bits": s_.data_bits,
                 "total_bits": s_.total_bits}
            switched = []
            for s, c in cand.items():
                now = {p for p, o in zip(c, (theta[s] > 0).tolist()) if o}
                switched += [f"{s}[{i},{j}]" for i, j in sorted(now - on_before[s])]
                on_before[s] = now
            n_on = sum(len(v) for v in on_before.values())
            rec = {"step": it, **t, "relaxed_loss": float(loss.detach()), "n_gates_on": n_on,
                   "switched_on": switched, "temperature": temp, "price_weight": lam}
            path.append(rec)
            if t["total_bits"] < best["total_bits"]:
                best, best_mask = t, hm
            on_step(it, steps, {**rec, "best_total_bits": best["total_bits"],
                                "best_mask": best_mask})
        prop.set_mask(best_mask)
        prop.run()
    finally:
        prop.want_distances = saved_dist
    reason = "cancelled" if cancelled else (
        "the best hard argument seen lowers total bits" if best_mask is not start else
        "no hard argument seen lowers total bits")
    out = SearchResult(best_mask, path, cancelled, best["total_bits"], None, reason)
    out.verified_total_bits = verify(prop, best_mask, None)
    return out
