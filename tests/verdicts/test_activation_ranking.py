"""Ranking suite, activation model, at the default settings (tests/verdicts/helpers.py: the page's
chain, with the default data code: the logits coded as a continuous vector at ε = 0.01 nats):

  * on maxk, the argument that tracks the max token (a mixture conditioned on the label, which
    is the max token, at the input site) and on parens the argument that tracks balance (a
    mixture conditioned on the label at the logits) have lower total bits than *both* trivial
    arguments: the naive one (nothing claimed) and the full mask (every covariance tracked);
  * on every zoo model (induction, maxk, parens, charlm) greedy and gradient search from the
    naive start reach a total below both trivial arguments (small searches, to stay fast; the
    chain is the page's, N = 64, K = 128);
  * when nothing pays, the search says why it stopped, with the best candidate's cost and saving.
Every search result is verified by re-evaluating its reported argument from scratch.
"""

import pytest

from estimators.activation import CovarianceMask, Propagator
from estimators.activation.mixture import MixtureArgument, mixture_surprise, variable_values
from estimators.activation.search import greedy_search, gradient_search
from tests.verdicts.helpers import page_chain, zoo_ready

GOOD = {"maxk": ("input", "label"), "parens": ("output", "label")}
ZOO = ["induction", "maxk", "parens", "charlm"]


def _total(chain, mask):
    return Propagator(chain, mask, distances=False).run().surprise.total_bits


def _trivial(chain):
    return (_total(chain, CovarianceMask.naive()),
            _total(chain, CovarianceMask.preset("full", chain.layouts)))


def _chain(name):
    if not zoo_ready(name):
        pytest.skip(f"{name} does not load here")
    return page_chain(name, with_sae=name != "induction")


def _verified(out):
    assert out.verified_total_bits == pytest.approx(out.best_total_bits, rel=1e-9)
    assert all({"argument_bits", "data_bits", "total_bits", "switched_on"} <= set(s)
               for s in out.path)


@pytest.mark.parametrize("name", list(GOOD))
def test_good_argument_beats_both_trivial_ones(name):
    chain, tokens, labels = _chain(name)
    naive, full = _trivial(chain)
    where, variable = GOOD[name]
    site = chain.sites[0].name if where == "input" else chain.output.site
    prop = Propagator(chain, distances=False)
    good = mixture_surprise(prop, MixtureArgument(site, variable),
                            variable_values(variable, chain, tokens, labels),
                            n_ctx=tokens.shape[1]).surprise.total_bits
    assert good < min(naive, full), (good, naive, full)


@pytest.mark.parametrize("name", ZOO)
def test_default_output_is_the_continuous_logits(name):
    chain, _, _ = _chain(name)
    assert chain.output.kind == "continuous" and chain.output.epsilon == 0.01
    assert chain.site(chain.output.site).kind == "logits"
    assert tuple(chain.output.observations.shape) == (chain.n_inputs,
                                                      chain.site(chain.output.site).dim)


@pytest.mark.parametrize("name", ZOO)
def test_greedy_search_from_naive_beats_both_trivial_ones(name):
    chain, tokens, labels = _chain(name)
    naive, full = _trivial(chain)
    out = greedy_search(Propagator(chain, distances=False), max_steps=1, candidates_per_site=2,
                        include_blocks=False, tokens=tokens, labels=labels,
                        n_ctx=tokens.shape[1])
    assert len(out.path) == 2, out.stop_reason
    assert out.path[0]["total_bits"] == pytest.approx(naive, rel=1e-12)
    assert out.best_total_bits < min(naive, full), (out.best_total_bits, naive, full)
    _verified(out)


@pytest.mark.parametrize("name", ZOO)
def test_gradient_search_from_naive_beats_both_trivial_ones(name):
    """Page defaults for the search (3 updates, 8 candidate pairs per site)."""
    chain, _, _ = _chain(name)
    naive, full = _trivial(chain)
    out = gradient_search(Propagator(chain, distances=False), steps=3, candidates_per_site=8)
    assert any(s["switched_on"] for s in out.path[1:])  # the gates switch
    assert out.best_total_bits < min(naive, full), (out.best_total_bits, naive, full)
    assert [s["temperature"] for s in out.path[1:]] == sorted(
        (s["temperature"] for s in out.path[1:]), reverse=True)
    _verified(out)


def test_search_says_why_it_stops_where_nothing_pays():
    """At 10⁴ bits per tracked number nothing pays: one line with the best candidate's cost and
    saving, and the search ends where it started."""
    chain, tokens, labels = _chain("induction")
    out = greedy_search(Propagator(chain, bits_per_parameter=1e4, distances=False), max_steps=1,
                        candidates_per_site=2, include_blocks=False, tokens=tokens,
                        labels=labels, n_ctx=tokens.shape[1])
    assert len(out.path) == 1
    assert out.stop_reason.startswith("no candidate lowers total bits; the best one (")
    assert "would cost" in out.stop_reason and "and save" in out.stop_reason
    assert out.best_total_bits == out.path[0]["total_bits"]
    _verified(out)
