"""estimators.validation: the JSON depth pre-scan agrees with a real parse, is linear on inputs
that make a backtracking string regex quadratic, and numbers are checked as documented."""

from __future__ import annotations

import json
import math

import pytest

from estimators.validation import (InputError, clamp_number, cli_int, json_depth, loads_json,
                                   number)

CASES = ['[]', '[[1],[2,[3]]]', '"[[["', r'["a\"[["]', r'["a\\", [1]]',
         '{"a": "}}}]]", "b": [{}]}', r'["\\\"[", []]', '{"k": {"k": {"k": []}}}', '0']


def _depth(o) -> int:
    if isinstance(o, (list, dict)):
        return 1 + max((_depth(v) for v in (o.values() if isinstance(o, dict) else o)),
                       default=0)
    return 0


@pytest.mark.parametrize("text", CASES)
def test_depth_prescan_agrees_with_the_parse(text):
    assert json_depth(text.encode()) == _depth(json.loads(text))


def test_escaped_quotes_are_one_clean_error():
    # '"\\"' repeated: one unterminated string full of escaped quotes (quadratic for a
    # backtracking string regex); the reader reports a syntax error, nothing else
    with pytest.raises(InputError, match="not valid JSON"):
        loads_json(b'"\\"' * 300_000, "the file")


@pytest.mark.parametrize("data,words", [(b"[" * 100_000, "nests 100000"),
                                        (b'{"a": NaN}', "NaN"), (b"\xff", "UTF-8"),
                                        (b"[1,]", "not valid JSON")])
def test_loads_json_refusals(data, words):
    with pytest.raises(InputError, match=words):
        loads_json(data, "the file")


def test_numbers():
    assert number(3.0, "n", 1, 5, integer=True) == 3
    for bad in (math.nan, math.inf, "3", True, None, 3.5):
        with pytest.raises(InputError):
            number(bad, "n", 1, 5, integer=True)
    assert clamp_number(1000, "n_targets", 1, 64, integer=True) == (
        64, "n_targets = 1000 is outside [1, 64]; using 64")
    assert clamp_number(5, "n", 1, 64, integer=True) == (5, None)
    assert [cli_int(t) for t in ("512", "1e6", "2^20", "2**20", "1_000")] == [
        512, 10 ** 6, 2 ** 20, 2 ** 20, 1000]
    for bad in ("abc", "1.5", "nan", "2^999999"):
        with pytest.raises(ValueError):
            cli_int(bad)
