"""Tiny real components for the data-source and activation-cache tests: a 2-layer
TransformerLens checkpoint whose folder carries a byte-level BPE tokenizer (GPT-2's format,
vocab.json + merges.txt, trained offline on a few sentences), a text corpus and an SAE."""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import ByteLevelBPETokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators.loading import load_model, save_checkpoint

SENTENCES = ["the quick brown fox jumps over the lazy dog.",
             "hello world, this is a tiny corpus for a tiny tokenizer.",
             "a researcher studies a small transformer on her own text."]
D_VOCAB = 300
N_CTX = 16


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))
    from estimators import activation_cache
    activation_cache.clear_memory()
    activation_cache.reset_stats()


def tiny_model(seed: int = 0, d_vocab: int = D_VOCAB) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=N_CTX, d_head=4, n_heads=4,
                                  d_vocab=d_vocab, d_mlp=32, act_fn="gelu",
                                  normalization_type="LN", seed=seed)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def train_tokenizer() -> ByteLevelBPETokenizer:
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(SENTENCES * 4, vocab_size=290, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    return tok


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """(folder, model, tokenizer): a checkpoint folder with vocab.json + merges.txt in it."""
    folder = tmp_path_factory.mktemp("ckpt") / "model"
    model = tiny_model()
    save_checkpoint(model, folder)
    tok = train_tokenizer()
    tok.save_model(str(folder))
    return folder, model, tok


@pytest.fixture
def loaded(ckpt):
    return load_model(str(ckpt[0]))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(SENTENCES * 3))
    return path


def tiny_sae(hook: str, d_in: int = 16, d_sae: int = 40) -> StandardSAE:
    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae,
                                        metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return sae
