"""Causal scrubbing with path partitions (background.md §4).

    from estimators.scrubbing import PathPartition, ScrubData, Scrubber
    scrubber = Scrubber(model, ScrubData.from_zoo("induction", n=256, seed=0))
    [res] = scrubber.evaluate([PathPartition.from_json(text)])
    res.loss_recovered, res.surprise.total_bits

Modules: `paths` (the path graph and pattern language), `partition` (the argument, its JSON
form and description length), `sampling` (uniform and feature-matched resampling),
`treeify` (batched-stream evaluation), `evaluate` (losses, loss recovered, surprise),
`edges` (edge patching, `EdgeScrubber`, for models too large to treeify), `search` (greedy
search), `anomaly` (per-input scores, ROC AUC), `heads` (finding previous-token and induction
heads), `references` (shipped reference hypotheses), `cli`.
"""

from estimators.scrubbing.evaluate import ScrubConfig, ScrubData, ScrubResult, Scrubber
from estimators.scrubbing.partition import Block, PathPartition
from estimators.scrubbing.paths import PathError, PathGraph

__all__ = ["Block", "PathError", "PathGraph", "PathPartition", "ScrubConfig", "ScrubData", "ScrubResult",
           "Scrubber"]
