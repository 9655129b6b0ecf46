"""Circuits: an estimate with more pairs tracked is never silently worse than independence.
Exact moments where the closure is not needed (x·x of an input), a warning at every node where
the Gaussian fourth-moment closure meets non-Gaussian variables (and at the nodes computed from
it), in the library's rows, the CLI's JSON and text, and the page's error table."""

import json

import pytest

from estimators.circuits import load_preset
from estimators.circuits.analysis import CircuitConfig, analyse, track_all
from estimators.circuits.model import Circuit
from estimators.cli import main


def _all_tracked(c):
    return analyse(c, CircuitConfig(method="sparse", tracked=tuple(track_all(c))))


def test_every_node_worse_than_independence_is_warned_on_the_presets():
    for name in ("square", "difference_of_squares", "power_chain", "shared_coin", "random"):
        c = load_preset(name)
        ind = analyse(c, CircuitConfig(method="independence")).rows()
        tr = _all_tracked(c).rows()
        for r0, r in zip(ind, tr):
            if abs(r["var_err"]) > abs(r0["var_err"]) + 1e-9:
                assert r["warning"], (name, r["id"], r["var_est"], r0["var_est"], r["var_true"])
        # independence applies no closure: never a warning
        assert not any(r["warning"] for r in ind)


def test_random_preset_names_where_the_closure_was_applied():
    rows = {r["id"]: r for r in _all_tracked(load_preset("random")).rows()}
    assert "fourth-moment closure" in rows["x3"]["warning"]
    assert rows["x6"]["warning"].startswith("depends on x3")
    assert not rows["x2"]["warning"]


def test_square_of_a_finite_input_is_exact():
    c = Circuit.from_dict({"inputs": {"b": {"dist": "uniform", "values": [-1, 0, 2]}},
                           "nodes": [{"id": "y", "op": "mul", "args": ["b", "b"]}],
                           "output": "y"})
    a = analyse(c, CircuitConfig(method="sparse", tracked=(("b", "b"),)))
    y = {r["id"]: r for r in a.rows()}["y"]
    assert y["mean_est"] == pytest.approx(y["mean_true"]) and y["var_est"] == pytest.approx(
        y["var_true"])
    assert y["warning"] == ""


def test_cli_shows_the_warning(capsys):
    args = ["circuit", "--circuit", "random", "--method", "sparse", "--track", "all"]
    assert main(args + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {n["id"]: n["warning"] for n in d["nodes"]}["x3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "! see notes" in out and "fourth-moment closure" in out
