"""The Causal scrubbing page's session state, callbacks and widget groups; the page file is
layout only. Moved from pages/scrubbing.py unchanged in behaviour, except where noted:
link numbers out of range are clamped with a message."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import scrubbing as glue
from app import state, store
from app.plots.common import PNG_CONFIG, surprise_waterfall
from app.plots.scrubbing import (anomaly_histogram, component_graph, graph_points, loss_bars,
                                 search_path)
from estimators.scrubbing import PathError, PathPartition

ss = st.session_state
_CTX = state.SessionContext("_scrub_ctx")  # this session's run objects, for the callbacks


@st.cache_data(max_entries=64, show_spinner=False)
def graph_figure(model_key: str, partition_hash: str, pending: str | None, _graph, _assignment):
    """The clickable component graph, cached per (model, partition, pending click): a click
    that returns to a partition seen before redraws without rebuilding the figure."""
    return component_graph(_graph, _assignment, pending)


def bind(graph, refs) -> None:
    """Give the callbacks this run's path graph and reference hypotheses."""
    _CTX["graph"], _CTX["refs"] = graph, refs


def int_param(key: str, default: int, lo: int, hi: int) -> int:
    """An integer link parameter clamped to [lo, hi]; a bad or clamped value is a warning."""
    from estimators.validation import clamp_number

    raw = state.get_param(key, str(default))
    try:
        v = float(raw) if any(c in raw for c in ".eE") else int(raw)
        v, note = clamp_number(v, key, lo, hi, integer=True)
    except (ValueError, OverflowError):
        st.warning(f"The link's {key} {raw[:20]!r} is not a whole number; using {default}.")
        return default
    if note:
        st.warning(f"The link's {note}.")
    return int(v)


def engine_param() -> int:
    """The index in ENGINE_CHOICES of the link's `scrub_engine` (auto when absent; a warning
    when unknown)."""
    raw = state.get_param("scrub_engine", "auto")
    if raw not in glue.ENGINE_CHOICES:
        st.warning(f"The link's scrub_engine {raw[:20]!r} is not one of "
                   f"{', '.join(glue.ENGINE_CHOICES)}; using auto.")
        return 0
    return glue.ENGINE_CHOICES.index(raw)


def graph_caption(graph, assignment) -> str:
    """What the component graph shows, in the engine's units."""
    if glue.unit_name(graph) == "path":
        return (f"{graph.n_paths:,} treeified paths. Colour: the group most paths through a "
                f"point belong to (grey: rest, random). A click toggles that pattern in the "
                f"chosen group.")
    from app.plots.scrubbing import MAX_DRAWN_EDGES

    named = int((assignment != glue.REST).sum())
    many = graph.n_edges > MAX_DRAWN_EDGES
    return (f"{graph.n_edges:,} edges, {named:,} named by this partition. Named edges are "
            f"drawn one by one in their group's colour (a group of more than "
            f"{MAX_DRAWN_EDGES} as bundles)" + (
                f"; the {graph.n_edges - named:,} other edges (rest, random) as grey bundles, "
                f"one per source layer → receiver layer, wider for more edges"
                if many else "; grey: rest, random") +
            ". A click toggles that pattern (all edges into a node, or one edge) in the "
            "chosen group.")


def named_edges_box(graph, assignment) -> None:
    """The edges the partition names, with their groups (edge engine)."""
    named = int((assignment != glue.REST).sum())
    with st.expander(f"Edges named by this partition ({named:,} of {graph.n_edges:,})"):
        rows = glue.named_edges(graph, assignment)
        if not rows:
            st.caption("None: every edge reads the shared random input.")
            return
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     key="_scrub_named_edges")
        if named > len(rows):
            st.caption(f"The first {len(rows):,} of {named:,} shown.")


