"""The CLI reads the pages' own explanation files (one reader, estimators/explanation.py) and
uses the Activation model page's default positions, so a mask downloaded there runs here."""

from __future__ import annotations

import json

import pytest

from app import state
from estimators.cli import main


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _cli_json(argv, capsys) -> dict:
    rc = main(argv + ["--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_page_mask_file_runs_in_the_cli(tmp_path, capsys):
    from app import activation as glue
    from estimators.activation import CovarianceMask
    from estimators.loading import load_model

    lm = load_model("charlm", "cpu")
    s = glue.default_settings(lm)  # the page's defaults: the last ⌊128/d_model⌋ positions
    base = _cli_json(["propagate", "--model", "charlm", "--samples", "8", "--n-inputs", "8"],
                     capsys)
    # the CLI's default positions are the page's
    assert base["chain"]["info"]["positions"] == list(s.positions)
    from estimators.activation.cli import build_chain
    from estimators.cli import build_parser
    args = build_parser().parse_args(["propagate", "--model", "charlm", "--samples", "8",
                                      "--n-inputs", "8", "--device", "cpu"])
    chain = build_chain(args)
    mask = CovarianceMask.preset("full", chain.layouts)
    path = tmp_path / "activation_explanation.json"
    path.write_bytes(state.explanation_bytes("covariance-mask", mask.to_dict(),
                                             {"model": "charlm", "settings": s.to_dict()}))
    out = _cli_json(["propagate", "--model", "charlm", "--samples", "8", "--n-inputs", "8",
                     "--mask", str(path)], capsys)
    assert out["mask_hash"] == mask.hash()


def test_page_partition_and_circuit_files_run_in_the_cli(tmp_path, capsys):
    from estimators.circuits.model import load_preset

    circ = load_preset("square")
    path = tmp_path / "circuit_explanation.json"
    path.write_bytes(state.explanation_bytes(
        "circuit", {"circuit": circ.to_dict(), "preset": None, "config": {}}, {}))
    out = _cli_json(["circuit", "--circuit", str(path)], capsys)
    assert out["output"] == circ.output
    wrong = tmp_path / "wrong_kind.json"
    wrong.write_bytes(state.explanation_bytes("tail-risk", {}, {}))
    assert main(["circuit", "--circuit", str(wrong)]) == 2
    assert "'circuit' one" in capsys.readouterr().err
