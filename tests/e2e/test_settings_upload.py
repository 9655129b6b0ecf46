"""In the browser (real server, headless Debian chromium via Playwright): the Tail risk page's
downloaded settings file, uploaded again — also after editing it by hand — sets the widgets,
and the values survive the next click (issue #12: the frontend kept its old widget values)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.streamlit_server import served_app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
LOAD_MS = 300_000
IDLE = ("() => document.querySelector(\"[data-testid='stApp']\")"
        "?.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector(\"[data-testid='stSkeleton']\")")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed: run `bash scripts/setup.sh --test`")
    with served_app(tmp_path_factory.mktemp("server") / "streamlit.log",
                    env={"HEW_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}) as base:
        yield base


def _settle(page):
    page.wait_for_timeout(1500)
    page.wait_for_function(IDLE, timeout=LOAD_MS)
    page.wait_for_timeout(1000)


def test_tail_risk_settings_reupload_applies_in_the_browser(base_url, tmp_path):
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from app import state
    from app import tail_risk as tr

    settings = tr.Settings(distribution="uniform", methods=["mc", "gld", "itgis"], budget=1024,
                           n_targets=3, seed=7, itgis_temperature=2.5)
    path = tmp_path / "tail_risk.json"
    path.write_bytes(state.explanation_bytes(tr.SETTINGS_KIND, settings.to_dict(),
                                             {"model": "maxk"}))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base_url}/tail-risk?model=maxk", timeout=LOAD_MS)
        _settle(page)

        def value(label):
            return page.locator("[data-testid='stNumberInput']").filter(
                has_text=label).locator("input").input_value()

        page.get_by_text("Settings file").click()
        page.locator("input[type=file]").first.set_input_files(str(path))
        _settle(page)
        assert (value("Seed (target"), value("ITGIS temperature")) == ("7", "2.50")
        page.get_by_text("Convergence with budget").click()  # another click keeps them
        _settle(page)
        assert (value("Seed (target"), value("ITGIS temperature")) == ("7", "2.50")
        doc = json.loads(path.read_text())
        doc["payload"]["seed"] = 11  # edited by hand
        edited = tmp_path / "tail_risk (edited).json"
        edited.write_text(json.dumps(doc))
        page.locator("input[type=file]").first.set_input_files(str(edited))
        _settle(page)
        assert value("Seed (target") == "11"
        assert page.locator("[data-testid='stException']").count() == 0
        browser.close()
