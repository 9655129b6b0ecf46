"""`--data` on the commands: SAE quality for a non-zoo checkpoint, the activation model, causal
scrubbing and tail-risk distributions built from data — each equal to the library computed
directly."""

from __future__ import annotations

import json

import pytest
import torch

from estimators.cli import main
from estimators.data import parse_spec
from estimators.model_info import sae_quality
from estimators.tailrisk.distributions import DistributionError, from_tokens

from .conftest import tiny_sae


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_info_sae_quality_on_data_equals_direct_recomputation(tmp_path, capsys, ckpt, loaded,
                                                              corpus):
    folder, model, _ = ckpt
    sae = tiny_sae("blocks.1.hook_resid_pre")
    sae.save_model(str(tmp_path / "sae"))
    spec = f"text:{corpus},len=8,n=12,seed=2"
    code, out, err = run(capsys, ["info", "--model", str(folder), "--sae", str(tmp_path / "sae"),
                                  "--data", spec, "--json"])
    assert code == 0, err
    got = json.loads(out)
    tokens = parse_spec(spec).load(loaded).tokens
    want = sae_quality(model, sae, tokens)
    assert got["data"]["n"] == 12 and got["data"]["seq_len"] == 8
    assert got["sae"]["n_activations"] == want["n_activations"] == 12 * 8
    for k in ("explained_variance", "mse", "l0", "dead_fraction"):
        assert got["sae"][k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
    # the second run reads the activation cache (same numbers)
    code, out2, _ = run(capsys, ["info", "--model", str(folder), "--sae", str(tmp_path / "sae"),
                                 "--data", spec, "--json"])
    assert json.loads(out2)["sae"] == got["sae"]
    code, _, err = run(capsys, ["info", "--model", str(folder), "--sae", str(tmp_path / "sae")])
    assert code == 2 and "--data" in err and len(err.strip().splitlines()) == 1


def test_propagate_data_equals_tokens_alias(tmp_path, capsys, ckpt, loaded, corpus):
    folder = str(ckpt[0])
    tokens = parse_spec(f"text:{corpus},len=6,n=24").load(loaded).tokens
    (tmp_path / "t.json").write_text(json.dumps(tokens.tolist()))
    common = ["propagate", "--model", folder, "--samples", "32", "--positions", "4", "5",
              "--json"]
    code, a, err = run(capsys, common + ["--tokens", str(tmp_path / "t.json")])
    assert code == 0, err
    code, b, err = run(capsys, common + ["--data", f"text:{corpus},len=6,n=24"])
    assert code == 0, err
    a, b = json.loads(a), json.loads(b)
    assert a["surprise"] == b["surprise"]
    code, _, err = run(capsys, ["propagate", "--model", folder, "--json"])
    assert code == 2 and "--data" in err


def test_scrub_with_a_text_spec(tmp_path, capsys, ckpt, loaded, corpus):
    from estimators.scrubbing.evaluate import ScrubData, Scrubber
    from estimators.scrubbing.partition import PathPartition

    folder, model, _ = ckpt
    part = PathPartition(important=("embed>logits",))
    (tmp_path / "p.json").write_text(part.to_json())
    spec = f"text:{corpus},len=6,n=16"
    code, out, err = run(capsys, ["scrub", "--model", str(folder), "--partition",
                                  str(tmp_path / "p.json"), "--data", spec, "--json"])
    assert code == 0, err
    tokens = parse_spec(spec).load(loaded).tokens
    data = ScrubData.from_sequences(tokens.tolist(), 300, 16)
    [r] = Scrubber(model, data, seed=0).evaluate([part])
    assert json.loads(out)["loss_scrubbed"] == pytest.approx(r.loss_scrubbed, rel=1e-6)


def test_distributions_from_data():
    t = torch.tensor([[1, 2], [1, 3], [4, 2], [1, 2]])
    emp = from_tokens(t, 6)
    want = torch.zeros(2, 6, dtype=torch.float64)
    want[0, 1], want[0, 4], want[1, 2], want[1, 3] = 0.75, 0.25, 0.75, 0.25
    assert torch.equal(emp.probs, want)
    uni = from_tokens(t, 6, "data-tokens")
    assert torch.allclose(uni.probs[:, [1, 2, 3, 4]], torch.full((2, 4), 0.25, dtype=torch.float64))
    assert uni.n_inputs() == 16
    with pytest.raises(DistributionError, match="outside 0..5"):
        from_tokens(t + 2, 6)


def test_ground_truth_from_data_is_sampled_with_an_interval(capsys, ckpt, corpus):
    folder = str(ckpt[0])
    code, out, err = run(capsys, ["ground-truth", "--model", folder, "--distribution",
                                  "empirical", "--data", f"text:{corpus},len=4", "--target",
                                  "id:5", "--max-exact", "10", "--samples", "2048", "--json"])
    assert code == 0, err
    g = json.loads(out)
    assert g["method"] == "sampled" and g["n_inputs"] == 2048
    lo, hi = g["interval"]
    assert lo <= g["probability"] <= hi and g["distribution"].startswith("empirical(text:")
    code, _, err = run(capsys, ["ground-truth", "--model", folder, "--distribution",
                                "empirical", "--target", "id:5"])
    assert code == 2 and "--data" in err


def test_scrub_anomaly_with_data(tmp_path, capsys, ckpt, corpus):
    from estimators.scrubbing.partition import PathPartition

    (tmp_path / "p.json").write_text(PathPartition(important=("embed>logits",)).to_json())
    argv = ["scrub", "--model", str(ckpt[0]), "--partition", str(tmp_path / "p.json"),
            "--anomaly", "--json", "--data"]
    words = "the quick brown fox jumps over a lazy dog hello world tiny corpus".split()
    rng = torch.Generator().manual_seed(0)
    text = " ".join(words[int(i)] for i in torch.randint(len(words), (400,), generator=rng))
    (tmp_path / "varied.txt").write_text(text)
    code, out, err = run(capsys, argv + [f"text:{tmp_path / 'varied.txt'},len=4,n=8"])
    assert code == 0, err
    a = json.loads(out)["anomaly"]
    assert 0 <= a["auc_scrubbed"] <= 1 and 0 <= a["auc_excess"] <= 1
    code, _, err = run(capsys, argv + [f"text:{corpus},len=4,n=1000"])  # all used: none fresh
    assert code == 2 and "fresh normal inputs" in err


def test_ground_truth_chunks_are_memory_bounded(loaded):
    from estimators.tailrisk.distributions import uniform
    from estimators.tailrisk.ground_truth import bounded_chunk

    dist = uniform(4, 300)
    per_input = 300 * 16 + 4 * 16 * 4 * 16  # [V] values + logits + softmax, activations
    assert bounded_chunk(loaded.model, dist, 8192) == 8192
    assert bounded_chunk(loaded.model, dist, 8192, memory=10 * per_input) == 10
    assert bounded_chunk(loaded.model, dist, 8192, memory=1) == 1


CASES = "../shared/cases"


def test_info_fp16_sae_is_finite_and_float64(capsys):
    """../shared/cases/sae-fp16-quality: a float16 SAE's statistics are accumulated in float64
    (the case's right answer: explained variance ≈ −5.44, MSE ≈ 0.44)."""
    code, out, err = run(capsys, ["info", "--model", "induction", "--sae",
                                  f"{CASES}/sae-fp16-quality/sae", "--json"])
    assert code == 0, err
    sae = json.loads(out)["sae"]
    assert sae["explained_variance"] == pytest.approx(-5.44, abs=0.01)
    assert sae["mse"] == pytest.approx(0.44, abs=0.01)
    assert json.loads(out)["data"]["spec"] == "zoo,n=256,seed=1"


def test_quality_of_a_hook_z_sae_from_cached_activations():
    """../shared/cases/sae-hook-z/hookz_flat: d_in = n_heads·d_head; the SAE flattens [heads,
    d_head] itself, so the statistics equal a direct computation on flattened rows."""
    from sae_lens import SAE

    from estimators.activation_cache import activations
    from estimators.loading import load_checkpoint
    from estimators.sae_stats import sae_quality_from_activations

    model = load_checkpoint(f"{CASES}/sae-hook-z/model")
    sae = SAE.load_from_disk(f"{CASES}/sae-hook-z/hookz_flat")
    tokens = torch.tensor(json.loads(open(f"{CASES}/sae-hook-z/data8.json").read()))
    x = activations(model, tokens, ["blocks.0.attn.hook_z"])["blocks.0.attn.hook_z"]
    q = sae_quality_from_activations(sae, x, memory_budget=1)  # one row per batch
    flat = x.reshape(-1, 8).double()
    with torch.no_grad():
        z = sae.encode(x.reshape(-1, 2, 4))
        x_hat = sae.decode(z).reshape(-1, 8).double()
    ev = 1 - ((flat - x_hat) ** 2).sum() / ((flat - flat.mean(0)) ** 2).sum()
    assert q["n_activations"] == flat.shape[0] and q["d_in"] == 8
    assert q["explained_variance"] == pytest.approx(float(ev), rel=1e-6)
    assert q["l0"] == pytest.approx(float((z > 0).sum(-1).double().mean()))
    narrow = SAE.load_from_disk(f"{CASES}/sae-hook-z/hookz_dhead")
    with pytest.raises(ValueError, match="expects d_in=4"):
        sae_quality_from_activations(narrow, x)


def test_ground_truth_progress_on_stderr_only(capsys, ckpt, corpus):
    code, out, err = run(capsys, ["ground-truth", "--model", str(ckpt[0]), "--distribution",
                                  "empirical", "--data", f"text:{corpus},len=4", "--target",
                                  "id:5", "--max-exact", "10", "--samples", "64", "--json",
                                  "--progress", "--no-cache"])
    assert code == 0, err
    json.loads(out)  # stdout is the JSON alone
    assert "ground truth: 100.0%" in err and "s elapsed" in err


def test_progress_printer_time_left():
    import io

    from estimators.cli import progress_printer

    buf = io.StringIO()
    assert progress_printer("x", stream=buf) is None  # not a terminal: off by default
    show = progress_printer("x", True, stream=buf)
    show(0.5)
    show(1.0)
    assert "x:  50.0%" in buf.getvalue() and "s left" in buf.getvalue()
    assert buf.getvalue().endswith("\n")


def test_data_command(capsys, ckpt, loaded, corpus):
    from estimators import activation_cache

    folder, model, tok = ckpt
    spec = f"text:{corpus},len=8,n=6"
    code, out, err = run(capsys, ["data", "--model", str(folder), "--data", spec, "--show", "2",
                                  "--hooks", "blocks.1.hook_resid_pre", "--json"])
    assert code == 0, err
    d = json.loads(out)
    tokens = parse_spec(spec).load(loaded).tokens
    assert d["data"]["n"] == 6 and d["examples"][0]["ids"] == tokens[0].tolist()
    assert d["examples"][1]["text"] == tok.decode(tokens[1].tolist())
    with torch.no_grad():
        logits = model(tokens)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 300).double(),
                                             tokens[:, 1:].reshape(-1))
    assert d["loss_nats"] == pytest.approx(float(want), rel=1e-6)
    assert d["activations"] == {"blocks.1.hook_resid_pre": [6, 8, 16]}
    passes = activation_cache.stats().forward_passes
    activation_cache.activations(model, tokens, ["blocks.1.hook_resid_pre"])
    assert activation_cache.stats().forward_passes == passes  # filled by the command
    code, _, err = run(capsys, ["data", "--model", str(folder), "--data", "tokens:nope.json"])
    assert code == 2 and "does not exist" in err


def test_info_data_without_sae_is_checked(tmp_path, capsys, ckpt):
    (tmp_path / "t.json").write_text(json.dumps([[1, 2, 999]]))
    code, _, err = run(capsys, ["info", "--model", str(ckpt[0]), "--data",
                                f"tokens:{tmp_path / 't.json'}"])
    assert code == 2 and "outside the model's vocabulary" in err
