"""Greedy coordinate search: hill climbing on the behaviour's margin, one position at a time.

The refinement (pmc.py) can only refine around inputs that something has found. ITGIS's tilt
is one product law over positions and MHIS's chains move one token at a time by a first-order
proposal, so a target carried by a few inputs of 2^20 (charlm's hex needles) is often found by
neither: the margin of an argmax behaviour depends on *combinations* of tokens. A greedy
coordinate search finds such inputs directly: from a draw of D, it tries every candidate token
at one position (a batch of forward calls), moves to the best if it raises the score, and goes
on to the next position; a walker that has tried every free position without a gain restarts
from a fresh draw of D. Every input it evaluates that lies in the behaviour is logged (SearchLog)
and so becomes a seed of the refinement and a member of its known set.

Candidates at a position: D's whole support there when it has at most `CANDIDATES` tokens
(charlm's 16 or 27); otherwise the `CANDIDATES` tokens of that support with the largest
first-order gain, the gradient of the score with respect to the one-hot input at the walker's
current input (greedy coordinate gradient, Zou et al. 2023, "Universal and transferable
adversarial attacks on aligned language models", after AutoPrompt, Shin et al. 2020; 2 calls
per gradient). Score: the behaviour's "margin" guide (`Behaviour.guided`): for argmax the
smooth margin logit_t − logsumexp_{u≠t} logit_u, for other behaviours their own score. On
charlm's hex and words needles (12 targets × 6 seeds, 8,000 calls each) the climb found an
input in 61 of 72 runs on the smooth margin, 55 on the exact margin logit_t − max_{u≠t}
logit_u (flat wherever one competitor dominates), 62 on the target logit alone.

`WALKERS` walkers climb side by side, their candidates evaluated in one batch. The climb
hands the rest of its calls to the refinement's draws once `ENOUGH_HITS` distinct hits are
known: then the behaviour is common enough for kernels around those hits to find more hits
per call than climbs do (on charlm's full `hex`, a target at p = 0.009 and 1,024 calls: median
p̂/p over 8 seeds 0.65 → 0.93 for ITGIS, 0.73 → 0.96 for MHIS; on the benchmark's rare targets
at 2^11 and 2^14 calls, where the climb seldom finds 16, no change). The search is not an
estimator: it only chooses where the refinement looks, so the refinement stays unbiased given
what was found (pmc.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from estimators.tailrisk.common import FORWARD_BACKWARD_CALLS, ProgressFn, report

CANDIDATES = 64  # tokens tried per step and walker (D's whole support when it has fewer)
WALKERS = 8  # walkers climbing side by side (fewer where MIN_STEPS steps each do not fit)
MIN_STEPS = 4  # steps per walker the budget must allow
ENOUGH_HITS = 16  # distinct hits known (by any search) at which the climb hands over
CLIMB_GUIDE = "margin"  # the score climbed (Behaviour.guided)


@dataclass
class Climb:
    """What `coordinate_search` spent and saw."""

    calls: int = 0  # forward = 1 call, with its gradient = 2
    inputs: int = 0  # inputs evaluated
    starts: int = 0  # of them, fresh draws of D (the walkers' starts)
    start_hits: int = 0  # starts in the behaviour: an estimate of its probability under D


@dataclass
class _Walkers:
    """Each walker's input x [W, k], its score, its sweep `order` over the free positions and
    `stale`, the positions of that sweep tried without a gain since its last move."""

    x: Tensor
    free: list[int]
    cur: Tensor = field(init=False)
    stale: list[int] = field(init=False)
    order: list[list[int]] = field(init=False)

    def __post_init__(self):
        W = self.x.shape[0]
        self.cur = torch.empty(W, dtype=torch.float64)
        self.stale, self.order = [0] * W, [[] for _ in range(W)]

    def position(self, w: int) -> int:
        """The position walker w tries next."""
        return self.order[w][self.stale[w] % len(self.free)]

    def candidates(self, supports, grads) -> tuple[Tensor, Tensor]:
        """Every walker's candidates at its next position ([c, k]) and the walker of each."""
        cands, owner = [], []
        for w in range(self.x.shape[0]):
            i = self.position(w)
            toks = _candidates(supports[i], grads[w, i] if grads is not None else None,
                               int(self.x[w, i]))
            xs = self.x[w].repeat(toks.numel(), 1)
            xs[:, i] = toks
            cands.append(xs)
            owner += [w] * toks.numel()
        return torch.cat(cands), torch.tensor(owner, dtype=torch.long)

    def climb(self, batch: Tensor, s: Tensor, owner: Tensor, gen) -> list[int]:
        """Move each walker to its best candidate where that raises its score (the position
        just tried goes first in its new sweep); returns the walkers that tried every free
        position without a gain (to restart)."""
        restart = []
        for w in range(self.x.shape[0]):
            mine = (owner == w).nonzero().flatten()
            i = self.position(w)
            j = mine[int(s[mine].argmax())] if mine.numel() else None
            if j is not None and float(s[j]) > float(self.cur[w]):
                self.x[w], self.cur[w], self.stale[w] = batch[j], s[j], 1
                self.order[w] = [i] + [f for f in _positions(self.free, gen) if f != i]
            else:
                self.stale[w] += 1
            if self.stale[w] >= len(self.free):
                restart.append(w)
        return restart

    def restart(self, walkers: list[int], fresh: Tensor, s: Tensor, gen) -> None:
        """Put the given walkers at the inputs `fresh` (scores s), each with a new sweep."""
        for j, w in enumerate(walkers):
            self.x[w], self.cur[w], self.stale[w] = fresh[j], s[j], 0
            self.order[w] = _positions(self.free, gen)


