"""AppTest of the Causal scrubbing page: the numbers shown are the library's, a reference
hypothesis applies, the partition round-trips through the URL, and bad uploads or links are
reported while the current partition is kept."""

from __future__ import annotations


import pytest

from app import scrubbing as glue
from app import state
from estimators import zoo
from estimators.scrubbing import PathError, PathGraph, PathPartition, ScrubData, Scrubber
from estimators.scrubbing import references
from tests.app.conftest import assert_no_exception, link_blob, open_page

PAGE = "scrubbing.py"


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _library(model_name: str, p: PathPartition, n: int = 256, seed: int = 0):
    model = zoo.get(model_name).load_model("cpu")
    [r] = Scrubber(model, ScrubData.from_zoo(model_name, n=n, seed=seed), seed=seed).evaluate([p])
    return r


def _expected(r) -> dict[str, str]:
    s = r.surprise
    return {"Loss original": f"{r.loss_original:.4f}", "Loss scrubbed": f"{r.loss_scrubbed:.4f}",
            "Loss all resampled": f"{r.loss_random:.4f}",
            "Loss recovered": glue.fmt_percent(r.loss_recovered),
            "S(π) argument": f"{s.argument_bits:,.1f} bits",
            "S(Y|π) data": f"{s.data_bits:,.1f} bits", "Total": f"{s.total_bits:,.1f} bits"}


def _url_partition(at) -> PathPartition:
    return PathPartition.from_dict(link_blob(at, "partition"))


def _needs(model_name: str):
    try:
        zoo.get(model_name).load_model("cpu")
    except Exception as e:
        pytest.skip(f"zoo model {model_name} does not load here ({e})")


def test_default_model_reference_hypothesis_shows_the_librarys_numbers():
    _needs(zoo.DEFAULT_MODEL)
    refs = references.available(zoo.DEFAULT_MODEL)
    assert refs, "the default model ships reference hypotheses"
    at = open_page(PAGE)
    assert_no_exception(at)
    assert "Causal scrubbing" in [t.value for t in at.title]
    # the empty partition: loss recovered 0 %
    assert _metrics(at)["Loss recovered"] == "0.00%"
    ref = refs[-1]
    at.selectbox(key="_scrub_ref").set_value(ref.name).run()
    at.button(key="_scrub_apply_ref").click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert _metrics(at) == _expected(_library(zoo.DEFAULT_MODEL, ref.partition))
    assert _url_partition(at).hash == ref.partition.hash
    # the comparison table shows every shipped reference with the numbers recorded for it
    # (recorded at the page's default N = 256, seed 0)
    [table] = [d.value for d in at.table if "loss recovered %" in d.value.columns]
    shown = table[table["kind"] == "reference"].set_index("name")
    assert list(shown.index) == [r.name for r in refs]
    for r in refs:
        row = shown.loc[r.name]
        assert row["loss recovered %"] == pytest.approx(100 * r.recorded["loss_recovered"],
                                                        rel=1e-4, abs=1e-3)
        assert row["total bits"] == pytest.approx(r.recorded["total_bits"], rel=1e-4, abs=0.05)
    # a malformed upload: one clear error, the applied reference is kept
    before = _metrics(at)
    at.file_uploader(key="_scrub_upload").set_value(
        ("bad.json", b'{"important": ["embed>a9.0:q>logits"]}', "application/json")).run()
    assert_no_exception(at)
    errors = [e.value for e in at.error]
    assert any("bad.json" in e and "matches no path" in e for e in errors), errors
    assert _metrics(at) == before
    assert _url_partition(at).hash == ref.partition.hash


@pytest.mark.parametrize("content,needle", [
    (b"{not json", "not valid JSON"),
    (b'{"format": "heuristic-estimation-workbench/explanation", "version": 1, '
     b'"kind": "circuit", "payload": {}}', "needs a 'scrubbing'"),
    (b'{"important": ["*"], "blocks": [{"paths": ["embed>logits"]}]}', "must not overlap"),
])
def test_bad_upload_is_reported_and_the_partition_kept(content, needle):
    _needs("maxk")
    p = PathPartition(("embed>logits",), name="mine")
    at = open_page(PAGE, query={"model": "maxk", "partition": state.encode_blob(p.to_dict())})
    assert_no_exception(at)
    before = _metrics(at)
    assert before == _expected(_library("maxk", p))
    at.file_uploader(key="_scrub_upload").set_value(("x.json", content, "application/json"))
    at.run()
    assert_no_exception(at)
    assert any(needle in e.value for e in at.error), [e.value for e in at.error]
    assert _metrics(at) == before
    assert _url_partition(at).hash == p.hash


def test_upload_of_a_downloaded_explanation_applies_it():
    _needs("maxk")
    at = open_page(PAGE, query={"model": "maxk"})
    p = PathPartition(("*>a0.0:v>logits",), name="ov only")
    data = glue.download_bytes(p, {"model": "maxk"})
    at.file_uploader(key="_scrub_upload").set_value(("e.json", data, "application/json")).run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert _url_partition(at).hash == p.hash
    assert _metrics(at) == _expected(_library("maxk", p))


def test_malformed_link_is_reported_and_page_still_works():
    _needs("maxk")
    at = open_page(PAGE, query={"model": "maxk", "partition": "not-a-blob!"})
    assert_no_exception(at)
    assert any("link" in e.value for e in at.error)
    assert _metrics(at)["Loss recovered"] == "0.00%"


def test_percent_format():
    assert glue.fmt_percent(-1e-9) == "0.00%"
    assert glue.fmt_percent(0.68391) == "68.39%"
    assert glue.fmt_percent(-0.5) == "-50.00%"
    assert glue.fmt_percent(float("nan")) == "n/a"


