"""Applying a sae_lens SAE to a model's activations exactly as sae_lens does, and checking that
an SAE fits a model before anything runs.

The rules every SAE consumer in the workbench follows (sae_lens ≥ 6):

* **encode and decode are a pair on the same batch.** With `normalize_activations`
  "layer_norm" or "constant_norm_rescale", `sae.encode(x)` stores per-row statistics of x on the
  SAE object and `sae.decode(z)` consumes them (and deletes them). Decoding latents of one batch
  after encoding another, or decoding twice, is wrong or crashes. `encode_decode` and
  `decode_with_statistics_of` keep the pair together.
* **Activations go in in the hook's own shape.** With `reshape_activations` "hook_z", encode
  flattens [..., n_heads, d_head] → [..., n_heads·d_head] and decode restores [..., n_heads,
  d_head]; sae_lens remembers d_head from the first call, so a flattened input must never be
  passed (it would be taken as n_heads·d_head "heads" of width 1).
* **sae_lens casts the input to the SAE's dtype** (float16/bfloat16 SAEs compute in that dtype).
  Statistics over the results are accumulated in float64 by the callers (`model_info`).
* `normalize_activations` "expected_average_only_in" is the identity inside encode/decode at
  inference (sae_lens folds the scaling factor into the weights only for `from_pretrained`
  SAEs whose factor it knows); we apply the SAE as sae_lens does.

The width check is a trial encode + decode on the model's real activations at the SAE's hook
(`trial_check`): the SAE must give one latent vector of width d_sae per position and decode back
to the hook's per-position shape, with finite values. A hook_z SAE with d_in = n_heads·d_head and
`reshape_activations: "hook_z"` passes; one with d_in = d_head (which sae_lens would apply to
every head separately) is refused in one line.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TRIAL_INPUTS = 4  # random token sequences in the trial encode
TRIAL_POSITIONS = 16  # at most this many positions each


class SAEMismatch(ValueError):
    """The SAE does not fit the model (or an engine cannot use it); the message is one line."""


def hook_name(sae) -> str:
    """The TransformerLens hook the SAE reads (cfg.metadata.hook_name, or the older
    cfg.hook_name). Raises SAEMismatch when the config names none."""
    meta = getattr(sae.cfg, "metadata", None)
    name = getattr(meta, "hook_name", None) if meta is not None else None
    if not name:
        name = getattr(sae.cfg, "hook_name", None)
    if not name:
        raise SAEMismatch("the SAE's config names no hook (cfg.metadata.hook_name)")
    return name


def sae_dtype(sae) -> torch.dtype:
    """The dtype sae_lens computes in (that of its weights)."""
    return sae.W_dec.dtype


def describe(sae) -> str:
    """A short description of the SAE's kind, for messages: "jumprelu SAE (float16,
    normalize_activations=layer_norm, reshape hook_z)"."""
    cfg = sae.cfg
    arch = cfg.architecture() if hasattr(cfg, "architecture") else type(sae).__name__
    extra = [str(sae_dtype(sae)).replace("torch.", "")]
    norm = getattr(cfg, "normalize_activations", "none")
    if norm not in (None, "none"):
        extra.append(f"normalize_activations={norm}")
    if getattr(cfg, "reshape_activations", "none") == "hook_z":
        extra.append("reshape hook_z")
    if getattr(cfg, "apply_b_dec_to_input", True) is False:
        extra.append("apply_b_dec_to_input=False")
    return f"{arch} SAE ({', '.join(extra)})"


# --------------------------------------------------------------------------- encode / decode

def encode(sae, acts: Tensor) -> Tensor:
    """Latents [..., d_sae] (the SAE's dtype) of activations in the hook's own shape
    [..., *site_shape] through `sae.encode`. Use alone only when nothing is decoded after it."""
    return sae.encode(acts.to(sae.W_dec.device))


def encode_decode(sae, acts: Tensor) -> tuple[Tensor, Tensor]:
    """(latents [..., d_sae], reconstruction [..., *site_shape]) via sae_lens' encode and decode
    as a pair on this batch (normalisation statistics flow from one to the other)."""
    z = sae.encode(acts.to(sae.W_dec.device))
    return z, sae.decode(z)