def coordinate_search(model, dist, behaviour, n: int, gen: torch.Generator, dev, log,
                      progress: ProgressFn | None = None) -> Climb:
    """Spend at most n calls climbing (module docstring); every evaluated input goes to `log`
    (a pmc.SearchLog)."""
    supports = [s.cpu() for s in dist.supports()]
    free = [i for i, s in enumerate(supports) if s.numel() > 1]
    wide = any(supports[i].numel() > CANDIDATES for i in free)
    per_walker = 1 + (FORWARD_BACKWARD_CALLS if wide else 0)  # a restart (and its gradient)
    step = max((min(CANDIDATES, supports[i].numel() - 1) for i in free), default=0)
    # as many walkers as leave room for MIN_STEPS steps each (fewer on a small budget)
    walkers = min(WALKERS, n // (MIN_STEPS * (step + per_walker))) if free else 0
    out = Climb()
    if walkers < 1:
        return out
    log.top = []  # the climb's best inputs replace the search's (another score's scale)

    def evaluate(batch: Tensor) -> tuple[Tensor, Tensor]:
        """(value, score) on the cpu, logged and counted (1 call per input). The score is
        the behaviour's "margin" guide where it has one (argmax: logit_t − logsumexp_{u≠t}
        logit_u), else its own score (`Behaviour.guided`)."""
        v, s, _ = behaviour.evaluate_site(model, batch.to(dev), CLIMB_GUIDE)
        v, s = v.cpu(), s.cpu()
        log.add(batch, v, s)
        out.calls += batch.shape[0]
        out.inputs += batch.shape[0]
        return v, s

    def restart(ids: list[int]) -> None:
        """Restart the given walkers from fresh draws of D (1 call each)."""
        fresh = dist.sample(len(ids), gen)
        v, s = evaluate(fresh)
        walk.restart(ids, fresh, s, gen)
        out.starts += len(ids)
        out.start_hits += int((v > 0).sum())

    # (rows every walker's first restart overwrites; drawn so that seeded runs stay as they
    # were measured in the README's benchmarks)
    walk = _Walkers(dist.sample(walkers, gen), free)
    restart(list(range(walkers)))
    grads = _gradients(model, behaviour, walk.x, dev) if wide else None
    out.calls += walkers * FORWARD_BACKWARD_CALLS if wide else 0
    while len(log.hits) < ENOUGH_HITS:  # beyond, the draws' kernels find hits more cheaply
        batch, owner = walk.candidates(supports, grads)
        # the batch, then at worst every walker restarts and takes a gradient
        if out.calls + batch.shape[0] + walkers * per_walker > n:
            break
        _, s = evaluate(batch)
        ids = walk.climb(batch, s, owner, gen)
        if ids:
            restart(ids)
        if grads is not None:  # the gradient at each walker's current input
            grads = _gradients(model, behaviour, walk.x, dev)
            out.calls += walkers * FORWARD_BACKWARD_CALLS
        report(progress, min(1.0, out.calls / n), out.calls, n, "calls", "coordinate search")
    return out


def _positions(free: list[int], gen: torch.Generator) -> list[int]:
    """The free positions in a random order (a walker's sweep)."""
    return [free[j] for j in torch.randperm(len(free), generator=gen).tolist()]


def _candidates(support: Tensor, grad: Tensor | None, current: int) -> Tensor:
    """The tokens to try at one position, the current one left out: the whole support, or
    its CANDIDATES largest first-order gains."""
    toks = support[support != current]
    if grad is not None and toks.numel() > CANDIDATES:
        toks = toks[torch.topk(grad[toks], CANDIDATES).indices]
    return toks


def _gradients(model, behaviour, x: Int[Tensor, "W k"], dev) -> Tensor:
    """d score / d one-hot input at each walker's input [W, k, V] (2 calls each)."""
    _, _, g = behaviour.evaluate_with_grad(model, x.to(dev), CLIMB_GUIDE)
    return g.cpu()
