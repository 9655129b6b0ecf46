"""The sidebar's Data field (app/data_source.py) driving every page for a model outside the zoo:
a tiny TransformerLens checkpoint with random weights, its SAE, a token-id file and a `datasets`
folder, all built in tmp_path."""

from __future__ import annotations

import json

import pytest
import torch

from estimators.loading import load_model, save_checkpoint, load_sae

from .conftest import assert_no_exception, open_page
from ..data.conftest import tiny_model, tiny_sae

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(model folder, SAE folder, tokens spec, hf spec) with 12 sequences of 8 tokens each."""
    from datasets import Dataset

    root = tmp_path_factory.mktemp("world")
    save_checkpoint(tiny_model(), root / "model")
    tiny_sae(HOOK).save_model(str(root / "sae"))
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 300, (12, 8), generator=g).tolist()
    (root / "seqs.json").write_text(json.dumps(seqs))
    Dataset.from_dict({"input_ids": seqs}).save_to_disk(str(root / "ds"))
    return (str(root / "model"), str(root / "sae"), f"tokens:{root / 'seqs.json'}",
            f"hf:{root / 'ds'},len=4")


def _open(world, page=None, data=None):
    model, sae, tokens_spec, _ = world
    return open_page(page, {"model": model, "sae": sae, "data": data or tokens_spec})


def _errors(at) -> list[str]:
    return [e.value for e in at.error]  # the main area and the sidebar


def test_every_page_runs_on_the_data(world):
    said = {"activation.py": "Real inputs: the first N sequences of tokens:",
            "scrubbing.py": "Examples: tokens:"}
    for page in ("model.py", "activation.py", "scrubbing.py", "tail_risk.py"):
        at = _open(world, page)
        assert_no_exception(at)
        assert not _errors(at), (page, _errors(at))
        assert at.session_state["data_spec"] == world[2]
        if page in said:
            assert any(c.value.startswith(said[page]) for c in at.caption), page
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "12 sequences × 8 tokens" in captions
    # tail risk: an input distribution from the data
    at.selectbox(key="tr_w_dist").set_value("from data: empirical").run()
    assert_no_exception(at)
    assert any(c.value.startswith("empirical(tokens:") or "empirical(tokens:" in c.value
               for c in at.caption), [c.value for c in at.caption]


def test_model_page_sae_quality_equals_the_library(world):
    from estimators.sae_stats import sae_quality_on_data

    at = _open(world, "model.py")
    assert_no_exception(at)
    lm = load_model(world[0])
    _, want = sae_quality_on_data(lm, load_sae(world[1], lm), world[2])
    got = {m.label: m.value for m in at.metric}
    assert got["Explained variance"] == f"{want['explained_variance']:.3f}"
    assert got["L0 (mean active latents)"] == f"{want['l0']:.2f}"
    assert got["MSE per element"] == f"{want['mse']:.3g}"
    assert got["Dead latents"] == f"{want['dead_fraction']:.1%}"
    assert want["n_activations"] == 12 * 8
    assert len(at.dataframe) >= 2  # the data sequence's predictions, the config


def test_a_datasets_folder_drives_the_model_and_scrubbing_pages(world):
    for page in ("model.py", "scrubbing.py"):
        at = _open(world, page, data=world[3])
        assert_no_exception(at)
        assert not _errors(at), _errors(at)
    assert any("24 sequences × 4 tokens" in c.value for c in at.sidebar.caption)


def test_a_bad_spec_is_one_error_and_keeps_the_data(world):
    at = _open(world, "model.py")
    before = [c.value for c in at.sidebar.caption]
    at.sidebar.text_input(key="_data_typed").set_value("tokens:/no/such/file.json").run()
    assert_no_exception(at)
    assert len(_errors(at)) == 1, _errors(at)
    assert "keeping" in at.sidebar.error[0].value
    assert at.session_state["data_spec"] == world[2]
    assert [c.value for c in at.sidebar.caption] == before
    assert at.query_params["data"] == world[2]


def test_the_url_round_trips(world):
    at = _open(world, None, data=world[3])
    assert at.session_state["data_spec"] == world[3]
    new = world[2] + ",n=5"
    at.sidebar.text_input(key="_data_typed").set_value(new).run()
    assert at.session_state["data_spec"] == new
    assert at.query_params["data"] == new
    again = open_page(None, {"model": world[0], "data": new})
    assert again.session_state["data_spec"] == new
    assert any("5 sequences × 8 tokens" in c.value for c in again.sidebar.caption)
    # a zoo model's default (zoo) is left out of the link
    zoo = open_page(None, {})
    assert zoo.session_state["data_spec"] == "zoo"
    assert "data" not in zoo.query_params
    # a link whose data does not fit the model: one line, the model's default
    bad = open_page(None, {"data": world[2]})  # ids up to 299 for a 32-token zoo model
    assert len(bad.error) == 1 and "Data from the link not used" in bad.error[0].value
    assert bad.session_state["data_spec"] == "zoo"


def test_the_activation_chain_reads_the_first_n_sequences_of_the_data(world):
    from app import activation as glue
    from estimators.activation.chain import transformer_chain
    from estimators.data import parse_spec

    lm = load_model(world[0])
    data = parse_spec(world[2]).load(lm)
    s = glue.Settings((6, 7), n_inputs=5, samples=8)
    assert glue.default_settings(lm, data).positions[-1] == data.seq_len - 1
    got = glue.build_chain(lm, None, s, data.tokens)
    want = transformer_chain(lm.model, data.tokens[:5], sites=glue.default_sites(lm, None),
                             positions=[6, 7], samples=8, seed=0, logits_position=-1)
    assert got.n_inputs == 5
    for site, x in want.empirical.items():
        assert torch.equal(got.empirical[site], x), site
    typed = glue.Settings((2,), n_inputs=5, samples=8, tokens="1 2 3\n4 5 6")
    assert glue.build_chain(lm, None, typed, data.tokens).n_inputs == 2  # typed ids win


def test_scrubbing_anomaly_demo_on_the_data(world):
    model, sae, tokens_spec, _ = world
    at = open_page("scrubbing.py", {"model": model, "data": tokens_spec, "scrub_n": "8"})
    at.checkbox(key="_scrub_anomaly").check().run()
    assert_no_exception(at)
    assert not _errors(at), _errors(at)
    auc = [m for m in at.metric if m.label == "ROC AUC (scrubbed)"]
    assert len(auc) == 1 and 0.0 <= float(auc[0].value) <= 1.0


def test_tail_risk_runs_on_a_distribution_from_the_data(world):
    at = _open(world, "tail_risk.py")
    assert at.selectbox(key="tr_w_dist").value == "from data: empirical"  # the default here
    at.selectbox(key="tr_w_dist").set_value("from data: data tokens").run()
    assert any(c.value.startswith("data-tokens(tokens:") for c in at.caption)
    next(b for b in at.button if b.label == "Run").click().run()
    assert_no_exception(at)
    assert not _errors(at), _errors(at)
    assert any(s.value.startswith("Results (truth: ") for s in at.subheader)
