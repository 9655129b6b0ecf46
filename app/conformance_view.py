"""The Model page's "which engines this model supports, and why not" table.

Every engine that computes on the model by its own code has a conformance check
(`estimators.conformance`); this renders their verdicts on the loaded model: supported or not,
the largest disagreement with the model's own forward pass, the tolerance it was held to, and
the one-line reason of a refusal. Verdicts are computed once per (model fingerprint, engine).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from estimators import conformance

TITLE = "Engines this model supports"


def verdict_frame(model) -> pd.DataFrame:
    """One row per registered engine: engine, supported, max error, tolerance, why not."""
    rows = conformance.summary(model)

    def num(x):
        return "" if x is None else f"{x:.2e}"
    return pd.DataFrame({
        "engine": list(rows),
        "supported": ["yes" if r["ok"] else "no" for r in rows.values()],
        "max error": [num(r["max_abs_error"]) for r in rows.values()],
        "tolerance": [num(r["tolerance"]) for r in rows.values()],
        "why not": [r["reason"] or "" for r in rows.values()],
    })


def render(model) -> None:
    """The table, with a caption saying what was compared."""
    st.markdown(f"**{TITLE}**")
    st.dataframe(verdict_frame(model), hide_index=True, width="stretch")
    st.caption("Each engine's own computations compared with the model's forward pass and "
               "hooks on a few random inputs (model dtype and float64). An engine that "
               "disagrees refuses this model rather than show a wrong number.")
