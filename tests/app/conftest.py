"""AppTest harness: run the real entry script (sidebar, navigation) and switch to a page."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 300  # seconds: a first model load on a busy 2-core machine is slow; not a speed test


def open_page(page_file: str | None = None, query: dict | None = None) -> AppTest:
    """Run app/main.py, then (if given) switch to pages/<page_file>. `query` sets the URL's
    query parameters first, as a shared link would."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page_file is not None:
        at.switch_page(str(ROOT / "pages" / page_file))
        at.run()
    return at


def link_param(at: AppTest, key: str) -> str:
    """The value the page wrote into its link under `key` (AppTest keeps a query parameter as
    a string or a one-item list)."""
    value = at.query_params[key]
    return value[0] if isinstance(value, list) else value


def link_blob(at: AppTest, key: str):
    """The settings blob the page wrote into its link under `key`, decoded."""
    from app.state import decode_blob

    return decode_blob(link_param(at, key))


def assert_no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture
def app_page():
    return open_page
