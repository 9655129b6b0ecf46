"""Ranking suite, causal scrubbing: on each zoo model a hypothesis whose quality is known by
construction or by the training task has lower total surprise S(π) + S(Y|π) than *both* trivial
ones (nothing claimed: the naive all-independent partition; everything claimed: every path
important), and the greedy search from the naive start ends below both.

Known-good hypotheses:
  * induction: the refined induction circuit (shipped reference "all three, refined");
  * parens: label-matched resampling of every path (the output is the balanced/unbalanced
    label by the training task);
  * maxk: label-matched resampling of every path (the label is the max token, the answer);
  * charlm: no hypothesis is known by construction; the search must still beat both trivial
    ones.
"""

import pytest

from estimators import zoo
from estimators.scrubbing import ScrubData, Scrubber, references
from estimators.scrubbing.partition import Block, PathPartition
from estimators.scrubbing.search import greedy_search

NAIVE = PathPartition(name="nothing claimed")
EVERYTHING = PathPartition(("*",), name="everything claimed")
LABEL = PathPartition(blocks=(Block(("*",), "match:label"),), name="only the label matters")
CASES = {  # model: (examples, known-good partition or None, search steps)
    "induction": (128, "refined", 3),
    "parens": (128, LABEL, 2),
    "maxk": (128, LABEL, 2),
    "charlm": (64, None, 1),
}


def _totals(name):
    n, good, steps = CASES[name]
    model = zoo.get(name).load_model("cpu")
    s = Scrubber(model, ScrubData.from_zoo(name, n=n, seed=0), seed=0)
    if good == "refined":
        good = references.get("induction", "all three, refined").partition
    parts = [NAIVE, EVERYTHING] + ([good] if good is not None else [])
    res = s.evaluate(parts)
    out = {p.name: r.surprise.total_bits for p, r in zip(parts, res)}
    found = greedy_search(s, max_steps=steps)
    out["greedy search"] = found[-1].result.surprise.total_bits
    return out, good


@pytest.mark.parametrize("name", list(CASES))
def test_good_hypothesis_and_search_beat_both_trivial_ones(name):
    totals, good = _totals(name)
    trivial = min(totals["nothing claimed"], totals["everything claimed"])
    if good is not None:
        assert totals[good.name] < trivial, totals
    assert totals["greedy search"] < trivial, totals


def test_claiming_everything_costs_at_least_one_parameter_per_path():
    model = zoo.get("induction").load_model("cpu")
    s = Scrubber(model, ScrubData.from_zoo("induction", n=16, seed=0), seed=0,
                 bits_per_parameter=2.5)
    [naive, every] = s.evaluate([NAIVE, EVERYTHING])
    assert naive.surprise.argument_bits == 0.0
    assert every.surprise.argument_bits >= s.graph.n_paths * 2.5
    assert every.surprise.data_bits == pytest.approx(0.0, abs=1e-3)


def test_scrub_cli_bits_per_parameter(capsys):
    import json

    from estimators.cli import main

    args = ["scrub", "--model", "induction", "--n", "16", "--reference", "all three, refined",
            "--json"]
    assert main(args + ["--bits-per-parameter", "2"]) == 0
    d = json.loads(capsys.readouterr().out)
    model = zoo.get("induction").load_model("cpu")
    s = Scrubber(model, ScrubData.from_zoo("induction", n=16, seed=0), seed=0,
                 bits_per_parameter=2.0)
    [r] = s.evaluate([references.get("induction", "all three, refined").partition])
    assert d["surprise"]["argument_bits"] == pytest.approx(r.surprise.argument_bits)
    assert any(k.startswith("argument:important") for k in d["surprise"]["parts"])
    assert main(args + ["--bits-per-parameter", "-1"]) == 2
    assert "--bits-per-parameter" in capsys.readouterr().err
