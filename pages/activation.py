"""Activation model: propagate Gaussians along the model's sites under a covariance-mask
argument, beside the real activations, with surprise accounting (background.md §2)."""

import streamlit as st

from app import activation as glue
from app import activation_view as view
from app import store

ss = st.session_state

st.title("Activation model")
st.markdown(
    "Each **site** (the residual stream after a block, an MLP layer, SAE latents, the logits) is "
    "modelled as a Gaussian N(μ, Σ), propagated from the input by moment matching through the "
    "real model. The **argument** is one mask per site saying which covariances travel: the "
    "naive argument keeps only variances (0 bits); each tracked covariance costs bits, S(π), "
    "and should make the model's real outputs less surprising, S(Y|π).")

lm = store.current_model()
sae = store.current_sae()
mk = glue.model_key()
data = glue.page_data(lm)  # real inputs for a model outside the zoo (sidebar's Data)
defaults = glue.default_settings(lm, data)
ctx = glue._context_length(lm, data)
site_options = glue.candidate_sites(lm, sae)
ss.setdefault("act_msgs", [])


# ---- settings (URL on first visit), the chain, the propagator: app/activation_view.py ---------
view.bind(lm=lm, sae=sae)
if lm.zoo_entry is None:
    st.caption(f"Real inputs: the first N sequences of {data.describe()}" if data is not None
               else "Real inputs: the token ids typed below, else uniform random tokens "
                    "(give data in the sidebar's Data field for real ones).")
view.init_settings(mk, defaults)
view.settings_form(lm, sae, ctx, site_options)
settings, chain, prop = view.build(lm, sae, mk, defaults)
view.bind(chain=chain, prop=prop)
view.sae_note(chain)
view.units_note(lm, chain, settings)
view.upload_box()

results = st.container()  # the fragment draws above the search
view.search_box(prop)
with results:
    view.argument_and_results(chain, prop, settings, defaults)
