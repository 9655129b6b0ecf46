"""The tail-risk engine's conformance check: the grid of configs, exact ground truth on every
model it passes, the soft-capped readouts, and that it catches a readout that ignores the cap."""

from __future__ import annotations

import itertools

import pytest
import torch

from estimators import conformance
from estimators.tailrisk import Argmax, LogitThreshold
from estimators.tailrisk.behaviours import final_logits, raw_threshold
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.ground_truth import exact
from tests.conformance_grid import DTYPES, OPTIONS, grid_model, output_vocab, tl_runs

GRID = [(o, d) for o in OPTIONS for d in DTYPES]


def _dist(model):
    return from_table([{0: 0.5, 3: 0.5}, {1: 0.25, 2: 0.75}, {0: 0.2, 4: 0.3, 5: 0.5}],
                      int(model.cfg.d_vocab), "grid")


def _brute_argmax(model, dist) -> torch.Tensor:
    """P(argmax = t) for every t, one input at a time from model(tokens) (strict ties miss)."""
    supports = [s.tolist() for s in dist.supports()]
    out = torch.zeros(output_vocab(model), dtype=torch.float64)
    for x in itertools.product(*supports):
        t = torch.tensor([x])
        w = float(dist.log_prob(t).exp())
        with torch.no_grad():
            logits = model(t)[0, -1].double()
        top = logits.topk(2)
        if top.values[0] > top.values[1]:
            out[int(top.indices[0])] += w
    return out


@pytest.mark.parametrize("option,dtype", GRID, ids=[f"{o}-{d}" for o, d in GRID])
def test_grid_check_passes_and_ground_truth_is_the_models(option, dtype):
    model = grid_model(option, dtype)
    if not tl_runs(model):
        pytest.skip("TransformerLens itself cannot run this option in this dtype on CPU")
    v = conformance.verdict(model, "tailrisk")
    assert v.ok, v.reason  # every option of the grid is supported by the readouts
    assert v.max_abs_error <= v.tolerance
    dist = _dist(model)
    got = exact(model, dist, Argmax(0))
    want = _brute_argmax(model, dist)
    if dtype == "float32":  # low precision may flip near-ties between the two passes
        assert torch.allclose(got, want, atol=1e-12)


def test_softcap_readouts_and_constraints():
    model = grid_model("output_logits_soft_cap=2", "float32")
    tokens = torch.randint(0, 10, (32, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = model(tokens)[:, -1]
        from estimators.tailrisk.behaviours import UNEMBED_IN, _site_activation
        a = _site_activation(model, tokens, UNEMBED_IN).float()
    assert torch.allclose(final_logits(model, a), own, atol=1e-5)
    assert float(own.abs().max()) <= 2.0
    assert raw_threshold(model, 2.5) == float("inf") and raw_threshold(model, -2.0) == -float("inf")
    for theta in (-3.0, -1.0, 0.3, 1.9, 2.0, 2.5):
        b = LogitThreshold(3, theta)
        v, _ = b.evaluate(model, tokens)
        assert torch.equal(v.bool(), own[:, 3].double() > theta)
        G, h = b.constraints(model)
        ind = (a.double() @ G + h).min(-1).values > 0
        clear = (own[:, 3].double() - theta).abs() > 1e-5
        assert torch.equal(ind[clear], (own[:, 3].double() > theta)[clear])


def test_check_catches_a_readout_that_ignores_the_cap(monkeypatch):
    import estimators.tailrisk.behaviours as B

    model = grid_model("output_logits_soft_cap=2", "float32")
    monkeypatch.setattr(B, "soft_cap", lambda m: None)  # the bug of the softcap-logits case
    monkeypatch.setattr(conformance, "_VERDICTS", {})
    v = conformance.verdict(model, "tailrisk")
    assert not v.ok and "\n" not in v.reason
    assert "output_logits_soft_cap" in v.reason and "final_logits" in v.reason


def test_entry_points_refuse_a_failing_model(monkeypatch):
    from estimators.conformance import EngineVerdict
    from estimators.tailrisk import ground_truth
    from estimators.tailrisk.registry import run_estimator

    model = grid_model("baseline (LN, learned positions)", "float32")
    monkeypatch.setattr(conformance, "_VERDICTS", {
        (conformance.model_fingerprint(model), "tailrisk"):
            EngineVerdict("tailrisk", False, reason="differs (test)")})
    with pytest.raises(conformance.EngineUnsupported, match="tailrisk: not supported"):
        ground_truth(model, _dist(model), Argmax(0), use_cache=False)
    with pytest.raises(conformance.EngineUnsupported, match="tailrisk: not supported"):
        run_estimator("mc", model, _dist(model), Argmax(0), budget=16)


def test_float64_copy_catches_an_error_that_bfloat16_tolerance_hides(monkeypatch):
    import estimators.tailrisk.behaviours as B

    model = grid_model("baseline (LN, learned positions)", "bfloat16")
    real = B.final_logits
    monkeypatch.setattr(B, "final_logits", lambda m, a: real(m, a) + 1e-3)  # a tiny bias
    monkeypatch.setattr(conformance, "_VERDICTS", {})
    v = conformance.verdict(model, "tailrisk")
    assert not v.ok and "float64" in v.reason
