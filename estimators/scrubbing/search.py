"""Greedy forward search over partitions that lowers total surprise S(π) + S(Y|π).

Start from a partition (default: everything independent, 0 argument bits), and at each step try
adding each candidate pattern to the important block; keep the candidate with the lowest total
surprise if it beats the current total, else stop. Candidates are units of paths: by default
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
from estimators.scrubbing.partition import REST, PathPartition


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


def greedy_search(scrubber: Scrubber, candidates: list[str] | None = None, unit: str = "edge",
                  max_steps: int = 10, start: PathPartition | None = None,
                  progress: Callable[[int, int, SearchStep], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> list[SearchStep]:
    """The accepted steps, first the starting partition (step 0); each lowers total bits."""
    if max_steps < 0:
        raise ValueError("max_steps must be ≥ 0")
    g = scrubber.graph
    current = start or PathPartition(name="greedy start")
    pool = list(candidates) if candidates is not None else candidate_patterns(scrubber, unit)
    matches = {c: g.match_required(c) for c in pool}
    [best] = scrubber.evaluate([current])  # always scored, so a stopped search has a result
    steps = [SearchStep(0, None, best)]
    if progress:
        progress(0, max_steps, steps[0])
    for step in range(1, max_steps + 1):
        if should_stop is not None and should_stop():
            break
        assignment = current.assign(g)
        rest = assignment == REST
        named_blocks = (assignment != REST) & (assignment != 0)
        # Only candidates that add new paths and do not cut into a resampled block.
        trial = [c for c in pool if rest[matches[c]].any() and not named_blocks[matches[c]].any()]
        if not trial:
            break
        parts = [PathPartition(current.important + (c,), current.blocks,
                               name=f"greedy step {step}") for c in trial]
        try:
            results = scrubber.evaluate(parts, should_stop=should_stop)
        except InterruptedError:
            break
        totals = np.array([r.surprise.total_bits for r in results])
        i = int(np.argmin(totals))
        if totals[i] >= best.surprise.total_bits:
            break
        best, current = results[i], parts[i]
        steps.append(SearchStep(step, trial[i], best))
        if progress:
            progress(step, max_steps, steps[-1])
    return steps