def init_partition(graph, model_key: str) -> None:
    """The partition in session state, seeded from the URL once per view (model and engine).

    A partition the new view cannot express (a multi-edge path under the edge engine, a head
    another model lacks) is set aside, not dropped: while the empty partition that replaced it
    is unedited, returning to a view that can express it restores it."""
    if ss.get("scrub_model") == model_key:
        return
    # first visit: the partition comes from the link; after a sidebar change, from the
    # previous view's partition (kept in the URL), and the messages say which
    old = ss.get("scrub_model")
    if old is None:
        source, target = "The partition from the link", "this model"
    elif old.split("|")[0] == model_key.split("|")[0]:
        source, target = "The partition used under the previous engine", "this engine"
    else:
        source, target = "The previous model's partition", "this model"
    ss.scrub_model = model_key
    ss.scrub_msgs = []
    ss.scrub_pending = None
    ss.scrub_saved = ss.get("scrub_saved", {})
    aside = ss.get("scrub_aside")
    restored = aside is not None and ss.get("scrub_part") is aside[1]
    p, err = (aside[0], None) if restored else glue.partition_from_url()
    ss.scrub_aside = None
    if err:
        where = "the link" if old is None else "the link of the previous view"
        ss.scrub_msgs.append(("error", err.replace("the link", where)
                              + " (starting from the empty partition)"))
    if p is not None:
        try:
            p.assign(graph)
        except PathError as e:
            ss.scrub_part = PathPartition(name="all independent")
            if old is not None:  # kept for a view that can express it
                ss.scrub_aside = (p, ss.scrub_part)
            more = "" if old is None else "; switching back restores it while this is unedited"
            ss.scrub_msgs.append(("error", f"{source} does not fit {target}: {e} (starting "
                                           f"from the empty partition{more})"))
            return
        if restored:
            ss.scrub_msgs.append(("success", "Restored the partition the previous view could "
                                             "not express."))
    ss.scrub_part = p or PathPartition(name="all independent")


TABLE_COLUMNS = ["group", "pattern", "resample"]


def partition_table(part: PathPartition, graph) -> None:
    """The partition's rows, shown as a static table (row numbers as the error messages count
    them), and the same rows in an editor inside a collapsed expander: the editor (a canvas
    grid) is built only when opened, so a click elsewhere does not pay for redrawing it. An
    edit that does not give a valid partition is refused with one message and the editor
    rolled back to the partition in use (so the two never differ)."""
    rows = glue.partition_rows(part)
    frame = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if rows:
        st.table(frame.set_axis(range(1, len(rows) + 1)))
    else:
        st.caption("No rows: every " + glue.unit_name(graph) + " reads the shared random "
                   "input (rest).")
    with st.expander("Edit the rows (add, change, delete)", expanded=False):
        # a stable key (the nonce only rolls a refused edit back); the editor's identity still
        # follows its data, so a new partition starts it afresh
        edited = st.data_editor(
            frame, num_rows="dynamic", key=f"_scrub_table_{ss.get('scrub_nonce', 0)}",
            width="stretch",
            column_config={
                "group": st.column_config.SelectboxColumn("group", options=glue.GROUPS,
                                                          required=True),
                "pattern": st.column_config.TextColumn(
                    "pattern", help="e.g. *>a1.*:k>logits" if glue.unit_name(graph) == "path"
                    else "e.g. *>a0.1:*>a1.2:k>* (one edge) or *>a0.1:*>* (a node)"),
                "resample": st.column_config.SelectboxColumn(
                    "resample", options=[""] + glue.RESAMPLE_CHOICES)})
    _apply_table_edit(part, graph, rows, edited.fillna("").to_dict("records"))


def _apply_table_edit(part: PathPartition, graph, rows: list[dict], new_rows: list[dict]) -> None:
    """The editor's rows as the partition in use (a full rerun), or one error message and the
    editor rolled back when they do not make a valid partition."""
    if new_rows == rows:
        return
    try:
        new = glue.rows_to_partition(new_rows, part.name, part.description)
        new.assign(graph)
    except PathError as e:
        ss.scrub_msgs.append(("error", f"Table not applied: {e} (the current partition "
                                       f"is kept)"))
        ss.scrub_nonce = ss.get("scrub_nonce", 0) + 1
        st.rerun()
    else:
        if new.hash != part.hash:
            set_partition(new, edited=True)
            st.rerun()


def charts_box(sur, res: dict) -> None:
    """The surprise waterfall and the three losses as bars, drawn only while the toggle is on
    (the metrics above them give the same numbers; a figure left off costs a click nothing to
    redraw, one drawn costs the browser ~40-70 ms per click)."""
    if not st.toggle("Show the charts (surprise waterfall, losses as bars)",
                     key="_scrub_charts"):
        return
    f1, f2 = st.columns(2)
    f1.plotly_chart(surprise_waterfall(sur), config=PNG_CONFIG, key="_scrub_waterfall")
    f2.plotly_chart(loss_bars(res["loss_original"], res["loss_scrubbed"], res["loss_random"]),
                    config=PNG_CONFIG, key="_scrub_losses")


