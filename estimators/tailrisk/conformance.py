"""Conformance check of the tail-risk engine's own computations against the model's forward pass.

The tail-risk estimators never run a re-implementation of the model; what they compute by their
own code is the *readout*: the site activation at the last position (a forward pre-hook on the
unembedding, or a hook point with an early stop), the logits from the unembedding's input
(`behaviours.final_logits`: a·W_U + b_U, then the output soft cap), the per-target vectors of
the ground truth (argmax one-hot, softmax), the linear inequalities (G, h) that QLD, GLD and the
activation model read behaviours through, and the activation model's Gaussian readers. On
`N_SEQUENCES` random inputs (fixed seed, min(n_ctx, 6) tokens) the check compares

  1. `final_logits(site activation)` with `model(tokens)[:, -1]`;
  2. the site activation at the first, a middle and the last residual hook, and at
     `blocks.0.attn.hook_z` and the last MLP's `hook_post` (SAE sites), with `run_with_cache`
     (the early-stopped pass must not change it);
  3. the ground truth's per-input vectors with the argmax / softmax of the model's own logits;
  4. the indicator of every linear-inequality form with the behaviour on the model's own
     logits — argmax of each input's top token, and `logit_t > θ` for thresholds inside, at
     and beyond the soft cap — wherever the margin exceeds the tolerance;
  5. the activation model's readers on point masses at the model's own logits (σ → 0 must
     give the indicator).

Tolerances: `conformance.tolerance_for(dtype, scale)` with the model's dtype and the largest
|logit| (or |activation|); comparison 1 is repeated on a float64 copy of the model (up to
`FLOAT64_MAX_PARAMS` parameters) with the float64 tolerance. A failure refuses the engine with
the comparison that failed and the config fields that change the forward pass.
"""

from __future__ import annotations

import torch

from estimators import conformance
from estimators.conformance import EngineVerdict

ENGINE = "tailrisk"
N_SEQUENCES = 6
MAX_LEN = 6
SEED = 4321
FLOAT64_MAX_PARAMS = 20_000_000


