"""Arithmetic circuits: presume independence, then pay bits to point out correlations."""

import streamlit as st

from app import circuits as glue
from app import state
from app.plots.circuits import circuit_graph
from app.plots.common import PNG_CONFIG, surprise_waterfall
from estimators.circuits import METHODS, CircuitConfig, CircuitError, list_presets, load_preset
from estimators.circuits.analysis import MAX_ORDER
from estimators.circuits.propagate import candidate_pairs, normalize_pair

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


# ---- state: the view, from the URL on first visit ------------------------------------------
def _set_view(view: glue.View) -> None:
    ss.circ_view = view
    ss.circ_pending = None
    ss._circ_preset = view.preset or "(custom)"
    ss._circ_method = view.method
    ss._circ_order = view.order
    ss._circ_pairs = [glue.pair_label(view.circuit, p) for p in view.tracked]


if "circ_view" not in ss:
    view, errs = glue.view_from_params(state.get_param, state.get_blob_param)
    _set_view(view)
    ss.circ_msgs = [("error", e) for e in errs]
view: glue.View = ss.circ_view
for key, value in (("_circ_preset", view.preset or "(custom)"), ("_circ_method", view.method),
                   ("_circ_order", view.order),
                   ("_circ_pairs", [glue.pair_label(view.circuit, p) for p in view.tracked])):
    if key not in ss:  # widget state is dropped when the user visits another page
        ss[key] = value


def _toggle(u: str, v: str) -> None:
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
def _on_preset():
    name = ss._circ_preset
    if name in list_presets():
        _set_view(glue.View(load_preset(name), name, method=ss._circ_method,
                            order=ss._circ_order))


def _on_method():
    view.method = ss._circ_method


def _on_order():
    view.order = int(ss._circ_order)


def _on_pairs():
    labels = {glue.pair_label(view.circuit, p): p for p in candidate_pairs(view.circuit)}
    view.tracked = [labels[lab] for lab in ss._circ_pairs if lab in labels]


def _on_click():
    sel = ss.get("_circ_graph")
    points = (sel or {}).get("selection", {}).get("points", []) if sel else []
    ids = [p["customdata"][0] for p in points if p.get("customdata")]  # node traces only
    ids = list(dict.fromkeys(ids))
    if len(ids) >= 2:
        _toggle(ids[0], ids[1])
        ss.circ_pending = None
    elif len(ids) == 1:
        if ss.circ_pending is None:
            ss.circ_pending = ids[0]
        else:
            _toggle(ss.circ_pending, ids[0])
            ss.circ_pending = None
    else:
        ss.circ_pending = None


def _on_self_pair():
    if ss.circ_pending is not None:
        _toggle(ss.circ_pending, ss.circ_pending)
        ss.circ_pending = None


def _track_all():
    view.tracked = candidate_pairs(view.circuit)
    ss._circ_pairs = [glue.pair_label(view.circuit, p) for p in view.tracked]
    view.method = ss._circ_method = "sparse"


def _track_none():
    view.tracked = []
    ss._circ_pairs = []


def _on_upload():
    f = ss.get("_circ_upload")
    if f is None:
        return
    try:
        new = glue.view_from_upload(f.getvalue(), f.name)
    except ValueError as e:  # StateError and CircuitError are ValueErrors
        ss.circ_msgs.append(("error", f"Could not use {f.name}: {e} (the current circuit is "
                                      f"kept)"))
        return
    _set_view(new)
    ss.circ_msgs.append(("success", f"Loaded {f.name}."))


# ---- controls -------------------------------------------------------------------------------
presets = list_presets() + ([] if view.preset else ["(custom)"])
c1, c2, c3 = st.columns([2, 3, 2])
with c1:
    st.selectbox("Teaching preset", presets, key="_circ_preset", on_change=_on_preset,
                 help="Pick a circuit; your tracked pairs are cleared.")
with c2:
    st.radio("Estimator", list(METHODS), key="_circ_method", format_func=METHODS.get,
             on_change=_on_method, horizontal=False)
with c3:
    if view.method == "wick":
        st.slider("Wick order K", 1, MAX_ORDER, key="_circ_order", on_change=_on_order,
                  help="Keep terms up to total degree K in the inputs' fluctuations; exact "
                       "once K reaches the circuit's degree.")
    with st.expander("Upload a circuit", expanded=False):
        st.file_uploader("Circuit JSON or explanation file", type=["json"], key="_circ_upload",
                         on_change=_on_upload)
    with st.expander("Surprise settings", expanded=False):
        samples = st.number_input("Draws N of the real output", 10, 100_000, 1000, step=100,
                                  key="_circ_samples")
        seed = st.number_input("Seed", 0, 2 ** 31 - 1, 0, key="_circ_seed")
        mc_samples = st.number_input("Monte Carlo samples", 10, 1_000_000, 10_000, step=1000,
                                     key="_circ_mc")

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
    st.stop()
glue.write_params(view)

# ---- the graph and the argument -------------------------------------------------------------
stats = {r["id"]: r for r in a.rows()}
left, right = st.columns([3, 2])
with left:
    st.plotly_chart(circuit_graph(view.circuit, a.tracked, ss.circ_pending, stats),
                    key="_circ_graph", on_select=_on_click, selection_mode="points",
                    config=PNG_CONFIG)
    if ss.circ_pending is not None:
        p = ss.circ_pending
        st.caption(f"Selected **{p}**: click a second node to toggle tracking the pair.")
        if (p, p) in candidate_pairs(view.circuit):
            st.button(f"Toggle {p} × {p} (a node paired with itself)", on_click=_on_self_pair)
with right:
    st.multiselect("Tracked pairs (the argument)",
                   [glue.pair_label(view.circuit, p) for p in candidate_pairs(view.circuit)],
                   key="_circ_pairs", on_change=_on_pairs,
                   help="Candidates are the argument pairs of + − × nodes: only there does a "
                        "covariance enter a formula.")
    b1, b2 = st.columns(2)
    b1.button("Track all pairs", on_click=_track_all, width="stretch")
    b2.button("Track none", on_click=_track_none, width="stretch")
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
k1.metric("S(π) argument", f"{s.argument_bits:,.2f} bits",
          delta=f"{s.argument_bits - base.argument_bits:+,.2f} vs independence",
          delta_color="inverse")
k2.metric("S(Y|π) data", f"{s.data_bits:,.2f} bits",
          delta=f"{s.data_bits - base.data_bits:+,.2f} vs independence", delta_color="inverse")
k3.metric("Total", f"{s.total_bits:,.2f} bits",
          delta=f"{s.total_bits - base.total_bits:+,.2f} vs independence", delta_color="inverse")
st.plotly_chart(surprise_waterfall(s), config=PNG_CONFIG, key="_circ_waterfall")
st.caption(s.notes)

# ---- tables ---------------------------------------------------------------------------------
values, errors = glue.tables(a)
t1, t2 = st.columns(2)
with t1:
    st.markdown("**Every node: estimate and truth**")
    st.dataframe(values, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.5g")
                                for c in values.columns[2:]})
with t2:
    st.markdown("**Errors (estimate − truth)**")
    st.dataframe(errors, hide_index=True, width="stretch",
                 column_config={"mean error": st.column_config.NumberColumn(format="%.4g"),
                                "var error": st.column_config.NumberColumn(format="%.4g"),
                                "mean rel. error": st.column_config.NumberColumn(format="percent"),
                                "var rel. error": st.column_config.NumberColumn(format="percent")})
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
