"""Figures of the Causal scrubbing page: the clickable component graph (treeified paths, or the
edge engine's edges: named edges drawn one by one, large groups and the rest as bundles),
losses, anomaly scores."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from estimators.scrubbing.partition import IMPORTANT, REST
from estimators.scrubbing.paths import PathGraph

GROUP_COLOURS = ["#b2182b", "#2166ac", "#1b7837", "#762a83", "#e08214", "#35978f", "#8c510a"]
REST_COLOUR = "#bdbdbd"
CHANNEL_DY = {"q": 0.22, "k": 0.0, "v": -0.22}


def group_colour(gid: int) -> str:
    return REST_COLOUR if gid == REST else GROUP_COLOURS[gid % len(GROUP_COLOURS)]


def group_name(gid: int) -> str:
    return "rest (random)" if gid == REST else ("important" if gid == IMPORTANT
                                                else f"block {gid}")


def graph_points(graph: PathGraph) -> list[dict]:
    """The clickable points: embed, logits, each head's q/k/v inputs, each MLP.

    Each point carries the pattern of all paths through it ("through node" clicks) and its
    role for edge clicks: a source name and/or a destination hop."""
    pts = [{"id": "embed", "x": -1.0, "y": (graph.n_heads - 1) / 2, "label": "embed",
            "through": "embed>*", "source": "embed", "dest": None}]
    for n in graph.nodes[1:]:
        if n.kind == "attn":
            for c in ("q", "k", "v"):
                pts.append({"id": f"{n.name}:{c}", "x": n.layer - 0.12,
                            "y": n.head + CHANNEL_DY[c], "label": f"{n.name}:{c}",
                            "through": f"*>{n.name}:{c}>*", "source": None,
                            "dest": f"{n.name}:{c}"})
            pts.append({"id": n.name, "x": n.layer + 0.12, "y": float(n.head), "label": n.name,
                        "through": f"*>{n.name}:*>*", "source": n.name, "dest": None})
        else:
            pts.append({"id": n.name, "x": n.layer + 0.45, "y": float(graph.n_heads),
                        "label": n.name, "through": f"*>{n.name}>*", "source": n.name,
                        "dest": n.name})
    pts.append({"id": "logits", "x": float(graph.n_layers), "y": (graph.n_heads - 1) / 2,
                "label": "logits", "through": "*>logits", "source": None, "dest": "logits"})
    return pts


def _is_channel(p: dict) -> bool:
    """A head's q, k or v input point."""
    return bool(p["dest"]) and ":" in p["dest"] and p["id"] == p["dest"]


def _units(graph, pattern: str) -> np.ndarray:
    """The units (paths, or edges for an EdgeGraph) a pattern names; empty when none."""
    if getattr(graph, "UNIT", "path") == "path":
        return graph.match(pattern)
    try:
        return graph.match_required(pattern)
    except ValueError:  # PathError: names no edge here
        return np.zeros(0, dtype=np.int64)


def _named_group(graph: PathGraph, assignment: np.ndarray, pattern: str) -> tuple[int, float]:
    """The most common named group (important or a block) among the pattern's paths (edges),
    and the share of them that are named at all; (REST, 0) when none is."""
    idx = _units(graph, pattern)
    if idx.size == 0:
        return REST, 0.0
    named = assignment[idx][assignment[idx] != REST]
    if named.size == 0:
        return REST, 0.0
    groups, counts = np.unique(named, return_counts=True)
    return int(groups[np.argmax(counts)]), named.size / idx.size


def _edges(graph: PathGraph, pos: dict) -> list[tuple[str, str, str]]:
    """(source point, destination point, pattern of the paths through that edge)."""
    out = []
    for n in graph.nodes[1:] + [None]:
        for c in (n.channels if n is not None else (None,)):
            d = n.hop(c) if n is not None else "logits"
            for s in graph.sources_of(n):
                left = "embed" if s.kind == "embed" else (
                    f"*>{s.name}:*" if s.kind == "attn" else f"*>{s.name}")
                pattern = f"{left}>{d}" + ("" if n is None else ">*")
                if s.name in pos and d in pos:
                    out.append((s.name, d, pattern))
    return out


