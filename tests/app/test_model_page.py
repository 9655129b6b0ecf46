"""AppTest of the shell (sidebar, URL state, navigation) and the Model & SAE page."""

from __future__ import annotations

import pytest
import torch

from estimators import model_info, zoo
from estimators.loading import load_model, load_sae
from tests.app.conftest import assert_no_exception, open_page


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def test_default_model_page_renders():
    at = open_page()
    assert_no_exception(at)
    assert at.title[0].value == "Model & SAE"
    assert at.sidebar.selectbox(key="_model_choice").value == zoo.DEFAULT_MODEL
    # The shown top-1 accuracy is the accuracy of the real model on that sample.
    lm = load_model(zoo.DEFAULT_MODEL)
    entry = lm.zoo_entry
    batch = entry.sample(1, seed=0)
    rows = model_info.token_predictions(lm.model, batch.tokens[0], entry.token_labels(),
                                        batch.targets[0], batch.loss_mask[0])
    scored = [r for r in rows if r.target is not None]
    acc = sum(r.top[0][0] == r.target for r in scored) / len(scored)
    assert _metric(at, "Top-1 accuracy") == f"{acc:.1%}"


def test_url_reproduces_view_and_sae_numbers_are_real():
    at = open_page(query={"model": "maxk", "sae": "zoo"})
    assert_no_exception(at)
    assert at.sidebar.selectbox(key="_model_choice").value == "maxk"
    lm = load_model("maxk")
    sae = load_sae("zoo", lm)
    tokens = lm.zoo_entry.sample(256, seed=1).tokens
    q = model_info.sae_quality(lm.model, sae, tokens)
    assert _metric(at, "Explained variance") == f"{q['explained_variance']:.3f}"
    assert _metric(at, "L0") == f"{q['l0']:.2f}"
    assert at.query_params["model"] == ["maxk"] or at.query_params["model"] == "maxk"


def test_switching_model_updates_url_and_page():
    at = open_page()
    at.sidebar.selectbox(key="_model_choice").set_value("parens").run()
    assert_no_exception(at)
    assert "parens" in str(at.query_params["model"])
    assert zoo.get("parens").title in [s.value for s in at.subheader]


def test_bad_model_in_link_is_reported_and_default_kept():
    at = open_page(query={"model": "./no/such/model/folder"})
    assert_no_exception(at)
    assert any("Could not load model" in e.value for e in at.sidebar.error)
    assert at.title[0].value == "Model & SAE"
    assert at.sidebar.selectbox(key="_model_choice").value == zoo.DEFAULT_MODEL


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/pythia-70m", "\x00"])
def test_link_never_fetches_a_hub_model(name):
    at = open_page(query={"model": name, "sae": "some-release/some-id"})
    assert_no_exception(at)
    errors = [e.value for e in at.sidebar.error]
    assert any("never fetches from the hub" in e for e in errors), errors
    assert at.sidebar.selectbox(key="_model_choice").value == zoo.DEFAULT_MODEL


def test_bad_typed_folder_keeps_current_model(tmp_path):
    at = open_page(query={"model": "maxk"})
    at.sidebar.selectbox(key="_model_choice").set_value("other…").run()
    at.sidebar.text_input(key="_model_typed").set_value(str(tmp_path / "missing")).run()
    assert_no_exception(at)
    assert any("does not exist" in e.value for e in at.sidebar.error)
    assert "maxk" in str(at.query_params["model"])
    assert zoo.get("maxk").title in [s.value for s in at.subheader]


def test_checkpoint_folder_from_link(tmp_path):
    from tests.test_loading import tiny_model
    from estimators.loading import save_checkpoint

    folder = save_checkpoint(tiny_model(), tmp_path / "ckpt")
    at = open_page(query={"model": str(folder)})
    assert_no_exception(at)
    assert at.sidebar.selectbox(key="_model_choice").value == "other…"
    fields = dict(zip(at.dataframe[0].value["field"], at.dataframe[0].value["value"]))
    assert fields["d_model"] == "16" and fields["n_params"] == str(
        sum(p.numel() for p in tiny_model().parameters()))
    assert torch.cuda.is_available() or at.sidebar.selectbox(key="_device_choice").value == "cpu"


def test_truncated_weights_in_link_are_reported_not_raised(tmp_path):
    from tests.test_loading import tiny_model
    from estimators.loading import save_checkpoint

    folder = save_checkpoint(tiny_model(), tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    at = open_page(query={"model": str(folder)})
    assert_no_exception(at)
    assert any("not a readable safetensors file" in e.value for e in at.sidebar.error)
    assert at.title[0].value == "Model & SAE"
    assert at.sidebar.selectbox(key="_model_choice").value == zoo.DEFAULT_MODEL


def test_mismatched_sae_folder_is_reported_and_model_kept(tmp_path):
    from tests.test_loading import tiny_sae

    tiny_sae("blocks.0.hook_resid_post", 20).save_model(tmp_path / "sae")  # induction: width 32
    at = open_page(query={"sae": str(tmp_path / "sae")})
    assert_no_exception(at)
    assert any("width 32" in e.value for e in at.sidebar.error)
    assert at.sidebar.selectbox(key="_sae_choice").value == "none"
    assert at.title[0].value == "Model & SAE"


def test_card_headline_shows_the_card_numbers():
    at = open_page()
    card = zoo.get(zoo.DEFAULT_MODEL).card()
    assert _metric(at, "Held-out accuracy") == f"{card['eval']['accuracy']:.4%}"
    assert _metric(at, "SAE explained variance (card)") == f"{card['sae']['explained_variance']:.3f}"
    fields = dict(zip(at.dataframe[0].value["field"], at.dataframe[0].value["value"]))
    assert "d_mlp" not in fields  # attention-only: no MLP width to show
