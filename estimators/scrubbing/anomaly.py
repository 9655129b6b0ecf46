"""Anomaly detection with a causal-scrubbing hypothesis (background.md §4, last point).

With a partition π that explains the model on trusted data, score a new input x by scrubbing
with x as the reference (resampled inputs still drawn from the trusted pool):
  * "scrubbed": the scrubbed loss ℓ_π(x) (nats);
  * "excess":   ℓ_π(x) − ℓ(x), the surprise of x's targets under the hypothesis, per example
    (÷ ln 2 for bits; the ranking is the same).
Familiar inputs should score low, inputs the hypothesis does not cover high. The demo draws
anomalies by shuffling the second half of each sequence (for an induction model: the repeat is
destroyed) and reports the ROC AUC of each score.
"""

from __future__ import annotations

import numpy as np
import torch

from estimators.scrubbing.evaluate import ScrubData, Scrubber
from estimators.scrubbing.partition import PathPartition
from estimators.zoo.base import ZooBatch

SCORES = ("scrubbed", "excess")


def roc_auc(normal, anomalous) -> float:
    """Exact ROC AUC of "anomalous scores higher": P(a > n) + ½·P(a = n), by average ranks
    (the Mann–Whitney U statistic over n_normal·n_anomalous)."""
    x = np.asarray(normal, dtype=float).ravel()
    y = np.asarray(anomalous, dtype=float).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError("ROC AUC needs at least one normal and one anomalous score")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ROC AUC scores must be finite")
    both = np.concatenate([x, y])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct value: its tied block's midpoint.
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    u = ranks[x.size:].sum() - y.size * (y.size + 1) / 2.0
    return float(u / (x.size * y.size))


def anomaly_scores(scrubber: Scrubber, partition: PathPartition, reference: ScrubData,
                   kind: str = "scrubbed") -> torch.Tensor:
    """Per-example anomaly score [n] of the reference inputs under the partition."""
    if kind not in SCORES:
        raise ValueError(f"unknown score {kind!r}; use one of {SCORES}")
    orig, _ = scrubber.baseline_losses(reference)
    scrubbed, _ = scrubber.scrubbed_losses([partition], reference)
    return scrubbed[0] if kind == "scrubbed" else scrubbed[0] - orig


def shuffle_second_half(batch: ZooBatch, seed: int = 0) -> ZooBatch:
    """Each sequence with the tokens of its second half permuted at random (next-token tasks:
    targets are recomputed from the new tokens, the loss mask is kept)."""
    if batch.targets is None:
        raise ValueError("the shuffled-second-half anomaly needs a next-token task")
    tokens = batch.tokens.clone()
    n, ctx = tokens.shape
    half = ctx // 2
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.argsort(torch.rand(n, ctx - half, generator=g), dim=1) + half
    tokens[:, half:] = torch.gather(batch.tokens, 1, perm)
    targets = batch.targets.clone()
    targets[:, :-1] = tokens[:, 1:]
    return ZooBatch(tokens, batch.labels, targets, batch.loss_mask)


def anomaly_demo(scrubber: Scrubber, partition: PathPartition, normal: ScrubData,
                 seed: int = 0) -> dict:
    """Scores of normal inputs and of the same number of shuffled-second-half anomalies, and
    the ROC AUC of each score kind."""
    anomalous = ScrubData(shuffle_second_half(normal.batch, seed=seed), normal.loss_fn,
                          f"{normal.source} (second half shuffled)")
    out: dict = {"n_normal": len(normal), "n_anomalous": len(anomalous),
                 "anomaly": "second half of each sequence shuffled"}
    for kind in SCORES:
        s_n = anomaly_scores(scrubber, partition, normal, kind)
        s_a = anomaly_scores(scrubber, partition, anomalous, kind)
        out[kind] = {"normal": s_n.tolist(), "anomalous": s_a.tolist(),
                     "auc": roc_auc(s_n.numpy(), s_a.numpy())}
    return out
