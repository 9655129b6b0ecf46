"""Causal scrubbing: which paths (treeified engine) or edges (edge engine) of the model carry the
behaviour, scored in bits."""

import json

import pandas as pd
import streamlit as st

from app import scrubbing as glue
from app import scrubbing_view as view
from app import messages, state, store
from app.plots.common import PNG_CONFIG
from estimators.scrubbing import PathError, PathPartition
from estimators.surprise import SurpriseBreakdown

ss = st.session_state
st.title("Causal scrubbing")
st.markdown(
    "A hypothesis names the **paths** of the treeified model (embeddings → heads' Q/K/V inputs "
    "→ … → logits) that carry the behaviour. **Important** paths keep the real input; each "
    "**block** of paths shares one resampled input (uniform, or matched on a feature); every "
    "other path sees one shared random input. Loss recovered = (L_random − L_scrubbed) / "
    "(L_random − L_original). Surprise: S(π) is the bits to state the partition, S(Y|π) = "
    "N·(L_scrubbed − L_original)/ln 2. Two engines: **treeified paths** (any path pattern; "
    "models up to 200,000 paths) and **patched edges** (any size; single edges and whole "
    "nodes, S(π) counted over edges).")

lm = store.current_model()
device = store.current_device()
model_key = f"{lm.kind}:{lm.name}"
score_key = model_key + glue.data_key(lm)  # scores also depend on a non-zoo model's data

# ---- settings (URL) ----------------------------------------------------------------------------
c1, c2, c0, c3 = st.columns([1, 1, 1, 3])
n = int(c1.number_input("Examples N", 8, 4096, view.int_param("scrub_n", 256, 8, 4096), step=64,
                        key="_scrub_n"))
seed = int(c2.number_input("Seed", 0, 2**31 - 1, view.int_param("scrub_seed", 0, 0, 2**31 - 1),
                           key="_scrub_seed"))
engine = c0.selectbox("Engine", glue.ENGINE_CHOICES, key="_scrub_engine",
                      index=view.engine_param(), format_func=glue.ENGINE_LABELS.get)
state.set_param("scrub_n", str(n))
state.set_param("scrub_seed", str(seed))
state.set_param("scrub_engine", engine)
try:
    choice, graph = glue.engine_setup(lm, engine)
except PathError as e:
    st.error(str(e))
    st.stop()
st.caption(f"Engine: {choice.reason}.")
view_key = f"{model_key}|{choice.engine}"  # the partition and graph views are per engine
try:
    with st.spinner("Running the data through the model…"):
        scrubber = glue.get_scrubber(lm, score_key, n, seed, device, choice.engine, graph)
except (PathError, ValueError) as e:
    st.error(str(e))
    st.stop()

if lm.kind != "zoo":
    st.caption(f"Examples: {scrubber.data.source}; loss: next-token loss at every position but "
               f"the last.")

# ---- the partition: session state, seeded from the URL once per model -------------------------
view.init_partition(graph, view_key)
ss.setdefault("scrub_msgs", [])
ss.setdefault("scrub_saved", {})
part: PathPartition = ss.scrub_part
refs = glue.reference_list(lm.name)
view.bind(graph, refs)


# ---- controls ---------------------------------------------------------------------------------
with c3:
    if refs:
        r1, r2 = st.columns([3, 1])
        r1.selectbox("Reference hypothesis", [r.name for r in refs], key="_scrub_ref")
        r2.button("Apply", on_click=view.apply_reference, key="_scrub_apply_ref",
                  width="stretch")
    else:
        st.caption("No reference hypotheses ship with this model.")

