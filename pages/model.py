"""Model & SAE: what the loaded model is, what it does on its data, and how good its SAE is."""

import pandas as pd
import streamlit as st

from app import conformance_view, model_page, store

lm = store.current_model()
model = lm.model
st.title("Model & SAE")
entry = lm.zoo_entry

left, right = st.columns([3, 2])
with left:
    if entry is not None:
        st.subheader(entry.title)
        st.write(entry.description)
    else:
        st.subheader(lm.name)
        st.caption(f"Loaded from {lm.kind}.")
    if lm.card:
        headline = model_page.card_headline(lm.card)
        for col, (label, value) in zip(st.columns(max(len(headline), 1)), headline):
            col.metric(label, value)
        with st.expander("Full model card (task, data, training record, SAE, distributions)"):
            st.json(lm.card, expanded=True)
with right:
    st.markdown("**Config**")
    st.dataframe(model_page.config_frame(model), hide_index=True, width="stretch")
    with store.model_lock():
        conformance_view.render(model)

with st.expander("Hook points", expanded=False):
    st.dataframe(model_page.hooks_frame(model), hide_index=True, width="stretch")

st.subheader("A sample input and the model's predictions")
if entry is None:
    st.info("Per-token predictions need the model's data generator: pick a built-in model.")
else:
    seed = st.number_input("Sample seed", min_value=0, value=0, step=1, key="model_sample_seed")
    with store.model_lock():
        frame, accuracy = model_page.prediction_frame(lm, int(seed))
    if accuracy is not None:
        st.metric("Top-1 accuracy on the scored positions of this sample", f"{accuracy:.1%}")
    st.dataframe(frame, hide_index=True, width="stretch")

st.subheader("SAE")
sae = store.current_sae()
if sae is None:
    st.info("No SAE selected. Pick one in the sidebar (built-in models ship one).")
elif entry is None:
    st.info("SAE quality is measured on the model's data: pick a built-in model.")
else:
    with store.model_lock():
        quality, features = model_page.sae_report(lm, sae)
    cols = st.columns(4)
    ev = quality["explained_variance"]  # None where undefined (zero variance), with a note
    cols[0].metric("Explained variance", "n/a" if ev is None else f"{ev:.3f}",
                   help=quality.get("explained_variance_note"))
    cols[1].metric("L0 (mean active latents)", f"{quality['l0']:.2f}")
    cols[2].metric("MSE per element", f"{quality['mse']:.3g}")
    cols[3].metric("Dead latents", f"{quality['dead_fraction']:.1%}")
    st.caption(f"Hook `{quality['hook']}`, d_in {quality['d_in']}, d_sae {quality['d_sae']}, "
               f"measured on {quality['n_activations']:,} activations of "
               f"{model_page.SAE_EVAL_SEQUENCES} held-out sequences.")
    st.markdown("**Most frequent features**")
    st.dataframe(pd.DataFrame(features), hide_index=True, width="stretch")
