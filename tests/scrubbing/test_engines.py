"""The engine choice (engines.py), greedy search over edges with stop reasons and re-verification
(search.py), `scrub-search --engine`, and baseline losses through the shared disk store
(activation_cache.cached_tensors). Tiny random models; seconds each."""

import json

import pytest
import torch

from estimators import activation_cache
from estimators.cli import main
from estimators.loading import save_checkpoint
from estimators.scrubbing import PathPartition, ScrubData, Scrubber
from estimators.scrubbing.edges import EdgeScrubber
from estimators.scrubbing.engines import choose_engine, make_scrubber
from estimators.scrubbing.paths import PathError
from estimators.scrubbing.search import greedy_search
from tests.scrubbing.helpers import tiny_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _data(model, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, model.cfg.d_vocab, (n, model.cfg.n_ctx), generator=g).tolist()
    return ScrubData.from_sequences(seqs, model.cfg.d_vocab, model.cfg.n_ctx)


def big_model():
    """4 layers × 4 heads with MLPs: 456,976 treeified paths (over the 200,000 limit), 479
    edges, d_model 16: forward passes cost milliseconds."""
    return tiny_model(False, n_layers=4, n_heads=4, seed=2)


def test_auto_picks_treeified_when_paths_fit_and_edges_beyond():
    small = choose_engine(tiny_model(True))
    assert small.engine == "treeified" and "auto: treeified" in small.reason
    big = choose_engine(big_model())
    assert big.engine == "edges" and big.n_paths == 456_976 and big.n_edges == 479
    assert "456,976 treeified paths, more than the 200,000" in big.reason
    with pytest.raises(PathError, match="at most 200,000 paths") as e:
        choose_engine(big_model(), "treeified")
    assert "\n" not in str(e.value)
    with pytest.raises(PathError, match="unknown scrubbing engine"):
        choose_engine(big_model(), "trees")
    s, choice = make_scrubber(big_model(), _data(big_model(), 4), "auto")
    assert isinstance(s, EdgeScrubber) and choice.engine == "edges"


def test_search_over_edges_matches_treeified_losses_and_verifies():
    """Both engines search the same node candidates; every partition the edge search accepts
    has the same losses (and S(Y|π)) under the treeified engine, S(π) is counted over each
    engine's units, the stop reason is stated and the fresh re-evaluation equals the last
    step's total."""
    model = tiny_model(False, n_layers=2, n_heads=2)
    data = _data(model)
    tree, edge = Scrubber(model, data), EdgeScrubber(model, data, max_partitions=8)
    for s in (tree, edge):
        steps = greedy_search(s, unit="node", max_steps=3)
        assert steps.stop_reason
        assert steps.verified_total_bits == pytest.approx(
            steps[-1].result.surprise.total_bits, rel=1e-6, abs=1e-6)
        totals = [st.result.surprise.total_bits for st in steps]
        assert all(b < a for a, b in zip(totals, totals[1:]))
    found = greedy_search(edge, unit="edge", max_steps=2)
    parts = [st.result.partition for st in found]
    again = tree.evaluate(parts)
    for st, r in zip(found, again):
        assert r.loss_scrubbed == pytest.approx(st.result.loss_scrubbed, rel=1e-5, abs=1e-5)
        assert r.surprise.data_bits == pytest.approx(st.result.surprise.data_bits, rel=1e-4,
                                                     abs=1e-3)
    stopped = greedy_search(edge, unit="node", max_steps=3, should_stop=lambda: True)
    assert len(stopped) == 1 and stopped.stop_reason == "cancelled"
    with pytest.raises(PathError, match="not single paths"):
        greedy_search(edge, unit="path")


def test_edge_search_drops_moves_the_engine_cannot_express():
    """With a[L-1].0's every input important, an edge from embed into a0.0 in a matched block
    would share paths with it: the search never proposes it, and each step is expressible."""
    model = tiny_model(True, n_layers=2, n_heads=2)
    data = _data(model)
    edge = EdgeScrubber(model, data)
    start = PathPartition(("*>a1.0:*>*",))
    from estimators.scrubbing.search import _expressible, _moves

    pool = edge.graph.edge_patterns()
    matches = {c: edge.graph.match_required(c) for c in pool}
    moves = _moves(start, edge.assign(start), pool, matches, ["token_at:-1"])
    kept = [label for label, _ in _expressible(edge, moves)]
    assert "embed>a0.0:q>* (match:token_at:-1)" in [m[0] for m in moves]
    assert "embed>a0.0:q>* (match:token_at:-1)" not in kept
    assert "embed>a0.0:q>*" in kept  # into the important group: expressible
    steps = greedy_search(edge, unit="edge", max_steps=2, start=start, features=["token_at:-1"])
    for st in steps:
        edge.check(st.result.partition)


