"""The activation page's default chain, built through the library (no Streamlit): the
default positions (`chain.default_positions` with the page's 128-variable budget), the residual
boundaries, the zoo SAE's site and the logits at the read-out position, N = 64 inputs and
K = 128 samples per transition (app/activation.py's DEFAULT_N_INPUTS / DEFAULT_SAMPLES)."""

import functools

from estimators import zoo
from estimators.activation import chain_for_zoo
from estimators.activation.chain import default_positions
from estimators.activation.sites import resid_site_name
from estimators.loading import load_model, load_sae, sae_hook_name

PAGE_N_INPUTS, PAGE_SAMPLES, PAGE_MAX_DIM = 64, 128, 128


@functools.lru_cache(maxsize=None)
def page_chain(name: str, with_sae: bool = True):
    """(chain, tokens, labels) of the page's defaults for a zoo model."""
    lm = load_model(name, "cpu")
    sae = load_sae("zoo", lm, "cpu") if with_sae else None
    entry = lm.zoo_entry
    batch = entry.sample(PAGE_N_INPUTS, seed=0)
    ctx = int(batch.tokens.shape[1])
    lp = entry.label_position
    pos = default_positions(ctx, lm.model.cfg.d_model, PAGE_MAX_DIM, -1 if lp is None else lp)
    L = lm.model.cfg.n_layers
    sites = [resid_site_name(b, L) for b in range(L + 1)]
    if sae is not None:
        sites.append(f"sae:{sae_hook_name(sae)}")
    sites.append(f"logits@{-1 if lp is None else lp}")
    chain = chain_for_zoo(lm, sae=sae, n_inputs=PAGE_N_INPUTS, samples=PAGE_SAMPLES, seed=0,
                          sites=sites, positions=list(pos))
    return chain, batch.tokens, batch.labels


def zoo_ready(name: str) -> bool:
    try:
        zoo.get(name).load_model("cpu")
    except Exception:
        return False
    return True
