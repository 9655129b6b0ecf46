"""The "Tail risk" page: its numbers are the library's, and bad input is one clear error."""

from __future__ import annotations

import pytest

from app import tail_risk as tr
from app.state import encode_blob
from estimators.loading import load_model
from estimators.tailrisk import Argmax, ground_truth, run_estimator
from tests.app.conftest import assert_no_exception, open_page

MODEL = "maxk"  # a zoo model with shipped weights and built-in distributions


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _button(at, text):
    return next(b for b in at.button if b.label == text)


def test_default_run_shows_the_library_numbers():
    at = open_page("tail_risk.py", query={"model": MODEL})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    _button(at, "Run").click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    shown = at.dataframe[0].value
    settings = tr.Settings(distribution="uniform")  # the default: first built-in, MC + GLD
    assert sorted(shown["method"].unique()) == ["gld", "mc"]
    assert (shown["budget"] == settings.budget).all()
    lm = load_model(MODEL, "cpu")
    entry = lm.zoo_entry
    dist = tr.build_distribution(settings, lm.model, entry, entry.token_labels())
    assert len(shown) == 2 * settings.n_targets
    for row in shown.itertuples():
        b = Argmax(int(row.target))
        lib = run_estimator(row.method, lm.model, dist, b, settings.budget, int(row.seed))
        assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-15), row
        assert row.calls == lib.cost.calls
        truth = ground_truth(lm.model, dist, b)
        assert row.truth == pytest.approx(truth.probability, rel=1e-12)
        assert settings.band_low <= row.truth <= settings.band_high
        if row.method == "mc":
            assert (row.low, row.high) == pytest.approx(lib.interval)
    # the loss table and the URL carry the run
    assert len(at.dataframe) >= 2
    assert "tr" in at.query_params


def test_bad_distribution_is_a_clear_error():
    bad = encode_blob({"distribution": tr.UPLOADED, "uploaded": [{"id:0": 0.5, "id:1": 0.4}]})
    at = open_page("tail_risk.py", query={"model": MODEL, "tr": bad})
    assert_no_exception(at)
    errors = " ".join(e.value for e in at.error)
    assert "sum to 0.9" in errors
    assert _button(at, "Run").disabled


def test_malformed_link_keeps_defaults():
    at = open_page("tail_risk.py", query={"model": MODEL, "tr": "not-a-blob!"})
    assert_no_exception(at)
    assert any("link" in e.value for e in at.error)
    assert not _button(at, "Run").disabled
