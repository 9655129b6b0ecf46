"""QA regressions for sharded ground truth (`ground-truth` CLI, sweeps):
- a sampled result depends on --chunk (one generator per shard, drawn chunk by chunk), so the
  chunk is part of its cache key: a cached result equals a fresh one for the same flags;
- the tail-risk engine's conformance gate applies to ground truth as to every estimator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimators import conformance
from estimators.cli import main
from estimators.conformance import EngineUnsupported, EngineVerdict
from estimators.loading import load_model
from estimators.tailrisk.behaviours import Argmax
from estimators.tailrisk.distributed import sharded_ground_truth_vector
from estimators.tailrisk.distributions import parse_file

CASE = Path(__file__).resolve().parents[1] / ".." / "shared" / "cases" / "softcap-logits"


def _gt(capsys, *extra):
    rc = main(["ground-truth", "--model", str(CASE / "model"), "--distribution",
               str(CASE / "dist3.json"), "--target", "id:3", "--sampled", "3000", "--json",
               *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def test_sampled_cache_is_keyed_by_chunk(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path))
    fresh = _gt(capsys, "--chunk", "100", "--no-cache")["probability"]
    _gt(capsys, "--chunk", "8192")  # fills the cache with the default chunk's result
    again = _gt(capsys, "--chunk", "100")
    assert again["probability"] == fresh


def test_ground_truth_respects_the_tailrisk_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path))
    model = load_model(str(CASE / "model")).model
    dist = parse_file((CASE / "dist3.json").read_text(), 12, 8)
    key = (conformance.model_fingerprint(model), "tailrisk")
    monkeypatch.setitem(conformance._VERDICTS, key,
                        EngineVerdict("tailrisk", False, reason="refused for this test"))
    with pytest.raises(EngineUnsupported, match="refused for this test"):
        sharded_ground_truth_vector(model, dist, Argmax(3), use_cache=False)


def test_search_steps_are_capped(capsys):
    """`propagate --search greedy --search-steps 1000000000` ran for minutes (no cap)."""
    rc = main(["propagate", "--model", str(CASE / "model"), "--tokens",
               str(CASE / "data8.json"), "--search", "greedy", "--search-steps", "1000000000",
               "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "--search-steps must be ≤ 10,000" in err and "Traceback" not in err
