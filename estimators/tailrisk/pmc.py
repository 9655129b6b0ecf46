"""The refinement: a greedy coordinate search, then population Monte Carlo around every hit
found, with a known-set estimate.

ITGIS and MHIS spend the first part of a budget *searching* for inputs in the behaviour; their
own estimates stay noisy (ITGIS's weights are heavy-tailed; MHIS's normaliser is estimated by
bridge sampling, measured 9–24× low on charlm), and a target carried by a few inputs of 2^20
is often not found at all. The refinement stage (the last `refine_fraction` of the calls)
spends `COORDINATE_SHARE` of its calls on the greedy coordinate search (coordinate.py: hill
climbing on the behaviour's margin, one position at a time, restarting from draws of D), and
the rest on forward-only draws (1 call each) from a proposal whose density is known exactly,
built from what was found:

    m(x) = α·D(x) + β·Q(x) + (1 − α − β)·Σ_h π_h·K_h(x),
    K_h(x) = Π_i [(1 − ε)·1{x_i = h_i} + ε·U_i(x_i)],   Q(x) = Π_i [(1 − ε)·f_i(x_i) + ε·U_i(x_i)],

a mixture of D (defensive, α = `DEFENSIVE`, raised to the climb's hit rate on its fresh draws
of D for a common behaviour: `defensive_share`), one product kernel per seed input h (each
position keeps h's token with probability 1 − ε and is otherwise redrawn uniformly from D's
support at that position, U_i: a mutation kernel that reaches tokens rare under D as often as
common ones) with π_h ∝ D(h), so the kernels approximate the zero-variance law
q* ∝ D·1{behaviour} on the hits found, and the product Q of the seeds' π-weighted token
frequencies f_i (β = `PRODUCT_SHARE`: the cross-entropy method's product-form fit, Rubinstein
1997, which recombines the seeds' tokens across positions). ε = 2/(free positions), clipped to
[0.05, 0.5].

This is population Monte Carlo (Cappé, Guillin, Marin & Robert 2004) with the hits as the
population: each batch draws from the mixture built from the seeds known before it (the
searches' hits plus every hit of the earlier batches).

The known-set estimate: every distinct input in the behaviour that anything evaluated is
known, with its exact probability D(h), so P_D(behaviour) = D(H) + P_D(behaviour ∖ H) and only
the second term needs sampling. A draw x of batch b counts

    y = D(H_b) + value(x)·1{x ∉ H_b}·D(x)/m_b(x),

H_b the hits known before batch b; m_b and H_b depend only on what came before, so each y has
expectation exactly P_D(behaviour) and their mean is unbiased given the searches. D(H) is a
sure lower bound; a run that finds every input of a needle reads it exactly. (Weighting every
draw, known or not, by D/m_b, the previous version, is unbiased too but spends the draws
re-estimating mass already known; AMIS's deterministic mixture over all the proposals used,
Cornuet et al. 2012, is biased here: a hit becomes a seed, the later kernels centred on it
lower its own weight, and a target with hundreds of hits read 0.36–0.64× its exact
probability; tests/tailrisk/test_pmc_weights.py.)

Seeds: the distinct inputs in the behaviour that the searches evaluated (accepted or not);
with none, the `TOP_SEEDS` highest-scoring ones, so the draws keep searching where the score
is high and their first hit becomes a seed for the next batch. At most `MAX_SEEDS` are kept
(the most probable under D). Indicator behaviours only (argmax, logit, SAE latent, probe): for
a behaviour with a continuous value every draw would be a "hit"; there the samplers run alone.

What it cannot do: find a cluster of hits that neither search nor the kernels reach. On
charlm's hex target `I` (15 inputs), 13 of the hits end in `bee`, where the margin is highest,
and 2 in `fae`; a run whose climbs reach only `fae` reads 2/15 = 0.13× (3 of 10 seeds for
ITGIS, 4 of 10 for MHIS, at 2^14 calls).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from estimators.tailrisk.behaviours import constraint_margin
from estimators.tailrisk.common import (ProgressFn, batches, clopper_pearson_interval,
                                        normal_interval, report)
from estimators.tailrisk.coordinate import coordinate_search

DEFENSIVE = 0.1  # α: the share of D in the refinement's proposal (at least)
MAX_DEFENSIVE = 0.8  # α for a common behaviour (defensive_share)
PRODUCT_SHARE = 0.3  # β: the share of the product of the seeds' token frequencies
MAX_SEEDS = 256  # kernels kept (the most probable under D)
TOP_SEEDS = 8  # seeds from the highest scores when the search found no hit
TAIL_POINTS = 32  # the largest distinct margins tail_fit reads
COORDINATE_SHARE = 0.75  # of the refinement's calls: the greedy coordinate search
SEED_CHUNK = 64
KNOWN_SET_INTERVAL = ("known set: [max(D(H), normal lower), max(normal upper, D(H) + bound on "
                      "the mass no draw reached)] (known_set_interval)")  # seeds per step of the density's evaluation ([n, chunk, k] booleans)


@dataclass
class SearchLog:
    """The inputs a search evaluated that the refinement can start from: distinct hits, and
    the highest-scoring inputs (scores of `Behaviour.guided`). `active=False` (a run with no
    refinement) records nothing, so the search pays nothing for it."""

    active: bool = True
    hits: dict = field(default_factory=dict)  # tuple(tokens) -> None (insertion-ordered)
    top: list = field(default_factory=list)  # [(score, tuple(tokens))], ≤ TOP_SEEDS, best first
    _mass: float = 0.0  # D mass of the first _mass_of hits (known_mass, incremental)
    _mass_of: int = 0

    def add(self, x: Int[Tensor, "n k"], value: Tensor, score: Tensor) -> None:
        """Record a batch of evaluated inputs with their values and scores ([n] each)."""
        if not self.active:
            return
        x = x.cpu()
        for j in (value.cpu() > 0).nonzero().flatten().tolist():
            self.hits.setdefault(tuple(x[j].tolist()), None)
        if not self.hits and x.shape[0]:
            s = score.detach().cpu().double()
            best = torch.topk(s, min(TOP_SEEDS, s.numel())).indices.tolist()
            merged = self.top + [(float(s[j]), tuple(x[j].tolist())) for j in best]
            seen, self.top = set(), []
            for sc, t in sorted(merged, key=lambda p: -p[0]):
                if t not in seen:
                    seen.add(t)
                    self.top.append((sc, t))
            self.top = self.top[:TOP_SEEDS]

    def contains(self, x: Int[Tensor, "n k"]) -> Tensor:
        """[n] bool: which rows of x are among the distinct hits logged."""
        return torch.tensor([tuple(r) in self.hits for r in x.cpu().tolist()], dtype=torch.bool)

    def known_mass(self, dist) -> float:
        """D(H), the exact probability under D of the distinct hits logged (0 with none)."""
        if not self.hits:
            return 0.0
        if len(self.hits) != self._mass_of:
            new = list(self.hits)[self._mass_of:]
            self._mass += float(dist.log_prob(torch.tensor(new)).exp().sum())
            self._mass_of = len(self.hits)
        return self._mass

    def seeds(self) -> tuple[Int[Tensor, "h k"] | None, bool]:
        """(seed inputs [h, k], whether they are hits); (None, False) when nothing was logged."""
        if self.hits:
            return torch.tensor(list(self.hits)), True
        if self.top:
            return torch.tensor([t for _, t in self.top]), False
        return None, False


def kernel_epsilon(dist) -> float:
    """ε = 2/(free positions), clipped to [0.05, 0.5]: two redrawn positions per draw on
    average (1/(free positions) found fewer of the hits on charlm; README, Benchmarks)."""
    free = max(1, dist.length - len(dist.fixed_positions()))
    return min(0.5, max(0.05, 2.0 / free))


class KernelMixture:
    """m = α·D + β·Q + (1 − α − β)·Σ_h π_h K_h (module docstring), π_h ∝ D(h), Q the product
    of the seeds' π-weighted token frequencies per position mixed with U_i, the uniform law on
    D's support there (weight ε); exact density. At most MAX_SEEDS seeds (the most probable
    under D) make the kernels and Q."""

    def __init__(self, dist, seeds: Int[Tensor, "h k"], eps: float, alpha: float = DEFENSIVE,
                 beta: float = PRODUCT_SHARE):
        beta = min(beta, (1 - alpha) / 2)  # the kernels keep a share when α is raised
        log_d = dist.log_prob(seeds)
        keep = torch.argsort(log_d, descending=True)[:MAX_SEEDS]
        self.seeds, log_d = seeds[keep], log_d[keep]
        self.log_pi = log_d - torch.logsumexp(log_d, 0)  # [h]
        self.log_p = dist.probs.log()  # [k, V] float64
        sup = (dist.probs > 0).double()
        self.unif = sup / sup.sum(1, keepdim=True)  # [k, V] U_i: uniform on D_i's support
        self.eps, self.alpha, self.beta, self.dist = eps, alpha, beta, dist
        k, V = self.log_p.shape
        freq = torch.zeros(k, V, dtype=torch.float64)
        freq.scatter_add_(1, self.seeds.T, self.log_pi.exp()[None].expand(k, -1).contiguous())
        self.log_q = ((1 - eps) * freq + eps * self.unif).log()  # [k, V]

    def sample(self, n: int, gen: torch.Generator, with_source: bool = False):
        """n draws [n, k]: D w.p. α, Q w.p. β, else kernel h ∼ π (each position redrawn from U
        w.p. ε). With `with_source`, (draws, [n] bool: the rows drawn from D itself)."""
        fresh = torch.multinomial(self.unif.float(), n, replacement=True, generator=gen).T
        h = torch.multinomial(self.log_pi.exp().float(), n, replacement=True, generator=gen)
        mutate = torch.rand(fresh.shape, generator=gen) < self.eps
        out = torch.where(mutate, fresh, self.seeds[h])
        u = torch.rand(n, generator=gen)
        q = torch.multinomial(self.log_q.exp().float(), n, replacement=True, generator=gen).T
        out = torch.where((u < self.alpha + self.beta)[:, None], q, out)
        out = torch.where((u < self.alpha)[:, None], self.dist.sample(n, gen), out)
        return (out, u < self.alpha) if with_source else out

    def log_density(self, x: Int[Tensor, "n k"]) -> Float[Tensor, "n"]:
        """log m(x), float64 (seeds in chunks of SEED_CHUNK: memory n·chunk·k)."""
        rows = torch.arange(x.shape[1])
        lp = self.log_p[rows, x]  # [n, k] log D_i(x_i)
        u = self.unif[rows, x]  # [n, k] U_i(x_i)
        # per position: log((1 − ε) + ε·U_i(x_i)) where x_i = h_i, log(ε·U_i(x_i)) elsewhere
        same_val = torch.log((1 - self.eps) + self.eps * u)
        diff_val = torch.log(self.eps * u)
        parts = []
        for c in range(0, self.seeds.shape[0], SEED_CHUNK):
            eq = x[:, None, :] == self.seeds[c:c + SEED_CHUNK][None]  # [n, chunk, k]
            lk = torch.where(eq, same_val[:, None, :], diff_val[:, None, :]).sum(-1)
            parts.append(lk + self.log_pi[c:c + SEED_CHUNK][None])
        terms = [torch.logsumexp(torch.cat(parts, 1), 1) + math.log(1 - self.alpha - self.beta),
                 self.log_q[rows, x].sum(1) + math.log(self.beta)]
        if self.alpha > 0:
            terms.append(lp.sum(1) + math.log(self.alpha))
        return torch.logsumexp(torch.stack(terms), 0)


@dataclass
class Refinement:
    """What `refine` returns: the estimate and what it rests on."""

    value: float
    interval: tuple[float, float] | None
    samples: int  # population Monte Carlo draws (forward only, 1 call each)
    hits: int  # draws in the behaviour
    seeds_start: int  # seeds the first batch used
    seeds_were_hits: bool
    seeds_end: int
    proposals: int  # distinct mixtures used (the seed set grew between them)
    tail: float | None = None  # no hit: the weighted margin tail extrapolated to 0 (tail_fit)
    coordinate_calls: int = 0  # calls the greedy coordinate search spent (coordinate.py)
    coordinate_inputs: int = 0  # inputs it evaluated
    known: int = 0  # distinct inputs in the behaviour found (search, coordinate search, draws)
    known_mass: float = 0.0  # their exact probability under D: a lower bound on the answer
    d_acts: Tensor | None = None  # site activations [r, d] of the draws from D's component

    def diagnostics(self) -> dict:
        return {"refine_samples": self.samples + self.coordinate_inputs,
                "refine_calls": self.samples + self.coordinate_calls,
                "refine_draws": self.samples, "refine_hits": self.hits,
                "refine_draws_from_d": 0 if self.d_acts is None else int(self.d_acts.shape[0]),
                "refine_coordinate_calls": self.coordinate_calls,
                "refine_known_inputs": self.known, "refine_known_mass": self.known_mass,
                "refine_seeds": [self.seeds_start, self.seeds_end],
                "refine_seeds_were_hits": self.seeds_were_hits,
                "refine_proposals": self.proposals, "refine_tail": self.tail}


def check_refine_fraction(f: float) -> None:
    """Raise ValueError unless 0 ≤ f < 1 (the share of a budget the refinement spends)."""
    if not 0 <= f < 1:
        raise ValueError(f"refine_fraction must be in [0, 1), got {f}")


def refine_calls(budget: int, fraction: float, need: int, reference_fraction: float) -> int:
    """Calls for the refinement stage: ⌊fraction·budget⌋, lowered so that the search keeps
    enough calls for `need` calls with gradients beside its reference draws (a share
    `reference_fraction` of the search's calls); 0 when even the whole budget is not enough
    (the sampler then refuses the budget itself)."""
    search = math.ceil(need / (1 - reference_fraction))
    while search - int(reference_fraction * search) < need:
        search += 1
    return max(0, min(int(fraction * budget), budget - search))


def refined_diagnostics(stage: Refinement | None) -> dict:
    """The refinement's diagnostics for an estimator's output ({"refine": None, …} when the
    stage did not run: no budget for it, or no seed)."""
    if stage is None:
        return {"refine": None, "refine_samples": 0, "refine_calls": 0, "refine_draws": 0,
                "refine_draws_from_d": 0}
    # "no hit": nothing hit and nothing is known, so the fallback (or the search's 0) stands
    used = "estimate" if stage.hits or stage.known else "no hit"
    return {"refine": used, **stage.diagnostics()}


def refine(model, dist, behaviour, log: SearchLog, n: int, gen: torch.Generator,
           batch_size: int, dev, confidence: float = 0.95,
           progress: ProgressFn | None = None) -> Refinement | None:
    """Spend n calls on the refinement stage (module docstring): a `COORDINATE_SHARE` of them
    on the greedy coordinate search (coordinate.py), the rest on forward-only population
    Monte Carlo draws starting from `log`'s seeds; new hits join the seeds batch by batch.
    None when n < 1 or nothing gives a seed.

    `value` in probability units, the known-set estimate: with H_b the distinct hits known
    before batch b (exact D mass D(H_b): each was evaluated), each draw of batch b counts
    y = D(H_b) + value·1{x ∉ H_b}·D/m_b, whose expectation is exactly P_D(behaviour) (m_b
    depends only on what came before); `value` = mean y, raised to D(H), the exact mass of
    the hits known at the end (a sure lower bound; this projection makes the value consistent
    rather than unbiased), and capped at 1. `interval`: `known_set_interval` (None when
    nothing hit and nothing is known). `tail` (no hit at all):
    `tail_fit` of the margins, None for a behaviour without linear inequalities."""
    if n < 1:
        return None
    climb = coordinate_search(model, dist, behaviour, int(COORDINATE_SHARE * n), gen, dev, log,
                              progress)
    n -= climb.calls
    alpha = defensive_share(climb)
    seeds, were_hits = log.seeds()
    if seeds is None or n < 1:
        return None
    eps = kernel_epsilon(dist)
    start = int(seeds.shape[0])
    bounds = _constraints(model, behaviour)
    known = log.known_mass(dist)  # D(H): the exact mass of the distinct hits found so far
    y = torch.zeros(n, dtype=torch.float64)  # D(H_b) + value·1{x ∉ H_b}·D/m_b of every draw
    margins, tail_w = [], []  # while nothing has hit: every draw's margin and D/m_b
    d_acts = []  # site activations of the draws that came from D's own component
    key, new_key, proposals, hits, new_d = None, (were_hits, start), 0, 0, 0
    for done, m in batches(n, batch_size):
        if new_key != key:  # the hit set only grows, so (hits?, count) names the seed set
            mix, key, proposals = KernelMixture(dist, seeds, eps, alpha), new_key, proposals + 1
        x, from_d = mix.sample(m, gen, with_source=True)
        v, s, a = behaviour.evaluate_site(model, x.to(dev))
        v = v.cpu()
        d_acts.append(a[from_d.to(a.device)].cpu())  # draws of D itself: the fallback's too
        hit = v > 0
        y[done:done + m] = known
        if bounds is not None and hits == 0 and not log.hits:  # the tail: nothing hit yet
            margins.append(constraint_margin(a.float(), *bounds).cpu().double())
            tail_w.append(_pmc_weights(dist, mix, x))
        if bool(hit.any()):
            fresh = hit & ~log.contains(x)
            if bool(fresh.any()):
                y[done:done + m][fresh] += v[fresh] * _pmc_weights(dist, mix, x[fresh])
                new_d += int((fresh & from_d).sum())
            hits += int(hit.sum())
            log.add(x, v, s)
            known = log.known_mass(dist)
            seeds, is_hits = log.seeds()
            new_key = (is_hits, int(seeds.shape[0]))
        report(progress, (done + m) / n, done + m, n, "calls", "refinement")
    tail = tail_fit(torch.cat(margins), torch.cat(tail_w)) if hits == 0 and margins else None
    d_acts = torch.cat(d_acts)  # (`known` is D(H) at the end: updated after every new hit)
    interval = (known_set_interval(y, known, new_d, int(d_acts.shape[0]), confidence)
                if hits or known else None)
    # never below what is known for sure (a projection on p ≥ D(H): it can only lower the
    # error); capped at 1 (unbiased weights can average above it: 1.02 seen on p = 1)
    return Refinement(min(1.0, max(float(y.mean()), known)), interval, n, hits,
                      start, were_hits, int(seeds.shape[0]), proposals, tail,
                      coordinate_calls=climb.calls, coordinate_inputs=climb.inputs,
                      known=len(log.hits), known_mass=known, d_acts=d_acts)


def known_set_interval(y: Float[Tensor, "n"], known: float, new_d: int, n_d: int,
                       confidence: float = 0.95) -> tuple[float, float]:
    """The refinement's interval (probability units) from its n counts y (`refine`), `known`
    = D(H) at the end, and the n_d draws that came from D's own component of the mixture, of
    which new_d found an input outside the known set:

    lower end: the normal approximation's, raised to D(H) (a sure lower bound);
    upper end: the larger of the normal approximation's and D(H) + c, c the Clopper–Pearson
    upper end of new_d out of n_d: those draws are draws of D, each outside the known set
    with probability P_D(rest) or more, so c bounds the mass no draw reached (approximately:
    the known set grows as they are drawn). 1 with no such draw.

    The normal interval alone measured only the new inputs' weights: after one new hit it
    shrank onto D(H) while most of the mass was unseen (QA: 13–16 of 20 intervals covered
    the truth on a 14-input target at 1,024 calls). Counting every draw against the
    mixture's floor m ≥ α·D instead (c over all draws, divided by α) made the upper end 1 on
    common targets (QA2). Capped at 1."""
    n = y.numel()
    normal = normal_interval(y, confidence, upper_clip=1.0)
    lo, hi = normal if normal is not None else (known, known)
    rest = clopper_pearson_interval(new_d, n_d, confidence)[1] if n_d else 1.0
    return max(lo, known), min(1.0, max(hi, known + rest))


def defensive_share(climb) -> float:
    """α, D's share in the refinement's proposal: DEFENSIVE, raised to the share of the
    coordinate search's fresh draws of D that hit (at most MAX_DEFENSIVE). For a common
    behaviour D itself is close to the zero-variance proposal, and kernels around a few
    hundred seeds only add variance (a behaviour that always holds read 0.92 at α = 0.1)."""
    rate = climb.start_hits / climb.starts if climb.starts else 0.0
    return min(MAX_DEFENSIVE, max(DEFENSIVE, rate))


def _pmc_weights(dist, mix: KernelMixture, x: Int[Tensor, "n k"]) -> Float[Tensor, "n"]:
    """D(x)/m_b(x), m_b the mixture the draws x came from.

    Each m_b is built only from hits of earlier batches, so every weighted draw has
    expectation exactly P_D(behaviour) and their mean is unbiased (PMC, Cappé et al. 2004).
    AMIS's deterministic mixture m̄ = Σ_b (draws_b/n)·m_b is not: a hit becomes a seed, and the
    later kernels centred on it raise m̄ at that very point, lowering its own weight
    (measured 0.4–0.6× on targets with hundreds of hits)."""
    return (dist.log_prob(x) - mix.log_density(x)).exp()


def _constraints(model, behaviour):
    """(G [d, m], h [m]) float32 on the model's device when the behaviour is a set of linear
    inequalities at its site (its margin is min_j (a·G + h)_j), else None."""
    from estimators.tailrisk.behaviours import BehaviourError

    try:
        G, h = behaviour.constraints(model)
    except BehaviourError:
        return None
    # float32 on the model's device, like the site activations (MPS has no float64)
    return G.float(), h.float()


def tail_fit(margin: Float[Tensor, "n"], w: Float[Tensor, "n"], top: int = TAIL_POINTS
             ) -> float | None:
    """P_D(margin > 0) extrapolated from importance-weighted draws none of which reached it:
    the weighted survival Ŝ(u) = Σ_{margin_j ≥ u} w_j / n at the `top` largest margins, fitted by
    least squares as ln Ŝ(u) = a + b·u (an exponential tail, as in peaks-over-threshold fits),
    read at u = 0: e^a, capped at 1. None with fewer than 4 distinct margins, a zero weighted
    survival among them, or a fit that does not decrease towards 0 (b ≥ 0). Probability units;
    a model's guess, not a sampling estimate."""
    n = margin.numel()
    order = torch.argsort(margin, descending=True)
    m, cum = margin[order], torch.cumsum(w[order], 0) / n
    keep = torch.ones_like(m, dtype=torch.bool)
    keep[:-1] = m[:-1] != m[1:]  # one point per distinct margin (the last of its ties)
    u, S = m[keep][:top], cum[keep][:top]
    if u.numel() < 4 or not bool((S > 0).all()):
        return None
    A = torch.stack([torch.ones_like(u), u], 1)
    a, b = torch.linalg.lstsq(A, S.log()[:, None]).solution.flatten().tolist()
    if not (b < 0 and float(S[-1]) > float(S[0])):  # Ŝ must grow as the margin falls
        return None
    return float(min(1.0, math.exp(a)))
