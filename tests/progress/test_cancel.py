"""Cancelling a long step: `Cancelled` raised by the progress callback stops the activation
cache's fill after the batch in progress and leaves no entry (memory, disk, temporary file);
the next run recomputes exactly run_with_cache's values. The page's lock is given up after
every batch, so another session's forward pass waits for one batch, not the whole step."""

from __future__ import annotations

import threading

import pytest
import torch

from estimators import activation_cache as ac
from estimators.progress import Cancelled, Progress
from estimators.sae_stats import sae_quality_from_activations

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]


def test_cancel_stops_the_fill_and_leaves_no_cache_entry(model, tokens):
    seen: list[Progress] = []

    def cancel_after_two(p):
        seen.append(p)
        if len(seen) == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        ac.activations(model, tokens, HOOKS, batch_size=4, progress=cancel_after_two)
    assert ac.stats().forward_passes == 2  # stopped after the batch in progress
    assert [(p.done, p.total, p.unit, p.stage) for p in seen] == [
        (4, 24, "sequences", "activations"), (8, 24, "sequences", "activations")]
    folder = ac.cache_dir()
    assert not folder.exists() or not any(folder.iterdir())  # no entry, no temporary file

    ac.reset_stats()
    again = ac.activations(model, tokens, HOOKS, batch_size=4)
    assert ac.stats().misses == len(HOOKS) and ac.stats().forward_passes == 6  # recomputed
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    for h in HOOKS:
        torch.testing.assert_close(again[h], cache[h], rtol=0, atol=1e-6)
    assert sorted(p.suffix for p in folder.iterdir()) == [".safetensors"] * len(HOOKS)


def test_sae_statistics_report_positions_and_stop_on_cancel():
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=32, metadata=SAEMetadata(
        hook_name="blocks.0.hook_resid_post")))
    x = torch.randn(6, 8, 16)
    seen = []
    out = sae_quality_from_activations(sae, x, memory_budget=8 * 32 * 3 * 10,
                                       progress=seen.append)
    assert out["n_activations"] == 48 and [p.done for p in seen] == [10, 20, 30, 40, 48]
    assert {(p.total, p.unit) for p in seen} == {(48, "positions")}

    def stop(p):
        raise Cancelled()
    with pytest.raises(Cancelled):
        sae_quality_from_activations(sae, x, memory_budget=8 * 32 * 3 * 10, progress=stop)


@pytest.mark.parametrize("kind", ["bar", "no bar"])
def test_the_model_lock_is_given_up_after_every_batch(model, tokens, kind):
    """A page's long step holds `store.model_lock()` and its progress callback gives it up
    after each batch — `store.yield_model_lock()` from the bar (app.progress, lock_held=True),
    or `app.progress.lock_yielder` where no bar is drawn (inside a Streamlit cache): another
    session waiting for the same model gets the lock while the step still has batches to go."""
    from app import store
    from app.progress import lock_yielder

    source = f"progress-test-model-{kind}"
    give_up = (lambda: store.yield_model_lock(source)) if kind == "bar" else (
        lambda f=lock_yielder(0.0, source): f(None))
    lock = store.model_lock(source)
    started, done_when_other_ran = threading.Event(), []
    total = int(tokens.shape[0])
    batches = []

    def step_callback(p):
        batches.append(p.done)
        started.set()
        give_up()

    def other_session():
        started.wait()
        with lock:  # another session's click: one forward pass on the same model
            done_when_other_ran.append(batches[-1])

    other = threading.Thread(target=other_session)
    other.start()
    with lock:
        ac.activations(model, tokens, HOOKS, batch_size=1, use_disk=False,
                       progress=step_callback)
    other.join()
    assert len(batches) == total
    assert done_when_other_ran and done_when_other_ran[0] < total  # not after the whole step
