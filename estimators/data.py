"""Data sources: the researcher's inputs for any model, one abstraction for every page and CLI.

A *data spec* is one string (the CLI's `--data`, the sidebar's data field):

    zoo                          the zoo model's own generator (zoo:NAME names it explicitly)
    tokens:PATH                  a JSON file [[id, ...], ...] of token ids
    text:PATH                    a .txt file, or a folder of .txt files (recursive), tokenized
                                 with the model's tokenizer
    hf:PATH[:COLUMN]             a `datasets` folder written by `save_to_disk`; COLUMN holds text
                                 (strings) or token ids (lists of ints); default: the first of
                                 input_ids, tokens, token_ids, text that exists

followed by options `,key=value` (any order):

    n=128      sequences wanted (default: the command's own, e.g. 256)
    len=64     tokens per sequence (default: the file's own length for tokens:, 64 capped at
               the context for text and hf)
    seed=0     which n sequences are drawn when the data holds more (and the zoo generator seed)
    bos=1      prepend the tokenizer's BOS token to every sequence (text/hf text; default 0)
    split=NAME the split of a DatasetDict (default: train, else the only one)
    column=C   the column of an hf dataset (same as hf:PATH:C)
    tokenizer=DIR  a tokenizer folder (Hugging Face format) instead of the model's own

A bare path is read by its form: `*.json` → tokens, a `datasets` folder → hf, a `.txt` file or
another folder → text. Example: `text:corpus/,n=128,len=64,seed=0`.

Sequences: each document (a token list, a text file, a dataset row) is cut into consecutive
non-overlapping windows of `len` tokens (a remainder shorter than `len` is dropped); the pool of
all windows is the data's population; when it holds more than `n`, n windows are drawn without
replacement by `seed` (kept in pool order). Datasets with many rows are read in a seeded random
row order until the pool holds `POOL_FACTOR`·n windows. A token-id file without `len=` must hold
lists of one length, used as they are.

Errors (`DataError`, a ValueError: one line for the CLI and the page): unknown kind or option,
missing files, ids outside 0..d_vocab−1 (naming the sequence and the id), sequences longer than
the model's context n_ctx, no tokenizer for text, no window of `len` tokens.

    from estimators.data import parse_spec
    data = parse_spec("text:corpus.txt,n=128,len=64").load(loaded_model)
    data.tokens        # [128, 64] int64 (CPU)
    data.fingerprint   # sha256 of the token tensor: the activation cache's data key

Loads are memoised in-process (16 entries) on the spec, the model's vocabulary, context and
tokenizer source, and the files' sizes and modification times; treat `Data.tokens` as read-only.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from jaxtyping import Int
from torch import Tensor

KINDS = ("zoo", "tokens", "text", "hf")
OPTIONS = ("n", "len", "seed", "bos", "split", "column", "tokenizer")
DEFAULT_N = 256
DEFAULT_TEXT_LEN = 64
POOL_FACTOR = 8  # dataset rows are read until the pool holds this many windows per wanted one
ID_COLUMNS = ("input_ids", "tokens", "token_ids")
TEXT_COLUMNS = ("text", "content", "document")
_OPTION_RE = re.compile(r"^(%s)=(.*)$" % "|".join(OPTIONS))


class DataError(ValueError):
    """The data spec or the data is unusable; the message is one line saying why and what to do."""


# ------------------------------------------------------------------------------- the spec

@dataclass(frozen=True)
class DataSource:
    """A parsed data spec (see the module docstring). `path` is None for the zoo generator
    (or the zoo name for zoo:NAME). Unset n/seq_len/seed take the command's defaults."""

    kind: str
    path: str | None = None
    n: int | None = None
    seq_len: int | None = None
    seed: int | None = None
    bos: bool = False
    split: str | None = None
    column: str | None = None
    tokenizer: str | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string (parse_spec(s.spec) == s)."""
        head = self.kind if self.path is None else f"{self.kind}:{self.path}"
        n = None if self.n is not None and self.n >= 2 ** 62 else self.n  # 2^62: every sequence
        opts = [("n", n), ("len", self.seq_len), ("seed", self.seed),
                ("bos", 1 if self.bos else None), ("split", self.split),
                ("column", self.column), ("tokenizer", self.tokenizer)]
        return ",".join([head] + [f"{k}={v}" for k, v in opts if v is not None])

    def with_defaults(self, n: int | None = None, seed: int | None = None,
                      seq_len: int | None = None) -> "DataSource":
        """This source with unset n / seed / len filled from a command's own defaults."""
        return replace(self, n=self.n if self.n is not None else n,
                       seed=self.seed if self.seed is not None else seed,
                       seq_len=self.seq_len if self.seq_len is not None else seq_len)

    def load(self, model_or_loaded, tokenizer=None) -> "Data":
        """Read, tokenize, window and validate the data for a model.

        model_or_loaded: an `estimators.loading.LoadedModel` (gives the zoo entry and the model
        folder, where a tokenizer may live) or a bare HookedTransformer.
        tokenizer: overrides every other tokenizer source.
        Returns `Data` with tokens [n, len] int64 on the CPU. Raises DataError."""
        model, loaded = _split_model(model_or_loaded)
        if self.kind == "zoo":
            return _load_zoo(self, model, loaded)
        key = None if tokenizer is not None else _memo_key(self, model, loaded)
        hit = _MEMO.get(key) if key is not None else None
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit
        data = self._read(model, loaded, tokenizer)
        if key is not None:
            _MEMO[key] = data
            while len(_MEMO) > MEMO_SIZE:
                _MEMO.popitem(last=False)
        return data

    def _read(self, model, loaded, tokenizer) -> "Data":
        d_vocab, n_ctx = int(model.cfg.d_vocab), int(model.cfg.n_ctx)
        if self.seq_len is not None and self.seq_len > n_ctx:
            raise DataError(f"len={self.seq_len} is longer than the model's context "
                            f"n_ctx={n_ctx}")
        n = self.n if self.n is not None else DEFAULT_N
        docs, tok = _documents(self, model, loaded, tokenizer, n)
        bos = None
        if self.bos:
            bos = bos_id(tok)
            if bos is None:
                raise DataError("bos=1, but the tokenizer has no BOS (or EOS) token")
        pool, seq_len = _windows(docs, self, n_ctx, bos)
        if not pool:
            raise DataError(f"{self.spec}: no document holds {seq_len} tokens; lower len=")
        tokens = torch.tensor(_choose(pool, n, self.seed or 0), dtype=torch.long)
        _check_vocab(tokens, d_vocab, self.spec)
        return Data(tokens, self, n_available=len(pool))


