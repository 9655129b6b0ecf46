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

Engines. With the treeified `Scrubber` the units are paths; with the edge engine's
`EdgeScrubber` (edges.py) the same patterns name edges: `unit="edge"` is one candidate per edge
(`EdgeGraph.edge_patterns`), `"node"` every edge into one node; `"path"` needs the treeified
engine (PathError). The edge engine refuses two groups with edges on one path (and, with
grouped-query attention, a split key/value group), so a move it cannot express is dropped
before scoring; the candidates of a step share its patched passes, `partitions_per_pass()` of
them per pass.

Stopping and verification (as the activation model's search): the returned list carries
`stop_reason` ("reached the step limit (K)", "no candidate lowers total bits; the best one (X)
would cost A bits and save B", "no candidate move is left", "cancelled") and
`verified_total_bits`: the best partition re-evaluated alone on a fresh scrubber of the same
engine (its own baselines, no batching with other candidates), which must equal the last
step's total up to float rounding of the batched passes.
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


class SearchSteps(list):
    """The accepted steps (a list of SearchStep), plus why the search stopped and the best
    partition's total re-evaluated from scratch (module docstring)."""

    stop_reason: str = ""
    verified_total_bits: float | None = None

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self], "stop_reason": self.stop_reason,
                "verified_total_bits": self.verified_total_bits}


def candidate_patterns(scrubber: Scrubber, unit: str = "edge") -> list[str]:
    """Candidate patterns: one per edge, per node, or (treeified only) per path. Raises
    ValueError for an unknown unit, PathError for paths on the edge engine."""
    g = scrubber.graph
    if unit == "edge":
        return g.edge_patterns()
    if unit == "node":
        return g.node_patterns()
    if unit == "path":
        if getattr(g, "UNIT", "path") == "edge":
            from estimators.scrubbing.paths import PathError
            raise PathError("the edge engine searches over edges or nodes, not single paths "
                            "(use the treeified engine on a model small enough to treeify)")
        return list(g.paths)
    raise ValueError(f"unknown search unit {unit!r}; use edge, node or path")


def _moves(current: PathPartition, assignment: np.ndarray, pool: list[str], matches: dict,
           features: list[str]) -> list[tuple[str, PathPartition]]:
    """(label, partition) for every candidate move that adds units now in the rest group and
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


def _expressible(scrubber: Scrubber, moves: list) -> list:
    """The moves the scrubber's engine can evaluate (the edge engine drops moves whose groups
    would share a path, or split a grouped-query key/value group)."""
    from estimators.scrubbing.paths import PathError

    out = []
    for label, p in moves:
        try:
            scrubber.check(p)
        except PathError:
            continue
        out.append((label, p))
    return out


def _why_stop(best: ScrubResult, results: list[ScrubResult], moves: list, i: int) -> str:
    r = results[i]
    cost = r.surprise.argument_bits - best.surprise.argument_bits
    save = best.surprise.data_bits - r.surprise.data_bits
    return (f"no candidate lowers total bits; the best one ({moves[i][0]}) would cost "
            f"{cost:,.1f} bits and save {save:,.1f}")


def verify(scrubber: Scrubber, partition: PathPartition) -> float:
    """Total bits of `partition` evaluated alone on a fresh scrubber of the same engine, model,
    data and settings (its own draws and baselines)."""
    fresh = type(scrubber)(scrubber.model, scrubber.data, scrubber.config, graph=scrubber.graph)
    [r] = fresh.evaluate([partition])
    return r.surprise.total_bits


def greedy_search(scrubber: Scrubber, candidates: list[str] | None = None, unit: str = "edge",
                  max_steps: int = 10, start: PathPartition | None = None,
                  progress: Callable[[int, int, SearchStep], None] | None = None,
                  should_stop: Callable[[], bool] | None = None,
                  features: list[str] | None = None, verify_best: bool = True, *,
                  batch_progress=None) -> SearchSteps:
    """The accepted steps, first the starting partition (step 0); each lowers total bits.
    A `SearchSteps` (a list) with `stop_reason` and, with `verify_best`, `verified_total_bits`.

    Works with either engine (module docstring). `features`: resampling features whose matched
    blocks the search may grow (None: ["label"] when the scrubber's data has labels, else
    none). `batch_progress`: an `estimators.progress` callback passed to each step's
    evaluation (the candidates' passes, "examples scored"); what it raises (e.g. `Cancelled`)
    propagates. Raises ValueError for a negative max_steps or an unknown unit, PathError for a
    candidate or start the engine cannot express."""
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
    # always scored, so a stopped search has a result
    [best] = scrubber.evaluate([current], progress=batch_progress)
    steps = SearchSteps([SearchStep(0, None, best)])
    steps.stop_reason = f"reached the step limit ({max_steps})"
    if progress:
        progress(0, max_steps, steps[0])
    for step in range(1, max_steps + 1):
        if should_stop is not None and should_stop():
            steps.stop_reason = "cancelled"
            break
        moves = _expressible(scrubber, _moves(current, scrubber.assign(current), pool, matches,
                                              features))
        if not moves:
            steps.stop_reason = "no candidate move is left"
            break
        parts = [p.with_name(f"greedy step {step}") for _, p in moves]
        try:
            results = scrubber.evaluate(parts, should_stop=should_stop, progress=batch_progress)
        except InterruptedError:
            steps.stop_reason = "cancelled"
            break
        totals = np.array([r.surprise.total_bits for r in results])
        i = int(np.argmin(totals))
        if totals[i] >= best.surprise.total_bits:
            steps.stop_reason = _why_stop(best, results, moves, i)
            break
        best, current = results[i], parts[i]
        steps.append(SearchStep(step, moves[i][0], best))
        if progress:
            progress(step, max_steps, steps[-1])
    if verify_best:
        steps.verified_total_bits = verify(scrubber, steps[-1].result.partition)
    return steps
