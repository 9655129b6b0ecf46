"""A seeded random-circuit generator (pure Python `random.Random(seed)`, so the same seed gives
the same circuit on every machine).

Arguments are drawn with weights growing with recency, so circuits are deep and reuse variables
(the reuse is what makes independence fail). A product whose degree would exceed `max_degree` is
turned into a sum, which keeps exact expansion cheap."""

from __future__ import annotations

import random

from estimators.circuits.model import DISTS, Circuit, CircuitError, InputDist, Node


def _random_input(rng: random.Random, dist: str) -> InputDist:
    if dist == "normal":
        return InputDist("normal", mean=rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
                         var=rng.choice([0.25, 0.5, 1.0]))
    if dist == "bernoulli":
        return InputDist("bernoulli", p=rng.choice([0.2, 0.3, 0.5, 0.7]))
    k = rng.choice([2, 3, 4])
    return InputDist("uniform", values=tuple(float(v) for v in rng.sample(range(-2, 4), k)))


def random_circuit(seed: int, n_inputs: int = 3, n_nodes: int = 8, max_degree: int = 4,
                   dists: tuple[str, ...] = DISTS, p_mul: float = 0.5,
                   p_const: float = 0.1) -> Circuit:
    """Inputs z1..zn (laws drawn from `dists`), nodes x1..xm; the output is the last node."""
    if n_inputs < 1 or n_nodes < 1 or max_degree < 1:
        raise CircuitError("n_inputs, n_nodes and max_degree must be >= 1")
    bad = [d for d in dists if d not in DISTS]
    if bad or not dists:
        raise CircuitError(f"unknown distribution(s) {bad}; use some of {list(DISTS)}")
    rng = random.Random(int(seed))
    inputs = {f"z{i + 1}": _random_input(rng, rng.choice(list(dists))) for i in range(n_inputs)}
    names = list(inputs)
    degree = {k: 1 for k in inputs}
    nodes: list[Node] = []
    for j in range(n_nodes):
        nid = f"x{j + 1}"
        if j < n_nodes - 1 and rng.random() < p_const:
            nodes.append(Node(nid, "const", value=float(rng.choice([-2, -1, 0.5, 2, 3]))))
            names.append(nid)
            degree[nid] = 0
            continue
        weights = [(1.0 + i) ** 2 for i in range(len(names))]
        a, b = rng.choices(names, weights=weights, k=2)
        if degree[a] == 0 and degree[b] == 0:  # keep the circuit non-trivial
            a = rng.choice(list(inputs))
        op = "mul" if rng.random() < p_mul else rng.choice(["add", "sub"])
        if op == "mul" and degree[a] + degree[b] > max_degree:
            op = "add"
        nodes.append(Node(nid, op, (a, b)))
        names.append(nid)
        degree[nid] = degree[a] + degree[b] if op == "mul" else max(degree[a], degree[b])
    return Circuit(inputs=inputs, nodes=tuple(nodes), output=nodes[-1].id,
                   name=f"random(seed={seed})")