def component_graph(graph: PathGraph, assignment: np.ndarray, pending: str | None = None,
                    title: str = "Components (click to assign paths)") -> go.Figure:
    """Scatter nodes laid out layer × head. A point (or edge) takes the colour of the named
    group most of its named paths are in, more opaque the larger the share of its paths that
    are named; grey when all its paths are in the random rest."""
    pts = graph_points(graph)
    pos = {p["id"]: (p["x"], p["y"]) for p in pts}
    fig = go.Figure()
    # Edges first, one trace per group; the clickable markers are the last trace.
    if getattr(graph, "UNIT", "path") == "edge":
        _edge_engine_lines(fig, graph, assignment, pos)
    else:
        by_group: dict[int, tuple[list, list]] = {}
        for src, dst, pattern in _edges(graph, pos):
            gid, _ = _named_group(graph, assignment, pattern)
            xs, ys = by_group.setdefault(gid, ([], []))
            xs += [pos[src][0], pos[dst][0], None]
            ys += [pos[src][1], pos[dst][1], None]
        for gid in sorted(by_group, key=lambda g: (g != REST, g)):
            xs, ys = by_group[gid]
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                line={"color": "rgba(120,120,120,0.25)" if gid == REST else group_colour(gid),
                      "width": 1 if gid == REST else 2.5}))
    colours, sizes, texts, lines, opac = [], [], [], [], []
    units = "paths through it" if getattr(graph, "UNIT", "path") == "path" else \
        "edges its click pattern names"
    for p in pts:
        gid, share = _named_group(graph, assignment, p["through"])
        colours.append(group_colour(gid))
        opac.append(1.0 if gid == REST else 0.35 + 0.65 * share)
        sizes.append(14 if p["dest"] and ":" in (p["dest"] or "") else 24)
        texts.append(f"{p['label']}<br>{share:.0%} of the {units} are named"
                     + ("" if gid == REST else f", mostly {group_name(gid)}"))
        lines.append(4 if p["id"] == pending else 1)
    fig.add_trace(go.Scatter(
        x=[p["x"] for p in pts], y=[p["y"] for p in pts], mode="markers+text",
        # a head's q/k/v inputs sit 0.22 apart: label them with their letter, to the left, so
        # the labels do not overlap (the hover gives the full name)
        text=[p["id"].rsplit(":", 1)[1] if _is_channel(p) else p["label"] for p in pts],
        textposition=["middle left" if _is_channel(p) else "top center" for p in pts],
        hovertext=texts,
        hoverinfo="text", customdata=[[p["id"]] for p in pts], showlegend=False,
        marker={"size": sizes, "color": colours, "opacity": opac,
                "line": {"width": lines, "color": "black"}}))
    for gid in sorted(set(np.unique(assignment).tolist())):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=group_name(gid),
                                 marker={"size": 10, "color": group_colour(gid)},
                                 hoverinfo="skip"))
    fig.update_layout(
        title=title, clickmode="event+select", height=400, margin=dict(t=50, l=20, r=20, b=30),
        legend={"orientation": "h", "y": -0.18},
        xaxis={"title": "layer", "tickvals": list(range(-1, graph.n_layers + 1)),
               "ticktext": ["embed"] + [str(i) for i in range(graph.n_layers)] + ["logits"],
               "zeroline": False},
        yaxis={"title": "head (MLP on top)", "zeroline": False, "showticklabels": False})
    return fig


MAX_DRAWN_EDGES = 600  # edge engine: more edges than this in one group are drawn as bundles


def _column(graph, node_name: str | None) -> tuple[str, float, float]:
    """(bundle column, x, y) of a source node or receiver: embed, the heads of layer l, MLP l,
    logits."""
    H = graph.n_heads
    if node_name is None or node_name == "logits":
        return "logits", float(graph.n_layers), (H - 1) / 2
    n = graph.node(node_name)
    if n.kind == "embed":
        return "embed", -1.0, (H - 1) / 2
    if n.kind == "attn":
        return f"a{n.layer}", float(n.layer), (H - 1) / 2
    return n.name, n.layer + 0.45, float(H)