def decode_with_statistics_of(sae, base_acts: Tensor, latents: Tensor) -> Tensor:
    """Decode `latents` [..., d_sae] with the normalisation statistics of the real activations
    `base_acts` [..., *site_shape] they replace (rows aligned): encode(base) then decode(latents),
    a pair on one batch. Without normalisation this is just `sae.decode(latents)`."""
    sae.encode(base_acts.to(sae.W_dec.device))
    return sae.decode(latents.to(sae.W_dec.device, sae_dtype(sae)))


def encode_decode_rows(sae, acts: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """`encode_decode` over rows [n, *site_shape] in chunks of `chunk` rows (each chunk a pair);
    returns (latents [n, d_sae], reconstruction [n, *site_shape])."""
    zs, xs = [], []
    for start in range(0, acts.shape[0], chunk):
        z, x_hat = encode_decode(sae, acts[start:start + chunk])
        zs.append(z)
        xs.append(x_hat)
    return torch.cat(zs), torch.cat(xs)


# ------------------------------------------------------------------------------- validation

def check_finite_weights(sae) -> None:
    """Raise SAEMismatch naming the first parameter that holds NaN or ±inf."""
    for name, p in sae.state_dict().items():
        if torch.is_tensor(p) and p.is_floating_point():
            bad = ~torch.isfinite(p)
            if bool(bad.any()):
                raise SAEMismatch(f"the SAE's weights are not finite: {name} holds "
                                  f"{int(bad.sum())} NaN/inf value(s) of {p.numel()}")


def real_activations(model, hook: str, n_inputs: int = TRIAL_INPUTS,
                     n_positions: int = TRIAL_POSITIONS, seed: int = 0) -> Tensor:
    """The model's activations at `hook` on `n_inputs` uniformly random token sequences of
    min(n_positions, n_ctx) tokens: [n_inputs, pos, *site_shape] (the model's dtype)."""
    if hook not in model.hook_dict:
        raise SAEMismatch(f"the SAE reads hook {hook!r}, which this model does not have")
    g = torch.Generator().manual_seed(int(seed))
    length = max(1, min(int(n_positions), int(model.cfg.n_ctx)))
    tokens = torch.randint(0, int(model.cfg.d_vocab), (int(n_inputs), length), generator=g)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=[hook])
    return cache[hook]


def _shape(s) -> str:
    return "[" + ", ".join(str(int(v)) for v in s) + "]"


def trial_check(sae, model, n_inputs: int = TRIAL_INPUTS, seed: int = 0) -> None:
    """Refuse (SAEMismatch, one line) an SAE that sae_lens cannot apply to this model's real
    activations at its hook: encode must give [batch, pos, d_sae] (one latent vector per
    position), decode must give back the hook's shape, and both must be finite. Also sets
    sae_lens' remembered d_head for hook_z SAEs from the real shape."""
    hook = hook_name(sae)
    acts = real_activations(model, hook, n_inputs, seed=seed)
    lead, site = tuple(acts.shape[:2]), tuple(acts.shape[2:])
    d_in, d_sae = int(sae.cfg.d_in), int(sae.cfg.d_sae)
    width = math.prod(site)
    reshape = getattr(sae.cfg, "reshape_activations", "none")
    hint = ""
    if len(site) == 2:
        hint = (f"; an SAE over whole positions of {hook} needs d_in = {site[0]}·{site[1]} = "
                f"{width} with reshape_activations 'hook_z'")
    where = f"at {hook!r}, where the model's activations have width {site[-1]}" + (
        f" (per-position shape {_shape(site)})" if len(site) > 1 else "")
    try:
        with torch.no_grad():
            z, x_hat = encode_decode(sae, acts)
    except Exception as e:  # noqa: BLE001 - sae_lens' own failure becomes our one line
        first = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise SAEMismatch(f"the SAE (d_in={d_in}, reshape_activations={reshape}) cannot encode "
                          f"the model's activations {where}: {first}{hint}") from e
    if tuple(z.shape) != lead + (d_sae,):
        raise SAEMismatch(
            f"the SAE expects d_in={d_in} {where}: it encodes each position into latents of "
            f"shape {_shape(z.shape[2:])}, not one vector of d_sae={d_sae}{hint}")
    if tuple(x_hat.shape) != tuple(acts.shape):
        raise SAEMismatch(f"the SAE's decode gives shape {_shape(x_hat.shape[2:])} per position "
                          f"{where}, not {_shape(site)}")
    if not bool(torch.isfinite(z).all()) or not bool(torch.isfinite(x_hat).all()):
        raise SAEMismatch(f"the {describe(sae)} gives NaN/inf latents or reconstructions on the "
                          f"model's real activations at {hook!r} (dtype overflow?)")


