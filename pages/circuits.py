"""Arithmetic circuits: presume independence, then pay bits to point out correlations."""

import streamlit as st

from app import circuits as glue
from app import circuits_view as cv
from app.plots.circuits import circuit_graph
from app.plots.common import PNG_CONFIG
from estimators.circuits import METHODS, CircuitConfig, CircuitError, list_presets
from estimators.circuits.analysis import MAX_ORDER
from estimators.circuits.propagate import candidate_pairs

ss = st.session_state

st.title("Arithmetic circuits")
st.markdown(
    "A circuit adds and multiplies random inputs. A heuristic estimator computes each node's "
    "mean and variance **presuming independence**: E[a·b] = E[a]·E[b], as if no two nodes "
    "shared an input. That is free (0 bits) but wrong whenever they do, e.g. x·x. "
    "An **argument** points out correlations: each *tracked pair* of nodes has its covariance "
    "computed (by bilinearity) and used. Saying which pairs costs bits, S(π); a better estimate "
    "makes the real outputs less surprising, S(Y|π). **Click two nodes** in the graph (or use "
    "the list below it) to track their covariance, and watch both terms of the total move.")


# ---- state: the view, from the URL on first visit; callbacks in app/circuits_view.py ------
cv.init_view()
view: glue.View = ss.circ_view


# ---- controls -------------------------------------------------------------------------------
presets = list_presets() + ([] if view.preset else ["(custom)"])
c1, c2, c3 = st.columns([2, 3, 2])
with c1:
    st.selectbox("Teaching preset", presets, key="_circ_preset", on_change=cv.on_preset,
                 help="Pick a circuit; your tracked pairs are cleared.")
with c2:
    st.radio("Estimator", list(METHODS), key="_circ_method", format_func=METHODS.get,
             on_change=cv.on_method, horizontal=False)
with c3:
    if view.method == "wick":
        st.slider("Wick order K", 1, MAX_ORDER, key="_circ_order", on_change=cv.on_order,
                  help="Keep terms up to total degree K in the inputs' fluctuations; exact "
                       "once K reaches the circuit's degree.")
    with st.expander("Upload a circuit", expanded=False):
        st.file_uploader("Circuit JSON or explanation file", type=["json"], key="_circ_upload",
                         on_change=cv.on_upload)
    with st.expander("Surprise settings", expanded=False):
        samples = st.number_input("Draws N of the real output", 10, 100_000, 1000, step=100,
                                  key="_circ_samples")
        seed = st.number_input("Seed", 0, 2 ** 31 - 1, 0, key="_circ_seed")
        mc_samples = st.number_input("Monte Carlo samples", 10, 1_000_000, 10_000, step=1000,
                                     key="_circ_mc")

