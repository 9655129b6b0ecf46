"""Activation modelling (background.md §2): propagate Gaussians along a model's sites under a
covariance-mask argument, compare them with the real activations, and account for surprise.

API for a page or a notebook
============================

Build a chain (sites + transitions + ground truth) for a loaded model::

    from estimators import zoo
    from estimators.activation import (CovarianceMask, Propagator, transformer_chain,
                                       chain_for_zoo, mlp_chain, load_mlp,
                                       load_input_distribution)
    lm = loading.load_model("induction", "cpu")            # a LoadedModel
    chain = chain_for_zoo(lm, sae=None, n_inputs=512, samples=512, seed=0)
    # or, explicitly, on any HookedTransformer and real tokens [N, ctx]:
    chain = transformer_chain(model, tokens, sites=None, positions=None, sae=None,
                              samples=512, seed=0, logits_position=-1)
    # transformer_chain / chain_for_zoo first run the engine's conformance check (once per
    # model: estimators/activation/conformance.py) and refuse a model it rejects with
    # conformance.EngineUnsupported (a ValueError, one line)
    # or a plain MLP folder + {"mean", "cov"} input distribution (closed form, no sampling):
    mlp = load_mlp(folder); mean, cov = load_input_distribution(path, dim=mlp.widths[0])
    chain = mlp_chain(mlp, mean, cov)

    chain.sites            list[Site] (name, kind, positions, units, dim, role, label(i))
    chain.layouts          {site name: Layout(n_positions, n_units)}: what masks are shaped on
    chain.empirical[name]  [N, d] real activations; chain.empirical_stats(name) → (mean, cov);
                           chain.correlation(name) → [d, d] empirical correlation
    chain.info             model facts, positions, samples, and info["sae"] (the SAE's
                           reconstruction MSE and fraction of variance unexplained)

Propagate, read per-site estimates, distances and surprise::

    prop = Propagator(chain, CovarianceMask.naive(), bits_per_parameter=None)  # ½·log2 N default
    res = prop.run()                         # PropagationResult
    est = res.sites[name]                    # SiteEstimate: .mean [d], .cov (masked, repaired)
                                             # [d, d], .propagated_cov, .var, .correlation(),
                                             # .mask (bool), .repaired
    res.distances[name]                      # SiteDistance: kl (= KL(emp‖est)), kl_est_emp,
                                             # w2, mean_error, var_error, ridge
    res.surprise                             # SurpriseBreakdown (parts "argument:<site>",
                                             # "data:<output site>") → app.plots.surprise_waterfall
                                             # S(Y|π): the logits coded as a continuous vector
                                             # at ε = 0.01 nats (accounting.py); switch with
                                             # chain.with_output_code(chain, "argmax")
    res.output                               # estimate_mean / empirical_mean per output unit
                                             # (+ argmax probabilities for logits)
    res.cost                                 # Cost(calls, flops, seconds)
    res.repaired_sites                       # sites whose Σ⊙M was not PSD and was repaired
    res.to_dict()                            # JSON-ready summary (what the CLI prints)

Change the argument cheaply (only that site and what follows is recomputed; `res.recomputed`
lists the sites that were)::

    res = prop.toggle("blocks.0.hook_resid_post", i, j)     # flip one entry (flat indices)
    prop.set_mask(CovarianceMask.preset("full", chain.layouts))
    prop.set_site_mask(name, SiteMask(chain.layouts[name], rules=(MaskRule("topk", k=32),)))
    res = prop.run()

Score many candidate masks of one site in batched passes (the argument is left unchanged)::

    prop.surprise_of_site_masks(site, [site_mask, ...])    # → [SurpriseBreakdown, ...]

Search for a better argument, with progress and cancellation::

    from estimators.activation import greedy_search, gradient_search
    out = greedy_search(prop, max_steps=10, candidates_per_site=16,
                        on_step=lambda i, total, info: ..., should_stop=lambda: False)
    out.mask (best CovarianceMask found), out.path (list of dicts with step, argument_bits,
    data_bits, total_bits, added), out.cancelled
    out = gradient_search(prop, steps=50, lr=0.1, candidates_per_site=32, on_step=...,
                          should_stop=...)

Serialise the argument (compact: rules and entries, never dense matrices)::

    d = prop.mask.to_dict(); CovarianceMask.from_dict(d); prop.mask.to_json(); prop.mask.hash()
    prop.mask.description_bits(bits_per_parameter, prop.tracked_pairs())   # per-site S(π)

Errors a user can cause (unknown site, mask of the wrong shape, non-finite or malformed input,
bad JSON) raise ValueError with a one-line message.

Modules: sites (Site, names), masks (the argument and its code), gaussian (masking, PSD repair,
distances), closed_form (linear/ReLU/GELU moments, Hermite series), mlp (plain MLPs and their
files), chain (sites, transitions, ground truth), engine (cached propagation), accounting
(S(Y|π)), search (greedy, gradient), cli (`python -m estimators propagate`).
"""

from estimators.activation.accounting import DataCode
from estimators.activation.chain import (Chain, OutputSpec, Step, chain_for_zoo,
                                         default_positions, mlp_chain, transformer_chain)
from estimators.activation.engine import PropagationResult, Propagator, SiteEstimate
from estimators.activation.gaussian import SiteDistance, mask_covariance, site_distance
from estimators.activation.masks import CovarianceMask, Layout, MaskRule, SiteMask
from estimators.activation.mlp import (PlainMLP, load_input_distribution, load_mlp,
                                       random_mlp, save_mlp, validate_input_distribution)
from estimators.activation.search import SearchResult, gradient_search, greedy_search
from estimators.activation.sites import Site

__all__ = [
    "Chain", "CovarianceMask", "DataCode", "Layout", "MaskRule", "OutputSpec", "PlainMLP",
    "PropagationResult", "Propagator", "SearchResult", "Site", "SiteDistance", "SiteEstimate",
    "SiteMask", "Step", "chain_for_zoo", "default_positions", "gradient_search",
    "greedy_search", "load_input_distribution", "load_mlp", "mask_covariance", "mlp_chain",
    "random_mlp", "save_mlp", "site_distance", "transformer_chain",
    "validate_input_distribution",
]
