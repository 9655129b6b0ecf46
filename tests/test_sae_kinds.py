"""Every sae_lens SAE kind, end to end: built with sae_lens' own config classes and random
weights, saved with sae_lens, reloaded through our `load_sae`, then

* accepted on its hook (the trial encode + decode on the model's real activations);
* `info` statistics (`model_info.sae_quality`) equal a float64 recomputation from sae.encode /
  sae.decode, and (for float16/bfloat16) are close to the same SAE run entirely in float64;
* the activation chain with an SAE site matches sae.encode on real activations exactly, and on a
  point-mass input propagates through the SAE exactly as the model with the SAE spliced in;
* the tail-risk SAE-latent behaviour either agrees with sae.encode on real activations or is
  refused with one line.

`SUPPORT` below is the expected verdict per (architecture, option); the README's SAE support
table is this grid.
"""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, GatedSAE, GatedSAEConfig,
                      JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                      TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators import model_info, sae_ops
from estimators.activation import CovarianceMask, Propagator, transformer_chain
from estimators.loading import LoadedModel, LoadError, load_sae
from estimators.tailrisk.behaviours import BehaviourError, sae_feature

RESID = "blocks.0.hook_resid_post"
HOOK_Z = "blocks.0.attn.hook_z"
D_SAE = 24
ARCHS = ["standard", "topk", "batchtopk", "jumprelu", "gated"]
# option name → (hook, config overrides)
OPTIONS = {
    "plain": (RESID, {}),
    "norm=expected_average_only_in": (RESID, {"normalize_activations": "expected_average_only_in"}),
    "norm=layer_norm": (RESID, {"normalize_activations": "layer_norm"}),
    "norm=constant_norm_rescale": (RESID, {"normalize_activations": "constant_norm_rescale"}),
    "apply_b_dec_to_input=False": (RESID, {"apply_b_dec_to_input": False}),
    "reshape hook_z": (HOOK_Z, {"reshape_activations": "hook_z"}),
    "float16": (RESID, {"dtype": "float16"}),
    "bfloat16": (RESID, {"dtype": "bfloat16"}),
}
# Which (architecture, option) pairs the tail-risk engines accept: a latent is one linear
# threshold unless TopK ranks it or normalisation rescales its input per row.
NONLINEAR_OPTIONS = {"norm=layer_norm", "norm=constant_norm_rescale"}


def tail_risk_supported(arch: str, option: str) -> bool:
    return arch != "topk" and option not in NONLINEAR_OPTIONS


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=6, d_head=4, n_heads=2,
                                  d_vocab=11, d_mlp=32, act_fn="relu", normalization_type="LN",
                                  seed=0)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return LoadedModel(model.eval(), "tiny", "checkpoint")


def build_sae(arch: str, hook: str, d_in: int, seed: int = 1, **opt):
    """A random SAE of `arch` built with sae_lens' config classes (BatchTopK: the training class,
    saved as sae_lens saves it for inference, i.e. as JumpReLU)."""
    kw = dict(d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook), **opt)
    if arch == "standard":
        sae = StandardSAE(StandardSAEConfig(**kw))
    elif arch == "topk":
        sae = TopKSAE(TopKSAEConfig(k=4, **kw))
    elif arch == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=4, **kw))
    elif arch == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**kw))
    else:
        sae = GatedSAE(GatedSAEConfig(**kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.3).to(p.dtype))
        if arch == "jumprelu":
            sae.threshold.copy_((torch.rand(D_SAE, generator=g) * 0.3).to(sae.threshold.dtype))
        if arch == "batchtopk":
            sae.topk_threshold.fill_(0.2)
    return sae


def saved_and_reloaded(tmp_path, lm, arch, hook, d_in, **opt):
    sae = build_sae(arch, hook, d_in, **opt)
    folder = tmp_path / "sae"
    (sae.save_inference_model if arch == "batchtopk" else sae.save_model)(folder)
    return load_sae(str(folder), lm)


