"""AppTest: the Model page's "Engines this model supports" table shows the real verdicts."""

from __future__ import annotations

from estimators import conformance, zoo
from estimators.loading import load_model, save_checkpoint
from tests.app.conftest import assert_no_exception, open_page


def _engine_table(at):
    for df in at.dataframe:
        frame = df.value
        if "engine" in frame.columns and "why not" in frame.columns:
            return frame
    raise AssertionError("no engine-support table on the Model page")


def test_model_page_shows_every_engine_verdict():
    at = open_page()
    assert_no_exception(at)
    frame = _engine_table(at)
    expected = conformance.summary(load_model(zoo.DEFAULT_MODEL).model)
    assert list(frame["engine"]) == list(expected)
    for _, row in frame.iterrows():
        assert row["supported"] == ("yes" if expected[row["engine"]]["ok"] else "no")
    assert {"scrubbing", "tailrisk"} <= set(frame["engine"])


def test_model_page_says_why_an_engine_refuses(tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=6, d_head=4, n_heads=2,
                                  d_vocab=8, attn_only=True, normalization_type="RMS",
                                  use_normalization_before_and_after=True, device="cpu")
    save_checkpoint(HookedTransformer(cfg), tmp_path / "postnorm")
    at = open_page(query={"model": str(tmp_path / "postnorm")})
    assert_no_exception(at)
    frame = _engine_table(at).set_index("engine")
    assert frame.loc["scrubbing", "supported"] == "no"
    assert "use_normalization_before_and_after" in frame.loc["scrubbing", "why not"]
    assert frame.loc["tailrisk", "supported"] == "yes"
