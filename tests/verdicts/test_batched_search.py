"""Batched scoring of candidate arguments (many candidate masks per pass) equals scoring them one
at a time through the cached engine, on the page's chains: induction (residual parents) and
charlm (an SAE site inside the chain, so a transition reads SAE latents as its parent)."""

import pytest
import torch

from estimators.activation import CovarianceMask, Propagator
from estimators.activation.chain import tile_rows
from estimators.activation.gaussian import Moments
from estimators.activation.mixture import propagate_component, propagate_components
from estimators.activation.search import _mask_candidates, greedy_search
from tests.verdicts.helpers import page_chain, zoo_ready


def _one_at_a_time(chain, site, site_masks):
    prop = Propagator(chain, distances=False)
    out = []
    for sm in site_masks:
        prop.set_mask(CovarianceMask.naive().with_site(site, sm))
        out.append(prop.run().surprise)
    return out


@pytest.mark.parametrize("name", ["induction", "charlm"])
def test_batched_scores_equal_one_at_a_time(name):
    if not zoo_ready(name):
        pytest.skip(f"{name} does not load here")
    chain, _, _ = page_chain(name, with_sae=name != "induction")
    prop = Propagator(chain, distances=False)
    prop.run()
    cands = _mask_candidates(prop, prop.mask, [s.name for s in chain.sites], 2, True)
    for site in dict.fromkeys(s for s, _, _ in cands):
        sms = [sm for s, sm, _ in cands if s == site][:3]
        batched = prop.surprise_of_site_masks(site, sms, batch_size=2)  # 2 passes
        single = _one_at_a_time(chain, site, sms)
        for b, s in zip(batched, single):
            assert b.argument_bits == pytest.approx(s.argument_bits, rel=1e-12)
            assert b.data_bits == pytest.approx(s.data_bits, rel=1e-9), site
            assert b.parts.keys() == s.parts.keys()
    assert prop.mask.hash() == CovarianceMask.naive().hash()  # the argument is left as it was


def test_greedy_path_is_the_same_batched_or_not():
    if not zoo_ready("induction"):
        pytest.skip("induction does not load here")
    chain, tokens, _ = page_chain("induction", with_sae=False)
    kw = dict(max_steps=2, candidates_per_site=2, include_blocks=False, tokens=tokens,
              n_ctx=tokens.shape[1])
    a = greedy_search(Propagator(chain, distances=False), batch_size=1, **kw)
    b = greedy_search(Propagator(chain, distances=False), batch_size=32, **kw)
    assert [p["switched_on"] for p in a.path] == [p["switched_on"] for p in b.path]
    assert [p["total_bits"] for p in a.path] == pytest.approx(
        [p["total_bits"] for p in b.path], rel=1e-9)
    assert a.stop_reason == b.stop_reason and a.mask.hash() == b.mask.hash()


def test_mixture_components_batched_equal_one_by_one():
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    chain, _, _ = page_chain("maxk")
    prop = Propagator(chain, distances=False)
    emp = chain.empirical[chain.sites[0].name]
    moments = [Moments(emp[i::3].mean(0), cov=torch.cov(emp[i::3].T)) for i in range(3)]
    together = propagate_components(prop, 0, moments)
    for g, m in zip(together, moments):
        alone = propagate_component(prop, 0, m)
        assert torch.allclose(g.mean, alone.mean, rtol=1e-6, atol=1e-9)
        assert torch.allclose(g.var, alone.var, rtol=1e-6, atol=1e-9)


def test_tile_rows_and_bad_batch():
    t = torch.arange(3).unsqueeze(1)
    assert tile_rows(t, 2).flatten().tolist() == [0, 1]
    assert tile_rows(t, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    if not zoo_ready("induction"):
        pytest.skip("induction does not load here")
    chain, _, _ = page_chain("induction", with_sae=False)
    prop = Propagator(chain, distances=False)
    with pytest.raises(ValueError, match="batch_size"):
        prop.surprise_of_site_masks(chain.sites[0].name, [], batch_size=0)
    with pytest.raises(ValueError, match="unknown site"):
        prop.surprise_of_site_masks("nope", [])
