"""Shipped reference hypotheses: their recorded numbers match a fresh evaluation, the induction
heads they name are the ones the trained model's attention shows, and the anomaly demo."""

import pytest

from estimators import zoo
from estimators.scrubbing import ScrubData, Scrubber
from estimators.scrubbing import references
from estimators.scrubbing.anomaly import anomaly_demo, roc_auc

MODELS = ["induction", "parens"]


def _model(name):
    try:
        return zoo.get(name).load_model("cpu")
    except Exception as e:
        pytest.skip(f"zoo model {name} does not load here ({e})")


@pytest.mark.parametrize("name", MODELS)
def test_recorded_numbers_match_a_fresh_evaluation(name):
    model = _model(name)
    refs = references.available(name)
    assert refs, f"no reference hypotheses shipped for {name}"
    ev = references.eval_settings(name)
    s = Scrubber(model, ScrubData.from_zoo(name, n=ev["n"], seed=ev["seed"]), seed=ev["seed"])
    results = s.evaluate([r.partition for r in refs])
    for ref, res in zip(refs, results):
        rec = ref.recorded
        got = {"loss_original": res.loss_original, "loss_scrubbed": res.loss_scrubbed,
               "loss_random": res.loss_random, "loss_recovered": res.loss_recovered,
               "argument_bits": res.surprise.argument_bits, "data_bits": res.surprise.data_bits,
               "total_bits": res.surprise.total_bits}
        for k, v in got.items():
            # float32 forward passes: relative 1e-4 (bits sum N per-example terms: abs 0.05)
            assert v == pytest.approx(rec[k], rel=1e-4, abs=0.05 if "bits" in k else 1e-5), \
                (ref.name, k)


def test_induction_references_name_the_heads_the_model_uses():
    model = _model("induction")
    from estimators.scrubbing.heads import find_heads

    doc = references.load_file("induction")
    ev = doc["eval"]
    heads = find_heads(model, zoo.get("induction").sample(256, seed=ev["seed"] + 99).tokens)
    assert heads["induction"] == doc["heads"]["induction"]
    assert heads["previous_token"] == doc["heads"]["previous_token"]
    # an induction head attends mostly to the token after the previous occurrence
    l, h = (int(x) for x in heads["induction"][0][1:].split("."))
    assert heads["scores"]["induction"][l][h] > 0.5
    names = [r.name for r in references.available("induction")]
    assert names == ["prev-token → induction K", "embeddings → induction V",
                     "embeddings → induction Q", "all three", "all three, refined"]
    rec = {r.name: r.recorded for r in references.available("induction")}
    # the combination explains more than each part, the refinement more still
    assert rec["all three"]["loss_recovered"] > max(
        rec[k]["loss_recovered"] for k in names[:3])
    assert rec["all three, refined"]["total_bits"] < rec["all three"]["total_bits"]


def test_anomaly_demo_on_induction():
    model = _model("induction")
    ref = references.get("induction", "all three, refined")
    s = Scrubber(model, ScrubData.from_zoo("induction", n=128, seed=0))
    normal = ScrubData.from_zoo("induction", n=64, seed=1)
    d = anomaly_demo(s, ref.partition, normal, seed=0)
    for kind in ("scrubbed", "excess"):
        assert d[kind]["auc"] == roc_auc(d[kind]["normal"], d[kind]["anomalous"])
        assert len(d[kind]["normal"]) == len(d[kind]["anomalous"]) == 64
    # under the refined circuit, shuffled second halves score higher than repeats
    assert d["scrubbed"]["auc"] > 0.9