def set_partition(p: PathPartition, msg: str | None = None, edited: bool = False) -> None:
    if edited and p.name and not p.name.endswith("(edited)"):
        p = p.with_name(f"{p.name} (edited)")  # no longer the named hypothesis it came from
    ss.scrub_part = p
    ss.scrub_pending = None
    if msg:
        ss.scrub_msgs.append(("success", msg))


def apply_reference():
    name = ss.get("_scrub_ref")
    for r in _CTX["refs"]:
        if r.name == name:
            set_partition(r.partition, f"Applied reference hypothesis “{name}”.")


def on_upload():
    f = ss.get("_scrub_upload")
    if f is None:
        return
    try:
        p = glue.parse_upload(f.getvalue(), _CTX["graph"])
    except ValueError as e:  # StateError and PathError are ValueErrors
        ss.scrub_msgs.append(("error", f"Could not use {f.name}: {e} (the current partition "
                                       f"is kept)"))
        return
    set_partition(p, f"Loaded {f.name}.")


def on_click():
    sel = ss.get("_scrub_graph")
    pts = (sel or {}).get("selection", {}).get("points", []) if sel else []
    ids = [p["customdata"][0] for p in pts if p.get("customdata")]  # only markers carry it
    if not ids:
        return
    by_id = {p["id"]: p for p in graph_points(_CTX["graph"])}
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
        _CTX["graph"].match_required(pattern)
        set_partition(glue.toggle_pattern(ss.scrub_part, pattern, target, rs, _CTX["graph"]),
                      edited=True)
    except PathError as e:
        ss.scrub_msgs.append(("warning", str(e)))


def save():
    name = (ss.get("_scrub_save_name") or "").strip() or f"saved {len(ss.scrub_saved) + 1}"
    ss.scrub_saved[name] = ss.scrub_part.with_name(name)
    ss.scrub_msgs.append(("success", f"Saved as “{name}”."))


def compare_box(scrubber, part, refs, model_key: str, n: int, seed: int, device: str) -> None:
    """Saved hypotheses, the references and the current partition, scored side by side."""
    st.subheader("Hypotheses compared")
    s1, s2 = st.columns([3, 1])
    s1.text_input("Name for the current partition", key="_scrub_save_name")
    s2.button("Save current", on_click=save, key="_scrub_save", width="stretch")
    compare = [("reference", r.partition) for r in refs] + \
              [("saved", p) for p in ss.scrub_saved.values()] + [("current", part)]
    with st.spinner("Scoring saved hypotheses…"):  # the uncached ones in one batched call
        scores = glue.evaluate_many(scrubber, model_key, [p for _, p in compare], n, seed, device)
    nan = float("nan")
    table = pd.DataFrame([{
        "kind": k, "name": p.name or "(unnamed)", "hash": p.hash,
        "loss scrubbed": s.get("loss_scrubbed", nan),
        "loss recovered %": 100 * s.get("loss_recovered", nan),
        "S(π) bits": s["surprise"]["argument_bits"] if "surprise" in s else nan,
        "S(Y|π) bits": s["surprise"]["data_bits"] if "surprise" in s else nan,
        "total bits": s["surprise"]["total_bits"] if "surprise" in s else nan,
        "note": s.get("error", "")} for (k, p), s in zip(compare, scores)])
    if not table["note"].any():
        table = table.drop(columns="note")
    else:
        st.caption("A hypothesis with a note cannot be evaluated by this engine (the note says "
                   "why); the treeified engine takes every path pattern on models it can "
                   "treeify.")
    # a static table: a click changes the "current" row, and redrawing a canvas grid
    # (st.dataframe) costs the browser ~50 ms per click; the values are the same numbers
    st.table(table.style.format({"loss scrubbed": "{:.4f}", "loss recovered %": "{:.2f}",
                                 "S(π) bits": "{:,.1f}", "S(Y|π) bits": "{:,.1f}",
                                 "total bits": "{:,.1f}"}, na_rep="n/a").hide(axis="index"))