MEMO_SIZE = 16
_MEMO: "OrderedDict[tuple, Data]" = OrderedDict()


def _memo_key(src: DataSource, model, loaded) -> tuple | None:
    """What a load depends on: the spec, the model's vocabulary, context and tokenizer source,
    and the files' sizes and modification times (None: not memoised)."""
    try:
        sig = _path_signature(Path(src.path).expanduser())
        tok_sig = _path_signature(Path(src.tokenizer).expanduser()) if src.tokenizer else None
    except OSError:
        return None
    tok = getattr(model, "tokenizer", None)
    return (src, int(model.cfg.d_vocab), int(model.cfg.n_ctx),
            getattr(tok, "name_or_path", None) if tok is not None else None,
            (loaded.kind, loaded.name) if loaded is not None else None, sig, tok_sig)


def _path_signature(path: Path) -> tuple:
    if path.is_file():
        st = path.stat()
        return (str(path), st.st_size, st.st_mtime_ns)
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(path.rglob("*")) if p.is_file())


def parse_spec(text: str, n: int | None = None, seed: int | None = None,
               seq_len: int | None = None) -> DataSource:
    """Parse a data spec string (module docstring) into a DataSource; n / seed / seq_len are the
    caller's defaults for options the spec leaves unset. Raises DataError (one line)."""
    s = (text or "").strip()
    if not s:
        raise DataError("no data given: write zoo, tokens:FILE.json, text:PATH or hf:FOLDER")
    opts: dict[str, str] = {}
    while "," in s:
        head, _, last = s.rpartition(",")
        m = _OPTION_RE.match(last.strip())
        if not m:
            if "=" in last and "/" not in last and "." not in last.split("=")[0]:
                raise DataError(f"unknown data option {last.strip()!r}; options: "
                                f"{', '.join(OPTIONS)}")
            break
        if m.group(1) in opts:
            raise DataError(f"data option {m.group(1)}= is given twice")
        opts[m.group(1)] = m.group(2).strip()
        s = head.strip()
    kind, path = _kind_and_path(s)
    if kind == "hf" and path and ":" in path and not Path(path).expanduser().exists():
        path, col = path.rsplit(":", 1)
        if "column" in opts and opts["column"] != col:
            raise DataError(f"hf:{path}:{col} and column={opts['column']} disagree")
        opts["column"] = col
    src = DataSource(kind, path, n=_int_opt(opts, "n", 1), seq_len=_int_opt(opts, "len", 1),
                     seed=_int_opt(opts, "seed", 0), bos=_bool_opt(opts, "bos"),
                     split=opts.get("split") or None, column=opts.get("column") or None,
                     tokenizer=opts.get("tokenizer") or None)
    if kind != "hf" and (src.split or src.column):
        raise DataError("split= and column= apply to hf: datasets only")
    if kind in ("zoo", "tokens") and (src.bos or src.tokenizer):
        raise DataError("bos= and tokenizer= apply to text (text: or an hf text column) only")
    return src.with_defaults(n, seed, seq_len)


