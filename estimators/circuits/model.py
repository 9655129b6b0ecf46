"""Arithmetic circuits (background.md §3): a DAG of add/sub/mul/const nodes over independent
inputs, each Gaussian, Bernoulli, or uniform on a finite set.

JSON format (`Circuit.from_dict` / `to_dict`)::

    {"inputs": {"a": {"dist": "normal", "mean": 0, "var": 1},
                "b": {"dist": "bernoulli", "p": 0.3},
                "c": {"dist": "uniform", "values": [-1, 0, 2]}},
     "nodes": [{"id": "x", "op": "mul", "args": ["a", "b"]},
               {"id": "y", "op": "add", "args": ["x", "a"]},
               {"id": "k", "op": "const", "value": 2.5}],
     "output": "y"}

An optional top-level "description" (text) is kept; "name" is taken from the file or preset.
`add`, `sub` (args[0] − args[1]) and `mul` take exactly two args (the same id twice is allowed:
x·x); `const` takes none and a finite `value`. Nodes may be listed in any order; cycles, unknown
args, duplicate ids, bad distributions and a missing output raise `CircuitError` (a ValueError)
with a one-line message naming the culprit. Inputs are independent of each other.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

DISTS = ("normal", "bernoulli", "uniform")
OPS = ("add", "sub", "mul", "const")
BINARY_OPS = ("add", "sub", "mul")
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")


class CircuitError(ValueError):
    """A malformed circuit (or a request that does not fit it)."""


def _finite(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise CircuitError(f"{what} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise CircuitError(f"{what} must be finite, got {x}")
    return x


def _check_id(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _ID.match(name):
        raise CircuitError(f"{what} {name!r} is not a valid id (letters, digits, _ . -, "
                           f"starting with a letter or _, at most 64 characters)")
    return name


@dataclass(frozen=True)
class InputDist:
    """One input variable's law: normal(mean, var), bernoulli(p) in {0, 1}, or uniform over a
    finite list of values (repeats allowed: they weight a value)."""

    dist: str
    mean: float = 0.0
    var: float = 1.0
    p: float = 0.5
    values: tuple[float, ...] = ()

    def __post_init__(self):
        if self.dist not in DISTS:
            raise CircuitError(f"unknown distribution {self.dist!r}; use one of {list(DISTS)}")
        if self.dist == "normal":
            object.__setattr__(self, "mean", _finite(self.mean, "normal 'mean'"))
            var = _finite(self.var, "normal 'var'")
            if var < 0:
                raise CircuitError(f"normal 'var' must be >= 0, got {var}")
            object.__setattr__(self, "var", var)
        elif self.dist == "bernoulli":
            p = _finite(self.p, "bernoulli 'p'")
            if not 0.0 <= p <= 1.0:
                raise CircuitError(f"bernoulli 'p' must be in [0, 1], got {p}")
            object.__setattr__(self, "p", p)
        else:
            if isinstance(self.values, (str, bytes)) or not hasattr(self.values, "__len__") \
                    or len(self.values) == 0:
                raise CircuitError("uniform 'values' must be a non-empty list of numbers")
            if len(self.values) > 1024:
                raise CircuitError("uniform 'values' may hold at most 1024 values")
            object.__setattr__(self, "values",
                               tuple(_finite(v, "uniform value") for v in self.values))

    @property
    def is_finite(self) -> bool:
        return self.dist != "normal" or self.var == 0.0

    @property
    def expectation(self) -> float:
        if self.dist == "normal":
            return self.mean
        if self.dist == "bernoulli":
            return self.p
        return math.fsum(self.values) / len(self.values)

    def support(self) -> tuple[list[float], list[float]]:
        """(values, probabilities) of a finite law."""
        if self.dist == "normal":
            if self.var != 0.0:
                raise CircuitError("a normal input with var > 0 has no finite support")
            return [self.mean], [1.0]
        if self.dist == "bernoulli":
            return [0.0, 1.0], [1.0 - self.p, self.p]
        n = len(self.values)
        return list(self.values), [1.0 / n] * n

    def central_moments(self, k_max: int) -> list[float]:
        """E[(z − E z)^k] for k = 0..k_max, exactly (Gaussian: (k−1)!!·σ^k for even k)."""
        if self.dist == "normal":
            out = [1.0]
            for k in range(1, k_max + 1):
                # m_k = (k−1)·σ²·m_{k−2}: the standard recursion (Stein's lemma)
                out.append(0.0 if k % 2 else (k - 1) * self.var * out[k - 2])
            return out
        vals, probs = self.support()
        mu = self.expectation
        return [math.fsum(q * (v - mu) ** k for v, q in zip(vals, probs))
                for k in range(k_max + 1)]

    def sample(self, n: int, generator: torch.Generator, device: torch.device,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """n independent draws, shape [n]."""
        if self.dist == "normal":
            z = torch.randn(n, generator=generator, device=device, dtype=dtype)
            return self.mean + math.sqrt(self.var) * z
        if self.dist == "bernoulli":
            u = torch.rand(n, generator=generator, device=device, dtype=dtype)
            return (u < self.p).to(dtype)
        table = torch.tensor(self.values, device=device, dtype=dtype)
        idx = torch.randint(len(self.values), (n,), generator=generator, device=device)
        return table[idx]

    def to_dict(self) -> dict:
        if self.dist == "normal":
            return {"dist": "normal", "mean": self.mean, "var": self.var}
        if self.dist == "bernoulli":
            return {"dist": "bernoulli", "p": self.p}
        return {"dist": "uniform", "values": list(self.values)}

    @classmethod
    def from_dict(cls, d: Any, name: str = "?") -> "InputDist":
        if not isinstance(d, dict):
            raise CircuitError(f"input {name!r} must be an object like "
                               f'{{"dist": "normal", "mean": 0, "var": 1}}')
        dist = d.get("dist")
        allowed = {"normal": {"mean", "var"}, "bernoulli": {"p"}, "uniform": {"values"}}
        if dist not in allowed:
            raise CircuitError(f"input {name!r}: unknown distribution {dist!r}; use one of "
                               f"{list(DISTS)}")
        extra = set(d) - allowed[dist] - {"dist"}
        if extra:
            raise CircuitError(f"input {name!r}: unexpected field(s) {sorted(extra)} for a "
                               f"{dist} input (allowed: {sorted(allowed[dist])})")
        missing = {"bernoulli": {"p"}, "uniform": {"values"}}.get(dist, set()) - set(d)
        if missing:
            raise CircuitError(f"input {name!r}: a {dist} input needs {sorted(missing)}")
        try:
            return cls(dist=dist, **{k: v for k, v in d.items() if k != "dist"})
        except CircuitError as e:
            raise CircuitError(f"input {name!r}: {e}") from None


@dataclass(frozen=True)
class Node:
    id: str
    op: str
    args: tuple[str, ...] = ()
    value: float = 0.0

    def __post_init__(self):
        _check_id(self.id, "node id")
        if self.op not in OPS:
            raise CircuitError(f"node {self.id!r}: unknown op {self.op!r}; use one of {list(OPS)}")
        args = tuple(self.args) if not isinstance(self.args, str) else (self.args,)
        object.__setattr__(self, "args", args)
        if self.op == "const":
            if args:
                raise CircuitError(f"node {self.id!r}: a const node takes no args")
            object.__setattr__(self, "value", _finite(self.value, f"node {self.id!r} value"))
        else:
            if len(args) != 2:
                raise CircuitError(f"node {self.id!r}: op {self.op!r} takes exactly 2 args, "
                                   f"got {len(args)}")
            for a in args:
                if not isinstance(a, str):
                    raise CircuitError(f"node {self.id!r}: args must be ids, got {a!r}")

    def to_dict(self) -> dict:
        if self.op == "const":
            return {"id": self.id, "op": "const", "value": self.value}
        return {"id": self.id, "op": self.op, "args": list(self.args)}

    @classmethod
    def from_dict(cls, d: Any) -> "Node":
        if not isinstance(d, dict):
            raise CircuitError(f"each node must be an object like "
                               f'{{"id": "x", "op": "mul", "args": ["a", "b"]}}, got {d!r}')
        if "id" not in d or "op" not in d:
            raise CircuitError(f"a node needs 'id' and 'op': {json.dumps(d)[:80]}")
        extra = set(d) - {"id", "op", "args", "value"}
        if extra:
            raise CircuitError(f"node {d['id']!r}: unexpected field(s) {sorted(extra)}")
        if d["op"] == "const" and "value" not in d:
            raise CircuitError(f"node {d['id']!r}: a const node needs 'value'")
        args = d.get("args", [])
        if not isinstance(args, list):
            raise CircuitError(f"node {d['id']!r}: 'args' must be a list of ids")
        return cls(id=d["id"], op=d["op"], args=tuple(args), value=d.get("value", 0.0))


@dataclass(frozen=True)
class Circuit:
    """Inputs, nodes and the output id. `order` lists every variable (inputs first, then nodes in
    a topological order); `index[id]` is its position there."""

    inputs: dict[str, InputDist]
    nodes: tuple[Node, ...]
    output: str
    name: str = field(default="", compare=False)
    description: str = field(default="", compare=False)
    order: tuple[str, ...] = field(init=False, repr=False, compare=False)
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.inputs, dict) or not self.inputs:
            raise CircuitError("a circuit needs at least one input")
        for name, dist in self.inputs.items():
            _check_id(name, "input name")
            if not isinstance(dist, InputDist):
                raise CircuitError(f"input {name!r} must be an InputDist")
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        seen: set[str] = set(self.inputs)
        for n in nodes:
            if n.id in seen:
                raise CircuitError(f"duplicate id {n.id!r}")
            seen.add(n.id)
        for n in nodes:
            for a in n.args:
                if a not in seen:
                    raise CircuitError(f"node {n.id!r} uses unknown argument {a!r}")
        if not isinstance(self.output, str) or self.output not in seen:
            raise CircuitError(f"output {self.output!r} is not an input or node of the circuit")
        object.__setattr__(self, "order", tuple(self.inputs) + self._topological(nodes))
        object.__setattr__(self, "index", {v: i for i, v in enumerate(self.order)})

    def _topological(self, nodes: tuple[Node, ...]) -> tuple[str, ...]:
        by_id = {n.id: n for n in nodes}
        state: dict[str, int] = {}  # 1 = on the stack, 2 = done
        out: list[str] = []
        for root in by_id:
            if state.get(root):
                continue
            stack = [(root, iter(by_id[root].args))]
            state[root] = 1
            while stack:  # iterative DFS: a long chain must not hit the recursion limit
                nid, it = stack[-1]
                nxt = next((a for a in it if a in by_id and state.get(a) != 2), None)
                if nxt is None:
                    stack.pop()
                    state[nid] = 2
                    out.append(nid)
                elif state.get(nxt) == 1:
                    cyc = [s for s, _ in stack]
                    cyc = cyc[cyc.index(nxt):] + [nxt]
                    raise CircuitError("the circuit has a cycle: " + " -> ".join(reversed(cyc)))
                else:
                    state[nxt] = 1
                    stack.append((nxt, iter(by_id[nxt].args)))
        return tuple(out)

    # ---- structure -------------------------------------------------------------------------
    @property
    def node_by_id(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    def kind(self, vid: str) -> str:
        """'input' or the node's op."""
        return "input" if vid in self.inputs else self.node_by_id[vid].op

    @property
    def all_inputs_finite(self) -> bool:
        return all(d.is_finite for d in self.inputs.values())

    def depths(self) -> dict[str, int]:
        """Inputs and constants at depth 0; a node one deeper than its deepest argument."""
        nb = self.node_by_id
        d: dict[str, int] = {}
        for v in self.order:
            node = nb.get(v)
            d[v] = 0 if node is None or node.op == "const" else 1 + max(d[a] for a in node.args)
        return d

    def degrees(self) -> dict[str, int]:
        """Polynomial degree of each variable in the inputs (an upper bound: cancellations such
        as x − x are not detected)."""
        nb = self.node_by_id
        g: dict[str, int] = {}
        for v in self.order:
            node = nb.get(v)
            if node is None:
                g[v] = 1
            elif node.op == "const":
                g[v] = 0
            elif node.op == "mul":
                g[v] = g[node.args[0]] + g[node.args[1]]
            else:
                g[v] = max(g[node.args[0]], g[node.args[1]])
        return g

    # ---- evaluation ------------------------------------------------------------------------
    def evaluate(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every variable's value on a batch of input values (each a tensor [N])."""
        vals = dict(inputs)
        ref = next(iter(inputs.values()))
        nb = self.node_by_id
        for v in self.order[len(self.inputs):]:
            n = nb[v]
            if n.op == "const":
                vals[v] = torch.full_like(ref, n.value)
            else:
                a, b = vals[n.args[0]], vals[n.args[1]]
                vals[v] = a + b if n.op == "add" else a - b if n.op == "sub" else a * b
        return vals

    def sample(self, n: int, seed: int, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
        """Every variable on n seeded independent draws of the inputs."""
        device = torch.device(device)
        gen = torch.Generator(device=device).manual_seed(int(seed))
        xs = {k: d.sample(n, gen, device, dtype) for k, d in self.inputs.items()}
        return self.evaluate(xs)

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"inputs": {k: d.to_dict() for k, d in self.inputs.items()},
             "nodes": [n.to_dict() for n in self.nodes], "output": self.output}
        if self.description:
            d["description"] = self.description
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: Any, name: str = "") -> "Circuit":
        if not isinstance(d, dict):
            raise CircuitError("a circuit must be a JSON object with 'inputs', 'nodes', 'output'")
        extra = set(d) - {"inputs", "nodes", "output", "name", "description"}
        if extra:
            raise CircuitError(f"unexpected top-level field(s) {sorted(extra)}; a circuit has "
                               f"'inputs', 'nodes', 'output'")
        if "output" not in d:
            raise CircuitError("the circuit has no 'output'")
        if not isinstance(d.get("inputs"), dict) or not d["inputs"]:
            raise CircuitError("'inputs' must be a non-empty object of name -> distribution")
        if not isinstance(d.get("nodes", []), list):
            raise CircuitError("'nodes' must be a list")
        if len(d.get("nodes", [])) + len(d["inputs"]) > MAX_NODES:
            raise CircuitError(f"the circuit has {len(d.get('nodes', [])) + len(d['inputs'])} "
                               f"inputs and nodes; the playground takes at most {MAX_NODES} "
                               f"(its exact and pairwise methods grow with the square)")
        for k in d["inputs"]:
            _check_id(k, "input name")
        inputs = {k: InputDist.from_dict(v, k) for k, v in d["inputs"].items()}
        nodes = tuple(Node.from_dict(n) for n in d.get("nodes", []))
        return cls(inputs=inputs, nodes=nodes, output=d["output"],
                   name=name or str(d.get("name", "")),
                   description=str(d.get("description", "")))

    @classmethod
    def from_json(cls, text: str | bytes, name: str = "") -> "Circuit":
        try:
            from estimators.validation import loads_json
            d = loads_json(text, "the circuit")
        except ValueError as e:  # size, depth or syntax: one line
            raise CircuitError(str(e)) from None
        return cls.from_dict(d, name=name)


