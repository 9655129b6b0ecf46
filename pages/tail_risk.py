"""Tail risk: how likely is a rare output, by six estimators against exact truth."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app import state, store
from app import tail_risk as tr
from app.plots import tail_risk as plots
from app.plots.common import PNG_CONFIG
from estimators.tailrisk import ESTIMATORS, BehaviourError, parse_direction, residual_hooks
from estimators.tailrisk.distributions import DistributionError, from_json

st.title("Tail risk")
st.caption("Estimate P(behaviour) under an input distribution with independent positions, far "
           "below what sampling can see, and compare every estimator with the exact answer "
           "(enumeration) at the same budget of model calls (1 call = one input's forward "
           "pass; forward+backward = 2).")

lm = store.current_model()
model, entry = lm.model, lm.zoo_entry
sae = store.current_sae()
vocab = entry.token_labels() if entry is not None else None
V_out = int(getattr(model.cfg, "d_vocab_out", model.cfg.d_vocab) or model.cfg.d_vocab)


def label(t: int) -> str:
    return vocab[t] if vocab is not None and t < len(vocab) else str(t)


WIDGETS = "tr_w_"


def _reset_widgets() -> None:
    for k in [k for k in st.session_state if str(k).startswith(WIDGETS)]:
        del st.session_state[k]


# ------------------------------------------------------------------ settings: URL, then file
if st.session_state.get("tr_model") != lm.name:
    st.session_state["tr_model"] = lm.name
    st.session_state.pop("tr_results", None)
    _reset_widgets()
    try:
        blob = state.get_blob_param(tr.URL_KEY)
        st.session_state["tr_settings"] = tr.Settings.from_dict(blob) if blob else tr.Settings()
    except ValueError as e:  # StateError is a ValueError
        st.error(f"The link's tail-risk settings were not used: {e}")
        st.session_state["tr_settings"] = tr.Settings()
s: tr.Settings = st.session_state["tr_settings"]

builtins = list(entry.input_distributions()) if entry is not None else []
dist_options = builtins + [tr.UPLOADED]
if s.distribution not in dist_options:
    s.distribution = builtins[0] if builtins else tr.UPLOADED

with st.expander("Settings file", expanded=False):
    st.download_button("Download settings", state.explanation_bytes(
        tr.SETTINGS_KIND, s.to_dict(), {"model": lm.name}), file_name="tail_risk.json",
        mime="application/json")
    up = st.file_uploader("Upload settings", type=["json"], key="tr_settings_file")
    if up is not None and st.session_state.get("tr_settings_seen") != up.file_id:
        st.session_state["tr_settings_seen"] = up.file_id
        try:
            payload, _ = state.parse_explanation(up.getvalue(), tr.SETTINGS_KIND)
            st.session_state["tr_settings"] = tr.Settings.from_dict(payload)
            _reset_widgets()
            st.rerun()
        except ValueError as e:
            st.error(f"Settings file not used: {e}")

# ------------------------------------------------------------------ the problem
c1, c2, c3 = st.columns(3)
with c1:
    behaviour = st.selectbox("Behaviour", list(tr.BEHAVIOURS), format_func=tr.BEHAVIOURS.get,
                             index=list(tr.BEHAVIOURS).index(s.behaviour),
                             key=WIDGETS + "behaviour")
    sampling_t = st.number_input("Sampling temperature τ", 0.01, 100.0,
                                 float(s.sampling_temperature), key=WIDGETS + "tau",
                                 disabled=behaviour != "sampled")
    threshold = st.number_input("Threshold (logit, SAE latent or probe)",
                                value=float(s.threshold), key=WIDGETS + "thr",
                                disabled=behaviour not in ("logit", "sae", "probe"))
    sae_feat, probe_hook, probe_source = s.sae_feature, s.probe_hook, s.probe_source
    probe_unit, probe_vector, probe_bias = s.probe_unit, s.probe_vector, s.probe_bias
    if behaviour == "sae":
        if sae is None:
            st.warning("Pick an SAE in the sidebar: this behaviour reads one of its latents.")
        else:
            d_sae = int(sae.cfg.d_sae)
            sae_feat = st.number_input(f"SAE latent (0…{d_sae - 1})", 0, d_sae - 1,
                                       min(int(s.sae_feature), d_sae - 1), key=WIDGETS + "feat")
    if behaviour == "probe":
        hooks = residual_hooks(model)
        probe_hook = st.selectbox("Probe hook (residual stream, last position)", hooks,
                                  index=hooks.index(s.probe_hook) if s.probe_hook in hooks
                                  else len(hooks) - 1, key=WIDGETS + "phook")
        probe_source = st.radio("Probe direction", list(tr.PROBE_SOURCES),
                                index=list(tr.PROBE_SOURCES).index(s.probe_source),
                                format_func={"unit": "one unit of the residual stream",
                                             "upload": "a vector file (JSON or CSV)"}.get,
                                key=WIDGETS + "psrc")
        if probe_source == "unit":
            probe_unit = st.number_input(f"Unit (0…{model.cfg.d_model - 1})", 0,
                                         int(model.cfg.d_model) - 1,
                                         min(int(s.probe_unit), int(model.cfg.d_model) - 1),
                                         key=WIDGETS + "punit")
        else:
            pf = st.file_uploader(f"Probe vector: {model.cfg.d_model} numbers, a JSON list, "
                                  '{"direction": [...]} or CSV', type=["json", "csv", "txt"],
                                  key=WIDGETS + "pfile")
            if pf is not None:
                try:
                    vec = parse_direction(pf.getvalue())
                    if len(vec) != int(model.cfg.d_model):
                        raise BehaviourError(f"the vector has {len(vec)} entries; the "
                                             f"residual stream has d_model = "
                                             f"{model.cfg.d_model}")
                    probe_vector = vec
                except ValueError as e:
                    st.error(f"Probe vector not used: {e}")
        probe_bias = st.number_input("Probe bias (w·a + bias > threshold)",
                                     value=float(s.probe_bias), key=WIDGETS + "pbias")
with c2:
    distribution = st.selectbox("Input distribution", dist_options,
                                index=dist_options.index(s.distribution),
                                key=WIDGETS + "dist")
    uploaded = s.uploaded
    if distribution == tr.UPLOADED:
        f = st.file_uploader("Distribution JSON (see README: one entry per position)",
                             type=["json"], key=WIDGETS + "distfile")
        if f is not None:
            try:
                obj = json.loads(f.getvalue())
                from_json(obj, int(model.cfg.d_vocab), int(model.cfg.n_ctx), vocab)
                uploaded = obj
            except (ValueError, UnicodeDecodeError) as e:
                st.error(f"Distribution file not used: {e}")
    length = st.number_input("Keep the last N positions (0: longest with ≤ 2^16 inputs)", 0,
                             int(model.cfg.n_ctx), int(s.length), key=WIDGETS + "len")
feature = behaviour in tr.FEATURE_BEHAVIOURS
with c3:
    if feature:
        st.caption("One behaviour (no target token): the results table has one row per "
                   "method.")
    mode = st.radio("Targets", ["band", "one"], index=["band", "one"].index(s.target_mode),
                    format_func={"band": "random targets in a band of true probability",
                                 "one": "one token"}.get, key=WIDGETS + "mode",
                    disabled=feature)
    if feature:
        target, band_low, band_high, n_targets = s.target, s.band_low, s.band_high, s.n_targets
    elif mode == "one":
        target = st.selectbox("Target token", list(range(V_out)), index=min(s.target, V_out - 1),
                              format_func=lambda t: f"{label(t)} (id {t})",
                              key=WIDGETS + "target")
        band_low, band_high, n_targets = s.band_low, s.band_high, s.n_targets
    else:
        target = s.target
        band_low = st.number_input("lowest true probability", 1e-12, 1.0, float(s.band_low),
                                   format="%.1e", key=WIDGETS + "lo")
        band_high = st.number_input("highest true probability", 1e-12, 1.0, float(s.band_high),
                                    format="%.1e", key=WIDGETS + "hi")
        n_targets = st.number_input("number of targets", 1, 64, int(s.n_targets),
                                    key=WIDGETS + "n")

c4, c5, c6 = st.columns(3)
with c4:
    budgets = [2 ** k for k in range(5, 17)]
    budget = st.select_slider("Budget (model calls)", budgets,
                              value=s.budget if s.budget in budgets else 512,
                              key=WIDGETS + "budget")
    seed = st.number_input("Seed (target i uses seed + i)", 0, 2 ** 31 - 1, int(s.seed),
                           key=WIDGETS + "seed")
with c5:
    methods = st.multiselect("Methods", list(ESTIMATORS), default=s.methods,
                             format_func=lambda m: ESTIMATORS[m].title, key=WIDGETS + "methods")
    show_conv = st.checkbox("Convergence with budget (budget/8 … budget)", False,
                            key=WIDGETS + "conv")
with c6:
    itgis_t = st.number_input("ITGIS temperature", 0.001, 1000.0, float(s.itgis_temperature),
                              key=WIDGETS + "itgis_t")
    mhis_t = st.number_input("MHIS temperature", 0.001, 1000.0, float(s.mhis_temperature),
                             key=WIDGETS + "mhis_t")
    act_mask = st.selectbox("Activation-model argument", tr.ACTIVATION_MASKS,
                            index=tr.ACTIVATION_MASKS.index(s.activation_mask),
                            key=WIDGETS + "act_mask",
                            help="Which covariances the activation model tracks (a "
                                 "CovarianceMask preset; naive = variances only)")

try:
    new = tr.Settings(behaviour=behaviour, sampling_temperature=float(sampling_t),
                      threshold=float(threshold), distribution=distribution, uploaded=uploaded,
                      length=int(length), target_mode=mode, target=int(target),
                      band_low=float(band_low), band_high=float(band_high),
                      n_targets=int(n_targets), budget=int(budget), methods=list(methods),
                      seed=int(seed), itgis_temperature=float(itgis_t),
                      mhis_temperature=float(mhis_t), activation_mask=act_mask,
                      sae_feature=int(sae_feat),
                      probe_hook=probe_hook, probe_source=probe_source,
                      probe_unit=int(probe_unit), probe_vector=probe_vector,
                      probe_bias=float(probe_bias))
    st.session_state["tr_settings"] = s = new
except ValueError as e:
    st.error(f"Settings not applied: {e}")

try:
    dist = tr.build_distribution(s, model, entry, vocab)
    st.caption(dist.describe())
except (DistributionError, ValueError) as e:
    st.error(str(e))
    dist = None

problem_ok = True
if s.behaviour in tr.FEATURE_BEHAVIOURS:
    try:
        st.caption(f"Behaviour: {tr.make_behaviour(s, 0, model, sae).label()} at the last "
                   f"position")
    except ValueError as e:
        st.error(str(e))
        problem_ok = False


def row_label(t: int) -> str:
    return tr.feature_label(s, model, sae) if s.behaviour in tr.FEATURE_BEHAVIOURS else label(t)


b1, b2 = st.columns([1, 6])
run = b1.button("Run", type="primary", disabled=dist is None or not s.methods or not problem_ok)
b2.button("Stop", help="Stops a running job (any click reruns the page; so does leaving it)")

if run and dist is not None:
    state.set_blob_param(tr.URL_KEY, s.to_dict())
    bar = st.progress(0.0, text="ground truth…")
    try:
        with store.model_lock():
            truth, truth_method, _ = tr.truths(
                s, model, dist, [s.target] if s.target_mode == "one" else None, sae=sae,
                progress=lambda f: bar.progress(0.2 * f, text="ground truth (cached after "
                                                              "the first time)…"))
            targets = tr.choose_targets(s, np.array([truth.get(i, 0.0) for i in range(V_out)])
                                       if s.target_mode == "band"
                                       and s.behaviour not in tr.FEATURE_BEHAVIOURS else None)
            budgets_run = sorted({max(s.budget // 8, 8), max(s.budget // 4, 8),
                                  max(s.budget // 2, 8), s.budget}) if show_conv else [s.budget]
            results = tr.run_methods(s, model, dist, targets, truth, row_label,
                                     lambda f, msg: bar.progress(0.2 + 0.8 * f, text=msg),
                                     budgets_run, sae=sae)
        st.session_state["tr_results"] = {"results": results, "truth_method": truth_method,
                                          "settings": s.to_dict()}
    except (ValueError, RuntimeError) as e:
        st.error(f"Run failed: {e}")
    bar.empty()

res = st.session_state.get("tr_results")
if res is not None:
    df = res["results"]
    final = df[df["budget"] == df["budget"].max()]
    if res["settings"] != s.to_dict():
        st.info("The results below are from earlier settings; press Run to update them.")
    st.subheader(f"Results (truth: {res['truth_method']})")
    st.dataframe(final, hide_index=True, use_container_width=True)
    losses = tr.loss_table(final)
    if not losses.empty:
        st.subheader("Losses (zero estimates floored at 1e-12; fit in log space, in-sample)")
        st.dataframe(losses, hide_index=True, use_container_width=True)
        st.plotly_chart(plots.estimate_vs_truth(final), config=PNG_CONFIG)
        st.plotly_chart(plots.loss_bars(losses), config=PNG_CONFIG)
    if df["budget"].nunique() > 1:
        st.plotly_chart(plots.convergence(df), config=PNG_CONFIG)
    st.download_button("Download results (CSV)", df.to_csv(index=False).encode(),
                       file_name="tail_risk_results.csv", mime="text/csv")