def _kind_and_path(s: str) -> tuple[str, str | None]:
    kind, sep, rest = s.partition(":")
    if kind == "zoo":
        return "zoo", (rest.strip() or None) if sep else None
    if sep and kind in KINDS:
        if not rest.strip():
            raise DataError(f"{kind}: needs a path ({kind}:PATH)")
        return kind, rest.strip()
    if sep and re.fullmatch(r"[a-z]+", kind) and len(kind) > 1:
        raise DataError(f"unknown data kind {kind!r}; kinds: {', '.join(KINDS)}")
    path = Path(s).expanduser()  # a bare path: read by its form
    if s.endswith(".json"):
        return "tokens", s
    if path.is_dir() and _is_datasets_folder(path):
        return "hf", s
    if path.exists() or s.endswith(".txt"):
        return "text", s
    raise DataError(f"data {s!r} is neither zoo nor an existing path; write zoo, "
                    f"tokens:FILE.json, text:PATH or hf:FOLDER")


def _int_opt(opts: dict, key: str, lo: int) -> int | None:
    if key not in opts:
        return None
    try:
        v = int(opts[key])
    except ValueError:
        raise DataError(f"data option {key}={opts[key]!r} must be an integer") from None
    if v < lo:
        raise DataError(f"data option {key}= must be at least {lo}, not {v}")
    return v


def _bool_opt(opts: dict, key: str) -> bool:
    v = opts.get(key, "0").lower()
    if v not in ("0", "1", "true", "false", "yes", "no"):
        raise DataError(f"data option {key}={v!r} must be 0 or 1")
    return v in ("1", "true", "yes")


def _is_datasets_folder(path: Path) -> bool:
    return any((path / f).exists() for f in ("dataset_info.json", "state.json",
                                              "dataset_dict.json"))


# --------------------------------------------------------------------------------- the data

