"""Progress, time left and cancellation for long steps: one small protocol shared by the
library's loops, the CLI (stderr line) and the pages (progress bar with Cancel).

A long loop takes an optional `progress` callable and calls it after each unit of work
(a batch of sequences, a batch of model calls, a hypothesis):

    from estimators.progress import report
    for start in range(0, n, bs):
        ...one batch...
        report(progress, start + m, n, "sequences", "activations")

`progress` receives a `Progress`: the fraction done (a float in [0, 1], so callbacks written
for a bare fraction keep working) that also carries `done`, `total`, `unit` ("sequences",
"calls", "samples", "hypotheses", …) and `stage` (what is being computed).

Cancellation is cooperative: the callback may raise `Cancelled` (the CLI raises
KeyboardInterrupt on Ctrl-C; Streamlit raises its own rerun/stop exception from the next `st.*`
call the callback makes). The loops let it propagate and commit nothing half-done: the
activation cache stores an entry only after every batch is computed (and writes disk files to a
temporary name, then renames), memoised results are stored only on success.

Time left (`Eta`): elapsed·(total − done)/done, with `elapsed` measured from the start of the
current stage, i.e. the average rate of the stage so far extrapolated linearly to the units
left. It is None until one unit is done, and restarts when the stage changes or `done` goes
back. Batches of equal size cost about the same, so the estimate settles after the first few;
the first batch also pays one-off costs (warm-up), which makes early estimates pessimistic.
"""

from __future__ import annotations

import math
import time
from typing import Callable


class Cancelled(Exception):
    """Raised by a progress callback to stop a long step (the page's Cancel, the CLI's Ctrl-C).
    Loops let it propagate; nothing half-computed is cached."""


class Progress(float):
    """The fraction of a step done, in [0, 1] (the float value), with the counts behind it.

    done, total: units done and in all (total ≥ 0; total 0 reads as fraction 0);
    unit: what is counted (plural noun: "sequences", "calls", "samples", "hypotheses", "rows");
    stage: what the step is computing now ("activations", "ground truth", …), "" if one stage.
    """

    done: float
    total: float
    unit: str
    stage: str

    def __new__(cls, done: float, total: float, unit: str = "steps", stage: str = ""):
        total = max(float(total), 0.0)
        done = min(max(float(done), 0.0), total) if total > 0 else max(float(done), 0.0)
        obj = super().__new__(cls, done / total if total > 0 else 0.0)
        obj.done, obj.total, obj.unit, obj.stage = done, total, str(unit), str(stage)
        return obj

    @classmethod
    def of_fraction(cls, fraction: float, stage: str = "") -> "Progress":
        """A bare fraction as progress (done = fraction of total 1, no unit), for loops that
        only know a fraction."""
        f = min(max(float(fraction), 0.0), 1.0) if math.isfinite(fraction) else 0.0
        return cls(f, 1.0, "", stage)

    @property
    def fraction(self) -> float:
        return float(self)

    def counts(self) -> str:
        """'12 of 128 sequences' (or '42% done' for a bare fraction)."""
        if not self.unit:
            return f"{self.fraction:.0%} done"
        return f"{_count(self.done)} of {_count(self.total)} {self.unit}"

    def describe(self, seconds_left: float | None = None) -> str:
        """'stage: 12 of 128 sequences · ~4 s left' (no time part when unknown or done)."""
        text = f"{self.stage}: {self.counts()}" if self.stage else self.counts()
        if seconds_left is not None and self.fraction < 1:
            text += f" · {left_text(seconds_left)}"
        return text

    def __repr__(self) -> str:
        return f"Progress({self.done!r}, {self.total!r}, {self.unit!r}, {self.stage!r})"


ProgressFn = Callable[[Progress], None]


def _count(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:,.1f}"


def report(progress: Callable | None, done: float, total: float, unit: str = "steps",
           stage: str = "") -> None:
    """Call `progress(Progress(done, total, unit, stage))` when a callback is given. The
    callback may raise `Cancelled` (or any exception): it propagates to the caller."""
    if progress is not None:
        progress(Progress(done, total, unit, stage))


def as_progress(p: float, stage: str = "") -> Progress:
    """`p` itself when it is a Progress, else the bare fraction `p` as one."""
    return p if isinstance(p, Progress) else Progress.of_fraction(float(p), stage)


def time_left(elapsed: float, done: float, total: float) -> float | None:
    """Seconds left by linear extrapolation of the average rate: elapsed·(total − done)/done.
    None before any unit is done (no rate yet) or for a negative elapsed time; 0 when done."""
    if done <= 0 or elapsed < 0 or not math.isfinite(elapsed):
        return None
    return max(0.0, elapsed * (total - done) / done)


def format_seconds(s: float) -> str:
    """'4 s', '2 min 5 s', '1 h 3 min' (rounded up to the second; under 1 s: '<1 s')."""
    if s < 1:
        return "<1 s"
    s = int(math.ceil(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(s, 3600)
    return f"{h} h {r // 60} min" if r >= 60 else f"{h} h"


def left_text(seconds_left: float) -> str:
    """'~4 s left', '<1 s left'."""
    text = format_seconds(seconds_left)
    return f"{text} left" if text.startswith("<") else f"~{text} left"


class Eta:
    """Time left for the current stage (module docstring): `update(p)` returns seconds left or
    None. `clock` (seconds, monotonic) is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.t0 = clock()
        self.stage: str | None = None
        self.last_done = 0.0
        self.last_t = self.t0

    def update(self, p: float) -> float | None:
        p = as_progress(p)
        now = self.clock()
        if self.stage is None:
            self.stage = p.stage
        elif p.stage != self.stage or p.done < self.last_done:
            # a new stage starts where the previous one last reported
            self.stage, self.t0 = p.stage, self.last_t
        self.last_done, self.last_t = p.done, now
        return time_left(now - self.t0, p.done, p.total)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0