def anomaly_box(lm, scrubber, part, model_key: str, n: int, seed: int, device: str) -> None:
    """ROC of scrubbed loss on normal vs shuffled inputs, for next-token zoo tasks."""
    with st.expander("Anomaly detection with this partition", expanded=False):
        if scrubber.data.batch.targets is None:
            st.info("The anomaly demo shuffles the second half of next-token sequences; this "
                    "model's task has no next-token targets.")
        elif st.checkbox("Run the demo (normal inputs vs second halves shuffled)",
                         key="_scrub_anomaly"):
            kind = st.radio("Score", ["scrubbed", "excess"], horizontal=True, key="_scrub_akind",
                            format_func={"scrubbed": "scrubbed loss",
                                         "excess": "scrubbed − original loss"}.get)
            try:
                with st.spinner("Scoring inputs…"):
                    demo = glue.anomaly(scrubber, model_key, part.hash,
                                        json.dumps(part.to_dict()), n, seed, device, lm)
            except PathError as e:
                st.info(str(e))
                return
            st.metric(f"ROC AUC ({kind})", f"{demo[kind]['auc']:.3f}")
            st.plotly_chart(anomaly_histogram(demo[kind]["normal"], demo[kind]["anomalous"],
                                              demo[kind]["auc"], kind), config=PNG_CONFIG,
                            key="_scrub_anomaly_hist")


def _search_progress(bar, i: int, k: int, step) -> None:
    """After each accepted step: the step's total bits; the bar's next step begins."""
    bar.update(min(1.0, i / max(k, 1)), label=f"Searching: step {i + 1} of {k} (step {i}: "
               f"{step.result.surprise.total_bits:,.1f} bits)", yield_lock=True)


def search_box(scrubber, part) -> None:
    """Greedy search from the current partition (lock released between steps)."""
    with st.expander("Greedy search over partitions", expanded=False):
        q1, q2 = st.columns(2)
        labels = {"node": "paths through a node", "edge": "paths through an edge"} \
            if glue.unit_name(scrubber.graph) == "path" else \
            {"node": "every edge into a node", "edge": "one edge"}
        unit = q1.selectbox("Candidates", ["node", "edge"], key="_scrub_unit",
                            format_func=labels.get)
        steps = int(q2.number_input("Max steps", 1, 20, 4, key="_scrub_steps"))
        from app.progress import show_cancelled, was_cancelled
        if was_cancelled("scrub-search"):  # the previous search's results (if any) stay
            show_cancelled("Search", "scrub-search", auto=False)
        if st.button("Search from the current partition", key="_scrub_search"):
            from estimators.scrubbing.search import greedy_search

            from app.progress import StepProgress

            # the bar: time left for the step in progress (its candidates' passes) and Cancel;
            # the model lock is given up after every batch of passes
            with StepProgress("Searching: step 0", "scrub-search", lock_held=True) as bar, \
                    store.model_lock():
                try:
                    found = greedy_search(scrubber, unit=unit, max_steps=steps, start=part,
                                          progress=lambda i, k, s: _search_progress(bar, i, k, s),
                                          batch_progress=bar)
                except PathError as e:
                    st.error(str(e))
                    found = []
            ss.scrub_search = [s.to_dict() for s in found]
            ss.scrub_search_end = (getattr(found, "stop_reason", ""),
                                   getattr(found, "verified_total_bits", None))
        if ss.get("scrub_search"):
            found = ss.scrub_search
            reason, verified = ss.get("scrub_search_end", ("", None))
            if reason:
                st.caption(f"Stopped: {reason}." + ("" if verified is None else
                           f" The best partition re-evaluated alone on a fresh scrubber: "
                           f"{verified:,.1f} total bits."))
            st.plotly_chart(search_path(found), config=PNG_CONFIG, key="_scrub_search_plot")
            st.dataframe(pd.DataFrame([{k: v for k, v in s.items() if k != "partition"}
                                       for s in found]), hide_index=True, width="stretch")
            best = PathPartition.from_dict(found[-1]["partition"])
            st.button("Apply the search's best partition", key="_scrub_apply_best",
                      on_click=lambda: set_partition(best, "Applied the search's best "
                                                           "partition."))