# ------------------------------------------------------- a latent as one linear threshold

_EPS = {torch.float64: 2.2e-16, torch.float32: 1.2e-7, torch.float16: 9.8e-4,
        torch.bfloat16: 7.8e-3}


def latent_linear_form(sae, feature: int, threshold: float) -> tuple[Tensor, float]:
    """The candidate linear form of "latent `feature` > `threshold`" (threshold ≥ 0):
    (w [d_in] float64, b) with latent_j(x) > thr ⟺ x_flat · w + b > thr, where x_flat is the
    hook's activation flattened per position (sae_lens' hook_z flattening order).

    From sae_lens' encoders, with x' = x − b_dec·[apply_b_dec_to_input] and u = x' · W_enc[:, j]:
      ReLU / TopK:  pre = s·u + b_enc (s = ‖W_dec[j]‖ with rescale_acts_by_decoder_norm, else 1),
                    relu(pre) > thr ⟺ pre > thr;
      JumpReLU:     relu(pre)·1[pre > θ_j] > thr ⟺ pre > max(thr, θ_j);
      gated:        1[u + b_gate > 0]·relu(e^{r_mag}·u + b_mag) > thr
                    ⟺ u > max(−b_gate, (thr − b_mag)·e^{−r_mag}).
    The offset between the effective threshold and `threshold` is folded into b, so the score
    x_flat·w + b is the (shifted) pre-activation. This is only a *candidate*: TopK ranks,
    normalize_activations and other architectures make it wrong, which `check_latent_form`
    detects numerically against `sae.encode`."""
    W_enc = sae.W_enc.detach().double()
    d_sae = int(W_enc.shape[1])
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise SAEMismatch(f"SAE feature {feature!r} out of range (0..{d_sae - 1})")
    if not threshold >= 0:
        raise SAEMismatch("an SAE feature threshold must be ≥ 0")
    j, thr = feature, float(threshold)
    u_w = W_enc[:, j]
    b_dec = sae.b_dec.detach().double()
    u_b = -float(b_dec @ u_w) if getattr(sae.cfg, "apply_b_dec_to_input", True) else 0.0
    b_gate, r_mag = getattr(sae, "b_gate", None), getattr(sae, "r_mag", None)
    if b_gate is not None and r_mag is not None:
        b_mag = float(sae.b_mag.detach().double()[j])
        r = float(r_mag.detach().double()[j])
        t_u = max(-float(b_gate.detach().double()[j]), (thr - b_mag) * math.exp(-r))
        return u_w, u_b - t_u + thr
    scale = 1.0
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        scale = float(sae.W_dec.detach().double()[j].norm())
    b_enc = getattr(sae, "b_enc", None)
    b = float(b_enc.detach().double()[j]) if b_enc is not None else 0.0
    t_pre = thr
    theta = getattr(sae, "threshold", None)
    if isinstance(theta, torch.Tensor) and theta.numel() == d_sae:
        t_pre = max(thr, float(theta.detach().double()[j]))
    return u_w * scale, u_b * scale + b - t_pre + thr


