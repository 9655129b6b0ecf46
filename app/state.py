"""The state that defines a view: URL query parameters and downloadable "explanation" files.

A view (model, SAE, device, and each page's argument and settings) must round-trip through the
URL, so a link reproduces a screenshot, and through a JSON file a researcher can download,
share and upload. Arguments too big for a readable query value are stored as a compact blob:
urlsafe base64 of zlib-compressed JSON.

Decoding never raises anything but `StateError` (a ValueError) with a message fit for the page,
so a malformed link or file is reported and the user's current state is kept.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

import streamlit as st

from estimators.explanation import FILE_FORMAT, FILE_VERSION  # noqa: F401  (one format)
from estimators.validation import MAX_JSON_BYTES, loads_json
MAX_BLOB_CHARS = 200_000


class StateError(ValueError):
    """A malformed URL parameter or explanation file."""


class SessionContext:
    """A dict-like holder for what a page's callbacks need from the current run (model, chain,
    graph, ...), kept in *this session's* `st.session_state` under `key`: a module-level dict
    would be shared by every browser session the server runs (one Python process)."""

    def __init__(self, key: str):
        self._key = key

    def _d(self) -> dict:
        return st.session_state.setdefault(self._key, {})

    def __getitem__(self, name: str):
        return self._d()[name]

    def __setitem__(self, name: str, value) -> None:
        self._d()[name] = value

    def update(self, values: dict) -> None:
        self._d().update(values)


def encode_blob(obj: Any) -> str:
    raw = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode_blob(text: str) -> Any:
    if len(text) > MAX_BLOB_CHARS:
        raise StateError("the link's argument is too long to be a workbench argument")
    try:
        # bounded: a 200 kB link cannot inflate to more than the JSON size limit
        d = zlib.decompressobj()
        raw = d.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)),
                           MAX_JSON_BYTES + 1)
        if d.unconsumed_tail:
            raise StateError("the link's argument is too large to be a workbench argument")
    except (binascii.Error, zlib.error, ValueError) as e:
        raise StateError(f"the link's argument could not be read ({type(e).__name__}); "
                         f"it may have been cut off when copied") from None
    try:
        return loads_json(raw, "the link's argument")
    except ValueError as e:
        raise StateError(str(e)) from None


def get_param(key: str, default: str | None = None) -> str | None:
    value = st.query_params.get(key)
    return default if value in (None, "") else value


def set_param(key: str, value: str | None) -> None:
    """Set (or with None, remove) one query parameter, writing only when it changes."""
    current = st.query_params.get(key)
    if value is None:
        if current is not None:
            del st.query_params[key]
    elif current != value:
        st.query_params[key] = value


def get_blob_param(key: str) -> Any | None:
    """Decode a blob parameter; None when absent. Raises StateError when malformed."""
    text = get_param(key)
    return None if text is None else decode_blob(text)


def set_blob_param(key: str, obj: Any | None) -> None:
    set_param(key, None if obj is None else encode_blob(obj))


def explanation_bytes(kind: str, payload: dict, context: dict | None = None) -> bytes:
    """A downloadable explanation file: the argument (`payload`) and what it applies to."""
    doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "kind": kind,
           "context": context or {}, "payload": payload}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _load_json(data: bytes | str):
    try:
        return loads_json(data, "the file")
    except ValueError as e:  # size, depth or syntax: one line
        raise StateError(str(e)) from None


def _check_explanation(doc, kind: str) -> tuple[dict, dict]:
    from estimators.explanation import check

    try:
        return check(doc, kind)
    except ValueError as e:
        raise StateError(str(e)) from None


def parse_explanation(data: bytes | str, kind: str) -> tuple[dict, dict]:
    """Read an uploaded explanation file; returns (payload, context). Raises StateError."""
    return _check_explanation(_load_json(data), kind)


def read_argument_file(data: bytes | str, kind: str) -> tuple[Any, dict | None]:
    """An upload that is either an explanation file of this page's kind, giving
    (payload, context), or a bare argument file (a circuit, a partition), giving (doc, None).
    Raises StateError for a file that is not JSON or an explanation file of another kind."""
    doc = _load_json(data)
    if isinstance(doc, dict) and "format" in doc:  # bare circuits and partitions have none
        return _check_explanation(doc, kind)
    return doc, None
