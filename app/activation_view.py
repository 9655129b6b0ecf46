"""The Activation model page's session state, callbacks and widget groups (moved from
pages/activation.py; the page file is layout only). The argument-and-results fragment lives
here too, split into its parts; callbacks find this run's chain and propagator in `_CTX`."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st
import torch

from app import activation as glue
from app import messages
from app.state import SessionContext
from app.plots.activation import (GRID_TRACES, correlation_heatmap, distance_by_layer,
                                  mask_grid, search_path)
from app.plots.common import PNG_CONFIG, histogram_with_gaussian, surprise_waterfall
from estimators.activation import CovarianceMask
from estimators.surprise import mdl_bits_per_parameter

ss = st.session_state
_CTX = SessionContext("_act_ctx")  # this session's run objects, for the callbacks


def bind(**kw) -> None:
    _CTX.update(kw)


# ---- settings: from the URL on the first visit, reset when the model/SAE changes -------------
def seed_widgets(s: glue.Settings, bpp) -> None:
    lm, sae = _CTX["lm"], _CTX["sae"]
    ss._act_positions = list(s.positions)
    ss._act_sites = list(s.sites) if s.sites is not None else glue.default_sites(lm, sae)
    ss._act_n = s.n_inputs
    ss._act_k = s.samples
    ss._act_seed = s.seed
    ss._act_tokens = s.tokens
    ss._act_bpp_mdl = bpp is None
    ss._act_bpp = float(bpp) if bpp is not None else float(mdl_bits_per_parameter(s.n_inputs))
    seed_scale_widgets(s)


def seed_scale_widgets(s: glue.Settings) -> None:
    """The Units and Time budget widgets from the settings."""
    lm = _CTX["lm"]
    ss._act_units = s.units
    ss._act_unit_count = min(s.unit_count or 8, _count_max(lm, _CTX["sae"]))
    ss._act_budget_on = s.time_budget is not None
    ss._act_budget = float(s.time_budget) if s.time_budget is not None else 10.0



def init_settings(mk, defaults) -> None:
    """Settings from the link on the first visit; reset to the defaults when the model or SAE
    changes; widget state restored after visiting another page."""
    if ss.get("act_model_key") != mk:
        settings, bpp = defaults, None
        if "act_model_key" not in ss:  # first visit: the link defines the view
            notes: list[str] = []
            url_settings, url_mask, url_bpp, errs = glue.read_url(_CTX["lm"], _CTX["sae"], notes)
            ss.act_msgs += [("error", e) for e in errs] + [("warning", n) for n in notes]
            if url_settings is not None:
                settings = url_settings
            bpp = url_bpp
            ss.act_pending_mask = url_mask
        ss.act_model_key = mk
        ss.act_good_settings = None
        ss.act_settings = settings
        ss.act_bpp = bpp
        seed_widgets(settings, bpp)
    elif "_act_positions" not in ss:  # widget state is dropped when the user visits another page
        seed_widgets(ss.act_settings, ss.act_bpp)



def settings_form(lm, sae, ctx: int, site_options: list[str]) -> None:
    """The sites-and-settings form; Apply replaces the session's settings (a bad combination is
    one st.error line and the previous settings are kept)."""
    with st.form("act_settings_form"):
        st.markdown("**Sites and settings** (apply to rebuild the chain)")
        c1, c2 = st.columns([3, 2])
        with c1:
            st.multiselect("Sites", site_options, key="_act_sites",
                           help="The chain always starts at blocks.0.hook_resid_pre. The last site "
                                "is the output S(Y|π) scores (the logits: the model's real "
                                "logits coded jointly under the estimate's Gaussian, "
                                "ε = 0.01 nats).")
            st.multiselect("Positions modelled",
                           list(range(ctx if lm.zoo_entry is not None else lm.model.cfg.n_ctx)),
                           key="_act_positions",
                           help="Residual, MLP and SAE sites model these positions; other "
                                "positions "
                                "stay at their real values. Dimension = positions × units.")
            if lm.zoo_entry is None:
                st.text_area("Input token ids, one sequence per line (empty: the sidebar's "
                             "data, else uniform random)",
                             key="_act_tokens")
        with c2:
            a, b, c = st.columns(3)
            a.number_input("Real inputs N", 2, glue.MAX_N_INPUTS, step=16, key="_act_n")
            b.number_input("Samples K per step", 2, glue.MAX_SAMPLES, step=64, key="_act_k",
                           help="Samples drawn from each site's masked Gaussian and run through "
                                "the real block (common random numbers: the estimate is "
                                "deterministic).")
            c.number_input("Seed", 0, 2 ** 31 - 1, key="_act_seed")
            st.checkbox("Bits per tracked covariance: MDL ½·log2 N", key="_act_bpp_mdl")
            st.number_input("Bits per tracked covariance (when not MDL)", 0.0, 1e6, step=0.5,
                            key="_act_bpp", format="%.3f")
            scale_widgets(lm, sae)
        submitted = st.form_submit_button("Apply")
    if submitted:
        try:
            new = glue.Settings(tuple(sorted(int(p) for p in ss._act_positions)),
                                tuple(ss._act_sites) if ss._act_sites else (),
                                int(ss._act_n), int(ss._act_k), int(ss._act_seed),
                                str(ss.get("_act_tokens", "") or ""), **scale_fields(lm, sae))
            if sorted(new.sites) == sorted(glue.default_sites(lm, sae)):
                new = replace(new, sites=None)
            ss.act_settings = new
        except ValueError as e:
            st.error(f"Settings not applied: {messages.plain(e)}")
        ss.act_bpp = None if ss._act_bpp_mdl else float(ss._act_bpp)



# ---- at scale: the Units and Time budget settings and what they chose ----------------------
UNIT_LABELS = {"auto": "automatic", "all": "all units", "first": "first K units",
               "top-variance": "top-variance K units", "firing": "SAE features that fire (K)"}
LIMITED_BY = {"budget": "the budget", "data": "the data available",
              "bounds": "the bounds 16..4096", "minimum": "the minimum 16 (the budget is too "
                                                          "small for more)"}


def _count_max(lm, sae) -> int:
    return max(int(lm.model.cfg.d_model), int(sae.cfg.d_sae) if sae is not None else 1)


def scale_widgets(lm, sae) -> None:
    """Units (mode and K) and Time budget (off, or seconds), inside the settings form."""
    from estimators.validation import PAGE_TIME_BUDGET

    d = int(lm.model.cfg.d_model)
    u1, u2 = st.columns(2)
    u1.selectbox("Units", list(UNIT_LABELS), key="_act_units", format_func=UNIT_LABELS.get,
                 help=f"Which units of the residual stream (d_model {d}) the residual sites "
                      f"model; the others are held at the real activations. Automatic: all "
                      f"units up to width {glue.AUTO_FULL_WIDTH}, else the top-variance units "
                      f"that keep a site at {glue.DEFAULT_MAX_DIM} variables. SAE features "
                      f"that fire: the SAE site's K most frequent features (every residual "
                      f"unit).")
    u2.number_input("K (units or features)", 1, _count_max(lm, sae), step=1,
                    key="_act_unit_count",
                    help=f"1..{d} residual units" + (f"; 1..{sae.cfg.d_sae} SAE features"
                                                     if sae is not None else ""))
    b1, b2 = st.columns(2)
    b1.checkbox("Time budget", key="_act_budget_on",
                help="Choose N and K (the fields above are then not used) so the chain's "
                     "ground truth and first propagation fit this many seconds, from a timed "
                     "pilot (as `propagate --time-budget`).")
    b2.number_input("Budget (seconds)", float(PAGE_TIME_BUDGET[0]), float(PAGE_TIME_BUDGET[1]),
                    step=1.0, key="_act_budget", format="%.1f")


def scale_fields(lm, sae) -> dict:
    """The form's unit and budget fields as Settings keywords; ValueError (one line) for a K
    outside the model's range."""
    mode = ss.get("_act_units", "auto")
    k = int(ss.get("_act_unit_count") or 0) if mode in glue.K_UNIT_MODES else 0
    if mode in glue.K_UNIT_MODES:
        lo, hi = glue.unit_count_range(lm, sae, mode)
        if not lo <= k <= hi:
            raise ValueError(f"K = {k} is outside {lo}..{hi} for {UNIT_LABELS[mode]}")
    return {"units": mode, "unit_count": k,
            "time_budget": float(ss._act_budget) if ss.get("_act_budget_on") else None}


