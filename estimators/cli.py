"""`python -m estimators`: one entry point; each capability registers its subcommands.

A subcommand module exposes `register(subparsers)`, which adds its parsers and sets
`func=<callable(args) -> dict | str>` on each. A dict is printed as JSON with `--json` and as
aligned `key: value` text otherwise; a string is printed as is. Errors a user can cause raise
`UserError` (or ValueError/FileNotFoundError) and become one clear line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import math
import re
import sys
import warnings
from typing import Any

from estimators.progress import Cancelled

# Order is the order in `--help`.
SUBCOMMAND_MODULES = [
    "estimators.zoo.cli",
    "estimators.loading_cli",
    "estimators.data_cli",
    "estimators.activation.cli",
    "estimators.scrubbing.cli",
    "estimators.tailrisk.cli",
    "estimators.tailrisk.sweep",
    "estimators.circuits.cli",
]


class UserError(Exception):
    """A mistake in the user's input: reported as one line, never a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error: <message> (see <prog> --help)`, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _counts_accept_exponents(parser: argparse.ArgumentParser) -> None:
    """Every `type=int` flag of every subcommand reads 1e6, 2^20 or 2**20 as well as 512, so a
    size given in any of these forms reaches the range check (and its one-line message)."""
    from estimators.validation import cli_int

    for action in parser._actions:
        if action.type is int:
            action.type = cli_int
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _counts_accept_exponents(sub)


def _jsonable(obj: Any, notes: list | None = None, path: str = "") -> Any:
    """JSON-ready copy of a result: tensors and numpy arrays/scalars become lists/numbers, and
    every non-finite float (NaN, ±inf; also numpy/torch scalars) becomes null. Where a dict value
    becomes null, a sibling "<key>_note" says why (unless one exists); a null inside a list is
    noted in `notes` (see `jsonable_result`)."""
    notes = [] if notes is None else notes
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        obj = obj.detach().cpu().tolist()
    elif type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # ndarray, np.float64…
        obj = obj.tolist()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = str(k)
            before = len(notes)
            out[key] = _jsonable(v, notes, f"{path}.{key}" if path else key)
            if out[key] is None and len(notes) > before and notes[-1][0] == (
                    f"{path}.{key}" if path else key) and f"{key}_note" not in obj:
                out[f"{key}_note"] = notes.pop()[1]
        return out
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, notes, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        notes.append((path, f"not a finite number ({obj}); printed as null"))
        return None
    return obj


def jsonable_result(result: Any) -> Any:
    """`_jsonable`, plus a top-level "null_notes" list ("path: why") for nulls inside lists."""
    notes: list = []
    out = _jsonable(result, notes)
    if notes and isinstance(out, dict):
        out.setdefault("null_notes", [f"{p}: {why}" for p, why in notes])
    return out


def format_text(result: Any, indent: int = 0) -> str:
    if isinstance(result, str):
        return result
    pad = "  " * indent
    lines = []
    if isinstance(result, dict):
        width = max((len(str(k)) for k in result), default=0)
        for k, v in result.items():
            if isinstance(v, (dict, list)) and v and any(isinstance(x, (dict, list)) for x in
                                                         (v.values() if isinstance(v, dict) else v)):
                lines.append(f"{pad}{k}:")
                lines.append(format_text(v, indent + 1))
            else:
                lines.append(f"{pad}{str(k).ljust(width)}  {_short(v)}")
    elif isinstance(result, list):
        for item in result:
            lines.append(format_text(item, indent) if isinstance(item, (dict, list))
                         else f"{pad}- {_short(item)}")
            if isinstance(item, dict):
                lines.append("")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list) and len(v) > 8:
        return "[" + ", ".join(_short(x) for x in v[:8]) + f", ... ({len(v)} items)]"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return str(v)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m estimators",
        description="Heuristic Estimation Workbench: propagate, scrub, estimate tail risk.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # capability not present in this build
            raise
        module.register(sub)
    _counts_accept_exponents(parser)
    return parser


def progress_printer(label: str, enabled: bool | None = None, stream=None):
    """A progress callback (`estimators.progress`: a Progress, or a bare fraction in [0, 1])
    that writes one updating stderr line, "label:  9.4% · 12 of 128 sequences · 3 s elapsed ·
    ~17 s left" (time left: `estimators.progress.Eta`, the current stage's average rate so far
    extrapolated to the units left), at most twice a second; None when disabled (default:
    stderr is a terminal). stdout, where --json goes, is never touched."""
    import time

    from estimators.progress import Eta, as_progress, format_seconds, left_text

    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if enabled is None:
        enabled = tty
    if not enabled:
        return None
    eta = Eta()
    t0 = time.monotonic()
    last = [-1.0, None]

    def show(p: float) -> None:
        p = as_progress(p)
        left = eta.update(p)
        now = time.monotonic()
        if p < 1 and now - last[0] < 0.5 and p.stage == last[1]:
            return
        last[0], last[1] = now, p.stage
        head = f"{label} · {p.stage}" if p.stage and p.stage != label else label
        counts = f" · {p.counts()}" if p.unit else ""
        text = f"{head}: {p:6.1%}{counts} · {format_seconds(now - t0)} elapsed"
        if left is not None and p < 1:
            text += f" · {left_text(left)}"
        stream.write(f"\r\x1b[2K{text}" if tty else f"{text}\n")
        if p >= 1 and tty:
            stream.write("\n")
        stream.flush()
    return show


def progress_flag(p: argparse.ArgumentParser) -> None:
    """--progress / --no-progress: progress with time left on stderr (default: when stderr is
    a terminal). Ctrl-C stops any command with one line "cancelled" and exit code 130."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress and time left on stderr (default: when a terminal)")


def add_common_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)
_PLAIN_NEGATIVE = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse already takes these as values


def _attach_negative_values(argv: list[str]) -> list[str]:
    """argparse reads `--threshold -1e6` as two options (only plain negatives like -3 or -0.5
    pass as values); any other negative number right after a long option becomes
    `--opt=-1e6`."""
    out: list[str] = []
    for tok in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1]
                and _NEGATIVE_NUMBER.match(tok) and not _PLAIN_NEGATIVE.match(tok)):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def main(argv: list[str] | None = None) -> int:
    # sae-lens needs transformer-lens < 4, so its deprecation notice is noise for our users.
    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        from estimators.validation import check_cli_args

        check_cli_args(args.command, args)  # finite, in range: before anything is loaded
        result = args.func(args)
    except (KeyboardInterrupt, Cancelled):  # Ctrl-C: one line, the shell's 128 + SIGINT
        tty = sys.stderr.isatty()
        print(f"{chr(10) if tty else ''}cancelled", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, KeyError, RecursionError,
            MemoryError) as e:
        if isinstance(e, RecursionError):
            msg = "the input nests too deeply"
        elif isinstance(e, MemoryError):
            msg = "out of memory: choose smaller sizes"
        else:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    text = (json.dumps(jsonable_result(result), indent=2, allow_nan=False)  # a NaN fails loudly
            if getattr(args, "json", False) else format_text(jsonable_result(result)))
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... --json | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
