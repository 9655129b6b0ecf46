"""`python -m estimators propagate ... --search greedy|gradient --search-steps N --json` adds
`search` (path of exact steps, stop reason, verified total) and matches the library."""

import json

import pytest

from estimators.activation import Propagator, chain_for_zoo
from estimators.activation.search import greedy_search
from tests.cli_run import run_cli as _run

ARGS = ["propagate", "--model", "maxk", "--n-inputs", "32", "--samples", "64", "--json"]


def test_greedy_search_path_in_json_matches_library(capsys):
    code, out, err = _run(capsys, ARGS + ["--search", "greedy", "--search-steps", "1"])
    assert code == 0, err
    assert "NaN" not in out and "Infinity" not in out
    s = json.loads(out)["search"]
    assert s["method"] == "greedy"
    assert all({"argument_bits", "data_bits", "total_bits", "switched_on"} <= set(p)
               for p in s["path"])
    assert s["path"][0]["argument_bits"] == 0
    assert s["verified_total_bits"] == pytest.approx(s["best_total_bits"], rel=1e-9)
    from estimators import zoo
    b = zoo.get("maxk").sample(32, seed=0)
    chain = chain_for_zoo("maxk", n_inputs=32, samples=64, seed=0)
    lib = greedy_search(Propagator(chain, distances=False), max_steps=1, tokens=b.tokens,
                        labels=b.labels, n_ctx=b.tokens.shape[1])
    assert [p["total_bits"] for p in s["path"]] == pytest.approx(
        [p["total_bits"] for p in lib.path], rel=1e-9)
    assert s["stop_reason"] == lib.stop_reason


def test_gradient_search_and_bad_steps(capsys):
    code, out, err = _run(capsys, ARGS + ["--search", "gradient", "--search-steps", "2"])
    assert code == 0, err
    s = json.loads(out)["search"]
    assert len(s["path"]) == 3 and s["path"][1]["temperature"] == pytest.approx(1.0)
    code, _, err = _run(capsys, ARGS + ["--search", "greedy", "--search-steps", "0"])
    assert code == 2 and "--search-steps" in err
