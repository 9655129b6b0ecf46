"""Conformance check of the treeified scrubbing pass against the model's own forward pass.

On a few random token inputs of the loaded model (3 sequences of min(n_ctx, 6) tokens, fixed
seed) the check runs the treeified pass (`treeify.treeified_logits`) on

  1. the all-important partition (every path reads the real input), whose logits must equal
     `model(tokens)`;
  2. a partition with two resampled blocks — the direct path `embed>logits` and every path that
     ends `…>a{L−1}.0:*>logits` (head 0 of the last layer straight into the logits) — whose
     logits are computed a second way, by hooks: the model runs on the real input with
     `blocks.{L−1}.hook_resid_post` shifted by (embed(x') − embed(x)) + (z'_0 − z_0)·W_O[0],
     z from `hook_z` on the resampled input x'. (The final normalisation, unembedding and soft
     cap then run as the model runs them.)

Both comparisons are done in the model's dtype with `conformance.tolerance_for(dtype, scale)`
(scale = the largest |logit|), and again on a float64 copy of the model (when it has at most
`FLOAT64_MAX_PARAMS` parameters) with the float64 tolerance, which catches a wrong formula that
a low-precision tolerance would hide. A disagreement refuses the engine; the reason names the
first node whose output differs from the model's hooks (`hook_z`·W_O per head, `hook_mlp_out`)
and the config fields that change the forward pass on this model (non-default values among
`FORWARD_FIELDS`), so a configuration nobody listed is still caught — by the numbers.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch

from estimators import conformance
from estimators.conformance import EngineUnsupported, EngineVerdict

ENGINE = "scrubbing"
N_SEQUENCES = 3
MAX_LEN = 6
SEED = 1234
FLOAT64_MAX_PARAMS = 20_000_000

# Config fields that change a HookedTransformer's forward pass, with their neutral values: a
# failing check names the ones set on the model (suspects, not the test itself).
FORWARD_FIELDS = {
    "output_logits_soft_cap": (None, -1.0, 0.0), "attn_scores_soft_cap": (None, -1.0, 0.0),
    "use_qk_norm": (False,), "positional_embedding_type": ("standard",),
    "n_key_value_heads": (None,), "parallel_attn_mlp": (False,), "normalization_type": ("LN",),
    "final_rms": (False,), "d_vocab_out": (-1,), "attention_dir": ("causal",),
    "use_normalization_before_and_after": (False,), "use_local_attn": (False,),
    "use_logn_attn": (False,), "use_attention_sinks": (False,), "clip_qkv": (None,),
    "post_embedding_ln": (False,), "original_architecture": (None,), "gated_mlp": (False,),
    "num_experts": (None,), "use_attn_in": (False,), "use_split_qkv_input": (False,),
    "use_dynamic_ntk_rope": (False,), "use_yarn_rope": (False,), "use_NTK_by_parts_rope": (False,),
    "rotary_adjacent_pairs": (False,), "scale_attn_by_inverse_layer_idx": (False,),
    "use_attn_scale": (True,),
}


def forward_fields(model) -> list[str]:
    """`field=value` for every FORWARD_FIELDS entry the model sets to a non-neutral value."""
    cfg = model.cfg
    out = []
    for name, neutral in FORWARD_FIELDS.items():
        if not hasattr(cfg, name):
            continue
        v = getattr(cfg, name)
        if name == "d_vocab_out" and v == cfg.d_vocab:
            continue
        if v not in neutral:
            out.append(f"{name}={v!r}")
    return out


def check_tokens(model) -> torch.Tensor:
    """[N_SEQUENCES, min(n_ctx, MAX_LEN)] random token ids on the model's device."""
    g = torch.Generator().manual_seed(SEED)
    length = max(2, min(int(model.cfg.n_ctx), MAX_LEN))
    toks = torch.randint(0, int(model.cfg.d_vocab), (N_SEQUENCES, length), generator=g)
    return avoid_padding(model, toks).to(next(model.parameters()).device)


def avoid_padding(model, tokens: torch.Tensor) -> torch.Tensor:
    """Replace a left-padding tokenizer's pad id (the model would mask it out) by another id."""
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None) if tok is not None else None
    if pad is None or getattr(tok, "padding_side", "right") != "left":
        return tokens
    return torch.where(tokens == pad, (tokens + 1) % int(model.cfg.d_vocab), tokens)


def _labels(graph, resampled: bool) -> np.ndarray:
    lab = np.zeros(graph.n_paths, dtype=np.int64)
    if resampled:
        lab[graph.match_required("embed>logits")] = 1
        lab[graph.match_required(f"*>a{graph.n_layers - 1}.0:*>logits")] = 2
    return lab


