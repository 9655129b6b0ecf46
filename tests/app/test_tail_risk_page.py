"""The "Tail risk" page: its numbers are the library's, and bad input is one clear error."""

from __future__ import annotations

import pytest
import torch

from app import tail_risk as tr
from app.state import encode_blob
from estimators.loading import load_model
from estimators.tailrisk import (Argmax, ground_truth, probe_direction, run_estimator,
                                 sae_feature)
from estimators.tailrisk.scoring import optimal_constant_scores, score
from tests.app.conftest import assert_no_exception, link_blob, open_page

MODEL = "maxk"  # a zoo model with shipped weights and built-in distributions


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _button(at, text):
    return next(b for b in at.button if b.label == text)


def _open_charlm(settings: dict):
    """The Tail risk page on zoo `charlm` with `settings` in its link."""
    return open_page("tail_risk.py", query={"model": "charlm", "tr": encode_blob(settings)})


def _run_clean(at):
    """Click Run; the page must finish without an exception or an error line."""
    _button(at, "Run").click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]


def test_default_run_shows_the_library_numbers():
    at = open_page("tail_risk.py", query={"model": MODEL})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    _run_clean(at)
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
    # the loss table is estimators.tailrisk.scoring on the same estimates and truths
    losses = at.dataframe[1].value.set_index("method")
    assert sorted(losses.index) == ["gld", "mc", "optimal constant"]
    cols = ["itakura_saito", "itakura_saito_fitted", "log_squared_error",
            "log_squared_error_fitted", "zero_estimates"]
    for m in ("mc", "gld"):
        rows = shown[shown["method"] == m]
        ref = score(rows["truth"].to_numpy(), rows["estimate"].to_numpy())
        for c in cols:
            assert losses.loc[m, c] == pytest.approx(ref[c], rel=1e-9), (m, c)
    const = optimal_constant_scores(shown[shown["method"] == "mc"]["truth"].to_numpy())
    for c in cols:
        assert losses.loc["optimal constant", c] == pytest.approx(const[c], rel=1e-9), c
    assert losses.loc["gld", "itakura_saito"] != losses.loc["mc", "itakura_saito"]
    # the URL carries the run
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


# ------------------------------------------------------------------ SAE latent, probe direction
# charlm ships an SAE (blocks.0.hook_resid_post); a 3-position distribution of 4 characters
# (64 inputs) keeps the exact truth instant.
SMALL = [{"uniform": ["id:10", "id:20", "id:30", "id:40"]}] * 3


def _small_dist(lm):
    from estimators.tailrisk.distributions import from_json
    return from_json(SMALL, int(lm.model.cfg.d_vocab), int(lm.model.cfg.n_ctx))


def _one_target(target: int, methods: list[str], budget: int, **more) -> dict:
    """Page settings: argmax of token `target` on SMALL with `methods` at `budget` calls."""
    return {"behaviour": "argmax", "distribution": tr.UPLOADED, "uploaded": SMALL,
            "target_mode": "one", "target": target, "methods": methods, "budget": budget,
            **more}


def _firing_feature(lm, sae, dist):
    from estimators.tailrisk.ground_truth import exact
    for j in range(int(sae.cfg.d_sae)):
        q = float(exact(lm.model, dist, sae_feature(sae, j, 0.0)))
        if 0 < q < 0.5:
            return j, q
    raise AssertionError("no SAE latent fires on part of the inputs")


def test_sae_latent_behaviour_shows_the_library_numbers():
    from estimators.loading import load_sae
    lm = load_model("charlm", "cpu")
    sae = load_sae("zoo", lm, "cpu")
    dist = _small_dist(lm)
    j, p = _firing_feature(lm, sae, dist)
    settings = {"behaviour": "sae", "sae_feature": j, "threshold": 0.0,
                "distribution": tr.UPLOADED, "uploaded": SMALL, "methods": ["mc", "qld"],
                "budget": 256}
    at = open_page("tail_risk.py", query={"model": "charlm", "sae": "zoo",
                                          "tr": encode_blob(settings)})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    _run_clean(at)
    shown = at.dataframe[0].value
    assert sorted(shown["method"]) == ["mc", "qld"] and (shown["target"] == j).all()
    b = sae_feature(sae, j, 0.0)
    for row in shown.itertuples():
        assert row.truth == pytest.approx(p, rel=1e-12)
        lib = run_estimator(row.method, lm.model, dist, b, 256, int(row.seed))
        assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-15), row
        assert row.token == b.label()


def test_sae_latent_without_an_sae_is_a_clear_error():
    settings = {"behaviour": "sae", "distribution": tr.UPLOADED, "uploaded": SMALL}
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert any("needs an SAE" in e.value for e in at.error)
    assert _button(at, "Run").disabled


