import itertools
import json

import pytest
import torch

from estimators.tailrisk import (Argmax, BehaviourError, DirectionThreshold, LogitThreshold,
                                 SampledProbability, ground_truth)
from estimators.tailrisk.distributions import from_table
from estimators.tailrisk.ground_truth import cache_dir, enumerate_inputs, exact

from .conftest import tiny_model


@pytest.fixture(scope="module")
def small():
    model = tiny_model(vocab=5, seed=0, n_ctx=4)
    dist = from_table([{0: 0.1, 1: 0.2, 2: 0.7}, {3: 1.0}, {0: 0.25, 2: 0.25, 4: 0.5}], 5, "s")
    return model, dist


def brute_force(model, dist, per_input):
    """One input at a time, straight from the model's logits (no shared code paths)."""
    total = 0.0
    p = dist.probs
    supports = [range(5)] * dist.length
    for x in itertools.product(*supports):
        w = float(torch.prod(torch.stack([p[i, v] for i, v in enumerate(x)])))
        if w == 0:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([x]))[0, -1].double()
        total = total + w * per_input(logits)
    return total


def test_enumeration_order_and_weights(small):
    _, dist = small
    tokens, logw = enumerate_inputs(dist, 0, dist.n_inputs())
    assert dist.n_inputs() == 9 and len({tuple(t) for t in tokens.tolist()}) == 9
    assert float(logw.exp().sum()) == pytest.approx(1.0)


def test_exact_matches_brute_force(small):
    model, dist = small
    argmax = exact(model, dist, Argmax(0), chunk=4)  # chunks smaller than the support
    bf = brute_force(model, dist, lambda l: torch.nn.functional.one_hot(l.argmax(), 5).double())
    assert torch.allclose(argmax, bf, atol=1e-12)
    soft = exact(model, dist, SampledProbability(0, temperature=0.5), chunk=4)
    bf = brute_force(model, dist, lambda l: torch.softmax(l / 0.5, -1))
    assert torch.allclose(soft, bf, atol=1e-9)
    thr = float(exact(model, dist, LogitThreshold(2, threshold=0.1), chunk=4))
    assert thr == pytest.approx(float(brute_force(model, dist, lambda l: float(l[2] > 0.1))))


def test_ground_truth_cached_and_sampled(small):
    model, dist = small
    g1 = ground_truth(model, dist, Argmax(3))
    g2 = ground_truth(model, dist, Argmax(3))
    assert g1.method == "exact" and not g1.cached and g2.cached
    assert g1.probability == g2.probability and g1.interval is None
    files = list(cache_dir().glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["method"] == "exact"
    # other targets reuse the same cached enumeration
    assert ground_truth(model, dist, Argmax(1)).cached
    s = ground_truth(model, dist, Argmax(3), max_exact=4, n_samples=200_000, seed=1)
    assert s.method == "sampled" and s.n_inputs == 200_000
    lo, hi = s.interval
    assert lo <= g1.probability <= hi
    # a corrupt cache entry is recomputed, not trusted
    for f in cache_dir().glob("*.json"):
        f.write_text("{not json")
    assert ground_truth(model, dist, Argmax(3)).probability == g1.probability


def test_direction_behaviour_truth(small):
    model, dist = small
    hook = "blocks.0.hook_resid_post"
    w = torch.zeros(32)
    w[0] = 1.0
    b = DirectionThreshold(hook=hook, direction=w.tolist(), threshold=0.0)
    truth = ground_truth(model, dist, b).probability
    total = 0.0
    tokens, logw = enumerate_inputs(dist, 0, dist.n_inputs())
    _, cache = model.run_with_cache(tokens, names_filter=[hook])
    total = float((logw.exp() * (cache[hook][:, -1, 0] > 0).double()).sum())
    assert truth == pytest.approx(total)


def test_target_outside_vocabulary(small):
    model, dist = small
    with pytest.raises(BehaviourError, match="outside the output vocabulary"):
        ground_truth(model, dist, Argmax(7))


def test_text_target_on_a_model_without_tokenizer_says_to_give_an_id(small):
    """A folder model with no tokenizer: a token-text target is refused with what to give
    instead (an id in range), not "give a token string"."""
    from estimators.tailrisk.behaviours import parse_target

    model, _ = small
    V = model.cfg.d_vocab_out
    assert parse_target("id:1", model) == 1 and parse_target("1", model) == 1
    for spec in ("q", "id:-1", ""):
        with pytest.raises(BehaviourError, match=f"no tokenizer: give the target as an id, "
                                                  f"id:0..id:{V - 1}"):
            parse_target(spec, model)


def test_cache_write_interrupted_before_rename_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C between writing the temporary and renaming it: neither a half entry nor a stray
    temporary is left in the cache folder; an uninterrupted write leaves exactly the entry."""
    from estimators.tailrisk.ground_truth import _read_cache, _write_cache

    path = tmp_path / "gt" / "entry.json"

    def interrupted(self, target):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(type(path), "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _write_cache(path, {"version": 1, "p": 0.5})
    assert list((tmp_path / "gt").iterdir()) == []
    _write_cache(path, {"version": 1, "p": 0.5})
    assert [f.name for f in (tmp_path / "gt").iterdir()] == ["entry.json"]
    assert _read_cache(path) is None or _read_cache(path)["p"] == 0.5
