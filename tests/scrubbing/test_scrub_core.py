"""Causal scrubbing library: path graph, partitions, stream evaluation against the reference."""

import json
import math

import numpy as np
import pytest
import torch
from tests.scrubbing.helpers import tiny_model
from tests.scrubbing.scrub_reference import reference_logits

from estimators.scrubbing import Block, PathError, PathGraph, PathPartition, ScrubData, Scrubber
from estimators.scrubbing.partition import REST
from estimators.scrubbing.sampling import draw_matched, feature_values
from estimators.scrubbing.treeify import plan_versions, treeified_logits
from estimators.surprise import log2_binomial


@pytest.fixture(scope="module")
def attn_model():
    return tiny_model(attn_only=True, n_heads=3)


@pytest.fixture(scope="module")
def mlp_model():
    return tiny_model(attn_only=False, n_heads=2)


def data_for(model, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, model.cfg.d_vocab, (n, model.cfg.n_ctx), generator=g).tolist()
    return ScrubData.from_sequences(seqs, model.cfg.d_vocab, model.cfg.n_ctx, "random")


# ----------------------------------------------------------------------------- path graph
def test_path_count_and_text_form():
    g = PathGraph(n_layers=2, n_heads=3, attn_only=True)
    # into a0.h: 3 prefixes each; into a1.h: 3·(1 + 3·3) = 30; logits: 1 + 3·3 + 3·30
    assert g.n_paths == 1 + 9 + 90
    assert g.paths[0] == "embed>logits"
    assert "embed>a0.1:k>a1.2:v>logits" in g.path_index
    assert len(set(g.paths)) == g.n_paths
    gm = PathGraph(n_layers=1, n_heads=1, attn_only=False)
    # a0.0: 3; m0 reads embed and a0.0: 1 + 3; logits: 1 + 3 + 4
    assert gm.paths == ["embed>logits", "embed>a0.0:q>logits", "embed>a0.0:k>logits",
                        "embed>a0.0:v>logits", "embed>m0>logits", "embed>a0.0:q>m0>logits",
                        "embed>a0.0:k>m0>logits", "embed>a0.0:v>m0>logits"]


def test_pattern_semantics():
    g = PathGraph(n_layers=2, n_heads=3, attn_only=True)
    got = {g.paths[i] for i in g.match("*>a1.*:k>logits")}
    want = {p for p in g.paths if p.endswith(":k>logits") and p.split(">")[-2].startswith("a1.")}
    assert got == want and len(got) == 3 * (1 + 9)
    assert g.match("*").size == g.n_paths
    assert {g.paths[i] for i in g.match("embed>a0.1:*>logits")} == {
        "embed>a0.1:q>logits", "embed>a0.1:k>logits", "embed>a0.1:v>logits"}
    # a hop-internal * never crosses a hop boundary
    assert g.match("embed>a*>logits").size == 9 + 9
    for bad in ["", "embed>>logits", "embed>a0.1:K>logits", "embed;rm>logits", 3]:
        with pytest.raises(PathError):
            g.match(bad)
    with pytest.raises(PathError, match="matches no path"):
        g.match_required("embed>a5.0:q>logits")


def test_edge_patterns_cover_every_edge_once_per_path():
    g = PathGraph(n_layers=2, n_heads=2, attn_only=False)
    counts = np.zeros(g.n_paths, dtype=int)
    for p in g.edge_patterns():
        idx = g.match_required(p)
        counts[idx] += 1
    hops = np.array([p.count(">") for p in g.paths])  # a path with h hops has h edges
    assert (counts == hops).all()