def _unit_list(units, d_model: int) -> str:
    if list(units) == list(range(len(units))):
        return f"units 0–{len(units) - 1}"
    shown = ", ".join(str(u) for u in units[:24])
    return f"units {shown}" + (f", … ({len(units)} in all)" if len(units) > 24 else "")


def units_note(lm, chain, settings) -> None:
    """Which units the residual (and SAE) sites model; the rest are held at the real
    activations."""
    d = int(lm.model.cfg.d_model)
    resid = next((s for s in chain.sites if s.kind == "resid"), None)
    rec = chain.info.get("units") or {}
    if resid is None:
        return
    if len(resid.units) == d:
        text = (f"**Units:** every one of the {d} residual units is modelled at positions "
                f"{list(resid.positions)}")
    else:
        why = (f", chosen automatically because the residual stream is wider than "
               f"{glue.AUTO_FULL_WIDTH}" if settings.units == "auto" else "")
        text = (f"**Units:** the residual sites model {len(resid.units)} of {d} units "
                f"(`{rec.get('resid')}`{why}): {_unit_list(resid.units, d)}, at positions "
                f"{list(resid.positions)}; the other {d - len(resid.units)} units are held at "
                f"the real activations of the input that completes each sample")
    text += "; positions not modelled are held at their real activations too."
    if rec.get("sae"):
        text += (f" The SAE site models the {rec['sae'].split(':')[1]} features that fire most "
                 f"often (`{rec['sae']}`).")
    st.caption(text)