# ---- everything a click on the graph, the table or the buttons changes: one fragment, so such a
# click reruns and redraws only this part (the settings and the reference above, and the search
# below, request a full rerun; st.rerun() inside is a full rerun too)
@st.fragment
def partition_and_scores() -> None:
    """Upload/download, messages, graph, partition table, scores, comparison and anomaly demo."""
    part = ss.scrub_part
    with st.expander("Upload / download the partition", expanded=False):
        st.file_uploader("Partition JSON or explanation file", type=["json"], key="_scrub_upload",
                         on_change=view.on_upload)
        st.download_button("Download explanation (JSON)",
                           glue.download_bytes(part, {"model": lm.name, "n": n, "seed": seed,
                                                     "data": glue.data_spec()}),
                           file_name="scrubbing-explanation.json", mime="application/json",
                           key="_scrub_download")

    for kind, msg in ss.scrub_msgs:
        getattr(st, kind)(messages.plain(msg))  # path patterns such as *>m0>* shown literally
    ss.scrub_msgs = []
    part = ss.scrub_part
    glue.write_url(part)

    # ---- graph and table ------------------------------------------------------------------------
    assignment = glue.assignment_or_empty(part, graph)
    left, right = st.columns([3, 2])
    with left:
        g1, g2, g3 = st.columns(3)
        g1.selectbox("Clicks assign to", glue.GROUPS, key="_scrub_target")
        g2.selectbox("New block resamples", glue.RESAMPLE_CHOICES, key="_scrub_rs")
        g3.radio("Click selects", ["through", "edge"], key="_scrub_mode", horizontal=True,
                 format_func={"through": "paths through it", "edge": "edge (2 clicks)"}.get)
        st.plotly_chart(view.graph_figure(view_key, part.hash, ss.get("scrub_pending"), graph,
                                          assignment),
                        key="_scrub_graph", on_select=view.on_click, selection_mode="points",
                        config=PNG_CONFIG)
        st.caption(view.graph_caption(graph, assignment))
    with right:
        st.markdown(f"**Partition** `{part.hash}` {('— ' + part.name) if part.name else ''}")
        view.partition_table(part, graph)
        if glue.unit_name(graph) == "edge":
            st.caption(glue.EDGE_LANGUAGE)
            view.named_edges_box(graph, assignment)
        b1, b2 = st.columns(2)
        b1.button("Clear (all independent)", key="_scrub_clear",
                  on_click=lambda: view.set_partition(PathPartition(name="all independent")))
        b2.button("All paths important", key="_scrub_all",
                  on_click=lambda: view.set_partition(PathPartition(("*",),
                                                                    name="all paths important")))

    # ---- scores -------------------------------------------------------------------------------
    try:
        with st.spinner("Scrubbing…"):
            res = glue.evaluate(scrubber, score_key, part.hash, json.dumps(part.to_dict()), n,
                                seed, device)
    except PathError as e:  # e.g. a grouped-query key/value group split by the edge engine
        st.error(messages.plain(f"This engine cannot evaluate the partition: {e}"))
        return
    sur = SurpriseBreakdown.from_dict(res["surprise"])
    m = st.columns(4) + st.columns(3)  # two rows: a value never truncated ("100.0…")
    m[0].metric("Loss original", f"{res['loss_original']:.4f}")
    m[1].metric("Loss scrubbed", f"{res['loss_scrubbed']:.4f}")
    m[2].metric("Loss all resampled", f"{res['loss_random']:.4f}")
    m[3].metric("Loss recovered", glue.fmt_percent(res["loss_recovered"]))
    m[4].metric("S(π) argument", f"{sur.argument_bits:,.1f} bits")
    m[5].metric("S(Y|π) data", f"{sur.data_bits:,.1f} bits")
    m[6].metric("Total", f"{sur.total_bits:,.1f} bits")
    view.charts_box(sur, res)  # drawn on request: the metrics above give the same numbers
    with st.expander("S(π) per block"):
        st.dataframe(pd.DataFrame([{"part": k.removeprefix("argument:"), "bits": v}
                                   for k, v in sur.parts.items() if k.startswith("argument:")]),
                     hide_index=True)
        st.caption(sur.notes)

    view.compare_box(scrubber, part, refs, score_key, n, seed, device)
    view.anomaly_box(lm, scrubber, part, score_key, n, seed, device)


partition_and_scores()
view.search_box(scrubber, ss.scrub_part)  # outside: a full rerun, so Stop interrupts it
