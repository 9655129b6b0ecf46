"""Behaviours: the rare output whose probability is estimated, read at the last position.

Every behaviour reads one *site* at the last input position: the input of the unembedding
(`UNEMBED_IN`, the final residual after `ln_final`, so logits are exactly `a @ W_U + b_U`) or a
TransformerLens hook point. From the activation a [B, d] it gives

- `value`: the per-input quantity whose expectation under D is the target probability — an
  indicator (0/1) for argmax and threshold behaviours, the sampling probability for
  `SampledProbability`;
- `score`: a differentiable real number that grows as the behaviour gets closer (the target
  logit, or the thresholded projection), used by the gradient-guided estimators;
- `constraints(model)`: for indicator behaviours, (G [d, m], h [m]) with
  value = 1[all(a @ G + h > 0)] — a set of linear inequalities in a. QLD, GLD and the
  activation-model estimate need this; behaviours without it raise `BehaviourError` there.

Ties: argmax uses strict inequalities (t must beat every other token), so an exact tie counts as
a miss, the same convention in enumeration, sampling and the linear constraints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

UNEMBED_IN = "unembed.in"
GUIDES = ("score", "margin")  # the score that guides ITGIS/MHIS (Behaviour.guided)


class BehaviourError(ValueError):
    """A behaviour that is malformed or not supported by the requested method."""


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def vocab_out(model) -> int:
    return int(getattr(model.cfg, "d_vocab_out", -1) if getattr(model.cfg, "d_vocab_out", -1)
               not in (None, -1) else model.cfg.d_vocab)


def unembed_weights(model) -> tuple[Tensor, Tensor]:
    W = model.W_U
    b = getattr(model, "b_U", None)
    if b is None:
        b = torch.zeros(W.shape[1], dtype=W.dtype, device=W.device)
    return W, b


def soft_cap(model) -> float | None:
    """The model's output logit soft cap c (logits = c·tanh(raw/c)), or None when off."""
    c = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(c) if c is not None and c > 0 else None


