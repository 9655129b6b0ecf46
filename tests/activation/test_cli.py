"""`python -m estimators propagate` through estimators.cli.main: JSON fields and clear errors."""

import json

import pytest
import torch

from estimators import zoo
from estimators.activation import random_mlp, save_mlp
from tests.cli_run import run_cli as _run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp")
    save_mlp(random_mlp([4, 8, 3], "gelu", seed=0), d)
    A = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (d / "dist.json").write_text(json.dumps({"mean": [0.1, 0, -0.2, 0.3],
                                             "cov": (A @ A.T / 4).tolist()}))
    return d


def test_mlp_json_fields(capsys, mlp_dir):
    code, out, _ = _run(capsys, ["propagate", "--model", str(mlp_dir), "--input-dist",
                                 str(mlp_dir / "dist.json"), "--mask", "full", "--json"])
    assert code == 0
    d = json.loads(out)
    assert [s["name"] for s in d["sites"]] == ["input", "hidden.0", "output"]
    assert all({"kl", "w2"} <= set(s) for s in d["sites"])
    assert set(d["surprise"]) >= {"argument_bits", "data_bits", "total_bits"}
    assert d["surprise"]["total_bits"] == pytest.approx(
        d["surprise"]["argument_bits"] + d["surprise"]["data_bits"])
    assert len(d["output"]["estimate_mean"]) == len(d["output"]["empirical_mean"]) == 3
    # closed form on the MLP: flops = Σ linear_flops(full) per layer (2mnk per product)
    assert d["cost"]["flops"] >= 2 * 8 * 4 * (1 + 4 + 8) + 2 * 3 * 8 * (1 + 8 + 3)
    assert d["cost"]["seconds"] >= 0


def test_mask_file_round_trip(capsys, mlp_dir, tmp_path):
    mask = {"sites": {"hidden.0": {"units": 8, "on": [[0, 3], [2, 5]]}}}
    (tmp_path / "m.json").write_text(json.dumps(mask))
    code, out, _ = _run(capsys, ["propagate", "--model", str(mlp_dir), "--mask",
                                 str(tmp_path / "m.json"), "--json"])
    assert code == 0
    d = json.loads(out)
    assert d["mask"]["sites"]["hidden.0"]["on"] == [[0, 3], [2, 5]]
    assert d["surprise"]["argument_bits"] > 0


@pytest.mark.parametrize("setup, msg", [
    (lambda d, t: ["--mask", "bogus"], "naive, full"),
    (lambda d, t: ["--mask", _write(t, "bad.json", "{oops")], "not valid JSON"),
    (lambda d, t: ["--mask", _write(t, "shape.json", json.dumps(
        {"sites": {"hidden.0": {"units": 5, "rules": [{"kind": "full"}]}}}))], "shape"),
    (lambda d, t: ["--mask", _write(t, "site.json", json.dumps(
        {"sites": {"hidden.9": {"units": 8}}}))], "not in the chain"),
    (lambda d, t: ["--input-dist", _write(t, "nan.json", '{"mean": [NaN, 0, 0, 0], '
                   '"cov": [[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}')], "NaN"),
    (lambda d, t: ["--input-dist", _write(t, "dim.json", json.dumps(
        {"mean": [0, 0], "cov": [[1, 0], [0, 1]]}))], "dimension"),
    (lambda d, t: ["--input-dist", _write(t, "psd.json", json.dumps(
        {"mean": [0] * 4, "cov": [[1, 2, 0, 0], [2, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}))],
     "positive semi-definite"),
    (lambda d, t: ["--input-dist", str(t / "missing.json")], "does not exist"),
])
def test_bad_inputs_exit_2_with_one_line(capsys, mlp_dir, tmp_path, setup, msg):
    code, out, err = _run(capsys, ["propagate", "--model", str(mlp_dir), "--json"]
                          + setup(mlp_dir, tmp_path))
    assert code == 2
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def _write(t, name, text):
    (t / name).write_text(text)
    return str(t / name)


def test_transformer_zoo_json(capsys):
    name = "induction" if (zoo.get("induction").weights_dir / "model.safetensors").exists() \
        else "maxk"
    if not (zoo.get(name).weights_dir / "model.safetensors").exists():
        pytest.skip("no zoo weights shipped yet")
    code, out, err = _run(capsys, ["propagate", "--model", name, "--mask", "full",
                                   "--samples", "256", "--n-inputs", "256", "--json"])
    assert code == 0, err
    d = json.loads(out)
    names = [s["name"] for s in d["sites"]]
    assert names[0] == "blocks.0.hook_resid_pre" and names[-1].startswith("logits@")
    vocab = zoo.get(name).model_config().d_vocab_out
    assert len(d["output"]["estimate_mean"]) == len(d["output"]["empirical_mean"]) == vocab
    assert d["cost"]["flops"] > 0 and d["surprise"]["data_bits"] > 0
    code, _, err = _run(capsys, ["propagate", "--model", name, "--sites", "blocks.0.hook_zzz"])
    assert code == 2 and "unknown site" in err
