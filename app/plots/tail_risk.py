"""Figures of the "Tail risk" page (pure functions of result tables → plotly figures)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.plots.common import loglog_estimate_vs_truth
from estimators.tailrisk.scoring import DEFAULT_FLOOR


def estimate_vs_truth(results: pd.DataFrame) -> go.Figure:
    df = results[results["truth"].notna() & (results["truth"] > 0)]
    low = df["low"].astype(float).fillna(df["estimate"]).to_numpy()
    high = df["high"].astype(float).fillna(df["estimate"]).to_numpy()
    return loglog_estimate_vs_truth(df["truth"].to_numpy(), df["estimate"].to_numpy(),
                                    df["method"].to_numpy(), lower=low, upper=high,
                                    title="Estimate against exact truth (zero estimates at "
                                          "the floor)")


def convergence(results: pd.DataFrame) -> go.Figure:
    """|log10 p̂ − log10 p| (median over targets) against the budget, one line per method."""
    df = results[results["truth"].notna() & (results["truth"] > 0)].copy()
    est = np.maximum(df["estimate"].to_numpy(dtype=float), DEFAULT_FLOOR)
    df["error"] = np.abs(np.log10(est) - np.log10(df["truth"].to_numpy(dtype=float)))
    fig = go.Figure()
    for m, g in df.groupby("method", sort=False):
        med = g.groupby("budget")["error"].median()
        fig.add_trace(go.Scatter(x=med.index, y=med.values, mode="lines+markers", name=m))
    fig.update_layout(title="Convergence: median |log10 estimate − log10 truth| "
                            f"(0 floored at {DEFAULT_FLOOR:g})",
                      xaxis={"type": "log", "title": "budget (model calls)"},
                      yaxis={"title": "orders of magnitude off"}, margin=dict(t=50))
    return fig


def loss_bars(losses: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for col, name in (("itakura_saito", "Itakura–Saito"),
                      ("itakura_saito_fitted", "Itakura–Saito, affine fit")):
        fig.add_trace(go.Bar(x=losses["method"], y=losses[col], name=name))
    fig.update_layout(title="Loss per method (lower is better)", barmode="group",
                      yaxis={"type": "log", "title": "mean loss over targets"},
                      margin=dict(t=50))
    return fig
