"""Tiny real components for the progress tests: a 2-layer TransformerLens model with random
weights (built from its config) and a private activation-cache directory."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))
    from estimators import activation_cache
    activation_cache.clear_memory()
    activation_cache.reset_stats()


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4,
                                  d_vocab=50, d_mlp=32, act_fn="gelu", normalization_type="LN",
                                  seed=0)
    return HookedTransformer(cfg).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (24, 8), generator=torch.Generator().manual_seed(1))