# ----------------------------------------------------------------------------- partitions
def test_partition_json_round_trip_hash_and_errors():
    p = PathPartition(important=("embed>a1.*:q>logits",),
                      blocks=(Block(("embed>a1.*:v>logits",), "uniform"),
                              Block(("embed>logits",), "match:token_at:-2")), name="x")
    d = json.loads(p.to_json())
    assert d["blocks"][1]["resample"] == {"match": "token_at:-2"}
    q = PathPartition.from_json(p.to_json())
    assert q == p and q.hash == p.hash
    assert p.with_name("other").hash == p.hash
    assert PathPartition(important=("embed>logits",)).hash != p.hash
    for bad in ["{", "[]", '{"important": "embed>logits"}', '{"blocks": [{"paths": []}]}',
                '{"blocks": [{"paths": ["*"], "resample": "random"}]}',
                '{"blocks": [{"paths": ["*"], "resample": {"match": "colour"}}]}',
                '{"important": [], "extra": 1}']:
        with pytest.raises(PathError):
            PathPartition.from_json(bad)
    g = PathGraph(n_layers=2, n_heads=2, attn_only=True)
    with pytest.raises(PathError, match="matches no path"):
        PathPartition(important=("embed>m0>logits",)).assign(g)
    with pytest.raises(PathError, match="both important and blocks"):
        PathPartition(important=("*",), blocks=(Block(("embed>logits",)),)).assign(g)


def test_description_bits_code():
    g = PathGraph(n_layers=2, n_heads=2, attn_only=True, n_ctx=8)
    P, b = g.n_paths, 3.0
    assert PathPartition().description_bits(g, b) == 0.0
    one = PathPartition(important=("embed>logits",))
    # which: log2(P+1) + log2 C(P,1); grouping: log2(1+1) for B = 0; one kept path: b bits
    assert one.description_bits(g, b) == pytest.approx(math.log2(P + 1) + math.log2(P) + 1.0 + b)
    two = PathPartition(important=("embed>logits",), blocks=(Block(("embed>a0.0:q>logits",)),))
    # grouping: B (log2 3) + block size (log2 3) + which of the 2 goes where (log2 2!/1!1!);
    # uniform block: 1 rule bit, no parameter
    want = (math.log2(P + 1) + log2_binomial(P, 2)) + (2 * math.log2(3) + 1.0) + 1.0 + b
    assert two.description_bits(g, b) == pytest.approx(want)
    # every path in one label-matched block: each path keeps 1/n of the input
    every = PathPartition(blocks=(Block(("*",), "match:label"),))
    rule = 1.0 + math.log2(3)
    assert every.description_bits(g, b) == pytest.approx(3 * math.log2(P + 1) + rule + P * b / 8)
    # not symmetric in k <-> P - k: claiming everything costs at least P·b
    everything = PathPartition(important=("*",))
    assert everything.description_bits(g, b) >= P * b
    # matching on every position is keeping the real input: the same parameter bits
    allpos = PathPartition(blocks=(Block(("*",), "match:tokens_at:" + ",".join(
        str(i) for i in range(8))),))
    parts = allpos.description_parts(g, b)
    assert parts[f"blocks[0] {allpos.blocks[0].resample} ({P} paths)"] == pytest.approx(
        1.0 + math.log2(3) + 8 + P * b)


# ----------------------------------------------------------------------------- sampling
def test_feature_matched_sampler_only_draws_matches():
    g = torch.Generator().manual_seed(3)
    pool = torch.randint(0, 4, (300, 6), generator=g)
    ref = pool[:50]
    for feature in ["token_at:-1", "tokens_at:0,2", "label"]:
        labels = pool[:, 0] % 3
        pv = feature_values(feature, pool, labels)
        rv = feature_values(feature, ref, labels[:50])
        idx, fallbacks = draw_matched(rv, pv, seed=1, key="k")
        assert fallbacks == 0
        assert (pv[idx] == rv).all()
        assert idx.unique().numel() > 10  # it really resamples, not just copies the reference
    # every matching example can be drawn: for one reference, many draws cover its group
    rv = feature_values("token_at:-1", ref[:1].expand(4000, -1), None)
    pv = feature_values("token_at:-1", pool, None)
    idx, _ = draw_matched(rv, pv, seed=2, key="k")
    assert set(idx.tolist()) == set(torch.nonzero(pv[:, 0] == rv[0, 0]).flatten().tolist())
    with pytest.raises(PathError):
        feature_values("label", pool, None)
    with pytest.raises(PathError):
        feature_values("token_at:9", pool, None)


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("which", ["attn", "mlp"])
def test_all_important_gives_exactly_the_model(which, attn_model, mlp_model):
    model = attn_model if which == "attn" else mlp_model
    data = data_for(model)
    s = Scrubber(model, data, batch_size=10)
    plan = plan_versions(s.graph, [np.zeros(s.graph.n_paths, dtype=np.int64)])
    assert all(v == 1 for v in plan.n_versions().values())
    logits = treeified_logits(model, s.graph, plan, data.batch.tokens[None])
    torch.testing.assert_close(logits[0], model(data.batch.tokens), atol=1e-5, rtol=1e-5)
    [r] = s.evaluate([PathPartition(important=("*",))])
    assert r.loss_scrubbed == pytest.approx(r.loss_original, abs=1e-5)
    assert r.loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert abs(r.surprise.data_bits) < 1e-3


