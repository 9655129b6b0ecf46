"""The progress protocol: a Progress is its fraction (a float) with counts; time left is the
stage's average rate extrapolated linearly, restarting with each stage."""

from __future__ import annotations

import pytest

from estimators.progress import Eta, Progress, as_progress, format_seconds, report, time_left


def test_time_left_is_linear_extrapolation_of_the_average_rate():
    assert time_left(10.0, 25, 100) == pytest.approx(30.0)  # 10 s per 25 → 30 s for 75 more
    assert time_left(4.0, 100, 100) == 0.0
    assert time_left(3.0, 0, 100) is None  # no rate before the first unit
    assert time_left(-1.0, 5, 10) is None


def test_eta_restarts_with_each_stage_and_when_done_goes_back():
    now = [100.0]
    eta = Eta(clock=lambda: now[0])  # the stage starts when the Eta is made
    now[0] = 102.0
    assert eta.update(Progress(10, 40, "sequences", "activations")) == pytest.approx(6.0)
    now[0] = 104.0
    assert eta.update(Progress(20, 40, "sequences", "activations")) == pytest.approx(4.0)
    now[0] = 105.0  # a new stage: timed from the previous report (t = 104)
    assert eta.update(Progress(100, 1000, "positions", "SAE statistics")) == pytest.approx(9.0)
    now[0] = 107.0  # a second estimator run of the same stage name: done went back
    assert eta.update(Progress(1, 4, "calls", "SAE statistics")) == pytest.approx(6.0)


def test_progress_is_its_fraction_and_describes_itself():
    p = Progress(12, 128, "sequences", "activations")
    assert isinstance(p, float) and float(p) == pytest.approx(12 / 128)
    assert 0.2 * p == pytest.approx(0.2 * 12 / 128)  # callbacks written for a fraction work
    assert p.describe(4.2) == "activations: 12 of 128 sequences · ~5 s left"
    assert p.describe(0.3).endswith(" · <1 s left")
    assert Progress(4, 4).describe(0.0) == "4 of 4 steps"
    assert Progress(5, 0).fraction == 0.0 and Progress(7, 5).done == 5  # clamped
    bare = as_progress(0.5)
    assert bare.fraction == 0.5 and bare.counts() == "50% done"
    assert as_progress(p) is p
    assert [format_seconds(s) for s in (0.2, 59.2, 125, 3600, 3725)] == [
        "<1 s", "1 min", "2 min 5 s", "1 h", "1 h 2 min"]
    seen = []
    report(seen.append, 3, 4, "calls", "ITGIS")
    report(None, 3, 4)  # no callback: nothing happens
    assert seen == [Progress(3, 4)] and seen[0].unit == "calls" and seen[0].stage == "ITGIS"