@dataclass
class Data:
    """Loaded data: `tokens` [n, len] int64 on the CPU, the source it came from, the size of the
    pool it was drawn from, and for the zoo the task batch (labels, targets, loss mask)."""

    tokens: Int[Tensor, "n len"]
    source: DataSource
    n_available: int
    zoo_batch: Any = field(default=None, repr=False)  # estimators.zoo.ZooBatch | None
    _fp: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def fingerprint(self) -> str:
        """sha256 over the token tensor's shape and bytes (24 hex digits): equal tokens, equal
        fingerprint, whatever spec produced them."""
        if self._fp is None:
            self._fp = tokens_fingerprint(self.tokens)
        return self._fp

    def describe(self) -> str:
        """One line for a caption: what was read and how much of it."""
        extra = f" (drawn by seed {self.source.seed or 0} from {self.n_available:,})" \
            if self.n_available > len(self) else ""
        return f"{self.source.spec}: {len(self):,} sequences × {self.seq_len} tokens{extra}"

    def to_dict(self) -> dict:
        return {"spec": self.source.spec, "kind": self.source.kind, "n": len(self),
                "seq_len": self.seq_len, "seed": self.source.seed or 0,
                "n_available": self.n_available, "fingerprint": self.fingerprint}

    def next_token_batch(self):
        """A ZooBatch scoring next-token loss at every position but the last (the zoo's own
        task batch for zoo data)."""
        from estimators.zoo import ZooBatch

        if self.zoo_batch is not None:
            return self.zoo_batch
        t = self.tokens
        targets = torch.cat([t[:, 1:], torch.zeros_like(t[:, :1])], dim=1)
        mask = torch.ones_like(t, dtype=torch.bool)
        mask[:, -1] = False
        return ZooBatch(t, None, targets, mask)


def tokens_fingerprint(tokens: Tensor) -> str:
    """sha256 of an integer token tensor's shape and int64 bytes (24 hex digits)."""
    t = tokens.detach().to("cpu", torch.long).contiguous()
    h = hashlib.sha256(f"tokens|{tuple(t.shape)}|".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()[:24]


def load_data(spec: str | DataSource, model_or_loaded, n: int | None = None,
              seed: int | None = None, seq_len: int | None = None) -> Data:
    """parse_spec(spec, n, seed, seq_len).load(model_or_loaded), for a spec string or a
    DataSource (whose unset options then take n / seed / seq_len)."""
    src = spec if isinstance(spec, DataSource) else parse_spec(spec)
    return src.with_defaults(n, seed, seq_len).load(model_or_loaded)


# ------------------------------------------------------------------------------- loading

def _split_model(obj):
    from estimators.loading import LoadedModel

    if isinstance(obj, LoadedModel):
        return obj.model, obj
    return obj, None


def _load_zoo(src: DataSource, model, loaded) -> Data:
    from estimators import zoo

    entry = loaded.zoo_entry if loaded is not None else None
    if src.path is not None:
        entry = zoo.get(src.path)
    if entry is None:
        raise DataError("zoo data needs a zoo model (or zoo:NAME); this model needs its own "
                        "data: tokens:FILE.json, text:PATH or hf:FOLDER")
    n = src.n if src.n is not None else DEFAULT_N
    batch = entry.sample(n, seed=src.seed or 0)
    if src.seq_len is not None and src.seq_len != batch.tokens.shape[1]:
        raise DataError(f"the {entry.name} generator makes {batch.tokens.shape[1]}-token "
                        f"sequences; len={src.seq_len} cannot apply")
    if model is not None:
        if batch.tokens.shape[1] > model.cfg.n_ctx:
            raise DataError(f"{entry.name} sequences are longer than the model's context")
        _check_vocab(batch.tokens, int(model.cfg.d_vocab), src.spec)
    return Data(batch.tokens.long(), src, n_available=n, zoo_batch=batch)


def _documents(src: DataSource, model, loaded, tokenizer, n: int
               ) -> tuple[Iterator[list[int]], Any]:
    """(documents as token-id lists, the tokenizer used or None)."""
    path = Path(src.path).expanduser()
    if not path.exists():
        raise DataError(f"{src.kind}: {src.path} does not exist")
    if src.kind == "tokens":
        return iter(_read_token_file(path)), None
    if src.kind == "text":
        tok = tokenizer or model_tokenizer(model, loaded, src.tokenizer)
        return _text_documents(path, tok), tok
    return _hf_documents(path, src, model, loaded, tokenizer, n)


def _read_token_file(path: Path) -> list[list[int]]:
    from estimators.loading import read_json_file

    doc = read_json_file(path, "tokens")
    if isinstance(doc, dict) and isinstance(doc.get("tokens"), list):
        doc = doc["tokens"]
    if not isinstance(doc, list) or not doc:
        raise DataError(f"{path} must hold a non-empty JSON list of token-id lists")
    for i, seq in enumerate(doc):
        if not isinstance(seq, list) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                for t in seq):
            raise DataError(f"{path}: sequence {i} is not a list of integer token ids")
        for j, t in enumerate(seq):
            if not -2 ** 31 <= t < 2 ** 31:  # fits int64 below; the vocabulary is checked later
                raise DataError(f"{path}: token id {t} (sequence {i}, position {j}) is not a "
                                f"vocabulary index (|id| < 2^31)")
    return doc


