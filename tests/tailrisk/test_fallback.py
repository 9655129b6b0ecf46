"""The zero-hit fallback of ITGIS and MHIS (fallback.py) and the margin guide."""

import json
import math

import pytest
import torch

from estimators.cli import main
from estimators.loading import save_checkpoint
from estimators.tailrisk import Argmax, run_estimator
from estimators.tailrisk.behaviours import LogitThreshold
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.ground_truth import exact
from estimators.tailrisk.fallback import zero_hit_upper_bound

from .conftest import tiny_model

RARE = 5  # rare_case: exact probability 1.74e-6 (about 0.1 of 65,536 inputs' worth of mass)


@pytest.mark.parametrize("method", ["itgis", "mhis"])
def test_no_hit_gives_a_clipped_extrapolation_not_zero(rare_case, method):
    """At 256 calls no sample finds a 1.7e-6 target: the estimate is QLD's or GLD's
    extrapolation from the run's reference draws (with the refinement's tail extrapolation), > 0, ≤ the rule-of-three bound, with the
    interval [0, bound]; with fallback off the same run is 0."""
    model, dist, truth = rare_case
    e = run_estimator(method, model, dist, Argmax(RARE), 256, seed=0)
    d = e.diagnostics
    # the reference draws and the refinement's draws from D's own component of its mixture
    n_draws = d["reference_samples"] + d["refine_draws_from_d"]
    hits = d["hits"] if method == "itgis" else d["hits_in_kept"] + d["hits_in_reference"]
    assert hits == 0 and d["refine_hits"] == 0
    # QLD/GLD's guess, or its geometric mean with the refinement's margin-tail extrapolation
    assert d["fallback"].removesuffix("+tail") in ("qld", "gld", "qld half count", "tail")
    ub = zero_hit_upper_bound(n_draws)
    assert ub == pytest.approx(-math.log(0.05) / n_draws) == d["zero_hit_upper_bound"]
    assert 0 < e.value <= ub and e.interval == (0.0, ub)
    assert e.value == min(d["fallback_raw"], ub)
    assert "no sample hit" in d["fallback_note"] and "biased" in d["fallback_note"]
    assert f"({n_draws:,} draws from D)" in d["fallback_note"]  # the bound's own count
    assert e.cost.calls <= 256
    off = run_estimator(method, model, dist, Argmax(RARE), 256, seed=0, fallback=False)
    assert off.value == 0.0 and off.diagnostics["fallback"] is None


@pytest.mark.parametrize("method", ["itgis", "mhis"])
def test_runs_with_hits_are_unchanged(rare_case, method):
    model, dist, truth = rare_case
    on = run_estimator(method, model, dist, Argmax(8), 512, seed=1)  # p = 8.7e-3
    off = run_estimator(method, model, dist, Argmax(8), 512, seed=1, fallback=False)
    assert on.value > 0 and on.value == off.value and on.interval == off.interval
    assert on.diagnostics["fallback"] is None and "fallback_note" not in on.diagnostics


def test_config_fields_are_validated():
    model = tiny_model(vocab=4, seed=1, n_ctx=4)
    dist = from_table([{0: 0.5, 1: 0.5}] * 2, 4, "t")
    with pytest.raises(ValueError, match="fallback"):
        run_estimator("itgis", model, dist, Argmax(0), 64, fallback="yes")
    with pytest.raises(ValueError, match="guide"):
        run_estimator("mhis", model, dist, Argmax(0), 512, guide="max")


def test_itgis_margin_guide_is_unbiased():
    """The argmax margin as the guiding score changes the proposal only: the mean of 150 runs
    (fallback and refinement off) is within 4 standard errors of the exact probability."""
    model = tiny_model(vocab=4, seed=1, n_ctx=4)
    dist = from_table([{0: 0.4, 1: 0.3, 2: 0.2, 3: 0.1}] * 3, 4, "tiny")
    truth = exact(model, dist, Argmax(0))
    target = int(torch.argmin(torch.where(truth > 0, truth, torch.ones_like(truth))))
    p = float(truth[target])
    vals = torch.tensor([run_estimator("itgis", model, dist, Argmax(target), 128, seed=s,
                                       batch_size=16, guide="margin", fallback=False,
                                       refine_fraction=0.0).value
                         for s in range(150)], dtype=torch.float64)
    se = float(vals.std()) / math.sqrt(len(vals))
    assert abs(float(vals.mean()) - p) < 4 * se and se < 0.5 * p