@pytest.mark.parametrize("source", ["unit", "upload"])
def test_probe_behaviour_shows_the_library_numbers(source):
    lm = load_model("charlm", "cpu")
    dist = _small_dist(lm)
    hook = "blocks.1.hook_resid_post"
    d = int(lm.model.cfg.d_model)
    vec = [((i * 7) % 5 - 2) / 3 for i in range(d)]
    kw = {"unit": 5} if source == "unit" else {"direction": vec}
    # a threshold at the median of the 64 exact projections: a non-trivial probability
    from estimators.tailrisk.behaviours import site_activations
    from estimators.tailrisk.ground_truth import enumerate_inputs
    b0 = probe_direction(lm.model, hook, threshold=0.0, **kw)
    x, _ = enumerate_inputs(dist, 0, dist.n_inputs())
    proj = site_activations(lm.model, x, hook).double() @ torch.tensor(b0.direction).double()
    thr = float(proj.median())
    settings = {"behaviour": "probe", "probe_hook": hook, "probe_source": source,
                "probe_unit": 5, "probe_vector": vec, "threshold": thr,
                "distribution": tr.UPLOADED, "uploaded": SMALL, "methods": ["mc", "gld"],
                "budget": 256}
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    _run_clean(at)
    shown = at.dataframe[0].value
    b = probe_direction(lm.model, hook, threshold=thr, **kw)
    truth = ground_truth(lm.model, dist, b).probability
    assert 0.2 < truth < 0.8
    for row in shown.itertuples():
        assert row.truth == pytest.approx(truth, rel=1e-12)
        lib = run_estimator(row.method, lm.model, dist, b, 256, int(row.seed))
        assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-15), row


def test_bad_probe_vector_is_a_clear_error_and_keeps_defaults():
    settings = {"behaviour": "probe", "probe_source": "upload", "probe_vector": [1.0, None]}
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert any("probe vector" in e.value for e in at.error)
    settings = {"behaviour": "probe", "probe_source": "upload", "probe_vector": [1.0, 2.0],
                "probe_hook": "blocks.1.hook_resid_post"}
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert any("d_model = 64" in e.value for e in at.error)
    assert _button(at, "Run").disabled


@pytest.mark.parametrize("mask", ["naive", "full"])
def test_activation_method_uses_the_chosen_argument(mask):
    """The activation estimate shown is the library's under the mask chosen on the page."""
    lm = load_model("charlm", "cpu")
    dist = _small_dist(lm)
    settings = _one_target(30, ["activation"], 256, activation_mask=mask)
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert at.selectbox(key="tr_w_act_mask").value == mask
    _run_clean(at)
    row = next(at.dataframe[0].value.itertuples())
    lib = run_estimator("activation", lm.model, dist, Argmax(30), 256, int(row.seed), mask=mask)
    assert lib.diagnostics["config"]["mask"] == mask
    assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-300)


def test_unknown_activation_mask_in_link_is_an_error():
    settings = {"distribution": tr.UPLOADED, "uploaded": SMALL, "activation_mask": "everything"}
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert any("activation mask must be one of" in e.value for e in at.error)


@pytest.mark.parametrize("fallback", [True, False])
def test_zero_hit_fallback_is_shown_and_can_be_switched_off(fallback):
    """Token 50 is never the argmax on SMALL: ITGIS has no hit, so the page shows the
    library's extrapolation with one caption line saying so — or, unticked, 0 and no line."""
    lm = load_model("charlm", "cpu")
    dist = _small_dist(lm)
    settings = _one_target(50, ["itgis"], 128, zero_hit_fallback=fallback)
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert at.checkbox(key="tr_w_zh_fallback").value is fallback
    _run_clean(at)
    row = next(at.dataframe[0].value.itertuples())
    lib = run_estimator("itgis", lm.model, dist, Argmax(50), 128, int(row.seed),
                        fallback=fallback)
    assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-300)
    notes = [c.value for c in at.caption if "No sample hit" in c.value]
    if fallback:
        assert row.estimate > 0 and row.fallback == lib.diagnostics["fallback"] is not None
        assert len(notes) == 1 and "extrapolation" in notes[0] and "biased" in notes[0]
    else:
        assert row.estimate == 0 and not notes


