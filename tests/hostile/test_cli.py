"""Hostile arguments to every CLI command: one line on stderr starting `error:`, exit code 2,
no traceback, nothing allocated first (sizes and files are checked before a model loads)."""

from __future__ import annotations

import pytest

from estimators.cli import main
from tests.hostile.payloads import DEEP, FILES, HUGE, NAN

COMMANDS = {  # a valid base command for each subcommand (the hostile flag is appended)
    "propagate": ["propagate", "--model", "maxk", "--samples", "8", "--n-inputs", "8"],
    "scrub": ["scrub", "--model", "maxk", "--n", "8", "--reference", "x"],
    "scrub-search": ["scrub-search", "--model", "maxk", "--n", "8"],
    "tail-risk": ["tail-risk", "--model", "maxk", "--distribution", "uniform", "--target", "1",
                  "--method", "mc"],
    "ground-truth": ["ground-truth", "--model", "maxk", "--distribution", "uniform",
                     "--target", "1"],
    "circuit": ["circuit", "--circuit", "square"],
    "info": ["info", "--model", "maxk"],
    "zoo": ["zoo", "card"],
}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def _run(argv, capsys) -> str:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (argv, rc, out[-300:], err[-300:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err and "RecursionError" not in err
    return lines[0]


NUMBERS = [  # (command, flag, value, words the message must contain)
    ("propagate", "--samples", "1000000000", "must be ≤"),
    ("propagate", "--samples", "1e9", "must be ≤"),
    ("propagate", "--n-inputs", "1e9", "must be ≤"),
    ("propagate", "--bits-per-parameter", "nan", "finite"),
    ("propagate", "--epsilon", "inf", "finite"),
    ("propagate", "--seed", "-1", "must be ≥"),
    ("propagate", "--positions", "1e30", "outside the context"),
    ("scrub", "--n", "1e9", "must be ≤"),
    ("scrub", "--batch-size", "0", "must be ≥"),
    ("scrub-search", "--steps", "10^9", "must be ≤"),
    ("tail-risk", "--budget", "10^12", "must be ≤"),
    ("tail-risk", "--threshold", "nan", "finite"),
    ("tail-risk", "--temperature", "-inf", "finite"),
    ("tail-risk", "--sampling-temperature", "0", "must be ≥"),
    ("tail-risk", "--bias", "inf", "finite"),
    ("ground-truth", "--samples", "2^40", "must be ≤"),
    ("ground-truth", "--sampled", "2^50", "must be ≤"),
    ("ground-truth", "--shard-samples", "2^40", "must be ≤"),
    ("ground-truth", "--max-exact", "abc", "invalid integer"),
    ("circuit", "--samples", "1e12", "must be ≤"),
    ("circuit", "--order", "100", "must be ≤"),
    ("circuit", "--epsilon", "nan", "finite"),
    ("circuit", "--bits-per-parameter", "nan", "finite"),
]


@pytest.mark.parametrize("command,flag,value,words", NUMBERS,
                         ids=[f"{c}{f}={v}" for c, f, v, _ in NUMBERS])
def test_hostile_numbers(command, flag, value, words, capsys):
    line = _run(COMMANDS[command] + [f"{flag}={value}"], capsys)
    assert words in line, line


FILE_FLAGS = [("propagate", "--mask"), ("propagate", "--tokens"), ("scrub", "--partition"),
              ("scrub", "--data"), ("tail-risk", "--distribution"),
              ("ground-truth", "--distribution"), ("circuit", "--circuit"),
              ("circuit", "--track"), ("tail-risk", "--direction")]


def _with(argv, flag, value):
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    if flag == "--partition":
        argv.remove("--reference"), argv.remove("x")
    if flag == "--direction":
        argv += ["--behaviour", "direction", "--hook", "blocks.0.hook_resid_post"]
    return argv


@pytest.mark.parametrize("command,flag", FILE_FLAGS, ids=[f"{c}{f}" for c, f in FILE_FLAGS])
def test_hostile_json_files(command, flag, tmp_path, capsys):
    for name, data in list(FILES.items()) + [("huge", HUGE)]:
        path = tmp_path / f"{name}.json"
        path.write_bytes(data)
        argv = _with(COMMANDS[command], flag, str(path))
        if flag == "--data":
            argv += ["--partition", str(path)]
        line = _run(argv, capsys)
        if name in ("deep", "deep-object"):
            assert "nests" in line, line
        if name == "huge":
            assert "MB" in line, line
        if name == "nan":
            assert "NaN" in line or "not a JSON number" in line, line


def test_missing_files_say_not_found(tmp_path, capsys):
    missing = str(tmp_path / "missing.json")
    assert "not found" in _run(["circuit", "--circuit", missing], capsys)
    for command, flag in [("propagate", "--mask"), ("scrub", "--partition")]:
        assert "does not exist" in _run(_with(COMMANDS[command], flag, missing), capsys)


def test_hostile_model_folders(tmp_path, capsys):
    """A model folder whose config.json is hostile: one line, never a RecursionError."""
    for name, data in [("deep", DEEP), ("nan", NAN)]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes(data)
        (folder / "model.safetensors").write_bytes(b"not safetensors")
        _run(["info", "--model", str(folder)], capsys)


def test_huge_circuit_is_refused_before_running(tmp_path, capsys):
    import json
    nodes = [{"id": f"n{i}", "op": "add", "args": ["x", "x"]} for i in range(20_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"inputs": {"x": {"kind": "normal"}}, "nodes": nodes,
                                "output": "n19999"}))
    assert "at most" in _run(["circuit", "--circuit", str(path), "--track", "all"], capsys)


def test_cli_json_never_prints_nan(capsys):
    from estimators.cli import _jsonable
    import json
    out = json.loads(json.dumps(_jsonable({"a": float("nan"), "b": [float("inf")]}),
                                allow_nan=False))
    assert out["a"] is None and out["b"] == [None] and "finite" in out["a_note"]


@pytest.mark.parametrize("argv", [
    COMMANDS["propagate"][:3] + ["--samples", "1e9"],
    COMMANDS["propagate"][:3] + ["--samples", "2^20", "--n-inputs", "2^20"],  # memory check
    COMMANDS["scrub"] + ["--n", "1e9"],
    COMMANDS["tail-risk"] + ["--budget", "10^12"],
], ids=["samples", "memory", "scrub-n", "budget"])
def test_huge_sizes_are_refused_before_allocating(argv, capsys):
    """Peak memory of this process grows by less than 300 MB while the size is refused (the
    refused runs would need 8 to 120 GB)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    _run(argv, capsys)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 300, grown_mb


def test_cli_json_of_tensors_never_prints_nan():
    import json

    import torch

    from estimators.cli import _jsonable
    out = json.dumps(_jsonable({"t": torch.tensor([1.0, float("nan"), float("inf")])}),
                     allow_nan=False)
    assert out == '{"t": [1.0, null, null]}'
