"""The argument: JSON round trip, stable hash, description bits, errors, PSD repair."""

import json
import math

import pytest
import torch

from estimators.activation import (CovarianceMask, Layout, MaskRule, Propagator, SiteMask,
                                   mask_covariance, mlp_chain, random_mlp)
from estimators.surprise import subset_bits

D = torch.float64
LAY = Layout(4, 8)  # 4 positions × 8 units → 32×32


def test_naive_costs_zero_bits():
    m = CovarianceMask.naive()
    assert m.description_bits(4.5) == {}
    assert SiteMask(LAY).description_bits(0, 4.5) == 0.0


def test_entry_bits_follow_the_documented_code():
    sm = SiteMask(LAY, on=frozenset({(0, 1), (2, 9)}))
    n_pairs = 32 * 31 // 2
    expected = 1 + subset_bits(n_pairs, 2) + 0 + 2 * 3.0  # Elias-gamma(r=0)=1 bit
    assert sm.description_bits(2, 3.0) == pytest.approx(expected)
    assert LAY.n_pairs == n_pairs


def test_dense_rules():
    corr = torch.eye(32, dtype=D)
    corr[3, 17] = corr[17, 3] = 0.9
    corr[5, 6] = corr[6, 5] = -0.95
    corr[1, 2] = corr[2, 1] = 0.1
    sm = SiteMask(LAY, (MaskRule("topk", k=2),))
    d = sm.dense(corr)
    assert d[3, 17] and d[5, 6] and d[6, 5] and not d[1, 2]
    assert int(d.sum()) == 32 + 4
    blk = SiteMask(LAY, (MaskRule("blocks", by="position", pairs=((1, 1), (0, 2))),)).dense()
    assert blk[8:16, 8:16].all() and blk[0:8, 16:24].all() and blk[16:24, 0:8].all()
    assert not blk[0:8, 8:16].any()
    grp = SiteMask(LAY, (MaskRule("blocks", by="unit_group", group_size=4,
                                  pairs=((0, 0),)),)).dense()
    # units 0..3 of every position, across positions
    assert grp[0, 11] and grp[1, 27] and not grp[4, 5]
    full = SiteMask(LAY, (MaskRule("full"),), off=frozenset({(0, 1)})).dense()
    assert not full[0, 1] and not full[1, 0] and int(full.sum()) == 32 * 32 - 2


def test_json_round_trip_and_stable_hash():
    m = CovarianceMask({
        "blocks.0.hook_resid_post": SiteMask(LAY, (MaskRule("topk", k=5),
                                                   MaskRule("blocks", pairs=((2, 1),))),
                                             on=frozenset({(3, 1)}), off=frozenset({(0, 5)})),
        "logits@-1": SiteMask(Layout(1, 10), (MaskRule("full"),)),
    })
    d = m.to_dict()
    text = json.dumps(d)
    assert "[[" in text and len(text) < 600  # compact: rules and entries, no dense matrices
    m2 = CovarianceMask.from_dict(json.loads(text))
    assert m2.to_dict() == d
    assert m2.hash() == m.hash()
    # the same argument built in another order hashes the same; a different one differs
    m3 = CovarianceMask({k: m.sites[k] for k in reversed(list(m.sites))})
    assert m3.hash() == m.hash()
    m4 = m.with_site("logits@-1", SiteMask(Layout(1, 10)))
    assert m4.hash() != m.hash() and "logits@-1" not in m4.to_dict()["sites"]
    assert CovarianceMask.from_json(m.to_json()).hash() == m.hash()
    assert len(m.hash()) == 64


@pytest.mark.parametrize("bad, msg", [
    ("{not json", "not valid JSON"),
    ('{"sites": {"a": {"units": 4, "on": [[0, 9]]}}}', "outside"),
    ('{"sites": {"a": {"units": 4, "on": [[1, 1]]}}}', "diagonal"),
    ('{"sites": {"a": {"units": 4, "rules": [{"kind": "magic"}]}}}', "unknown mask rule"),
    ('{"sites": {"a": {"units": 4, "on": [[0, "x"]]}}}', "integers"),
    ('{"sites": {"a": {"units": "four"}}}', "integer"),
    ('{"sites": [1, 2]}', "site names"),
    ('{"format": "other/9"}', "format"),
    ('[1, 2]', "object"),
])
def test_malformed_masks_raise_clear_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        CovarianceMask.from_json(bad)


def test_validate_unknown_site_and_wrong_shape():
    layouts = {"input": Layout(1, 4)}
    with pytest.raises(ValueError, match="not in the chain"):
        CovarianceMask({"hidden.7": SiteMask(Layout(1, 4))}).validate(layouts)
    with pytest.raises(ValueError, match="shape"):
        CovarianceMask({"input": SiteMask(Layout(1, 5), (MaskRule("full"),))}).validate(layouts)


def test_mask_covariance_psd_repair_reported():
    c = torch.tensor([[1.0, 0.9, 0.81], [0.9, 1.0, 0.9], [0.81, 0.9, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    g = mask_covariance((torch.zeros(3, dtype=D), c), mask)
    assert g.repaired
    assert g.min_eigenvalue == pytest.approx(1 - 0.9 * math.sqrt(2), abs=1e-12)
    assert torch.linalg.eigvalsh(g.cov).min() > -1e-12
    # the repair is the nearest PSD matrix: clip the eigenvalues of Σ⊙M
    ev, V = torch.linalg.eigh(c * mask)
    assert torch.allclose(g.cov, (V * ev.clamp_min(0)) @ V.T, atol=1e-12)
    ok = mask_covariance((torch.zeros(3, dtype=D), c), torch.ones(3, 3, dtype=torch.bool))
    assert not ok.repaired and torch.allclose(ok.cov, c)


def test_engine_reports_repair_and_keeps_going():
    c = torch.tensor([[1.0, 0.9, 0.81], [0.9, 1.0, 0.9], [0.81, 0.9, 1.0]], dtype=D)
    chain = mlp_chain(random_mlp([3, 4, 2], seed=0), torch.zeros(3, dtype=D), c, n_empirical=256)
    mask = CovarianceMask({"input": SiteMask(Layout(1, 3), on=frozenset({(0, 1), (1, 2)}))})
    res = Propagator(chain, mask).run()
    assert res.repaired_sites == ["input"]
    site = [s for s in res.to_dict()["sites"] if s["name"] == "input"][0]
    assert site["repaired"] and site["min_eigenvalue_before_repair"] < 0
    assert math.isfinite(res.surprise.total_bits)


def test_toggle_flips_entries_and_diagonal_is_fixed():
    sm = SiteMask(LAY, (MaskRule("full"),))
    t = sm.toggled(2, 5, currently_on=True)
    assert (2, 5) in t.off and not t.dense()[2, 5]
    back = t.toggled(5, 2, currently_on=False)
    assert back.to_dict() == sm.to_dict()
    with pytest.raises(ValueError, match="diagonal"):
        sm.toggled(3, 3, True)
