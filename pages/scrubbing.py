"""Causal scrubbing: which paths of the treeified model carry the behaviour, scored in bits."""

import json

import pandas as pd
import streamlit as st

from app import scrubbing as glue
from app import messages, state, store
from app.plots.common import PNG_CONFIG, surprise_waterfall
from app.plots.scrubbing import (anomaly_histogram, component_graph, graph_points, loss_bars,
                                 search_path)
from estimators.scrubbing import PathError, PathGraph, PathPartition
from estimators.surprise import SurpriseBreakdown

ss = st.session_state
st.title("Causal scrubbing")
st.markdown(
    "A hypothesis names the **paths** of the treeified model (embeddings → heads' Q/K/V inputs "
    "→ … → logits) that carry the behaviour. **Important** paths keep the real input; each "
    "**block** of paths shares one resampled input (uniform, or matched on a feature); every "
    "other path sees one shared random input. Loss recovered = (L_random − L_scrubbed) / "
    "(L_random − L_original). Surprise: S(π) is the bits to state the partition, S(Y|π) = "
    "N·(L_scrubbed − L_original)/ln 2.")

lm = store.current_model()
device = store.current_device()
try:
    graph = PathGraph.from_model(lm.model)
except PathError as e:
    st.error(str(e))
    st.stop()
model_key = f"{lm.kind}:{lm.name}"

# ---- settings (URL) ----------------------------------------------------------------------------
def _int_param(key, default, lo, hi):
    try:
        v = int(state.get_param(key, str(default)))
    except ValueError:
        return default
    return min(max(v, lo), hi)


c1, c2, c3 = st.columns([1, 1, 3])
n = int(c1.number_input("Examples N", 8, 4096, _int_param("scrub_n", 256, 8, 4096), step=64,
                        key="_scrub_n"))
seed = int(c2.number_input("Seed", 0, 2**31 - 1, _int_param("scrub_seed", 0, 0, 2**31 - 1),
                           key="_scrub_seed"))
state.set_param("scrub_n", str(n))
state.set_param("scrub_seed", str(seed))
try:
    scrubber = glue.get_scrubber(lm, model_key, n, seed, device)
except (PathError, ValueError) as e:
    st.error(str(e))
    st.stop()

# ---- the partition: session state, seeded from the URL once per model -------------------------
if ss.get("scrub_model") != model_key:
    # first visit: the partition comes from the link; after a sidebar change, from the
    # previous model's partition (kept in the URL), and the messages say which
    source = "the link" if "scrub_model" not in ss else "the previous model's partition"
    ss.scrub_model = model_key
    ss.scrub_msgs = []
    ss.scrub_pending = None
    ss.scrub_saved = ss.get("scrub_saved", {})
    p, err = glue.partition_from_url()
    if err:
        ss.scrub_msgs.append(("error", err.replace("the link", source)
                              + " (starting from the empty partition)"))
    if p is not None:
        try:
            p.assign(graph)
        except PathError as e:
            ss.scrub_msgs.append(("error", f"The partition from {source} does not fit this "
                                           f"model: {e} (starting from the empty partition)"))
            p = None
    ss.scrub_part = p or PathPartition(name="all independent")
ss.setdefault("scrub_msgs", [])
ss.setdefault("scrub_saved", {})
part: PathPartition = ss.scrub_part
refs = glue.reference_list(lm.name)


def _set(p: PathPartition, msg: str | None = None, edited: bool = False) -> None:
    if edited and p.name and not p.name.endswith("(edited)"):
        p = p.with_name(f"{p.name} (edited)")  # no longer the named hypothesis it came from
    ss.scrub_part = p
    ss.scrub_pending = None
    if msg:
        ss.scrub_msgs.append(("success", msg))


def _apply_reference():
    name = ss.get("_scrub_ref")
    for r in refs:
        if r.name == name:
            _set(r.partition, f"Applied reference hypothesis “{name}”.")


def _on_upload():
    f = ss.get("_scrub_upload")
    if f is None:
        return
    try:
        p = glue.parse_upload(f.getvalue(), graph)
    except ValueError as e:  # StateError and PathError are ValueErrors
        ss.scrub_msgs.append(("error", f"Could not use {f.name}: {e} (the current partition "
                                       f"is kept)"))
        return
    _set(p, f"Loaded {f.name}.")


