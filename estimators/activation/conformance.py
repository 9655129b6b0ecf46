"""The activation engine's conformance check (registered as engine "activation").

The chain (`chain.py`) computes on the model by its own code: transitions run blocks from a
written residual stream, site readers cut positions × units out of activations, the logits
site reads the model's tail. The check compares all of it with the model's own full pass:

  * a *point mass* input distribution — N = 2 identical copies of a random sequence of token
    ids, for two sequences — is propagated under the full covariance mask (naive at read-out
    sites, which nothing samples from) with K = 2 samples;
  * at every site (the residual stream at every block boundary, every MLP hidden layer with a
    standard hook, the logits at the last position) the propagated mean must equal the
    activations `model.run_with_cache` gives for that sequence, the propagated covariance must be
    zero, and the chain's ground truth must equal them too;
  * every sampled transition is also fed the *real* activations of three distinct random
    sequences at its parent site (all positions modelled, then only the last one, so the
    positions a site does not model are completed from the real inputs) and must return the
    real activations at its children: this catches a transition that ignores its input, which
    a point mass cannot;
  * the comparison runs in float64 on a float64 copy when the model is float32 and small
    (≤ FLOAT64_MAX_PARAMS parameters), else in the model's own dtype; tolerance
    `conformance.tolerance_for(dtype, scale)` with scale = max(1, max |activation| at the site).

A point mass must propagate exactly through any chain that runs the model's own computation, so
a disagreement means the engine does not compute this model faithfully: the engine is refused
with one line naming the first site that disagrees and the non-default config fields that act at
that stage (the suspects). Models that are not HookedTransformers (architectures TransformerLens
cannot convert, loaded through TransformerBridge) are refused outright.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from estimators import conformance
from estimators.conformance import EngineUnsupported, EngineVerdict, tolerance_for

ENGINE = "activation"
FLOAT64_MAX_PARAMS = 20_000_000
CHECK_CTX = 5
MAX_SITE_DIM = 2048

# Config fields that act inside the blocks / in the model's tail (ln_final, unembed, soft cap),
# reported as suspects when they are not at their defaults and the chain disagrees there.
BLOCK_FIELDS = (
    "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_adjacent_pairs",
    "use_NTK_by_parts_rope", "use_yarn_rope", "use_dynamic_ntk_rope", "n_key_value_heads",
    "ungroup_grouped_query_attention", "parallel_attn_mlp", "use_qk_norm", "attention_dir",
    "attn_scores_soft_cap", "use_local_attn", "attn_types", "window_size", "use_attn_scale",
    "scale_attn_by_inverse_layer_idx", "use_logn_attn", "use_attention_sinks",
    "normalization_type", "use_normalization_before_and_after", "gated_mlp",
    "num_experts", "clip_qkv", "post_embedding_ln")
TAIL_FIELDS = ("output_logits_soft_cap", "d_vocab_out", "normalization_type", "final_rms",
               "tie_word_embeddings")


def _is_hooked_transformer(model) -> bool:
    from transformer_lens import HookedTransformer
    return isinstance(model, HookedTransformer)


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check_model(model):
    """(the model the check runs on, its dtype): a float64 copy of a small float32 model (the
    engine's code is the same in any dtype; float64 makes the comparison tight), else the model
    itself."""
    dtype = model.cfg.dtype
    if dtype == torch.float32 and _param_count(model) <= FLOAT64_MAX_PARAMS:
        try:
            m64 = copy.deepcopy(model)  # its blocks share the copy's cfg, as the model's do
            m64.__dict__.pop("_hew_fingerprint", None)  # the copy is another model
            m64.to(torch.float64, print_details=False)  # updates cfg.dtype too
            with torch.no_grad():
                m64(torch.zeros((1, 2), dtype=torch.long, device=model.cfg.device))
            return m64, torch.float64
        except Exception:  # noqa: BLE001 - a model that does not run in float64: check as is
            pass
    return model, dtype


def suspects(cfg, fields) -> list[str]:
    """The fields among `fields` whose value in cfg differs from HookedTransformerConfig's
    default (for normalization_type: other than "LN"; rotary_* only for rotary models; fields
    TransformerLens derives in __post_init__, like attn_scale, are not listed)."""
    from transformer_lens import HookedTransformerConfig

    defaults = {f.name: f.default for f in dataclasses.fields(HookedTransformerConfig)
                if f.default is not dataclasses.MISSING}
    out = []
    rotary = getattr(cfg, "positional_embedding_type", None) == "rotary"
    for name in fields:
        if not hasattr(cfg, name) or (name.startswith("rotary_") and not rotary):
            continue
        v = getattr(cfg, name)
        if name == "d_vocab_out":
            if v != cfg.d_vocab:
                out.append(name)
        elif name == "normalization_type":
            if v != "LN":
                out.append(name)
        elif name in defaults and v != defaults[name] and not (v is None and defaults[name] == -1):
            out.append(name)
    return out


def _check_sites(model) -> list[str]:
    cfg = model.cfg
    from estimators.activation.sites import resid_site_name

    names = [resid_site_name(b, cfg.n_layers) for b in range(cfg.n_layers + 1)]
    if not cfg.attn_only:
        names += [f"blocks.{l}.mlp.hook_post" for l in range(cfg.n_layers)
                  if f"blocks.{l}.mlp.hook_post" in model.hook_dict]
    return names + ["logits@-1"]


def _reference(model, tokens: torch.Tensor, chain) -> dict[str, torch.Tensor]:
    """The real activations of the sequence tokens[0] at every chain site, read by hand from
    `run_with_cache` (flattened positions × units, float64)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[:1])
    out = {}
    for s in chain.sites:
        if s.kind == "logits":
            out[s.name] = logits[0, s.positions[0], list(s.units)].double()
        else:
            a = cache[s.hook][0]
            out[s.name] = a[list(s.positions)][:, list(s.units)].reshape(-1).double()
    return out


