"""The activation model at scale: unit subsets, SAE-feature subsets, and K, N sized to a time
budget.

Unit specs (`--units`, `transformer_chain(units=…)`):
  first:K          residual sites model units 0..K−1 of d_model
  top-variance:K   the K units with the largest real variance, averaged over every residual
                   site of the chain at the modelled positions (one unit set for all sites)
  3,17,42          an explicit list of residual units (sorted, distinct)
  firing:K         the SAE site models the K features that fire most often on the real inputs
                   (needs an SAE; residual sites keep every unit unless a residual spec is
                   also given, e.g. `--units first:64 firing:32`)
Units a site does not model are held at the real activations of the input that completes each
sample (chain.py): the estimate for the chosen units is the same chain restricted to them.

Time budget (`--time-budget SECONDS`): a timed pilot (`pilot`: chains of PILOT_ROWS/4 and
PILOT_ROWS rows after an untimed warm-up) splits the time into the ground truth (∝ N), the
sampled transitions (∝ K) and the rest (fixed), and `size_to_budget` picks the largest K and N
(K = N while the data lasts) whose predicted time fits the budget. Real activations already in
the shared cache cost nearly nothing, so a pilot on cached data under-predicts a run on new data.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

PILOT_ROWS = 16
K_BOUNDS = (16, 4096)  # samples per transition
N_BOUNDS = (16, 4096)  # real inputs


@dataclass(frozen=True)
class UnitSpec:
    """A parsed --units value: `resid` ("first", K) | ("top-variance", K) | ("list", units) |
    None (every unit); `sae_firing` K or None (the chain's default, sae_max_units)."""

    resid: tuple | None = None
    sae_firing: int | None = None

    def to_dict(self) -> dict:
        r = None
        if self.resid is not None:
            r = (",".join(str(u) for u in self.resid[1]) if self.resid[0] == "list"
                 else f"{self.resid[0]}:{self.resid[1]}")
        return {"resid": r, "sae": None if self.sae_firing is None else
                f"firing:{self.sae_firing}"}


def _positive_int(text: str, spec: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--units {spec}: {text!r} is not an integer") from None
    if k < 1:
        raise ValueError(f"--units {spec}: the count must be at least 1")
    return k


def parse_units(specs) -> UnitSpec:
    """UnitSpec from one or two spec strings (module docstring). Raises ValueError (one line)
    for an unknown form, a non-positive count, a negative or repeated unit, or two residual
    (or two SAE) specs."""
    if isinstance(specs, str):
        specs = [specs]
    resid, sae = None, None
    for spec in specs or []:
        s = str(spec).strip()
        if s.startswith("firing:"):
            if sae is not None:
                raise ValueError("--units: give one firing:K")
            sae = _positive_int(s.split(":", 1)[1], s)
            continue
        if resid is not None:
            raise ValueError("--units: give one residual spec (first:K, top-variance:K or a "
                             "list)")
        if s.startswith("first:") or s.startswith("top-variance:"):
            kind, k = s.split(":", 1)
            resid = (kind, _positive_int(k, s))
        else:
            try:
                units = [int(u) for u in s.split(",")]  # an empty entry ("3,,4") is an error
            except ValueError:
                raise ValueError(f"--units {s!r}: use first:K, top-variance:K, firing:K or a "
                                 f"comma-separated list of units") from None
            if not units or min(units) < 0 or len(set(units)) != len(units):
                raise ValueError(f"--units {s!r}: a list of distinct unit indices ≥ 0")
            resid = ("list", tuple(sorted(units)))
    return UnitSpec(resid, sae)


def resolve_resid_units(spec: UnitSpec, d_model: int, real: list[torch.Tensor] | None = None
                        ) -> tuple[int, ...] | None:
    """The residual units of `spec` (sorted), or None for every unit. real: the residual
    sites' real activations, each [N, positions·d_model] position-major (top-variance only).
    Raises ValueError for a count above d_model or a unit outside 0..d_model−1."""
    if spec.resid is None:
        return None
    kind, arg = spec.resid
    if kind == "list":
        if max(arg) >= d_model:
            raise ValueError(f"--units: unit {max(arg)} is outside 0..{d_model - 1}")
        return tuple(arg)
    if arg > d_model:
        raise ValueError(f"--units {kind}:{arg}: the residual stream has {d_model} units")
    if kind == "first":
        return tuple(range(arg))
    var = torch.zeros(d_model, dtype=torch.float64)
    for a in real or []:
        v = a.double().reshape(a.shape[0], -1, d_model).var(0, unbiased=True)  # [pos, d]
        var += v.mean(0).cpu()
    order = torch.argsort(var, descending=True, stable=True)
    return tuple(sorted(int(u) for u in order[:arg]))


# ----------------------------------------------------------------------- the time budget

@dataclass
class BudgetPlan:
    """K, N chosen for a time budget, with the pilot's measurements (seconds)."""

    budget_seconds: float
    samples: int
    n_inputs: int
    predicted_seconds: float
    per_sample_seconds: float
    per_input_seconds: float
    fixed_seconds: float
    pilot_rows: int
    pilot_seconds: float = 0.0
    limited_by: str = "budget"
    run_seconds: float | None = None  # the run's measured time (filled in by the caller)

    def to_dict(self) -> dict:
        return asdict(self)


def size_to_budget(budget: float, per_sample: float, per_input: float, fixed: float,
                   n_available: int, k_bounds: tuple[int, int] = K_BOUNDS,
                   n_bounds: tuple[int, int] = N_BOUNDS, pilot_rows: int = PILOT_ROWS
                   ) -> BudgetPlan:
    """The largest K (samples per transition) and N (real inputs) with predicted time
    fixed + per_sample·K + per_input·N ≤ budget (seconds), K = N while the data lasts (then the
    rest of the budget goes to K), each within its bounds and N ≤ n_available. The budget covers
    the run itself (ground truth + propagation + distances), not loading or the pilot. When even the
    lower bounds exceed the budget they are used and `limited_by` says "minimum". Raises
    ValueError for a budget that is not a positive finite number."""
    if not (isinstance(budget, (int, float)) and 0 < budget < math.inf):
        raise ValueError("--time-budget must be a positive number of seconds")
    k_lo, k_hi = k_bounds
    n_hi = max(2, min(n_bounds[1], int(n_available)))
    n_lo = min(n_bounds[0], n_hi)
    per_sample, per_input = max(per_sample, 1e-12), max(per_input, 1e-12)
    room = budget - fixed
    n = int(room // (per_sample + per_input)) if room > 0 else 0
    limited = "budget"
    if n >= n_hi:
        n_sel = n_hi
        k = int((room - per_input * n_sel) // per_sample)
        limited = "data" if n_hi < n_bounds[1] else "bounds"
    else:
        n_sel, k = n, n
    n_sel = min(max(n_sel, n_lo), n_hi)
    if k > k_hi:
        k, limited = k_hi, "bounds"
    if k < k_lo or n < n_lo:
        limited = "minimum" if k < k_lo else limited
        k = max(k, k_lo)
    pred = fixed + per_sample * k + per_input * n_sel
    return BudgetPlan(float(budget), int(k), int(n_sel), float(pred), float(per_sample),
                      float(per_input), float(fixed), int(pilot_rows), limited_by=limited)


def _timed(build, mask_for, rows: int, n_p: int) -> tuple[float, float, float, int]:
    """(build seconds, sampled-step seconds, other propagation seconds, N) of one chain."""
    from estimators.activation.engine import Propagator

    t0 = time.perf_counter()
    chain = build(samples=rows, n_inputs=n_p)
    t1 = time.perf_counter()
    res = Propagator(chain, mask_for(chain)).run()
    t2 = time.perf_counter()
    steps = float(res.cost.seconds)
    return t1 - t0, steps, max(0.0, (t2 - t1) - steps), chain.n_inputs


def _slope(t_small: float, t_big: float, n_small: int, n_big: int) -> tuple[float, float]:
    """(per-row seconds, fixed seconds) of the line through two timings; a non-positive slope
    (timing noise) falls back to all-proportional t_big / n_big."""
    if n_big > n_small and t_big > t_small:
        per = (t_big - t_small) / (n_big - n_small)
        return per, max(0.0, t_small - per * n_small)
    return t_big / n_big, 0.0


def pilot(build, mask_for, n_available: int, budget: float, rows: int = PILOT_ROWS
          ) -> BudgetPlan:
    """K, N for `budget` seconds from a timed pilot. `build(samples, n_inputs)` returns a Chain;
    `mask_for(chain)` its mask. After an untimed warm-up (2 rows: the model's one-off
    conformance check, fingerprints, first calls), chains of rows/4 and `rows` rows (K = N)
    are built and propagated: the ground truth's time gives seconds per input, the sampled
    steps' time seconds per sample, each as the slope through the two sizes (their intercepts
    and the rest of the propagation — distances, accounting — count as fixed); then
    `size_to_budget`."""
    from estimators.activation.engine import Propagator

    t_start = time.perf_counter()
    warm = build(samples=2, n_inputs=2)
    Propagator(warm, mask_for(warm)).run()
    n_big = min(rows, max(2, n_available))
    n_small = max(2, n_big // 4)
    b1, s1, o1, m1 = _timed(build, mask_for, max(2, rows // 4), n_small)
    b2, s2, o2, m2 = _timed(build, mask_for, rows, n_big)
    per_input, fix_b = _slope(b1, b2, m1, m2)
    per_sample, fix_s = _slope(s1, s2, max(2, rows // 4), rows)
    plan = size_to_budget(budget, per_sample, per_input, fix_b + fix_s + o2, n_available,
                          pilot_rows=rows)
    plan.pilot_seconds = time.perf_counter() - t_start
    return plan
