"""Resampled inputs ("streams") for causal scrubbing: uniform and feature-matched draws.

Each resampled input is a whole example from the data pool. A block's stream is drawn per
reference example: uniformly from the pool, or uniformly from the pool examples that agree with
the reference on a *feature* (a per-example key):

    label            the example's label (classification tasks, e.g. parens balanced or not)
    token_at:K       the token at position K (negative K counts from the end: token_at:-2 is
                     "the same token at the previous position" for a prediction at the last
                     position)
    tokens_at:K1,K2  the tokens at several positions

Features are per example, not per position: a resampled input is one sequence, so it can agree
with the reference at chosen positions only. A reference with no matching pool example (only
possible when the reference is not in the pool, e.g. for anomaly scores) falls back to a
uniform draw; the count of fallbacks is reported.

Draws are common random numbers: the stream of a given key ("block 2, uniform", "rest") is a
deterministic function of (seed, key, data), so a partition scores the same whether evaluated
alone or in a batch, and partitions compared in a search share their randomness.
"""

from __future__ import annotations

import hashlib

import torch

FEATURE_KINDS = ("label", "token_at", "tokens_at")


def parse_feature(feature: str) -> tuple[str, tuple[int, ...]]:
    """("label", ()) | ("token_at", (K,)) | ("tokens_at", (K1, K2, ...)); ValueError if bad."""
    from estimators.scrubbing.paths import PathError

    if not isinstance(feature, str):
        raise PathError(f"a feature must be a string, not {feature!r}")
    if feature == "label":
        return "label", ()
    kind, _, arg = feature.partition(":")
    if kind in ("token_at", "tokens_at") and arg:
        try:
            positions = tuple(int(x) for x in arg.split(","))
        except ValueError:
            positions = ()
        if positions and (kind == "tokens_at" or len(positions) == 1):
            return kind, positions
    raise PathError(f"unknown feature {feature!r}; use 'label', 'token_at:K' or "
                    f"'tokens_at:K1,K2'")


def feature_values(feature: str, tokens: torch.Tensor, labels: torch.Tensor | None
                   ) -> torch.Tensor:
    """[n, m] integer values whose rows are compared for equality."""
    from estimators.scrubbing.paths import PathError

    kind, positions = parse_feature(feature)
    if kind == "label":
        if labels is None:
            raise PathError("feature 'label' needs data with labels (this data has none)")
        return labels.reshape(-1, 1).long()
    ctx = tokens.shape[1]
    for p in positions:
        if not -ctx <= p < ctx:
            raise PathError(f"feature {feature!r}: position {p} is outside sequences of "
                            f"length {ctx}")
    return tokens[:, list(positions)].long()


def stream_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def draw_uniform(n_ref: int, n_pool: int, seed: int, key: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(stream_seed(seed, key))
    return torch.randint(0, n_pool, (n_ref,), generator=g)


def draw_matched(ref_values: torch.Tensor, pool_values: torch.Tensor, seed: int, key: str
                 ) -> tuple[torch.Tensor, int]:
    """Pool indices [n_ref], each drawn uniformly among the pool rows equal to its reference
    row; returns (indices, number of references with no match, which got a uniform draw)."""
    n_ref, n_pool = ref_values.shape[0], pool_values.shape[0]
    both = torch.cat([ref_values.cpu(), pool_values.cpu()])
    _, ids = torch.unique(both, dim=0, return_inverse=True)
    ref_ids, pool_ids = ids[:n_ref], ids[n_ref:]
    order = torch.argsort(pool_ids, stable=True)
    sorted_ids = pool_ids[order]
    start = torch.searchsorted(sorted_ids, ref_ids, right=False)
    count = torch.searchsorted(sorted_ids, ref_ids, right=True) - start
    g = torch.Generator().manual_seed(stream_seed(seed, key))
    u = torch.rand(n_ref, generator=g, dtype=torch.float64)
    fallback = torch.randint(0, n_pool, (n_ref,), generator=g)
    pick = start + torch.minimum((u * count).long(), (count - 1).clamp_min(0))
    matched = order[pick.clamp(max=n_pool - 1)]
    no_match = count == 0
    return torch.where(no_match, fallback, matched), int(no_match.sum())