def _text_documents(path: Path, tok) -> Iterator[list[int]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"the folder {path} holds no .txt files")
    else:
        files = [path]
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 text: {e}") from None
        yield _encode(tok, text)


def _hf_documents(path: Path, src: DataSource, model, loaded, tokenizer,
                  n: int) -> tuple[Iterator[list[int]], Any]:
    ds = _open_dataset(path, src.split)
    col = src.column or next((c for c in ID_COLUMNS + TEXT_COLUMNS if c in ds.column_names),
                             None)
    if col is None or col not in ds.column_names:
        raise DataError(f"{path}: no column {col or 'of text or token ids'}; columns: "
                        f"{', '.join(ds.column_names)} (give hf:PATH:COLUMN)")
    if len(ds) == 0:
        raise DataError(f"{path}: the dataset has no rows")
    first = ds[0][col]
    is_text = isinstance(first, str)
    if not is_text and not (isinstance(first, list) and all(isinstance(t, int) for t in first)):
        raise DataError(f"{path}: column {col!r} holds neither text nor lists of token ids")
    tok = (tokenizer or model_tokenizer(model, loaded, src.tokenizer)) if is_text else None
    if not is_text and (src.bos or src.tokenizer):
        raise DataError("bos= and tokenizer= apply to a text column, not token ids")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(src.seed or 0))
    return _rows(ds, col, tok, order.tolist()), tok


def _rows(ds, col: str, tok, order: list[int]) -> Iterator[list[int]]:
    for i in order:
        value = ds[int(i)][col]
        if tok is not None:
            if not isinstance(value, str):
                raise DataError(f"row {i} of column {col!r} is not text")
            yield _encode(tok, value)
        else:
            if not isinstance(value, list):
                raise DataError(f"row {i} of column {col!r} is not a list of token ids")
            yield [int(t) for t in value]


def _open_dataset(path: Path, split: str | None):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - the library's own message, on one line
        raise DataError(f"{path} is not a datasets folder written by save_to_disk: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds.keys())
        pick = split or ("train" if "train" in ds else (names[0] if len(names) == 1 else None))
        if pick not in ds:
            raise DataError(f"{path} holds splits {names}: choose one with split=NAME")
        ds = ds[pick]
    elif split is not None:
        raise DataError(f"{path} is a single dataset; split={split} does not apply")
    return ds


def _windows(docs: Iterator[list[int]], src: DataSource, n_ctx: int, bos: int | None
             ) -> tuple[list[list[int]], int]:
    """Cut documents into windows of `len` tokens (BOS-prefixed with bos=1)."""
    want = (src.n if src.n is not None else DEFAULT_N) * POOL_FACTOR
    seq_len = src.seq_len
    if seq_len is None:
        if src.kind == "tokens":
            docs = list(docs)
            lengths = {len(d) for d in docs}
            if len(lengths) != 1:
                raise DataError(f"{src.path}: the token lists must have the same length "
                                f"(got {min(lengths)}..{max(lengths)}), or give len=L to cut "
                                f"them into windows of L tokens")
            seq_len = lengths.pop()
            if seq_len > n_ctx:
                raise DataError(f"{src.path}: sequences of {seq_len} tokens are longer than "
                                f"the model's context n_ctx={n_ctx} (give len=L ≤ {n_ctx} to "
                                f"cut them)")
        else:
            seq_len = min(DEFAULT_TEXT_LEN, n_ctx)
    body = seq_len - (1 if src.bos else 0)
    if body < 1:
        raise DataError("len= must leave at least one token after the BOS")
    pool: list[list[int]] = []
    for doc in docs:
        for start in range(0, len(doc) - body + 1, body):
            w = doc[start:start + body]
            pool.append(([bos] if bos is not None else []) + w)
        if src.kind == "hf" and len(pool) >= want:
            break
    return pool, seq_len


def _choose(pool: list[list[int]], n: int, seed: int) -> list[list[int]]:
    """n windows drawn without replacement by `seed`, in pool order (all when n ≥ pool)."""
    if n >= len(pool):
        return pool
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]
    return [pool[i] for i in sorted(idx.tolist())]


