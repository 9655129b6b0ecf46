"""Print the README's activation-engine support table (Markdown): the conformance verdict on
small random models for every HookedTransformerConfig option of the test grid
(tests/activation/test_conformance.py) and on locally built Hugging Face folders, in float32,
float16 and bfloat16.

    .venv/bin/python scripts/activation_support_table.py        # ~1 min on one CPU thread
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import transformers as T  # noqa: E402

from estimators import conformance  # noqa: E402
from estimators.loading import LoadError, load_model  # noqa: E402
from tests.activation.test_conformance import OPTIONS, random_model  # noqa: E402
from tests.test_hf_folders import ARCHS  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SMALL = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32,
              max_position_embeddings=16, vocab_size=40)
MORE_ARCHS = {  # beyond the tested four: what else TransformerLens converts (or does not)
    "mistral": (T.MistralConfig, dict(_SMALL, num_key_value_heads=2)),
    "qwen3": (T.Qwen3Config, dict(_SMALL, num_key_value_heads=2, head_dim=4)),
    "phi3": (T.Phi3Config, dict(_SMALL, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
    "opt": (T.OPTConfig, dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=4,
                              ffn_dim=32, max_position_embeddings=16, vocab_size=40,
                              word_embed_proj_dim=16)),
    "gptj": (T.GPTJConfig, dict(n_layer=2, n_embd=16, n_head=4, n_positions=16, vocab_size=40,
                                rotary_dim=4)),
    "gpt_neo": (T.GPTNeoConfig, dict(num_layers=2, hidden_size=16, num_heads=4,
                                     max_position_embeddings=16, vocab_size=40, window_size=4,
                                     attention_types=[[["global", "local"], 1]])),
    "bloom": (T.BloomConfig, dict(n_layer=2, hidden_size=16, n_head=4, vocab_size=40)),
    "gemma": (T.GemmaConfig, dict(_SMALL, num_key_value_heads=2, head_dim=4)),
}


def cell(v) -> str:
    """"✓ error/tolerance (dtype the check ran in)" or "refused: why"."""
    if v.ok:
        return f"✓ {v.max_abs_error:.0e} / {v.tolerance:.0e} ({v.dtype})"
    return "refused: " + (v.reason or "")[:100]


def option_rows() -> list[str]:
    rows = ["| config option | " + " | ".join(str(d).removeprefix("torch.") for d in DTYPES)
            + " |", "|---|" + "---|" * len(DTYPES)]
    for name, opts in OPTIONS.items():
        cells = [cell(conformance.verdict(random_model(opts, d), "activation")) for d in DTYPES]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def hf_rows() -> list[str]:
    rows = ["| HF architecture | loaded as | " + " | ".join(
        str(d).removeprefix("torch.") for d in DTYPES) + " |", "|---|---|" + "---|" * len(DTYPES)]
    root = Path(tempfile.mkdtemp())
    for name, (cls, fields) in {**ARCHS, **MORE_ARCHS}.items():
        cells, loaded_as = [], ""
        for d in DTYPES:
            folder = root / f"{name}-{d}"
            torch.manual_seed(0)
            T.AutoModelForCausalLM.from_config(cls(**fields)).to(d).save_pretrained(folder)
            try:
                lm = load_model(str(folder))
            except LoadError as e:
                cells.append("load error: " + str(e)[:80])
                continue
            loaded_as = type(lm.model).__name__
            cells.append(cell(conformance.verdict(lm.model, "activation")))
        arch = cls.__name__.removesuffix("Config")
        rows.append(f"| {arch} (`{name}`) | {loaded_as} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("\n".join(option_rows()))
    print()
    print("\n".join(hf_rows()))