@pytest.mark.parametrize("which", ["attn", "mlp"])
def test_everything_resampled_gives_the_random_loss(which, attn_model, mlp_model):
    model = attn_model if which == "attn" else mlp_model
    data = data_for(model)
    s = Scrubber(model, data, batch_size=10)
    [r] = s.evaluate([PathPartition()])
    rest, _ = s.draw("rest", PathPartition(), REST, data)
    # independent: the model itself on the shared random inputs, scored on the real targets
    with torch.no_grad():
        direct = data.loss_fn(model(data.batch.tokens[rest]), data.batch)
    assert r.loss_random == pytest.approx(float(direct.mean()), abs=1e-5)
    assert r.loss_scrubbed == pytest.approx(r.loss_random, abs=1e-5)
    assert r.loss_recovered == pytest.approx(0.0, abs=1e-4)
    assert r.surprise.argument_bits == 0.0


def random_partition(graph, rng, n_blocks=2):
    """Each path to important / one of the blocks / rest at random, as literal patterns."""
    groups = rng.integers(-1, n_blocks + 1, size=graph.n_paths)
    imp = tuple(graph.paths[i] for i in np.flatnonzero(groups == 0))
    blocks = tuple(Block(tuple(graph.paths[i] for i in np.flatnonzero(groups == j)),
                         "uniform" if j % 2 else "match:token_at:-1")
                   for j in range(1, n_blocks + 1) if (groups == j).any())
    return PathPartition(imp, blocks)


@pytest.mark.parametrize("which", ["attn", "mlp"])
def test_stream_evaluation_equals_recursive_hook_reference(which, attn_model, mlp_model):
    model = attn_model if which == "attn" else mlp_model
    data = data_for(model, n=12)
    s = Scrubber(model, data, batch_size=12, max_partitions=8)
    rng = np.random.default_rng(0)
    parts = [random_partition(s.graph, rng) for _ in range(3)]
    # structured ones too: a few important edges, the rest independent
    parts.append(PathPartition(important=("embed>logits", "*>a1.*:k>logits")))
    parts.append(PathPartition(important=("*>a0.0:*>*",),
                               blocks=(Block(("embed>a1.*:*>logits",), "match:token_at:-1"),)))
    scrubbed, diag = s.scrubbed_losses(parts)
    for i, p in enumerate(parts):
        assignment = p.assign(s.graph)
        keys, streams = {}, [data.batch.tokens]
        from estimators.scrubbing.evaluate import stream_key
        path_stream = {}
        for j, path in enumerate(s.graph.paths):
            key = stream_key(int(assignment[j]), p)
            if key not in keys:
                if key == "":
                    keys[key] = 0
                else:
                    idx, _ = s.draw(key, p, int(assignment[j]), data)
                    keys[key] = len(streams)
                    streams.append(data.batch.tokens[idx])
            path_stream[path] = keys[key]
        ref_logits = reference_logits(model, path_stream, torch.stack(streams))
        ref_loss = data.loss_fn(ref_logits, data.batch)
        torch.testing.assert_close(scrubbed[i], ref_loss, atol=2e-5, rtol=2e-5)
        # and the logits themselves, partition alone
        plan = plan_versions(s.graph, [np.array([path_stream[q] for q in s.graph.paths])])
        got = treeified_logits(model, s.graph, plan, torch.stack(streams))[0]
        torch.testing.assert_close(got, ref_logits, atol=2e-5, rtol=2e-5)
    # a batch of partitions scores each exactly as alone
    alone, _ = s.scrubbed_losses(parts[:1])
    torch.testing.assert_close(alone[0], scrubbed[0])


