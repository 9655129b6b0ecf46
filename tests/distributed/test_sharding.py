"""The sharded ground truth and the sweep on the local backend (no Ray needed)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from estimators.cli import main
from estimators.distributed import LocalBackend, shard_seed, shard_sizes
from estimators.tailrisk import Argmax, LogitThreshold, SampledProbability
from estimators.tailrisk.distributed import sharded_ground_truth_vector, target_truth
from estimators.tailrisk.ground_truth import exact, sampled
from estimators.tailrisk.sweep import read_results, run_sweep

from .conftest import SPEC_BASE


def test_shard_seeds_and_sizes_are_fixed_functions():
    assert shard_seed(0, 1) == shard_seed(0, 1)
    seeds = {shard_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= x < 2 ** 63 for x in seeds)
    assert shard_sizes(10, 4) == [4, 4, 2] and shard_sizes(8, 4) == [4, 4]


@pytest.mark.parametrize("behaviour", [Argmax(0), SampledProbability(0, 0.7),
                                       LogitThreshold(76, 1.0)])
def test_sharded_exact_equals_exact_bit_for_bit(charlm_hex3, behaviour):
    model, dist = charlm_hex3
    vec = sharded_ground_truth_vector(model, dist, behaviour, chunk=64, use_cache=False)
    assert vec["method"] == "exact" and vec["shards"] == 4  # 64 chunks, 16 per shard
    ref = exact(model, dist, behaviour, chunk=64).reshape(-1)
    assert torch.equal(torch.tensor(vec["values"], dtype=torch.float64), ref)


def test_sampled_shards_use_their_own_seeds_and_exact_counts(charlm_hex3):
    model, dist = charlm_hex3
    n, shard = 3000, 1024
    vec = sharded_ground_truth_vector(model, dist, Argmax(0), force_samples=n, seed=5,
                                      shard_samples=shard, use_cache=False)
    expect = sum(sampled(model, dist, Argmax(0), m, shard_seed(5, i))[1]
                 for i, m in enumerate(shard_sizes(n, shard)))
    assert vec["counts"] == [int(c) for c in expect] and sum(vec["counts"]) <= n
    g = target_truth(vec, Argmax(76), "clopper-pearson")
    assert g["interval_method"] == "clopper-pearson 95%" and g["hits"] == vec["counts"][76]
    lo, hi = g["interval"]
    assert lo <= g["probability"] <= hi


def test_ray_missing_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    code = main(["ground-truth", "--model", "charlm", "--distribution", "hex", "--target", "q",
                 "--backend", "ray"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "pip install -r requirements-ray.txt" in err


def test_local_backend_refuses_ray_options(capsys):
    code = main(["ground-truth", "--model", "charlm", "--distribution", "hex", "--target", "q",
                 "--workers", "2"])
    assert code == 2 and "needs --backend ray" in capsys.readouterr().err


class Crash(Exception):
    pass


def test_sweep_crashed_after_two_cells_resumes_without_recomputing(tmp_path):
    out = tmp_path / "r.jsonl"
    seen = []

    def crash_after_two(rec):
        seen.append(rec["key"])
        if len(seen) == 2:
            raise Crash

    with pytest.raises(Crash):
        run_sweep(dict(SPEC_BASE), out, LocalBackend(), on_cell=crash_after_two)
    first = out.read_text().splitlines()
    assert len(first) == 3  # the truth record and two cells
    again = []
    s = run_sweep(dict(SPEC_BASE), out, LocalBackend(), on_cell=lambda r: again.append(r["key"]))
    assert s["cells"] == 8 and s["skipped"] == 2 and s["computed"] == 6 and s["complete"]
    assert not set(again) & set(seen)
    lines = out.read_text().splitlines()
    assert lines[:3] == first and len(lines) == 9
    recs = [r for r in read_results(out) if r["kind"] == "cell"]
    assert len({r["key"] for r in recs}) == 8
    assert {r["method"] for r in s["scores"]} == {"optimal constant", "mc", "gld"}
    # a third run computes nothing
    s = run_sweep(dict(SPEC_BASE), out, LocalBackend())
    assert s["computed"] == 0 and s["skipped"] == 8


def test_sweep_cli_table_and_bad_spec(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC_BASE, "methods": ["gld"], "seeds": [0]}))
    code = main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert code == 0 and "gld" in out and "complete" in out
    spec.write_text(json.dumps({**SPEC_BASE, "methods": ["nope"]}))
    code = main(["sweep", "--spec", str(spec), "--out", str(tmp_path / "r.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and "unknown method 'nope'" in err and err.count("\n") == 1


def test_mlp_monte_carlo_moments_sharded_and_right():
    from estimators.activation.mlp import mc_moments_task, mlp_payload, monte_carlo_moments, \
        random_mlp

    lin = random_mlp([4, 3], "relu", seed=1, bias_std=0.5)  # one layer: no activation
    mean = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = a @ a.T
    m, v = monte_carlo_moments(lin, 40_000, seed=2, shard_samples=15_000, mean=mean, cov=cov)
    W, b = lin.layers[0].weight, lin.layers[0].bias
    want_m, want_v = (W @ mean + b).detach(), torch.diagonal(W @ cov @ W.T).detach()
    assert torch.allclose(m, want_m, atol=6 * float((want_v / 40_000).sqrt().max()))
    assert torch.allclose(v, want_v, rtol=0.05)
    # the driver's sum is the shards' sums with seeds shard_seed(2, i), in index order
    mlp = random_mlp([5, 6, 2], "gelu", seed=3)
    m, v = monte_carlo_moments(mlp, 2500, seed=4, shard_samples=1000)
    parts = [mc_moments_task({"mlp": mlp_payload(mlp), "n": k, "seed": shard_seed(4, i)})
             for i, k in enumerate(shard_sizes(2500, 1000))]
    s = parts[0][0] + parts[1][0] + parts[2][0]
    assert torch.equal(m, torch.from_numpy(s / 2500))


def test_unreachable_ray_address_is_one_line(capsys):
    pytest.importorskip("ray")
    code = main(["ground-truth", "--model", "charlm", "--distribution", "hex", "--target", "q",
                 "--backend", "ray", "--ray-address", "127.0.0.1:1"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in err