def budget_note(chain, res) -> None:
    """With a time budget: the K and N the pilot chose, predicted against actual seconds
    (the chain's build, timed when it was made, plus this session's first propagation of it)."""
    plan = chain.info.get("budget")
    if plan is None:
        return
    first = ss.get("act_budget_first")
    if first is None or first[0] != id(chain):
        first = ss.act_budget_first = (id(chain), float(res.seconds))
    actual = float(plan["run_seconds"] or 0.0) + first[1]
    st.info(f"**Time budget {plan['budget_seconds']:g} s:** a timed pilot "
            f"({plan['pilot_seconds']:.1f} s, not counted) chose **K = {plan['samples']}** "
            f"samples per step and **N = {plan['n_inputs']}** real inputs (limited by "
            f"{LIMITED_BY.get(plan['limited_by'], plan['limited_by'])}); predicted "
            f"**{plan['predicted_seconds']:.1f} s**, actual **{actual:.1f} s** (ground truth "
            f"and chain {plan['run_seconds']:.1f} s + first propagation {first[1]:.1f} s). "
            f"The N and K fields are not used while the budget is on.")


def _chain_with_progress(lm, sae, mk, settings):
    """(settings, chain): the chain built with a progress bar and Cancel (`app.progress`).
    Cancelled: back to the last settings that worked (one "cancelled" line), or, with none, the
    line with a "Run again" button and the page stops there."""
    from app.progress import CANCELLED, run_step

    good = ss.get("act_good_settings")
    revert = good is not None and good != settings
    out = run_step("Building the activation model (real inputs through the model)",
                   f"act-chain|{mk}|{settings.key()}",
                   lambda progress: glue.get_chain(lm, sae, settings, progress=progress),
                   lock_held=True, auto=not revert)
    if out is not CANCELLED:
        return settings, out
    if not revert:
        st.stop()
    ss.act_settings = good
    return good, glue.get_chain(lm, sae, good)


def build(lm, sae, mk, defaults):
    """(settings, chain, propagator) for the session's settings; when they fail, the last
    settings that worked (else the defaults), with one st.error line."""
    settings: glue.Settings = ss.act_settings
    try:
        settings, chain = _chain_with_progress(lm, sae, mk, settings)
    except ValueError as e:
        # keep the last settings that worked (else this model's defaults); the form keeps what the
        # user typed so it can be corrected
        fallback = ss.get("act_good_settings") or defaults
        st.error(f"Could not build the activation model: {messages.plain(e)}" + (
            "" if fallback == settings else " (showing the last settings that worked)"))
        if fallback == settings:
            st.stop()
        settings = ss.act_settings = fallback
        try:
            chain = glue.get_chain(lm, sae, settings)
        except ValueError as e2:
            st.error(f"Could not build the activation model: {messages.plain(e2)}")
            st.stop()
    ss.act_good_settings = settings
    chain_key = repr((mk, settings.key()))
    prop, note = glue.get_propagator(chain, chain_key)
    if note:
        ss.act_msgs.append(("warning", note))
    pending = ss.pop("act_pending_mask", None)
    if pending is not None:
        try:
            m = pending if isinstance(pending, CovarianceMask) \
                else CovarianceMask.from_dict(pending)
            m.validate(chain.layouts)
            prop.set_mask(m)
        except ValueError as e:
            ss.act_msgs.append(("error", f"The argument could not be used: {e}. Keeping the "
                                         f"current argument."))

    return settings, chain, prop


