"""AppTest of the Arithmetic circuits page: the numbers shown are the library's, tracking a pair
changes them, and the argument round-trips through the URL and the explanation file."""

from __future__ import annotations

import pytest

from app import circuits as glue
from app import state
from estimators.circuits import CircuitConfig, analyse, load_preset, track_all
from streamlit.testing.v1 import AppTest

from estimators import zoo
from tests.app.conftest import (ROOT, TIMEOUT, assert_no_exception, link_blob, link_param,
                                open_page)

PAGE = "circuits.py"


def open_circuits(query: dict | None = None) -> AppTest:
    """The page script on its own: it needs no model, so these tests do not depend on the
    sidebar's model store (test_page_runs_inside_the_app covers the shell)."""
    at = AppTest.from_file(str(ROOT / "pages" / PAGE), default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def test_page_runs_inside_the_app():
    try:
        zoo.get(zoo.DEFAULT_MODEL).load_model("cpu")
    except Exception as e:  # the shell stops every page when no model loads
        pytest.skip(f"the default zoo model does not load here ({e})")
    at = open_page(PAGE, query={"circuit": "square"})
    assert_no_exception(at)
    assert "Arithmetic circuits" in [t.value for t in at.title]
    assert _metrics(at)["E[y] true"] == "2"


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _expected(a, out="y") -> dict[str, str]:
    s = a.surprise
    return {f"E[{out}] estimate": f"{a.estimate.mean_of(out):.6g}",
            f"E[{out}] true": f"{a.truth.mean_of(out):.6g}",
            f"Var[{out}] estimate": f"{a.estimate.var_of(out):.6g}",
            f"Var[{out}] true": f"{a.truth.var_of(out):.6g}",
            "S(π) argument": f"{s.argument_bits:,.2f} bits",
            "S(Y|π) data": f"{s.data_bits:,.2f} bits", "Total": f"{s.total_bits:,.2f} bits"}


def test_pick_preset_track_pair_changes_estimate_and_surprise():
    at = open_circuits()
    assert_no_exception(at)
    assert [t.value for t in at.title] == ["Arithmetic circuits"]
    at.selectbox(key="_circ_preset").set_value("difference_of_squares").run()
    assert_no_exception(at)
    c = load_preset("difference_of_squares")
    before = _metrics(at)
    assert before == _expected(analyse(c, CircuitConfig(method="sparse")))
    assert before["E[y] estimate"] == "3" and before["E[y] true"] == "3.75"

    ms = at.multiselect(key="_circ_pairs")
    ms.set_value([glue.pair_label(c, ("s", "d"))]).run()
    assert_no_exception(at)
    after = _metrics(at)
    assert after == _expected(analyse(c, CircuitConfig(method="sparse",
                                                       tracked=(("s", "d"),))))
    assert after["E[y] estimate"] == "3.75"
    assert after["S(π) argument"] != before["S(π) argument"]
    assert after["Total"] != before["Total"]
    base = analyse(c, CircuitConfig(method="independence")).surprise
    now = analyse(c, CircuitConfig(tracked=(("s", "d"),))).surprise
    total = next(m for m in at.metric if m.label == "Total")
    assert total.delta == f"{now.total_bits - base.total_bits:+,.2f} vs independence"
    assert now.total_bits < base.total_bits  # pointing out Cov(s, d) pays for itself
    # the argument is in the URL
    assert link_blob(at, "track") == [["s", "d"]]
    assert link_param(at, "circuit") == "difference_of_squares"


def test_track_all_and_wick_from_a_link():
    at = open_circuits({"circuit": "power_chain"})
    next(b for b in at.button if b.label == "Track all pairs").click().run()
    assert_no_exception(at)
    c = load_preset("power_chain")
    assert _metrics(at) == _expected(analyse(c, CircuitConfig(tracked=tuple(track_all(c)))))

    at = open_circuits({"circuit": "power_chain", "method": "wick", "order": "8"})
    assert_no_exception(at)
    shown = _metrics(at)
    assert shown == _expected(analyse(c, CircuitConfig(method="wick", order=8)))
    assert shown["E[y] estimate"] == shown["E[y] true"]  # order 8 = degree 8: exact


def test_link_with_tracked_pairs_reproduces_the_view():
    blob = state.encode_blob([["s", "t"]])
    at = open_circuits({"circuit": "shared_coin", "track": blob})
    assert_no_exception(at)
    c = load_preset("shared_coin")
    assert _metrics(at) == _expected(analyse(c, CircuitConfig(tracked=(("s", "t"),))))
    assert at.multiselect(key="_circ_pairs").value == [glue.pair_label(c, ("s", "t"))]


@pytest.mark.parametrize("query, message", [
    ({"circuit": "not-a-blob!!"}, "circuit could not be used"),
    ({"circuit": "square", "track": state.encode_blob([["x", "nope"]])}, "unknown id"),
    ({"circuit": "square", "method": "magic"}, "unknown"),
])
def test_bad_link_is_reported_and_a_working_view_kept(query, message):
    at = open_circuits(query)
    assert_no_exception(at)
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert _metrics(at)["E[y] true"] == "2"  # the default preset x·x still shown


def test_explanation_file_round_trips_and_bad_uploads_are_clear():
    c = load_preset("difference_of_squares")
    view = glue.View(c, "difference_of_squares", "sparse", [("s", "d")], 2)
    data = glue.explanation(view, CircuitConfig(tracked=(("s", "d"),)))
    back = glue.view_from_upload(data, "x.json")
    assert back.circuit == c and back.tracked == [("s", "d")] and back.preset == view.preset
    plain = glue.view_from_upload(c.to_json().encode(), "mine.json")
    assert plain.circuit == c and plain.preset is None and plain.tracked == []
    for bad, msg in [(b"{", "not valid JSON"), (b'{"inputs": {}}', "no 'output'"),
                     (b'{"format": "other"}', "not a workbench explanation")]:
        with pytest.raises(ValueError, match=msg):
            glue.view_from_upload(bad, "bad.json")


def test_surprise_waterfall_is_drawn_on_request():
    at = open_circuits()
    assert_no_exception(at)
    n_before = len(at.get("plotly_chart"))
    at.toggle(key="_circ_waterfall_on").set_value(True).run()
    assert_no_exception(at)
    assert len(at.get("plotly_chart")) == n_before + 1


def test_node_tables_static_for_a_small_circuit():
    at = open_circuits()
    assert_no_exception(at)
    cols = [list(t.value.columns) for t in at.table]
    assert ["node", "kind", "mean est", "mean true", "var est", "var true"] in cols
    assert any("var rel. error" in c for c in cols)