def real_acts(model, hook, n=24, length=6, seed=5):
    tokens = torch.randint(0, 11, (n, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    return tokens, cache[hook]


def float64_quality(sae, acts) -> dict:
    """EV, MSE, L0 and dead fraction from sae.encode/decode on `acts` [b, p, *site], summed in
    float64 by hand."""
    with torch.no_grad():
        z = sae.encode(acts)
        x_hat = sae.decode(z)
    n = acts.shape[0] * acts.shape[1]
    x = acts.reshape(n, -1).double()
    xh = x_hat.reshape(n, -1).double()
    z = z.reshape(n, -1)
    resid = ((x - xh) ** 2).sum().item()
    total = ((x - x.mean(0)) ** 2).sum().item()
    return {"explained_variance": 1 - resid / total, "mse": resid / x.numel(),
            "l0": (z != 0).double().sum(-1).mean().item(),
            "dead_fraction": (~(z != 0).any(0)).double().mean().item()}


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("arch", ARCHS)
def test_every_sae_kind(tmp_path, lm, arch, option):
    hook, opt = OPTIONS[option]
    model = lm.model
    d_in = 8 if hook == HOOK_Z else 16
    sae = saved_and_reloaded(tmp_path, lm, arch, hook, d_in, **opt)  # accepted on its hook
    expected_arch = "jumprelu" if arch == "batchtopk" else arch
    assert sae.cfg.architecture() == expected_arch
    for k, v in opt.items():
        assert getattr(sae.cfg, k) == v

    # info: equal to a float64 recomputation through sae.encode/decode
    tokens, acts = real_acts(model, hook)
    q = model_info.sae_quality(model, sae, tokens)
    ref = float64_quality(sae, acts)
    for k, v in ref.items():
        assert q[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert all(math.isfinite(q[k]) for k in ref)
    if opt.get("dtype") in ("float16", "bfloat16"):  # close to the SAE run wholly in float64
        full = float64_quality(sae.to(torch.float64), acts.double())
        tol = 0.05 if opt["dtype"] == "bfloat16" else 0.01
        assert q["mse"] == pytest.approx(full["mse"], rel=tol)
        sae.to(getattr(torch, opt["dtype"]))

    check_activation_chain(model, sae, hook)
    check_tail_risk(model, sae, hook, arch, option)


def check_activation_chain(model, sae, hook):
    """The chain's SAE site holds sae.encode of the real activations; on a point-mass input (one
    sequence repeated) the propagated SAE site equals sae.encode, and the residual after a
    residual-stream SAE equals the model's with decode(encode(x)) spliced in."""
    tokens = torch.randint(0, 11, (1, 6), generator=torch.Generator().manual_seed(2)).repeat(4, 1)
    chain = transformer_chain(model, tokens, sae=sae, samples=4, seed=0, positions=list(range(6)))
    site = next(s for s in chain.sites if s.kind == "sae")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        z = sae_ops.encode(sae, cache[hook])[:, :, list(site.units)].reshape(4, -1).double()
    torch.testing.assert_close(chain.empirical[site.name], z, rtol=0, atol=0)
    prop = Propagator(chain, CovarianceMask.naive())
    res = prop.run()
    if hook == RESID:
        # re-running from the SAE site alone decodes again: sae_lens' normalisation state must
        # come from a fresh encode of the same rows (a stale or consumed one is wrong or crashes)
        prop.toggle(site.name, 0, 1)
        res = prop.toggle(site.name, 0, 1)
        assert "blocks.1.hook_resid_post" in res.recomputed
    torch.testing.assert_close(res.sites[site.name].mean, z[0], rtol=0, atol=1e-12)
    if hook == RESID:
        store = {}

        def splice(a, hook):
            return sae_ops.encode_decode(sae, a)[1].to(a.dtype)

        def grab(a, hook):
            store["r"] = a

        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(RESID, splice),
                                                    ("blocks.1.hook_resid_post", grab)])
        want = store["r"][0].reshape(-1).double()
        torch.testing.assert_close(res.sites["blocks.1.hook_resid_post"].mean, want,
                                   rtol=0, atol=1e-5)


def check_tail_risk(model, sae, hook, arch, option):
    """The SAE-latent behaviour agrees with sae.encode at the last position of real inputs (away
    from the boundary by the check's margin), or is refused with one line."""
    tokens, acts = real_acts(model, hook, n=64, seed=9)
    with torch.no_grad():
        lat = sae_ops.encode(sae, acts)[:, -1].double()
    freq = (lat > 0).double().mean(0)
    j = int(((freq - 0.5).abs()).argmin())  # a latent that fires on some inputs, not all
    thr = 0.05
    if not tail_risk_supported(arch, option):
        with pytest.raises(BehaviourError) as e:
            sae_feature(sae, j, thr, model=model)
        assert "\n" not in str(e.value) and "refused" in str(e.value)
        return
    b = sae_feature(sae, j, thr, model=model)
    value, score = b.evaluate(model, tokens)
    want = lat[:, j] > thr
    margin = 0.05 if option == "bfloat16" else 0.01
    clear = (score - thr).abs() > margin
    assert clear.sum() > 32
    assert torch.equal(value.bool()[clear], want[clear])
    assert 0 < int(want.sum()) < len(want)


@pytest.mark.parametrize("arch", ARCHS)
def test_hook_z_sae_of_one_head_width_is_refused_in_one_line(tmp_path, lm, arch):
    """d_in = d_head without reshape: sae_lens would encode each head separately ([.., 2, 24]
    latents per position); refused before anything runs."""
    with pytest.raises(LoadError) as e:
        saved_and_reloaded(tmp_path, lm, arch, HOOK_Z, 4)
    msg = str(e.value)
    assert "\n" not in msg and "d_in=4" in msg and "d_in = 2·4 = 8" in msg


@pytest.mark.parametrize("arch", ARCHS)
def test_wrong_width_is_refused_in_one_line(tmp_path, lm, arch):
    with pytest.raises(LoadError) as e:
        saved_and_reloaded(tmp_path, lm, arch, RESID, 12)
    assert "\n" not in str(e.value) and "d_in=12" in str(e.value) and "width 16" in str(e.value)


def test_nan_weights_are_refused(tmp_path, lm):
    sae = build_sae("standard", RESID, 16)
    with torch.no_grad():
        sae.W_enc[3, 5] = float("nan")
    sae.save_model(tmp_path / "sae")
    with pytest.raises(LoadError, match="W_enc holds 1 NaN/inf"):
        load_sae(str(tmp_path / "sae"), lm)
