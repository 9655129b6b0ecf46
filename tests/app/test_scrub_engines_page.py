"""The Causal scrubbing page under both engines (AppTest): on a model small enough to treeify the
treeified and edge engines show the same losses for a hypothesis both express, the presets work
under both, references the edge engine cannot express get a note in the comparison table; on a
model beyond the path limit the page picks the edge engine, evaluates an edge hypothesis with the
library's numbers and all-important is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app import scrubbing as glue
from app import state
from app.plots.scrubbing import MAX_DRAWN_EDGES, component_graph, edge_summary
from estimators.loading import save_checkpoint
from estimators.scrubbing import PathPartition, ScrubData
from estimators.scrubbing.edges import EdgeGraph, EdgeScrubber
from estimators.scrubbing.partition import REST
from tests.app.conftest import assert_no_exception, open_page
from tests.scrubbing.helpers import tiny_model

PAGE = "scrubbing.py"
LOSSES = ("Loss original", "Loss scrubbed", "Loss all resampled", "Loss recovered",
          "S(Y|π) data")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def _open(query: dict):
    at = open_page(PAGE, query=query)
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    return at


def test_both_engines_show_the_same_losses_on_induction():
    p = PathPartition(("embed>logits", "*>a0.1:*>a1.0:k>*"),
                      (glue.Block(("*>a1.1:*>logits",), "match:token_at:-1"),), name="mine")
    q = {"model": "induction", "scrub_n": "32", "partition": state.encode_blob(p.to_dict())}
    tree = _open({**q, "scrub_engine": "treeified"})
    edge = _open({**q, "scrub_engine": "edges"})
    assert "treeified, as chosen" in _captions(tree) and "edges, as chosen" in _captions(edge)
    mt, me = _metrics(tree), _metrics(edge)
    assert {k: mt[k] for k in LOSSES} == {k: me[k] for k in LOSSES}
    assert mt["S(π) argument"] != me["S(π) argument"]  # counted over paths vs edges
    assert "Edge engine: a pattern names single edges" in _captions(edge)
    # the comparison table: the shipped references written in multi-edge paths get a note
    [table] = [d.value for d in edge.table if "loss recovered %" in d.value.columns]
    refs = table[table["kind"] == "reference"]
    assert refs["note"].str.contains("more than one edge").any()
    cur = table[table["kind"] == "current"].iloc[0]
    assert cur["note"] == "" and cur["loss scrubbed"] == pytest.approx(
        float(me["Loss scrubbed"]), abs=1e-4)
    # presets under the edge engine: all important is the model itself, clear is 0 %
    edge.button(key="_scrub_all").click().run()
    assert_no_exception(edge)
    m = _metrics(edge)
    assert m["Loss scrubbed"] == m["Loss original"] and m["Loss recovered"] == "100.00%"
    edge.button(key="_scrub_clear").click().run()
    assert _metrics(edge)["Loss recovered"] == "0.00%"
    # switching engine keeps an expressible partition and says which engine runs
    edge.selectbox(key="_scrub_engine").set_value("auto").run()
    assert_no_exception(edge)
    assert "auto: treeified" in _captions(edge)


def test_a_multi_edge_pattern_is_one_line_under_the_edge_engine():
    at = _open({"model": "induction", "scrub_n": "16", "scrub_engine": "edges"})
    at.file_uploader(key="_scrub_upload").set_value(
        ("p.json", json.dumps({"important": ["embed>a0.0:q>a1.0:v>logits"]}).encode(),
         "application/json")).run()
    assert_no_exception(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "more than one edge" in errors[0], errors
    assert _metrics(at)["Loss recovered"] == "0.00%"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A checkpoint beyond the treeified limit (4 layers × 4 heads with MLPs: 456,976 paths,
    479 edges) and 16 token sequences for it."""
    root = tmp_path_factory.mktemp("big")
    model = tiny_model(False, n_layers=4, n_heads=4, seed=2)
    save_checkpoint(model, root / "model")
    seqs = torch.randint(0, 11, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    (root / "seqs.json").write_text(json.dumps(seqs))
    return str(root / "model"), f"tokens:{root / 'seqs.json'}", seqs


def test_page_beyond_the_path_limit_evaluates_an_edge_hypothesis(big):
    folder, spec, seqs = big
    p = PathPartition(("embed>logits", "*>a3.1:*>*", "*>m2>a3.0:k>*"),
                      (glue.Block(("*>a3.2:*>logits",), "uniform"),), name="edges")
    at = _open({"model": folder, "data": spec, "scrub_n": "8",
                "partition": state.encode_blob(p.to_dict())})
    assert "auto: edges, this model has 456,976 treeified paths" in _captions(at)
    from estimators.loading import load_model

    model = load_model(folder, "cpu").model
    data = ScrubData.from_sequences(seqs[:8], 11, 8)
    s = EdgeScrubber(model, data, seed=0)
    r_p, r_all = s.evaluate([p, PathPartition(("*",))])
    m = _metrics(at)
    assert m["Loss scrubbed"] == f"{r_p.loss_scrubbed:.4f}"
    assert m["Loss original"] == f"{r_p.loss_original:.4f}"
    assert m["Total"] == f"{r_p.surprise.total_bits:,.1f} bits"
    assert r_all.loss_scrubbed == r_all.loss_original  # all important: exact, bit for bit
    assert torch.equal(r_all.per_example_scrubbed, r_all.per_example_original)
    at.button(key="_scrub_all").click().run()
    assert_no_exception(at)
    m = _metrics(at)
    assert m["Loss scrubbed"] == m["Loss original"] and m["Loss recovered"] == "100.00%"
    # the greedy search runs over edges/nodes and states why it stopped; the anomaly demo runs
    at.number_input(key="_scrub_steps").set_value(1).run()
    at.button(key="_scrub_search").click().run()
    assert_no_exception(at)
    assert "Stopped: " in _captions(at) and "re-evaluated alone" in _captions(at)
    from estimators.scrubbing.search import greedy_search

    lib = greedy_search(EdgeScrubber(model, data, seed=0), unit="node", max_steps=1,
                        start=PathPartition(("*",), name="all paths important"))
    [steps] = [d.value for d in at.dataframe if "total_bits" in d.value.columns]
    assert list(steps["total_bits"]) == pytest.approx(
        [st.result.surprise.total_bits for st in lib], rel=1e-6)
    at.checkbox(key="_scrub_anomaly").check().run()
    assert_no_exception(at)
    assert any(m.label == "ROC AUC (scrubbed)" for m in at.metric)
    # asking for the treeified engine is one clear line
    at.selectbox(key="_scrub_engine").set_value("treeified").run()
    assert_no_exception(at)
    assert [e.value for e in at.error] == [
        "the treeified engine enumerates at most 200,000 paths and this model has 456,976: "
        "use the edge engine (auto picks it)"]


def test_gpt2_small_graph_draws_named_edges_and_bundles_the_rest():
    """32k edges: the hypothesis' edges one by one, the rest as one bundle per
    (source column, receiver column): the figure stays small."""
    eg = EdgeGraph(12, 12, False, n_ctx=1024)
    p = PathPartition(("*>a5.3:*>*", "embed>logits"))
    a = eg.assign(p)
    summary = edge_summary(eg, a)
    assert summary[0]["edges"] == int((a == 0).sum()) < MAX_DRAWN_EDGES
    assert "bundles" in summary[REST] and sum(summary[REST]["bundles"].values()) == \
        eg.n_edges - summary[0]["edges"]
    fig = component_graph(eg, a)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) <= len(summary[REST]["bundles"]) + 1
    named = [t for t in lines if t.line.width == 2.5]
    assert len(named) == 1 and sum(x is None for x in named[0].x) == summary[0]["edges"]
    everything = eg.assign(PathPartition(("*",)))
    assert "bundles" in edge_summary(eg, everything)[0]
    assert np.all(everything == 0)


