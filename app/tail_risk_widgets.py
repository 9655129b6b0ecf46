"""The Tail risk page's session state and widget groups (the page itself is layout only).

Widget values live in `st.session_state` under keys `tr_w_*`. They are written from the current
`Settings` (`_init`) only when absent, i.e. on first show and after new settings arrive from a
link or a settings file (`apply`, which drops the old widget state). Writing them through the
session-state API, not as widget defaults, is what makes the browser show the new values:
Streamlit identifies these widgets by key alone, so a changed default would be ignored by the
frontend, which keeps sending the old value (the "uploaded settings do nothing" bug).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from app import messages, state, store
from app import tail_risk as tr
from estimators.tailrisk import ESTIMATORS, BehaviourError, parse_direction, residual_hooks
from estimators.tailrisk.distributions import from_json
from estimators.validation import loads_json

W = "tr_w_"  # widget-key prefix
MAX_TARGET_OPTIONS = 4096  # above this output vocabulary the target is a number field, not a list


def _init(key: str, value) -> str:
    """The widget key `W+key`, its state set from `value` when the widget has none yet."""
    if W + key not in st.session_state:
        st.session_state[W + key] = value
    return W + key


def _reset_widgets() -> None:
    for k in [k for k in st.session_state if str(k).startswith(W)]:
        del st.session_state[k]


def apply(settings: tr.Settings) -> None:
    """Make `settings` the page's settings; the widgets show them from the next draw."""
    st.session_state["tr_settings"] = settings
    _reset_widgets()


def load_settings(lm, model, sae) -> tr.Settings:
    """The page's settings: from the link (`tr`) when the model changes, else the session's.
    A bad link is one st.error line and the defaults (or clamped values, with a note)."""
    if st.session_state.get("tr_model") != lm.name:
        st.session_state["tr_model"] = lm.name
        st.session_state.pop("tr_results", None)
        settings = tr.Settings()
        try:
            blob = state.get_blob_param(tr.URL_KEY)
            if blob is not None:
                settings, notes = tr.settings_from_untrusted(blob, model, sae)
                for n in notes:
                    st.warning(f"The link's tail-risk settings: {messages.plain(n)}")
        except ValueError as e:  # StateError and InputError are ValueErrors
            st.error(f"The link's tail-risk settings were not used: {messages.plain(e)}")
        apply(settings)
    return st.session_state["tr_settings"]


def _data_spec() -> str:
    from app import data_source
    return data_source.current_spec()


def settings_file_box(lm, s: tr.Settings, model, sae) -> None:
    """Download the settings as an explanation file; an uploaded one (also edited) applies."""
    with st.expander("Settings file", expanded=False):
        st.download_button("Download settings", state.explanation_bytes(
            tr.SETTINGS_KIND, s.to_dict(), {"model": lm.name, "data": _data_spec()}),
            file_name="tail_risk.json",
            mime="application/json")
        up = st.file_uploader("Upload settings", type=["json"], key="tr_settings_file")
        if up is None or st.session_state.get("tr_settings_seen") == up.file_id:
            return
        st.session_state["tr_settings_seen"] = up.file_id
        try:
            payload, _ = state.parse_explanation(up.getvalue(), tr.SETTINGS_KIND)
            new, notes = tr.settings_from_untrusted(payload, model, sae)
        except ValueError as e:
            st.error(f"Settings file not used: {messages.plain(e)}")
            return
        apply(new)
        st.session_state["tr_notes"] = notes
        st.rerun()


