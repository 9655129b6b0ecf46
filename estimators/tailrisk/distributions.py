"""Input distributions for tail-risk estimation: an independent categorical per position.

An input x = (x_1 … x_k) is drawn with x_i ~ D_i independently; D is stored as a [k, V]
probability table (float64 so that enumeration weights and log-probabilities stay exact).

JSON file format (documented in the README):

    [ {"a": 0.5, "b": 0.5},          # position 0: token strings -> probability
      {"id:12": 0.25, "x": 0.75},    # a token id is written "id:<n>" (so "1" is the token "1")
      {"uniform": ["0", "1", "id:7"]},  # uniform over the listed tokens
      {"fixed": "("},                # a fixed token (same as {"(": 1.0})
      "(" ,                          # shorthand for a fixed token string
      7 ]                            # shorthand for a fixed token id

or an object `{"name": "...", "positions": [ ... as above ... ]}`. Probabilities must be
finite, non-negative and sum to 1 within 1e-6 per position; every token must be in the model's
vocabulary; the length must be between 1 and the model's n_ctx. Violations raise
`DistributionError` (a ValueError) naming the position and the token.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

SUM_TOLERANCE = 1e-6
ID_PREFIX = "id:"


class DistributionError(ValueError):
    """A malformed or invalid input distribution; the message names position and token."""


@dataclass
class InputDistribution:
    """Independent categorical distribution per position: `probs[i, v] = D_i(v)`."""

    probs: Float[Tensor, "k V"]
    name: str = "custom"
    vocab: list[str] | None = field(default=None, repr=False)

    def __post_init__(self):
        p = torch.as_tensor(self.probs, dtype=torch.float64).detach().cpu()
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise DistributionError(f"a distribution table must be [positions, vocab], got "
                                    f"shape {tuple(p.shape)}")
        if not torch.isfinite(p).all():
            raise DistributionError("the distribution holds NaN or infinite probabilities")
        if (p < 0).any():
            i = int((p < 0).any(1).nonzero()[0])
            raise DistributionError(f"position {i} has a negative probability")
        sums = p.sum(1)
        bad = ((sums - 1).abs() > SUM_TOLERANCE).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DistributionError(f"position {i}: probabilities sum to {float(sums[i]):.9g}, "
                                    f"not 1 (tolerance {SUM_TOLERANCE})")
        self.probs = p / sums[:, None]  # remove the tolerated rounding

    # ------------------------------------------------------------------ shape
    @property
    def length(self) -> int:
        return int(self.probs.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.probs.shape[1])

    def supports(self) -> list[Tensor]:
        """Per position, the token ids with positive probability (ascending)."""
        return [row.nonzero().flatten() for row in self.probs]

    def n_inputs(self) -> int:
        """Size of the support of D (the number of inputs exact enumeration visits)."""
        return math.prod(int(s.numel()) for s in self.supports())

    def fixed_positions(self) -> list[int]:
        return [i for i, s in enumerate(self.supports()) if s.numel() == 1]

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Int[Tensor, "n k"]:
        """n i.i.d. inputs (drawn on the CPU with `generator` for reproducibility)."""
        idx = torch.multinomial(self.probs.float(), n, replacement=True, generator=generator)
        return idx.T.contiguous().to(device)

    def log_prob(self, tokens: Int[Tensor, "n k"]) -> Float[Tensor, "n"]:
        """log D(x) in float64 (−inf off the support)."""
        logp = self.probs.to(tokens.device).log()
        return logp.gather(1, tokens.T).sum(0) if tokens.numel() else \
            torch.zeros(0, dtype=torch.float64, device=tokens.device)

    def entropy_bits(self) -> float:
        p = self.probs
        return float(-(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum())

    # ------------------------------------------------------------------ identity & IO
    def to_json(self) -> dict:
        """The file format, with token ids written "id:<n>" (unambiguous for any vocab)."""
        positions: list[Any] = []
        for row in self.probs:
            nz = row.nonzero().flatten().tolist()
            if len(nz) == 1:
                positions.append({"fixed": f"{ID_PREFIX}{nz[0]}"})
            else:
                positions.append({f"{ID_PREFIX}{i}": float(row[i]) for i in nz})
        return {"name": self.name, "positions": positions}

    def fingerprint(self) -> str:
        """A stable hash of the table (not the name): the ground-truth cache key part."""
        h = hashlib.sha256()
        h.update(str(tuple(self.probs.shape)).encode())
        h.update(self.probs.numpy().round(15).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        sizes = [int(s.numel()) for s in self.supports()]
        return (f"{self.name}: {self.length} positions, support sizes {sizes}, "
                f"{self.n_inputs():,} inputs, entropy {self.entropy_bits():.1f} bits")

    def truncated(self, length: int, keep: str = "last") -> "InputDistribution":
        """The first or last `length` positions (the benchmark uses short suffixes so that
        exact enumeration stays cheap)."""
        if not 1 <= length <= self.length:
            raise DistributionError(f"cannot keep {length} of {self.length} positions")
        p = self.probs[-length:] if keep == "last" else self.probs[:length]
        return InputDistribution(p, f"{self.name}[{keep} {length}]", self.vocab)


# ------------------------------------------------------------------------------ parsing

def _token_id(key: Any, pos: int, vocab: Sequence[str] | None, vocab_size: int) -> int:
    if isinstance(key, bool):
        raise DistributionError(f"position {pos}: {key!r} is not a token")
    if isinstance(key, int):
        tid = key
    elif isinstance(key, str) and key.startswith(ID_PREFIX):
        rest = key[len(ID_PREFIX):]
        if not rest.lstrip("-").isdigit():
            raise DistributionError(f"position {pos}: {key!r} is not a token id (write id:<n>)")
        tid = int(rest)
    elif isinstance(key, str):
        if vocab is None:
            raise DistributionError(
                f"position {pos}: token string {key!r} given, but this model has no token "
                f"labels; write token ids as \"id:<n>\"")
        index = _vocab_index(tuple(vocab))
        if key not in index:
            raise DistributionError(f"position {pos}: unknown token {key!r} (not in the "
                                    f"model's vocabulary; write ids as \"id:<n>\")")
        tid = index[key]
    else:
        raise DistributionError(f"position {pos}: {key!r} is not a token string or id")
    if not 0 <= tid < vocab_size:
        raise DistributionError(f"position {pos}: token id {tid} is outside the vocabulary "
                                f"(0..{vocab_size - 1})")
    return tid


_INDEX_CACHE: dict[tuple, dict[str, int]] = {}


def _vocab_index(vocab: tuple) -> dict[str, int]:
    if vocab not in _INDEX_CACHE:
        _INDEX_CACHE.clear()
        _INDEX_CACHE[vocab] = {s: i for i, s in reversed(list(enumerate(vocab)))}
    return _INDEX_CACHE[vocab]


def _prob(value: Any, pos: int, key: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DistributionError(f"position {pos}: the probability of {key!r} must be a number, "
                                f"got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise DistributionError(f"position {pos}: the probability of {key!r} is not finite")
    if v < 0:
        raise DistributionError(f"position {pos}: the probability of {key!r} is negative ({v})")
    return v


def from_json(obj: Any, vocab_size: int, n_ctx: int | None = None,
              vocab: Sequence[str] | None = None, name: str = "custom") -> InputDistribution:
    """Build and validate a distribution from the parsed JSON file format (module docstring)."""
    if isinstance(obj, dict):
        if "positions" not in obj:
            raise DistributionError("a distribution object needs a \"positions\" list")
        name = str(obj.get("name", name))
        obj = obj["positions"]
    if not isinstance(obj, list):
        raise DistributionError("a distribution must be a JSON list with one entry per position "
                                "(or {\"positions\": [...]})")
    if not obj:
        raise DistributionError("the distribution has no positions")
    if n_ctx is not None and len(obj) > n_ctx:
        raise DistributionError(f"the distribution has {len(obj)} positions but the model's "
                                f"context is {n_ctx}")
    table = torch.zeros(len(obj), vocab_size, dtype=torch.float64)
    for pos, entry in enumerate(obj):
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            table[pos, _token_id(entry, pos, vocab, vocab_size)] = 1.0
            continue
        if not isinstance(entry, dict) or not entry:
            raise DistributionError(f"position {pos}: expected a map token -> probability, "
                                    f"{{\"fixed\": token}}, {{\"uniform\": [tokens]}} or a "
                                    f"token, got {entry!r}")
        if "fixed" in entry and len(entry) == 1:
            table[pos, _token_id(entry["fixed"], pos, vocab, vocab_size)] = 1.0
            continue
        if "uniform" in entry and len(entry) == 1:
            toks = entry["uniform"]
            if not isinstance(toks, list) or not toks:
                raise DistributionError(f"position {pos}: \"uniform\" needs a non-empty list")
            ids = {_token_id(t, pos, vocab, vocab_size) for t in toks}
            table[pos, sorted(ids)] = 1.0 / len(ids)
            continue
        for key, value in entry.items():
            tid = _token_id(key, pos, vocab, vocab_size)
            if table[pos, tid] != 0:
                raise DistributionError(f"position {pos}: token {key!r} is listed twice")
            table[pos, tid] = _prob(value, pos, key)
        total = float(table[pos].sum())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise DistributionError(f"position {pos}: probabilities sum to {total:.9g}, not 1 "
                                    f"(tolerance {SUM_TOLERANCE})")
    return InputDistribution(table, name, list(vocab) if vocab is not None else None)


def from_table(positions: list[dict[int, float]], vocab_size: int, name: str,
               vocab: Sequence[str] | None = None) -> InputDistribution:
    """From the zoo's `input_distributions()` format: a list of {token_id: prob}."""
    table = torch.zeros(len(positions), vocab_size, dtype=torch.float64)
    for pos, entry in enumerate(positions):
        for tid, p in entry.items():
            table[pos, _token_id(int(tid), pos, vocab, vocab_size)] = _prob(p, pos, tid)
    return InputDistribution(table, name, list(vocab) if vocab is not None else None)