def test_cli_json_names_the_fallback(tmp_path, capsys):
    """A target that is never the argmax (exact 0): the CLI's JSON has the extrapolation, its
    method under "fallback", the one-line "note" and the interval [0, bound];
    --no-fallback gives 0; --no-fallback with another method is one clear line."""
    model = tiny_model(vocab=5, seed=0, n_ctx=4)
    save_checkpoint(model, tmp_path / "model")
    dist = [{"id:0": 0.5, "id:1": 0.25, "id:2": 0.25}, {"fixed": "id:3"},
            {"uniform": [0, 2, 4]}]  # token 2 is never the argmax here
    (tmp_path / "d.json").write_text(json.dumps(dist))
    base = ["tail-risk", "--model", str(tmp_path / "model"), "--distribution",
            str(tmp_path / "d.json"), "--target", "id:2", "--budget", "200", "--json"]
    assert main(base + ["--method", "itgis"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fallback"].removesuffix("+tail") in ("qld", "gld", "qld half count", "tail")
    assert d["estimate"] > 0
    assert d["interval"] == [0.0, d["diagnostics"]["zero_hit_upper_bound"]]
    assert d["note"].startswith("no sample hit") and "\n" not in d["note"]
    assert main(base + ["--method", "mhis", "--no-fallback"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["estimate"] == 0.0 and d["fallback"] is None and "note" not in d
    assert main(base + ["--method", "mc", "--no-fallback"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "itgis and mhis" in err


def test_qld_fallback_is_calibrated_on_the_other_targets(rare_case):
    """The QLD fallback is multiplied by the random-effects offset that the same reference draws
    measure on the other argmax targets (hits among the draws vs QLD on the same activations):
    the points are the rarest tokens with ≥ 3 hits, the offset is DerSimonian–Laird's from
    calibration.log_calibration, and the note says so. 0 extra calls."""
    from estimators.tailrisk.behaviours import final_logits
    from estimators.tailrisk.calibration import log_calibration
    from estimators.tailrisk.fallback import (CAL_MIN_HITS, apply_fallback, calibrate_qld)
    from estimators.tailrisk.qld import qld_probability

    model, dist, truth = rare_case
    g = torch.Generator().manual_seed(3)
    _, _, acts = Argmax(RARE).evaluate_site(model, dist.sample(1024, g))
    acts = acts.double()
    cal = calibrate_qld(model, Argmax(RARE), acts)
    assert cal is not None and cal["tokens"] >= 2
    assert cal["factor"] == pytest.approx(math.exp(cal["offset_ln"]))
    # the same fit by hand from the draws' own argmax counts
    hits = torch.bincount(final_logits(model, acts.float()).argmax(1), minlength=16)
    us = sorted((int(hits[u]), u) for u in range(16)
                if u != RARE and CAL_MIN_HITS <= hits[u] < 1024)
    xs, hs = [], []
    for h, u in us:
        q, _ = qld_probability(acts, *Argmax(u).constraints(model))
        if q > 0 and len(xs) < cal["tokens"]:
            xs.append(math.log(q))
            hs.append(h)
    fit = log_calibration(torch.tensor(xs), torch.tensor(hs, dtype=torch.float64), 1024,
                          fit="offset")
    assert cal["offset_ln"] == pytest.approx(fit["intercept_ln"])
    assert cal["hits_range"] == [hs[0], hs[-1]]
    value, interval, d = apply_fallback(model, Argmax(RARE), acts, 1024)
    assert d["fallback"] == "qld" and d["fallback_calibration"] == cal
    assert d["fallback_raw"] == pytest.approx(d["fallback_uncalibrated"] * cal["factor"])
    assert value == min(d["fallback_raw"], interval[1]) > 0
    assert "calibrated ×" in d["fallback_note"]


@pytest.mark.parametrize("make", [lambda u: Argmax(u),
                                  lambda u: LogitThreshold(u, threshold=0.5)])
def test_family_hits_in_one_pass_equal_each_targets_own_readout(rare_case, make):
    """The calibration's hit counts for every other target come from one pass of the logits
    (a 50k vocabulary would otherwise cost 50k readouts); they equal each target's own readout."""
    from estimators.tailrisk.fallback import _family_hits

    model, dist, _ = rare_case
    g = torch.Generator().manual_seed(5)
    _, _, acts = Argmax(RARE).evaluate_site(model, dist.sample(300, g))
    got = _family_hits(model, make(RARE), acts, rows=64)
    want = {u: int(make(u).readout(model, acts.float())[0].sum()) for u in range(16) if u != RARE}
    assert got == want
