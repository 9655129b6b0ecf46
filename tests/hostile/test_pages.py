"""Hostile links and uploads on every page (real AppTest runs of the real app): each gives a
clean message (st.error / st.warning text, one line, no traceback) and the page keeps working
with its previous state."""

from __future__ import annotations

import pytest

from app import state
from app import tail_risk as tr
from tests.app.conftest import link_blob, open_page
from tests.hostile.payloads import BLOBS, FILES, HUGE, NUMBERS, blob

MODEL = "maxk"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _messages(at) -> list[str]:
    return [e.value for e in at.error] + [w.value for w in at.warning]


def _clean(at, expect_message: bool = True) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    msgs = _messages(at)
    if expect_message:
        assert msgs, "expected a message"
    for m in msgs:
        assert "\n" not in m.strip() and "Traceback" not in m and "RecursionError" not in m, m
        assert "/work/" not in m and "site-packages" not in m, m  # no server paths
    return msgs


# ---------------------------------------------------------------------------------- link blobs
BLOB_PARAMS = [("tail_risk.py", "tr"), ("activation.py", "act"), ("activation.py", "mask"),
               ("scrubbing.py", "partition"), ("circuits.py", "circuit"),
               ("circuits.py", "track")]


@pytest.mark.parametrize("page,key", BLOB_PARAMS)
@pytest.mark.parametrize("payload", sorted(BLOBS))
def test_hostile_link_blob_is_one_clean_message(page, key, payload):
    at = open_page(page, query={"model": MODEL, key: BLOBS[payload]})
    msgs = _clean(at)
    assert any("link" in m for m in msgs), msgs


NUMBER_PARAMS = [("scrubbing.py", "scrub_n"), ("scrubbing.py", "scrub_seed"),
                 ("circuits.py", "order"), ("activation.py", "act_bpp")]


@pytest.mark.parametrize("page,key", NUMBER_PARAMS)
@pytest.mark.parametrize("value", NUMBERS)
def test_hostile_link_number_keeps_the_page_working(page, key, value):
    at = open_page(page, query={"model": MODEL, key: value})
    _clean(at, expect_message=False)


@pytest.mark.parametrize("value", NUMBERS + ["no-such-model", "../../etc"])
def test_hostile_model_and_device_params(value):
    at = open_page("model.py", query={"model": value, "device": value, "sae": value})
    _clean(at, expect_message=False)


# The out-of-range tail-risk link values: clamped, with one message each.
OUT_OF_RANGE = [({"n_targets": 1000}, "n_targets", 64),
                ({"sampling_temperature": 1000}, "sampling_temperature", 100.0),
                ({"seed": 2 ** 40}, "seed", tr.MAX_SEED),
                ({"length": 10 ** 6}, "length", None),
                ({"band_low": 1e-20}, "band_low", 1e-12),
                ({"budget": 10 ** 12}, "budget", 2 ** 16)]


@pytest.mark.parametrize("settings,field,expected", OUT_OF_RANGE, ids=[o[1] for o in OUT_OF_RANGE])
def test_tail_risk_out_of_range_link_is_clamped_with_a_message(settings, field, expected):
    at = open_page("tail_risk.py", query={"model": MODEL, "tr": blob(settings)})
    msgs = _clean(at)
    assert any(field in m for m in msgs), msgs
    s = at.session_state["tr_settings"]
    if expected is not None:
        assert getattr(s, field) == expected
    assert not next(b for b in at.button if b.label == "Run").disabled


@pytest.mark.parametrize("settings", [{"seed": "1"}, {"threshold": None}, {"n_targets": True},
                                      {"methods": "mc"}, {"behaviour": [1]},
                                      {"band_low": 0.5, "band_high": 0.1}, {"nope": 1}])
def test_tail_risk_wrong_kinds_in_link_keep_defaults(settings):
    at = open_page("tail_risk.py", query={"model": MODEL, "tr": blob(settings)})
    msgs = _clean(at)
    assert any("not used" in m for m in msgs), msgs
    assert at.session_state["tr_settings"].to_dict() == tr.Settings(
        distribution=at.session_state["tr_settings"].distribution).to_dict()