# ---- everything a click on the graph, the pair list or the buttons changes: one fragment, so
# such a click reruns and redraws only this part (the controls above request a full rerun)
@st.fragment
def argument_and_results(samples: int, seed: int, mc_samples: int) -> None:
    """Messages, graph, tracked pairs, metrics, surprise, tables and the download."""
    for kind, msg in ss.circ_msgs:
        getattr(st, kind)(msg)
    ss.circ_msgs = []

    view = ss.circ_view
    if view.circuit.description:
        st.info(view.circuit.description)

    config = CircuitConfig(method=view.method,
                           tracked=tuple(view.tracked) if view.method == "sparse" else (),
                           order=int(view.order), samples=int(samples), seed=int(seed),
                           mc_samples=int(mc_samples))
    try:
        a = glue.run(view, config)
    except CircuitError as e:
        st.error(str(e))
        return
    glue.write_params(view)

    # ---- the graph and the argument -------------------------------------------------------------
    stats = {r["id"]: r for r in a.rows()}
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(circuit_graph(view.circuit, a.tracked, ss.circ_pending, stats),
                        key="_circ_graph", on_select=cv.on_click, selection_mode="points",
                        config=PNG_CONFIG)
        if ss.circ_pending is not None:
            p = ss.circ_pending
            st.caption(f"Selected **{p}**: click a second node to toggle tracking the pair.")
            if (p, p) in candidate_pairs(view.circuit):
                st.button(f"Toggle {p} × {p} (a node paired with itself)",
                          on_click=cv.on_self_pair)
    with right:
        st.multiselect("Tracked pairs (the argument)",
                       [glue.pair_label(view.circuit, p) for p in candidate_pairs(view.circuit)],
                       key="_circ_pairs", on_change=cv.on_pairs,
                       help="Candidates are the argument pairs of + − × nodes: only there "
                            "does a covariance enter a formula.")
        b1, b2 = st.columns(2)
        b1.button("Track all pairs", on_click=cv.track_all, width="stretch")
        b2.button("Track none", on_click=cv.track_none, width="stretch")
        if view.method != "sparse" and view.tracked:
            st.caption("Tracked pairs are used by the sparse-covariance estimator only.")
        out = view.circuit.output
        m1, m2 = st.columns(2)
        m1.metric(f"E[{out}] estimate", f"{a.estimate.mean_of(out):.6g}")
        m2.metric(f"E[{out}] true", f"{a.truth.mean_of(out):.6g}")
        m1.metric(f"Var[{out}] estimate", f"{a.estimate.var_of(out):.6g}")
        m2.metric(f"Var[{out}] true", f"{a.truth.var_of(out):.6g}")
        st.caption(f"Estimator: {a.estimate.method}. Truth: {a.truth.method}.")
        for note in a.notes:
            st.caption(note)

    # ---- surprise -------------------------------------------------------------------------------
    st.subheader("Surprise accounting")
    s = a.surprise
    # the change against the empty argument is what the argument bought (same draws, same ε)
    base = glue.run(view, CircuitConfig(method="independence", samples=config.samples,
                                        seed=config.seed)).surprise
    k1, k2, k3 = st.columns(3)
    k1.metric("S(π) argument", cv.bits(s.argument_bits),
              delta=cv.delta_bits(s.argument_bits - base.argument_bits), delta_color="inverse")
    k2.metric("S(Y|π) data", cv.bits(s.data_bits),
              delta=cv.delta_bits(s.data_bits - base.data_bits), delta_color="inverse")
    k3.metric("Total", cv.bits(s.total_bits),
              delta=cv.delta_bits(s.total_bits - base.total_bits), delta_color="inverse")
    cv.waterfall_box(s)  # drawn on request: the metrics above give the same numbers
    st.caption(s.notes)

    # ---- tables ---------------------------------------------------------------------------------
    cv.node_tables(*glue.tables(a))
    if a.candidates:
        with st.expander("Candidate pairs: the covariance computed by bilinearity vs the truth"):
            st.dataframe(glue.covariance_table(a), hide_index=True, width="stretch")

    with st.expander("What is approximate, and the circuit JSON"):
        st.markdown(
            "- An untracked pair is presumed independent where a node combines it.\n"
            "- Covariances propagate by bilinearity; through a product only to first order, "
            "Cov(a·b, m) ≈ μa·Cov(b, m) + μb·Cov(a, m).\n"
            "- Var(a·b) for a tracked pair uses joint-Gaussian fourth moments.\n"
            "- Wick order K keeps the expansion in the inputs' fluctuations up to degree K "
            "(order 1 is the delta method; K ≥ the circuit's degree is exact).\n"
            "- The truth is exact: enumeration when every input is finite, else polynomial "
            "expansion with the inputs' exact moments.")
        st.code(view.circuit.to_json(), language="json")
    st.download_button("Download explanation", glue.explanation(view, config),
                       file_name=f"circuit_{view.preset or 'custom'}_explanation.json",
                       mime="application/json")


argument_and_results(int(samples), int(seed), int(mc_samples))
