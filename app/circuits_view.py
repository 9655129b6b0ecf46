"""The Arithmetic circuits page's session state and callbacks (moved from pages/circuits.py;
the page file is layout only). Callbacks read the current view from the session."""

from __future__ import annotations

import streamlit as st

from app import circuits as glue
from app import state
from estimators.circuits import CircuitError, list_presets, load_preset
from estimators.circuits.propagate import candidate_pairs, normalize_pair

ss = st.session_state


def init_view() -> None:
    """The view in session state: from the URL on first visit; widget state restored."""
    if "circ_view" not in ss:
        view, errs = glue.view_from_params(state.get_param, state.get_blob_param)
        set_view(view)
        ss.circ_msgs = [("error", e) for e in errs]
    view: glue.View = ss.circ_view
    for key, value in (("_circ_preset", view.preset or "(custom)"), ("_circ_method", view.method),
                       ("_circ_order", view.order),
                       ("_circ_pairs", [glue.pair_label(view.circuit, p) for p in view.tracked])):
        if key not in ss:  # widget state is dropped when the user visits another page
            ss[key] = value


def set_view(view: glue.View) -> None:
    ss.circ_view = view
    ss.circ_pending = None
    ss._circ_preset = view.preset or "(custom)"
    ss._circ_method = view.method
    ss._circ_order = view.order
    ss._circ_pairs = [glue.pair_label(view.circuit, p) for p in view.tracked]


def toggle(u: str, v: str) -> None:
    view: glue.View = ss.circ_view
    try:
        pair = normalize_pair(view.circuit, (u, v))
    except CircuitError as e:
        ss.circ_msgs.append(("warning", str(e)))
        return
    if pair not in candidate_pairs(view.circuit):
        ss.circ_msgs.append(("warning", f"No node combines {pair[0]} and {pair[1]}, so their "
                                        f"covariance never enters a formula; pick two nodes "
                                        f"that feed the same + − or × node."))
        return
    tracked = [p for p in view.tracked if p != pair] if pair in view.tracked \
        else view.tracked + [pair]
    view.tracked = tracked
    ss._circ_pairs = [glue.pair_label(view.circuit, p) for p in tracked]
    if view.method == "independence":
        view.method = ss._circ_method = "sparse"


# ---- callbacks (run before the next script run, so they may set widget state) ---------------
def on_preset():
    name = ss._circ_preset
    if name in list_presets():
        set_view(glue.View(load_preset(name), name, method=ss._circ_method,
                            order=ss._circ_order))


def on_method():
    view: glue.View = ss.circ_view
    view.method = ss._circ_method


def on_order():
    view: glue.View = ss.circ_view
    view.order = int(ss._circ_order)


def on_pairs():
    view: glue.View = ss.circ_view
    labels = {glue.pair_label(view.circuit, p): p for p in candidate_pairs(view.circuit)}
    view.tracked = [labels[lab] for lab in ss._circ_pairs if lab in labels]


def on_click():
    sel = ss.get("_circ_graph")
    points = (sel or {}).get("selection", {}).get("points", []) if sel else []
    ids = [p["customdata"][0] for p in points if p.get("customdata")]  # node traces only
    ids = list(dict.fromkeys(ids))
    if len(ids) >= 2:
        toggle(ids[0], ids[1])
        ss.circ_pending = None
    elif len(ids) == 1:
        if ss.circ_pending is None:
            ss.circ_pending = ids[0]
        else:
            toggle(ss.circ_pending, ids[0])
            ss.circ_pending = None
    else:
        ss.circ_pending = None


def on_self_pair():
    if ss.circ_pending is not None:
        toggle(ss.circ_pending, ss.circ_pending)
        ss.circ_pending = None


def track_all():
    view: glue.View = ss.circ_view
    view.tracked = candidate_pairs(view.circuit)
    ss._circ_pairs = [glue.pair_label(view.circuit, p) for p in view.tracked]
    view.method = ss._circ_method = "sparse"


def track_none():
    view: glue.View = ss.circ_view
    view.tracked = []
    ss._circ_pairs = []


def on_upload():
    f = ss.get("_circ_upload")
    if f is None:
        return
    try:
        new = glue.view_from_upload(f.getvalue(), f.name)
    except ValueError as e:  # StateError and CircuitError are ValueErrors
        ss.circ_msgs.append(("error", f"Could not use {f.name}: {e} (the current circuit is "
                                      f"kept)"))
        return
    set_view(new)
    ss.circ_msgs.append(("success", f"Loaded {f.name}."))


def bits(x: float) -> str:
    """Bits with 2 decimals; a value that rounds to zero shows as 0.00, never -0.00."""
    return f"{round(x, 2) + 0.0:,.2f} bits"


def delta_bits(d: float) -> str | None:
    """A metric's change vs independence; None (no red/green arrow) when it rounds to zero."""
    if round(d, 2) == 0:
        return None
    return f"{d:+,.2f} vs independence"


def waterfall_box(s) -> None:
    """The surprise waterfall of `s` (a SurpriseBreakdown), drawn only while the toggle is on:
    the three metrics above it give the same numbers, and a figure drawn costs the browser
    ~40-70 ms on every click that changes the argument."""
    if st.toggle("Show the surprise waterfall", key="_circ_waterfall_on"):
        from app.plots.common import PNG_CONFIG, surprise_waterfall

        st.plotly_chart(surprise_waterfall(s), config=PNG_CONFIG, key="_circ_waterfall")


STATIC_TABLE_ROWS = 30


def node_tables(values, errors) -> None:
    """Every node's estimate and truth, and the errors, side by side. Up to STATIC_TABLE_ROWS
    nodes as static tables (a click that changes the argument then costs the browser ~70 ms
    less than redrawing two canvas grids); larger circuits as scrollable, sortable grids."""
    t1, t2 = st.columns(2)
    small = len(values) <= STATIC_TABLE_ROWS
    with t1:
        st.markdown("**Every node: estimate and truth**")
        if small:
            st.table(values.style.format({c: "{:.5g}" for c in values.columns[2:]})
                     .hide(axis="index"))
        else:
            st.dataframe(values, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.5g")
                                        for c in values.columns[2:]})
    with t2:
        st.markdown("**Errors (estimate − truth)**")
        if small:
            st.table(errors.style.format({"mean error": "{:.4g}", "var error": "{:.4g}",
                                          "mean rel. error": "{:.2%}",
                                          "var rel. error": "{:.2%}"}).hide(axis="index"))
        else:
            pct = st.column_config.NumberColumn(format="percent")
            st.dataframe(errors, hide_index=True, width="stretch",
                         column_config={"mean error": st.column_config.NumberColumn(
                                            format="%.4g"),
                                        "var error": st.column_config.NumberColumn(format="%.4g"),
                                        "mean rel. error": pct, "var rel. error": pct})
