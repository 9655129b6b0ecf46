"""Figures of the Activation model page: pure functions of numbers, returning plotly figures.

Conventions (design.md): correlations diverging RdBu centred at 0 (`signed_heatmap`), marginal
histograms with the propagated Gaussian overlaid (`histogram_with_gaussian`). The mask editor is a
grid of scatter markers (not a heatmap) because `st.plotly_chart(on_select=...)` reports points
of scatter traces only; each marker carries its flat covariance indices as customdata.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from app.plots.common import signed_heatmap

# Trace order of `mask_grid` (curve numbers in a selection event).
GRID_TRACES = ("off", "on", "diagonal")
GRID_COLORS = {"off": "#e0e0e0", "on": "#b2182b", "diagonal": "#404040"}


def correlation_heatmap(corr, labels: Sequence[str], title: str) -> go.Figure:
    """A correlation matrix (zmax fixed at 1 so empirical and propagated share a colour scale)."""
    return signed_heatmap(corr, x_labels=labels, y_labels=labels, title=title, zmax=1.0,
                          colorbar_title="corr")


def mask_grid(mask, labels: Sequence[str], flat_index: Sequence[int], corr=None,
              title: str = "Mask: click a cell to toggle Cov(i, j)") -> go.Figure:
    """Clickable mask editor over a view of a site's units.

    mask:       bool [n, n], the mask restricted to the view (rows/cols = `flat_index`).
    labels:     n axis labels.
    flat_index: n flat indices into the site's covariance (customdata of each marker is
                [flat i, flat j], so a click maps back to the site's entry).
    corr:       optional [n, n] empirical correlation shown on hover.
    Traces, in order: off, on, diagonal (GRID_TRACES). Rows run top to bottom.
    """
    m = np.asarray(mask, dtype=bool)
    n = m.shape[0]
    if m.shape != (n, n) or len(labels) != n or len(flat_index) != n:
        raise ValueError("mask_grid: mask must be [n, n] with n labels and n flat indices")
    c = None if corr is None else np.asarray(corr, dtype=float)
    rows, cols = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    diag = rows == cols
    state = np.where(diag, "diagonal", np.where(m[rows, cols], "on", "off"))
    size = max(4.0, min(18.0, 520.0 / max(n, 1)))
    fi = np.asarray(flat_index, dtype=int)
    fig = go.Figure()
    for name in GRID_TRACES:
        sel = state == name
        r, k = rows[sel], cols[sel]
        hover = [f"{labels[a]} × {labels[b]}  [{fi[a]}, {fi[b]}]"
                 + ("" if c is None else f"<br>corr {c[a, b]:+.3f}") + f"<br>{name}"
                 for a, b in zip(r, k)]
        fig.add_trace(go.Scatter(
            x=[labels[b] for b in k], y=[labels[a] for a in r], mode="markers", name=name,
            marker={"symbol": "square", "size": size, "color": GRID_COLORS[name]},
            customdata=np.stack([fi[r], fi[k]], axis=1).tolist() if r.size else [],
            hovertext=hover, hoverinfo="text"))
    fig.update_layout(
        title=title, clickmode="event+select", dragmode=False,
        xaxis={"type": "category", "categoryorder": "array", "categoryarray": list(labels),
               "side": "top", "showgrid": False},
        yaxis={"type": "category", "categoryorder": "array",
               "categoryarray": list(labels)[::-1], "showgrid": False, "scaleanchor": "x"},
        legend={"orientation": "h", "y": -0.05}, margin=dict(t=80, l=60, r=20, b=40),
        height=max(360, min(760, 40 + n * (size + 2))))
    return fig


def grid_states(fig: go.Figure) -> dict[tuple[int, int], str]:
    """{(flat i, flat j): 'off' | 'on' | 'diagonal'} read back from a `mask_grid` figure."""
    out = {}
    for tr in fig.data:
        for cd in (tr.customdata if tr.customdata is not None else []):
            out[(int(cd[0]), int(cd[1]))] = tr.name
    return out


def distance_by_layer(sites: Sequence[str], rows: Sequence[dict],
                      title: str = "Distance to the real activations, by site") -> go.Figure:
    """Per-site distances (rows: dicts with kl_emp_est, kl_est_emp, w2, mean_error, var_error,
    and optionally kl_marginal and covariance_method — ridge or ledoit-wolf, named in the KL
    panel's title) in three panels with their own units, each on a log axis: KL (nats), W2
    (activation units), relative errors (ratios). 0 and ∞ are left out (a log axis cannot draw them). Lines that
    coincide stay visible: different dashes and marker symbols."""
    from plotly.subplots import make_subplots

    methods = sorted({str(r.get("covariance_method", "ridge")) for r in rows})
    cov_label = "+".join(m if m != "ledoit-wolf" else "Ledoit–Wolf" for m in methods)
    panels = [(f"KL divergence (nats; real cov.: {cov_label})",
               [("kl_emp_est", "KL(real ‖ est) nats", "solid", "circle"),
                ("kl_est_emp", "KL(est ‖ real) nats", "dash", "x"),
                ("kl_marginal", "marginal KL, mean per unit (nats)", "dot", "square")]),
              ("W2 (activation units)", [("w2", "W2", "solid", "circle")]),
              ("relative error", [("mean_error", "mean error (rel.)", "solid", "circle"),
                                  ("var_error", "var error (rel.)", "dot", "diamond")])]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.08)
    x = list(sites)
    for col, (_, series) in enumerate(panels, start=1):
        for key, name, dash, symbol in series:
            y = [float(r[key]) if r.get(key) is not None and math.isfinite(float(r[key]))
                 and float(r[key]) > 0 else None for r in rows]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name,
                                     line={"dash": dash}, marker={"symbol": symbol, "size": 8}),
                          row=1, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
        fig.update_xaxes(type="category", title_text="site", row=1, col=col)
    fig.update_layout(title=title, legend={"orientation": "h", "y": -0.45},
                      margin=dict(t=70, b=60))
    return fig


def search_path(path: Sequence[dict], title: str = "Argument search path") -> go.Figure:
    """S(π), S(Y|π) and the total after each step of a search."""
    steps = [int(p["step"]) for p in path]
    fig = go.Figure()
    for key, name, color in (("argument_bits", "S(π) argument", "#d6604d"),
                             ("data_bits", "S(Y|π) data", "#4393c3"),
                             ("total_bits", "total", "#404040")):
        fig.add_trace(go.Scatter(x=steps, y=[float(p[key]) for p in path], mode="lines+markers",
                                 name=name, line={"color": color}))
    fig.update_layout(title=title, xaxis={"title": "step"}, yaxis={"title": "bits"},
                      legend={"orientation": "h", "y": -0.25}, margin=dict(t=50, b=40))
    return fig