def final_logits(model, a: Float[Tensor, "B d"]) -> Float[Tensor, "B V"]:
    """The model's logits from the unembedding's input a: a @ W_U + b_U, then the output soft
    cap c·tanh(·/c) where the config sets one (TransformerLens' own `apply_softcap`), so they
    equal `model(tokens)[:, -1]` up to rounding. Computed in a's dtype."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    W, b = unembed_weights(model)
    raw = a @ W.to(a.dtype) + b.to(a.dtype)
    return apply_softcap(raw, soft_cap(model))


def raw_threshold(model, threshold: float) -> float:
    """The raw-logit threshold equivalent to `capped logit > threshold`: c·atanh(θ/c) for
    |θ| < c (the cap is strictly increasing); +inf when θ ≥ c (never), −inf when θ ≤ −c
    (always); θ itself without a cap."""
    import math

    c = soft_cap(model)
    if c is None:
        return float(threshold)
    if threshold >= c:
        return math.inf
    if threshold <= -c:
        return -math.inf
    return c * math.atanh(threshold / c)


# -------------------------------------------------------------------------- running the model

def _site_activation(model, tokens: Int[Tensor, "B k"], site: str,
                     onehot: Tensor | None = None) -> Float[Tensor, "B d"]:
    """The site's activation at the last position; with `onehot` [B, k, V] the embedding is
    `onehot @ W_E` so the result is differentiable in the one-hot input."""
    store: dict[str, Tensor] = {}
    fwd_hooks = []
    handles = []
    if onehot is not None:
        W_E = model.W_E

        def embed_hook(act, hook):
            return (onehot.to(W_E.dtype) @ W_E).to(act.dtype)
        fwd_hooks.append(("hook_embed", embed_hook))
    if site == UNEMBED_IN:
        # the unembedding's input is the final norm's output (the last block's output without
        # one): read there with return_type=None, so the [B, k, V] logits at every position are
        # never formed (at a 50,257-token vocabulary they dominated the memory of a pass)
        if model.cfg.normalization_type is not None:
            def post(module, args, out):
                store["a"] = out[:, -1, :]
            handles.append(model.ln_final.register_forward_hook(post))
        else:
            def last(act, hook):
                store["a"] = act[:, -1]
                return act
            fwd_hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", last))
        stop = None
    else:
        if site not in model.hook_dict:
            raise BehaviourError(f"the model has no hook point {site!r}")

        def grab(act, hook):
            store["a"] = act[:, -1]
            return act
        fwd_hooks.append((site, grab))
        stop = _stop_layer(model, site)
    try:
        model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=stop,
                             return_type=None)
    finally:
        for h in handles:
            h.remove()
    a = store["a"]
    return a.reshape(a.shape[0], -1)


def _stop_layer(model, site: str) -> int | None:
    """Stop the forward pass after the block that writes `site` (cheaper for early hooks)."""
    if site.startswith("blocks."):
        layer = int(site.split(".")[1])
        return layer + 1 if layer + 1 < model.cfg.n_layers else None
    if site.startswith(("hook_embed", "hook_pos_embed")):
        return 0 if model.cfg.n_layers > 0 else None
    return None


def constraint_margin(a: Float[Tensor, "B d"], G: Float[Tensor, "d m"], h: Float[Tensor, "m"]
                      ) -> Float[Tensor, "B"]:
    """min_j (a·G + h)_j, in a's dtype and on a's device: > 0 exactly where every linear
    inequality of `Behaviour.constraints` holds (for argmax, logit_t − max_{u≠t} logit_u)."""
    return (a @ G.to(a) + h.to(a)).min(-1).values


def site_activations(model, tokens: Int[Tensor, "B k"], site: str) -> Float[Tensor, "B d"]:
    with torch.no_grad():
        return _site_activation(model, tokens, site).float()


# ------------------------------------------------------------------------------- behaviours

@dataclass
class Behaviour:
    kind: ClassVar[str] = ""
    is_indicator: ClassVar[bool] = True

    def site(self) -> str:
        return UNEMBED_IN

    def validate(self, model) -> None:
        """Raise BehaviourError if this behaviour does not fit the model."""

    def readout(self, model, a: Float[Tensor, "B d"]) -> tuple[Tensor, Tensor]:
        """(value [B], score [B]) from the site activation."""
        raise NotImplementedError

    def guided(self, model, a: Float[Tensor, "B d"], guide: str = "score"
               ) -> tuple[Tensor, Tensor]:
        """(value [B], guiding score [B]): `readout`, with the score replaced by the one named
        by `guide` where the behaviour defines it (GUIDES; Argmax's "margin"). "score" (and
        any guide a behaviour does not define) is the readout's own score."""
        return self.readout(model, a)

    def constraints(self, model) -> tuple[Float[Tensor, "d m"], Float[Tensor, "m"]]:
        raise BehaviourError(f"behaviour {self.kind!r} is not a set of linear inequalities "
                             f"at one site; QLD, GLD and the activation model need one")

    # -- model calls -----------------------------------------------------------------------
    def evaluate(self, model, tokens: Int[Tensor, "B k"]) -> tuple[Tensor, Tensor]:
        """(value, score), no gradient. One model call per input."""
        with torch.no_grad():
            a = _site_activation(model, tokens, self.site())
            v, s = self.readout(model, a.float())
        return v.double(), s.double()

    def evaluate_site(self, model, tokens: Int[Tensor, "B k"], guide: str = "score"
                      ) -> tuple[Tensor, Tensor, Float[Tensor, "B d"]]:
        """(value, score, site activation [B, d] float32), no gradient: `evaluate` that also
        returns the activation it read (the zero-hit fallback fits QLD/GLD on it at no extra
        call); the score is the one `guide` names (`guided`). One model call per input."""
        with torch.no_grad():
            a = _site_activation(model, tokens, self.site()).float()
            v, s = self.guided(model, a, guide)
        return v.double(), s.double(), a

    def evaluate_with_grad(self, model, tokens: Int[Tensor, "B k"], guide: str = "score"
                           ) -> tuple[Tensor, Tensor, Float[Tensor, "B k V"]]:
        """(value, score, d score / d one-hot input), the score the one `guide` names
        (`guided`). Counted as two model calls per input (forward + backward)."""
        V = int(model.cfg.d_vocab)
        onehot = torch.nn.functional.one_hot(tokens, V).to(model.W_E.dtype)
        onehot.requires_grad_(True)
        with torch.enable_grad():
            a = _site_activation(model, tokens, self.site(), onehot=onehot)
            v, s = self.guided(model, a.float(), guide)
            (grad,) = torch.autograd.grad(s.sum(), onehot)
        return v.detach().double(), s.detach().double(), grad.detach().float()

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def label(self) -> str:
        return self.kind


