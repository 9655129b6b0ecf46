"""Tiny models whose input spaces can be enumerated, and a private ground-truth cache."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators.tailrisk import Argmax, InputDistribution
from estimators.tailrisk.ground_truth import exact


def tiny_model(vocab: int = 16, seed: int = 2, n_ctx: int = 8) -> HookedTransformer:
    """A random 2-layer transformer (LayerNorm, GELU MLPs): real TransformerLens, tiny."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                                  d_vocab=vocab, n_ctx=n_ctx, act_fn="gelu",
                                  normalization_type="LN", seed=seed)
    model = HookedTransformer(cfg)
    model.eval()
    return model


def dirichlet_distribution(vocab: int, length: int, concentration: float, seed: int
                           ) -> InputDistribution:
    torch.manual_seed(seed)
    p = torch.distributions.Dirichlet(torch.full((vocab,), concentration)).sample((length,))
    p = p.double()
    return InputDistribution(p / p.sum(1, keepdim=True), "dirichlet")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def rare_case():
    """16 tokens, 4 positions (65,536 inputs), skewed per-position distributions: targets with
    exact probabilities 1.7e-6, 5.4e-5 and 8.0e-5 exist (checked in the tests)."""
    model = tiny_model(16, seed=2)
    dist = dirichlet_distribution(16, 4, 0.7, seed=2)
    truth = exact(model, dist, Argmax(0), chunk=16384)
    return model, dist, truth
