"""Tuning an estimator's temperature on held-out targets (whose truth is known).

The importance samplers' temperature T trades exploration against the proposal's tilt; the
literature tunes it per distribution. `tune_temperature` runs the method at each T of a grid on
the held-out targets and keeps the T with the lowest mean Itakura–Saito loss (unfitted, floored
as in `scoring`). Score the tuned method on *other* targets. The grid runs are at *fixed* T
(auto_temperature=False unless the overrides say otherwise): the estimators' default is an
automatic temperature (itgis.py, mhis.py), which needs no held-out targets.
"""

from __future__ import annotations

from typing import Sequence

from estimators.tailrisk.behaviours import Behaviour
from estimators.tailrisk.common import ProgressFn
from estimators.tailrisk.distributions import InputDistribution
from estimators.tailrisk.registry import ESTIMATORS, run_estimator
from estimators.tailrisk.scoring import DEFAULT_FLOOR, itakura_saito

DEFAULT_GRID = (0.3, 1.0, 3.0, 10.0)


def tune_temperature(method: str, model, dist: InputDistribution,
                     behaviours: Sequence[Behaviour], truths: Sequence[float], budget: int,
                     grid: Sequence[float] = DEFAULT_GRID, seed: int = 0,
                     floor: float = DEFAULT_FLOOR, progress: ProgressFn | None = None,
                     **overrides) -> dict:
    """{"temperature": best T, "losses": {T: mean IS loss}} over the held-out targets."""
    if not ESTIMATORS[method].has_temperature:
        raise ValueError(f"method {method!r} has no temperature to tune")
    if len(behaviours) != len(truths) or not behaviours:
        raise ValueError("give one true probability per held-out behaviour (at least one)")
    losses = {}
    total = len(grid) * len(behaviours)
    done = 0
    for T in grid:
        est = []
        for i, b in enumerate(behaviours):
            e = run_estimator(method, model, dist, b, budget, seed + i, temperature=T,
                              **{"auto_temperature": False, **overrides})
            est.append(e.value)
            done += 1
            if progress is not None:
                progress(done / total)
        losses[float(T)] = itakura_saito(truths, est, floor)
    best = min(losses, key=losses.get)
    return {"temperature": best, "losses": losses}
