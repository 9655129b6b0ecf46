"""End to end: Cancel interrupts a long step inside the real `streamlit run` server (not only in
AppTest). The Model page measures an SAE on 1,024 sequences of 128 tokens through a checkpoint
with random weights (d_model 512, d_mlp 2048), about fifteen batches of real activations; the
test presses Cancel as soon as the bar shows a time left, then checks that the page shows one
"cancelled" line with "Run again", that the script stopped, and that the activation cache holds
no entry for the data (the fill stopped mid-loop: a finished fill writes one). Headless chromium
through Playwright, as in test_browser.py; a screenshot goes to test-artifacts/."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.streamlit_server import served_app

from .test_browser import (ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PAGE_LOAD_MS,
                           SERVER_ARGS)

HOOK = "blocks.1.hook_resid_pre"


def _world(root: Path) -> dict:
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from estimators.loading import save_checkpoint

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=512, n_ctx=128, d_head=64, n_heads=8,
                                  d_vocab=1000, d_mlp=2048, act_fn="gelu",
                                  normalization_type="LN", seed=0)
    save_checkpoint(HookedTransformer(cfg).eval(), root / "model")
    StandardSAE(StandardSAEConfig(d_in=512, d_sae=2048, metadata=SAEMetadata(
        hook_name=HOOK))).save_model(str(root / "sae"))
    ids = torch.randint(0, 1000, (1024, 128), generator=torch.Generator().manual_seed(0))
    (root / "seqs.json").write_text(json.dumps(ids.tolist()))
    return {"model": str(root / "model"), "sae": str(root / "sae"),
            "data": f"tokens:{root / 'seqs.json'},n=1024"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test: "
                    "run `bash scripts/setup.sh --test` (apt-get install chromium)")
    root = tmp_path_factory.mktemp("cancel")
    world = _world(root)
    cache = root / "cache"
    ARTIFACTS.mkdir(exist_ok=True)
    with served_app(ARTIFACTS / "streamlit-cancel.log", env={"HEW_CACHE_DIR": str(cache)},
                    args=SERVER_ARGS) as base:
        yield base, world, cache


def _entries(cache: Path) -> list[list[int]]:
    """The shapes of the activation cache's entries."""
    from safetensors import safe_open

    out = []
    for f in sorted((cache / "activations").glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            out.append(list(h.get_slice("activations").get_shape()))
    return out


def test_cancel_interrupts_the_sae_measurement_mid_step(served):
    from playwright.sync_api import sync_playwright

    base, world, cache = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/?{urllib.parse.urlencode(world)}", timeout=PAGE_LOAD_MS)
            bar = page.locator("[data-testid='stProgress']").filter(has_text="left")
            bar.first.wait_for(timeout=PAGE_LOAD_MS)
            shown = bar.first.inner_text()
            assert "Measuring the SAE" in shown and "of 1,024 sequences" in shown, shown
            page.screenshot(path=str(ARTIFACTS / "cancel-running.png"))
            t_click = time.monotonic()
            page.get_by_role("button", name="Cancel").click()
            page.get_by_text("cancelled.").first.wait_for(timeout=PAGE_LOAD_MS)
            seconds = time.monotonic() - t_click
            page.wait_for_function(
                "() => document.querySelector(\"[data-testid='stApp']\")"
                "?.getAttribute('data-test-script-state') === 'notRunning'",
                timeout=PAGE_LOAD_MS)
            body = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "cancelled.png"), full_page=True)
            assert "Run again" in body and "Explained variance" not in body
            assert page.locator("[data-testid='stException']").count() == 0
            # the fill stopped inside its loop: no entry for the data (1,024 sequences) was
            # stored (the tiny entries of the engines' conformance checks may be there)
            assert [f for f in _entries(cache) if f[0] == 1024] == []
            print(f"bar at Cancel: {shown!r}; 'cancelled' shown {seconds:.1f} s after the click")
        finally:
            page.close()
            browser.close()


def test_cancel_stops_a_tail_risk_run(served):
    """Tail risk on the same model, an empirical distribution from the data and Monte Carlo at
    2^16 calls: Run, then Cancel once the bar shows a time left; one "cancelled" line, no
    results table, the script stopped."""
    from playwright.sync_api import sync_playwright

    from app.state import encode_blob

    base, world, _ = served
    settings = {"distribution": "from data: empirical", "target_mode": "one", "target": 3,
                "methods": ["mc"], "budget": 2 ** 16}
    query = dict(world, tr=encode_blob(settings))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{base}/tail-risk?{urllib.parse.urlencode(query)}",
                      timeout=PAGE_LOAD_MS)
            run = page.get_by_role("button", name="Run", exact=True)
            run.wait_for(timeout=PAGE_LOAD_MS)
            page.wait_for_function(
                "() => document.querySelector(\"[data-testid='stApp']\")"
                "?.getAttribute('data-test-script-state') === 'notRunning'",
                timeout=PAGE_LOAD_MS)
            run.click()
            bar = page.locator("[data-testid='stProgress']").filter(has_text="left")
            bar.first.wait_for(timeout=PAGE_LOAD_MS)
            shown = bar.first.inner_text()
            page.screenshot(path=str(ARTIFACTS / "cancel-tail-risk-running.png"))
            t_click = time.monotonic()
            page.get_by_role("button", name="Cancel").click()
            page.get_by_text("Tail-risk run: cancelled.").first.wait_for(timeout=PAGE_LOAD_MS)
            seconds = time.monotonic() - t_click
            page.wait_for_function(
                "() => document.querySelector(\"[data-testid='stApp']\")"
                "?.getAttribute('data-test-script-state') === 'notRunning'",
                timeout=PAGE_LOAD_MS)
            assert page.locator("[data-testid='stException']").count() == 0
            assert "Results (truth" not in page.inner_text("body")
            print(f"bar at Cancel: {shown!r}; 'cancelled' shown {seconds:.1f} s after the click")
        finally:
            page.close()
            browser.close()
