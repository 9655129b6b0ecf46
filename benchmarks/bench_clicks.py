"""Click-to-settled latency of each page's main interaction, in headless Chromium.

Starts the real `streamlit run app/main.py` server on 127.0.0.1 (a free port, the repository's
.streamlit/config.toml), opens each page by its deep link with Debian's chromium through
Playwright (as tests/e2e does), waits for the page to be idle, then for each interaction: clicks,
and measures from the click (the time stamp of the press Chromium dispatched, so Playwright's
own checks before it are not counted) to the moment the app is settled. Settled means: the server's
`script_finished` message for the run the click started has arrived (read off the websocket in
the page: each ForwardMsg's top-level protobuf field numbers), Streamlit's
`data-test-script-state` is back to `notRunning`, and neither the DOM nor the websocket changed
for QUIET_MS afterwards (the quiet period is not counted). The time is the last of: that
`script_finished`, the last DOM change, the last state change. Where an interaction has an undo
(track all pairs / track none, all paths important / clear), the undo is clicked (untimed,
settled) before each timed click, so every timed click changes what the page shows.

Columns: `server` = click to the arrival of the run's `script_finished` (the server's share,
websocket included); `settled` = click to settled (adds the browser's rendering); each the median
and the maximum over REPEATS timed clicks, after one warm-up click, in milliseconds. `CPU ms`
(medians) is the work behind them, which the machine's load stretches much less: `server` = CPU
time of the streamlit process, `chrome` = CPU time of all Chromium's processes (renderer: scripts,
style, layout, paint; GPU; browser), user + system from /proc/PID/stat (10 ms ticks), from the
click to settled.

    .venv/bin/python benchmarks/bench_clicks.py [--repeats 5] [--baseline] [--post-script-gc]
                                                [--out FILE]

--baseline adds the floor: benchmarks/click_floor_app.py, a bare Streamlit app (a button, a line
of text, the same in a fragment) served the same way. --post-script-gc serves with Streamlit's
own default `runner.postScriptGC = true` (a full gc.collect(2) after every run; our config turns
it off) to show what it costs. Needs `bash scripts/setup.sh --test` (Playwright + Debian
chromium). Prints a table; writes JSON only with --out.
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
APP = "app/main.py"
FLOOR_APP = "benchmarks/click_floor_app.py"


def _button(name: str):
    return lambda p: p.get_by_role("button", name=name, exact=True).click()


def _seed_up(p):
    (p.locator("[data-testid='stNumberInput']").filter(has_text="Sample seed")
     .get_by_test_id("stNumberInputStepUp").click())


# (app, page url path, interaction label, the click, its undo or None): the main interaction
# of each page. The undo (untimed) runs before each timed click.
INTERACTIONS = [
    (APP, "", "sample seed +1 (Model & SAE)", _seed_up, None),
    (APP, "circuits", "track all pairs", _button("Track all pairs"), _button("Track none")),
    (APP, "circuits", "track none", _button("Track none"), _button("Track all pairs")),
    (APP, "activation-model", "apply preset (mask edit)", _button("Apply preset"), None),
    (APP, "causal-scrubbing", "all paths important", _button("All paths important"),
     _button("Clear (all independent)")),
    (APP, "causal-scrubbing", "clear", _button("Clear (all independent)"),
     _button("All paths important")),
    (APP, "tail-risk", "toggle convergence (settings)",
     lambda p: p.get_by_text("Convergence with budget").click(), None),
]
FLOOR = [
    (FLOOR_APP, "", "floor: button (whole script)", _button("Count"), None),
    (FLOOR_APP, "", "floor: button in a fragment", _button("Count in fragment"), None),
]

# Runs before the app's own scripts: records every websocket message (arrival time, top-level
# protobuf field numbers of the ForwardMsg; 6 is script_finished) and every send.
WS_RECORDER = """
(() => {
  const rec = window.__hewws = {msgs: [], sent: []};
  const fields = (buf) => {
    const b = new Uint8Array(buf), out = [];
    let i = 0;
    const varint = () => {
      let r = 0, s = 0, x;
      do { x = b[i++]; r += (x & 127) * 2 ** s; s += 7; } while (x & 128);
      return r;
    };
    while (i < b.length) {
      const tag = varint(), w = tag & 7;
      out.push(Math.floor(tag / 8));
      if (w === 0) varint(); else if (w === 2) i += varint();
      else if (w === 1) i += 8; else if (w === 5) i += 4; else break;
    }
    return out;
  };
  const Native = window.WebSocket;
  function Recorded(...args) {
    const ws = new Native(...args);
    ws.addEventListener('message', (e) => {
      let f = [];
      try { if (e.data instanceof ArrayBuffer) f = fields(e.data); } catch (x) { f = []; }
      rec.msgs.push([performance.now(), f.includes(6)]);
    });
    const send = ws.send.bind(ws);
    ws.send = (d) => { rec.sent.push(performance.now()); return send(d); };
    return ws;
  }
  Recorded.prototype = Native.prototype;
  Object.assign(Recorded, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
  window.WebSocket = Recorded;
})();
"""

# Records every change of the app's script state and the time of the last DOM mutation.
OBSERVER = """
() => {
  window.__hew = {states: [], last: performance.now(), t0: 0, down: 0};
  // the click's own time: when Chromium created the press (not when Playwright was asked)
  window.addEventListener('pointerdown', (e) => { window.__hew.down = e.timeStamp; }, true);
  const app = document.querySelector("[data-testid='stApp']");
  new MutationObserver(() => {
    window.__hew.states.push([performance.now(), app.getAttribute('data-test-script-state')]);
    window.__hew.last = performance.now();
  }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  new MutationObserver(() => { window.__hew.last = performance.now(); })
    .observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""

SETTLED = f"""() => {{
  const h = window.__hew, w = window.__hewws, now = performance.now();
  const finished = w.msgs.some(m => m[0] > h.t0 && m[1]);
  const lastMsg = w.msgs.length ? w.msgs[w.msgs.length - 1][0] : 0;
  const state = document.querySelector("[data-testid='stApp']")
    .getAttribute('data-test-script-state');
  return finished && state === 'notRunning' && now - Math.max(h.last, lastMsg) > {QUIET_MS};
}}"""

TIMES = """() => {
  const h = window.__hew, w = window.__hewws;
  const fin = w.msgs.filter(m => m[0] > h.t0 && m[1]).map(m => m[0]);
  const done = fin[fin.length - 1];
  const states = h.states.filter(s => s[0] > h.t0).map(s => s[0]);
  const t0 = h.down > h.t0 ? h.down : h.t0;
  return {server: done - t0, settled: Math.max(done, h.last, ...states) - t0};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(app: str, port: int, log, post_script_gc: bool):
    cmd = [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port)]
    if post_script_gc:
        cmd += ["--runner.postScriptGC", "true"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
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


TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _cpu_ms(pid: int) -> float:
    """CPU time (user + system) the process `pid` has used so far, ms, from /proc/PID/stat:
    all its threads, those that have ended too (Streamlit runs each script run in a new
    thread); in clock ticks (10 ms here), so single values are coarse, medians less so."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # a process that ended meanwhile
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def _browser_cpu_ms(cdp) -> float:
    """CPU time all of Chromium's processes (browser, renderers, GPU, services) have used so
    far, ms; `cdp` is a browser-level CDP session (SystemInfo.getProcessInfo lists them)."""
    return sum(_cpu_ms(p["id"]) for p in cdp.send("SystemInfo.getProcessInfo")["processInfo"])


def _click_to_settled(page, action, cdp=None, pid: int | None = None) -> dict:
    """{"server": ms from the click to the run's script_finished, "settled": ms to settled,
    and with `cdp` (browser-level) and `pid` (the server's): "server_cpu" and "browser_cpu",
    the CPU ms each used from the click to settled (the quiet period included, idle there)}."""
    page.evaluate("() => { window.__hew.states = []; window.__hewws.msgs = [];"
                  " window.__hew.down = 0; window.__hew.t0 = performance.now(); }")
    cpu0 = _cpu_ms(pid) if pid else 0.0
    chrome0 = _browser_cpu_ms(cdp) if cdp else 0.0
    action(page)
    page.wait_for_function(SETTLED, timeout=LOAD_MS, polling=50)
    out = page.evaluate(TIMES)
    if pid:
        out["server_cpu"] = _cpu_ms(pid) - cpu0
    if cdp:
        out["browser_cpu"] = _browser_cpu_ms(cdp) - chrome0
    return out


def _timed(page, action, undo, repeats: int, cdp, pid: int) -> list[dict]:
    out = []
    for i in range(repeats + 1):  # the first is a warm-up (first-time caches, plot code)
        if undo is not None:
            _click_to_settled(page, undo)
        t = _click_to_settled(page, action, cdp, pid)
        if i:
            out.append(t)
    return out


def _row(page, label, times, repeats) -> dict:
    col = {k: [round(t[k], 1) for t in times] for k in times[0]}
    med = {k: statistics.median(v) for k, v in col.items()}
    row = {"page": page, "interaction": label, "repeats": repeats,
           "median_ms": med["settled"], "max_ms": max(col["settled"]),
           "server_median_ms": med["server"], "server_max_ms": max(col["server"]),
           "server_cpu_median_ms": med["server_cpu"],
           "browser_cpu_median_ms": med["browser_cpu"],
           "all_ms": col["settled"], "all_server_ms": col["server"],
           "all_server_cpu_ms": col["server_cpu"], "all_browser_cpu_ms": col["browser_cpu"]}
    print(f"{row['page']:17} {label:31} {med['server']:6.0f} {max(col['server']):6.0f}"
          f" {med['settled']:7.0f} {max(col['settled']):6.0f} {med['server_cpu']:6.0f}"
          f" {med['browser_cpu']:6.0f}", flush=True)
    return row


def run_app(app: str, interactions: list, repeats: int, post_script_gc: bool = False) -> list:
    """Serve `app`, open its pages, time each interaction; returns the rows."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    log = open(os.devnull, "w")
    server = _start_server(app, port, log, post_script_gc)
    rows = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pages: dict = {}
            cdp = browser.new_browser_cdp_session()
            for _, url, label, action, undo in interactions:
                if url not in pages:
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.add_init_script(WS_RECORDER)
                    # the default page (Model & SAE) is served at "/" only
                    page.goto(f"http://127.0.0.1:{port}/{url}", timeout=LOAD_MS)
                    _idle(page)
                    page.evaluate(OBSERVER)
                    pages[url] = page
                try:
                    times = _timed(pages[url], action, undo, repeats, cdp, server.pid)
                except Exception as e:  # noqa: BLE001 - report, go on with the next page
                    print(f"{url or 'model':18} {label:32} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80]}", flush=True)
                    continue
                page_name = "floor" if app == FLOOR_APP else url or "model"
                rows.append(_row(page_name, label, times, repeats))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return rows


def main(argv=None) -> dict:
    def extra(ap):
        ap.add_argument("--repeats", type=int, default=5,
                        help="timed clicks per interaction (default 5)")
        ap.add_argument("--baseline", action="store_true",
                        help="also time the floor: a bare Streamlit app (click_floor_app.py)")
        ap.add_argument("--post-script-gc", action="store_true",
                        help="serve with Streamlit's default runner.postScriptGC = true")

    args = bench_args(__doc__, argv, extra=extra)
    m = machine_info("cpu")
    load_before = os.getloadavg()
    print(f"machine: {m['cpu']} · {m['cores']} cores · load average "
          f"{load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}"
          + (" · runner.postScriptGC = true" if args.post_script_gc else ""))
    print(f"{'':49} {'server':>13} {'settled':>14} {'CPU ms':>13}")
    print(f"{'page':17} {'interaction':31} {'median':>6} {'max':>6} {'median':>7} {'max':>6}"
          f" {'server':>6} {'chrome':>6}")
    rows = []
    groups = ([(FLOOR_APP, FLOOR)] if args.baseline else []) + [(APP, INTERACTIONS)]
    for app, interactions in groups:
        rows += run_app(app, interactions, args.repeats, args.post_script_gc)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f}")
    out = {"benchmark": "click-to-settled, headless chromium", "quiet_ms": QUIET_MS,
           "post_script_gc": args.post_script_gc, "rows": rows, "machine": m,
           "load_average_before": list(load_before), "load_average_after": list(load_after)}
    print(f"wrote {write_result('clicks', out, args.out)}")
    return out


if __name__ == "__main__":
    main()
