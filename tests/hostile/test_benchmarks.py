"""Every benchmark: `--help` prints help and exits 0 without running; no benchmark writes to
the tracked benchmarks/results/ unless told to with --out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted((ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHES, ids=[b.stem for b in BENCHES])
def test_help_only_prints_help(script):
    results = ROOT / "benchmarks" / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("*")}
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--out" in r.stdout and "usage:" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in results.glob("*")} == before