def _check_vocab(tokens: Tensor, d_vocab: int, spec: str) -> None:
    bad = (tokens < 0) | (tokens >= d_vocab)
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise DataError(f"{spec}: token id {int(tokens[i, j])} (sequence {i}, position {j}) is "
                        f"outside the model's vocabulary 0..{d_vocab - 1}")


# ------------------------------------------------------------------------------ tokenizers

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def model_tokenizer(model, loaded=None, override: str | None = None):
    """The tokenizer text is encoded with: `override` (a tokenizer folder or tokenizer.json),
    else the model's own `model.tokenizer`, else tokenizer files in the model's folder
    (tokenizer.json, or vocab.json + merges.txt), else a zoo model's token labels
    (space-separated). Raises DataError when there is none."""
    if override:
        return _load_tokenizer(Path(override).expanduser())
    tok = getattr(model, "tokenizer", None)
    if tok is not None and _vocab_size(tok) >= 2:  # a folder without tokenizer files can
        return tok                                  # boot with an empty one: not usable
    if loaded is not None and loaded.kind in ("checkpoint", "hf-folder"):
        folder = Path(loaded.name).expanduser()
        if any((folder / f).exists() for f in TOKENIZER_FILES):
            return _load_tokenizer(folder)
    if loaded is not None and loaded.zoo_entry is not None:
        return _ZooTokenizer(loaded.zoo_entry)
    raise DataError("this model has no tokenizer: put tokenizer files (tokenizer.json, or "
                    "vocab.json + merges.txt) in the model folder, add tokenizer=DIR to the "
                    "data spec, or give token ids (tokens:FILE.json)")


