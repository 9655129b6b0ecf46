"""`python -m estimators zoo ...` through `estimators.cli.main`: documented JSON fields, readable
text, and a clear one-line error (exit code 2) for an unknown name."""

from __future__ import annotations

import json

from estimators import zoo
from tests.cli_run import run_cli as _run


def test_list_json(capsys):
    code, out, _ = _run(capsys, ["zoo", "list", "--json"])
    assert code == 0
    data = json.loads(out)
    assert data["default"] == "induction"
    assert [m["name"] for m in data["models"]] == zoo.names()
    for m in data["models"]:
        for key in ("name", "title", "metric", "value", "eval_examples", "sae_hook", "sae_width",
                    "sae_explained_variance", "sae_l0"):
            assert key in m
        assert m["value"] is not None and m["sae_width"] is not None


def test_list_text(capsys):
    code, out, _ = _run(capsys, ["zoo", "list"])
    assert code == 0
    for name in zoo.names():
        assert name in out
    assert "(default)" in out and "blocks." in out


def test_card_json_and_text(capsys):
    code, out, _ = _run(capsys, ["zoo", "card", "parens", "--json"])
    assert code == 0
    card = json.loads(out)
    assert card == zoo.get("parens").card()
    code, out, _ = _run(capsys, ["zoo", "card", "charlm"])
    assert code == 0
    assert "loss_nats_per_char" in out and "SAE:" in out and "reproduce:" in out


def test_unknown_name_is_a_clear_error(capsys):
    for argv in (["zoo", "card", "nope"], ["zoo", "train", "nope", "--quick"]):
        code, out, err = _run(capsys, argv)
        assert code == 2
        assert "unknown zoo model 'nope'" in err and "induction" in err
        assert "Traceback" not in err and out == ""
