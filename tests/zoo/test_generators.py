"""The zoo's data generators: deterministic given a seed, and their labels are right.

Labels are re-derived here by independent, plain-Python checks (not the generator's own
vectorised code), so a bug in the generator cannot hide behind itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from estimators import zoo
from estimators.zoo.parens import CLOSE, OPEN, PAD

ALL = zoo.names()


def test_names_and_default():
    assert zoo.names() == ["induction", "maxk", "parens", "charlm"]
    assert zoo.DEFAULT_MODEL == "induction"


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError) as err:
        zoo.get("gpt7")
    assert "induction" in str(err.value) and "charlm" in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_sample_is_deterministic(name):
    entry = zoo.get(name)
    a, b, c = entry.sample(64, seed=3), entry.sample(64, seed=3), entry.sample(64, seed=4)
    for field in ("tokens", "labels", "targets", "loss_mask"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y), field
    assert not torch.equal(a.tokens, c.tokens)
    cfg = entry.model_config()
    assert a.tokens.dtype == torch.long and a.tokens.shape == (64, cfg.n_ctx)
    assert int(a.tokens.min()) >= 0 and int(a.tokens.max()) < cfg.d_vocab
    if a.labels is not None:
        assert a.labels.shape == (64,) and int(a.labels.max()) < cfg.d_vocab_out
    if a.targets is not None:
        assert a.targets.shape == a.tokens.shape and a.loss_mask.dtype == torch.bool
        assert a.loss_mask.any(-1).all()


@pytest.mark.parametrize("name", ALL)
def test_training_seeds_are_disjoint_from_eval(name):
    entry = zoo.get(name)
    assert not torch.equal(entry.train_batch(16, 0).tokens, entry.sample(16, seed=0).tokens)


def test_maxk_labels_are_the_max():
    b = zoo.get("maxk").sample(500, seed=1)
    for row, label in zip(b.tokens.tolist(), b.labels.tolist()):
        assert label == max(row)


def _balanced(chars: list[int]) -> bool:
    depth = 0
    seen = False
    for c in chars:
        if c == PAD:
            continue
        seen = True
        depth += 1 if c == OPEN else -1
        if depth < 0:
            return False
    return seen and depth == 0


def test_parens_labels_match_direct_check_and_mix_is_balanced_ish():
    entry = zoo.get("parens")
    b = entry.sample(3000, seed=2)
    assert (b.tokens[:, 0] == 0).all()  # BOS/CLS
    for row, label in zip(b.tokens[:, 1:].tolist(), b.labels.tolist()):
        assert label == int(_balanced(row))
        # PAD only on the right
        s = "".join("p" if c == PAD else "x" for c in row)
        assert "px" not in s
    frac = b.labels.float().mean().item()
    assert 0.35 < frac < 0.65
    # hard negatives exist: equal counts but unbalanced
    chars = b.tokens[:, 1:]
    equal = ((chars == OPEN).sum(-1) == (chars == CLOSE).sum(-1))
    assert (equal & (b.labels == 0)).sum() > 300


def test_parens_encode_decode():
    entry = zoo.get("parens")
    ids = entry.encode("(()")
    assert ids.shape == (entry.model_config().n_ctx,)
    assert entry.decode(ids) == "(()"


def test_induction_targets_follow_earlier_occurrence():
    b = zoo.get("induction").sample(200, seed=5)
    for toks, tgts, mask in zip(b.tokens.tolist(), b.targets.tolist(), b.loss_mask.tolist()):
        assert toks[0] == 0
        assert tgts[:-1] == toks[1:]
        for p, counted in enumerate(mask):
            if counted:
                earlier = [q for q in range(1, p) if toks[q] == toks[p]]
                assert earlier, "masked prediction without an earlier occurrence"
                assert tgts[p] == toks[earlier[-1] + 1]
        assert sum(mask) >= 32 - 16  # the repeated part is at least half the context


def test_charlm_text_round_trip_and_windows():
    entry = zoo.get("charlm")
    text = "def f(x):\n    return x + 1\n"
    ids = entry.encode(text)
    assert ids.dtype == torch.long and entry.decode(ids) == text
    b = entry.sample(8, seed=0)
    assert torch.equal(b.tokens[:, 1:], b.targets[:, :-1]) and b.loss_mask.all()
    assert entry.encode("\t")[0] == len(entry.token_labels()) - 1  # unknown symbol


@pytest.mark.parametrize("name", ALL)
def test_token_labels_and_input_distributions(name):
    entry = zoo.get(name)
    cfg = entry.model_config()
    labels = entry.token_labels()
    assert len(labels) == cfg.d_vocab and all(isinstance(s, str) and s for s in labels)
    dists = entry.input_distributions()
    assert dists
    for dist_name, positions in dists.items():
        assert 1 <= len(positions) <= cfg.n_ctx, dist_name
        for d in positions:
            assert all(0 <= int(k) < cfg.d_vocab for k in d)
            assert all(v >= 0 for v in d.values())
            assert math.isclose(sum(d.values()), 1.0, abs_tol=1e-9), dist_name


def test_charlm_offers_the_documented_distributions():
    dists = zoo.get("charlm").input_distributions()
    assert {"hex", "words", "code-then-delimiter"} <= set(dists)
    entry = zoo.get("charlm")
    last = dists["code-then-delimiter"][-1]
    assert last == {int(entry.encode("(")[0]): 1.0}
    hex_ids = {int(i) for i in entry.encode("0123456789abcdef")}
    assert all(set(d) == hex_ids for d in dists["hex"])