def point_mass_errors(model, seed: int = 0, ctx: int = CHECK_CTX) -> list[dict]:
    """Propagate a point mass (2 copies of one random sequence, seed) under the full mask with
    K = 2 samples; per site (chain order): max |propagated mean − real|, max |propagated cov|,
    max |chain ground truth − real|, and the scale max(1, max |real|)."""
    from estimators.activation.chain import build_transformer_chain
    from estimators.activation.engine import Propagator
    from estimators.activation.masks import CovarianceMask, SiteMask

    cfg = model.cfg
    ctx = max(1, min(ctx, cfg.n_ctx))
    g = torch.Generator().manual_seed(10_007 + seed)
    seq = torch.randint(0, cfg.d_vocab, (1, ctx), generator=g)
    tokens = seq.repeat(2, 1).to(cfg.device)
    n_pos = _n_positions(cfg, ctx)
    positions = list(range(ctx - n_pos, ctx))
    chain = build_transformer_chain(model, tokens, sites=_check_sites(model),
                                    positions=positions, samples=2, seed=seed,
                                    max_logit_units=256, max_dim=10 ** 9)
    # full mask on the chain sites (their factors are what transitions sample from); read-out
    # sites (MLP hidden layers) keep the naive mask: nothing samples from them, and a full
    # d_mlp × d_mlp factorisation per layer would dominate the check on large models
    mask = CovarianceMask.preset("full", chain.layouts)
    for s in chain.sites:
        if s.role == "readout":
            mask = mask.with_site(s.name, SiteMask(chain.layouts[s.name]))
    res = Propagator(chain, mask, distances=False).run()
    ref = _reference(model, tokens, chain)
    rows = []
    for s in chain.sites:
        r = ref[s.name]
        est = res.sites[s.name]
        emp = chain.empirical[s.name][0]
        rows.append({"site": s.name, "kind": s.kind,
                     "mean_error": float((est.mean - r).abs().max()),
                     "cov_error": float((est.var if est.masked.diagonal else est.cov)
                                        .abs().max()),
                     "reader_error": float((emp - r).abs().max()),
                     "scale": float(r.abs().max().clamp_min(1.0))})
    return rows


