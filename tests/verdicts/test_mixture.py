"""Mixture arguments: the one-component mixture is the single Gaussian (same S(Y|π), and S(π) only
the bits naming the variable), components are the inputs grouped by the variable, the price grows
with the number of components, and bad variables are one clear ValueError."""

import math

import pytest
import torch

from estimators.activation import CovarianceMask, Propagator
from estimators.activation.mixture import MixtureArgument, mixture_surprise, parse_variable, \
    variable_values
from estimators.surprise import subset_bits
from tests.verdicts.helpers import page_chain, zoo_ready


@pytest.fixture(scope="module")
def maxk():
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    return page_chain("maxk")


def test_one_component_is_the_single_gaussian(maxk):
    chain, tokens, _ = maxk
    prop = Propagator(chain, CovarianceMask.naive(), distances=False)
    naive = prop.run().surprise
    one = mixture_surprise(prop, MixtureArgument(chain.sites[0].name, "token_at:0"),
                           torch.zeros(chain.n_inputs, dtype=torch.long), n_ctx=4)
    assert len(one.components) == 1 and one.components[0].weight == 1.0
    assert one.surprise.data_bits == pytest.approx(naive.data_bits, rel=1e-6)
    assert one.surprise.argument_bits == pytest.approx(math.log2(3) + subset_bits(4, 1))


def test_components_and_price(maxk):
    chain, tokens, labels = maxk
    prop = Propagator(chain, distances=False)
    vals = variable_values("label", chain, tokens, labels)
    assert torch.equal(vals, labels.long())
    r = mixture_surprise(prop, MixtureArgument(chain.sites[0].name, "label"), vals, n_ctx=4)
    C = len(torch.unique(labels))
    assert len(r.components) == C
    assert sum(c.weight for c in r.components) == pytest.approx(1.0)
    assert sorted(int(i) for c in r.components for i in c.members) == list(range(chain.n_inputs))
    b = prop.bits_per_parameter
    assert r.surprise.argument_bits == pytest.approx(math.log2(3) + subset_bits(1, 1) +
                                                     (C - 1) * b)
    # at a site other than the input the component moments are fitted and paid for
    out = mixture_surprise(prop, MixtureArgument(chain.output.site, "label"), vals, n_ctx=4)
    d = chain.site(chain.output.site).dim
    assert out.surprise.argument_bits == pytest.approx(
        math.log2(3) + subset_bits(1, 1) + ((C - 1) + d * (C + 1)) * b)


def test_bad_variables(maxk):
    chain, tokens, _ = maxk
    for bad in ("labels", "token_at:x", "sign:nosite", "sign::3"):
        with pytest.raises(ValueError):
            parse_variable(bad)
    with pytest.raises(ValueError, match="labels"):
        variable_values("label", chain, tokens, None)
    with pytest.raises(ValueError, match="outside"):
        variable_values("token_at:9", chain, tokens)
    with pytest.raises(ValueError, match="unknown site"):
        variable_values("sign:nope:0", chain)
    v = variable_values(f"sign:{chain.sites[1].name}:0", chain)
    assert set(v.tolist()) <= {0, 1}
