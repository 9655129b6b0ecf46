"""The activation engine's conformance check (estimators/activation/conformance.py) and the
exact invariant it rests on: a point-mass input (identical sequences) propagates with zero error
and zero covariance at every site, on a grid of small random HookedTransformers covering the
config options that change the forward pass, in float32, float16 and bfloat16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators import conformance
from estimators.activation import CovarianceMask, Propagator, transformer_chain
from estimators.activation import chain as chain_mod
from estimators.cli import main

CASES = Path(__file__).resolve().parents[2] / ".." / "shared" / "cases"
SOFTCAP = CASES / "softcap-logits"

BASE = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=32, n_ctx=8, d_vocab=20,
            act_fn="gelu", seed=0)
# option name → HookedTransformerConfig fields (the README's support table lists these rows)
OPTIONS = {
    "standard (LN, learned positions)": {},
    "output_logits_soft_cap": dict(output_logits_soft_cap=2.0),
    "attn_scores_soft_cap": dict(attn_scores_soft_cap=3.0),
    "d_vocab_out < d_vocab": dict(d_vocab_out=13),
    "normalization_type=None": dict(normalization_type=None),
    "normalization_type=RMS": dict(normalization_type="RMS"),
    "normalization_type=LNPre": dict(normalization_type="LNPre"),
    "rotary": dict(positional_embedding_type="rotary", rotary_dim=4),
    "shortformer": dict(positional_embedding_type="shortformer"),
    "alibi": dict(positional_embedding_type="alibi"),
    "grouped-query attention": dict(n_key_value_heads=2),
    "parallel_attn_mlp": dict(parallel_attn_mlp=True),
    "use_qk_norm": dict(use_qk_norm=True, normalization_type="RMS"),
    "bidirectional attention": dict(attention_dir="bidirectional"),
    "gated MLP (SiLU)": dict(gated_mlp=True, act_fn="silu"),
    "attn_only": dict(attn_only=True),
    "local attention": dict(use_local_attn=True, attn_types=["local", "global"], window_size=3),
    "norm before and after": dict(use_normalization_before_and_after=True,
                                  normalization_type="RMS"),
    "mixture of experts": dict(num_experts=4, experts_per_token=2, gated_mlp=True,
                               act_fn="silu"),
    "SoLU": dict(act_fn="solu_ln"),
    "post_embedding_ln": dict(post_embedding_ln=True),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_model(options: dict, dtype: torch.dtype) -> HookedTransformer:
    """A tiny HookedTransformer with weights ~ N(0, 0.3²) (large enough that every component
    matters), in `dtype`."""
    cfg = HookedTransformerConfig(**{**BASE, **options, "dtype": dtype})
    model = HookedTransformer(cfg, move_to_device=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.copy_((0.3 * torch.randn(p.shape, generator=g)).to(p.dtype))
    model.to(dtype, print_details=False)  # TL builds MoE experts in float32 whatever cfg.dtype
    return model.eval()


def point_mass_tokens(model, n: int = 4, ctx: int = 6, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(0, model.cfg.d_vocab, (1, min(ctx, model.cfg.n_ctx)), generator=g)
    return row.repeat(n, 1)


def assert_point_mass_exact(model, tokens: torch.Tensor, samples: int = 8) -> None:
    """Full mask on a point mass: at every site the propagated mean is the real activation and
    the covariance is zero, within conformance.tolerance_for(the model's dtype)."""
    L = model.cfg.n_layers
    sites = [f"blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(L)]
    if not model.cfg.attn_only and "blocks.0.mlp.hook_post" in model.hook_dict:
        sites.append("blocks.0.mlp.hook_post")
    sites.append("logits@-1")
    chain = transformer_chain(model, tokens, sites=sites, samples=samples, seed=0)
    res = Propagator(chain, CovarianceMask.preset("full", chain.layouts)).run()
    for s in chain.sites:
        real = chain.empirical[s.name][0]
        tol = conformance.tolerance_for(model.cfg.dtype, float(real.abs().max()))
        est = res.sites[s.name]
        assert float((est.mean - real).abs().max()) <= tol, s.name
        assert float(est.cov.abs().max()) <= tol, s.name
        assert torch.equal(chain.empirical[s.name], real.expand_as(chain.empirical[s.name]))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("option", list(OPTIONS))
def test_check_passes_or_refuses_in_one_line_and_point_mass_is_exact(option, dtype):
    model = random_model(OPTIONS[option], dtype)
    v = conformance.verdict(model, "activation")
    if not v.ok:
        line = v.line()
        assert "\n" not in line and line.startswith("activation: not supported")
        with pytest.raises(conformance.EngineUnsupported):
            transformer_chain(model, point_mass_tokens(model))
        return
    assert v.max_abs_error <= v.tolerance
    assert_point_mass_exact(model, point_mass_tokens(model))


def test_model_whose_own_forward_fails_is_refused_in_one_line():
    """TransformerLens builds MoE experts in float32 whatever cfg.dtype: such a float16 model
    does not run at all, and the check says so instead of blaming the engine."""
    cfg = HookedTransformerConfig(**{**BASE, **OPTIONS["mixture of experts"],
                                     "dtype": torch.float16})
    model = HookedTransformer(cfg, move_to_device=False).eval()
    v = conformance.verdict(model, "activation")
    assert not v.ok and "own forward pass fails" in v.reason and "\n" not in v.line()


def test_check_runs_in_float64_on_small_float32_models():
    model = random_model({}, torch.float32)
    v = conformance.verdict(model, "activation")
    assert v.ok and v.dtype == "float64" and v.tolerance < 1e-8
    assert next(model.parameters()).dtype == torch.float32  # the copy, not the model
    assert model.cfg.dtype == torch.float32


def _pre_fix_readout(model, resid_final, units=None):
    """The logits readout before this check existed: ln_final + unembed, no soft cap."""
    ln = getattr(model, "ln_final", None)
    logits = model.unembed(ln(resid_final) if ln is not None else resid_final)
    return logits if units is None else logits[..., list(units)]


def test_check_catches_an_unfaithful_readout_and_names_the_field(monkeypatch):
    """Fault injection: with the old readout the softcap model must be refused, in one line
    naming the engine, the site and output_logits_soft_cap; a model without a cap passes."""
    monkeypatch.setattr(conformance, "_VERDICTS", {})
    monkeypatch.setattr(chain_mod, "read_logits", _pre_fix_readout)
    capped = random_model(dict(output_logits_soft_cap=2.0), torch.float32)
    v = conformance.verdict(capped, "activation")
    assert not v.ok and v.config_fields == ["output_logits_soft_cap"]
    assert "logits@-1" in v.reason and "\n" not in v.line()
    with pytest.raises(conformance.EngineUnsupported, match="activation: not supported.*soft_cap"):
        transformer_chain(capped, point_mass_tokens(capped))
    assert conformance.verdict(random_model({}, torch.float32), "activation").ok


def test_check_catches_blocks_run_without_the_shortformer_embedding(monkeypatch):
    """Fault injection: running the blocks one by one without the positional embedding a
    shortformer model's attention needs is refused, naming positional_embedding_type."""
    def bare_blocks(model, resid, blocks, extras):
        for l in blocks:
            resid = model.blocks[l](resid)
        return resid

    monkeypatch.setattr(conformance, "_VERDICTS", {})
    monkeypatch.setattr(chain_mod, "run_blocks", bare_blocks)
    model = random_model(dict(positional_embedding_type="shortformer"), torch.float32)
    v = conformance.verdict(model, "activation")
    assert not v.ok and "positional_embedding_type" in v.config_fields
    assert "blocks.0.hook_resid_post" in v.reason


def test_check_catches_a_transition_a_point_mass_cannot(monkeypatch):
    """Fault injection: a transition that collapses its samples to their mean propagates a
    point mass exactly; fed the real activations of distinct inputs it does not."""
    original = chain_mod.run_blocks

    def collapsing(model, resid, blocks, extras):
        return original(model, resid.mean(0, keepdim=True).expand_as(resid), blocks, extras)

    monkeypatch.setattr(conformance, "_VERDICTS", {})
    monkeypatch.setattr(chain_mod, "run_blocks", collapsing)
    model = random_model({}, torch.float32)
    v = conformance.verdict(model, "activation")
    assert not v.ok and "transition fed real activations" in v.reason, v.reason
    from estimators.activation.conformance import point_mass_errors
    rows = point_mass_errors(model)  # ...which a point mass alone would miss
    assert all(r["mean_error"] <= 1e-5 and r["cov_error"] == 0 for r in rows)


def test_softcap_case_point_mass_propagates_exactly(capsys):
    """../shared/cases/softcap-logits: `propagate --tokens tokens_same.json --mask full` was off
    by up to 1.09 at the logits; it must be exact at every site."""
    rc = main(["propagate", "--model", str(SOFTCAP / "model"), "--tokens",
               str(SOFTCAP / "tokens_same.json"), "--mask", "full", "--samples", "16", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for site in out["sites"]:
        assert site["mean_error"] <= 1e-6, site["name"]
    est = torch.tensor(out["output"]["estimate_mean"])
    emp = torch.tensor(out["output"]["empirical_mean"])
    assert float((est - emp).abs().max()) <= conformance.tolerance_for(torch.float32, 2.0)
    assert float(emp.abs().max()) <= 2.0  # the capped logits


def test_cli_refuses_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(conformance, "_VERDICTS", {})
    monkeypatch.setattr(chain_mod, "read_logits", _pre_fix_readout)
    rc = main(["propagate", "--model", str(SOFTCAP / "model"), "--tokens",
               str(SOFTCAP / "tokens_same.json"), "--mask", "full", "--samples", "4"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("error: activation: not supported") and "soft_cap" in err