def test_switching_engines_sets_aside_and_restores_a_multi_edge_partition():
    """A treeified partition the edge engine cannot express is refused with one message under
    edges, and switching back (unedited) restores it instead of losing it; a garbage
    `scrub_engine` in the link is one warning and auto."""
    p = PathPartition(("*>a0.1:q>*>*",), name="multi")
    at = _open({"model": "induction", "scrub_n": "16", "scrub_engine": "treeified",
                "partition": state.encode_blob(p.to_dict())})
    before = _metrics(at)
    assert before["Loss recovered"] != "0.00%"
    at.selectbox(key="_scrub_engine").set_value("edges").run()
    assert_no_exception(at)
    [err] = [e.value for e in at.error]
    assert "previous engine does not fit this engine" in err and "switching back" in err
    assert _metrics(at)["Loss recovered"] == "0.00%"
    at.selectbox(key="_scrub_engine").set_value("treeified").run()
    assert_no_exception(at)
    assert not at.error and _metrics(at) == before
    bad = open_page(PAGE, query={"model": "induction", "scrub_n": "16",
                                 "scrub_engine": "garbage"})
    assert_no_exception(bad)
    assert [w.value for w in bad.warning] == [
        "The link's scrub_engine 'garbage' is not one of auto, treeified, edges; using auto."]
