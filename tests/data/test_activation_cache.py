"""The shared activation cache: exactly run_with_cache's tensors, computed once (counted in
forward passes), kept in memory and on disk, and keyed by model, data, hook and dtype."""

from __future__ import annotations

import pytest
import torch

from estimators import activation_cache as ac
from estimators.data import parse_spec

from .conftest import tiny_model

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post"]


@pytest.fixture
def data(loaded, corpus):
    return parse_spec(f"text:{corpus},len=8,n=20").load(loaded)


def test_equals_run_with_cache_and_hits_the_second_time(loaded, data):
    model = loaded.model
    acts = ac.activations(model, data, HOOKS, batch_size=64)
    assert ac.stats().forward_passes == 1 and ac.stats().sequences == len(data)
    with torch.no_grad():
        _, cache = model.run_with_cache(data.tokens)
    for h in HOOKS:
        assert acts[h].device.type == "cpu" and torch.equal(acts[h], cache[h])
    again = ac.activations(model, data, HOOKS)
    assert ac.stats().forward_passes == 1 and ac.stats().memory_hits == len(HOOKS)
    assert all(again[h] is acts[h] for h in HOOKS)
    # a new process (empty memory) reads the disk; a new hook alone is computed
    ac.clear_memory()
    more = ac.activations(model, data, HOOKS + ["ln_final.hook_normalized"])
    st = ac.stats()
    assert st.forward_passes == 2 and st.disk_hits == len(HOOKS)
    assert all(torch.equal(more[h], acts[h]) for h in HOOKS)
    torch.testing.assert_close(more["ln_final.hook_normalized"], cache["ln_final.hook_normalized"])


def test_small_batches_and_the_memory_budget(loaded, data):
    acts = ac.activations(loaded.model, data, HOOKS[:1], batch_size=3, use_disk=False)
    assert ac.stats().forward_passes == 7  # ceil(20 / 3)
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(data.tokens)
    torch.testing.assert_close(acts[HOOKS[0]], cache[HOOKS[0]], rtol=0, atol=1e-6)
    # the budget bounds the batch (the docstring's estimate: per token 8·16 + 2·32 + 3·4·8
    # + 1·32 = 320 floats, so 320·8·4 bytes per sequence)
    per_seq = 320 * 8 * 4
    assert ac.batch_size_for(loaded.model, 8, 1, 1, memory_budget=3 * per_seq) == 3
    assert ac.batch_size_for(loaded.model, 8, 1, 1, memory_budget=1) == 1
    ac.reset_stats()
    ac.activations(loaded.model, data, HOOKS[1:2], memory_budget=5 * per_seq, use_disk=False)
    assert ac.stats().forward_passes == 4  # 20 sequences, 5 a batch
    assert ac.stop_layer(loaded.model, ["blocks.0.hook_resid_post"]) == 1
    assert ac.stop_layer(loaded.model, ["hook_embed"]) == 0
    assert ac.stop_layer(loaded.model, ["blocks.1.hook_resid_post"]) is None  # last block
    assert ac.stop_layer(loaded.model, ["ln_final.hook_normalized"]) is None


def test_keys_differ_when_anything_differs(loaded, data, corpus):
    from estimators.conformance import model_fingerprint

    fp = model_fingerprint(loaded.model)
    base = ac.entry_key(fp, data.fingerprint, HOOKS[0], torch.float32)
    other_data = parse_spec(f"text:{corpus},len=8,n=20,seed=1").load(loaded)
    other_model = tiny_model(seed=1)
    keys = {base,
            ac.entry_key(fp, data.fingerprint, HOOKS[1], torch.float32),
            ac.entry_key(fp, data.fingerprint, HOOKS[0], torch.float64),
            ac.entry_key(fp, parse_spec(f"text:{corpus},len=4,n=20").load(loaded).fingerprint,
                         HOOKS[0], torch.float32),
            ac.entry_key(model_fingerprint(other_model), data.fingerprint, HOOKS[0],
                         torch.float32)}
    assert len(keys) == 5
    # equal tokens from a different spec share the entry
    assert parse_spec(f"text:{corpus},len=8,n=20,seed=0").load(loaded).fingerprint == \
        data.fingerprint
    # a different model on the same data is computed afresh, not served from the cache
    ac.activations(loaded.model, data, HOOKS[:1])
    ac.activations(other_model, data, HOOKS[:1])
    assert ac.stats().forward_passes == 2
    if other_data.fingerprint != data.fingerprint:
        ac.activations(loaded.model, other_data, HOOKS[:1])
        assert ac.stats().forward_passes == 3
    # another dtype is its own entry, in that dtype
    d64 = ac.activations(loaded.model, data, HOOKS[:1], dtype=torch.float64)[HOOKS[0]]
    assert d64.dtype == torch.float64


def test_corrupt_disk_entry_is_recomputed(loaded, data):
    ac.activations(loaded.model, data, HOOKS[:1])
    [f] = list(ac.cache_dir().glob("*.safetensors"))
    f.write_bytes(b"garbage")
    ac.clear_memory()
    acts = ac.activations(loaded.model, data, HOOKS[:1])
    assert ac.stats().forward_passes == 2 and acts[HOOKS[0]].shape == (20, 8, 16)


def test_unknown_hook_is_a_clear_error(loaded, data):
    with pytest.raises(ValueError, match="no hook point 'blocks.9.hook_resid_post'"):
        ac.activations(loaded.model, data, ["blocks.9.hook_resid_post"])
