import json

import pytest
import torch

from estimators.tailrisk import DistributionError, from_json, parse_file, uniform
from estimators.tailrisk.distributions import InputDistribution, from_table

VOCAB = ["a", "b", "(", "1", "x"]


def test_formats_and_ids():
    d = from_json([{"a": 0.25, "b": 0.75}, {"fixed": "("}, "x", 3, {"id:1": 0.5, "1": 0.5},
                   {"uniform": ["a", "id:4"]}], 5, n_ctx=8, vocab=VOCAB)
    p = d.probs
    assert p[0].tolist() == [0.25, 0.75, 0, 0, 0]
    assert p[1, 2] == 1 and p[2, 4] == 1 and p[3, 3] == 1
    assert p[4, 1] == 0.5 and p[4, 3] == 0.5  # "id:1" is token 1 ("b"), "1" is the string "1"
    assert p[5, 0] == 0.5 and p[5, 4] == 0.5
    assert d.n_inputs() == 2 * 1 * 1 * 1 * 2 * 2
    # round trip through the file format (ids written id:<n>)
    again = from_json(json.loads(json.dumps(d.to_json())), 5, vocab=None)
    assert torch.equal(again.probs, d.probs)


@pytest.mark.parametrize("obj, msg", [
    ([{"a": 0.5, "b": 0.4}], "sum to 0.9"),
    ([{"a": 1.5, "b": -0.5}], "negative"),
    ([{"zz": 1.0}], "unknown token 'zz'"),
    ([{"id:9": 1.0}], "outside the vocabulary"),
    ([{"a": "half", "b": 0.5}], "must be a number"),
    ([{"a": float("nan"), "b": 0.5}], "not finite"),
    ([], "no positions"),
    ({"name": "x"}, "positions"),
    ([["a"]], "position 0"),
    (["a"] * 9, "context is 8"),
])
def test_bad_distributions_are_clear(obj, msg):
    with pytest.raises(DistributionError, match=msg):
        from_json(obj, 5, n_ctx=8, vocab=VOCAB)


def test_sum_tolerance_is_1e_minus_6():
    from_json([{"a": 0.5, "b": 0.5 + 5e-7}], 5, vocab=VOCAB)  # within tolerance
    with pytest.raises(DistributionError, match="not 1"):
        from_json([{"a": 0.5, "b": 0.5 + 5e-6}], 5, vocab=VOCAB)


def test_bad_json_and_no_vocab():
    with pytest.raises(DistributionError, match="not valid JSON"):
        parse_file(b"[{", 5, 8, VOCAB)
    with pytest.raises(DistributionError, match="no token labels"):
        from_json([{"a": 1.0}], 5)


def test_sampling_and_log_prob_match_table():
    d = from_table([{0: 0.2, 1: 0.8}, {2: 1.0}, {3: 0.5, 4: 0.5}], 5, "t")
    x = d.sample(40_000, torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 3) and (x[:, 1] == 2).all()
    assert abs(float((x[:, 0] == 1).double().mean()) - 0.8) < 0.01
    lp = d.log_prob(torch.tensor([[1, 2, 3]]))
    assert float(lp.exp()) == pytest.approx(0.8 * 0.5)
    assert d.fixed_positions() == [1]
    assert uniform(3, 5).n_inputs() == 125
    with pytest.raises(DistributionError):
        InputDistribution(torch.ones(2, 3), "bad")
