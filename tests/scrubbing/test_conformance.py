"""The scrubbing engine's conformance check: the grid of configs, exactness, and that it catches
a wrong treeified pass (it is a numeric check, not a list)."""

from __future__ import annotations

import pytest
import torch

from estimators import conformance
from estimators.scrubbing import PathPartition, ScrubData, Scrubber
from tests.conformance_grid import (DTYPES, OPTIONS, SCRUBBING_REFUSES, grid_model,
                                    output_vocab, tl_runs)

GRID = [(o, d) for o in OPTIONS for d in DTYPES]


@pytest.mark.parametrize("option,dtype", GRID, ids=[f"{o}-{d}" for o, d in GRID])
def test_grid_check_passes_or_refuses_in_one_line_and_all_important_is_exact(option, dtype):
    model = grid_model(option, dtype)
    if not tl_runs(model):
        pytest.skip("TransformerLens itself cannot run this option in this dtype on CPU")
    v = conformance.verdict(model, "scrubbing")
    if not v.ok:
        assert v.reason and "\n" not in v.reason
        with pytest.raises(conformance.EngineUnsupported, match="^scrubbing: not supported"):
            conformance.require(model, "scrubbing")
        return
    assert v.max_abs_error <= v.tolerance
    # all-important scrubbing reproduces the model's own loss, example by example
    g = torch.Generator().manual_seed(5)
    seqs = torch.randint(0, output_vocab(model), (6, 6), generator=g).tolist()
    data = ScrubData.from_sequences(seqs, model.cfg.d_vocab, model.cfg.n_ctx,
                                    d_vocab_out=output_vocab(model))
    [r] = Scrubber(model, data, seed=0).evaluate([PathPartition(important=("*",))])
    tol = conformance.tolerance_for(DTYPES[dtype])
    assert (r.per_example_scrubbed - r.per_example_original).abs().max() <= tol
    assert abs(r.loss_scrubbed - r.loss_original) <= tol


def test_supported_options_pass_and_the_others_are_refused_naming_the_field():
    """Every option issue #9 asks to support passes in float32, float16 and bfloat16; the
    others are refused in one line that names the responsible config field."""
    for option, dtype in GRID:
        model = grid_model(option, dtype)
        v = conformance.verdict(model, "scrubbing")
        if not tl_runs(model):
            assert not v.ok and "could not run" in v.reason
            continue
        if option in SCRUBBING_REFUSES:
            assert not v.ok and SCRUBBING_REFUSES[option] in v.reason, (option, dtype)
        else:
            assert v.ok, (option, dtype, v.reason)


@pytest.mark.parametrize("broken", ["rotary", "soft cap", "mlp norm"])
def test_check_catches_a_wrong_treeified_pass(monkeypatch, broken):
    """Break one piece of the treeified pass: the numeric check refuses, naming the field."""
    import estimators.scrubbing.treeify as T
    from transformer_lens.utilities import activation_functions

    option = {"rotary": "rotary", "soft cap": "output_logits_soft_cap=2",
              "mlp norm": "parallel_attn_mlp"}[broken]
    model = grid_model(option, "float32")
    if broken == "rotary":
        real = T._projections

        def no_rotary(model_, attn, spec, x, sf, as_t):
            model_.cfg.positional_embedding_type = "standard"
            try:
                return real(model_, attn, spec, x, sf, as_t)
            finally:
                model_.cfg.positional_embedding_type = "rotary"
        monkeypatch.setattr(T, "_projections", no_rotary)
        field = "positional_embedding_type"
    elif broken == "soft cap":
        monkeypatch.setattr(activation_functions, "apply_softcap", lambda x, cap: x)
        field = "output_logits_soft_cap"
    else:
        real_norm = T._norm

        def skip_mlp_norm(module, x):  # an MLP that reads an un-normalised stream
            return x if module is model.blocks[0].ln2 else real_norm(module, x)
        monkeypatch.setattr(T, "_norm", skip_mlp_norm)
        field = "blocks.0.hook_mlp_out"  # the first node that differs
    monkeypatch.setattr(conformance, "_VERDICTS", {})
    v = conformance.verdict(model, "scrubbing")
    assert not v.ok, v
    assert v.reason.count("\n") == 0 and field in v.reason
    assert v.max_abs_error > v.tolerance


def test_scrubber_refuses_a_model_that_fails(monkeypatch):
    from estimators.conformance import EngineVerdict

    model = grid_model("rotary", "float32")
    monkeypatch.setattr(conformance, "_VERDICTS", {
        (conformance.model_fingerprint(model), "scrubbing"):
            EngineVerdict("scrubbing", False, reason="differs (test)")})
    seqs = [[1, 2, 3], [3, 2, 1]]
    with pytest.raises(conformance.EngineUnsupported, match="scrubbing: not supported"):
        Scrubber(model, ScrubData.from_sequences(seqs, 10, 6))