def uniform(length: int, vocab_size: int, tokens: Sequence[int] | None = None,
            name: str = "uniform") -> InputDistribution:
    table = torch.zeros(length, vocab_size, dtype=torch.float64)
    ids = list(range(vocab_size)) if tokens is None else list(tokens)
    table[:, ids] = 1.0 / len(ids)
    return InputDistribution(table, name)


def builtin_distributions(zoo_entry) -> dict[str, list[dict[int, float]]]:
    if zoo_entry is None:
        return {}
    try:
        return zoo_entry.input_distributions()
    except NotImplementedError:
        return {}


def resolve_distribution(spec: str, model, zoo_entry=None, vocab: Sequence[str] | None = None
                         ) -> InputDistribution:
    """A built-in name of the zoo entry, or the path of a JSON file in the format above."""
    vocab_size = int(model.cfg.d_vocab)
    n_ctx = int(model.cfg.n_ctx)
    if vocab is None and zoo_entry is not None:
        vocab = zoo_entry.token_labels()
    builtins = builtin_distributions(zoo_entry)
    if spec in builtins:
        dist = from_table(builtins[spec], vocab_size, spec, vocab)
        if dist.length > n_ctx:
            raise DistributionError(f"built-in {spec!r} is longer than the context {n_ctx}")
        return dist
    path = Path(spec).expanduser()
    if path.is_file():
        return parse_file(path.read_bytes(), vocab_size, n_ctx, vocab, name=path.stem)
    known = ", ".join(builtins) or "none for this model"
    raise DistributionError(f"distribution {spec!r} is neither a built-in ({known}) nor a "
                            f"JSON file")