def sae_note(chain) -> None:
    sae_info = chain.info.get("sae")
    if sae_info is not None:
        st.info(f"Estimates at `sae:{sae_info['hook']}` are made in the SAE's basis: "
                f"{len(sae_info['units'])} latents modelled (the most frequent of the "
                f"{sae_info['firing_features']} that fire on these inputs; d_sae "
                f"{sae_info['d_sae']}). The SAE's own reconstruction error on these inputs: "
                f"fraction of variance unexplained "
                f"**{sae_info['fraction_variance_unexplained']:.4f}**, "
                f"MSE **{sae_info['reconstruction_mse']:.4g}**; it abstracts away what it cannot "
                f"reconstruct, so read the estimates at and after this site with that in mind.")




# ---- callbacks (run before the fragment's next run) -----------------------------------------
def msg(kind, text):
    ss.act_msgs.append((kind, text))


def on_entries():
    text = ss.get("_act_entries", "")
    ss._act_entries = ""
    if not text.strip():
        return
    try:
        glue.toggle_entries(_CTX["prop"], ss._act_site, glue.parse_entries(text))
    except ValueError as e:
        msg("error", f"Entries not toggled: {e}")


def on_grid():
    sel = ss.get(f"_act_grid_{ss.get('act_grid_nonce', 0)}")
    points = (sel or {}).get("selection", {}).get("points", []) if sel else []
    pairs = []
    for p in points:
        cd = p.get("customdata")
        if not cd or GRID_TRACES[p.get("curve_number", 0)] == "diagonal":
            continue
        pairs.append((int(cd[0]), int(cd[1])))
    pairs = list(dict.fromkeys(pairs))
    ss.act_grid_nonce = ss.get("act_grid_nonce", 0) + 1  # a fresh widget: re-clicks register
    if pairs:
        try:
            glue.toggle_entries(_CTX["prop"], ss._act_site, pairs)
        except ValueError as e:
            msg("error", str(e))


def on_preset():
    sites = [s.name for s in _CTX["chain"].sites] if ss._act_preset_all else [ss._act_site]
    try:
        glue.apply_preset(_CTX["prop"], sites, ss._act_preset, int(ss._act_topk),
                          int(ss._act_group), bool(ss._act_combine))
    except ValueError as e:
        msg("error", f"Preset not applied: {e}")


def on_upload():
    f = ss.get("_act_upload")
    if f is None:
        return
    notes: list[str] = []
    try:
        mask, file_settings, file_bpp = glue.read_explanation(f.getvalue(), _CTX["lm"],
                                                               _CTX["sae"], notes)
        target = file_settings or ss.act_settings
        new_chain = glue.get_chain(_CTX["lm"], _CTX["sae"], target)
        mask.validate(new_chain.layouts)
    except ValueError as e:  # StateError is a ValueError
        msg("error", f"Could not use {f.name}: {e} (the current argument is kept)")
        return
    ss.act_settings = target
    ss.act_bpp = file_bpp
    seed_widgets(target, file_bpp)
    ss.act_pending_mask = mask
    msg("success", f"Loaded the argument from {f.name}.")
    for n in notes:
        msg("warning", n)


def upload_box() -> None:
    """An explanation file (kind covariance-mask) sets the argument and, if it carries them,
    the settings; a bad file is one message and the current argument is kept."""
    with st.expander("Upload an explanation file", expanded=False):
        st.file_uploader("Explanation JSON (kind covariance-mask)", type=["json"],
                         key="_act_upload", on_change=on_upload)


def on_search():
    ss.act_search_request = {"method": ss._act_search_method, "steps": int(ss._act_search_steps),
                             "candidates": int(ss._act_search_cands)}


def bpp():
    return ss.act_bpp


