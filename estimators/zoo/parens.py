"""parens: a balanced-parentheses classifier (the causal-scrubbing paren setting).

Redwood's causal scrubbing write-up tested hypotheses on a small bidirectional transformer
that classifies parenthesis strings as balanced or not; the known sub-tasks (equal counts,
"never goes negative", the first character) make it a good target for path partitions. The
data mix is built so the easy cues are not enough: many negatives have the right count but
dip below zero, or differ from a balanced string by one character.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from estimators.zoo.base import TrainSpec, ZooBatch, ZooEntry, point

BOS, PAD, OPEN, CLOSE = 0, 1, 2, 3
MAX_LEN = 20
N_CTX = MAX_LEN + 1  # BOS/CLS + up to 20 characters, PAD-filled on the right

# family -> probability; labels are always computed by `is_balanced`, never assumed.
FAMILIES = {
    "dyck": 0.45,            # uniform random balanced string of 1..10 pairs
    "swap-pair": 0.15,       # a balanced string with a top-level pair swapped: dips to -1
    "shuffle": 0.15,         # random order of n "(" and n ")": right count, mostly dips
    "flip-one": 0.10,        # a balanced string with one character flipped: count off by 2
    "random": 0.15,          # uniform random characters, random length 1..20
}


@lru_cache(maxsize=1)
def _completions() -> torch.Tensor:
    """C[r, h]: number of +-1 paths of r steps from height h to 0 that never go below 0."""
    c = torch.zeros(MAX_LEN + 1, MAX_LEN + 2, dtype=torch.float64)
    c[0, 0] = 1.0
    for r in range(1, MAX_LEN + 1):
        c[r, :-1] += c[r - 1, 1:]
        c[r, 1:] += c[r - 1, :-1]
    return c


def is_balanced(chars: torch.Tensor) -> torch.Tensor:
    """[n] bool: direct check on [n, L] ids (PAD ignored): final count 0, never negative,
    non-empty."""
    step = (chars == OPEN).long() - (chars == CLOSE).long()
    depth = step.cumsum(-1)
    nonempty = (chars != PAD).any(-1)
    return (depth.min(-1).values >= 0) & (depth[:, -1] == 0) & nonempty


def _dyck(n: int, pairs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[n, MAX_LEN] uniform random balanced strings with `pairs` pairs (PAD after)."""
    c = _completions()
    out = torch.full((n, MAX_LEN), PAD, dtype=torch.long)
    height = torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, MAX_LEN, generator=g, dtype=torch.float64)
    for t in range(MAX_LEN):
        remaining = 2 * pairs - t
        active = remaining > 0
        r = remaining.clamp_min(1)
        p_open = c[r - 1, (height + 1).clamp_max(MAX_LEN + 1)] / c[r, height].clamp_min(1.0)
        is_open = u[:, t] < p_open
        out[:, t] = torch.where(active, torch.where(is_open, OPEN, CLOSE), PAD)
        height = height + torch.where(active, torch.where(is_open, 1, -1), 0)
    return out