def test_table_rows_and_click_toggles():
    g = PathGraph(n_layers=2, n_heads=2, attn_only=True)
    p = PathPartition(("embed>logits",), (glue.Block(("embed>a1.*:v>logits",),
                                                     "match:token_at:-1"),))
    rows = glue.partition_rows(p)
    assert glue.rows_to_partition(rows) == p
    with pytest.raises(PathError, match="one rule per block"):
        glue.rows_to_partition(rows + [{"group": "block 1", "pattern": "embed>a0.0:q>logits",
                                        "resample": "uniform"}])
    with pytest.raises(PathError, match="pattern is empty"):
        glue.rows_to_partition([{"group": "important", "pattern": "", "resample": ""}])
    q = glue.toggle_pattern(p, "*>a0.0:*>*", "important", "uniform", g)
    assert q.important == ("embed>logits", "*>a0.0:*>*")
    assert glue.toggle_pattern(q, "*>a0.0:*>*", "important", "uniform", g) == p
    with pytest.raises(PathError, match="already in block 1"):
        glue.toggle_pattern(p, "*>a1.0:*>logits", "important", "uniform", g)
    # a new block takes the chosen rule; an existing block keeps its own
    r = glue.toggle_pattern(p, "embed>a0.1:k>logits", "block 2", "match:label", g)
    assert r.blocks[1].resample == "match:label"
    r = glue.toggle_pattern(p, "embed>a0.1:k>logits", "block 1", "uniform", g)
    assert r.blocks[0].resample == "match:token_at:-1"


def test_search_and_anomaly_on_the_default_model():
    _needs(zoo.DEFAULT_MODEL)
    at = open_page(PAGE)
    at.number_input(key="_scrub_n").set_value(64).run()
    at.number_input(key="_scrub_steps").set_value(2).run()
    at.button(key="_scrub_search").click().run()
    assert_no_exception(at)
    at.button(key="_scrub_apply_best").click().run()
    assert_no_exception(at)
    best = _url_partition(at)
    from estimators.scrubbing.search import greedy_search

    model = zoo.get(zoo.DEFAULT_MODEL).load_model("cpu")
    s = Scrubber(model, ScrubData.from_zoo(zoo.DEFAULT_MODEL, n=64, seed=0), seed=0)
    steps = greedy_search(s, unit="node", max_steps=2)
    assert best.hash == steps[-1].result.partition.hash
    assert _metrics(at) == _expected(steps[-1].result)
    # the anomaly demo's AUC is the library's
    at.checkbox(key="_scrub_anomaly").check().run()
    assert_no_exception(at)
    from estimators.scrubbing.anomaly import anomaly_demo

    demo = anomaly_demo(s, best, ScrubData.from_zoo(zoo.DEFAULT_MODEL, n=64, seed=1), seed=0)
    assert _metrics(at)["ROC AUC (scrubbed)"] == f"{demo['scrubbed']['auc']:.3f}"


def test_parens_matched_reference_through_the_page():
    _needs("parens")
    ref = references.get("parens", "only the first character matters")
    at = open_page(PAGE, query={"model": "parens"})
    at.selectbox(key="_scrub_ref").set_value(ref.name).run()
    at.button(key="_scrub_apply_ref").click().run()
    assert_no_exception(at)
    assert _metrics(at) == _expected(_library("parens", ref.partition))


def _table_app():
    import streamlit as st

    from app import scrubbing_view as view
    from estimators.scrubbing import PathGraph, PathPartition

    g = PathGraph(n_layers=2, n_heads=2, attn_only=True)
    ss = st.session_state
    ss.setdefault("scrub_msgs", [])
    ss.setdefault("scrub_part", PathPartition(("*>a1.0:*>*",), name="one head"))
    if ss.get("bad_edit"):
        ss.bad_edit = False
        view._apply_table_edit(ss.scrub_part, g, [], [{"group": "block 1", "pattern": "",
                                                       "resample": ""}])
    if ss.get("good_edit"):
        ss.good_edit = False
        view._apply_table_edit(ss.scrub_part, g, [], [{"group": "important",
                                                       "pattern": "embed>logits",
                                                       "resample": ""}])
    for kind, msg in ss.scrub_msgs:
        getattr(st, kind)(msg)
    ss.scrub_msgs = []
    view.partition_table(ss.scrub_part, g)


def test_partition_table_shows_the_rows_and_refuses_a_bad_edit():
    """The partition shows as a static table numbered as the messages count rows; a bad edit is
    one error, the partition kept and the editor rolled back (its key's nonce moves on); a good
    one becomes the partition in use, renamed as edited."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_table_app).run()
    assert_no_exception(at)
    [shown] = [t.value for t in at.table]
    assert list(shown["pattern"]) == ["*>a1.0:*>*"] and list(shown.index) == [1]
    at.session_state["bad_edit"] = True
    at.run()
    assert_no_exception(at)
    assert [e.value for e in at.error] == [
        "Table not applied: row 1: the pattern is empty (the current partition is kept)"]
    assert at.session_state["scrub_part"].important == ("*>a1.0:*>*",)
    assert at.session_state["scrub_nonce"] == 1
    at.session_state["good_edit"] = True
    at.run()
    assert_no_exception(at)
    assert not at.error
    assert at.session_state["scrub_part"].important == ("embed>logits",)
    assert at.session_state["scrub_part"].name == "one head (edited)"


def test_charts_are_drawn_on_request():
    _needs(zoo.DEFAULT_MODEL)
    at = open_page(PAGE)
    n_before = len(at.get("plotly_chart"))
    at.toggle(key="_scrub_charts").set_value(True).run()
    assert_no_exception(at)
    assert len(at.get("plotly_chart")) == n_before + 2  # the waterfall and the loss bars