# ---- the argument and its results: reruns alone when the mask changes ------------------------
@st.fragment
def argument_and_results(chain, prop, settings, defaults) -> None:
    """The surprise, the mask editor and every view of the estimate; a click inside reruns this
    fragment only."""
    res, site_names = _header(chain, prop, settings, defaults)
    budget_note(chain, res)
    site, vk, idx, labels, corr_emp = _editor(chain, prop, res, site_names)
    idx, labels = _correlations(res, site, idx, labels, corr_emp)
    _marginals(prop, res, site, vk, idx)
    _distances(chain, res, site_names)
    st.download_button("Download explanation (JSON)",
                       glue.explanation(prop, settings, bpp(), res),
                       file_name=f"activation_{prop.mask.hash()[:8]}_explanation.json",
                       mime="application/json")


def _header(chain, prop, settings, defaults):
    """Run (cached sites reused), messages, the surprise metrics."""
    site_names = [s.name for s in chain.sites]
    if ss.get("_act_site") not in site_names:
        ss._act_site = site_names[1] if len(site_names) > 1 else site_names[0]

    res = glue.run(prop, bpp())
    if res.recomputed:
        ss.act_last_change = (res.seconds, list(res.recomputed))
    glue.write_url(settings, defaults, prop.mask, bpp())

    for kind, text in ss.act_msgs:
        getattr(st, kind)(messages.plain(text))
    ss.act_msgs = []
    if res.repaired_sites:
        st.warning("Σ⊙M was not positive semi-definite at " + ", ".join(
            f"`{s}`" for s in res.repaired_sites) + "; negative eigenvalues were clipped to 0 "
            "(PSD repair) before propagating.")

    # -- surprise
    s = res.surprise
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("S(π) argument", f"{s.argument_bits:,.3f} bits")
    k2.metric("S(Y|π) data", f"{s.data_bits:,.3f} bits")
    k3.metric("Total", f"{s.total_bits:,.3f} bits")
    k4.metric("Bits per tracked covariance", f"{prop.bits_per_parameter:.3f}")
    last = ss.get("act_last_change")
    if last:
        st.caption(f"Last change re-propagated {len(last[1])} site(s) in "
                   f"{last[0] * 1000:,.0f} ms: {', '.join(last[1])}. Tracked pairs: "
                   + (", ".join(f"{k}: {v}" for k, v in prop.tracked_pairs().items())
                      or "none (naive)") + ".")
    return res, site_names


def _editor(chain, prop, res, site_names):
    """The waterfall and the mask editor (site, view, clickable grid, entries, presets)."""
    s = res.surprise
    left, right = st.columns([3, 2])
    with right:
        st.plotly_chart(surprise_waterfall(s), config=PNG_CONFIG, key="_act_waterfall")
        st.caption(s.notes)

    # -- the mask editor
    with left:
        st.selectbox("Site", site_names, key="_act_site",
                     format_func=lambda n: f"{n} ({chain.site(n).dim} units, "
                                           f"{chain.site(n).role})")
        site = chain.site(ss._act_site)
        vk = site.name
        # keep the view's widget state inside this chain's options (settings may have changed)
        vunits_key, vpos_key = f"_act_vunits_{vk}", f"_act_vpos_{vk}"
        if [u for u in ss.get(vunits_key, []) if u in site.units] != ss.get(vunits_key) \
                or not ss.get(vunits_key):
            ss[vunits_key] = glue.default_view_units(site)
        if [p for p in ss.get(vpos_key, []) if p in site.positions] != ss.get(vpos_key) \
                or not ss.get(vpos_key):
            ss[vpos_key] = list(site.positions)
        v1, v2 = st.columns([1, 2])
        if site.positions and len(site.positions) > 1:
            v1.multiselect("View positions", list(site.positions), key=f"_act_vpos_{vk}")
        v2.multiselect("View units", list(site.units), key=f"_act_vunits_{vk}",
                       help="Which units the grid, heatmaps and histograms show.")
        vpos = ss.get(f"_act_vpos_{vk}") or list(site.positions)
        vunits = ss.get(f"_act_vunits_{vk}") or list(site.units[:1])
        if site.positions:
            vpos = [p for p in site.positions if p in vpos]
        vunits = [u for u in site.units if u in vunits]
        idx = glue.view_indices(site, vpos, vunits)
        labels = [site.label(i) for i in idx]
        dense = prop.dense_mask(site.name)
        corr_emp = chain.correlation(site.name)
        if len(idx) <= glue.GRID_MAX:
            fig = mask_grid(glue.submatrix(dense, idx).cpu().numpy(), labels, idx,
                            glue.submatrix(corr_emp, idx).cpu().numpy(),
                            title=f"Mask at {site.name}: click a cell to toggle")
            st.plotly_chart(fig, on_select=on_grid, selection_mode="points",
                            key=f"_act_grid_{ss.get('act_grid_nonce', 0)}", config=PNG_CONFIG)
        else:
            st.info(f"The view has {len(idx)} units; the clickable grid shows at most "
                    f"{glue.GRID_MAX}. Narrow the view, or use presets and top-k.")
        st.text_input("Toggle entries (flat indices 'i,j; k,l'; label p·u ↔ index in the "
                      "grid's hover)", key="_act_entries", on_change=on_entries)
        sm = prop.site_mask(site.name)
        st.caption(f"This site's mask: {sm.to_dict()}")

        with st.expander("Presets", expanded=True):
            p1, p2, p3 = st.columns(3)
            p1.selectbox("Preset", glue.PRESETS, key="_act_preset")
            p2.number_input("k (top-k pairs)", 0, 10 ** 6, value=16, key="_act_topk")
            p3.number_input("Unit group size", 1, 10 ** 6, value=8, key="_act_group")
            q1, q2, q3 = st.columns(3)
            q1.checkbox("Every site", key="_act_preset_all")
            q2.checkbox("Add to the current mask", key="_act_combine")
            q3.button("Apply preset", on_click=on_preset)
    return site, vk, idx, labels, corr_emp