def _on_click():
    sel = ss.get("_scrub_graph")
    pts = (sel or {}).get("selection", {}).get("points", []) if sel else []
    ids = [p["customdata"][0] for p in pts if p.get("customdata")]  # only markers carry it
    if not ids:
        return
    by_id = {p["id"]: p for p in graph_points(graph)}
    target, rs, mode = ss.get("_scrub_target", "important"), ss.get("_scrub_rs", "uniform"), \
        ss.get("_scrub_mode", "through")
    if mode == "through":
        pattern = by_id[ids[-1]]["through"]
    else:
        if ss.scrub_pending is None:
            ss.scrub_pending = ids[-1]
            return
        src, dst = by_id[ss.scrub_pending], by_id[ids[-1]]
        ss.scrub_pending = None
        if src["source"] is None or dst["dest"] is None:
            ss.scrub_msgs.append(("warning", "An edge runs from a source (embed, a head's "
                                             "output, an MLP) to a destination (a head's q/k/v "
                                             "input, an MLP, the logits)."))
            return
        left = "embed" if src["source"] == "embed" else (
            f"*>{src['source']}:*" if src["source"].startswith("a") else f"*>{src['source']}")
        pattern = f"{left}>{dst['dest']}" + ("" if dst["dest"] == "logits" else ">*")
    try:
        graph.match_required(pattern)
        _set(glue.toggle_pattern(ss.scrub_part, pattern, target, rs, graph), edited=True)
    except PathError as e:
        ss.scrub_msgs.append(("warning", str(e)))


def _save():
    name = (ss.get("_scrub_save_name") or "").strip() or f"saved {len(ss.scrub_saved) + 1}"
    ss.scrub_saved[name] = ss.scrub_part.with_name(name)
    ss.scrub_msgs.append(("success", f"Saved as “{name}”."))


# ---- controls ---------------------------------------------------------------------------------
with c3:
    if refs:
        r1, r2 = st.columns([3, 1])
        r1.selectbox("Reference hypothesis", [r.name for r in refs], key="_scrub_ref")
        r2.button("Apply", on_click=_apply_reference, key="_scrub_apply_ref",
                  width="stretch")
    else:
        st.caption("No reference hypotheses ship with this model.")

with st.expander("Upload / download the partition", expanded=False):
    st.file_uploader("Partition JSON or explanation file", type=["json"], key="_scrub_upload",
                     on_change=_on_upload)
    st.download_button("Download explanation (JSON)",
                       glue.download_bytes(part, {"model": lm.name, "n": n, "seed": seed}),
                       file_name="scrubbing-explanation.json", mime="application/json",
                       key="_scrub_download")

for kind, msg in ss.scrub_msgs:
    getattr(st, kind)(messages.plain(msg))  # path patterns such as *>m0>* shown literally
ss.scrub_msgs = []
part = ss.scrub_part
glue.write_url(part)

# ---- graph and table ----------------------------------------------------------------------------
assignment = glue.assignment_or_empty(part, graph)
left, right = st.columns([3, 2])
with left:
    g1, g2, g3 = st.columns(3)
    g1.selectbox("Clicks assign to", glue.GROUPS, key="_scrub_target")
    g2.selectbox("New block resamples", glue.RESAMPLE_CHOICES, key="_scrub_rs")
    g3.radio("Click selects", ["through", "edge"], key="_scrub_mode", horizontal=True,
             format_func={"through": "paths through it", "edge": "edge (2 clicks)"}.get)
    st.plotly_chart(component_graph(graph, assignment, ss.get("scrub_pending")),
                    key="_scrub_graph", on_select=_on_click, selection_mode="points",
                    config=PNG_CONFIG)
    st.caption(f"{graph.n_paths:,} treeified paths. Colour: the group most paths through a "
               f"point belong to (grey: rest, random). A click toggles that pattern in the "
               f"chosen group.")
with right:
    st.markdown(f"**Partition** `{part.hash}` {('— ' + part.name) if part.name else ''}")
    rows = glue.partition_rows(part)
    frame = pd.DataFrame(rows,
                         columns=["group", "pattern", "resample"])
    edited = st.data_editor(
        frame, num_rows="dynamic", key=f"_scrub_table_{part.hash}_{ss.get('scrub_nonce', 0)}",
        width="stretch",
        column_config={
            "group": st.column_config.SelectboxColumn("group", options=glue.GROUPS,
                                                      required=True),
            "pattern": st.column_config.TextColumn("pattern", help="e.g. *>a1.*:k>logits"),
            "resample": st.column_config.SelectboxColumn(
                "resample", options=[""] + glue.RESAMPLE_CHOICES)})
    new_rows = edited.fillna("").to_dict("records")
    if new_rows != rows:
        try:
            new = glue.rows_to_partition(new_rows, part.name, part.description)
            new.assign(graph)
        except PathError as e:
            # roll the table back to the partition in use (a fresh editor), so the table and
            # the partition never differ and the next edit starts from a valid table
            ss.scrub_msgs.append(("error", f"Table not applied: {e} (the current partition "
                                           f"is kept)"))
            ss.scrub_nonce = ss.get("scrub_nonce", 0) + 1
            st.rerun()
        else:
            if new.hash != part.hash:
                _set(new, edited=True)
                st.rerun()
    b1, b2 = st.columns(2)
    b1.button("Clear (all independent)", key="_scrub_clear",
              on_click=lambda: _set(PathPartition(name="all independent")))
    b2.button("All paths important", key="_scrub_all",
              on_click=lambda: _set(PathPartition(("*",), name="all paths important")))

# ---- scores -----------------------------------------------------------------------------------
with st.spinner("Scrubbing…"):
    res = glue.evaluate(scrubber, model_key, part.hash, json.dumps(part.to_dict()), n, seed,
                        device)