def test_cli_scrub_search_engine_edges(tmp_path, capsys):
    model = big_model()
    save_checkpoint(model, tmp_path / "ckpt")
    data = _data(model, 12)
    (tmp_path / "d.json").write_text(json.dumps(data.batch.tokens.tolist()))
    argv = ["scrub-search", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "d.json"),
            "--unit", "node", "--steps", "1", "--json"]
    assert main(argv) in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["engine"] == "scrubbing-edges" and "auto: edges" in out["engine_reason"]
    assert out["stop_reason"] and out["verified_total_bits"] == pytest.approx(
        out["steps"][-1]["total_bits"], rel=1e-6, abs=1e-6)
    lib = greedy_search(EdgeScrubber(model, data), unit="node", max_steps=1)
    assert [s["total_bits"] for s in out["steps"]] == pytest.approx(
        [s.result.surprise.total_bits for s in lib], rel=1e-6)
    assert main(argv[:-1] + ["--engine", "treeified"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "at most 200,000 paths" in err
    assert main(argv[:5] + ["--unit", "path", "--steps", "1"]) == 2
    assert "not single paths" in capsys.readouterr().err


def _count_forward(model):
    calls = []
    handle = model.embed.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_baselines_come_from_the_shared_store_on_a_second_scrubber():
    """A second scrubber (a new session or CLI run: nothing in process) on the same model, data,
    seed and N reads the original and all-resampled losses from disk: no forward pass, the
    same numbers; the edge engine's baselines are the same entries."""
    model = tiny_model(False, n_layers=2, n_heads=2)
    data = _data(model, 12)
    calls, handle = _count_forward(model)
    try:
        first = Scrubber(model, data, seed=1).baseline_losses()
        assert len(calls) == 2  # original and all-resampled, one batch each
        activation_cache._SMALL.clear()  # a new process: only the disk entry is left
        activation_cache.reset_small_stats()
        calls.clear()
        second = Scrubber(model, data, seed=1).baseline_losses()
        assert calls == [] and activation_cache.small_stats()["disk_hits"] == 1
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        # the edge engine reads the same entry; its scores equal a cold treeified run's
        edge = EdgeScrubber(model, data, seed=1)
        [r] = edge.evaluate([PathPartition(("*",))])
        assert torch.equal(r.per_example_original, first[0])
        assert r.loss_scrubbed == r.loss_original
        # another seed is another key: computed afresh
        calls.clear()
        Scrubber(model, data, seed=2).baseline_losses()
        assert len(calls) == 2
    finally:
        handle.remove()


def test_cli_scrub_both_engines_agree_on_a_small_model(tmp_path, capsys):
    """`scrub --engine treeified` and `--engine edges` on a model small enough to treeify: the
    same losses and S(Y|π) for a partition written in edges; S(π) over paths vs edges."""
    model = tiny_model(False, n_layers=2, n_heads=2)
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "d.json").write_text(json.dumps(_data(model, 12).batch.tokens.tolist()))
    (tmp_path / "p.json").write_text(json.dumps({
        "important": ["embed>logits", "*>a0.1:*>a1.0:k>*"],
        "blocks": [{"paths": ["*>a1.1:*>logits"], "resample": {"match": "token_at:-1"}}]}))
    out = {}
    for engine in ("treeified", "edges"):
        assert main(["scrub", "--model", str(tmp_path / "ckpt"), "--data",
                     str(tmp_path / "d.json"), "--partition", str(tmp_path / "p.json"),
                     "--engine", engine, "--json"]) in (0, None)
        out[engine] = json.loads(capsys.readouterr().out)
    t, e = out["treeified"], out["edges"]
    assert t["engine_reason"].startswith("treeified") and e["engine_reason"].startswith("edges")
    for k in ("loss_original", "loss_random"):
        assert t[k] == e[k]
    assert e["loss_scrubbed"] == pytest.approx(t["loss_scrubbed"], rel=1e-5, abs=1e-6)
    assert e["surprise"]["data_bits"] == pytest.approx(t["surprise"]["data_bits"], rel=1e-4,
                                                        abs=1e-3)
    assert e["n_edges"] > 0 and t["n_paths"] > 0


def test_cli_scrub_search_caps_bits_per_parameter_and_never_prints_negative_zero(tmp_path,
                                                                                  capsys):
    """An absurd --bits-per-parameter (1e308: S(π) would be inf) is one line, exit 2; a step
    whose scrubbed loss equals L_random reports loss_recovered 0.0, not -0.0, also when the
    random model's L_random is below L_original."""
    from estimators.scrubbing.evaluate import loss_recovered

    assert str(loss_recovered(2.7, 2.6, 2.6)) == "0.0"
    model = tiny_model(False, n_layers=2, n_heads=2, seed=2)
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "d.json").write_text(json.dumps(_data(model, 8).batch.tokens.tolist()))
    argv = ["scrub-search", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "d.json"),
            "--engine", "edges", "--unit", "node", "--steps", "0", "--json"]
    for cmd in (argv, ["scrub", *argv[1:5], "--reference", "x"]):
        assert main(cmd + ["--bits-per-parameter", "1e308"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "≤ 1024" in err
    assert main(argv) in (0, None)
    out = capsys.readouterr().out
    assert "-0.0" not in out and json.loads(out)["steps"][0]["loss_recovered"] == 0.0