def _check_target(model, target: int) -> None:
    V = vocab_out(model)
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < V:
        raise BehaviourError(f"target token {target!r} is outside the output vocabulary "
                             f"(0..{V - 1})")


@dataclass
class Argmax(Behaviour):
    """Token `target` is the argmax of the last-position logits (temperature-0 sampling)."""

    target: int = 0
    kind: ClassVar[str] = "argmax"

    def validate(self, model) -> None:
        _check_target(model, self.target)

    def _target_and_others(self, model, a) -> tuple[Tensor, Tensor, Tensor]:
        """(value [B], logit_t [B], the other logits [B, V] with t at −inf)."""
        logits = final_logits(model, a)
        lt = logits[:, self.target]
        others = logits.clone()
        others[:, self.target] = -torch.inf
        return (lt > others.max(-1).values).to(a.dtype), lt, others

    def readout(self, model, a):
        value, lt, _ = self._target_and_others(model, a)
        return value, lt

    def guided(self, model, a, guide="score"):
        """guide "margin": logit_t − logsumexp_{u≠t} logit_u, a smooth version of the argmax
        margin logit_t − max_{u≠t} logit_u (> 0 on the behaviour roughly), so a tilt along its
        gradient raises t *against* its competitors; "score": the target logit (Wu & Hilton
        2024's choice)."""
        if guide != "margin":
            return self.readout(model, a)
        value, lt, others = self._target_and_others(model, a)
        return value, lt - torch.logsumexp(others, -1)

    def constraints(self, model):
        W, b = unembed_weights(model)
        W = W.detach().double()
        b = b.detach().double()
        t = self.target
        keep = torch.arange(W.shape[1], device=W.device) != t
        G = W[:, t:t + 1] - W[:, keep]
        h = b[t] - b[keep]
        return G, h

    def label(self) -> str:
        return f"argmax={self.target}"


@dataclass
class SampledProbability(Behaviour):
    """The probability of sampling `target` at temperature τ: softmax(logits/τ)_t, averaged
    over D (the expected probability). Not an indicator: QLD/GLD do not apply."""

    target: int = 0
    temperature: float = 1.0
    kind: ClassVar[str] = "sampled"
    is_indicator: ClassVar[bool] = False

    def __post_init__(self):
        if not self.temperature > 0:
            raise BehaviourError(f"temperature must be > 0, got {self.temperature}")

    def validate(self, model) -> None:
        _check_target(model, self.target)

    def readout(self, model, a):
        logits = final_logits(model, a)
        value = torch.softmax(logits / self.temperature, -1)[:, self.target]
        return value, logits[:, self.target]

    def label(self) -> str:
        return f"P(sample {self.target} | τ={self.temperature:g})"


@dataclass
class LogitThreshold(Behaviour):
    """The logit of `target` exceeds `threshold`."""

    target: int = 0
    threshold: float = 0.0
    kind: ClassVar[str] = "logit"

    def validate(self, model) -> None:
        _check_target(model, self.target)

    def readout(self, model, a):
        """value: the model's (soft-capped) logit_t > θ; score: the raw logit a·W_U[:, t] +
        b_U[t], which the cap maps monotonically (so it ranks inputs the same way and keeps
        its gradient where the cap saturates)."""
        W, b = unembed_weights(model)
        raw = a @ W[:, self.target].to(a.dtype) + b[self.target].to(a.dtype)
        lt = final_logits(model, a)[:, self.target] if soft_cap(model) is not None else raw
        return (lt > self.threshold).to(a.dtype), raw

    def constraints(self, model):
        """One inequality a·W_U[:, t] + b_U[t] − θ' > 0 with θ' = `raw_threshold(θ)` (the
        cap undone); a threshold at or above the cap is the empty set (0·a − 1 > 0), at or
        below −cap the whole space (0·a + 1 > 0)."""
        W, b = unembed_weights(model)
        G = W[:, self.target:self.target + 1].detach().double()
        theta = raw_threshold(model, self.threshold)
        if theta in (float("inf"), float("-inf")):
            return torch.zeros_like(G), torch.tensor([-1.0 if theta > 0 else 1.0],
                                                     dtype=torch.float64, device=G.device)
        h = (b[self.target].detach().double() - theta).reshape(1)
        return G, h

    def label(self) -> str:
        return f"logit[{self.target}] > {self.threshold:g}"


