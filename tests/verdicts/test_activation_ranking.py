"""Ranking suite, activation model, at the page's default settings (tests/verdicts/helpers.py):

  * on maxk, the argument that tracks the max token (a mixture conditioned on the label, which
    is the max token, at the input site) and on parens the argument that tracks balance (a
    mixture conditioned on the label at the logits) have lower total bits than *both* trivial
    arguments: the naive one (nothing claimed) and the full mask (every covariance tracked);
  * greedy search from the naive start takes at least one step and ends below both;
  * on induction and charlm no candidate of the searched families pays at these settings (the
    argmax's marginal distribution, which S(Y|π) scores, is already what the naive argument
    predicts); the search must then say why it stopped, with the best candidate's cost and
    saving, and end where it started.
Every search result is verified by re-evaluating its reported argument from scratch.
"""

import pytest

from estimators.activation import CovarianceMask, Propagator
from estimators.activation.mixture import MixtureArgument, mixture_surprise, variable_values
from estimators.activation.search import greedy_search, gradient_search
from tests.verdicts.helpers import page_chain, zoo_ready

GOOD = {"maxk": ("input", "label"), "parens": ("output", "label")}


def _total(chain, mask):
    return Propagator(chain, mask, distances=False).run().surprise.total_bits


@pytest.mark.parametrize("name", list(GOOD))
def test_good_argument_and_greedy_search_beat_both_trivial_ones(name):
    if not zoo_ready(name):
        pytest.skip(f"{name} does not load here")
    chain, tokens, labels = page_chain(name)
    naive = _total(chain, CovarianceMask.naive())
    full = _total(chain, CovarianceMask.preset("full", chain.layouts))
    where, variable = GOOD[name]
    site = chain.sites[0].name if where == "input" else chain.output.site
    prop = Propagator(chain, distances=False)
    good = mixture_surprise(prop, MixtureArgument(site, variable),
                            variable_values(variable, chain, tokens, labels),
                            n_ctx=tokens.shape[1]).surprise.total_bits
    assert good < min(naive, full), (good, naive, full)
    out = greedy_search(Propagator(chain, distances=False), max_steps=2, candidates_per_site=2,
                        include_blocks=False, tokens=tokens, labels=labels,
                        n_ctx=tokens.shape[1])
    assert len(out.path) >= 2, out.stop_reason
    assert out.best_total_bits < min(naive, full)
    assert out.verified_total_bits == pytest.approx(out.best_total_bits, rel=1e-9)
    assert all({"argument_bits", "data_bits", "total_bits", "switched_on"} <= set(s)
               for s in out.path)


@pytest.mark.parametrize("name", ["induction", "charlm"])
def test_search_says_why_it_stops_where_nothing_pays(name):
    if not zoo_ready(name):
        pytest.skip(f"{name} does not load here")
    chain, tokens, labels = page_chain(name, with_sae=name != "induction")
    out = greedy_search(Propagator(chain, distances=False), max_steps=1, candidates_per_site=2,
                        include_blocks=False, tokens=tokens, labels=labels,
                        n_ctx=tokens.shape[1])
    if len(out.path) == 1:
        assert out.stop_reason.startswith("no candidate lowers total bits; the best one (")
        assert "would cost" in out.stop_reason and "and save" in out.stop_reason
    assert out.best_total_bits <= out.path[0]["total_bits"]
    assert out.verified_total_bits == pytest.approx(out.best_total_bits, rel=1e-9)


def test_gradient_gates_switch_and_result_is_verified():
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    chain, _, _ = page_chain("maxk")
    out = gradient_search(Propagator(chain, distances=False), steps=8, candidates_per_site=4)
    # the price is off for the first half: gates whose entries lower S(Y|π) switch on
    assert any(s["switched_on"] for s in out.path[1:])
    assert [s["temperature"] for s in out.path[1:]] == sorted(
        (s["temperature"] for s in out.path[1:]), reverse=True)
    assert out.best_total_bits <= out.path[0]["total_bits"]
    assert out.verified_total_bits == pytest.approx(out.best_total_bits, rel=1e-9)
