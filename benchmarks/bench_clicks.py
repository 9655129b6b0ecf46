"""Click-to-settled latency of each page's main interaction, in headless Chromium.

Starts the real `streamlit run app/main.py` server on 127.0.0.1 (a free port), opens each page
by its deep link with Debian's chromium through Playwright (as tests/e2e does), waits for the
page to be idle, then for each interaction: clicks, and measures from the click to the moment
the app is settled — the script (or fragment) run that the click started has finished
(Streamlit's `data-test-script-state` back to `notRunning`) and nothing changed on the page for
QUIET_MS afterwards (the quiet period is not counted). Each interaction is repeated REPEATS
times; the table gives the median and the maximum in milliseconds.

    .venv/bin/python benchmarks/bench_clicks.py [--repeats 5] [--out FILE]

Needs `bash scripts/setup.sh --test` (Playwright + Debian chromium). Prints a table; writes
JSON only with --out.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_activation_latency import bench_args, machine_info, write_result  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOAD_MS = 300_000
QUIET_MS = 300

# (page url path, interaction label, how to do it): the main interaction of each page.
INTERACTIONS = [
    ("", "sample seed +1 (Model & SAE)",
     lambda p: p.locator("[data-testid='stNumberInput']").filter(has_text="Sample seed")
     .get_by_test_id("stNumberInputStepUp").click()),
    ("circuits", "track all pairs", lambda p: p.get_by_role("button", name="Track all pairs")
     .click()),
    ("circuits", "track none", lambda p: p.get_by_role("button", name="Track none").click()),
    ("activation-model", "apply preset (mask edit)",
     lambda p: p.get_by_role("button", name="Apply preset").click()),
    ("causal-scrubbing", "all paths important",
     lambda p: p.get_by_role("button", name="All paths important").click()),
    ("causal-scrubbing", "clear",
     lambda p: p.get_by_role("button", name="Clear (all independent)").click()),
    ("tail-risk", "toggle convergence (settings)",
     lambda p: p.get_by_text("Convergence with budget").click()),
]

# Records every change of the app's script state and every DOM mutation, with timestamps.
OBSERVER = """
() => {
  window.__hew = {states: [], last: performance.now()};
  const app = document.querySelector("[data-testid='stApp']");
  new MutationObserver(() => {
    window.__hew.states.push([performance.now(), app.getAttribute('data-test-script-state')]);
    window.__hew.last = performance.now();
  }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  new MutationObserver(() => { window.__hew.last = performance.now(); })
    .observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, log):
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py",
                             "--server.port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("streamlit did not start")


def _idle(page) -> None:
    page.wait_for_function(
        "() => document.querySelector(\"[data-testid='stApp']\")"
        "?.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector(\"[data-testid='stSkeleton']\")", timeout=LOAD_MS)


def _click_to_settled(page, action) -> float:
    """Milliseconds from the click to the end of the run it started (then QUIET_MS of calm)."""
    page.evaluate("() => { window.__hew.states = []; }")
    t0 = page.evaluate("() => performance.now()")
    action(page)
    page.wait_for_function(
        f"""() => {{
          const h = window.__hew, now = performance.now();
          const ran = h.states.some(s => s[1] === 'running');
          const state = document.querySelector("[data-testid='stApp']")
            .getAttribute('data-test-script-state');
          return ran && state === 'notRunning' && now - h.last > {QUIET_MS};
        }}""", timeout=LOAD_MS, polling=50)
    done = page.evaluate("() => { const s = window.__hew.states.filter("
                         "x => x[1] === 'notRunning'); return s[s.length - 1][0]; }")
    last = page.evaluate("() => window.__hew.last")  # the last change before the quiet period
    return max(done, last) - t0


def run(repeats: int) -> list[dict]:
    from playwright.sync_api import sync_playwright

    port = _free_port()
    log = open(os.devnull, "w")
    server = _start_server(port, log)
    rows = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pages: dict = {}
            for url, label, action in INTERACTIONS:
                if url not in pages:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    # the default page (Model & SAE) is served at "/" only
                    page.goto(f"http://127.0.0.1:{port}/{url}", timeout=LOAD_MS)
                    _idle(page)
                    page.evaluate(OBSERVER)
                    pages[url] = page
                page = pages[url]
                try:
                    _click_to_settled(page, action)  # warm-up (first-time caches, plot code)
                    times = [_click_to_settled(page, action) for _ in range(repeats)]
                except Exception as e:  # noqa: BLE001 - report, go on with the next page
                    print(f"{url:18} {label:32} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80]}", flush=True)
                    continue
                rows.append({"page": url or "model", "interaction": label, "repeats": repeats,
                             "median_ms": statistics.median(times), "max_ms": max(times),
                             "all_ms": times})
                print(f"{url or 'model':18} {label:32} {statistics.median(times):8.0f} "
                      f"{max(times):8.0f}", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return rows


def main(argv=None) -> dict:
    args = bench_args(__doc__, argv, extra=lambda ap: ap.add_argument(
        "--repeats", type=int, default=5, help="timed clicks per interaction (default 5)"))
    m = machine_info("cpu")
    print(f"machine: {m['cpu']} · {m['cores']} cores · load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'page':18} {'interaction':32} {'median ms':>8} {'max ms':>8}")
    rows = run(args.repeats)
    out = {"benchmark": "click-to-settled, headless chromium", "quiet_ms": QUIET_MS,
           "rows": rows, "machine": m, "load_average": os.getloadavg()[0]}
    print(f"wrote {write_result('clicks', out, args.out)}")
    return out


if __name__ == "__main__":
    main()