@dataclass
class DirectionThreshold(Behaviour):
    """a · direction + bias > threshold at a hook point (last position): a linear probe, or an
    SAE latent (see `sae_feature`)."""

    hook: str = ""
    direction: list[float] | None = None
    bias: float = 0.0
    threshold: float = 0.0
    name: str = "direction"
    kind: ClassVar[str] = "direction"

    def site(self) -> str:
        return self.hook

    def validate(self, model) -> None:
        if self.hook not in model.hook_dict:
            raise BehaviourError(f"the model has no hook point {self.hook!r}")
        if not self.direction:
            raise BehaviourError("a direction behaviour needs a direction vector")
        d = torch.tensor(self.direction, dtype=torch.float64)
        if not torch.isfinite(d).all():
            raise BehaviourError("the direction holds NaN or infinite values")

    def _w(self, device) -> Tensor:
        return torch.tensor(self.direction, dtype=torch.float32, device=device)

    def readout(self, model, a):
        w = self._w(a.device)
        if a.shape[1] != w.numel():
            raise BehaviourError(f"direction has {w.numel()} entries; {self.hook} has width "
                                 f"{a.shape[1]}")
        s = a @ w + self.bias
        return (s > self.threshold).to(a.dtype), s

    def constraints(self, model):
        G = torch.tensor(self.direction, dtype=torch.float64,
                         device=model_device(model))[:, None]
        h = torch.tensor([self.bias - self.threshold], dtype=torch.float64,
                         device=model_device(model))
        return G, h

    def label(self) -> str:
        return f"{self.name} > {self.threshold:g}"


def sae_feature(sae, feature: int, threshold: float = 0.0, hook: str | None = None,
                model=None) -> DirectionThreshold:
    """"SAE latent j > `threshold`" (threshold ≥ 0) as one linear inequality w·a + b > threshold
    at the SAE's hook (a flattened per position, as sae_lens flattens hook_z): the candidate
    form comes from sae_lens' encoder math (ReLU, JumpReLU threshold, gated gate/magnitude,
    apply_b_dec_to_input, rescale_acts_by_decoder_norm; `sae_ops.latent_linear_form`) and is
    then checked numerically against `sae.encode` on the model's real activations (Gaussian
    activations when `model` is None) and on points at the claimed boundary. Raises
    BehaviourError (one line) where they disagree — TopK ranks and layer_norm /
    constant_norm_rescale normalisation are not one linear threshold."""
    from estimators import sae_ops
    try:
        w, bias = sae_ops.require_linear_latent(sae, feature, threshold, model)
        if hook is None:
            hook = sae_ops.hook_name(sae)
    except sae_ops.SAEMismatch as e:
        raise BehaviourError(str(e)) from e
    return DirectionThreshold(hook=hook, direction=w.tolist(), bias=bias, threshold=threshold,
                              name=f"SAE feature {feature}")


def parse_direction(text: str | bytes) -> list[float]:
    """A probe direction from a file's text: a JSON list of numbers, a JSON object
    {"direction": [...]} (other keys ignored), or CSV / whitespace-separated numbers (one row,
    or one per line). Raises BehaviourError on anything else, an empty vector or a non-finite
    entry."""
    import math
    import re

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BehaviourError("the direction file is not UTF-8 text") from e
    text = text.strip()
    if not text:
        raise BehaviourError("the direction file is empty")
    if text[0] in "[{":
        try:
            from estimators.validation import loads_json
            obj = loads_json(text, "the direction file")
        except ValueError as e:  # size, depth or syntax: one line
            raise BehaviourError(str(e)) from None
        if isinstance(obj, dict):
            if "direction" not in obj:
                raise BehaviourError('a JSON object direction file needs a "direction" list')
            obj = obj["direction"]
        if not isinstance(obj, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj):
            raise BehaviourError("the direction must be a flat list of numbers")
        vals = [float(v) for v in obj]
    else:
        parts = [p for p in re.split(r"[,;\s]+", text) if p]
        try:
            vals = [float(p) for p in parts]
        except ValueError as e:
            raise BehaviourError(f"the direction file holds a non-number: {e}") from e
    if not vals:
        raise BehaviourError("the direction has no entries")
    if not all(math.isfinite(v) for v in vals):
        raise BehaviourError("the direction holds NaN or infinite values")
    return vals