def behaviour_widgets(s: tr.Settings, model, sae) -> dict:
    """Behaviour, τ, threshold and the SAE/probe choices; returns their Settings fields."""
    r = tr.model_ranges(model, sae)
    out = {"sae_feature": s.sae_feature, "probe_hook": s.probe_hook,
           "probe_source": s.probe_source, "probe_unit": s.probe_unit,
           "probe_vector": s.probe_vector, "probe_bias": s.probe_bias}
    out["behaviour"] = b = st.selectbox("Behaviour", list(tr.BEHAVIOURS),
                                        format_func=tr.BEHAVIOURS.get,
                                        key=_init("behaviour", s.behaviour))
    out["sampling_temperature"] = st.number_input(
        "Sampling temperature τ", *r["sampling_temperature"][:2],
        key=_init("tau", float(s.sampling_temperature)), disabled=b != "sampled")
    out["threshold"] = st.number_input(
        "Threshold (logit, SAE latent or probe)", *r["threshold"][:2],
        key=_init("thr", float(s.threshold)), disabled=b not in ("logit", "sae", "probe"))
    if b == "sae":
        if sae is None:
            st.warning("Pick an SAE in the sidebar: this behaviour reads one of its latents.")
        else:
            lo, hi, _ = r["sae_feature"]
            out["sae_feature"] = st.number_input(
                f"SAE latent (0…{hi})", lo, hi, key=_init("feat", min(int(s.sae_feature), hi)))
    if b == "probe":
        out.update(_probe_widgets(s, model, r))
    return out


def _probe_widgets(s: tr.Settings, model, r: dict) -> dict:
    out = {}
    hooks = residual_hooks(model)
    out["probe_hook"] = st.selectbox(
        "Probe hook (residual stream, last position)", hooks,
        key=_init("phook", s.probe_hook if s.probe_hook in hooks else hooks[-1]))
    out["probe_source"] = src = st.radio(
        "Probe direction", list(tr.PROBE_SOURCES),
        format_func={"unit": "one unit of the residual stream",
                     "upload": "a vector file (JSON or CSV)"}.get,
        key=_init("psrc", s.probe_source))
    d_model = int(model.cfg.d_model)
    if src == "unit":
        lo, hi, _ = r["probe_unit"]
        out["probe_unit"] = st.number_input(f"Unit (0…{hi})", lo, hi,
                                            key=_init("punit", min(int(s.probe_unit), hi)))
    else:
        pf = st.file_uploader(f"Probe vector: {d_model} numbers, a JSON list, "
                              '{"direction": [...]} or CSV', type=["json", "csv", "txt"],
                              key=W + "pfile")
        if pf is not None:
            try:
                vec = parse_direction(pf.getvalue())
                if len(vec) != d_model:
                    raise BehaviourError(f"the vector has {len(vec)} entries; the residual "
                                         f"stream has d_model = {d_model}")
                out["probe_vector"] = vec
            except ValueError as e:
                st.error(f"Probe vector not used: {messages.plain(e)}")
    out["probe_bias"] = st.number_input("Probe bias (w·a + bias > threshold)",
                                        *r["probe_bias"][:2],
                                        key=_init("pbias", float(s.probe_bias)))
    return out


def distribution_widgets(s: tr.Settings, model, vocab, dist_options: list[str]) -> dict:
    """Input distribution (built-in or an uploaded file) and the kept length."""
    out = {"uploaded": s.uploaded}
    st.session_state["tr_upload_failed"] = False
    out["distribution"] = d = st.selectbox("Input distribution", dist_options,
                                           key=_init("dist", s.distribution))
    if d == tr.UPLOADED:
        f = st.file_uploader("Distribution JSON (see README: one entry per position)",
                             type=["json"], key=W + "distfile")
        if f is not None:
            try:
                obj = loads_json(f.getvalue(), "the distribution file")
                from_json(obj, int(model.cfg.d_vocab), int(model.cfg.n_ctx), vocab)
                out["uploaded"] = obj
            except ValueError as e:
                st.error(f"Distribution file not used: {messages.plain(e)}")
                st.session_state["tr_upload_failed"] = s.uploaded is None
    n_ctx = int(model.cfg.n_ctx)
    out["length"] = st.number_input(
        "Keep the last N positions (0: longest with ≤ 2^16 inputs)", 0, n_ctx,
        key=_init("len", min(int(s.length), n_ctx)))
    return out


