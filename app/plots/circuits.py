"""The circuit as a clickable graph: layered by depth, scatter markers for nodes (so
`st.plotly_chart(on_select=...)` reports clicks), lines for edges, dashed red links for tracked
pairs (a red ring for a variable paired with itself)."""

from __future__ import annotations

import plotly.graph_objects as go

from estimators.circuits.model import Circuit

KIND_COLOR = {"input": "#92c5de", "const": "#d9d9d9", "add": "#fddbc7", "sub": "#fddbc7",
              "mul": "#f4a582"}
OP_SYMBOL = {"add": "+", "sub": "−", "mul": "×"}
TRACK_COLOR = "#b2182b"
# Only the node traces carry customdata ([id]), drawn last so they sit on top: a click on a
# marker or on its op symbol names the node.


def _label(circuit: Circuit, vid: str) -> str:
    if vid in circuit.inputs:
        d = circuit.inputs[vid]
        if d.dist == "normal":
            return f"N({d.mean:g}, {d.var:g})"
        if d.dist == "bernoulli":
            return f"Bern({d.p:g})"
        vals = ", ".join(f"{v:g}" for v in d.values[:4]) + (", …" if len(d.values) > 4 else "")
        return f"U{{{vals}}}"
    n = circuit.node_by_id[vid]
    if n.op == "const":
        return f"{n.value:g}"
    return f"{n.args[0]} {OP_SYMBOL[n.op]} {n.args[1]}"


def layout_positions(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """x = depth, y = rank within its layer (centred), in topological order."""
    depth = circuit.depths()
    layers: dict[int, list[str]] = {}
    for v in circuit.order:
        layers.setdefault(depth[v], []).append(v)
    pos = {}
    for d, vs in layers.items():
        for i, v in enumerate(vs):
            pos[v] = (float(d), (len(vs) - 1) / 2 - i)
    return pos


def circuit_graph(circuit: Circuit, tracked=(), pending: str | None = None,
                  stats: dict[str, dict] | None = None, height: int = 380) -> go.Figure:
    """`stats[id]` (optional) holds mean_est, mean_true, var_est, var_true for the hover."""
    pos = layout_positions(circuit)
    ids = list(circuit.order)
    hover = []
    for v in ids:
        h = f"<b>{v}</b> ({circuit.kind(v)}): {_label(circuit, v)}"
        if stats and v in stats:
            s = stats[v]
            h += (f"<br>mean: est {s['mean_est']:.4g}, true {s['mean_true']:.4g}"
                  f"<br>var: est {s['var_est']:.4g}, true {s['var_true']:.4g}")
        hover.append(h)
    fig = go.Figure()
    ex, ey, dx, dy = [], [], [], []
    for n in circuit.nodes:
        for i, a in enumerate(n.args):
            xs, ys = (dx, dy) if (n.op == "sub" and i == 1) else (ex, ey)
            xs += [pos[a][0], pos[n.id][0], None]
            ys += [pos[a][1], pos[n.id][1], None]
    fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines", line={"color": "#878787", "width": 1.5},
                             hoverinfo="skip", name="argument", showlegend=True))
    if dx:
        fig.add_trace(go.Scatter(x=dx, y=dy, mode="lines", hoverinfo="skip",
                                 line={"color": "#878787", "width": 1.5, "dash": "dot"},
                                 name="subtracted argument"))
    tx, ty, rings = [], [], []
    for u, v in tracked:
        if u == v:
            rings.append(u)
        else:
            tx += [pos[u][0], pos[v][0], None]
            ty += [pos[u][1], pos[v][1], None]
    if tx:
        fig.add_trace(go.Scatter(x=tx, y=ty, mode="lines", hoverinfo="skip",
                                 line={"color": TRACK_COLOR, "width": 3, "dash": "dash"},
                                 name="tracked covariance"))
    if rings:
        fig.add_trace(go.Scatter(x=[pos[v][0] for v in rings], y=[pos[v][1] for v in rings],
                                 mode="markers", hoverinfo="skip", name="tracked variance (x×x)",
                                 marker={"size": 48, "symbol": "circle-open",
                                         "line": {"color": TRACK_COLOR, "width": 3}}))
    fig.add_trace(go.Scatter(  # the nodes
        x=[pos[v][0] for v in ids], y=[pos[v][1] for v in ids], mode="markers+text",
        text=[f"<b>{v}</b>" + ("  ◀ output" if v == circuit.output else "") for v in ids],
        textposition="top center", customdata=[[v] for v in ids], hovertext=hover,
        hoverinfo="text", name="variables", showlegend=False,
        marker={"size": 34, "color": [KIND_COLOR[circuit.kind(v)] for v in ids],
                "line": {"width": [5 if v == pending else 1.5 for v in ids],
                         "color": ["#2166ac" if v == pending else "#404040" for v in ids]}}))
    fig.add_trace(go.Scatter(  # the op inside each marker
        x=[pos[v][0] for v in ids], y=[pos[v][1] for v in ids], mode="text",
        text=[OP_SYMBOL.get(circuit.kind(v), "z" if v in circuit.inputs else "k") for v in ids],
        customdata=[[v] for v in ids], hovertext=hover, hoverinfo="text", showlegend=False))
    ymax = max(abs(p[1]) for p in pos.values()) + 0.8
    xmax = max(p[0] for p in pos.values())
    fig.update_layout(
        # room for the outermost labels and the legend below, also in the PNG export
        height=height, margin=dict(t=30, b=60, l=20, r=20), clickmode="event+select",
        dragmode=False, legend={"orientation": "h", "y": -0.02, "yanchor": "top"},
        xaxis={"visible": False, "range": [-0.9, xmax + 0.9]},
        yaxis={"visible": False, "range": [-ymax - 0.3, ymax + 0.5]}, plot_bgcolor="white")
    return fig
