"""The greedy coordinate search (coordinate.py) and the refinement's known-set estimate
(pmc.refine), against exact enumeration."""

import torch

from estimators.tailrisk import Argmax, LogitThreshold, run_estimator
from estimators.tailrisk import coordinate
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.pmc import SearchLog, defensive_share, refine

from .conftest import tiny_model

RARE = 5  # rare_case: exact probability 1.74e-6, carried by few of the 65,536 inputs


def _hits(model, dist, behaviour):
    grid = torch.cartesian_prod(*dist.supports())
    v, _ = behaviour.evaluate(model, grid)
    return {tuple(r) for r in grid[v > 0].tolist()}


def test_the_climb_finds_a_rare_target_and_logs_only_hits(rare_case):
    """2,000 calls find inputs of the 1.7e-6 target (plain sampling would need ~10^6 draws);
    every logged hit is a real one; the calls stay within the budget and count every input."""
    model, dist, truth = rare_case
    exact_hits = _hits(model, dist, Argmax(RARE))
    found = 0
    for seed in range(3):
        log = SearchLog()
        out = coordinate.coordinate_search(model, dist, Argmax(RARE), 2000,
                                           torch.Generator().manual_seed(seed), "cpu", log)
        assert out.calls == out.inputs <= 2000 and out.calls > 1900
        assert set(log.hits) <= exact_hits
        assert 0 < out.starts <= out.inputs and out.start_hits == 0
        found += bool(log.hits)
    assert found >= 2, found


def test_wide_supports_take_candidates_from_the_gradient():
    """A position with more tokens than CANDIDATES: each step tries the CANDIDATES tokens with
    the largest first-order gain, gradients cost 2 calls per walker, the budget holds, and a
    small budget takes fewer walkers rather than no step (QA: 8 walkers × 64 candidates did
    not fit 300 calls, and the climb stopped before its first step)."""
    model = tiny_model(100, seed=1, n_ctx=4)
    dist = from_table([{v: 1 / 100 for v in range(100)}] * 3, 100, "wide")
    log = SearchLog()
    out = coordinate.coordinate_search(model, dist, Argmax(7), 1500,
                                       torch.Generator().manual_seed(0), "cpu", log)
    assert out.calls <= 1500 and out.calls > out.inputs  # gradients: 2 calls, no input
    # 5 walkers (4 steps each of 64 candidates, 1 start and 2 gradient calls fit in 1,500)
    assert out.starts == 1500 // (coordinate.MIN_STEPS * (coordinate.CANDIDATES + 3)) == 5
    assert (out.inputs - out.starts) % (5 * coordinate.CANDIDATES) == 0
    assert out.inputs - out.starts >= 4 * 5 * coordinate.CANDIDATES


def test_known_set_estimate_is_exact_when_every_hit_is_known(rare_case):
    """The search logged every input of the target: the refinement reads D(H), exactly p, and
    no draw can add to it (its interval's lower end is p)."""
    model, dist, truth = rare_case
    target = 6  # 5.4e-5
    p = float(truth[target])
    hits = torch.tensor(sorted(_hits(model, dist, Argmax(target))))
    log = SearchLog()
    log.add(hits, torch.ones(len(hits)), torch.zeros(len(hits)))
    assert abs(log.known_mass(dist) - p) < 1e-12 * p
    r = refine(model, dist, Argmax(target), log, 2048, torch.Generator().manual_seed(0), 256,
               "cpu")
    assert abs(r.value - p) < 1e-12 * p and r.known == len(hits)
    assert abs(r.interval[0] - p) < 1e-12 * p and r.interval[1] > p  # the unseen rest's bound


def test_common_behaviours_raise_the_defensive_share():
    """α is D's share: 0.1 for a rare behaviour, the hit rate of the climb's fresh draws of D
    for a common one (at most 0.8)."""
    assert defensive_share(coordinate.Climb(starts=40, start_hits=0)) == 0.1
    assert defensive_share(coordinate.Climb(starts=40, start_hits=20)) == 0.5
    assert defensive_share(coordinate.Climb(starts=40, start_hits=40)) == 0.8
    assert defensive_share(coordinate.Climb()) == 0.1
    model = tiny_model(16, seed=2)
    dist = from_table([{v: 1 / 16 for v in range(16)}] * 4, 16, "uniform4")
    e = run_estimator("itgis", model, dist, LogitThreshold(5, -1e6), 1024, seed=0)
    assert e.diagnostics["refine_known_inputs"] > 100 and e.value > 0.95


def test_the_interval_stays_informative_on_a_common_target(rare_case):
    """p = 0.32 at 1,024 calls: every interval contains p and its upper end stays below 0.6.
    The bound on the mass no draw reached counts the draws from D's own component (QA2: over
    every draw divided by α, the upper end was 1 in 9 of 10 runs)."""
    model, dist, truth = rare_case
    p = float(truth[14])
    for method in ("itgis", "mhis"):
        for seed in range(2):
            e = run_estimator(method, model, dist, Argmax(14), 1024, seed=seed)
            assert e.interval[0] <= p <= e.interval[1] < 0.6, (method, seed, e.interval)
            assert e.diagnostics["refine_draws_from_d"] > 0


def test_the_climb_hands_over_once_enough_hits_are_known():
    """A behaviour that always holds: the walkers' starts and first step already give
    ENOUGH_HITS distinct hits, so the climb stops long before its budget (the draws take the
    rest); a rare target keeps climbing to the end (test above)."""
    model = tiny_model(16, seed=2)
    dist = from_table([{v: 1 / 16 for v in range(16)}] * 4, 16, "uniform4")
    log = SearchLog()
    out = coordinate.coordinate_search(model, dist, LogitThreshold(5, -1e6), 4000,
                                       torch.Generator().manual_seed(0), "cpu", log)
    assert len(log.hits) >= coordinate.ENOUGH_HITS and out.calls < 500
