"""Model & SAE: what the loaded model is, what it does on its data, and how good its SAE is."""

import pandas as pd
import streamlit as st

from app import conformance_view, data_source, model_page, store

lm = store.current_model()
model = lm.model
st.title("Model & SAE")
entry = lm.zoo_entry
spec = data_source.current_spec()
data = data_source.current_data(lm)
own_data = entry is not None and spec == data_source.ZOO  # the zoo's generator, as before

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


# a new seed or row reruns and redraws only this fragment, not the config, checks and SAE report
@st.fragment
def sample_predictions() -> None:
    """The sample input (a seed of the zoo's generator, or a row of the data) and predictions."""
    if own_data:
        seed = st.number_input("Sample seed", min_value=0, value=0, step=1, key="model_sample_seed")
        with store.model_lock():
            frame, accuracy = model_page.prediction_frame(lm, int(seed))
        if accuracy is not None:
            st.metric("Top-1 accuracy on the scored positions of this sample", f"{accuracy:.1%}")
        # a static table: a grid (st.dataframe) rewrites its hidden accessibility table ~0.1-0.2 s
        # after each redraw, which kept a seed click above 300 ms (benchmarks/bench_clicks.py)
        with st.container(height=min(36 * (len(frame) + 1) + 20, 480), border=False):
            st.table(frame.set_index("pos"))
    elif data is not None:
        i = int(st.number_input(f"Sequence of the data (0..{len(data) - 1})", min_value=0,
                                max_value=len(data) - 1, value=0, step=1, key="model_data_row"))
        st.caption(data.describe())
        with store.model_lock():
            st.dataframe(model_page.data_prediction_frame(lm, data.tokens[i]), hide_index=True,
                         width="stretch")
    else:
        st.info("Per-token predictions need inputs: give a data spec in the sidebar's Data field "
                "(or pick a built-in model).")


sample_predictions()

st.subheader("SAE")
sae = store.current_sae()
if sae is None:
    st.info("No SAE selected. Pick one in the sidebar (built-in models ship one).")
elif own_data:
    with store.model_lock():
        quality, features = model_page.sae_report(lm, sae)
else:
    features = None
    quality = None
    if data is None:
        st.info("SAE quality is measured on data: give a data spec in the sidebar's Data field.")
    else:
        try:
            described, quality = model_page.sae_quality_with_progress(lm, sae, spec)
        except ValueError as e:
            st.error(f"SAE quality could not be measured: {e}")
if sae is not None and quality is not None:
    cols = st.columns(4)
    ev = quality["explained_variance"]  # None where undefined (zero variance), with a note
    cols[0].metric("Explained variance", "n/a" if ev is None else f"{ev:.3f}",
                   help=quality.get("explained_variance_note"))
    cols[1].metric("L0 (mean active latents)", f"{quality['l0']:.2f}")
    cols[2].metric("MSE per element", f"{quality['mse']:.3g}")
    cols[3].metric("Dead latents", f"{quality['dead_fraction']:.1%}")
    where = (f"{model_page.SAE_EVAL_SEQUENCES} held-out sequences" if own_data
             else f"`{described['spec']}` ({described['n']:,} sequences × "
                  f"{described['seq_len']} tokens)")
    st.caption(f"Hook `{quality['hook']}`, d_in {quality['d_in']}, d_sae {quality['d_sae']}, "
               f"measured on {quality['n_activations']:,} activations of {where}.")
    if quality.get("note"):
        st.warning(quality["note"])
    if features is not None:
        st.markdown("**Most frequent features**")
        st.dataframe(pd.DataFrame(features), hide_index=True, width="stretch")
