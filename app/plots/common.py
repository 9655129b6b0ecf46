"""Figures several pages share, drawn with the field's conventions."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from estimators.surprise import SurpriseBreakdown

PNG_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def surprise_waterfall(s: SurpriseBreakdown, title: str = "Surprise breakdown") -> go.Figure:
    """S(π) (with its parts, if any are named 'argument:…') then S(Y|π), then the total."""
    arg_parts = {k.split(":", 1)[1]: v for k, v in s.parts.items() if k.startswith("argument:")}
    data_parts = {k.split(":", 1)[1]: v for k, v in s.parts.items() if k.startswith("data:")}
    labels, values, measures = [], [], []
    for name, parts, total in (("S(π) argument", arg_parts, s.argument_bits),
                               ("S(Y|π) data", data_parts, s.data_bits)):
        if parts and len(parts) <= 24:
            for k, v in parts.items():
                labels.append(f"{name.split()[0]} {k}")
                values.append(v)
                measures.append("relative")
        else:
            labels.append(name)
            values.append(total)
            measures.append("relative")
    labels.append("total")
    values.append(s.total_bits)
    measures.append("total")
    fig = go.Figure(go.Waterfall(
        x=labels, y=values, measure=measures,
        text=[f"{v:,.1f}" for v in values], textposition="outside",
        increasing={"marker": {"color": "#d6604d"}}, decreasing={"marker": {"color": "#4393c3"}},
        totals={"marker": {"color": "#404040"}}))
    fig.update_layout(title=f"{title}: {s.total_bits:,.1f} bits = {s.argument_bits:,.1f} + "
                            f"{s.data_bits:,.1f}",
                      yaxis_title="bits", showlegend=False, margin=dict(t=60, b=40))
    return fig


def signed_heatmap(matrix, x_labels: Sequence[str] | None = None,
                   y_labels: Sequence[str] | None = None, title: str = "",
                   zmax: float | None = None, colorbar_title: str = "") -> go.Figure:
    """Correlations/covariances: diverging RdBu centred at 0 (red positive)."""
    m = np.asarray(matrix, dtype=float)
    if zmax is None:
        finite = np.abs(m[np.isfinite(m)])
        zmax = float(finite.max()) if finite.size else 1.0
        zmax = zmax or 1.0
    fig = go.Figure(go.Heatmap(z=m, x=list(x_labels) if x_labels is not None else None,
                               y=list(y_labels) if y_labels is not None else None,
                               colorscale="RdBu", reversescale=True, zmid=0, zmin=-zmax,
                               zmax=zmax, colorbar={"title": colorbar_title}))
    fig.update_layout(title=title, yaxis={"autorange": "reversed", "scaleanchor": "x"},
                      margin=dict(t=50, l=40, r=20, b=40))
    return fig


def histogram_with_gaussian(samples, mean: float, var: float, title: str = "",
                            bins: int = 60, label: str = "propagated N(μ, σ²)",
                            x_title: str = "activation value") -> go.Figure:
    """Empirical histogram (density) with a Gaussian density overlaid."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=x, nbinsx=bins, histnorm="probability density",
                               name="real activations", marker_color="#92c5de", opacity=0.8))
    sd = math.sqrt(max(var, 1e-12))
    lo = min(float(x.min()) if x.size else mean - 4 * sd, mean - 4 * sd)
    hi = max(float(x.max()) if x.size else mean + 4 * sd, mean + 4 * sd)
    grid = np.linspace(lo, hi, 400)
    pdf = np.exp(-0.5 * ((grid - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    fig.add_trace(go.Scatter(x=grid, y=pdf, mode="lines", name=label,
                             line={"color": "#b2182b", "width": 2}))
    fig.update_layout(title=title, barmode="overlay", yaxis_title="density",
                      xaxis_title=x_title, legend={"orientation": "h", "y": -0.3},
                      margin=dict(t=50, b=40))
    return fig


def loglog_estimate_vs_truth(truth, estimate, methods, lower=None, upper=None,
                             title: str = "Estimate against truth") -> go.Figure:
    """Log-log scatter of estimates against true probabilities, one colour per method, with
    the y = x line and intervals where given. Zero estimates are drawn at the plot's floor."""
    truth = np.asarray(truth, dtype=float)
    est = np.asarray(estimate, dtype=float)
    methods = np.asarray(methods)
    positive = np.concatenate([truth[truth > 0], est[est > 0]])
    floor = float(positive.min()) / 10 if positive.size else 1e-12
    top = float(positive.max()) * 10 if positive.size else 1.0
    fig = go.Figure()
    for m in dict.fromkeys(methods.tolist()):
        sel = methods == m
        y = np.where(est[sel] > 0, est[sel], floor)
        err = None
        if lower is not None and upper is not None:
            lo = np.asarray(lower, dtype=float)[sel]
            hi = np.asarray(upper, dtype=float)[sel]
            err = {"type": "data", "symmetric": False,
                   "array": np.clip(hi - y, 0, None), "arrayminus": np.clip(y - np.maximum(lo, floor), 0, None)}
        fig.add_trace(go.Scatter(x=truth[sel], y=y, mode="markers", name=str(m), error_y=err))
    fig.add_trace(go.Scatter(x=[floor, top], y=[floor, top], mode="lines", name="y = x",
                             line={"dash": "dash", "color": "gray"}))
    fig.update_layout(title=title, xaxis={"type": "log", "title": "true probability"},
                      yaxis={"type": "log", "title": "estimate"}, margin=dict(t=50))
    return fig
