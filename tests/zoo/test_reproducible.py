"""`zoo train NAME --quick` is bit-for-bit reproducible: two runs into different folders write
identical model and SAE safetensors (fixed seeds, one thread, deterministic data). The full
training run uses the same code path with more steps."""

from __future__ import annotations

import pytest
import torch

from estimators import zoo
from estimators.loading import load_checkpoint


@pytest.mark.parametrize("name", zoo.names())
def test_quick_training_is_bit_identical(tmp_path, name):
    a = zoo.train(name, out_dir=tmp_path / "a", quick=True)
    b = zoo.train(name, out_dir=tmp_path / "b", quick=True)
    for rel in ("model.safetensors", "sae/sae_weights.safetensors", "config.json",
                "sae/cfg.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert a["accuracy"] == b["accuracy"]
    # what was written loads through the workbench's own loader
    model = load_checkpoint(tmp_path / "a", "cpu")
    tokens = zoo.get(name).sample(2, seed=0).tokens
    assert torch.isfinite(model(tokens)).all()
    card = (tmp_path / "a" / "card.json").read_text()
    assert '"quick": true' in card
    # training leaves the process' torch settings as they were
    assert not torch.are_deterministic_algorithms_enabled()
