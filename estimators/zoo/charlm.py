"""charlm: a small character-level language model of Python source code.

Tail-risk work needs a model whose inputs are natural-ish text, but nothing may be downloaded.
Every Python installation carries its standard library's sources, so the corpus is those: the
top-level `*.py` files of `sysconfig.get_paths()["stdlib"]`, sorted by name, every tenth file
held out for evaluation. (A different Python version has slightly different files; the card
records the corpus hash so a mismatch is visible.)
"""

from __future__ import annotations

import hashlib
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from estimators.zoo.base import TRAIN_SEED_OFFSET, SAE_SEED_OFFSET, TrainSpec, ZooBatch, \
    ZooEntry, point, uniform

PRINTABLE = [chr(c) for c in range(32, 127)]  # ids 0..94
NEWLINE = len(PRINTABLE)                      # id 95
UNK = NEWLINE + 1                             # id 96: tab, non-ASCII, other control chars
D_VOCAB = UNK + 1
N_CTX = 64
HOLDOUT_EVERY = 10  # file index % 10 == 9 -> evaluation split

_CHAR_TO_ID = {ch: i for i, ch in enumerate(PRINTABLE)}
_CHAR_TO_ID["\n"] = NEWLINE


def encode_text(text: str) -> torch.Tensor:
    """Characters -> ids as uint8 (97 symbols fit; the corpus is stored compactly)."""
    data = text.encode("utf-8", errors="replace")
    # Fast path through a byte lookup table; multi-byte UTF-8 sequences become several UNKs,
    # which is fine for a corpus that is almost pure ASCII.
    table = torch.full((256,), UNK, dtype=torch.uint8)
    for ch, i in _CHAR_TO_ID.items():
        table[ord(ch)] = i
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    return table[raw]


def corpus_files() -> list[Path]:
    """The corpus: top-level stdlib .py files, sorted by name (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


@lru_cache(maxsize=1)
def _corpus() -> dict[str, Any]:
    files = corpus_files()
    if not files:
        raise FileNotFoundError(f"no .py files in the stdlib folder "
                                f"{sysconfig.get_paths()['stdlib']}: charlm has no corpus")
    splits: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
    names: dict[str, list[str]] = {"train": [], "eval": []}
    digest = hashlib.sha256()
    for i, path in enumerate(files):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        digest.update(path.name.encode() + b"\0" + text.encode("utf-8", errors="replace"))
        split = "eval" if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 else "train"
        splits[split].append(encode_text(text + "\n"))
        names[split].append(path.name)
    return {"train": torch.cat(splits["train"]), "eval": torch.cat(splits["eval"]),
            "names": names, "sha256": digest.hexdigest()}


def corpus_info() -> dict[str, Any]:
    c = _corpus()
    return {"stdlib": sysconfig.get_paths()["stdlib"], "files_train": len(c["names"]["train"]),
            "files_eval": len(c["names"]["eval"]), "chars_train": int(c["train"].numel()),
            "chars_eval": int(c["eval"].numel()), "eval_files": c["names"]["eval"],
            "sha256": c["sha256"]}


def _windows(data: torch.Tensor, n: int, seed: int) -> ZooBatch:
    g = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, data.numel() - N_CTX - 1, (n,), generator=g)
    idx = starts.unsqueeze(1) + torch.arange(N_CTX + 1).unsqueeze(0)
    win = data[idx].long()
    return ZooBatch(tokens=win[:, :-1].contiguous(), targets=win[:, 1:].contiguous(),
                    loss_mask=torch.ones(n, N_CTX, dtype=torch.bool))


class CharLM(ZooEntry):
    name = "charlm"
    title = "Character LM on Python stdlib source"
    description = (
        "Two-layer transformer with MLPs (d_model 64, 4 heads, ~0.1M parameters, context 64) "
        "trained as a character-level language model on the CPython standard library's own "
        ".py files, which every Python installation has offline. Vocabulary: printable ASCII, "
        "newline and an unknown symbol. It is the workbench's natural-ish-text model: input "
        "distributions such as random hex strings, random words, or code ending in a delimiter "
        "give tail-risk questions (how likely is a given next character?) with a real answer."
    )
    sae_hook = "blocks.0.hook_resid_post"
    metric = "loss_nats_per_char"
    data_description = (
        f"random {N_CTX + 1}-character windows of the concatenated top-level stdlib *.py files "
        f"(sorted by name; every {HOLDOUT_EVERY}th file held out for evaluation); next-char "
        "targets at every position")
    train_spec = TrainSpec(seed=0, steps=3000, batch_size=32, lr=3e-3, weight_decay=0.01,
                           warmup_steps=200, sae_steps=2000, eval_n=4096)

    def model_config(self):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=2, d_model=64, n_ctx=N_CTX, d_head=16, n_heads=4, d_mlp=256,
            d_vocab=D_VOCAB, d_vocab_out=D_VOCAB, act_fn="gelu", normalization_type="LN",
            positional_embedding_type="standard", device="cpu", default_prepend_bos=False,
            original_architecture="zoo-charlm",
        )

    def sample(self, n: int, seed: int = 0) -> ZooBatch:
        """n held-out windows (from the evaluation files)."""
        return _windows(_corpus()["eval"], n, seed)

    def train_batch(self, n: int, step: int) -> ZooBatch:
        return _windows(_corpus()["train"], n,
                        TRAIN_SEED_OFFSET + self.train_spec.seed * 1_000_000 + step)

    def sae_batch(self, n: int, step: int) -> ZooBatch:
        return _windows(_corpus()["train"], n,
                        SAE_SEED_OFFSET + self.train_spec.seed * 1_000_000 + step)

    def evaluate(self, model, n: int = 1024, seed: int = 12_345,
                 batch_size: int = 512) -> dict[str, Any]:
        out = super().evaluate(model, n=n, seed=seed, batch_size=batch_size)
        out["loss_nats_per_char"] = out["loss_nats"]
        out["bits_per_char"] = out["loss_nats"] / 0.6931471805599453
        out["corpus_sha256"] = _corpus()["sha256"]
        return out

    def extra_training_info(self) -> dict[str, Any]:
        return {"corpus": corpus_info()}

    # -------------------------------------------------------------- text
    def token_labels(self) -> list[str]:
        labels = list(PRINTABLE)
        labels[0] = "␣"
        return labels + ["\\n", "<unk>"]

    def encode(self, text: str) -> torch.Tensor:
        return encode_text(text).long()

    def decode(self, ids) -> str:
        ids = ids.flatten().tolist() if isinstance(ids, torch.Tensor) else list(ids)
        out = []
        for i in ids:
            i = int(i)
            out.append(PRINTABLE[i] if i < NEWLINE else "\n" if i == NEWLINE else "\ufffd")
        return "".join(out)

    def input_distributions(self) -> dict[str, list[dict[int, float]]]:
        ids = lambda chars: [_CHAR_TO_ID[c] for c in chars]  # noqa: E731
        hexd = ids("0123456789abcdef")
        letters = ids("abcdefghijklmnopqrstuvwxyz")
        word = {i: 0.85 / len(letters) for i in letters}
        word[_CHAR_TO_ID[" "]] = 0.15
        code = ids("abcdefghijklmnopqrstuvwxyz0123456789_. ")
        return {
            "hex": [uniform(hexd) for _ in range(8)],
            "words": [dict(word) for _ in range(16)],
            "code-then-delimiter": [uniform(code) for _ in range(11)] + [point(_CHAR_TO_ID["("])],
        }

    def reference_hypotheses(self) -> list[dict[str, Any]]:
        return []
