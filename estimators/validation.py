"""One gate for everything a user hands the workbench: JSON documents and numbers.

* `loads_json` reads any user JSON (an upload, a link's blob, a CLI file) with a size limit and a
  nesting-depth limit checked *before* parsing, so a hostile document (100,000 `[`) is one clear
  `InputError`, never a RecursionError; NaN/Infinity literals are refused (they are not JSON).
* `number` / `clamp_number` check one number: a real number, finite, integer when asked, in range.
  Pages clamp out-of-range link/settings values to the widget's range with a message; the CLI
  refuses them with one line.
* `require_memory` compares an allocation's size, estimated before it is made, with the memory
  this machine has available, and refuses it with one line when it does not fit.
* `check_cli_args` applies the CLI's table of limits (`CLI_LIMITS`) to parsed arguments.

Every error is `InputError`, a ValueError, so the CLI's existing path turns it into one line on
stderr with exit code 2 and the pages show it with `st.error` while keeping their state.
No streamlit here: this is library code.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

MAX_JSON_BYTES = 20 * 1024 * 1024  # the largest JSON document read (bytes); uploads are capped too
MAX_JSON_DEPTH = 64  # the deepest nesting of [ / { accepted; real workbench files use ≤ 6
MEMORY_FRACTION = 0.5  # an allocation may use at most this fraction of the available memory


class InputError(ValueError):
    """A user's input (file, link, widget value, flag) that the workbench refuses; the message
    is one line fit to show as is."""


# ------------------------------------------------------------------------------------------ JSON

def json_depth(raw: bytes) -> int:
    """The deepest nesting of `[`/`{` in a JSON text (brackets inside strings do not count).
    Vectorised and linear in the length whatever the text (no regular expression that could
    backtrack, no recursion), so it is safe on any input. A quote preceded by an odd run of
    backslashes is escaped. Unbalanced text gives its deepest prefix depth (the parser reports
    the syntax error afterwards)."""
    import numpy as np

    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size == 0:
        return 0
    idx = np.arange(a.size)
    is_bs = a == ord("\\")
    # for each position: how many backslashes immediately precede it
    last_other = np.maximum.accumulate(np.where(~is_bs, idx, -1))
    run_before = np.zeros(a.size, dtype=np.int64)
    run_before[1:] = (idx[:-1] - last_other[:-1])
    quote = (a == ord('"')) & (run_before % 2 == 0)
    in_string = (np.cumsum(quote) - quote) % 2 == 1  # inside a string (its opening quote seen)
    opens = ((a == ord("[")) | (a == ord("{"))) & ~in_string
    closes = ((a == ord("]")) | (a == ord("}"))) & ~in_string
    return int(max(0, np.cumsum(opens.astype(np.int64) - closes.astype(np.int64)).max()))


def _refuse_constant(name: str):
    raise InputError(f"{name} is not a JSON number (NaN and Infinity are not allowed)")


def loads_json(data: bytes | str, what: str = "the file", *, max_bytes: int = MAX_JSON_BYTES,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a user's JSON document, or raise one-line `InputError` naming `what` it is.

    Checks, in order: size ≤ `max_bytes` (bytes of UTF-8), UTF-8, nesting depth ≤ `max_depth`
    (pre-scan, before the parser sees the text), JSON syntax; NaN/Infinity are refused.
    Returns the parsed object (dict, list, str, int, float, bool or None).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise InputError(f"{what} is {len(raw) / 1e6:.1f} MB; the largest JSON accepted is "
                         f"{max_bytes / 1e6:.0f} MB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text (is it a JSON file?)") from None
    depth = json_depth(raw)
    if depth > max_depth:
        raise InputError(f"{what} nests {depth} levels deep; workbench files nest at most "
                         f"{max_depth}")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON ({e.msg} at line {e.lineno}, column "
                         f"{e.colno})") from None
    except RecursionError:  # not reachable after the depth check; kept as a last guard
        raise InputError(f"{what} nests too deeply") from None


def read_json_path(path: str | Path, what: str = "") -> Any:
    """A user's JSON file from disk through `loads_json`; a missing or oversized file is one
    clear `InputError` (checked with stat, before reading)."""
    path = Path(path).expanduser()
    label = f"{what} file {path}" if what else f"file {path}"
    if not path.is_file():
        raise InputError(f"{label} does not exist" if not path.exists()
                         else f"{label} is not a file")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise InputError(f"{label} is {size / 1e6:.1f} MB; the largest JSON accepted is "
                         f"{MAX_JSON_BYTES / 1e6:.0f} MB")
    return loads_json(path.read_bytes(), label)


# --------------------------------------------------------------------------------------- numbers

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and abs(v) >= 10 ** 15:
        return f"{v:.3g}"
    if isinstance(v, int) and abs(v) >= 10 ** 4:
        return f"{v:,}"
    return repr(v) if isinstance(v, str) else str(v)


def number(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
           integer: bool = False) -> int | float:
    """`value` as a finite number in [lo, hi] (int when `integer`), else one-line InputError.
    Booleans and strings are refused (a settings file's `"seed": "1"` is a mistake)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, not {_fmt(value)[:40]}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, not {value}")
    if integer:
        if isinstance(value, float):
            if value != int(value):
                raise InputError(f"{name} must be a whole number, not {_fmt(value)}")
            value = int(value)
    if lo is not None and value < lo:
        raise InputError(f"{name} must be ≥ {_fmt(lo)}, not {_fmt(value)}")
    if hi is not None and value > hi:
        raise InputError(f"{name} must be ≤ {_fmt(hi)}, not {_fmt(value)}")
    return value


def clamp_number(value: Any, name: str, lo: float, hi: float, *, integer: bool = False
                 ) -> tuple[int | float, str | None]:
    """For link and settings values shown in a bounded widget: a finite number is clamped into
    [lo, hi] and a message says so; a non-number or NaN/inf raises InputError.
    Returns (value, message or None)."""
    v = number(value, name, integer=integer)
    if v < lo or v > hi:
        c = (int if integer else float)(min(max(v, lo), hi))
        return c, (f"{name} = {_fmt(v)} is outside [{_fmt(lo)}, {_fmt(hi)}]; "
                   f"using {_fmt(c)}")
    return v, None


def clamp_fields(d: dict, ranges: dict[str, tuple], ) -> tuple[dict, list[str]]:
    """Clamp the numeric fields of a settings dict named in `ranges`
    ({field: (lo, hi, integer)}); returns (new dict, messages). Fields absent from `d` are left
    absent. Raises InputError for a non-number or a non-finite value."""
    out, notes = dict(d), []
    for key, (lo, hi, integer) in ranges.items():
        if key in out and out[key] is not None:
            out[key], note = clamp_number(out[key], key, lo, hi, integer=integer)
            if note:
                notes.append(note)
    return out, notes


# ---------------------------------------------------------------------------------------- memory

def transformer_activation_bytes(cfg, n_sequences: int, copies: float = 1.0,
                                 bytes_per_number: int = 8) -> float:
    """Upper estimate of the memory (bytes) of holding every residual-stream, attention-head and
    logit activation of `n_sequences` full-context inputs of a TransformerLens config `cfg`,
    `copies` times: n · n_ctx · (d_model·(n_layers+2) + n_heads·d_head·n_layers + d_vocab) ·
    bytes_per_number · copies. Used to refuse sizes before they are allocated."""
    per_position = (cfg.d_model * (cfg.n_layers + 2) + cfg.n_heads * cfg.d_head * cfg.n_layers
                    + getattr(cfg, "d_vocab_out", cfg.d_vocab))
    return float(n_sequences) * cfg.n_ctx * per_position * bytes_per_number * copies


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; elsewhere total RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * 1024 ** 3


def require_memory(n_bytes: float, what: str, fraction: float = MEMORY_FRACTION) -> None:
    """Refuse (InputError) an allocation of `n_bytes` (estimated before it is made) that would
    use more than `fraction` of the available memory. `what` names the user's choice that sets
    its size, e.g. "--samples 1000000000"."""
    avail = available_memory()
    if not math.isfinite(n_bytes) or n_bytes > fraction * avail:
        raise InputError(f"{what} needs about {n_bytes / 1e9:.3g} GB of memory; this machine "
                         f"has {avail / 1e9:.3g} GB available (at most {fraction:.0%} may be "
                         f"used): choose a smaller size")


# ------------------------------------------------------------------------------------------- CLI

# (command, argparse dest) -> (lo, hi, integer). Every float flag not listed must be finite.
# Sizes are capped well above what the README's examples use; memory is checked on top.
CLI_LIMITS: dict[tuple[str, str], tuple[float | None, float | None, bool]] = {
    ("propagate", "samples"): (2, 2 ** 20, True),
    ("propagate", "n_inputs"): (2, 2 ** 20, True),
    ("propagate", "seed"): (0, 2 ** 63 - 1, True),
    ("propagate", "bits_per_parameter"): (1e-6, 1024, False),
    ("propagate", "epsilon"): (1e-300, 1e6, False),
    ("propagate", "search_steps"): (1, 10_000, True),
    ("propagate", "time_budget"): (0.5, 86_400, False),
    ("propagate", "hermite_order"): (1, 12, True),
    ("circuit", "order"): (1, 16, True),
    ("circuit", "samples"): (2, 2 ** 24, True),
    ("circuit", "mc_samples"): (2, 2 ** 24, True),
    ("circuit", "seed"): (0, 2 ** 63 - 1, True),
    ("circuit", "epsilon"): (1e-300, 1e6, False),
    ("circuit", "bits_per_parameter"): (1e-6, 1024, False),
    ("scrub", "n"): (2, 2 ** 16, True),
    ("scrub", "seed"): (0, 2 ** 63 - 1, True),
    ("scrub", "batch_size"): (1, 2 ** 16, True),
    ("scrub", "threads"): (1, 256, True),
    ("scrub-search", "n"): (2, 2 ** 16, True),
    ("scrub-search", "seed"): (0, 2 ** 63 - 1, True),
    ("scrub-search", "batch_size"): (1, 2 ** 16, True),
    ("scrub-search", "threads"): (1, 256, True),
    ("scrub", "bits_per_parameter"): (0, 1024, False),  # S(π) stays finite
    ("scrub-search", "bits_per_parameter"): (0, 1024, False),
    ("scrub-search", "steps"): (0, 10_000, True),
    ("tail-risk", "budget"): (2, 2 ** 24, True),
    ("tail-risk", "seed"): (0, 2 ** 63 - 1, True),
    ("tail-risk", "temperature"): (1e-6, 1e6, False),
    ("tail-risk", "sampling_temperature"): (1e-6, 1e6, False),
    ("tail-risk", "feature"): (0, None, True),
    ("tail-risk", "unit"): (0, None, True),
    ("ground-truth", "max_exact"): (1, 2 ** 30, True),
    ("ground-truth", "samples"): (1, 2 ** 30, True),
    ("ground-truth", "sampled"): (1, 2 ** 36, True),  # 2^32 is the literature's size (a cluster)
    ("ground-truth", "shard_samples"): (1, 2 ** 24, True),
    ("ground-truth", "chunk"): (1, 2 ** 20, True),
    ("ground-truth", "workers"): (1, 4096, True),
    ("ground-truth", "seed"): (0, 2 ** 63 - 1, True),
    ("ground-truth", "sampling_temperature"): (1e-6, 1e6, False),
    ("ground-truth", "feature"): (0, None, True),
    ("ground-truth", "unit"): (0, None, True),
}


# The Activation model page's time budget (seconds; a link or file outside it is clamped).
PAGE_TIME_BUDGET = (0.5, 3600.0)


# Flags naming a user's JSON file (when the value is an existing file): read through
# `read_json_path` before any model is loaded, so a hostile file costs nothing.
CLI_JSON_FILES = {"mask", "tokens", "input_dist", "partition", "data", "distribution", "track",
                  "circuit"}
CLI_TEXT_FILES = {"direction"}  # JSON or CSV: size only


def check_cli_args(command: str, args: Any, limits: dict | None = None) -> None:
    """Every number in parsed CLI `args` is finite, and in range where `limits` (default
    `CLI_LIMITS`) says; every JSON file argument passes `read_json_path` (size, depth, syntax).
    Raises InputError naming the flag or file."""
    limits = CLI_LIMITS if limits is None else limits
    for dest in CLI_JSON_FILES | CLI_TEXT_FILES:
        value = getattr(args, dest, None)
        if not isinstance(value, str) or not Path(value).expanduser().is_file():
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in CLI_TEXT_FILES:
            size = Path(value).expanduser().stat().st_size
            if size > MAX_JSON_BYTES:
                raise InputError(f"{flag} file {value} is {size / 1e6:.1f} MB; the largest "
                                 f"accepted is {MAX_JSON_BYTES / 1e6:.0f} MB")
        else:
            read_json_path(value, flag[2:])
    for dest, value in vars(args).items():
        if isinstance(value, bool) or value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        values: Iterable = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, (int, float)):
                continue
            lo, hi, integer = limits.get((command, dest), (None, None, False))
            number(v, flag, lo, hi, integer=integer)


def cli_int(text: str) -> int:
    """argparse `type` for counts: accepts 512, 1e6, 2^20 and 2**20 (exact integers only)."""
    t = text.strip().replace("_", "")
    m = re.fullmatch(r"([+-]?\d+)\s*(?:\^|\*\*)\s*(\d{1,4})", t)
    if m:
        base, exp = int(m.group(1)), int(m.group(2))
        if abs(base) > 1 and exp * math.log2(abs(base)) > 256:
            raise ValueError(text)
        return base ** exp
    try:
        return int(t)
    except ValueError:
        pass
    f = float(t)  # "1e9"; ValueError for words
    if not math.isfinite(f) or f != int(f):
        raise ValueError(text)
    return int(f)


cli_int.__name__ = "integer"  # argparse's message: "invalid integer value: 'x'"