def _correlations(res, site, idx, labels, corr_emp):
    """Empirical vs propagated correlation heatmaps of the viewed units."""
    # -- empirical vs propagated
    est = res.sites[site.name]
    st.subheader(f"Correlations at {site.name}")
    if len(idx) > glue.HEATMAP_MAX:
        st.info(f"Showing the first {glue.HEATMAP_MAX} units of the view.")
        idx, labels = idx[:glue.HEATMAP_MAX], labels[:glue.HEATMAP_MAX]
    before = st.toggle("Propagated: before the mask (moment-matched Σ) instead of Σ⊙M",
                       key="_act_before")
    if before:
        pc = est.propagated_cov
        sd = torch.diagonal(pc).clamp_min(0).sqrt()
        inv = torch.where(sd > 0, 1 / sd.clamp_min(1e-300), torch.zeros_like(sd))
        corr_est = pc * inv[:, None] * inv[None, :]
    else:
        corr_est = est.correlation()
    h1, h2 = st.columns(2)
    h1.plotly_chart(correlation_heatmap(glue.submatrix(corr_emp, idx).cpu().numpy(), labels,
                                        "Empirical (real activations)"),
                    config=PNG_CONFIG, key="_act_hm_emp")
    h2.plotly_chart(correlation_heatmap(glue.submatrix(corr_est.detach(), idx).cpu().numpy(),
                                        labels, "Propagated " + ("before the mask" if before
                                                                 else "(Σ⊙M)")),
                    config=PNG_CONFIG, key="_act_hm_est")
    return idx, labels


def _marginals(prop, res, site, vk, idx):
    """Histograms of real activations with the propagated Gaussian."""
    est = res.sites[site.name]
    # -- marginals
    st.subheader("Marginals: real activations and the propagated Gaussian")
    hist_key = f"_act_hist_{vk}"
    if hist_key not in ss or any(i not in idx for i in ss[hist_key]):
        ss[hist_key] = idx[:2]
    chosen = st.multiselect("Units", idx, key=hist_key, format_func=site.label,
                            max_selections=4)
    emp = prop.empirical(site.name)
    bins = int(min(60, max(10, 2 * emp.shape[0] ** 0.5)))  # ~2·√N: not spiky for small N
    cols = st.columns(max(1, len(chosen)))
    for col, i in zip(cols, chosen):
        col.plotly_chart(histogram_with_gaussian(
            emp[:, i].cpu().numpy(), float(est.mean[i]), float(est.var[i]),
            title=f"{site.label(i)} (index {i})", bins=bins), config=PNG_CONFIG,
            key=f"_act_h_{i}")