def parse_file(data: bytes | str, vocab_size: int, n_ctx: int | None,
               vocab: Sequence[str] | None = None, name: str = "uploaded") -> InputDistribution:
    try:
        from estimators.validation import loads_json
        obj = loads_json(data, "the distribution file")
    except ValueError as e:  # size, depth or syntax: one line
        raise DistributionError(str(e)) from None
    return from_json(obj, vocab_size, n_ctx, vocab, name)


# ------------------------------------------------------------------------- from real data

DATA_DISTRIBUTIONS = ("empirical", "data-tokens")


def from_tokens(tokens: Int[Tensor, "n k"], vocab_size: int, kind: str = "empirical",
                name: str | None = None, vocab: Sequence[str] | None = None
                ) -> InputDistribution:
    """An input distribution built from real sequences `tokens` [n, k] (ids < vocab_size).

    kind "empirical": D_i(v) = #{sequences with token v at position i} / n, the per-position
      empirical frequencies (positions independent; the joint of the data is not kept).
    kind "data-tokens": uniform over the set of token ids that occur anywhere in the data, at
      every position.
    Raises DistributionError for an unknown kind, empty data or ids outside the vocabulary."""
    t = torch.as_tensor(tokens).detach().to("cpu", torch.long)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise DistributionError("a distribution from data needs [sequences, positions] token ids")
    if int(t.min()) < 0 or int(t.max()) >= vocab_size:
        raise DistributionError(f"the data holds token ids outside 0..{vocab_size - 1}")
    if kind == "empirical":
        table = torch.zeros(t.shape[1], vocab_size, dtype=torch.float64)
        table.scatter_add_(1, t.T, torch.ones(t.T.shape, dtype=torch.float64))
        table /= t.shape[0]
    elif kind == "data-tokens":
        ids = torch.unique(t)
        table = torch.zeros(t.shape[1], vocab_size, dtype=torch.float64)
        table[:, ids] = 1.0 / ids.numel()
    else:
        raise DistributionError(f"unknown distribution from data {kind!r}; choose one of "
                                f"{', '.join(DATA_DISTRIBUTIONS)}")
    return InputDistribution(table, name or kind, list(vocab) if vocab is not None else None)
