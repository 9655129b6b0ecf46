"""Explanation files: the JSON the pages download and the CLI reads (one reader for both).

    {"format": "heuristic-estimation-workbench/explanation", "version": 1,
     "kind": "covariance-mask" | "scrubbing" | "circuit" | "tail-risk",
     "context": {...what it applies to...}, "payload": {...the argument...}}

`unwrap` accepts either such a file (of the expected kind) or a bare argument document, so a
file downloaded from a page works on the command line and vice versa.
"""

from __future__ import annotations

from typing import Any

from estimators.validation import InputError

FILE_FORMAT = "heuristic-estimation-workbench/explanation"
FILE_VERSION = 1


def is_explanation(doc: Any) -> bool:
    return isinstance(doc, dict) and "format" in doc and "payload" in doc and "kind" in doc


def check(doc: Any, kind: str) -> tuple[dict, dict]:
    """(payload, context) of an explanation file of `kind`; InputError (a ValueError) with one
    line otherwise."""
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise InputError(f"the file is not a workbench explanation file (no 'format': "
                         f"{FILE_FORMAT!r})")
    if doc.get("kind") != kind:
        raise InputError(f"the file holds a {str(doc.get('kind'))[:40]!r} explanation; this "
                         f"needs a {kind!r} one")
    if not isinstance(doc.get("payload"), dict):
        raise InputError("the file's 'payload' must be a JSON object")
    context = doc.get("context") or {}
    if not isinstance(context, dict):
        raise InputError("the file's 'context' must be a JSON object")
    return doc["payload"], context


def unwrap(doc: Any, kind: str) -> tuple[Any, dict | None]:
    """An explanation file of `kind` gives (payload, context); a bare argument gives
    (doc, None). An explanation file of another kind raises InputError."""
    if isinstance(doc, dict) and (doc.get("format") == FILE_FORMAT
                                  or ("payload" in doc and "kind" in doc)):
        return check(doc, kind)
    return doc, None
