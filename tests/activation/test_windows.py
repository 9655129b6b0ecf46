"""Causal windows (chain.CausalWindow): a sampled transition that runs only the modelled
positions, with the earlier positions' keys and values cached, gives the whole-context pass's
estimates up to float32 rounding, one candidate at a time and batched."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import estimators.activation.chain as chain_mod
from estimators.activation.engine import Propagator
from estimators.activation.masks import CovarianceMask, SiteMask

SITES = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.mlp.hook_post",
         "blocks.2.hook_resid_post", "logits@10"]


def _model(pe: str, **kw) -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4,
                                  d_mlp=64, d_vocab=50, act_fn="gelu_new",
                                  normalization_type="LN", positional_embedding_type=pe,
                                  seed=0, **kw)
    return HookedTransformer(cfg).eval()


def _propagate(model, tokens):
    ch = chain_mod.transformer_chain(model, tokens, positions=[8, 9, 10], samples=32, seed=0,
                                     sites=SITES)
    prop = Propagator(ch, CovarianceMask.preset("full", ch.layouts))
    res = prop.run()
    site = "blocks.0.hook_resid_post"
    batched = prop.surprise_of_site_masks(site, [SiteMask(ch.layouts[site])] * 3)
    return res, [b.total_bits for b in batched]


@pytest.mark.parametrize("pe", ["standard", "rotary"])
def test_windowed_transitions_equal_the_whole_context(pe, monkeypatch):
    model = _model(pe)
    tokens = torch.randint(0, 50, (24, 12), generator=torch.Generator().manual_seed(1))
    base = {0: torch.zeros(4, 12, 32)}
    assert chain_mod.causal_windows(model, {}, base, [8, 9, 10], 10, [(0, 1, "resid")])
    windowed, wb = _propagate(model, tokens)
    monkeypatch.setattr(chain_mod, "WINDOW_CACHE_BYTES", 0)  # every step: the whole context
    assert not chain_mod.causal_windows(model, {}, base, [8, 9, 10], 10, [(0, 1, "resid")])
    whole, hb = _propagate(model, tokens)
    for name, est in whole.sites.items():
        w = windowed.sites[name]
        scale = float(est.cov.abs().max()) + float(est.mean.abs().max()) + 1.0
        assert float((w.mean - est.mean).abs().max()) <= 1e-5 * scale, name
        assert float((w.cov - est.cov).abs().max()) <= 1e-5 * scale, name
    assert windowed.surprise.total_bits == pytest.approx(whole.surprise.total_bits, rel=1e-6)
    assert wb == pytest.approx(hb, rel=1e-6)


def test_no_window_where_later_positions_reach_earlier_ones():
    base = {0: torch.zeros(4, 12, 32)}
    steps = [(0, 1, "resid")]
    assert not chain_mod.causal_windows(_model("standard", attention_dir="bidirectional"), {},
                                        base, [8, 9], 9, steps)
    assert not chain_mod.causal_windows(_model("shortformer"), {}, base, [8, 9], 9, steps)
    # every position modelled and read: nothing to leave out
    assert not chain_mod.causal_windows(_model("standard"), {}, base, list(range(12)), 11,
                                        steps)


def test_a_window_that_fails_falls_back_to_the_whole_context(monkeypatch):
    model = _model("standard")
    tokens = torch.randint(0, 50, (24, 12), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(chain_mod, "WINDOW_CACHE_BYTES", 0)
    whole, _ = _propagate(model, tokens)
    monkeypatch.setattr(chain_mod, "WINDOW_CACHE_BYTES", 512 * 2 ** 20)

    def broken(self, resid):
        raise RuntimeError("a cache this config does not serve")
    monkeypatch.setattr(chain_mod.CausalWindow, "run", broken)
    fallen, _ = _propagate(model, tokens)
    assert fallen.surprise.total_bits == whole.surprise.total_bits
