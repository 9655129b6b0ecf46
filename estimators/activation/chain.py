"""Chains: the sites of a model in propagation order, the transitions between them, and the
ground truth (empirical activations of real inputs through the real model) at every site.

Transitions (`Step`), each from one parent site to its child sites:
  * closed form (plain MLPs; no sampling): y = W x + b exactly, then ReLU/GELU by moments and
    the Hermite series for covariances (`closed_form.py`);
  * moment matching through the real component (transformers): draw K samples of the parent's
    masked Gaussian with fixed common random numbers z [K, d] (seeded per step, so toggling a
    mask changes the estimate smoothly and deterministically, and gradients flow through
    mean + z·Lᵀ), write them into a residual tensor [K, ctx, d_model] at the site's positions
    and units, run the model's own forward pass over the step's blocks (`run_blocks`:
    `HookedTransformer.forward(start_at_layer, stop_at_layer)`, with the shortformer positional
    embedding and attention mask the full pass would give them), read the children (residual,
    SAE latents via `sae.encode`, logits via the model's own tail — ln_final, unembed, logit
    soft cap — in `read_logits`, MLP hidden via its hook) and fit mean and covariance. Only
    the covariance entries the child's mask tracks are formed from the samples (variances always; a block per connected component of the mask),
    and sampled off-diagonal covariances are shrunk toward the diagonal by a Ledoit–Wolf-type
    factor (`gaussian.Moments.shrinkage`), which keeps them well conditioned when K ≲ d.
Positions and units a site does not model are held at the *real* activations of K real inputs
(input k of the empirical batch for sample k): the estimate presumes the modelled coordinates
independent of the rest of the context, which is the heuristic presumption of independence.
In a causal model the positions before the first modelled one are then the same in every
sample, so a transition runs its blocks on the modelled span only, those positions' keys and
values computed once (`CausalWindow`; hooks on the model see the span), and a logits site
computes only its own units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from estimators.activation.closed_form import (DEFAULT_ORDER, activation_gaussian,
                                               linear_flops, linear_gaussian)
from estimators.activation.gaussian import MaskedGaussian, Moments, fit_gaussian
from estimators.activation.masks import Layout
from estimators.activation.sites import Site, parse_site_name, resid_site_name

# ε of the continuous code of a logits output site, in nats (accounting.py)
LOGITS_EPSILON = 1e-2


@dataclass
class Step:
    """parent site index → child site indices. `run(parent)` returns one `Moments` per child.
    `flops(parent)` counts its matrix products (2·m·n·k each). `transition` (sampled steps):
    the deterministic map the samples go through, parent values [k, d_parent] (float64, row i
    completed by real input i % N where the parent does not model) → one [k, d_child] per
    child; the conformance check feeds it real activations."""

    parent: int
    children: list[int]
    run: Callable[[MaskedGaussian], list[Moments]]
    flops: Callable[[MaskedGaussian], float]
    sampled: bool
    description: str = ""
    transition: Callable[[torch.Tensor], list[torch.Tensor]] | None = None
    # run_many(parents) = [run(p) for p in parents] in one pass (sampled steps: the C parents'
    # samples stacked on the sample axis, C·K rows through the model at once); None: a loop
    run_many: Callable[[list[MaskedGaussian]], list[list[Moments]]] | None = None

    def run_batch(self, parents: list[MaskedGaussian]) -> list[list[Moments]]:
        """`run` of every parent in `parents` (C of them): one `Moments` list per parent, equal
        to `[self.run(p) for p in parents]` (batched through `run_many` when the step has it)."""
        if self.run_many is None or len(parents) < 2:
            return [self.run(p) for p in parents]
        return self.run_many(parents)


@dataclass
class OutputSpec:
    """What S(Y|π) scores. kind "argmax": observations [N] are the model's argmax over the output
    site's units; kind "continuous": observations [N, d] scored with quantisation `epsilon`."""

    site: str
    kind: str
    observations: torch.Tensor
    epsilon: float = 1e-2
    labels: list[str] | None = None