def _distances(chain, res, site_names):
    """Distances by site and the output table."""
    # -- distances
    st.subheader("Distance by site")
    names = [n for n in site_names if n in res.distances]
    rows = [res.distances[n].to_dict() for n in names]
    st.plotly_chart(distance_by_layer(names, rows), config=PNG_CONFIG, key="_act_dist")
    st.dataframe(pd.DataFrame(glue.distance_table(chain, res, names)), hide_index=True,
                 width="stretch")
    st.caption("KL between the real and estimated Gaussians, in nats. Covariance method: with "
               "N real inputs at least the site's dimension, a ridge of 1% of the mean real "
               "variance on both covariances; with N < dim, the real covariance is the "
               "Ledoit–Wolf shrinkage estimate (intensity δ) and the estimate's is shrunk by "
               "the same δ toward its own scaled identity. Marginal KL: the mean over units of "
               "the per-unit KL(real ‖ est), readable at any N. Mean/var errors are RMS over "
               "units, relative to the RMS real std / variance.")
    out = res.output
    if "estimate_argmax_probs" in out:
        from app.model_page import token_label

        site = chain.site(out["site"])
        n_out = len(out["estimate_argmax_probs"])
        labels_out = [site.label(i) for i in range(n_out)]
        tokens = [token_label(_CTX["lm"], site.unpack(i)[1]) for i in range(n_out)]  # ≈ 6 ms
        st.dataframe(pd.DataFrame({"unit": labels_out, "token": tokens,
                                   "P(argmax) estimate": out["estimate_argmax_probs"],
                                   "argmax frequency (real)": out["empirical_argmax_freq"],
                                   "mean logit estimate": out["estimate_mean"],
                                   "mean logit (real)": out["empirical_mean"]}),
                     hide_index=True, width="stretch", height=240)



# ---- search: in the main script (not the fragment) so that Stop, or navigating away, which
# request a full rerun, interrupt it (a fragment's own widgets do not preempt a running script)
def search_box(prop) -> None:
    """The search controls, a running search with progress and Stop, and its path."""
    st.subheader("Find a better argument")
    f1, f2, f3, f4 = st.columns(4)
    f1.selectbox("Method", ["greedy", "gradient"], key="_act_search_method",
                 help="Greedy: add the candidate pair (or position block) that lowers the total "
                      "most, until none does, and say why it stopped. Gradient: straight-through "
                      "gates over candidate pairs (temperature 1 → 0.05), the bit price per gate "
                      "switched on over the second half of the steps; the best hard mask is "
                      "re-evaluated exactly.")
    f2.number_input("Steps", 1, 200, value=3, key="_act_search_steps")
    f3.number_input("Candidates per site", 1, 256, value=8, key="_act_search_cands")
    f4.button("Find a better argument", on_click=on_search)
    req = ss.pop("act_search_request", None)
    if req is not None:
        rec = glue.SearchRecord(req["method"])
        ss.act_search_record = rec
        with st.status(f"Searching ({req['method']})…", expanded=True) as status:
            st.button("Stop search", key="_act_stop")
            bar = st.progress(0.0, text="starting")
            params = ({"max_steps": req["steps"], "candidates_per_site": req["candidates"]}
                      if req["method"] == "greedy" else
                      {"steps": req["steps"], "candidates_per_site": req["candidates"]})
            lm, settings = _CTX["lm"], ss.act_settings
            if req["method"] == "greedy" and lm.zoo_entry is not None:  # mixture variables
                b = lm.zoo_entry.sample(prop.chain.n_inputs, seed=settings.seed)  # N: budget's
                params.update(tokens=b.tokens, labels=b.labels, n_ctx=int(b.tokens.shape[1]))
            glue.run_search(prop, req["method"], params, lambda f, t: bar.progress(f, text=t), rec)
            best = min((p["total_bits"] for p in rec.path), default=float("nan"))
            status.update(label=f"Search ({req['method']}) done: best total {best:,.1f} bits"
                                + (" (stopped)" if rec.cancelled else ""),
                          state="complete", expanded=False)
    rec = ss.get("act_search_record")
    if rec is not None:
        if rec.note:
            st.info(rec.note)
        if rec.path:
            st.plotly_chart(search_path(rec.path, f"{rec.method} search path"),
                            config=PNG_CONFIG, key="_act_path")
            st.dataframe(pd.DataFrame(rec.path), hide_index=True, width="stretch")