# ------------------------------------------------------------------------------------ uploads
UPLOADS = [("tail_risk.py", "tr_settings_file", None),
           ("activation.py", "_act_upload", None),
           ("scrubbing.py", "_scrub_upload", None),
           ("circuits.py", "_circ_upload", None)]


def _state_snapshot(at, page):
    keys = {"tail_risk.py": ["tr_settings"], "activation.py": ["act_settings", "act_bpp"],
            "scrubbing.py": ["scrub_part"], "circuits.py": ["circ_view"]}[page]
    snap = {k: repr(at.session_state[k]) if k in at.session_state else None for k in keys}
    assert snap[keys[0]] is not None, (page, keys[0])
    return snap


@pytest.mark.parametrize("page,key,_", UPLOADS, ids=[u[0] for u in UPLOADS])
def test_hostile_uploads_keep_the_previous_state(page, key, _):
    at = open_page(page, query={"model": MODEL})
    _clean(at, expect_message=False)
    before = _state_snapshot(at, page)
    for name, data in list(FILES.items()) + [("huge", HUGE)]:
        at.file_uploader(key=key).set_value((f"{name}.json", data, "application/json")).run()
        msgs = _clean(at)
        assert len([m for m in msgs if "no file" in m.lower()]) == 0, msgs
        assert _state_snapshot(at, page) == before, name


def test_tail_risk_distribution_upload_is_one_message():
    at = open_page("tail_risk.py", query={"model": MODEL, "tr": blob(
        {"distribution": tr.UPLOADED})})
    for name, data in FILES.items():
        at.file_uploader(key="tr_w_distfile").set_value((f"{name}.json", data,
                                                         "application/json")).run()
        msgs = _clean(at)
        not_used = [m for m in msgs if "Distribution file not used" in m]
        assert len(not_used) == 1, (name, msgs)
        # the failed upload is the reason; no second, misleading "no file uploaded" error
        assert not any("no distribution file uploaded" in m for m in msgs), (name, msgs)


# ------------------------------------------------------------- settings download → re-upload
def test_tail_risk_settings_download_reupload_applies_also_after_editing():
    """AppTest (not a browser): the page's own downloaded file, re-uploaded, sets the widgets;
    an edited copy applies too; a click afterwards keeps the uploaded values."""
    at = open_page("tail_risk.py", query={"model": MODEL})
    s = at.session_state["tr_settings"]
    changed = tr.Settings(**{**s.to_dict(), "methods": ["mc", "gld", "itgis"], "budget": 1024,
                             "n_targets": 3, "seed": 7})
    data = state.explanation_bytes(tr.SETTINGS_KIND, changed.to_dict(), {"model": MODEL})
    at.file_uploader(key="tr_settings_file").set_value(("tail_risk.json", data,
                                                        "application/json")).run()
    _clean(at, expect_message=False)
    assert at.multiselect(key="tr_w_methods").value == ["mc", "gld", "itgis"]
    assert at.select_slider(key="tr_w_budget").value == 1024
    assert at.number_input(key="tr_w_n").value == 3
    assert at.number_input(key="tr_w_seed").value == 7
    at.checkbox(key="tr_w_conv").check().run()  # another click keeps them
    assert at.session_state["tr_settings"].to_dict() == changed.to_dict()
    # the link follows the settings without pressing Run
    assert link_blob(at, "tr")["budget"] == 1024
    # edit the downloaded file by hand: a different seed and method list
    import json
    doc = json.loads(data)
    doc["payload"]["seed"] = 11
    doc["payload"]["methods"] = ["mc"]
    at.file_uploader(key="tr_settings_file").set_value(
        ("tail_risk (edited).json", json.dumps(doc).encode(), "application/json")).run()
    _clean(at, expect_message=False)
    assert at.number_input(key="tr_w_seed").value == 11
    assert at.multiselect(key="tr_w_methods").value == ["mc"]