sur = SurpriseBreakdown.from_dict(res["surprise"])
m = st.columns(7)
m[0].metric("Loss original", f"{res['loss_original']:.4f}")
m[1].metric("Loss scrubbed", f"{res['loss_scrubbed']:.4f}")
m[2].metric("Loss all resampled", f"{res['loss_random']:.4f}")
m[3].metric("Loss recovered", glue.fmt_percent(res["loss_recovered"]))
m[4].metric("S(π) argument", f"{sur.argument_bits:,.1f} bits")
m[5].metric("S(Y|π) data", f"{sur.data_bits:,.1f} bits")
m[6].metric("Total", f"{sur.total_bits:,.1f} bits")
f1, f2 = st.columns(2)
f1.plotly_chart(surprise_waterfall(sur), config=PNG_CONFIG, key="_scrub_waterfall")
f2.plotly_chart(loss_bars(res["loss_original"], res["loss_scrubbed"], res["loss_random"]),
                config=PNG_CONFIG, key="_scrub_losses")

# ---- saved hypotheses -------------------------------------------------------------------------
st.subheader("Hypotheses compared")
s1, s2 = st.columns([3, 1])
s1.text_input("Name for the current partition", key="_scrub_save_name")
s2.button("Save current", on_click=_save, key="_scrub_save", width="stretch")
compare = [("reference", r.partition) for r in refs] + \
          [("saved", p) for p in ss.scrub_saved.values()] + [("current", part)]
with st.spinner("Scoring saved hypotheses…"):
    scores = glue.evaluate_many(scrubber, model_key, [p for _, p in compare], n, seed, device)
table = pd.DataFrame([{
    "kind": k, "name": p.name or "(unnamed)", "hash": p.hash,
    "loss scrubbed": s["loss_scrubbed"], "loss recovered %": 100 * s["loss_recovered"],
    "S(π) bits": s["surprise"]["argument_bits"], "S(Y|π) bits": s["surprise"]["data_bits"],
    "total bits": s["surprise"]["total_bits"]} for (k, p), s in zip(compare, scores)])
st.dataframe(table, hide_index=True, width="stretch", key="_scrub_compare")

# ---- anomaly detection ------------------------------------------------------------------------
with st.expander("Anomaly detection with this partition", expanded=False):
    entry = lm.zoo_entry
    if entry is None or scrubber.data.batch.targets is None:
        st.info("The anomaly demo shuffles the second half of next-token sequences; this "
                "model's task has no next-token targets.")
    elif st.checkbox("Run the demo (normal inputs vs second halves shuffled)",
                     key="_scrub_anomaly"):
        kind = st.radio("Score", ["scrubbed", "excess"], horizontal=True, key="_scrub_akind",
                        format_func={"scrubbed": "scrubbed loss",
                                     "excess": "scrubbed − original loss"}.get)
        with st.spinner("Scoring inputs…"):
            demo = glue.anomaly(scrubber, model_key, part.hash, json.dumps(part.to_dict()), n,
                                seed, device)
        st.metric(f"ROC AUC ({kind})", f"{demo[kind]['auc']:.3f}")
        st.plotly_chart(anomaly_histogram(demo[kind]["normal"], demo[kind]["anomalous"],
                                          demo[kind]["auc"], kind), config=PNG_CONFIG,
                        key="_scrub_anomaly_hist")

# ---- greedy search ----------------------------------------------------------------------------
with st.expander("Greedy search over partitions", expanded=False):
    q1, q2 = st.columns(2)
    unit = q1.selectbox("Candidates", ["node", "edge"], key="_scrub_unit",
                        format_func={"node": "paths through a node",
                                     "edge": "paths through an edge"}.get)
    steps = int(q2.number_input("Max steps", 1, 20, 4, key="_scrub_steps"))
    if st.button("Search from the current partition", key="_scrub_search"):
        from estimators.scrubbing.search import greedy_search

        bar = st.progress(0.0, text="Searching…")
        with store.model_lock():
            try:
                found = greedy_search(scrubber, unit=unit, max_steps=steps,
                                      start=part,
                                      progress=lambda i, k, s: (store.yield_model_lock(),
                                                                bar.progress(
                                          min(1.0, i / max(k, 1)), text=f"step {i}/{k}: "
                                          f"{s.result.surprise.total_bits:,.1f} bits")))
            except PathError as e:
                st.error(str(e))
                found = []
        ss.scrub_search = [s.to_dict() for s in found]
    if ss.get("scrub_search"):
        found = ss.scrub_search
        st.plotly_chart(search_path(found), config=PNG_CONFIG, key="_scrub_search_plot")
        st.dataframe(pd.DataFrame([{k: v for k, v in s.items() if k != "partition"}
                                   for s in found]), hide_index=True, width="stretch")
        st.button("Apply the search's best partition", key="_scrub_apply_best",
                  on_click=lambda: _set(PathPartition.from_dict(found[-1]["partition"]),
                                        "Applied the search's best partition."))