def residual_hooks(model) -> list[str]:
    """The residual-stream hook points of the model, in order (all of width d_model)."""
    L = int(model.cfg.n_layers)
    return [h for l in range(L) for h in (f"blocks.{l}.hook_resid_pre",
                                           f"blocks.{l}.hook_resid_mid",
                                           f"blocks.{l}.hook_resid_post")
            if h in model.hook_dict]


def probe_direction(model, hook: str, direction: list[float] | None = None,
                    unit: int | None = None, threshold: float = 0.0,
                    bias: float = 0.0) -> DirectionThreshold:
    """A probe behaviour at a residual hook: a given direction, or one unit of the stream
    (direction = e_unit). Checks the hook and the width (d_model) up front."""
    if hook not in residual_hooks(model):
        raise BehaviourError(f"{hook!r} is not a residual-stream hook of this model; choose "
                             f"one of {', '.join(residual_hooks(model))}")
    d = int(model.cfg.d_model)
    if (direction is None) == (unit is None):
        raise BehaviourError("give either a direction vector or a unit of the residual stream")
    if unit is not None:
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < d:
            raise BehaviourError(f"unit {unit!r} is outside the residual stream (0..{d - 1})")
        direction = [0.0] * d
        direction[unit] = 1.0
        name = f"{hook}[{unit}]"
    else:
        if len(direction) != d:
            raise BehaviourError(f"the direction has {len(direction)} entries; the residual "
                                 f"stream has d_model = {d}")
        name = f"probe@{hook}"
    b = DirectionThreshold(hook=hook, direction=[float(v) for v in direction], bias=bias,
                           threshold=float(threshold), name=name)
    b.validate(model)
    return b


BEHAVIOURS: dict[str, type[Behaviour]] = {
    c.kind: c for c in (Argmax, SampledProbability, LogitThreshold, DirectionThreshold)}


def behaviour_from_dict(d: dict) -> Behaviour:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in BEHAVIOURS:
        raise BehaviourError(f"unknown behaviour kind {kind!r}; choose one of {list(BEHAVIOURS)}")
    try:
        return BEHAVIOURS[kind](**d)
    except TypeError as e:
        raise BehaviourError(f"bad fields for behaviour {kind!r}: {e}") from e


def parse_target(spec: Any, model, vocab: list[str] | None = None, loaded=None) -> int:
    """A target token given as an id (int or digits, or "id:<n>") or a token string: a label of
    `vocab` (zoo models), else one token of the model's tokenizer (`estimators.data.token_id`:
    GPT-2's ' the' or 'Ġthe'; `loaded`, a LoadedModel, finds tokenizer files in its folder)."""
    from estimators.data import token_id

    V = vocab_out(model)
    tid = None
    if isinstance(spec, int) and not isinstance(spec, bool):
        tid = spec
    elif isinstance(spec, str) and spec.startswith("id:") and spec[3:].isdigit():
        tid = int(spec[3:])
    elif isinstance(spec, str) and vocab is not None and spec in vocab:
        tid = vocab.index(spec)
    elif isinstance(spec, str) and spec.lstrip("-").isdigit():
        tid = int(spec)
    elif isinstance(spec, str) and vocab is None:
        tid = token_id(loaded if loaded is not None else model, spec)
    if tid is None:
        raise BehaviourError(f"target {spec!r} is not a token of this model "
                             f"({_target_hint(model, vocab, loaded, V)})")
    if not 0 <= tid < V:
        raise BehaviourError(f"target token id {tid} is outside the output vocabulary "
                             f"(0..{V - 1})")
    return tid


__all__ = ["Behaviour", "Argmax", "SampledProbability", "LogitThreshold", "DirectionThreshold",
           "sae_feature", "parse_direction", "probe_direction", "residual_hooks", "BEHAVIOURS", "behaviour_from_dict", "parse_target", "BehaviourError",
           "UNEMBED_IN", "site_activations", "model_device", "vocab_out", "final_logits",
           "raw_threshold", "soft_cap"]


def _target_hint(model, vocab, loaded, V: int) -> str:
    """What a target may be for this model: without a zoo vocabulary or a tokenizer only ids."""
    from estimators.data import DataError, model_tokenizer

    if vocab is None:
        try:
            model_tokenizer(model, loaded)
        except DataError:
            return f"it has no tokenizer: give the target as an id, id:0..id:{V - 1}"
    return f"give a token string or an id, id:0..id:{V - 1}"
