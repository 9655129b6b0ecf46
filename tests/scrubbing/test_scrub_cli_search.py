"""CLI fields and errors, greedy search, anomaly scores and ROC AUC."""

import json

import numpy as np
import pytest
import torch
from tests.scrubbing.helpers import tiny_model

from estimators.cli import main
from estimators.loading import save_checkpoint
from estimators.scrubbing import PathPartition, ScrubData, Scrubber
from estimators.scrubbing.anomaly import anomaly_scores, roc_auc, shuffle_second_half
from estimators.scrubbing.search import greedy_search


@pytest.fixture(scope="module")
def model():
    return tiny_model(attn_only=True, n_heads=2)


@pytest.fixture(scope="module")
def data(model):
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, model.cfg.d_vocab, (20, model.cfg.n_ctx), generator=g).tolist()
    return ScrubData.from_sequences(seqs, model.cfg.d_vocab, model.cfg.n_ctx)


def run_cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_scrub_prints_the_fields(tmp_path, capsys, model, data):
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "data.json").write_text(json.dumps(data.batch.tokens.tolist()))
    part = PathPartition(important=("embed>logits", "*>a1.*:v>logits"))
    (tmp_path / "p.json").write_text(part.to_json())
    code, out, err = run_cli(capsys, ["scrub", "--model", str(tmp_path / "ckpt"), "--partition",
                                      str(tmp_path / "p.json"), "--data",
                                      str(tmp_path / "data.json"), "--seed", "3", "--json"])
    assert code == 0, err
    d = json.loads(out)
    for k in ("loss_original", "loss_scrubbed", "loss_random", "loss_recovered"):
        assert isinstance(d[k], float)
    s = d["surprise"]
    assert s["total_bits"] == pytest.approx(s["argument_bits"] + s["data_bits"])
    # the same numbers as the library
    [r] = Scrubber(model, data, seed=3).evaluate([part])
    assert d["loss_scrubbed"] == pytest.approx(r.loss_scrubbed, rel=1e-6)
    assert d["loss_recovered"] == pytest.approx(r.loss_recovered, rel=1e-6)
    assert s["argument_bits"] == pytest.approx(r.surprise.argument_bits)
    # an explanation file downloaded from the page works too
    doc = {"format": "heuristic-estimation-workbench/explanation", "version": 1,
           "kind": "scrubbing", "context": {}, "payload": part.to_dict()}
    (tmp_path / "e.json").write_text(json.dumps(doc))
    code, out2, _ = run_cli(capsys, ["scrub", "--model", str(tmp_path / "ckpt"), "--partition",
                                     str(tmp_path / "e.json"), "--data",
                                     str(tmp_path / "data.json"), "--seed", "3", "--json"])
    assert code == 0 and json.loads(out2)["loss_scrubbed"] == d["loss_scrubbed"]


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"important": ["embed>a7.0:q>logits"]}', "matches no path"),
    ('{"important": ["*"], "blocks": [{"paths": ["embed>logits"]}]}', "must not overlap"),
    ('{"blocks": [{"paths": ["*"], "resample": "sometimes"}]}', "resample"),
])
def test_cli_bad_partition_is_one_clear_line(tmp_path, capsys, model, data, content, needle):
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "data.json").write_text(json.dumps(data.batch.tokens.tolist()))
    (tmp_path / "p.json").write_text(content)
    code, out, err = run_cli(capsys, ["scrub", "--model", str(tmp_path / "ckpt"), "--partition",
                                      str(tmp_path / "p.json"), "--data",
                                      str(tmp_path / "data.json")])
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_needs_data_for_a_checkpoint(tmp_path, capsys, model):
    save_checkpoint(model, tmp_path / "ckpt")
    (tmp_path / "p.json").write_text("{}")
    code, _, err = run_cli(capsys, ["scrub", "--model", str(tmp_path / "ckpt"), "--partition",
                                    str(tmp_path / "p.json")])
    assert code == 2 and "--data" in err
    (tmp_path / "d.json").write_text("[[1, 2, 3], [1, 2]]")
    code, _, err = run_cli(capsys, ["scrub", "--model", str(tmp_path / "ckpt"), "--partition",
                                    str(tmp_path / "p.json"), "--data", str(tmp_path / "d.json")])
    assert code == 2 and "same length" in err