@pytest.mark.parametrize("kind", ["no-ln-3-layers", "bidirectional-mlp"])
def test_other_architectures_match_the_reference(kind):
    if kind == "no-ln-3-layers":
        model = tiny_model(attn_only=True, normalization_type=None, n_layers=3, n_heads=1)
    else:
        model = tiny_model(attn_only=False, n_layers=2, n_heads=1, attention_dir="bidirectional")
    data = data_for(model, n=8)
    s = Scrubber(model, data)
    rng = np.random.default_rng(1)
    p = random_partition(s.graph, rng, n_blocks=1)
    scrubbed, _ = s.scrubbed_losses([p])
    assignment = p.assign(s.graph)
    streams = [data.batch.tokens]
    path_stream = {}
    from estimators.scrubbing.evaluate import stream_key
    ids = {"": 0}
    for j, path in enumerate(s.graph.paths):
        key = stream_key(int(assignment[j]), p)
        if key not in ids:
            idx, _ = s.draw(key, p, int(assignment[j]), data)
            ids[key] = len(streams)
            streams.append(data.batch.tokens[idx])
        path_stream[path] = ids[key]
    ref = data.loss_fn(reference_logits(model, path_stream, torch.stack(streams)), data.batch)
    torch.testing.assert_close(scrubbed[0], ref, atol=2e-5, rtol=2e-5)


def test_unsupported_model_and_bad_data_are_refused():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    # rotary models are supported now (see test_conformance.py); a norm on each sublayer's
    # summed output cannot be split into per-head paths at all
    cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, n_heads=2,
                                  d_vocab=5, attn_only=True, normalization_type="RMS",
                                  use_normalization_before_and_after=True, device="cpu")
    with pytest.raises(PathError, match="use_normalization_before_and_after"):
        PathGraph.from_model(HookedTransformer(cfg))
    with pytest.raises(ValueError, match="same length"):
        ScrubData.from_sequences([[1, 2], [1, 2, 3]], 11, 8)
    with pytest.raises(ValueError, match="token ids"):
        ScrubData.from_sequences([[1, 2], [1, 99]], 11, 8)
    with pytest.raises(ValueError):
        ScrubData.from_sequences({"a": 1}, 11, 8)
    with pytest.raises(PathError, match="more than"):
        PathGraph(n_layers=6, n_heads=8, attn_only=False)


def test_config_validation_round_trip_and_estimate(attn_model):
    from estimators.scrubbing import ScrubConfig

    c = ScrubConfig(seed=3, batch_size=7, max_partitions=2)
    assert ScrubConfig.from_dict(c.to_dict()) == c
    for bad in ({"batch_size": 0}, {"seed": -1}, {"max_partitions": 1.5}, {"seed": True}):
        with pytest.raises(ValueError):
            ScrubConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        ScrubConfig.from_dict({"sead": 1})
    data = data_for(attn_model, n=10)
    s = Scrubber(attn_model, data, c)
    [r] = s.evaluate([PathPartition(("embed>logits",))])
    # kwargs and config give the same scores
    [r2] = Scrubber(attn_model, data, seed=3, batch_size=7).evaluate([PathPartition(("embed>logits",))])
    assert r.loss_scrubbed == r2.loss_scrubbed
    e = r.to_estimate()
    assert e.value == r.loss_scrubbed and e.surprise is r.surprise
    assert e.diagnostics["loss_recovered"] == r.loss_recovered


def test_memory_budget_shrinks_the_data_batch_not_the_result(mlp_model):
    data = data_for(mlp_model, n=12)
    rng = np.random.default_rng(5)
    big = Scrubber(mlp_model, data, batch_size=12)
    parts = [random_partition(big.graph, rng) for _ in range(2)]
    a, da = big.scrubbed_losses(parts)
    small = Scrubber(mlp_model, data, batch_size=12, memory_budget_mib=1)
    b, db = small.scrubbed_losses(parts)
    assert da["examples_per_pass"] == [12] and db["examples_per_pass"][0] < 12
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