def _pick(mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """[n] a uniformly random True index per row of [n, L] `mask` (each row has one)."""
    scores = torch.rand(mask.shape, generator=g) + mask.float() * 2.0
    return scores.argmax(-1)


class Parens(ZooEntry):
    name = "parens"
    title = "Balanced parentheses (3-layer, bidirectional)"
    description = (
        "Three-layer transformer with MLPs and bidirectional attention (d_model 32) that reads "
        f"BOS followed by up to {MAX_LEN} parentheses (PAD-filled) and classifies the string as "
        "balanced (1) or not (0) from the BOS position. This is the causal scrubbing paren "
        "setting: natural sub-hypotheses (the counts are equal, the running count never goes "
        "negative, the first character is '(') give path partitions to test, and the hard "
        "negatives in its data make shortcuts visible."
    )
    sae_hook = "blocks.1.hook_resid_post"
    label_position = 0
    metric = "accuracy"
    data_description = (
        "mix of families (labels from a direct balance check): "
        + ", ".join(f"{k} {v:.0%}" for k, v in FAMILIES.items())
        + f"; BOS at position 0, characters at 1..{MAX_LEN}, PAD after the string")
    train_spec = TrainSpec(seed=0, steps=1000, batch_size=256, lr=2e-3, weight_decay=0.01,
                           warmup_steps=200, sae_steps=2000, sae_l1=2.0, eval_n=20_000)

    def model_config(self):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(
            n_layers=3, d_model=32, n_ctx=N_CTX, d_head=16, n_heads=2, d_mlp=128,
            d_vocab=4, d_vocab_out=2, act_fn="relu", normalization_type="LN",
            attention_dir="bidirectional", positional_embedding_type="standard", device="cpu",
            default_prepend_bos=False, original_architecture="zoo-parens",
        )

    def sample(self, n: int, seed: int = 0) -> ZooBatch:
        chars, _family = self.sample_with_family(n, seed)
        tokens = torch.cat([torch.full((n, 1), BOS, dtype=torch.long), chars], dim=1)
        return ZooBatch(tokens=tokens, labels=is_balanced(chars).long())

    def sample_with_family(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, MAX_LEN] characters and [n] family index (into FAMILIES)."""
        g = torch.Generator().manual_seed(int(seed))
        probs = torch.tensor(list(FAMILIES.values()), dtype=torch.float64)
        family = torch.multinomial(probs, n, replacement=True, generator=g)
        pairs = torch.randint(1, MAX_LEN // 2 + 1, (n,), generator=g)
        pos = torch.arange(MAX_LEN).unsqueeze(0)
        length = 2 * pairs.unsqueeze(1)

        dyck = _dyck(n, pairs, g)

        # swap a top-level "(" with its matching ")": same count, dips to -1 inside
        rows = torch.arange(n)
        depth_after = ((dyck == OPEN).long() - (dyck == CLOSE).long()).cumsum(-1)
        depth_before = depth_after - ((dyck == OPEN).long() - (dyck == CLOSE).long())
        i = _pick((depth_before == 0) & (pos < length), g)
        j = ((pos > i.unsqueeze(1)) & (depth_after == 0)).long().argmax(-1)
        swap = dyck.clone()
        swap[rows, i] = CLOSE
        swap[rows, j] = OPEN

        keys = torch.rand(n, MAX_LEN, generator=g) + (pos >= length).float() * 2.0
        rank = keys.argsort(-1).argsort(-1)
        shuffle = torch.where(pos >= length, PAD, torch.where(rank < pairs.unsqueeze(1), OPEN,
                                                              CLOSE))

        flip = dyck.clone()
        j = _pick(pos.expand(n, -1) < length, g)
        flip[rows, j] = torch.where(dyck[rows, j] == OPEN, CLOSE, OPEN)

        rand_len = torch.randint(1, MAX_LEN + 1, (n, 1), generator=g)
        rand_chars = torch.randint(OPEN, CLOSE + 1, (n, MAX_LEN), generator=g)
        random = torch.where(pos < rand_len, rand_chars, PAD)

        stacked = torch.stack([dyck, swap, shuffle, flip, random])  # order of FAMILIES
        chars = stacked[family, rows]
        return chars, family

    def sae_positions(self, batch: ZooBatch) -> torch.Tensor:
        return batch.tokens != PAD  # BOS and the characters

    def sae_positions_description(self) -> str:
        return "BOS and character positions (PAD positions excluded)"

    def token_labels(self) -> list[str]:
        return ["BOS", "PAD", "(", ")"]

    def decode(self, ids) -> str:
        labels = self.token_labels()
        out = []
        for i in (ids.flatten().tolist() if isinstance(ids, torch.Tensor) else ids):
            out.append({BOS: "", PAD: ""}.get(int(i), labels[int(i)]))
        return "".join(out)

    def encode(self, text: str) -> torch.Tensor:
        """"(()" -> [BOS, (, (, ), PAD...]: the model's full-width input for a paren string."""
        s = text.replace(" ", "")
        if s.startswith("BOS") or any(ch not in "()" for ch in s) or len(s) > MAX_LEN:
            return super().encode(text)
        ids = [BOS] + [OPEN if ch == "(" else CLOSE for ch in s]
        return torch.tensor(ids + [PAD] * (N_CTX - len(ids)), dtype=torch.long)

    def input_distributions(self) -> dict[str, list[dict[int, float]]]:
        """The training mix's per-position marginal, and uniform full-length strings."""
        chars, _ = self.sample_with_family(50_000, seed=424_242)
        marg = [point(BOS)]
        for t in range(MAX_LEN):
            counts = torch.bincount(chars[:, t], minlength=4).double()
            p = counts / counts.sum()
            marg.append({k: float(p[k]) for k in (PAD, OPEN, CLOSE) if p[k] > 0})
        # re-normalise exactly (floating sums)
        for d in marg[1:]:
            total = sum(d.values())
            for k in d:
                d[k] /= total
        return {
            "data-marginal": marg,
            "uniform-full-length": [point(BOS)] + [{OPEN: 0.5, CLOSE: 0.5}] * MAX_LEN,
        }

    def reference_hypotheses(self) -> list[dict[str, Any]]:
        return [
            {"name": "count-and-never-negative",
             "description": "The BOS output combines two checks: the counts of '(' and ')' are "
                            "equal (an attention head averaging over positions), and no prefix "
                            "has more ')' than '(' (per-position running counts, computed from "
                            "attention to the right/left and thresholded by an MLP).",
             "hooks": ["blocks.0.hook_attn_out", "blocks.1.hook_mlp_out",
                       "blocks.2.hook_attn_out"]},
            {"name": "starts-with-open",
             "description": "Part of the never-negative check is the first character being "
                            "'(' (a string starting with ')' is always unbalanced).",
             "hooks": ["blocks.0.hook_resid_post"]},
        ]