def test_greedy_search_lowers_total_surprise_and_stops(model, data):
    s = Scrubber(model, data, max_partitions=64)
    seen = []
    steps = greedy_search(s, unit="node", max_steps=3, progress=lambda i, n, st: seen.append(i))
    totals = [st.result.surprise.total_bits for st in steps]
    assert all(b < a for a, b in zip(totals, totals[1:]))
    assert seen == list(range(len(steps)))
    # each accepted step is the best single addition: check step 1 by brute force
    if len(steps) > 1:
        cands = s.graph.node_patterns()
        res = s.evaluate([PathPartition((c,)) for c in cands])
        best = min(r.surprise.total_bits for r in res)
        assert steps[1].result.surprise.total_bits == pytest.approx(best)
    stopped = greedy_search(s, unit="node", max_steps=3, should_stop=lambda: True)
    assert len(stopped) == 1


def test_roc_auc_hand_example():
    # normal [1, 2, 3], anomalous [2, 4]: pairs (a > n): 4 beats all 3; 2 beats 1, ties 2
    # → (3 + 1 + 0.5) / 6
    assert roc_auc([1, 2, 3], [2, 4]) == pytest.approx(4.5 / 6)
    assert roc_auc([0, 0], [1]) == 1.0
    assert roc_auc([1], [0, 0]) == 0.0
    assert roc_auc([5, 5], [5]) == 0.5
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=17) + 0.5
    brute = np.mean((y[None] > x[:, None]) + 0.5 * (y[None] == x[:, None]))
    assert roc_auc(x, y) == pytest.approx(brute)
    with pytest.raises(ValueError):
        roc_auc([], [1])


def test_anomaly_scores_are_per_input_scrubbed_losses(model, data):
    s = Scrubber(model, data)
    p = PathPartition(important=("embed>logits",))
    odd = ScrubData(shuffle_second_half(data.batch, seed=1), data.loss_fn)
    assert not torch.equal(odd.batch.tokens, data.batch.tokens)
    assert torch.equal(odd.batch.tokens[:, :4], data.batch.tokens[:, :4])
    assert torch.equal(odd.batch.targets[:, :-1], odd.batch.tokens[:, 1:])
    sc = anomaly_scores(s, p, odd, "scrubbed")
    ex = anomaly_scores(s, p, odd, "excess")
    orig, _ = s.baseline_losses(odd)
    torch.testing.assert_close(ex, sc - orig)
    # the score of one input does not depend on the other inputs scored with it
    one = ScrubData(odd.batch, odd.loss_fn)
    sc_again = anomaly_scores(s, p, one, "scrubbed")
    torch.testing.assert_close(sc, sc_again)


def test_cli_on_the_induction_zoo_model_with_a_reference_and_anomaly(capsys):
    from estimators import zoo
    from estimators.scrubbing import references
    from estimators.scrubbing.anomaly import anomaly_demo

    try:
        model = zoo.get("induction").load_model("cpu")
    except Exception as e:
        pytest.skip(f"induction does not load here ({e})")
    name = "all three, refined"
    code, out, err = run_cli(capsys, ["scrub", "--model", "induction", "--reference", name,
                                      "--n", "48", "--seed", "2", "--anomaly", "--json"])
    assert code == 0, err
    d = json.loads(out)
    data = ScrubData.from_zoo("induction", n=48, seed=2)
    s = Scrubber(model, data, seed=2)
    ref = references.get("induction", name).partition
    [r] = s.evaluate([ref])
    assert d["loss_recovered"] == pytest.approx(r.loss_recovered, rel=1e-6)
    assert d["surprise"]["total_bits"] == pytest.approx(r.surprise.total_bits, rel=1e-6)
    demo = anomaly_demo(s, ref, ScrubData.from_zoo("induction", n=48, seed=3), seed=2)
    assert d["anomaly"]["auc_scrubbed"] == pytest.approx(demo["scrubbed"]["auc"])
    assert d["anomaly"]["auc_excess"] == pytest.approx(demo["excess"]["auc"])
    code, _, err = run_cli(capsys, ["scrub", "--model", "induction", "--reference", "nope"])
    assert code == 2 and "all three" in err
