"""A small problem on the zoo's character LM: the last 3 positions of `hex` (4,096 inputs), and a
private ground-truth cache per test."""

from __future__ import annotations

import pytest

from estimators.loading import load_model
from estimators.tailrisk.distributions import from_table

SPEC_BASE = {"model": "charlm", "distribution": "hex", "length": 3,
             "targets": ["id:76", "id:29"], "methods": ["mc", "gld"], "budgets": [128],
             "seeds": [0, 1]}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="package")
def charlm_hex3():
    lm = load_model("charlm", "cpu")
    e = lm.zoo_entry
    dist = from_table(e.input_distributions()["hex"], lm.model.cfg.d_vocab, "hex",
                      e.token_labels()).truncated(3)
    return lm.model, dist