@dataclass
class Chain:
    sites: list[Site]
    steps: list[Step]
    input_mean: torch.Tensor
    input_cov: torch.Tensor
    empirical: dict[str, torch.Tensor]  # site name → [N, d] real activations (float64)
    output: OutputSpec
    device: torch.device
    dtype: torch.dtype = torch.float64
    info: dict = field(default_factory=dict)
    n_inputs: int = 0

    def __post_init__(self):
        self.index = {s.name: i for i, s in enumerate(self.sites)}
        self.layouts = {s.name: Layout(s.n_positions, s.n_units) for s in self.sites}
        self._corr: dict[str, torch.Tensor] = {}
        self._emp_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def site(self, name: str) -> Site:
        if name not in self.index:
            raise ValueError(f"unknown site {name!r}; this chain has: {', '.join(self.index)}")
        return self.sites[self.index[name]]

    def empirical_stats(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Empirical mean [d] and covariance [d, d] at a site (cached)."""
        if name not in self._emp_stats:
            self._emp_stats[name] = fit_gaussian(self.empirical[self.site(name).name])
        return self._emp_stats[name]

    def correlation(self, name: str) -> torch.Tensor:
        """Empirical correlation [d, d] at a site (0 where a unit has no variance)."""
        if name not in self._corr:
            _, cov = self.empirical_stats(name)
            sd = torch.diagonal(cov).clamp_min(0).sqrt()
            inv = torch.where(sd > 0, 1 / sd.clamp_min(1e-300), torch.zeros_like(sd))
            self._corr[name] = cov * inv.unsqueeze(0) * inv.unsqueeze(1)
        return self._corr[name]

    def to_dict(self) -> dict:
        return {"sites": [s.to_dict() for s in self.sites], "output": {
            "site": self.output.site, "kind": self.output.kind, "epsilon": self.output.epsilon},
            "n_inputs": self.n_inputs, "info": self.info}


# =========================================================================== plain MLPs

def mlp_chain(mlp, input_mean: torch.Tensor, input_cov: torch.Tensor, n_empirical: int = 4096,
              seed: int = 0, order: int = DEFAULT_ORDER, epsilon: float = 1e-2,
              device=None) -> Chain:
    """Chain input → hidden.0 → … → output of a `PlainMLP`, closed-form transitions.

    Ground truth: n_empirical inputs drawn from N(input_mean, input_cov) (seed) through the MLP.
    """
    from estimators.device import resolve_device

    dev = resolve_device(device) if device is not None else input_mean.device
    dtype = torch.float64
    mlp = mlp.to(device=dev, dtype=dtype)
    mean = input_mean.to(dev, dtype)
    cov = input_cov.to(dev, dtype)
    widths = mlp.widths
    if mean.shape[0] != widths[0]:
        raise ValueError(f"input distribution has dimension {mean.shape[0]}, the MLP's input "
                         f"is {widths[0]}")
    n_layers = len(mlp.layers)
    names = ["input"] + [f"hidden.{i}" for i in range(n_layers - 1)] + ["output"]
    kinds = ["input"] + ["hidden"] * (n_layers - 1) + ["output"]
    sites = [Site(n, k, n, (), tuple(range(w)), w) for n, k, w in zip(names, kinds, widths)]

    # ground truth
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    z = torch.randn(n_empirical, widths[0], generator=g, dtype=dtype).to(dev)
    evals, evecs = torch.linalg.eigh(cov)
    x = mean + z @ (evecs * evals.clamp_min(0).sqrt()).T
    with torch.no_grad():
        out, hidden = mlp(x, return_hidden=True)
    empirical = {"input": x, "output": out}
    for i, h in enumerate(hidden):
        empirical[f"hidden.{i}"] = h

    steps = []
    for i, layer in enumerate(mlp.layers):
        last = i == n_layers - 1
        act = None if last else mlp.activation

        def run(parent: MaskedGaussian, layer=layer, act=act):
            W, b = layer.weight, layer.bias
            m, c = linear_gaussian(parent.mean, parent.cov, W, b)
            if act is not None:
                m, c = activation_gaussian(m, c, act, order)
            return [Moments(m, cov=c)]

        def flops(parent: MaskedGaussian, layer=layer):
            n_out, n_in = layer.weight.shape
            return linear_flops(n_out, n_in, diagonal_only=False)

        steps.append(Step(i, [i + 1], run, flops, sampled=False,
                          description=f"layers.{i}: exact linear"
                          + ("" if last else f" + {mlp.activation} moments (Hermite order {order})")))
    out_spec = OutputSpec("output", "continuous", out, epsilon=epsilon)
    return Chain(sites, steps, mean, cov, empirical, out_spec, dev,
                 info={"model": "mlp", "widths": widths, "activation": mlp.activation,
                       "hermite_order": order},
                 n_inputs=n_empirical)


# =========================================================================== transformers

def default_positions(n_ctx: int, d_model: int, max_dim: int = 1024,
                      read_position: int = -1) -> list[int]:
    """All positions when ctx·d_model ≤ max_dim, else the last ⌊max_dim/d_model⌋ (≥ 1),
    always including `read_position`, the position the logits site reads (a classifier may
    read position 0): it replaces the earliest of the last positions when it is not among them.
    """
    if n_ctx * d_model <= max_dim:
        return list(range(n_ctx))
    k = max(1, max_dim // d_model)
    pos = list(range(n_ctx - k, n_ctx))
    read = _norm_pos(read_position, n_ctx)
    if read not in pos:
        pos = sorted([read] + pos[1:])
    return pos


def tile_rows(t: torch.Tensor, k: int) -> torch.Tensor:
    """Rows 0..k−1 of `t` repeated cyclically (row i is t[i mod len(t)]): the real inputs that
    complete k = C·K stacked samples, the same K for each of C batched candidates."""
    n = int(t.shape[0])
    if k <= n:
        return t[:k]
    return t.repeat((k + n - 1) // n, *([1] * (t.dim() - 1)))[:k]


def _norm_pos(p: int, ctx: int) -> int:
    q = p + ctx if p < 0 else p
    if not 0 <= q < ctx:
        raise ValueError(f"position {p} is outside the context 0..{ctx - 1}")
    return q


def _hook_layer(hook: str) -> int | None:
    import re
    m = re.match(r"^blocks\.(\d+)\.", hook)
    return int(m.group(1)) if m else None


def _resid_hook_boundary(hook: str) -> int | None:
    try:
        kind, info = parse_site_name(hook)
    except ValueError:
        return None
    return info["boundary"] if kind == "resid" else None


def block_extras(model, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the model's own forward pass gives its blocks besides the residual stream, for real
    inputs `tokens` [K, ctx]: the shortformer positional embedding [K, ctx, d_model] (models with
    `positional_embedding_type="shortformer"`) and the attention mask [K, ctx] (when the model's
    tokenizer pads on the left). Computed by `model.input_to_embed`, as `model(tokens)` does."""
    if not hasattr(model, "input_to_embed"):
        return {}
    with torch.no_grad():
        _, _, shortformer, attention_mask = model.input_to_embed(tokens)
    out = {}
    if shortformer is not None:
        out["shortformer_pos_embed"] = shortformer
    if attention_mask is not None:
        out["attention_mask"] = attention_mask
    return out


def run_blocks(model, resid: torch.Tensor, blocks: list[int], extras: dict) -> torch.Tensor:
    """The residual stream [K, ctx, d_model] after the consecutive `blocks`, by the model's own
    forward pass (`HookedTransformer.forward(start_at_layer, stop_at_layer)`: every block option
    — rotary, GQA, parallel attention+MLP, QK-norm, soft caps, local attention — is the model's
    code). Hooks registered on the model fire as in a full pass."""
    if not blocks:
        return resid
    return model(resid, start_at_layer=blocks[0], stop_at_layer=blocks[-1] + 1, **extras)


# Memory for the cached keys and values of the positions before a causal window, over all of a
# chain's steps (bytes); steps beyond it run the whole context.
WINDOW_CACHE_BYTES = 512 * 2 ** 20


def _kv_cache_class():
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    except ImportError:  # another TransformerLens version: no windows
        return None
    return TransformerLensKeyValueCache


class CausalWindow:
    """A sampled transition's blocks run on positions lo..hi−1 only. In a causal model the
    positions before lo hold the real activations of the input completing each sample (no
    modelled position can reach them) and nothing reads a position at or after hi, so their
    outputs are the same as in a pass over the whole context; the blocks' keys and values at
    positions 0..lo−1 come from one pass of the K real inputs, made on first use and kept
    (TransformerLens' key-value cache, frozen: the model's own attention code reads it, with
    rotary offsets and the causal mask it applies when generating). A window has no prefix
    when lo = 0."""

    def __init__(self, model, blocks: list[int], base: torch.Tensor, lo: int, hi: int):
        self.model, self.blocks, self.lo, self.hi = model, blocks, lo, hi
        self._base = base  # [K, ctx, d_model] the real residual stream at the step's parent
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _prefix(self, kx: int):
        """A frozen key-value cache of the positions before lo, for kx rows (tile_rows)."""
        if self.lo == 0:
            return None
        cls = _kv_cache_class()
        m = self.model
        if self._kv is None:
            cache = cls.init_cache(m.cfg, self._base.device, batch_size=int(self._base.shape[0]))
            with torch.no_grad():
                m(self._base[:, :self.lo], start_at_layer=self.blocks[0],
                  stop_at_layer=self.blocks[-1] + 1, past_kv_cache=cache)
            self._kv = [(cache.entries[b].past_keys, cache.entries[b].past_values)
                        for b in self.blocks]
        cache = cls.init_cache(m.cfg, self._base.device, batch_size=kx)
        for b, (k, v) in zip(self.blocks, self._kv):
            cache.entries[b].past_keys, cache.entries[b].past_values = \
                tile_rows(k, kx), tile_rows(v, kx)
        cache.freeze()
        return cache

    def run(self, resid: torch.Tensor) -> torch.Tensor:
        """The residual stream [kx, hi − lo, d_model] after the blocks, at positions lo..hi−1,
        from the whole written residual stream resid [kx, ctx, d_model]."""
        cache = self._prefix(int(resid.shape[0]))
        return self.model(resid[:, self.lo:self.hi], start_at_layer=self.blocks[0],
                          stop_at_layer=self.blocks[-1] + 1, past_kv_cache=cache)

    def nbytes(self) -> int:
        cfg = self.model.cfg
        heads = cfg.n_key_value_heads or cfg.n_heads
        return (2 * int(self._base.shape[0]) * self.lo * heads * cfg.d_head
                * len(self.blocks) * self._base.element_size())


def causal_windows(model, extras: dict, base_resid: dict, positions: list[int],
                   read_position: int | None, steps: list[tuple[int, int, str]]
                   ) -> dict[int, CausalWindow]:
    """{parent boundary: CausalWindow} for the sampled steps (parent boundary, child boundary,
    child kind) that can run on the modelled positions only: the model attends causally with
    standard or rotary positions and no local attention, sinks or length-dependent rotary
    scaling, its blocks need nothing besides the residual stream (`block_extras` empty), and the
    modelled positions (with the logits' read position) leave out some of the context; steps
    get windows in chain order while their cached keys and values fit WINDOW_CACHE_BYTES.
    The estimates equal the whole-context pass's up to rounding (the activation engine's
    conformance check runs windowed transitions)."""
    cfg = model.cfg
    ctx = int(next(iter(base_resid.values())).shape[1]) if base_resid else 0
    lo = min(positions)
    hi = max(positions + ([read_position] if read_position is not None else [])) + 1
    if (lo == 0 and hi == ctx) or extras or _kv_cache_class() is None \
            or getattr(cfg, "attention_dir", "causal") != "causal" \
            or getattr(cfg, "positional_embedding_type", "standard") not in ("standard", "rotary") \
            or any(getattr(cfg, f, False) for f in ("use_local_attn", "use_attention_sinks",
                                                    "use_dynamic_ntk_rope")):
        return {}
    out, used = {}, 0
    for b0, b1, kind in steps:
        blocks = list(range(b0, cfg.n_layers if kind == "logits" else b1))
        if not blocks or b0 not in base_resid:
            continue
        w = CausalWindow(model, blocks, base_resid[b0], lo, hi)
        if used + w.nbytes() > WINDOW_CACHE_BYTES:
            break
        used += w.nbytes()
        out[b0] = w
    return out


def read_logits(model, resid_final: torch.Tensor, units: list[int] | None = None
                ) -> torch.Tensor:
    """Logits [K, pos, d_vocab_out] from the final residual stream [K, pos, d_model] by the
    model's own forward pass after the last block (ln_final when the model has one, unembed,
    `output_logits_soft_cap`). With `units` (vocabulary ids), only those logits [K, pos,
    len(units)]: the same ln_final and soft cap, TransformerLens' `Unembed` product restricted
    to those columns of W_U (a chain reads 1,024 of gpt2's 50,257: 2% of the work); a model
    whose unembedding is another module gets the whole pass, then the columns."""
    if units is not None and type(getattr(model, "unembed", None)).__name__ == "Unembed":
        try:
            from transformer_lens.utilities.activation_functions import apply_softcap
        except ImportError:
            apply_softcap = None
        if apply_softcap is not None:
            x = model.ln_final(resid_final) if model.cfg.normalization_type is not None \
                else resid_final
            idx = torch.as_tensor(units, device=x.device)
            w, b = model.unembed.W_U.index_select(1, idx), model.unembed.b_U.index_select(0, idx)
            return apply_softcap(torch.nn.functional.linear(x, w.T.contiguous(), b),
                                 model.cfg.output_logits_soft_cap)
    logits = model(resid_final, start_at_layer=model.cfg.n_layers)
    return logits if units is None else logits[..., list(units)]


def transformer_chain(model, tokens: torch.Tensor, sites: list[str] | None = None,
                      positions: list[int] | None = None, sae=None, sae_max_units: int = 64,
                      samples: int = 512, seed: int = 0, logits_position: int = -1,
                      max_logit_units: int = 1024, max_dim: int = 1024,
                      batch_size: int = 128, output_observations: torch.Tensor | None = None,
                      units=None, *, progress=None) -> Chain:
    """Chain of a TransformerLens HookedTransformer on real inputs `tokens` [N, ctx].

    progress: optional `estimators.progress` callback for the real activations' batches
    (what it raises, e.g. `Cancelled`, propagates; nothing half-computed is cached).
    Refuses (conformance.EngineUnsupported, a ValueError with one line) a model on which the
    activation engine's conformance check fails (`estimators.activation.conformance`); the
    arguments are those of `build_transformer_chain`."""
    from estimators import conformance

    conformance.require(model, "activation")
    return build_transformer_chain(
        model, tokens, sites=sites, positions=positions, sae=sae, sae_max_units=sae_max_units,
        samples=samples, seed=seed, logits_position=logits_position,
        max_logit_units=max_logit_units, max_dim=max_dim, batch_size=batch_size,
        output_observations=output_observations, units=units, progress=progress)


def build_transformer_chain(model, tokens: torch.Tensor, sites: list[str] | None = None,
                            positions: list[int] | None = None, sae=None,
                            sae_max_units: int = 64, samples: int = 512, seed: int = 0,
                            logits_position: int = -1, max_logit_units: int = 1024,
                            max_dim: int = 1024, batch_size: int = 128,
                            output_observations: torch.Tensor | None = None,
                            units=None, *, progress=None) -> Chain:
    """`transformer_chain` without the conformance check (the check itself builds chains with
    it). Chain of a TransformerLens HookedTransformer on real inputs `tokens` [N, ctx].

    sites: site names (sites.py); default: the residual stream at every block boundary
      (blocks.0.hook_resid_pre, blocks.{l}.hook_resid_post), the SAE's site when `sae` is given,
      and logits@<logits_position>. blocks.0.hook_resid_pre is always the input site; its
      Gaussian is fitted from the real embeddings of `tokens`.
    positions: positions modelled at residual/SAE/MLP sites (default `default_positions`).
    sae: a sae_lens SAE; its site models, at the same positions, the features that fire on the
      real inputs (most frequent first, at most sae_max_units); its reconstruction error on the
      real activations is recorded in chain.info["sae"].
    samples: K, samples per sampled transition.
    S(Y|π) (accounting.py) codes the logits site's real values, continuous at ε = LOGITS_EPSILON
      (`with_output_code` switches the code); output_observations: [N] tokens (e.g. the task's
      labels) to score by the argmax code instead.
    units: a unit spec (`scale.parse_units`: "first:64", "top-variance:64", "3,17,42",
      "firing:32", or a list of such strings, or a `scale.UnitSpec`): the residual sites model
      only those units of d_model (the rest held at the real activations), the SAE site the
      `firing:K` most frequent features. None: every residual unit, sae_max_units features.
    Real activations come from the shared cache (`estimators.activation_cache.activations`);
    the logits site's from the cached final residual stream through the model's own tail.
    """
    from estimators.activation import scale
    from estimators import sae_ops
    from estimators.loading import sae_hook_name

    cfg = model.cfg
    dev = torch.device(cfg.device) if cfg.device is not None else tokens.device
    dtype = torch.float64
    mdtype = cfg.dtype
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [n, ctx], not {tuple(tokens.shape)}")
    tokens = tokens.to(dev)
    N, ctx = tokens.shape
    if N < 2:
        raise ValueError("need at least 2 real inputs to fit the input distribution")
    if int(tokens.max()) >= cfg.d_vocab or int(tokens.min()) < 0:
        raise ValueError(f"token ids must lie in 0..{cfg.d_vocab - 1}")
    L = cfg.n_layers
    d_model = cfg.d_model
    pos = [_norm_pos(p, ctx) for p in (positions if positions is not None
                                        else default_positions(ctx, d_model, max_dim,
                                                               logits_position))]
    if len(set(pos)) != len(pos):
        raise ValueError("positions repeat")
    lpos = _norm_pos(logits_position, ctx)

    # ---- which sites ------------------------------------------------------------------
    sae_hook = sae_hook_name(sae) if sae is not None else None
    if sites is None:
        names = [resid_site_name(b, L) for b in range(L + 1)]
        if sae_hook is not None:
            names.append(f"sae:{sae_hook}")
        names.append(f"logits@{logits_position}")
    else:
        names = list(dict.fromkeys(s.strip() for s in sites))
    boundaries = {0}
    mlp_layers: list[int] = []
    sae_site = None
    logits_site = None
    for n in names:
        kind, info = parse_site_name(n)
        if kind == "resid":
            if not 0 <= info["layer"] < L:
                raise ValueError(f"site {n}: the model has blocks 0..{L - 1}")
            boundaries.add(info["boundary"])
        elif kind == "mlp":
            if not 0 <= info["layer"] < L:
                raise ValueError(f"site {n}: the model has blocks 0..{L - 1}")
            if cfg.attn_only:
                raise ValueError(f"site {n}: this model is attention-only (no MLPs)")
            if n not in model.hook_dict:
                raise ValueError(f"site {n}: this model has no such hook (its MLPs are not "
                                 f"TransformerLens' standard MLP)")
            mlp_layers.append(info["layer"])
        elif kind == "sae":
            if sae is None:
                raise ValueError(f"site {n} needs an SAE (none loaded)")
            if info["hook"] != sae_hook:
                raise ValueError(f"site {n}: the loaded SAE reads {sae_hook}")
            sae_site = n
        elif kind == "logits":
            logits_site = n
            lpos = _norm_pos(info["position"], ctx)
        else:
            raise ValueError(f"site {n} is a plain-MLP site, not a transformer site")
    if logits_site is not None:
        boundaries.add(L)
        if lpos not in pos:
            raise ValueError(f"{logits_site} reads position {lpos}, which the residual sites do "
                             f"not model (positions {pos})")
    sae_boundary = _resid_hook_boundary(sae_hook) if sae_site else None
    if sae_site is not None and sae_boundary is not None:
        boundaries.add(sae_boundary)
    boundaries_sorted = sorted(boundaries)

    unit_spec = units if isinstance(units, scale.UnitSpec) else scale.parse_units(units)
    if unit_spec.sae_firing is not None:
        if sae is None:
            raise ValueError("--units firing:K needs an SAE site (load an SAE)")
        sae_max_units = unit_spec.sae_firing

    # ---- ground truth: the shared activation cache -----------------------------------------
    resid_hooks = {b: ("blocks.0.hook_resid_pre" if b == 0 else f"blocks.{b - 1}.hook_resid_post")
                   for b in range(L + 1)}
    hooks_needed = set(resid_hooks.values()) | {f"blocks.{l}.mlp.hook_post" for l in mlp_layers}
    if sae_site is not None:
        if sae_hook not in model.hook_dict:
            raise ValueError(f"the SAE reads hook {sae_hook!r}, which this model does not have")
        hooks_needed.add(sae_hook)
    real_t = _real_activations(model, tokens, sorted(hooks_needed), mdtype, dev, progress)
    with torch.no_grad():
        logits_all = torch.cat([read_logits(model, real_t[resid_hooks[L]][s:s + batch_size,
                                                                          lpos:lpos + 1])[:, 0]
                                for s in range(0, N, batch_size)]).to(dtype)  # [N, vocab]
    pos_t = torch.tensor(pos, device=dev)

    all_pos = pos == list(range(ctx))

    def take(acts: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """[n, ctx, width] → [n, |p|·|u|] (position-major)."""
        if acts.dim() == 4:
            acts = acts.flatten(-2)
        if p is pos_t and all_pos:
            sub = acts
        else:
            sub = acts[:, p]
        if len(u) != acts.shape[-1] or bool((u != torch.arange(len(u), device=u.device)).any()):
            sub = sub[:, :, u]
        return sub.reshape(sub.shape[0], -1)

    site_objs: list[Site] = []
    empirical: dict[str, torch.Tensor] = {}
    chosen = scale.resolve_resid_units(
        unit_spec, d_model, [real_t[resid_hooks[b]][:, pos_t].flatten(1)
                             for b in boundaries_sorted]
        if unit_spec.resid and unit_spec.resid[0] == "top-variance" else None)
    full_units = chosen is None or len(chosen) == d_model
    all_units = tuple(range(d_model)) if full_units else chosen
    u_model = torch.arange(d_model, device=dev) if full_units else \
        torch.tensor(all_units, device=dev)

    def add_site(site: Site, values: torch.Tensor):
        site_objs.append(site)
        empirical[site.name] = values.to(dtype)

    # SAE units & reconstruction error
    sae_units = None
    sae_info = None
    if sae_site is not None:
        with torch.no_grad():  # sae_lens' encode + decode as a pair, in the hook's shape
            xs = real_t[sae_hook][:, pos_t]
            lat, recon = sae_ops.encode_decode(sae, xs)
            xs, recon = xs.flatten(2).double(), recon.flatten(2).double()
            err = ((recon - xs) ** 2).sum(-1)
            tot = ((xs - xs.mean(0, keepdim=True)) ** 2).sum(-1)
            fire = (lat != 0).double().mean((0, 1))
        order_ = torch.argsort(fire, descending=True)
        k = max(1, min(sae_max_units, int((fire > 0).sum())))
        sae_units = tuple(sorted(int(i) for i in order_[:k]))
        sae_info = {"hook": sae_hook, "d_sae": int(sae.cfg.d_sae), "units": list(sae_units),
                    "reconstruction_mse": float(err.mean()),
                    "fraction_variance_unexplained": float(err.sum() / tot.sum().clamp_min(1e-30)),
                    "positions": pos, "firing_features": int((fire > 0).sum())}
    sae_u_t = torch.tensor(sae_units, device=dev) if sae_units else None

    # sites in chain order, with their step structure: chain_nodes = list of (site_idx)
    chain_idx: list[int] = []
    readouts_for_block: dict[int, list[int]] = {}
    for b in boundaries_sorted:
        hook = resid_hooks[b]
        add_site(Site(resid_site_name(b, L), "resid", hook, tuple(pos), all_units, d_model),
                 take(real_t[hook], pos_t, u_model))
        chain_idx.append(len(site_objs) - 1)
        if sae_site is not None and sae_boundary == b:
            with torch.no_grad():
                lat = sae_ops.encode(sae, real_t[sae_hook])
            add_site(Site(sae_site, "sae", sae_hook, tuple(pos), sae_units, int(sae.cfg.d_sae)),
                     take(lat, pos_t, sae_u_t))
            chain_idx.append(len(site_objs) - 1)
        # read-out sites inside the blocks that follow boundary b are added after the step's
        # target is known (below)
    for l in sorted(set(mlp_layers)):
        d_mlp = int(real_t[f"blocks.{l}.mlp.hook_post"].shape[-1])
        readouts_for_block.setdefault(l, []).append(
            len(site_objs))
        add_site(Site(f"blocks.{l}.mlp.hook_post", "mlp", f"blocks.{l}.mlp.hook_post",
                      tuple(pos), tuple(range(d_mlp)), d_mlp, role="readout"),
                 take(real_t[f"blocks.{l}.mlp.hook_post"], pos_t,
                      torch.arange(d_mlp, device=dev)))
    if sae_site is not None and sae_boundary is None:
        l = _hook_layer(sae_hook)
        if l is None:
            raise ValueError(f"cannot place an SAE at {sae_hook!r}: not inside a block")
        with torch.no_grad():
            lat = sae_ops.encode(sae, real_t[sae_hook])
        readouts_for_block.setdefault(l, []).append(len(site_objs))
        add_site(Site(sae_site, "sae", sae_hook, tuple(pos), sae_units, int(sae.cfg.d_sae),
                      role="readout"), take(lat, pos_t, sae_u_t))
    if logits_site is not None:
        V = int(logits_all.shape[-1])
        units = tuple(range(min(V, max_logit_units)))
        add_site(Site(logits_site, "logits", "logits", (lpos,), units, V),
                 logits_all[:, list(units)])
        chain_idx.append(len(site_objs) - 1)

    # ---- bases: real activations of K inputs, where a site does not model -----------------
    K = int(samples)
    if K < 2:
        raise ValueError("samples (K) must be at least 2")
    base_rows = torch.arange(K, device=dev) % N
    base_resid = {b: real_t[resid_hooks[b]][base_rows].to(mdtype) for b in boundaries_sorted}
    extras = block_extras(model, tokens[base_rows])
    base_lat = None
    if sae_site is not None and sae_boundary is not None:
        with torch.no_grad():
            base_lat = sae_ops.encode(sae, real_t[sae_hook][base_rows])

    def boundary_of(site: Site) -> int:
        if site.kind == "resid":
            return _resid_hook_boundary(site.hook)
        if site.kind == "sae":
            return sae_boundary
        return L

    windows = causal_windows(model, extras, base_resid, pos, lpos if logits_site is not None
                             else None, [(boundary_of(site_objs[pi]),
                                          boundary_of(site_objs[ci]), site_objs[ci].kind)
                                         for pi, ci in zip(chain_idx[:-1], chain_idx[1:])])
    g = torch.Generator(device="cpu")
    steps: list[Step] = []
    n_heads = cfg.n_heads
    d_head = cfg.d_head
    d_mlp_cfg = 0 if cfg.attn_only else (cfg.d_mlp or 0)

    def block_flops(n_blocks: int) -> float:
        per_tok = 2 * d_model * n_heads * d_head * 4 + 2 * 2 * n_heads * ctx * d_head \
            + 2 * 2 * d_model * d_mlp_cfg
        return float(n_blocks * K * ctx * per_tok)

    for si, (pi, ci) in enumerate(zip(chain_idx[:-1], chain_idx[1:])):
        parent, child = site_objs[pi], site_objs[ci]
        b0, b1 = boundary_of(parent), boundary_of(child)
        blocks = list(range(b0, b1)) if child.kind != "logits" else list(range(b0, L))
        children = [ci] + [r for l in blocks for r in readouts_for_block.get(l, [])]
        g.manual_seed(int(seed) * 1_000_003 + si)
        z = torch.randn(K, parent.dim, generator=g, dtype=dtype).to(dev)

        def fn(x: torch.Tensor, parent=parent, children=children, blocks=blocks, b0=b0):
            # x [K, d_parent] (float64) → list of [K, d_child]
            kx = x.shape[0]
            if parent.kind == "resid" and all_pos and full_units:
                resid = x.view(kx, ctx, d_model).to(mdtype)
            elif parent.kind == "resid" and full_units:
                resid = tile_rows(base_resid[b0], kx).clone()
                resid[:, pos_t] = x.view(kx, len(pos), d_model).to(mdtype)
            elif parent.kind == "resid":  # a unit subset: the other units stay real
                resid = tile_rows(base_resid[b0], kx).clone()
                sub = resid[:, pos_t]
                sub[:, :, u_model] = x.view(kx, len(pos), len(all_units)).to(mdtype)
                resid[:, pos_t] = sub
            else:  # SAE parent: write latents, decode at the modelled positions
                lat = tile_rows(base_lat, kx).clone()
                sub = lat[:, pos_t]
                sub[:, :, sae_u_t] = x.view(kx, len(pos), len(sae_units)).to(lat.dtype)
                lat = lat.clone()
                lat[:, pos_t] = sub
                resid = tile_rows(base_resid[b0], kx).clone()
                # decoded with the normalisation statistics of the real activations replaced
                real_rows = real_t[sae_hook][tile_rows(base_rows, kx)]
                resid[:, pos_t] = sae_ops.decode_with_statistics_of(
                    sae, real_rows[:, pos_t], lat[:, pos_t]).to(mdtype)
            captured: dict[str, torch.Tensor] = {}
            fwd_hooks = []
            for r in children[1:]:
                h = site_objs[r].hook

                def grab(act, hook, h=h):
                    captured[h] = act
                    return act
                fwd_hooks.append((h, grab))
            win = windows.get(b0) if blocks else None
            p_read, l_read = pos_t, lpos
            with model.hooks(fwd_hooks=fwd_hooks):
                out = None
                if win is not None:  # only positions lo..hi−1, earlier keys/values cached
                    try:
                        out = win.run(resid)
                        p_read, l_read = pos_t - win.lo, lpos - win.lo
                    except Exception:  # noqa: BLE001 - a config the cache does not serve:
                        windows.pop(b0, None)  # the whole context, from now on
                resid = out if out is not None else run_blocks(
                    model, resid, blocks, {k: tile_rows(v, kx) for k, v in extras.items()})
            outs = []
            for c in children:
                s = site_objs[c]
                if s.kind == "resid":
                    outs.append(take(resid, p_read, u_model))
                elif s.kind == "sae" and s.role == "chain":
                    lat = sae_ops.encode(sae, resid)
                    outs.append(take(lat, p_read, sae_u_t))
                elif s.kind == "logits":
                    lg = read_logits(model, resid[:, l_read:l_read + 1], list(s.units))
                    outs.append(lg[:, 0])
                elif s.kind == "sae":  # read-out SAE at a hook inside a block
                    outs.append(take(sae_ops.encode(sae, captured[s.hook]), p_read, sae_u_t))
                else:  # MLP hidden read-out
                    outs.append(take(captured[s.hook], p_read,
                                     torch.arange(s.width, device=dev)))
            return [o.to(dtype) for o in outs]

        def run(parent_g: MaskedGaussian, fn=fn, z=z):
            x = parent_g.sample(z)
            return [Moments.from_samples(y) for y in fn(x)]

        def run_many(parents: list[MaskedGaussian], fn=fn, z=z):
            # C candidates' samples stacked: row c·K + k is sample k of candidate c, completed
            # by the same real input as in `run` (tile_rows), so each slice equals its own run
            ys = fn(torch.cat([p.sample(z) for p in parents]))
            k = int(z.shape[0])
            return [[Moments.from_samples(y[c * k:(c + 1) * k]) for y in ys]
                    for c in range(len(parents))]

        def flops(parent_g: MaskedGaussian, blocks=blocks, parent=parent, children=children,
                  child=child):
            f = 2.0 * K * sum(len(ix) ** 2 for ix, _, _ in parent_g.blocks) \
                + block_flops(len(blocks))  # sampling z·Lᵀ per block, then the real blocks
            if parent.kind == "sae" or any(site_objs[c].kind == "sae" for c in children):
                f += 2.0 * K * len(pos) * d_model * int(sae.cfg.d_sae)
            if child.kind == "logits":
                f += 2.0 * K * d_model * int(cfg.d_vocab_out)
            return f

        desc = f"{parent.name} → {child.name}: " + (
            f"blocks {blocks[0]}..{blocks[-1]}" if blocks else "") + \
            (" + ln_final/unembed/soft cap" if child.kind == "logits" else "") + f", K={K} samples"
        steps.append(Step(pi, children, run, flops, sampled=True, description=desc,
                          transition=fn, run_many=run_many))

    input_mean, input_cov = fit_gaussian(empirical[site_objs[0].name])
    out_site = site_objs[chain_idx[-1]]
    if out_site.kind == "logits" and output_observations is not None:
        obs = output_observations.to(dev).long()
        if obs.shape != (N,):
            raise ValueError(f"output observations must be [N={N}] token ids")
        out_spec = OutputSpec(out_site.name, "argmax", obs)
    elif out_site.kind == "logits":  # the model's own logits, continuous (accounting.py)
        out_spec = OutputSpec(out_site.name, "continuous", empirical[out_site.name],
                              epsilon=LOGITS_EPSILON)
    else:
        out_spec = OutputSpec(out_site.name, "continuous", empirical[out_site.name])
    info = {"model": getattr(cfg, "model_name", "transformer"), "n_layers": L,
            "d_model": d_model, "n_ctx": ctx, "positions": pos, "samples": K,
            "logits_position": lpos}
    if not full_units or unit_spec.sae_firing is not None:
        info["units"] = {**unit_spec.to_dict(), "resid_units": len(all_units)}
    if sae_info is not None:
        info["sae"] = sae_info
    return Chain(site_objs, steps, input_mean, input_cov, empirical, out_spec, dev,
                 info=info, n_inputs=N)


def _real_activations(model, tokens: torch.Tensor, hooks: list[str], mdtype, dev,
                      progress=None) -> dict[str, torch.Tensor]:
    """{hook: [N, ctx, ...]} real activations on `dev`, from the shared activation cache
    (computed once per model, tokens, hook and dtype; `estimators.activation_cache`)."""
    from estimators import activation_cache

    acts = activation_cache.activations(model, tokens, hooks, dtype=mdtype, progress=progress)
    return {h: a.to(dev) for h, a in acts.items()}


def with_output_code(chain: Chain, code: str, epsilon: float | None = None) -> Chain:
    """The same chain (sites, transitions, real activations shared) with S(Y|π) scoring its
    output site by `code` (accounting.py): "continuous" (the real values at ε per coordinate;
    `epsilon` None keeps the chain's, else LOGITS_EPSILON for a chain that had argmax
    observations) or "argmax" (the model's argmax over a logits site's units). Raises
    ValueError for another code, a non-positive ε or the argmax code on a non-logits site."""
    site = chain.site(chain.output.site)
    if code == "argmax":
        if site.kind != "logits":
            raise ValueError(f"the argmax code needs a logits output site, not {site.name}")
        spec = OutputSpec(site.name, "argmax", chain.empirical[site.name].argmax(-1))
    elif code == "continuous":
        eps = (epsilon if epsilon is not None else chain.output.epsilon
               if chain.output.kind == "continuous" else LOGITS_EPSILON)
        if not (isinstance(eps, (int, float)) and eps > 0 and eps < float("inf")):
            raise ValueError(f"ε must be a positive number, not {eps!r}")
        spec = OutputSpec(site.name, "continuous", chain.empirical[site.name], float(eps))
    else:
        raise ValueError(f"unknown output code {code!r}; use 'continuous' or 'argmax'")
    return replace(chain, output=spec)


def chain_for_zoo(model_or_name, sae=None, n_inputs: int = 512, samples: int = 512,
                  seed: int = 0, sites: list[str] | None = None,
                  positions: list[int] | None = None, device=None, use_labels: bool = False,
                  **kwargs) -> Chain:
    """`transformer_chain` on a zoo model's own data: `zoo.get(name).sample(n_inputs, seed)`.

    model_or_name: a `LoadedModel` of kind "zoo" or a zoo name (loaded on `device`). The logits
    site reads the entry's label position when it has one, else the last position; with
    use_labels the observations scored by S(Y|π) are the task labels (argmax code) instead of
    the model's logits (continuous code).
    """
    from estimators import zoo
    from estimators.loading import LoadedModel

    if isinstance(model_or_name, LoadedModel):
        if model_or_name.kind != "zoo":
            raise ValueError("chain_for_zoo needs a zoo model; use transformer_chain")
        entry, model = model_or_name.zoo_entry, model_or_name.model
    else:
        entry = zoo.get(model_or_name)
        model = entry.load_model(device or "cpu")
    batch = entry.sample(int(n_inputs), seed=int(seed))
    lpos = entry.label_position if entry.label_position is not None else -1
    obs = batch.labels if (use_labels and batch.labels is not None) else None
    return transformer_chain(model, batch.tokens, sites=sites, positions=positions, sae=sae,
                             samples=samples, seed=seed, logits_position=lpos,
                             output_observations=obs, **kwargs)