def _hooked_reference(model, real: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The two-block partition's logits computed by hooks (see the module docstring)."""
    L = int(model.cfg.n_layers)
    with torch.no_grad():
        _, c_real = model.run_with_cache(real, names_filter=lambda n: n in (
            "hook_embed", "hook_pos_embed", f"blocks.{L - 1}.attn.hook_z",
            "blocks.0.hook_resid_pre"))
        _, c_other = model.run_with_cache(other, names_filter=lambda n: n in (
            f"blocks.{L - 1}.attn.hook_z", "blocks.0.hook_resid_pre"))
        W_O = model.blocks[L - 1].attn.W_O[0]
        delta = (c_other["blocks.0.hook_resid_pre"] - c_real["blocks.0.hook_resid_pre"]) + \
            (c_other[f"blocks.{L - 1}.attn.hook_z"][:, :, 0]
             - c_real[f"blocks.{L - 1}.attn.hook_z"][:, :, 0]) @ W_O

        def shift(act, hook):
            return act + delta.to(act.dtype)
        return model.run_with_hooks(real, fwd_hooks=[(f"blocks.{L - 1}.hook_resid_post",
                                                      shift)])


def _first_bad_node(model, graph, store: dict, tokens: torch.Tensor, tol: float) -> str | None:
    """The first node (topological order) whose all-important output differs from the
    model's own hooks by more than tol, as a hook name; None when all agree."""
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    return _first_bad(model, graph, store, cache, tol)


@torch.no_grad()
def _first_bad(model, graph, store: dict, cache, tol: float) -> str | None:
    for nd in graph.nodes:
        if nd.kind == "embed":
            ref, hook = cache["blocks.0.hook_resid_pre"], "blocks.0.hook_resid_pre"
        elif nd.kind == "attn":
            hook = f"blocks.{nd.layer}.attn.hook_z"
            ref = cache[hook][:, :, nd.head] @ model.blocks[nd.layer].attn.W_O[nd.head]
        else:
            hook = f"blocks.{nd.layer}.hook_mlp_out"
            ref = cache[hook]
        mine = store[nd.name][0]
        if mine.shape != ref.shape or float((mine.double() - ref.double()).abs().max()) > tol:
            return hook
    return None


def _compare(model, graph, tokens: torch.Tensor, other: torch.Tensor
             ) -> tuple[float, float, str | None]:
    """(max |error| over both partitions, tolerance, where) in the model's current dtype."""
    from estimators.scrubbing.treeify import plan_versions, treeified_logits

    with torch.no_grad():
        ref_full = model(tokens, return_type="logits")
    dtype = ref_full.dtype
    streams = torch.stack([tokens, other, other])
    plan = plan_versions(graph, [_labels(graph, False), _labels(graph, True)])
    logits, store = treeified_logits(model, graph, plan, streams, return_store=True)
    ref_two = _hooked_reference(model, tokens, other)
    scale = float(max(ref_full.abs().max(), ref_two.abs().max()))
    tol = conformance.tolerance_for(dtype, scale)
    err_full = float((logits[0].double() - ref_full.double()).abs().max())
    err_two = float((logits[1].double() - ref_two.double()).abs().max())
    where = None
    if err_full > tol:
        node = _first_bad_node(model, graph, store, tokens, tol)
        where = f"all-important logits; first differing node {node}" if node else \
            "all-important logits (after the last block: final norm, unembedding or soft cap)"
    elif err_two > tol:
        where = "a partition with resampled paths (embed>logits, last-layer head 0)"
    return max(err_full, err_two), tol, where


def _float64_copy(model):
    """A float64 deep copy (TransformerLens' `.to(dtype)` prints; keep stdout clean for JSON)."""
    m = copy.deepcopy(model)
    m.cfg.dtype = torch.float64
    with contextlib.redirect_stdout(io.StringIO()):
        return m.to(torch.float64)


def compare_in_dtypes(engine: str, pass_name: str, model, graph, compare) -> EngineVerdict:
    """`engine`'s verdict from `compare(model, graph, tokens, other) -> (max abs error,
    tolerance, where or None)` on `check_tokens` and a shifted copy of them: in the model's dtype
    and, where that agrees and the model has at most FLOAT64_MAX_PARAMS parameters, again on a
    float64 copy (which catches an error a half-precision tolerance would hide). A refusal is
    one line naming `pass_name`, the error, where it was seen and the config fields in play."""
    tokens = check_tokens(model)
    other = torch.roll(tokens, 1, dims=0)
    other[:, 0] = (other[:, 0] + 1) % int(model.cfg.d_vocab)
    dtype = next(model.parameters()).dtype
    err, tol, where = compare(model, graph, tokens, other)
    what = f"in {str(dtype).removeprefix('torch.')}"
    if where is None and dtype != torch.float64 and \
            sum(p.numel() for p in model.parameters()) <= FLOAT64_MAX_PARAMS:
        err64, tol64, where = compare(_float64_copy(model), graph, tokens, other)
        if where is not None:
            err, tol, what = err64, tol64, "in float64"
    fields = forward_fields(model)
    if where is None:
        return EngineVerdict(engine, True, err, tol, dtype=str(dtype))
    blame = f"; config fields that change the forward pass here: {', '.join(fields)}" \
        if fields else ""
    reason = (f"the {pass_name} differs from the model's own forward pass {what} by "
              f"{err:.3g} > {tol:.1g} ({where}){blame}")
    return EngineVerdict(engine, False, err, tol, reason=reason,
                         config_fields=[f.split("=")[0] for f in fields], dtype=str(dtype))


@conformance.register_engine(ENGINE)
def check_scrubbing(model) -> EngineVerdict:
    """Compare the treeified pass with the model (see the module docstring)."""
    from estimators.scrubbing.paths import PathError, PathGraph

    try:
        graph = PathGraph.from_model(model)
    except PathError as e:
        raise EngineUnsupported(str(e)) from e
    return compare_in_dtypes(ENGINE, "treeified pass", model, graph, _compare)