def check_latent_form(sae, feature: int, threshold: float, w: Tensor, b: float,
                      acts: Tensor, n_boundary: int = 64) -> tuple[int, int]:
    """Compare "x_flat·w + b > threshold" with sae.encode(x)[..., feature] > threshold on
    activations `acts` [n, *site_shape] (the hook's own shape) and on points moved along w to
    just above and just below the claimed boundary, by 2δ with δ = 16·eps(SAE dtype)·(‖x⊙w‖ +
    ‖b_dec⊙w‖ + |x·w + b| + |b| + thr): rounding the input and the sums in the SAE's dtype moves
    the pre-activation by about eps·‖x⊙w‖, so it cannot flip them. Returns (disagreements,
    comparisons); rows within δ of the boundary are not compared."""
    site = tuple(acts.shape[1:])
    x = acts.reshape(acts.shape[0], -1).double().cpu()
    w = w.double().cpu()
    thr = float(threshold)
    eps = _EPS.get(sae_dtype(sae), 1.2e-7)
    s = x @ w + b
    # rounding of the SAE's input and sums in its dtype: ~eps·‖x ⊙ w‖ per row (random signs),
    # with a 16× safety factor, plus the rounding of the pre-activation itself
    b_dec = sae.b_dec.detach().double().cpu().reshape(-1)
    spread = (x * w).norm(dim=-1) + float((b_dec * w).norm())
    delta = 16 * eps * (spread + s.abs() + abs(b) + thr) + 1e-12

    def fires(points: Tensor) -> Tensor:
        with torch.no_grad():
            z = encode(sae, points.reshape((points.shape[0],) + site).to(acts.dtype))
        return (z[..., feature].double() > thr).cpu()

    clear = (s - thr).abs() > delta
    bad = int((fires(x)[clear] != (s > thr)[clear]).sum())
    total = int(clear.sum())
    m = min(int(n_boundary), x.shape[0])
    ww = float(w @ w)
    if m and ww > 0:
        xb, sb, db = x[:m], s[:m], delta[:m, None]
        step = (thr - sb)[:, None] / ww * w[None]
        above = xb + step + 2 * db * w[None] / math.sqrt(ww)
        below = xb + step - 2 * db * w[None] / math.sqrt(ww)
        bad += int((~fires(above)).sum()) + int(fires(below).sum())
        total += 2 * m
    return bad, total


def require_linear_latent(sae, feature: int, threshold: float, model=None,
                          seed: int = 0) -> tuple[Tensor, float]:
    """(w, b) of `latent_linear_form`, after checking it against `sae.encode` on the model's
    real activations at the SAE's hook (random token inputs), or on Gaussian activations around
    b_dec when no model is given. Raises SAEMismatch (one line) when they disagree anywhere."""
    w, b = latent_linear_form(sae, feature, threshold)
    key = (int(feature), float(threshold), int(seed), _model_key(model))
    memo = sae.__dict__.setdefault("_hew_latent_checks", {})
    if key in memo:  # the verdict for this (SAE object, latent, threshold, model)
        if isinstance(memo[key], str):
            raise SAEMismatch(memo[key])
        return w, b
    if model is not None:
        acts = real_activations(model, hook_name(sae), n_inputs=32, seed=seed)
        acts = acts.reshape((-1,) + tuple(acts.shape[2:]))
    else:
        g = torch.Generator().manual_seed(int(seed))
        d_in = int(sae.cfg.d_in)
        x = sae.b_dec.detach().double().cpu() + torch.randn(256, d_in, generator=g,
                                                            dtype=torch.float64)
        d_head = getattr(sae, "d_head", None)
        if getattr(sae.cfg, "reshape_activations", "none") == "hook_z":
            if not d_head:
                raise SAEMismatch("checking a hook_z SAE's latent needs the model (its "
                                  "activations give the head shape)")
            x = x.reshape(x.shape[0], d_in // int(d_head), int(d_head))
        acts = x.to(torch.float32)
    bad, total = check_latent_form(sae, feature, threshold, w, b, acts)
    memo[key] = True
    if bad:
        memo[key] = (
            f"latent {feature} of this {describe(sae)} is not one linear threshold at its hook: "
            f"x·w + b > {threshold:g} disagrees with sae.encode on {bad} of {total} test points "
            f"(real activations and points at the boundary); the tail-risk engines need a "
            f"linear form, so this SAE's latents are refused there")
        raise SAEMismatch(memo[key])
    return w, b


def _model_key(model) -> str | None:
    if model is None:
        return None
    from estimators.conformance import model_fingerprint
    return model_fingerprint(model)
