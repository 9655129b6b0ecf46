"""The SAE cases in ../shared/cases/ with their exact expectations (each case's README):

* sae-hook-z: an SAE on blocks.0.attn.hook_z with d_in = n_heads·d_head and reshape_activations
  "hook_z" is accepted and `propagate` runs on it; one with d_in = d_head is refused before
  anything runs, with one line (exit 2).
* sae-fp16-quality: `info` on a float16 SAE reports explained variance ≈ −5.44 and MSE ≈ 0.44,
  the values of a float64 computation on the same activations, as strict JSON.
Also: the CLI never prints NaN/Infinity (non-finite numbers become null with a note).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from estimators import sae_ops
from estimators.cli import jsonable_result, main
from estimators.loading import LoadError, load_model, load_sae

CASES = Path(__file__).resolve().parent.parent.parent / "shared" / "cases"
HOOKZ = CASES / "sae-hook-z"
FP16 = CASES / "sae-fp16-quality"

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases is not present")


def strict_json(text: str):
    """json.loads that fails on NaN / Infinity (which are not JSON)."""
    def bad(name):
        raise ValueError(f"{name} in the CLI's JSON")
    return json.loads(text, parse_constant=bad)


def test_hook_z_sae_with_flat_width_is_accepted_and_matches_sae_lens():
    lm = load_model(str(HOOKZ / "model"))
    sae = load_sae(str(HOOKZ / "hookz_flat"), lm)
    tokens = torch.tensor(json.loads((HOOKZ / "data8.json").read_text()))
    _, cache = lm.model.run_with_cache(tokens, names_filter=["blocks.0.attn.hook_z"])
    acts = cache["blocks.0.attn.hook_z"]  # [b, pos, 2 heads, 4]
    with torch.no_grad():
        z, x_hat = sae_ops.encode_decode(sae, acts)
    assert z.shape == acts.shape[:2] + (16,) and x_hat.shape == acts.shape
    # sae_lens flattens heads as (n_heads d_head): the same latents from the flat input by hand
    flat = acts.flatten(-2)
    by_hand = torch.relu((flat - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(z, by_hand)


def test_propagate_on_the_hook_z_case(capsys):
    rc = main(["propagate", "--model", str(HOOKZ / "model"), "--sae", str(HOOKZ / "hookz_flat"),
               "--tokens", str(HOOKZ / "data8.json"), "--samples", "16", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = strict_json(out.out)
    names = [s["name"] for s in result["sites"]]
    assert "sae:blocks.0.attn.hook_z" in names


def test_hook_z_sae_of_head_width_is_refused_in_one_line(capsys):
    rc = main(["propagate", "--model", str(HOOKZ / "model"), "--sae", str(HOOKZ / "hookz_dhead"),
               "--tokens", str(HOOKZ / "data8.json"), "--samples", "16", "--json"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert "d_in=4" in err and "d_in = 2·4 = 8" in err and "hook_z" in err
    lm = load_model(str(HOOKZ / "model"))
    with pytest.raises(LoadError):
        load_sae(str(HOOKZ / "hookz_dhead"), lm)


def test_float16_sae_statistics_are_those_of_float64(capsys):
    assert main(["info", "--model", "induction", "--sae", str(FP16 / "sae"), "--json"]) == 0
    q = strict_json(capsys.readouterr().out)["sae"]
    assert q["sae_dtype"] == "float16"
    assert q["explained_variance"] == pytest.approx(-5.44, abs=0.005)
    assert q["mse"] == pytest.approx(0.44, abs=0.005)
    # the same SAE run wholly in float64 on the same activations (info's 256 sequences, seed 1)
    lm = load_model("induction")
    sae = load_sae(str(FP16 / "sae"), lm).to(torch.float64)
    tokens = lm.zoo_entry.sample(256, seed=1).tokens
    _, cache = lm.model.run_with_cache(tokens, names_filter=[q["hook"]])
    x = cache[q["hook"]].reshape(-1, 32).double()
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    resid = float(((x - x_hat) ** 2).sum())
    ev = 1 - resid / float(((x - x.mean(0)) ** 2).sum())
    assert q["explained_variance"] == pytest.approx(ev, abs=2e-3)
    assert q["mse"] == pytest.approx(resid / x.numel(), rel=1e-3)
    assert q["l0"] == pytest.approx(float((z != 0).double().sum(-1).mean()), abs=0.05)
    assert q["n_activations"] == x.shape[0]


def test_cli_json_has_no_nan_or_infinity():
    result = {"a": float("-inf"), "b": [1.0, float("nan")], "c": np.float64("inf"),
              "d": torch.tensor(float("nan")), "e": {"x": np.float32(2.5)}, "ok": 3}
    out = jsonable_result(result)
    text = json.dumps(out, allow_nan=False)  # raises if anything non-finite is left
    back = strict_json(text)
    assert back["a"] is None and "not a finite number" in back["a_note"]
    assert back["c"] is None and back["d"] is None and back["e"]["x"] == 2.5
    assert back["b"] == [1.0, None] and back["null_notes"][0].startswith("b[1]:")
    assert back["ok"] == 3 and math.isfinite(back["e"]["x"])