# ------------------------------------------------------------------ refinement share (ITGIS, MHIS)
def test_refine_fraction_travels_from_the_link_to_the_estimators_and_back():
    """The link's refinement share sets the number field, reaches ITGIS and MHIS as
    `refine_fraction` (the page's numbers are the library's at that share, the `refine` column
    is the library's diagnostic), and the link the page writes carries the changed value."""
    lm = load_model("charlm", "cpu")
    dist = _small_dist(lm)
    settings = _one_target(2, ["itgis", "mhis"], 256, refine_fraction=0.4)  # p = 1/64 on SMALL
    at = _open_charlm(settings)
    assert_no_exception(at)
    assert at.number_input(key="tr_w_refine").value == pytest.approx(0.4)
    _run_clean(at)
    shown = at.dataframe[0].value
    assert "refine" in shown.columns
    for row in shown.itertuples():
        lib = run_estimator(row.method, lm.model, dist, Argmax(2), 256, int(row.seed),
                            refine_fraction=0.4)
        assert lib.diagnostics["config"]["refine_fraction"] == 0.4
        assert row.estimate == pytest.approx(lib.value, rel=1e-9, abs=1e-300), row
        assert row.refine == lib.diagnostics["refine"] == "estimate"
    at.number_input(key="tr_w_refine").set_value(0.0).run()
    assert_no_exception(at)
    assert link_blob(at, "tr")["refine_fraction"] == 0.0
    _run_clean(at)
    assert at.dataframe[0].value["refine"].isna().all()  # 0: the sampler alone


def test_refine_fraction_round_trips_through_a_settings_file_and_old_files_load():
    from app import state

    s = tr.Settings(distribution="uniform", methods=["itgis"], refine_fraction=0.3)
    blob = state.explanation_bytes(tr.SETTINGS_KIND, s.to_dict(), {"model": MODEL})
    payload, _ = state.parse_explanation(blob, tr.SETTINGS_KIND)
    back, notes = tr.settings_from_untrusted(payload)
    assert back == s and back.refine_fraction == 0.3 and not notes
    old = {k: v for k, v in s.to_dict().items() if k != "refine_fraction"}
    assert tr.settings_from_untrusted(old)[0].refine_fraction == 0.9  # before the setting
    high, notes = tr.settings_from_untrusted({**old, "refine_fraction": 0.99})
    assert high.refine_fraction == 0.95 and len(notes) == 1 and "refine_fraction" in notes[0]


@pytest.mark.parametrize("value", ["most", True, float("nan"), 1.0, -0.1])
def test_bad_refine_fraction_is_one_clear_line(value):
    """From a link or file (checked values: a word, a boolean, NaN are refused; out-of-range
    ones are clamped with a note), and from code (the dataclass refuses outside [0, 1))."""
    if isinstance(value, float) and 0 != value == value:  # 1.0, -0.1: the dataclass's check
        with pytest.raises(ValueError, match=r"refine_fraction .*must be in \[0, 1\)") as e:
            tr.Settings(refine_fraction=value)
        assert "\n" not in str(e.value)
        return
    with pytest.raises(ValueError, match="refine_fraction must be") as e:
        tr.settings_from_untrusted({"refine_fraction": value})
    assert "\n" not in str(e.value)


def test_bad_refine_fraction_in_link_keeps_defaults():
    at = _open_charlm({"distribution": tr.UPLOADED, "uploaded": SMALL,
                       "refine_fraction": "most"})
    assert_no_exception(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "refine_fraction must be a number" in errors[0]
    assert at.number_input(key="tr_w_refine").value == pytest.approx(0.9)


def test_fallback_note_tells_exact_zeros_from_extrapolations():
    """A run whose behaviour no activation can meet (`fallback` "empty") is exactly 0, not an
    extrapolation: the caption says so apart from the extrapolated runs."""
    import pandas as pd

    both = pd.DataFrame({"method": ["itgis", "mhis", "mhis"],
                         "fallback": ["qld+tail", "empty", None]})
    note = tr.fallback_note(both)
    assert "No sample hit in 1 run(s) (itgis 1)" in note and "exactly 0" in note
    only = tr.fallback_note(pd.DataFrame({"method": ["itgis"], "fallback": ["empty"]}))
    assert "No sample hit" not in only and "exactly 0" in only


def test_a_budget_below_one_methods_minimum_still_runs_the_others():
    """MHIS needs 86 calls for 16 chains: at 64 calls the ITGIS rows still run, and one
    warning line names MHIS's refusal (it used to stop the whole Run)."""
    lm = load_model("charlm", "cpu")
    settings = _one_target(50, ["itgis", "mhis"], 64)
    at = _open_charlm(settings)
    _run_clean(at)
    df = at.dataframe[0].value
    assert set(df["method"]) == {"itgis"}
    (warn,) = [x.value for x in at.warning if x.value.startswith("Not run:")]
    assert "MHIS at 64 calls" in warn and "86 calls" in warn and "\n" not in warn
    s = tr.Settings.from_dict({**tr.Settings().to_dict(), "methods": ["mhis"], "budget": 64})
    with pytest.raises(ValueError, match="86 calls"):  # nothing left to run: one error line
        tr.run_methods(s, lm.model, None, [50], {}, str, lambda f, m: None)