PRESET_DIR = Path(__file__).parent / "presets"
MAX_NODES = 500  # inputs + nodes of one circuit: pair tracking and the exact truth are O(n²)


def list_presets() -> list[str]:
    """Teaching presets shipped with the library, in teaching order."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.json"))
    # file names start with a two-digit rank: 01_square.json -> "square"
    return [n.split("_", 1)[1] for n in names]


def preset_path(name: str) -> Path:
    for p in sorted(PRESET_DIR.glob("*.json")):
        if p.stem.split("_", 1)[1] == name:
            return p
    raise CircuitError(f"unknown preset {name!r}; presets are {list_presets()}")


def load_preset(name: str) -> Circuit:
    return Circuit.from_json(preset_path(name).read_text(), name=name)


def load_circuit(spec: str) -> Circuit:
    """A preset name or a path to a circuit JSON file."""
    if spec in list_presets():
        return load_preset(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        if spec.endswith(".json") or "/" in spec or path.exists():
            raise CircuitError(f"circuit file {spec} not found" if not path.exists()
                               else f"{spec} is not a file")
        raise CircuitError(f"{spec!r} is neither a preset ({', '.join(list_presets())}) nor a "
                           f"circuit JSON file")
    from estimators.explanation import unwrap
    from estimators.validation import read_json_path

    try:
        doc, context = unwrap(read_json_path(path, "circuit"), "circuit")
    except ValueError as e:  # size, depth, syntax, another page's file
        raise CircuitError(str(e)) from None
    if context is not None:  # the Arithmetic circuits page's explanation file
        doc = doc.get("circuit")
    return Circuit.from_dict(doc, name=path.stem)