def _load_tokenizer(path: Path):
    if not path.exists():
        raise DataError(f"tokenizer {path} does not exist")
    try:
        if path.is_file():
            from tokenizers import Tokenizer
            return Tokenizer.from_file(str(path))
        return _folder_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - the library's own message, on one line
        raise DataError(f"could not load a tokenizer from {path}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None


def _folder_tokenizer(folder: Path):
    """A Hugging Face tokenizer folder (tokenizer.json or tokenizer_config.json) through
    AutoTokenizer; GPT-2's bare vocab.json + merges.txt as a byte-level BPE (`tokenizers`)."""
    if (folder / "tokenizer.json").exists() or (folder / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        from tokenizers import ByteLevelBPETokenizer
        tok = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    else:
        raise DataError(f"{folder} holds no tokenizer.json, tokenizer_config.json or "
                        f"vocab.json + merges.txt")
    if _vocab_size(tok) < 2:
        raise DataError(f"the tokenizer in {folder} has an empty vocabulary")
    return tok


def _vocab_size(tok) -> int:
    try:
        return int(tok.get_vocab_size()) if hasattr(tok, "get_vocab_size") else len(tok)
    except TypeError:
        return 2 ** 31  # no way to tell: trust it


class _ZooTokenizer:
    """A zoo model's labels as a tokenizer: whitespace-separated labels or ids."""

    def __init__(self, entry):
        self.entry = entry
        self.bos_token_id = None

    def encode_ids(self, text: str) -> list[int]:
        try:
            return self.entry.encode(text).tolist()
        except ValueError as e:
            raise DataError(str(e)) from None


def _encode(tok, text: str) -> list[int]:
    if isinstance(tok, _ZooTokenizer):
        return tok.encode_ids(text)
    if type(tok).__module__.startswith("tokenizers"):  # tokenizers.Tokenizer / implementations
        return list(tok.encode(text, add_special_tokens=False).ids)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than model_max_length": we window it
    try:
        return list(tok.encode(text, add_special_tokens=False))
    finally:
        hf_logging.set_verbosity(level)


def decode(model_or_loaded, ids, tokenizer=None) -> str | None:
    """Token ids as text with the model's tokenizer (or a zoo model's labels, space-separated);
    None when the model has none."""
    model, loaded = _split_model(model_or_loaded)
    try:
        tok = tokenizer or model_tokenizer(model, loaded)
    except DataError:
        return None
    ids = [int(i) for i in ids]
    if isinstance(tok, _ZooTokenizer):
        return tok.entry.decode(ids)
    try:
        return tok.decode(ids)
    except Exception:  # noqa: BLE001 - ids the tokenizer cannot decode: show none
        return None


def token_id(model_or_loaded, text: str, tokenizer=None) -> int | None:
    """The id of `text` as ONE token of the model's tokenizer: a vocabulary entry as the
    tokenizer spells it (GPT-2's byte-level 'Ġthe'), else text that encodes to exactly one
    token (' the' → 262 in GPT-2's vocabulary). None when it is neither, when the model has no
    tokenizer, or for a zoo model (whose labels its callers look up themselves)."""
    model, loaded = _split_model(model_or_loaded)
    try:
        tok = tokenizer or model_tokenizer(model, loaded)
    except DataError:
        return None
    if isinstance(tok, _ZooTokenizer) or not isinstance(text, str) or not text:
        return None
    v = tok.token_to_id(text) if hasattr(tok, "token_to_id") else tok.get_vocab().get(text)
    if v is not None:
        return int(v)
    try:
        ids = _encode(tok, text)
    except Exception:  # noqa: BLE001 - text the tokenizer cannot encode is not a token
        return None
    return int(ids[0]) if len(ids) == 1 else None


def token_texts(model_or_loaded, tokenizer=None) -> list[str] | None:
    """Every token id's text through the model's tokenizer ([d_vocab] strings: GPT-2's 262 is
    ' the'), for reading token strings in distribution files; where two ids share a text the
    lower id is the one looked up. None without a tokenizer or for a zoo model (its callers
    use the zoo labels). Memoised per tokenizer object (GPT-2's 50,257 decodes take ≈ 0.3 s)."""
    model, loaded = _split_model(model_or_loaded)
    try:
        tok = tokenizer or model_tokenizer(model, loaded)
    except DataError:
        return None
    if isinstance(tok, _ZooTokenizer):
        return None
    hit = _TEXTS.get(id(tok))
    if hit is None or hit[0] is not tok:
        texts = []
        for i in range(int(model.cfg.d_vocab)):
            try:
                texts.append(tok.decode([i]))
            except Exception:  # noqa: BLE001 - an id the tokenizer cannot decode: no text
                texts.append("\ufffd")
        _TEXTS.clear()
        hit = _TEXTS[id(tok)] = (tok, texts)
    return hit[1]


_TEXTS: dict[int, tuple[Any, list[str]]] = {}


def bos_id(tok) -> int | None:
    """The tokenizer's BOS id (HF tokenizers; falls back to the EOS id as GPT-2 does)."""
    for attr in ("bos_token_id", "eos_token_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            return v
    if hasattr(tok, "token_to_id"):  # tokenizers.Tokenizer
        for name in ("<|endoftext|>", "<s>", "<bos>", "[BOS]"):
            v = tok.token_to_id(name)
            if v is not None:
                return int(v)
    return None


__all__ = ["DEFAULT_N", "Data", "DataError", "DataSource", "KINDS", "OPTIONS", "bos_id",
           "decode", "load_data", "model_tokenizer", "parse_spec", "token_id",
           "token_texts", "tokens_fingerprint"]

