"""What every tail-risk estimator shares: the config base, the call-counting convention,
intervals, and small numerics.

Budget convention (stated once, used everywhere): one *model call* is one input sequence
through one forward pass; a backward pass through the same sequence counts as one more call, so
an input evaluated with its gradient costs 2 calls. Estimators never exceed their budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch

# Cancelled: raised by a progress callback to stop a run (the page's Cancel, the CLI's Ctrl-C);
# one class for every long step, re-exported here for the tail-risk callers.
from estimators.progress import Cancelled, Progress  # noqa: F401

ProgressFn = Callable[[float], None]

FORWARD_CALLS = 1
FORWARD_BACKWARD_CALLS = 2
CALLS_CONVENTION = ("1 call = one input's forward pass, a backward pass = 1 more call; "
                    "samples = inputs evaluated (with gradient: 2 calls each; the literature "
                    "counts one forward+backward as one sample)")


@dataclass
class EstimatorConfig:
    """Budget (model calls, convention above), seed, and the batch size of model calls."""

    budget: int = 2048
    seed: int = 0
    batch_size: int = 256

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{type(self).__name__}.{f.name} must be finite, got {v}")
        if not isinstance(self.budget, int) or self.budget < 2:
            raise ValueError(f"budget must be an integer ≥ 2 model calls, got {self.budget!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EstimatorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**d)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


class Clock:
    def __init__(self):
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def report(progress: ProgressFn | None, fraction: float, done: float | None = None,
           total: float | None = None, unit: str = "calls", stage: str = "") -> None:
    """Call `progress` with an `estimators.progress.Progress` (a float fraction in [0, 1] that
    also carries done/total/unit/stage when given, else the bare fraction)."""
    if progress is not None:
        progress(Progress(done, total, unit, stage) if done is not None and total
                 else Progress.of_fraction(fraction, stage))


def batches(total: int, size: int):
    """(start, n) pairs covering `total` items."""
    for start in range(0, total, size):
        yield start, min(size, total - start)


# ------------------------------------------------------------------------------ intervals

def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well-behaved at 0 hits: [0, z²/(n+z²)])."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    if n <= 0:
        return (0.0, 1.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if hits == 0 else max(0.0, centre - half)  # exact 0, not rounding noise
    hi = 1.0 if hits == n else min(1.0, centre + half)
    return (lo, hi)


def clopper_pearson_interval(hits: int, n: int, confidence: float = 0.95
                             ) -> tuple[float, float]:
    """Exact (conservative) binomial interval from Beta quantiles."""
    from scipy.stats import beta

    a = 1 - confidence
    lo = 0.0 if hits == 0 else float(beta.ppf(a / 2, hits, n - hits + 1))
    hi = 1.0 if hits == n else float(beta.ppf(1 - a / 2, hits + 1, n - hits))
    return (lo, hi)


def normal_interval(values: torch.Tensor, confidence: float = 0.95,
                    upper_clip: float | None = 1.0) -> tuple[float, float] | None:
    """mean ± z·sd/√n, clipped at 0 (and at `upper_clip`): an approximate CI for a mean of
    independent terms (importance-weighted values, expected probabilities). None when fewer
    than two terms are non-zero: the sample spread is then no measure of the uncertainty (an
    importance sampler with no hits is not certain that p = 0)."""
    from scipy.stats import norm

    if int((values != 0).sum()) < 2:
        return None
    z = float(norm.ppf(0.5 + confidence / 2))
    n = values.numel()
    mean = float(values.mean())
    se = float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    lo, hi = max(0.0, mean - z * se), mean + z * se
    if upper_clip is not None:  # a mean above the clip (1.02 for p = 1) reads [clip, clip]
        hi = min(hi, upper_clip)
        lo = min(lo, hi)
    return (lo, hi)


def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Φ(x), accurate far into the lower tail (float64)."""
    return torch.special.log_ndtr(x.double())


def phi_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Φ(hi) − Φ(lo) for lo ≤ hi, accurate when both are deep in one tail."""
    lo, hi = lo.double(), hi.double()
    upper = lo > 0  # both in the upper tail: use survival functions Φ(−lo) − Φ(−hi)
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    lb, la = log_ndtr(b), log_ndtr(a)
    out = torch.exp(lb) * (-torch.expm1(la - lb))
    return torch.where(hi > lo, out.clamp_min(0.0), torch.zeros_like(out))


def jsonable(d: Any) -> Any:
    if isinstance(d, torch.Tensor):
        return d.detach().cpu().tolist()
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [jsonable(v) for v in d]
    return d
