"""The CLI's progress: `--progress` writes "n of N units · elapsed · ~time left" lines to
stderr only (stdout's JSON stays clean; off by default when stderr is not a terminal), and
Ctrl-C stops a long command with one line "cancelled" and exit code 130, no traceback."""

from __future__ import annotations

import io
import json
import signal
import sys
import threading

import pytest

from estimators.cli import main

INFO = ["info", "--model", "induction", "--sae", "zoo", "--data", "zoo,n=64", "--json"]


def test_progress_goes_to_stderr_only(capsys):
    assert main(INFO + ["--progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["sae"]["n_activations"] > 0  # stdout: the JSON alone
    lines = err.strip().splitlines()
    assert any("activations: 100.0% · 64 of 64 sequences" in line for line in lines)
    assert any("SAE statistics:" in line and "positions" in line for line in lines)
    assert all("elapsed" in line for line in lines)

    assert main(INFO) == 0  # stderr is not a terminal here: no progress by default
    out, err = capsys.readouterr()
    assert json.loads(out) and err == ""


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch):
    """A real SIGINT once the first progress line is out (a run of 2^24 model calls)."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    running = threading.Event()

    def on_sigint(signum, frame):  # Python's own behaviour, but only while main() runs
        if running.is_set():
            raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, on_sigint)

    finished = threading.Event()

    def press_ctrl_c():
        while "calls" not in err.getvalue():
            if finished.wait(0.05):
                return  # main() ended first: no signal after it
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    t = threading.Thread(target=press_ctrl_c, daemon=True)
    try:
        running.set()
        t.start()
        rc = main(["tail-risk", "--model", "maxk", "--distribution", "uniform", "--target", "1",
                   "--method", "mc", "--budget", "2^24", "--progress", "--json"])
    finally:
        finished.set()
        running.clear()
        signal.signal(signal.SIGINT, previous)
    t.join(timeout=5)
    assert rc == 130
    text = err.getvalue()
    assert text.strip().splitlines()[-1] == "cancelled" and "Traceback" not in text
    assert "Monte Carlo:" in text and "calls" in text and "left" in text


@pytest.mark.parametrize("argv", [["scrub", "--model", "induction", "--reference", "all three",
                                   "--n", "16", "--progress", "--json"]])
def test_scrub_progress_names_its_stages(argv, capsys, monkeypatch, tmp_path):
    from estimators import activation_cache

    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path))  # cold: the baseline passes really run
    activation_cache.clear_memory()
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["loss_original"] is not None
    assert "baseline: 100.0% · 16 of 16 examples" in err
    assert "scrubbing: 100.0% · 16 of 16 examples scored" in err
