"""The Ray backend on a local cluster this module starts on 127.0.0.1 with 2 workers (and shuts
down): exact ground truth equals the local result bit for bit; sampled ground truth is the same
for 1 and 2 workers and its interval covers the exact value; an interrupted sweep resumes."""

from __future__ import annotations

import json

import pytest
import torch

ray = pytest.importorskip("ray")

from estimators.cli import main  # noqa: E402
from estimators.distributed import RayBackend, model_ref  # noqa: E402
from estimators.tailrisk import Argmax, SampledProbability  # noqa: E402
from estimators.tailrisk.distributed import (sharded_ground_truth_vector,  # noqa: E402
                                             target_truth)
from estimators.tailrisk.ground_truth import exact  # noqa: E402
from estimators.tailrisk.sweep import run_sweep  # noqa: E402

from .conftest import SPEC_BASE  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    assert not ray.is_initialized()
    backend = RayBackend(workers=2)
    assert backend.owned and backend.workers == 2
    nodes = ray.nodes()
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    yield backend
    backend.close()
    assert not ray.is_initialized()


@pytest.mark.parametrize("behaviour", [Argmax(0), SampledProbability(0, 0.7)])
def test_exact_on_ray_equals_local_bit_for_bit(cluster, charlm_hex3, behaviour):
    model, dist = charlm_hex3
    ref = model_ref("charlm", model)
    vec = sharded_ground_truth_vector(model, dist, behaviour, cluster, ref, chunk=64,
                                      use_cache=False)
    assert vec["method"] == "exact" and vec["shards"] == 4
    local = exact(model, dist, behaviour, chunk=64)
    assert torch.equal(torch.tensor(vec["values"], dtype=torch.float64), local)


def test_sampled_same_for_1_and_2_workers_and_covers_exact(cluster, charlm_hex3):
    model, dist = charlm_hex3
    ref = model_ref("charlm", model)
    kw = dict(force_samples=5000, seed=3, shard_samples=1024, use_cache=False)
    two = sharded_ground_truth_vector(model, dist, Argmax(0), cluster, ref, **kw)
    one = sharded_ground_truth_vector(model, dist, Argmax(0), cluster.with_workers(1), ref, **kw)
    local = sharded_ground_truth_vector(model, dist, Argmax(0), None, None, **kw)
    assert two["shards"] == 5 and two["counts"] == one["counts"] == local["counts"]
    assert two["values"] == one["values"]
    truth = exact(model, dist, Argmax(0))
    for t in (76, 29):  # exact p ≈ 9.8e-3 and 3.2e-3
        g = target_truth(two, Argmax(t))
        assert g["hits"] > 0 and g["interval"][0] <= float(truth[t]) <= g["interval"][1]


def test_cli_on_the_running_cluster_matches_local(cluster, capsys):
    argv = ["ground-truth", "--model", "charlm", "--distribution", "hex", "--target", "q",
            "--sampled", "3000", "--shard-samples", "1000", "--no-cache", "--json"]
    assert main(argv + ["--backend", "ray"]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    here = json.loads(capsys.readouterr().out)
    assert on_ray["backend"] == "ray" and here["backend"] == "local"
    assert on_ray["hits"] == here["hits"] and on_ray["interval"] == here["interval"]
    assert ray.is_initialized()  # a cluster the CLI did not start is left running


def test_interrupted_sweep_resumes_without_recomputing(cluster, tmp_path):
    out = tmp_path / "r.jsonl"
    first = run_sweep(dict(SPEC_BASE), out, cluster, max_cells=3)
    assert first["computed"] == 3 and first["remaining"] == 5 and not first["complete"]
    done_first = [json.loads(line)["key"] for line in out.read_text().splitlines()[1:]]
    again = []
    second = run_sweep(dict(SPEC_BASE), out, cluster, on_cell=lambda r: again.append(r["key"]))
    assert second["skipped"] == 3 and second["computed"] == 5 and second["complete"]
    assert not set(again) & set(done_first) and len(set(again) | set(done_first)) == 8
    # the same cells computed here give the same estimates as on the cluster
    local = run_sweep(dict(SPEC_BASE), tmp_path / "local.jsonl")
    est = {r["method"]: r["itakura_saito"] for r in second["scores"]}
    assert est == {r["method"]: r["itakura_saito"] for r in local["scores"]}


def test_mlp_monte_carlo_truth_on_ray_equals_local(cluster):
    from estimators.activation.mlp import monte_carlo_moments, random_mlp

    mlp = random_mlp([16] * 4, "relu", seed=0)
    kw = dict(n=30_000, seed=7, shard_samples=8_000)
    local = monte_carlo_moments(mlp, **kw)
    two = monte_carlo_moments(mlp, backend=cluster, **kw)
    one = monte_carlo_moments(mlp, backend=cluster.with_workers(1), **kw)
    for a, b in ((local, two), (local, one)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
