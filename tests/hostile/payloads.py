"""Hostile payloads shared by the CLI and page suites."""

from __future__ import annotations

import base64
import json
import zlib

from estimators.validation import MAX_JSON_BYTES

DEEP = b"[" * 100_000  # a RecursionError in any recursive parser or walker
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000  # balanced, still too deep
NAN = b'{"value": NaN, "x": [Infinity, -Infinity]}'
NOT_UTF8 = b"\xff\xfe\x00{"
HUGE = b"[" + b"0," * ((MAX_JSON_BYTES // 2) + 10) + b"0]"  # just over the size limit
WRONG_KINDS = [b"[]", b'"a string"', b"42", b"null", b'{"payload": [1, 2]}']

FILES = {"deep": DEEP, "deep-object": DEEP_OBJECT, "nan": NAN, "not-utf8": NOT_UTF8,
         **{f"kind-{i}": w for i, w in enumerate(WRONG_KINDS)}}


def blob_of_bytes(raw: bytes) -> str:
    """A link blob (urlsafe base64 of zlib) around raw bytes, even ones json.dumps cannot make."""
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def blob(obj) -> str:
    return blob_of_bytes(json.dumps(obj).encode())


BLOBS = {"deep": blob_of_bytes(DEEP), "nan": blob_of_bytes(NAN),
         "bomb": blob_of_bytes(b" " * (64 * 2 ** 20) + b"1"),  # tiny link, 64 MB inflated
         "garbage": "not-a-blob!", "list": blob([1, 2]), "string": blob("x"),
         "number": blob(1e308)}
NUMBERS = ["nan", "inf", "-inf", "1e9", "-5", "abc", "10^12", "2" * 400]
