"""Numbers the Model & SAE page shows, recomputed by hand."""

from __future__ import annotations

import json

import pytest
import torch

from estimators import model_info
from estimators.cli import main
from tests.test_loading import tiny_model, tiny_sae


def test_sae_quality_matches_hand_computation():
    model = tiny_model()
    sae = tiny_sae("blocks.1.hook_resid_pre", 16)
    tokens = torch.randint(0, 11, (7, 8), generator=torch.Generator().manual_seed(3))
    q = model_info.sae_quality(model, sae, tokens)
    _, cache = model.run_with_cache(tokens)
    x = cache["blocks.1.hook_resid_pre"].reshape(-1, 16)
    z = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)  # StandardSAE's encoder, by hand
    x_hat = z @ sae.W_dec + sae.b_dec
    ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert abs(q["explained_variance"] - float(ev)) < 1e-5
    assert abs(q["l0"] - float((z > 0).sum(-1).float().mean())) < 1e-6
    assert abs(q["mse"] - float(((x - x_hat) ** 2).mean())) < 1e-6
    assert abs(q["dead_fraction"] - float((~(z > 0).any(0)).double().mean())) < 1e-12
    assert q["n_activations"] == 56 and q["d_sae"] == 24


def test_top_features_are_the_most_frequent():
    model = tiny_model()
    sae = tiny_sae("blocks.0.hook_resid_post", 16)
    tokens = torch.randint(0, 11, (5, 8), generator=torch.Generator().manual_seed(4))
    labels = [f"t{i}" for i in range(11)]
    rows = model_info.top_features(model, sae, tokens, labels, k=4)
    _, z, _ = model_info.sae_activations(model, sae, tokens)
    freq = (z > 0).float().mean(0)
    assert [r["frequency"] for r in rows] == pytest.approx(sorted(freq.tolist(), reverse=True)[:4])
    for r in rows:
        assert abs(r["frequency"] - float(freq[r["feature"]])) < 1e-7


def test_token_predictions_match_forward_pass():
    model = tiny_model()
    tokens = torch.tensor([1, 5, 2, 7, 3, 3, 0, 9])
    targets = torch.roll(tokens, -1)
    mask = torch.tensor([True] * 7 + [False])
    labels = [f"t{i}" for i in range(11)]
    rows = model_info.token_predictions(model, tokens, labels, targets, mask, k=2)
    probs = model(tokens[None])[0].softmax(-1)
    for r in rows:
        assert r.token == labels[int(tokens[r.position])]
        best = int(probs[r.position].argmax())
        assert r.top[0][0] == labels[best]
        assert abs(r.top[0][1] - float(probs[r.position, best])) < 1e-6
        if r.position < 7:
            assert abs(r.target_prob - float(probs[r.position, targets[r.position]])) < 1e-6
        else:
            assert r.target is None


def test_hook_shapes_lists_every_hook():
    model = tiny_model()
    rows = model_info.hook_shapes(model)
    names = [r["hook"] for r in rows]
    assert "blocks.1.hook_resid_post" in names and "blocks.0.attn.hook_pattern" in names
    shape = dict((r["hook"], r["shape"]) for r in rows)
    assert shape["blocks.1.hook_resid_post"] == [1, 8, 16]
    assert shape["blocks.0.attn.hook_pattern"] == [1, 4, 8, 8]


def test_info_cli_json(capsys):
    assert main(["info", "--model", "induction", "--sae", "zoo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "zoo" and out["config"]["n_layers"] == 2
    assert 0 < out["sae"]["explained_variance"] <= 1
    assert abs(out["sae"]["explained_variance"] - out["card"]["sae"]["explained_variance"]) < 0.05


def test_info_cli_unknown_model_is_one_clear_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["info", "--model", "./no/such/folder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "does not exist" in err and "Traceback" not in err
