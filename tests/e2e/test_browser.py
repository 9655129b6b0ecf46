"""End to end: the real `streamlit run` server on 127.0.0.1, driven by headless Debian chromium
through Playwright. Every page is opened by its deep link; the first request to the fresh server
is a deep link (the legacy page-discovery pitfall in design.md). Screenshots go to
test-artifacts/."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
PAGE_LOAD_MS = 300_000  # a first model load on a busy 2-core machine; not a speed check

sys.path.insert(0, str(ROOT))
from app.pages_index import PAGES  # noqa: E402
from tests.streamlit_server import served_app  # noqa: E402

# the address and the rest are config.toml's too; given here so the test does not depend on it
SERVER_ARGS = ("--server.address", "127.0.0.1", "--server.headless", "true",
               "--browser.gatherUsageStats", "false")


@pytest.fixture(scope="module")
def server():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test: "
                    "run `bash scripts/setup.sh --test` (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with served_app(ARTIFACTS / "streamlit.log", args=SERVER_ARGS) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _wait_until_idle(page) -> None:
    """Streamlit marks its app element with the script's state; wait for a finished run."""
    page.wait_for_selector("[data-testid='stApp']", timeout=PAGE_LOAD_MS)
    # ... and for the lazily loaded widgets (tables, inputs) to replace their skeletons.
    page.wait_for_function(
        "() => document.querySelector(\"[data-testid='stApp']\")"
        "?.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector(\"[data-testid='stSkeleton']\")",
        timeout=PAGE_LOAD_MS)
    page.wait_for_timeout(1000)  # let plots and tables paint before the screenshot


# Deep links first, the default page last: the fresh server's first request is a deep link.
# The default page is served at "/" (Streamlit gives the default page no path of its own).
ORDER = sorted(PAGES, key=lambda p: p == PAGES[0])


@pytest.mark.parametrize("file,title,url", ORDER, ids=[p[2] for p in ORDER])
def test_page_renders_without_exception(server, browser, file, title, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{server}/{'' if (file, title, url) == PAGES[0] else url}",
                  timeout=PAGE_LOAD_MS)
        _wait_until_idle(page)
        page.get_by_role("heading", name=title).first.wait_for(timeout=PAGE_LOAD_MS)
        assert "Page not found" not in page.inner_text("body")
        exceptions = page.locator("[data-testid='stException']")
        assert exceptions.count() == 0, exceptions.first.inner_text()
        page.screenshot(path=str(ARTIFACTS / f"{url}.png"), full_page=True)
    finally:
        page.close()
