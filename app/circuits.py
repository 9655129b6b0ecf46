"""Streamlit glue for the Arithmetic circuits page: the page's state (circuit, tracked pairs,
estimator), its URL form, uploads and downloads, and the cached exact truth.

URL parameters: `circuit` = a preset name or a blob of the circuit JSON; `track` = a blob of the
tracked pairs [[u, v], ...]; `method` = independence | sparse | wick | montecarlo; `order` = the
Wick order (wick only). The explanation file (kind "circuit") holds {"circuit": <circuit JSON>,
"preset": name | null, "config": <CircuitConfig.to_dict() without device>}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st

from app import state
from estimators.circuits import (METHODS, Circuit, CircuitConfig, CircuitError, analyse,
                                 exact_moments, list_presets, load_preset)
from estimators.circuits.analysis import CircuitAnalysis, MAX_ORDER
from estimators.circuits.propagate import candidate_users, check_tracked

KIND = "circuit"
DEFAULT_PRESET = "square"
P_CIRCUIT, P_TRACK, P_METHOD, P_ORDER = "circuit", "track", "method", "order"


@dataclass
class View:
    """What defines the page: the circuit (and its preset name, if it is one) and the config."""

    circuit: Circuit
    preset: str | None
    method: str = "sparse"
    tracked: list[tuple[str, str]] = field(default_factory=list)
    order: int = 2


def view_from_params(get_param, get_blob) -> tuple[View, list[str]]:
    """Build the view from URL parameters; returns (view, error messages). A malformed part is
    reported and replaced by its default, the rest is kept."""
    errors: list[str] = []
    view = View(load_preset(DEFAULT_PRESET), DEFAULT_PRESET)
    raw = get_param(P_CIRCUIT)
    if raw is not None:
        try:
            if raw in list_presets():
                view = View(load_preset(raw), raw)
            else:
                view = View(Circuit.from_dict(state.decode_blob(raw), name="from link"), None)
        except (state.StateError, CircuitError) as e:
            errors.append(f"The link's circuit could not be used: {e}")
    method = get_param(P_METHOD)
    if method is not None:
        if method in METHODS:
            view.method = method
        else:
            errors.append(f"The link's method {method!r} is unknown; using sparse covariance.")
    order = get_param(P_ORDER)
    if order is not None:
        try:
            view.order = int(order)
            if not 1 <= view.order <= MAX_ORDER:
                raise ValueError
        except ValueError:
            errors.append(f"The link's Wick order {order!r} is not an integer in [1, {MAX_ORDER}].")
            view.order = 2
    try:
        pairs = get_blob(P_TRACK)
        if pairs is not None:
            if not isinstance(pairs, list):
                raise CircuitError("tracked pairs must be a list of [id, id]")
            view.tracked = check_tracked(view.circuit, pairs)
    except (state.StateError, CircuitError) as e:
        errors.append(f"The link's tracked pairs could not be used: {e}")
    return view, errors


def write_params(view: View) -> None:
    state.set_param(P_CIRCUIT, view.preset or state.encode_blob(view.circuit.to_dict()))
    state.set_blob_param(P_TRACK, [list(p) for p in view.tracked] or None)
    state.set_param(P_METHOD, view.method)
    state.set_param(P_ORDER, str(view.order) if view.method == "wick" else None)


def explanation(view: View, config: CircuitConfig) -> bytes:
    cfg = config.to_dict()
    cfg.pop("device")
    return state.explanation_bytes(
        KIND, {"circuit": view.circuit.to_dict(), "preset": view.preset, "config": cfg},
        {"page": "Arithmetic circuits", "output": view.circuit.output})


def view_from_upload(data: bytes, name: str) -> View:
    """A plain circuit JSON file, or an explanation file saved by this page. Raises
    StateError/CircuitError (both ValueError) with a message for st.error."""
    doc, context = state.read_argument_file(data, KIND)
    if context is not None:
        payload = doc
        preset = payload.get("preset")
        circuit = Circuit.from_dict(payload.get("circuit"), name=preset or name)
        cfg = CircuitConfig.from_dict({**payload.get("config", {}), "device": "cpu"})
        return View(circuit, preset if preset in list_presets() else None, cfg.method,
                    check_tracked(circuit, cfg.tracked), cfg.order)
    return View(Circuit.from_dict(doc, name=name.rsplit(".", 1)[0]), None)


@st.cache_data(show_spinner=False, max_entries=64)
def _truth(circuit_json: str):
    return exact_moments(Circuit.from_json(circuit_json))


@st.cache_data(show_spinner=False, max_entries=256)
def _analysis(circuit_json: str, config_json: str) -> CircuitAnalysis:
    circuit = Circuit.from_json(circuit_json)
    return analyse(circuit, CircuitConfig.from_dict(json.loads(config_json)),
                   truth=_truth(circuit_json))


def run(view: View, config: CircuitConfig) -> CircuitAnalysis:
    """analyse(), cached by (circuit, config); the exact truth is cached by circuit alone."""
    a = _analysis(json.dumps(view.circuit.to_dict(), sort_keys=True),
                  json.dumps(config.to_dict(), sort_keys=True))
    a.circuit = view.circuit  # keep the display name
    return a


def pair_label(circuit: Circuit, pair: tuple[str, str]) -> str:
    users = candidate_users(circuit).get(tuple(pair), [])
    return f"{pair[0]} × {pair[1]}  (used by {', '.join(users)})"


def tables(a: CircuitAnalysis) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(estimate vs truth, errors) per variable."""
    rows = a.rows()
    values = pd.DataFrame([{"node": r["id"], "kind": r["kind"], "mean est": r["mean_est"],
                            "mean true": r["mean_true"], "var est": r["var_est"],
                            "var true": r["var_true"]} for r in rows])

    def rel(err, true):
        return abs(err) / abs(true) if true != 0 else (0.0 if err == 0 else float("inf"))

    errors = pd.DataFrame([{"node": r["id"], "mean error": r["mean_err"],
                            "mean rel. error": rel(r["mean_err"], r["mean_true"]),
                            "var error": r["var_err"],
                            "var rel. error": rel(r["var_err"], r["var_true"]),
                            "warning": r["warning"]} for r in rows])
    return values, errors


def covariance_table(a: CircuitAnalysis) -> pd.DataFrame:
    """Each candidate pair: tracked?, the covariance the estimator computed, the true one."""
    return pd.DataFrame([{"pair": f"{u} × {v}", "tracked": (u, v) in a.tracked,
                          "cov computed": a.estimate.cov_of(u, v),
                          "cov true": a.truth.cov_of(u, v),
                          "used by": ", ".join(candidate_users(a.circuit)[(u, v)])}
                         for u, v in a.candidates])
