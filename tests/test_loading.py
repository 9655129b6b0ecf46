"""Loaders: round trips through disk, and clear errors for every kind of bad file."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from estimators.loading import (LoadError, LoadedModel, load_checkpoint, load_model, load_sae,
                                save_checkpoint, validate_sae)


def tiny_model(seed: int = 0, attn_only: bool = False) -> HookedTransformer:
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4,
                                  d_vocab=11, d_mlp=32, act_fn="gelu", attn_only=attn_only,
                                  normalization_type="LN", seed=seed)
    model = HookedTransformer(cfg)
    # Non-trivial LayerNorm and bias values, so a loader that dropped them would be caught.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tiny_sae(hook: str, d_in: int, d_sae: int = 24) -> StandardSAE:
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return sae


@pytest.fixture
def checkpoint(tmp_path):
    model = tiny_model()
    folder = save_checkpoint(model, tmp_path / "ckpt")
    return model, folder


def test_checkpoint_round_trip_is_exact(checkpoint):
    model, folder = checkpoint
    loaded = load_checkpoint(folder)
    tokens = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model(tokens), loaded(tokens))
    assert json.loads((folder / "config.json").read_text())["d_model"] == 16


def test_load_model_detects_checkpoint_folder(checkpoint):
    _, folder = checkpoint
    lm = load_model(str(folder))
    assert lm.kind == "checkpoint" and lm.zoo_entry is None


def test_truncated_weights_give_clear_error(checkpoint):
    _, folder = checkpoint
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LoadError, match="not a readable safetensors file"):
        load_model(str(folder))


def test_garbage_weights_give_clear_error(checkpoint):
    _, folder = checkpoint
    (folder / "model.safetensors").write_bytes(b"\x80\x04this is a pickle, not safetensors")
    with pytest.raises(LoadError, match="safetensors"):
        load_checkpoint(folder)


def test_weights_not_matching_config(checkpoint):
    _, folder = checkpoint
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="does not match"):
        load_checkpoint(folder)


def test_bad_config_json(checkpoint):
    _, folder = checkpoint
    (folder / "config.json").write_text("{not json")
    with pytest.raises(LoadError, match="not valid JSON"):
        load_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps({"d_model": 16}))
    with pytest.raises(LoadError, match="lacks required"):
        load_checkpoint(folder)


def test_nan_weights_are_refused(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].attn.W_Q[0, 0, 0] = float("nan")
    folder = save_checkpoint(model, tmp_path / "nan")
    with pytest.raises(LoadError, match="NaN"):
        load_checkpoint(folder)


def test_missing_folder_and_file_source(tmp_path):
    with pytest.raises(LoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere" / "model"))
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(LoadError, match="is a file"):
        load_model(str(f))


def test_hub_name_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoadError, match="hub"):
        load_model("no-such-model-name-xyz")


def test_hf_folder_loads_offline_as_hooked_transformer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16,
                                    vocab_size=50, bos_token_id=0, eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path / "hf")
    lm = load_model(str(tmp_path / "hf"))
    assert lm.kind == "hf-folder"
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = lm.model(tokens).log_softmax(-1)
        ref = hf(tokens).logits.log_softmax(-1)
    # TransformerLens' own conversion, weights unprocessed: the same logits (tests/test_hf_folders)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert "blocks.1.hook_resid_post" in lm.model.hook_dict


def test_sae_round_trip_and_validation(tmp_path, checkpoint):
    model, folder = checkpoint
    sae = tiny_sae("blocks.0.hook_resid_post", 16)
    sae.save_model(tmp_path / "sae")
    lm = LoadedModel(load_checkpoint(folder), str(folder), "checkpoint")
    loaded = load_sae(str(tmp_path / "sae"), lm)
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))


def test_sae_for_wrong_hook_or_width(checkpoint):
    model, _ = checkpoint
    with pytest.raises(LoadError, match="does not have"):
        validate_sae(tiny_sae("blocks.7.hook_resid_post", 16), model)
    with pytest.raises(LoadError, match="width 16"):
        validate_sae(tiny_sae("blocks.0.hook_resid_post", 20), model)


def test_corrupted_sae_folder(tmp_path, checkpoint):
    _, folder = checkpoint
    sae = tiny_sae("blocks.0.hook_resid_post", 16)
    sae.save_model(tmp_path / "sae")
    w = tmp_path / "sae" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    lm = LoadedModel(load_checkpoint(folder), str(folder), "checkpoint")
    with pytest.raises(LoadError, match="safetensors"):
        load_sae(str(tmp_path / "sae"), lm)
    with pytest.raises(LoadError, match="not an SAE folder"):
        load_sae(str(tmp_path), lm)


def test_zoo_models_and_saes_load_and_validate():
    from estimators import zoo

    for name in zoo.names():
        lm = load_model(name)
        assert lm.kind == "zoo" and lm.card
        sae = load_sae("zoo", lm)
        assert isinstance(sae, SAE)