def target_widgets(s: tr.Settings, V_out: int, label) -> dict:
    """One target token, or a band of true probability to draw targets from."""
    out = {"target": s.target, "band_low": s.band_low, "band_high": s.band_high,
           "n_targets": s.n_targets}
    feature = s.behaviour in tr.FEATURE_BEHAVIOURS
    if feature:
        st.caption("One behaviour (no target token): the results table has one row per "
                   "method.")
    out["target_mode"] = mode = st.radio(
        "Targets", ["band", "one"], format_func={"band": "random targets in a band of true "
                                                          "probability", "one": "one token"}.get,
        key=_init("mode", s.target_mode), disabled=feature)
    if feature:
        return out
    if mode == "one":
        key = _init("target", min(int(s.target), V_out - 1))
        if V_out > MAX_TARGET_OPTIONS:  # a 50,257-entry select box is megabytes per run
            out["target"] = t = st.number_input("Target token id", 0, V_out - 1, key=key)
            st.caption(f"Token {t}: {label(int(t))}")
            return out
        out["target"] = st.selectbox("Target token", list(range(V_out)),
                                     format_func=lambda t: f"{label(t)} (id {t})", key=key)
        return out
    r = tr.RANGES
    out["band_low"] = st.number_input("lowest true probability", *r["band_low"][:2],
                                      format="%.1e", key=_init("lo", float(s.band_low)))
    out["band_high"] = st.number_input("highest true probability", *r["band_high"][:2],
                                       format="%.1e", key=_init("hi", float(s.band_high)))
    out["n_targets"] = st.number_input("number of targets", *r["n_targets"][:2],
                                       key=_init("n", int(s.n_targets)))
    return out


def budget_widgets(s: tr.Settings) -> dict:
    budget = st.select_slider("Budget (model calls)", tr.BUDGETS,
                              key=_init("budget", s.budget if s.budget in tr.BUDGETS else 512))
    seed = st.number_input("Seed (target i uses seed + i)", 0, tr.MAX_SEED,
                           key=_init("seed", int(s.seed)))
    return {"budget": budget, "seed": seed}


def method_widgets(s: tr.Settings) -> dict:
    methods = st.multiselect("Methods", list(ESTIMATORS),
                             format_func=lambda m: ESTIMATORS[m].title,
                             key=_init("methods", list(s.methods)))
    st.checkbox("Convergence with budget (budget/8 … budget)", key=_init("conv", False))
    return {"methods": methods}


def temperature_widgets(s: tr.Settings) -> dict:
    r = tr.RANGES
    return {
        "itgis_temperature": st.number_input(
            "ITGIS temperature", *r["itgis_temperature"][:2],
            key=_init("itgis_t", float(s.itgis_temperature)),
            help="The starting value: ITGIS then chooses T automatically from its earlier "
                 "batches. Calls count a backward pass as one more call; the results' "
                 "`samples` column is the inputs drawn."),
        "mhis_temperature": st.number_input(
            "MHIS temperature (× σ)", *r["mhis_temperature"][:2],
            key=_init("mhis_t", float(s.mhis_temperature)),
            help="The starting value in units of σ, the target logit's spread under D; MHIS "
                 "adapts it during burn-in."),
        "zero_hit_fallback": st.checkbox(
            "Zero-hit fallback (ITGIS, MHIS)", key=_init("zh_fallback", s.zero_hit_fallback),
            help="When no sample hits, report QLD's (or GLD's) extrapolation from the run's "
                 "own reference draws — combined with the refinement's margin-tail "
                 "extrapolation where it ran — clipped to the bound ≈ 3/draws (biased; no "
                 "extra calls), instead of 0."),
        "refine_fraction": st.number_input(
            "Refinement share (ITGIS, MHIS)", *r["refine_fraction"][:2], step=0.05,
            key=_init("refine", float(s.refine_fraction)),
            help="The last share of the budget is spent on the refinement: a greedy "
                 "coordinate search for inputs in the behaviour (three quarters), then "
                 "forward-only draws from a mixture of D and kernels around every hit found, "
                 "with its exact density; the estimate is the exact mass of the distinct hits "
                 "found plus the draws' estimate of the rest. 0 = the sampler alone. The "
                 "results' `refine` column says whether its hits made the estimate."),
        "activation_mask": st.selectbox(
            "Activation-model argument", tr.ACTIVATION_MASKS,
            key=_init("act_mask", s.activation_mask),
            help="Which covariances the activation model tracks (a CovarianceMask preset; "
                 "naive = variances only)")}


