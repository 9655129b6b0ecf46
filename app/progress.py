"""A long step on a page: a progress bar "n of N units · ~T s left" with a Cancel button, whose
callback (an `estimators.progress` callback) is the step's cancellation point.

    from app.progress import run_step, CANCELLED
    out = run_step("Measuring the SAE", key, lambda progress: f(..., progress=progress),
                   lock_held=True)
    if out is CANCELLED:
        ...  # one "cancelled" line is already shown; the page keeps its previous state

How cancelling works: the library calls the callback after each batch; the callback updates
the bar (an `st.*` call). A click on Cancel (or any widget, or leaving the page) asks Streamlit
to rerun, and Streamlit stops the running script at its next `st.*` call — inside the
callback, so the step stops after the batch in progress, not after the whole step. The
exception unwinds the loops (nothing half-computed is cached: `estimators.progress`). Cancel's
on_click marks the step cancelled for the rerun, which shows one "cancelled" line instead of
starting it again; `auto=True` steps (started by the page itself) stay cancelled, with a
"Run again" button, until their inputs (the `key`) change.

The other sessions: with `lock_held=True` the caller holds `store.model_lock()` and the callback
releases it for a moment after every batch (`store.yield_model_lock`), so another session's
click on the same model waits for one batch, not for the whole step.

Time left comes from `estimators.progress.Eta` (average rate of the current stage so far,
extrapolated linearly to the units left). The bar is redrawn at most every 0.25 s.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

from estimators.progress import Eta, Progress, as_progress

CANCELLED = object()  # run_step's result for a step that was cancelled
REDRAW_S = 0.25
_FLAG = "_progress_cancelled:"


def _mark_cancelled(key: str) -> None:
    st.session_state[_FLAG + key] = True


def _clear(key: str) -> None:
    st.session_state.pop(_FLAG + key, None)


def was_cancelled(key: str) -> bool:
    return bool(st.session_state.get(_FLAG + key))


class StepProgress:
    """The bar and Cancel button of one running step (a context manager); calling it with a
    `Progress` (or a bare fraction) redraws the bar and is where the step can stop."""

    def __init__(self, label: str, key: str, where=None, lock_held: bool = False,
                 lock_source: str | None = None, share: tuple[float, float] = (0.0, 1.0)):
        self.label, self.key = label, key
        self.where = where if where is not None else st
        self.lock_held, self.lock_source = lock_held, lock_source
        self.share = share
        self.eta = Eta()
        self._last = 0.0
        self._stage: str | None = None

    def __enter__(self) -> "StepProgress":
        self.slot = self.where.empty()
        self.box = self.slot.container()
        cols = self.box.columns([6, 1], vertical_alignment="center")
        self.bar = cols[0].progress(0.0, text=f"{self.label}…")
        cols[1].button("Cancel", key=f"_progress_cancel_{self.key}", on_click=_mark_cancelled,
                       args=(self.key,), help="Stops this step after the batch in progress; "
                                              "the page keeps its previous state.")
        return self

    def __exit__(self, *exc) -> bool:
        if exc[0] is None or isinstance(exc[1], Exception):
            self.slot.empty()  # done (or failed with a message the caller shows): no bar left
        return False  # Streamlit's stop/rerun and every error propagate

    def text(self, p: Progress, seconds_left: float | None) -> str:
        return f"{self.label} — {p.describe(seconds_left)}"

    def __call__(self, p: float) -> None:
        self.update(p, yield_lock=self.lock_held)

    def update(self, p: float, label: str | None = None, yield_lock: bool = False,
               share: tuple[float, float] | None = None) -> None:
        """Redraw with `p` (a Progress or a bare fraction): the bar at lo + (hi − lo)·p of
        `share` (default the step's), the text "<label> — n of N units · ~T left". With
        yield_lock the caller holds the model lock, released here for a moment."""
        p = as_progress(p)
        if yield_lock:
            from app import store
            store.yield_model_lock(self.lock_source)  # other sessions' clicks run now
        left = self.eta.update(p)
        now = time.monotonic()
        if label is not None and label != self.label:
            self.label, self._last = label, 0.0
        if now - self._last < REDRAW_S and p.stage == self._stage and p < 1:
            return
        self._last, self._stage = now, p.stage
        lo, hi = share or self.share
        self.bar.progress(min(1.0, max(0.0, lo + (hi - lo) * float(p))),
                          text=self.text(p, left))


def lock_yielder(every_s: float = 0.1, source: str | None = None) -> Callable:
    """A progress callback with no bar, for work that holds `store.model_lock()` (inside a
    Streamlit cache, or a step too short for a bar): it gives the lock up for a moment
    (`store.yield_model_lock`) when `every_s` seconds have passed since it was taken or last
    given up, so a quick step pays nothing and other sessions wait at most about every_s plus
    one batch."""
    last = [time.monotonic()]

    def give_up(_progress) -> None:
        if time.monotonic() - last[0] >= every_s:
            from app import store
            store.yield_model_lock(source)
            last[0] = time.monotonic()
    return give_up


def run_step(label: str, key: str, fn: Callable[[StepProgress], Any], *, where=None,
             lock_held: bool = False, lock_source: str | None = None, auto: bool = True
             ) -> Any:
    """`fn(progress)` with a bar and Cancel (module docstring); its result, or CANCELLED.

    key: the step and its inputs (a new key starts a new step); auto: the page starts the step
    by itself (the cancelled state then stays, with a "Run again" button), else it was started
    by a click (the "cancelled" line shows once). Errors raised by `fn` propagate."""
    where = where if where is not None else st
    if was_cancelled(key):
        show_cancelled(label, key, where, auto)
        return CANCELLED
    with StepProgress(label, key, where, lock_held, lock_source) as progress:
        return fn(progress)


def show_cancelled(label: str, key: str, where=None, auto: bool = True) -> None:
    """The one line a cancelled step leaves ("<label>: cancelled"), and for an `auto` step a
    button that runs it again; a clicked step's flag is cleared here (shown once)."""
    where = where if where is not None else st
    if auto:
        cols = where.columns([6, 1], vertical_alignment="center")
        cols[0].info(f"{label}: cancelled.")
        cols[1].button("Run again", key=f"_progress_again_{key}", on_click=_clear, args=(key,))
    else:
        where.info(f"{label}: cancelled.")
        _clear(key)
