"""Edges of the refinement stage and the zero-hit fallback: an estimate near p = 1
stays inside its interval, the fallback's note says what rests on which draws, and the
fallback's calibration reads the unembedding on the model's own device."""

import pytest
import torch

from estimators.tailrisk import Argmax, LogitThreshold, run_estimator
from estimators.tailrisk.common import normal_interval
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.fallback import apply_fallback, calibrate_qld

from .conftest import tiny_model

torch.set_num_threads(1)

RARE = 5  # test_fallback's rare_case: exact probability 1.74e-6


def test_an_interval_whose_mean_lies_above_the_clip_is_not_inverted():
    """Unbiased weights on p = 1 can average 1.02 with a small spread: the normal interval
    was [1.02, 1.0] (lower end above the upper), and the estimate 1.0 lay outside it."""
    w = torch.tensor([1.03, 1.01, 1.02, 1.02], dtype=torch.float64)
    lo, hi = normal_interval(w, 0.95, upper_clip=1.0)
    assert lo <= hi == 1.0
    assert normal_interval(w, 0.95, upper_clip=None)[0] > 1.0  # unclipped: unchanged


@pytest.mark.parametrize("method,refine,seed", [("itgis", 0.65, 1), ("itgis", 0.0, 3)])
def test_a_behaviour_that_always_holds_reads_at_most_one_inside_its_interval(method, refine,
                                                                              seed):
    """logit_t > −1e6 holds on every input (p = 1). Seen before the fix at 1,024 calls: ITGIS
    with the refinement read 1.0 with interval [1.0218, 1.0] (seed 1); ITGIS alone
    (refine_fraction 0) read 1.0010 with interval [0.9941, 1.0] (seed 3)."""
    model = tiny_model(16, seed=2)
    dist = from_table([{v: 1 / 16 for v in range(16)}] * 4, 16, "uniform4")
    e = run_estimator(method, model, dist, LogitThreshold(5, -1e6), 1024, seed=seed,
                      refine_fraction=refine)
    assert e.value <= 1.0
    assert e.interval[0] <= e.value <= e.interval[1] <= 1.0, (e.value, e.interval)


def test_the_note_names_the_reference_draws_for_the_guess_not_for_the_tail(rare_case):
    """With the tail extrapolation the note read "(the geometric mean of QLD and the
    refinement's margin-tail extrapolation from the 179 reference draws' activations,
    calibrated ×1.1 on 15 other targets)": the draws and the calibration belong to QLD, the
    tail comes from the refinement's draws. With the tail alone (fewer than 3 reference
    draws) the note must not say it came from reference draws."""
    model, dist, _ = rare_case
    g = torch.Generator().manual_seed(3)
    _, _, acts = Argmax(RARE).evaluate_site(model, dist.sample(1024, g))
    cal = calibrate_qld(model, Argmax(RARE), acts.double())
    assert cal is not None  # the calibrated wording is the one under test
    _, _, d = apply_fallback(model, Argmax(RARE), acts, 1024, tail=1e-9)
    note = d["fallback_note"]
    assert d["fallback"] == "qld+tail"
    assert ("(the geometric mean of QLD from the 1,024 reference draws' activations, "
            f"calibrated ×{cal['factor']:.2g} on {cal['tokens']} other targets, and the "
            "refinement's margin-tail extrapolation)") in note, note
    assert note.endswith("(1,024 draws from D)")
    _, _, d = apply_fallback(model, Argmax(RARE), acts[:2], 2, tail=1e-9)
    assert d["fallback"] == "tail"
    assert "reference draws" not in d["fallback_note"], d["fallback_note"]
    assert "(the refinement's margin-tail extrapolation)" in d["fallback_note"]
    _, _, d = apply_fallback(model, Argmax(RARE), acts, 1024)  # no tail
    assert ("(QLD from the 1,024 reference draws' activations, calibrated ×"
            in d["fallback_note"]) and d["fallback_note"].endswith("(1,024 draws from D)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["itgis", "mhis"])
def test_zero_hit_fallback_with_calibration_runs_on_cuda(rare_case, method):
    """The samplers keep the reference draws' activations on the cpu; the calibration read
    them through W_U on the model's device (cpu @ cuda: a RuntimeError). On CUDA the
    calibrated QLD fallback must give the cpu's calibration, and a whole zero-hit run (with
    the refinement's margins on the device) must finish inside its interval."""
    import copy

    model, dist, _ = rare_case
    g = torch.Generator().manual_seed(3)
    _, _, acts = Argmax(RARE).evaluate_site(model, dist.sample(1024, g))
    want = calibrate_qld(model, Argmax(RARE), acts.double())
    gpu = copy.deepcopy(model).to("cuda")
    got = calibrate_qld(gpu, Argmax(RARE), acts.double())
    assert want is not None and got["tokens"] == want["tokens"]
    assert got["factor"] == pytest.approx(want["factor"], rel=1e-3)
    e = run_estimator(method, gpu, dist, Argmax(RARE), 256, seed=0)
    assert e.diagnostics["fallback"] is not None
    assert 0 < e.value <= e.interval[1]