def commit(s: tr.Settings, fields: dict) -> tr.Settings:
    """The settings the widgets now show; they become the session's and the link's (`tr`), so
    a link copied at any time reproduces the view. Invalid combinations are one st.error line
    and the previous settings are kept."""
    try:
        new = tr.Settings.from_dict({**s.to_dict(), **fields})
    except ValueError as e:
        st.error(f"Settings not applied: {messages.plain(e)}")
        return s
    st.session_state["tr_settings"] = new
    try:
        state.set_blob_param(tr.URL_KEY, new.to_dict())
    except Exception:  # noqa: BLE001 - a link too long to write must not break the page
        pass
    return new


def show_notes() -> None:
    for n in st.session_state.pop("tr_notes", []):
        st.warning(f"Settings file: {messages.plain(n)}")


RUN_KEY = "tail-risk-run"  # app.progress key of the Run button's job


def cancelled_line() -> None:
    """After a run was cancelled: one "cancelled" line (once); the previous results stay."""
    from app.progress import show_cancelled, was_cancelled

    if was_cancelled(RUN_KEY):
        show_cancelled("Tail-risk run", RUN_KEY, auto=False)


def run(s: tr.Settings, model, dist, sae, V_out: int, row_label) -> None:
    """Ground truth then every method, with a progress bar (time left, Cancel:
    `app.progress`); results kept in the session. The model lock is released between the
    ground truth's batches of forward passes, between an estimator's batches and between
    estimator runs, so other sessions' clicks on the same model wait for one batch, not for the
    whole table. Cancelled: the previous results stay, with one "cancelled" line."""
    from app.progress import StepProgress

    show_conv = st.session_state.get(W + "conv", False)
    try:
        with StepProgress("ground truth (cached after the first time)", RUN_KEY) as bar:
            with store.model_lock():
                truth, truth_method, _ = tr.truths(
                    s, model, dist, [s.target] if s.target_mode == "one" else None, sae=sae,
                    progress=lambda f: bar.update(f, yield_lock=True, share=(0.0, 0.2)))
            targets = tr.choose_targets(s, np.array([truth.get(i, 0.0) for i in range(V_out)])
                                        if s.target_mode == "band"
                                        and s.behaviour not in tr.FEATURE_BEHAVIOURS else None)
            budgets_run = sorted({max(s.budget // 8, 8), max(s.budget // 4, 8),
                                  max(s.budget // 2, 8), s.budget}) if show_conv else [s.budget]
            job = {"text": ""}

            def on_job(f, msg):
                job["text"] = msg
                bar.update(f, label=msg, share=(0.2, 1.0))

            def on_batch(k, n, p):
                bar.update(p, label=job["text"], yield_lock=True,
                           share=(0.2 + 0.8 * k / n, 0.2 + 0.8 * (k + 1) / n))

            results = tr.run_methods(s, model, dist, targets, truth, row_label, on_job,
                                     budgets_run, sae=sae, lock=store.model_lock(),
                                     estimator_progress=on_batch)
        st.session_state["tr_results"] = {"results": results, "truth_method": truth_method,
                                          "settings": s.to_dict(),
                                          "refused": results.attrs.get("refused", [])}
    except (ValueError, RuntimeError) as e:
        st.error(f"Run failed: {messages.plain(e)}")


def number_columns(df) -> dict:
    """Column formats: probabilities and losses in scientific notation with 3 significant
    figures (9.54e-07, not 0.0000009); counts as integers."""
    out = {}
    for c in df.columns:
        if c in ("target", "budget", "calls", "samples", "seed", "zero_estimates"):
            out[c] = st.column_config.NumberColumn(c, format="%d")
        elif str(df[c].dtype).startswith("float"):
            out[c] = st.column_config.NumberColumn(c, format="%.3e" if c != "seconds"
                                                   else "%.3f")
    return out
