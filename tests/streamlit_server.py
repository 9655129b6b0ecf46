"""The real Streamlit server for the browser and server tests: `streamlit run app/main.py` on a
free loopback port, up when `/_stcore/health` answers, stopped afterwards. One place for what
tests/e2e and tests/hostile/test_server.py start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
START_TRIES = 240  # × (≤ 2 s health request + 0.5 s): a first start on a busy 2-core machine


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the time of the call."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served_app(log_path: Path, env: dict | None = None, args: tuple[str, ...] = (),
               port: int | None = None) -> Iterator[str]:
    """Serve the app (the README's command, plus `--server.port` and `args`) with `env` added
    to the environment and its output in `log_path`; yields the base URL. Fails the test (with
    the log's name) when the health check never answers; terminates the server on exit."""
    port = free_port() if port is None else port
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
         "--server.port", str(port), *args],
        cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), stdout=log,
        stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(START_TRIES):
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"streamlit did not start; see {log_path}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
