"""Reference draws pooled with tilted samples (mixture.py) and the samplers that use them."""

import math

import pytest
import torch

from estimators.tailrisk import Argmax, run_estimator
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.ground_truth import exact
from estimators.tailrisk.mixture import bridge_log_z, log_balance_weights, pooled_estimate

from .conftest import tiny_model


def test_balance_weights_are_bounded_and_reduce_to_plain_ones():
    log_d = torch.log(torch.tensor([0.5, 1e-6, 0.1], dtype=torch.float64))
    log_q = torch.log(torch.tensor([1e-9, 0.5, 0.1], dtype=torch.float64))
    w = log_balance_weights(log_d, log_q, 1, 3).exp()
    assert float(w.max()) <= 4.0 + 1e-12  # ≤ n / n_D
    assert torch.allclose(log_balance_weights(log_d, log_q, 0, 3), log_d - log_q)
    assert torch.equal(log_balance_weights(log_d, log_q, 3, 0), torch.zeros(3,
                                                                           dtype=torch.float64))


def test_bridge_recovers_a_known_normaliser():
    """D = N(0, 1) scores l = s/T, q ∝ D·e^{l} = N(1/T, 1): Z = e^{1/(2T²)} exactly."""
    g = torch.Generator().manual_seed(0)
    T = 0.5
    s_ref = torch.randn(4000, generator=g, dtype=torch.float64)
    s_tilt = torch.randn(4000, generator=g, dtype=torch.float64) + 1 / T
    lz = bridge_log_z(s_ref / T, s_tilt / T)
    assert lz == pytest.approx(1 / (2 * T * T), abs=0.1)
    # the pooled estimate of P(s > 3) (exactly 1.35e-3) from both pools
    v_ref, v_tilt = (s_ref > 3).double(), (s_tilt > 3).double()
    p, _ = pooled_estimate(v_ref, s_ref / T, v_tilt, s_tilt / T)
    assert p == pytest.approx(1.35e-3, rel=0.15)
    # no hit anywhere -> 0; a hit only among the reference draws -> > 0
    assert pooled_estimate(v_ref * 0, s_ref / T, v_tilt * 0, s_tilt / T)[0] == 0.0
    assert pooled_estimate(v_ref, s_ref / T, v_tilt * 0, s_tilt / T)[0] > 0.0


@pytest.fixture(scope="module")
def tiny():
    model = tiny_model(vocab=4, seed=1, n_ctx=4)
    dist = from_table([{0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}] * 3, 4, "tiny")
    truth = exact(model, dist, Argmax(0))
    target = int(torch.argmin(torch.where(truth > 0, truth, torch.ones_like(truth))))
    return model, dist, target, float(truth[target])


def test_itgis_with_reference_draws_is_unbiased_and_counts_calls(tiny):
    """Balance-heuristic pooling with reference draws: the mean of 150 runs (budget 160 calls:
    40 forward-only draws + 60 samples with gradients, batches of 16) is within 4 standard
    errors of the exact probability (the refinement, consistent but not unbiased, off)."""
    model, dist, target, p = tiny
    runs = [run_estimator("itgis", model, dist, Argmax(target), 160, seed=s, batch_size=16,
                          reference_fraction=0.25, refine_fraction=0.0) for s in range(150)]
    vals = torch.tensor([e.value for e in runs], dtype=torch.float64)
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - p) < 4 * se and se < 0.5 * p
    d = runs[0].diagnostics
    assert d["reference_samples"] == 40 and d["samples_with_gradient"] == 60
    assert d["samples"] == 100 and runs[0].cost.calls == 160


def test_mhis_pools_reference_draws(tiny):
    """MHIS with reference draws: calls = draws + 2·(chains + steps) + refinement draws; within 3× of the truth
    (p ≈ 0.03) at 1,024 calls, and the draws are reported."""
    model, dist, target, p = tiny
    e = run_estimator("mhis", model, dist, Argmax(target), 1024, seed=0, n_chains=8)
    d = e.diagnostics
    assert e.cost.calls <= 1024
    assert e.cost.calls == (d["reference_samples"] - 8 + 2 * d["samples_with_gradient"]
                            + d["refine_samples"])
    assert p / 3 <= e.value <= 3 * p, (e.value, p)


def test_reference_fraction_is_validated():
    model = tiny_model(vocab=4, seed=1, n_ctx=4)
    dist = from_table([{0: 0.5, 1: 0.5}] * 2, 4, "t")
    with pytest.raises(ValueError, match="reference_fraction"):
        run_estimator("itgis", model, dist, Argmax(0), 64, reference_fraction=1.0)
    with pytest.raises(ValueError, match="reference_fraction"):
        run_estimator("mhis", model, dist, Argmax(0), 512, reference_fraction=-0.1)