def _tokens(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    length = max(1, min(int(model.cfg.n_ctx), MAX_LEN))
    toks = torch.randint(0, int(model.cfg.d_vocab), (N_SEQUENCES, length), generator=g)
    from estimators.scrubbing.conformance import avoid_padding
    return avoid_padding(model, toks).to(next(model.parameters()).device)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _indicator_mismatch(ind: torch.Tensor, truth: torch.Tensor, margin: torch.Tensor,
                        tol: float) -> bool:
    """True when the indicator differs from the truth where the margin is clear of tol."""
    clear = margin.abs() > tol
    return bool(((ind.bool() != truth.bool()) & clear).any())


def _logit_checks(model, tokens, own: torch.Tensor, tol: float
                  ) -> tuple[list[tuple[str, float]], float]:
    """(failures [(what, error)] of comparisons 1, 3, 4, 5 on the last-position logits, the
    logits error of comparison 1)."""
    from estimators.tailrisk.actmodel import independent_argmax_probability, logit_tail
    from estimators.tailrisk.behaviours import (UNEMBED_IN, Argmax, LogitThreshold,
                                                SampledProbability, _site_activation,
                                                constraint_margin, final_logits, soft_cap)
    from estimators.tailrisk.ground_truth import _per_input_vector

    fails = []
    with torch.no_grad():
        a = _site_activation(model, tokens, UNEMBED_IN).float()
        mine = final_logits(model, a)
    logits_err = _err(mine, own)
    if logits_err > tol:
        fails.append(("logits read at the unembedding's input (final_logits)", logits_err))
        return fails, logits_err
    soft = _per_input_vector(model, SampledProbability(0, 1.0), tokens)
    e = _err(soft, torch.softmax(own.double(), -1))
    if e > tol:
        fails.append(("ground-truth softmax vector", e))
    top2 = own.double().topk(min(2, own.shape[-1]), -1)
    gap = top2.values[:, 0] - top2.values[:, -1]
    onehot = _per_input_vector(model, Argmax(0), tokens)
    hit = onehot.gather(1, top2.indices[:, :1]).squeeze(1)
    if _indicator_mismatch(hit, torch.ones_like(hit), gap, tol):
        fails.append(("ground-truth argmax vector", float(gap.abs().max())))
    for i in range(own.shape[0]):
        t = int(top2.indices[i, 0])
        G, h = Argmax(t).constraints(model)
        m = constraint_margin(a.double(), G, h)
        truth = own.double().argmax(-1) == t
        others = own.double().clone()
        others[:, t] = -torch.inf
        margin = own.double()[:, t] - others.max(-1).values
        if _indicator_mismatch(m > 0, truth, margin, tol):
            fails.append((f"argmax={t} linear inequalities", float(margin.abs().min())))
            break
        # actmodel readers at a point mass on the model's own logits (input i)
        p, _ = independent_argmax_probability(own[i].double(), torch.zeros_like(own[i]).double(),
                                              t)
        if margin[i] > tol and p != 1.0:
            fails.append(("activation-model argmax reader at a point mass", abs(1 - p)))
            break
    c = soft_cap(model)
    lt = own.double()[:, 0]
    thetas = [float(lt.median())] + ([c - 1e-3 * c, c, c + 0.5, -c - 0.5] if c else [])
    for theta in thetas:
        b = LogitThreshold(0, theta)
        G, h = b.constraints(model)
        ind = constraint_margin(a.double(), G, h) > 0
        truth = lt > theta
        v, _ = b.evaluate(model, tokens)
        if _indicator_mismatch(ind, truth, lt - theta, tol) or \
                _indicator_mismatch(v.to(truth.device), truth, lt - theta, tol):
            fails.append((f"logit[0] > {theta:g} (value or linear inequality)",
                          float((lt - theta).abs().min())))
            break
        reader = torch.tensor([logit_tail(model, float(x), 0.0, theta)[0] for x in lt])
        if _indicator_mismatch(reader, truth.cpu(), (lt - theta).cpu(), tol):
            fails.append(("activation-model normal-tail reader at a point mass", 1.0))
            break
    return fails, logits_err


def _site_checks(model, tokens, dtype) -> list[tuple[str, float]]:
    """Comparison 2: the early-stopped hook reader against run_with_cache."""
    from estimators.tailrisk.behaviours import _site_activation, residual_hooks

    hooks = residual_hooks(model)
    pick = sorted({0, len(hooks) // 2, len(hooks) - 1}) if hooks else []
    L = int(model.cfg.n_layers)
    # plus hooks an SAE behaviour may read inside a block (attention z, MLP hidden)
    names = [hooks[i] for i in pick] + [h for h in ("blocks.0.attn.hook_z",
                                                    f"blocks.{L - 1}.mlp.hook_post")
                                        if h in model.hook_dict]
    fails = []
    if not names:
        return fails
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        for name in names:
            ref = cache[name][:, -1].reshape(tokens.shape[0], -1)
            mine = _site_activation(model, tokens, name)
            tol = conformance.tolerance_for(dtype, float(ref.abs().max()))
            e = _err(mine, ref)
            if e > tol:
                fails.append((f"activation read at {name}", e))
    return fails


def _float64_copy_runs(model) -> bool:
    """Whether comparison 1 can be repeated on a float64 copy: a HookedTransformer converts
    every weight with `.to(float64)`; a TransformerBridge does not (its gated MLP keeps calling
    the wrapped float32 module: "double != float"), so a bridge is checked in its own dtype
    only, against its own tolerance."""
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


def _float64_logits(model, tokens) -> list[tuple[str, float]]:
    """Comparison 1 again on a float64 copy, with the float64 tolerance: a readout formula
    that is slightly wrong (a missing bias, a misplaced cap) cannot hide in a bfloat16
    tolerance."""
    from estimators.scrubbing.conformance import _float64_copy
    from estimators.tailrisk.behaviours import UNEMBED_IN, _site_activation, final_logits

    m64 = _float64_copy(model)
    with torch.no_grad():
        own = m64(tokens, return_type="logits")[:, -1]
        mine = final_logits(m64, _site_activation(m64, tokens, UNEMBED_IN))
    tol = conformance.tolerance_for(torch.float64, float(own.abs().max()))
    e = _err(mine, own)
    return [("logits read at the unembedding's input (final_logits), in float64", e)] \
        if e > tol else []


@conformance.register_engine(ENGINE)
def check_tailrisk(model) -> EngineVerdict:
    """Run comparisons 1–5 (module docstring); ok when none fails."""
    from estimators.scrubbing.conformance import forward_fields

    tokens = _tokens(model)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        own = model(tokens, return_type="logits")[:, -1].float()
    tol = conformance.tolerance_for(dtype, float(own.abs().max()))
    fails, logits_err = _logit_checks(model, tokens, own, tol)
    fails += _site_checks(model, tokens, dtype)
    if not fails and dtype != torch.float64 and _float64_copy_runs(model) and \
            sum(p.numel() for p in model.parameters()) <= FLOAT64_MAX_PARAMS:
        fails += _float64_logits(model, tokens)
    if not fails:
        return EngineVerdict(ENGINE, True, logits_err, tol, dtype=str(dtype))
    fields = forward_fields(model)
    what, err = fails[0]
    blame = f"; config fields that change the forward pass here: {', '.join(fields)}" \
        if fields else ""
    return EngineVerdict(ENGINE, False, err, tol,
                         reason=f"{what} disagrees with the model's own forward pass "
                                f"(error {err:.3g}, tolerance {tol:.1g}){blame}",
                         config_fields=[f.split("=")[0] for f in fields], dtype=str(dtype))
