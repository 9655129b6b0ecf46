"""Greedy forward search over partitions that lowers total surprise S(π) + S(Y|π).

Start from a partition (default: everything independent, 0 argument bits), and at each step try
adding each candidate pattern to the important block, and to the block resampled to match the
real input on each of `features` (by default "label" when the data has labels: the claim "these
paths need only the label"); keep the move with the lowest total surprise if it beats the
current total, else stop. The whole model ("*") is always a candidate. Candidates are units of paths: by default
one per edge source→destination (`PathGraph.edge_patterns`: all paths through that edge),
or one per node (`node_patterns`), or every single path (`unit="path"`), or a given list.
All candidates of a step are scored in batched streams, with common random numbers, so the
comparison between candidates is not blurred by different resampled inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from estimators.scrubbing.evaluate import ScrubResult, Scrubber
from estimators.scrubbing.partition import IMPORTANT, REST, Block, PathPartition


@dataclass
class SearchStep:
    step: int
    added: str | None
    result: ScrubResult

    def to_dict(self) -> dict:
        s = self.result.surprise
        return {"step": self.step, "added": self.added, "total_bits": s.total_bits,
                "argument_bits": s.argument_bits, "data_bits": s.data_bits,
                "loss_scrubbed": self.result.loss_scrubbed,
                "loss_recovered": self.result.loss_recovered,
                "partition": self.result.partition.to_dict()}


def candidate_patterns(scrubber: Scrubber, unit: str = "edge") -> list[str]:
    g = scrubber.graph
    if unit == "edge":
        return g.edge_patterns()
    if unit == "node":
        return g.node_patterns()
    if unit == "path":
        return list(g.paths)
    raise ValueError(f"unknown search unit {unit!r}; use edge, node or path")


def _moves(current: PathPartition, assignment: np.ndarray, pool: list[str], matches: dict,
           features: list[str]) -> list[tuple[str, PathPartition]]:
    """(label, partition) for every candidate move that adds paths now in the rest group and
    takes none from another group."""
    rest = assignment == REST
    targets = [(IMPORTANT, None)]
    for f in features:
        rule = f"match:{f}"
        j = next((i for i, b in enumerate(current.blocks) if b.resample == rule), None)
        targets.append((REST if j is None else j + 1, f))
    out = []
    for gid, feature in targets:
        for c in pool:
            m = matches[c]
            if not rest[m].any() or ((assignment[m] != REST) & (assignment[m] != gid)).any():
                continue
            if feature is None:
                out.append((c, PathPartition(current.important + (c,), current.blocks)))
            elif gid == REST:
                out.append((f"{c} (match:{feature})", PathPartition(
                    current.important, current.blocks + (Block((c,), f"match:{feature}"),))))
            else:
                blocks = list(current.blocks)
                b = blocks[gid - 1]
                blocks[gid - 1] = Block(b.paths + (c,), b.resample)
                out.append((f"{c} (match:{feature})",
                            PathPartition(current.important, tuple(blocks))))
    return out


def greedy_search(scrubber: Scrubber, candidates: list[str] | None = None, unit: str = "edge",
                  max_steps: int = 10, start: PathPartition | None = None,
                  progress: Callable[[int, int, SearchStep], None] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  features: list[str] | None = None, *, batch_progress=None
                  ) -> list[SearchStep]:
    """The accepted steps, first the starting partition (step 0); each lowers total bits.

    `batch_progress`: an `estimators.progress` callback passed to each step's evaluation (the
    candidates' passes, "examples scored"); what it raises (e.g. `Cancelled`) propagates.

    `features`: resampling features whose matched blocks the search may grow (None: ["label"]
    when the scrubber's data has labels, else none). Raises ValueError for a negative
    max_steps or an unknown unit."""
    if max_steps < 0:
        raise ValueError("max_steps must be ≥ 0")
    g = scrubber.graph
    if features is None:
        features = ["label"] if scrubber.data.batch.labels is not None else []
    current = start or PathPartition(name="greedy start")
    pool = list(candidates) if candidates is not None else candidate_patterns(scrubber, unit)
    if candidates is None and "*" not in pool:
        pool.append("*")
    matches = {c: g.match_required(c) for c in pool}
    [best] = scrubber.evaluate([current], progress=batch_progress)  # a stopped search has one
    steps = [SearchStep(0, None, best)]
    if progress:
        progress(0, max_steps, steps[0])
    for step in range(1, max_steps + 1):
        if should_stop is not None and should_stop():
            break
        moves = _moves(current, current.assign(g), pool, matches, features)
        if not moves:
            break
        parts = [p.with_name(f"greedy step {step}") for _, p in moves]
        try:
            results = scrubber.evaluate(parts, should_stop=should_stop, progress=batch_progress)
        except InterruptedError:
            break
        totals = np.array([r.surprise.total_bits for r in results])
        i = int(np.argmin(totals))
        if totals[i] >= best.surprise.total_bits:
            break
        best, current = results[i], parts[i]
        steps.append(SearchStep(step, moves[i][0], best))
        if progress:
            progress(step, max_steps, steps[-1])
    return steps