def edge_summary(graph, assignment: np.ndarray) -> dict[int, dict]:
    """Per group: its edge count and, when it has more than MAX_DRAWN_EDGES edges (always for
    the rest of a model with more edges than that), the bundles {(source column, receiver
    column): edge count} it is drawn as."""
    out = {}
    total_big = graph.n_edges > MAX_DRAWN_EDGES
    for gid in np.unique(assignment):
        idx = np.flatnonzero(assignment == gid)
        entry = {"edges": int(idx.size)}
        if idx.size > MAX_DRAWN_EDGES or (gid == REST and total_big):
            bundles: dict[tuple, int] = {}
            src_col = [_column(graph, n.name)[0] for n in graph.nodes]
            dst_col = [_column(graph, name)[0] for name, _ in graph.dests]
            for e in idx:
                k = (src_col[graph.edge_src[e]], dst_col[graph.edge_dest[e]])
                bundles[k] = bundles.get(k, 0) + 1
            entry["bundles"] = bundles
        out[int(gid)] = entry
    return out


def _edge_engine_lines(fig: go.Figure, graph, assignment: np.ndarray, pos: dict) -> None:
    """The edge engine's edges: each named edge its own line in its group's colour, groups
    (and the rest, on a model with more than MAX_DRAWN_EDGES edges) of more edges as one
    bundle per (source column → receiver column), its width growing with log(edge count)."""
    cols = {}
    for n in graph.nodes:
        c, x, y = _column(graph, n.name)
        cols[c] = (x, y)
    cols["logits"] = _column(graph, None)[1:]
    for gid, entry in sorted(edge_summary(graph, assignment).items(),
                             key=lambda kv: (kv[0] != REST, kv[0])):
        colour = "rgba(120,120,120,0.25)" if gid == REST else group_colour(gid)
        if "bundles" in entry:
            for (a, b), count in entry["bundles"].items():
                fig.add_trace(go.Scatter(
                    x=[cols[a][0], cols[b][0]], y=[cols[a][1], cols[b][1]], mode="lines",
                    hoverinfo="skip", showlegend=False,
                    line={"color": colour, "width": 1 + float(np.log10(count))}))
            continue
        xs, ys = [], []
        for e in np.flatnonzero(assignment == gid):
            src = graph.nodes[graph.edge_src[e]].name
            name, c = graph.dests[graph.edge_dest[e]]
            dst = "logits" if name == "logits" else (f"{name}:{c}" if c else name)
            if src in pos and dst in pos:
                xs += [pos[src][0], pos[dst][0], None]
                ys += [pos[src][1], pos[dst][1], None]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line={"color": colour, "width": 1 if gid == REST else 2.5}))


def loss_bars(loss_original: float, loss_scrubbed: float, loss_random: float) -> go.Figure:
    labels = ["original", "scrubbed", "all resampled"]
    vals = [loss_original, loss_scrubbed, loss_random]
    fig = go.Figure(go.Bar(x=labels, y=vals, text=[f"{v:.4f}" for v in vals],
                           textposition="outside",
                           marker_color=["#4393c3", "#d6604d", REST_COLOUR]))
    fig.update_layout(title="Task loss (nats per example)", yaxis_title="loss (nats)",
                      margin=dict(t=50, b=30), height=340)
    return fig


def anomaly_histogram(normal, anomalous, auc: float, score: str) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=list(normal), name="normal", opacity=0.7, nbinsx=40,
                               marker_color="#4393c3"))
    fig.add_trace(go.Histogram(x=list(anomalous), name="anomalous", opacity=0.7, nbinsx=40,
                               marker_color="#d6604d"))
    fig.update_layout(barmode="overlay", title=f"Anomaly scores ({score}): ROC AUC {auc:.3f}",
                      xaxis_title="score (nats)", yaxis_title="inputs",
                      legend={"orientation": "h", "y": -0.25}, margin=dict(t=50, b=40))
    return fig


def search_path(steps: list[dict]) -> go.Figure:
    x = [s["step"] for s in steps]
    fig = go.Figure()
    for key, name in (("argument_bits", "S(π)"), ("data_bits", "S(Y|π)"),
                      ("total_bits", "total")):
        fig.add_trace(go.Scatter(x=x, y=[s[key] for s in steps], mode="lines+markers",
                                 name=name))
    fig.update_layout(title="Greedy search", xaxis_title="step", yaxis_title="bits",
                      margin=dict(t=50, b=30), height=320)
    return fig