def _n_positions(cfg, ctx: int) -> int:
    """Positions the check models: all of its ctx when ctx·(widest site) ≤ MAX_SITE_DIM."""
    ctx = max(1, min(ctx, cfg.n_ctx))
    width = max(cfg.d_model, 0 if cfg.attn_only else int(cfg.d_mlp or 0))
    return max(1, min(ctx, MAX_SITE_DIM // max(width, 1)))


def transition_errors(model, seed: int = 0, ctx: int = CHECK_CTX, n: int = 3,
                      last_position_only: bool = False) -> list[dict]:
    """Feed every sampled transition the *real* activations of n distinct random sequences at
    its parent site (unmodelled positions completed by the same inputs) and compare what it
    returns with the real activations at its children; also compare the chain's ground-truth
    readers with `run_with_cache`, input by input. Per child site: max errors and the scale."""
    from estimators.activation.chain import build_transformer_chain

    cfg = model.cfg
    ctx = max(1, min(ctx, cfg.n_ctx))
    g = torch.Generator().manual_seed(20_011 + seed)
    tokens = torch.randint(0, cfg.d_vocab, (n, ctx), generator=g).to(cfg.device)
    n_pos = 1 if last_position_only else _n_positions(cfg, ctx)
    chain = build_transformer_chain(model, tokens, sites=_check_sites(model),
                                    positions=list(range(ctx - n_pos, ctx)), samples=n,
                                    seed=seed, max_logit_units=256, max_dim=10 ** 9)
    rows = []
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        logits = model(tokens)
        for step in chain.steps:
            parent = chain.sites[step.parent]
            outs = step.transition(chain.empirical[parent.name])
            for c, out in zip(step.children, outs):
                s = chain.sites[c]
                real = chain.empirical[s.name]
                if s.kind == "logits":
                    ref = logits[:, s.positions[0], list(s.units)].double()
                else:
                    a = cache[s.hook]
                    ref = a[:, list(s.positions)][:, :, list(s.units)].reshape(n, -1).double()
                rows.append({"site": s.name, "kind": s.kind, "mean_error": 0.0, "cov_error": 0.0,
                             "transition_error": float((out - real).abs().max()),
                             "reader_error": float((real - ref).abs().max()),
                             "scale": float(ref.abs().max().clamp_min(1.0))})
    return rows


@conformance.register_engine(ENGINE)
def check(model) -> EngineVerdict:
    """The activation engine's verdict on `model` (module docstring)."""
    if not _is_hooked_transformer(model):
        raise EngineUnsupported(
            f"the activation engine needs a TransformerLens HookedTransformer; this model is a "
            f"{type(model).__name__} (TransformerLens has no conversion for its architecture)")
    try:
        with torch.no_grad():
            model(torch.zeros((1, min(2, model.cfg.n_ctx)), dtype=torch.long,
                              device=model.cfg.device))
    except Exception as e:  # noqa: BLE001 - nothing to compare against
        raise EngineUnsupported(f"the model's own forward pass fails on token ids "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e
    m, dtype = check_model(model)
    dname = str(dtype).removeprefix("torch.")
    worst, worst_tol = 0.0, tolerance_for(dtype)
    point = "a point-mass input does not propagate exactly"
    fed = "a transition fed real activations does not reproduce the next site"
    runs = [(point, lambda: point_mass_errors(m, seed=0)),
            (point, lambda: point_mass_errors(m, seed=1)),
            (fed, lambda: transition_errors(m, seed=0))]
    if _n_positions(m.cfg, CHECK_CTX) > 1:  # else the run above modelled one position already
        runs.append((fed, lambda: transition_errors(m, seed=1, last_position_only=True)))
    for label, compute in runs:
        for row in compute():
            tol = tolerance_for(dtype, row["scale"])
            errs = {"its propagated mean differs": row["mean_error"],
                    "its covariance is not zero": row["cov_error"],
                    "its ground-truth reader differs": row["reader_error"],
                    "its value differs": row.get("transition_error", 0.0)}
            what, err = max(errs.items(), key=lambda kv: (kv[1] != kv[1], kv[1]))
            if not err <= tol:  # NaN fails too
                fields = suspects(model.cfg, TAIL_FIELDS if row["kind"] == "logits"
                                  else BLOCK_FIELDS)
                blame = f"; config fields acting there: {', '.join(fields)}" if fields else ""
                return EngineVerdict(
                    ENGINE, False, err, tol,
                    reason=(f"{label}: at {row['site']} {what} from run_with_cache by "
                            f"{err:.3g} (> {tol:.1g}, {dname}){blame}"),
                    config_fields=fields, dtype=dname)
            if err / tol >= worst / worst_tol:
                worst, worst_tol = err, tol
    return EngineVerdict(ENGINE, True, worst, worst_tol, dtype=dname)
