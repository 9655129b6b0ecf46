"""The circuit data model: JSON round trip, validation with clear errors, presets, generator."""

import json

import pytest
import torch

from estimators.circuits import (Circuit, CircuitError, InputDist, list_presets, load_circuit,
                                 load_preset, random_circuit)
from estimators.circuits.model import preset_path

GOOD = {"inputs": {"a": {"dist": "normal", "mean": 0, "var": 1},
                   "b": {"dist": "bernoulli", "p": 0.3},
                   "c": {"dist": "uniform", "values": [-1, 0, 2]}},
        "nodes": [{"id": "x", "op": "mul", "args": ["a", "b"]},
                  {"id": "y", "op": "add", "args": ["x", "a"]},
                  {"id": "k", "op": "const", "value": 2.5}],
        "output": "y"}


def test_issue_example_round_trips():
    c = Circuit.from_dict(GOOD)
    assert c.order[:3] == ("a", "b", "c")
    assert Circuit.from_dict(c.to_dict()) == c
    assert json.loads(c.to_json()) == {**GOOD, "inputs": {
        "a": {"dist": "normal", "mean": 0.0, "var": 1.0}, "b": {"dist": "bernoulli", "p": 0.3},
        "c": {"dist": "uniform", "values": [-1.0, 0.0, 2.0]}},
        "nodes": [GOOD["nodes"][0], GOOD["nodes"][1], {"id": "k", "op": "const", "value": 2.5}]}


def test_nodes_in_any_order_are_sorted_topologically():
    d = {**GOOD, "nodes": list(reversed(GOOD["nodes"]))}
    c = Circuit.from_dict(d)
    assert c.order.index("x") < c.order.index("y")


def _bad(mutate):
    d = json.loads(json.dumps(GOOD))
    mutate(d)
    return d


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["nodes"].extend([{"id": "p", "op": "add", "args": ["q", "a"]},
                                  {"id": "q", "op": "mul", "args": ["p", "a"]}]),
     "cycle: "),
    (lambda d: d["nodes"].append({"id": "s", "op": "add", "args": ["s", "a"]}), "cycle"),
    (lambda d: d["nodes"].append({"id": "p", "op": "add", "args": ["a", "nope"]}),
     "unknown argument 'nope'"),
    (lambda d: d["inputs"].update(z={"dist": "poisson", "lam": 1}), "unknown distribution"),
    (lambda d: d["inputs"].update(z={"dist": "bernoulli", "p": 1.5}), "'p' must be in [0, 1]"),
    (lambda d: d["inputs"].update(z={"dist": "normal", "mean": 0, "var": -1}), "var' must be >= 0"),
    (lambda d: d["inputs"].update(z={"dist": "normal", "mean": float("nan"), "var": 1}),
     "must be finite"),
    (lambda d: d["inputs"].update(z={"dist": "uniform", "values": []}), "non-empty"),
    (lambda d: d["inputs"].update(z={"dist": "bernoulli"}), "needs ['p']"),
    (lambda d: d["inputs"].update(z={"dist": "normal", "p": 0.3}), "unexpected field"),
    (lambda d: d["nodes"].append({"id": "a", "op": "add", "args": ["b", "c"]}),
     "duplicate id 'a'"),
    (lambda d: d["nodes"].append({"id": "x", "op": "add", "args": ["b", "c"]}),
     "duplicate id 'x'"),
    (lambda d: d.pop("output"), "no 'output'"),
    (lambda d: d.update(output="zz"), "output 'zz'"),
    (lambda d: d["nodes"].append({"id": "p", "op": "pow", "args": ["a", "b"]}), "unknown op"),
    (lambda d: d["nodes"].append({"id": "p", "op": "mul", "args": ["a"]}), "exactly 2 args"),
    (lambda d: d["nodes"].append({"id": "p", "op": "const"}), "needs 'value'"),
    (lambda d: d["nodes"].append({"id": "p q", "op": "const", "value": 1}), "not a valid id"),
    (lambda d: d.update(inputs={}), "non-empty"),
    (lambda d: d.update(extra=1), "unexpected top-level"),
])
def test_malformed_circuits_raise_clear_errors(mutate, message):
    with pytest.raises(CircuitError) as e:
        Circuit.from_dict(_bad(mutate))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_json_text():
    with pytest.raises(CircuitError, match="not valid JSON"):
        Circuit.from_json("{nodes: ")
    with pytest.raises(CircuitError, match="JSON object"):
        Circuit.from_json("[1, 2]")


def test_presets_load_and_teach():
    names = list_presets()
    assert names[:2] == ["square", "difference_of_squares"]
    assert {"power_chain", "random", "shared_coin"} <= set(names)
    for n in names:
        c = load_preset(n)
        assert c.description and c.output in c.order
    with pytest.raises(CircuitError, match="neither a preset"):
        load_circuit("no_such_preset")


def test_random_preset_is_the_generators_output():
    saved = json.loads(preset_path("random").read_text())
    saved.pop("description")
    assert random_circuit(1, n_inputs=3, n_nodes=8, max_degree=4).to_dict() == saved


def test_generator_is_seeded_and_respects_degree():
    a = random_circuit(5, n_inputs=4, n_nodes=12, max_degree=3)
    b = random_circuit(5, n_inputs=4, n_nodes=12, max_degree=3)
    c = random_circuit(6, n_inputs=4, n_nodes=12, max_degree=3)
    assert a.to_dict() == b.to_dict() != c.to_dict()
    assert max(a.degrees().values()) <= 3
    only_finite = random_circuit(3, dists=("bernoulli", "uniform"))
    assert only_finite.all_inputs_finite


def test_input_central_moments_closed_forms():
    g = InputDist("normal", mean=3.0, var=2.0).central_moments(6)
    assert g == [1.0, 0.0, 2.0, 0.0, 3 * 4.0, 0.0, 15 * 8.0]
    b = InputDist("bernoulli", p=0.3).central_moments(4)
    assert b[2] == pytest.approx(0.21) and b[3] == pytest.approx(0.3 * 0.7 * (0.7 - 0.3))
    u = InputDist("uniform", values=(-1, 0, 2)).central_moments(2)
    assert u[2] == pytest.approx(((-4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) / 3)


def test_sampling_matches_the_law():
    c = Circuit.from_dict(GOOD)
    s = c.sample(200_000, seed=3)
    assert set(torch.unique(s["b"]).tolist()) == {0.0, 1.0}
    assert set(torch.unique(s["c"]).tolist()) == {-1.0, 0.0, 2.0}
    # 5 standard errors
    assert abs(float(s["b"].mean()) - 0.3) < 5 * (0.21 / 200_000) ** 0.5
    assert abs(float(s["a"].var()) - 1.0) < 5 * (2 / 200_000) ** 0.5
