"""Tail risk: how likely is a rare output, by six estimators against exact truth.
Layout only: session state and widget groups are app/tail_risk_widgets.py."""

from __future__ import annotations

import streamlit as st

from app import data_source, messages, store
from app import tail_risk as tr
from app import tail_risk_widgets as w
from app.plots import tail_risk as plots
from app.plots.common import PNG_CONFIG
from estimators.tailrisk.distributions import DistributionError

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
    if vocab is None:  # the tokenizer's text of the token (GPT-2: ' the'), else its id
        from app.model_page import token_label
        return token_label(lm, t)
    return vocab[t] if t < len(vocab) else str(t)


s = w.load_settings(lm, model, sae)
data = data_source.current_data(lm) if data_source.current_spec() != data_source.ZOO else None
builtins = list(entry.input_distributions()) if entry is not None else []
dist_options = builtins + (list(tr.FROM_DATA) if data is not None else []) + [tr.UPLOADED]
if s.distribution not in dist_options:
    s.distribution = (builtins or [o for o in dist_options if o in tr.FROM_DATA] or
                      [tr.UPLOADED])[0]
w.settings_file_box(lm, s, model, sae)
w.show_notes()

fields: dict = {}
c1, c2, c3 = st.columns(3)
with c1:
    fields.update(w.behaviour_widgets(s, model, sae))
with c2:
    fields.update(w.distribution_widgets(s, model, vocab, dist_options))
with c3:
    s.behaviour = fields["behaviour"]  # the target widgets depend on the chosen behaviour
    fields.update(w.target_widgets(s, V_out, label))
c4, c5, c6 = st.columns(3)
with c4:
    fields.update(w.budget_widgets(s))
with c5:
    fields.update(w.method_widgets(s))
with c6:
    fields.update(w.temperature_widgets(s))
s = w.commit(st.session_state["tr_settings"], fields)

try:
    dist = tr.build_distribution(s, model, entry, vocab, data)
    st.caption(dist.describe())
except (DistributionError, ValueError) as e:
    if not st.session_state.get("tr_upload_failed"):  # else the upload's error said it all
        st.error(messages.plain(e))
    dist = None

problem_ok = True
if s.behaviour in tr.FEATURE_BEHAVIOURS:
    try:
        st.caption(f"Behaviour: {tr.make_behaviour(s, 0, model, sae).label()} at the last "
                   f"position")
    except ValueError as e:
        st.error(messages.plain(e))
        problem_ok = False


def row_label(t: int) -> str:
    return tr.feature_label(s, model, sae) if s.behaviour in tr.FEATURE_BEHAVIOURS else label(t)


b1, b2 = st.columns([1, 6])
run = b1.button("Run", type="primary", disabled=dist is None or not s.methods or not problem_ok)
b2.button("Stop", help="Stops a running job (any click reruns the page; so does leaving it)")
if run and dist is not None:
    w.run(s, model, dist, sae, V_out, row_label)
w.cancelled_line()

res = st.session_state.get("tr_results")
if res is not None:
    df = res["results"]
    final = df[df["budget"] == df["budget"].max()]
    if res["settings"] != s.to_dict():
        st.info("The results below are from earlier settings; press Run to update them.")
    st.subheader(f"Results (truth: {res['truth_method']})")
    st.dataframe(final, hide_index=True, width="stretch",
                 column_config=w.number_columns(final))
    note = tr.fallback_note(final)
    if note:
        st.caption(note)
    if res.get("refused"):
        st.warning("Not run: " + "; ".join(res["refused"]))
    losses = tr.loss_table(final)
    if not losses.empty:
        st.subheader("Losses (zero estimates floored at 1e-12; fit in log space, in-sample)")
        st.dataframe(losses, hide_index=True, width="stretch",
                     column_config=w.number_columns(losses))
        st.plotly_chart(plots.estimate_vs_truth(final), config=PNG_CONFIG)
        st.plotly_chart(plots.loss_bars(losses), config=PNG_CONFIG)
    if df["budget"].nunique() > 1:
        st.plotly_chart(plots.convergence(df), config=PNG_CONFIG)
    st.download_button("Download results (CSV)", df.to_csv(index=False).encode(),
                       file_name="tail_risk_results.csv", mime="text/csv")
