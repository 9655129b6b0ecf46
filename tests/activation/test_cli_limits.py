"""The activation CLI's limits: K = 4 refused before allocating where this machine cannot hold
it; method and Hermite-order flags checked before the model loads."""

from __future__ import annotations

import json

import pytest
import torch

from estimators.activation import random_mlp, save_mlp
from estimators.activation.cumulants import K4_MEMORY_LIMIT_GB, _k4_factor_bytes, k4_peak_bytes
from tests.cli_run import run_cli as _run
from estimators.validation import MEMORY_FRACTION, available_memory

torch.set_num_threads(1)


def test_k4_beyond_this_machine_is_one_line_before_allocating(capsys, tmp_path):
    """Width 384, 4 hidden layers: its factors (10.9 GB) pass the 16 GB cap, but the measured
    peak is ~3× that (32.6 GB), more than the share of memory a command may use here."""
    mlp = random_mlp([384] * 6, "relu", seed=0)
    assert _k4_factor_bytes(mlp) / 1e9 < K4_MEMORY_LIMIT_GB
    if k4_peak_bytes(mlp) <= MEMORY_FRACTION * available_memory():
        pytest.skip("this machine could hold K = 4 at width 384")
    save_mlp(mlp, tmp_path)
    code, out, err = _run(capsys, ["propagate", "--model", str(tmp_path), "--mask", "full",
                                   "--cumulants", "4", "--json"])
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--cumulants 4 at width 384" in lines[0] and "GB" in lines[0]


def test_k4_naive_argument_is_not_refused_by_the_fourth_cumulants_size(capsys, tmp_path):
    """The naive argument's diagonal path never forms the fourth cumulant, so the size check
    that refuses full-mask K = 4 at width 384 does not apply to it."""
    mlp = random_mlp([384] * 6, "relu", seed=0)
    save_mlp(mlp, tmp_path)
    code, out, err = _run(capsys, ["propagate", "--model", str(tmp_path), "--mask", "naive",
                                   "--cumulants", "4", "--n-inputs", "64", "--json"])
    assert code == 0, err
    assert len(json.loads(out)["layers"]) > 0


@pytest.mark.parametrize("argv, msg", [
    (["propagate", "--mask", "full", "--hermite-order", "0"], "--hermite-order must be ≥ 1"),
    (["propagate", "--mask", "full", "--hermite-order", "1e9"], "--hermite-order must be ≤ 12"),
    (["tail-risk", "--distribution", "hex", "--target", "q", "--method", "qld", "--fallback"],
     "--fallback/--no-fallback applies to itgis and mhis, not qld"),
])
def test_flags_are_checked_before_the_model_loads(capsys, tmp_path, argv, msg):
    """A model path that does not exist: the flag's own error comes first."""
    code, out, err = _run(capsys, [argv[0], "--model", str(tmp_path / "missing"), *argv[1:]])
    assert code == 2 and out == ""
    assert msg in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("cumulants", [3, 4])
def test_greedy_search_on_cumulant_chain_scores_what_it_reports(capsys, tmp_path, cumulants):
    """K ≥ 3 carries κ₃/κ₄ from step to step: the candidates a search scores must not leave
    theirs behind for the next evaluation (the path's last total was 17,114.8 bits where the
    same mask from scratch gives 17,178.7 on a width-6 MLP)."""
    save_mlp(random_mlp([4, 6, 6, 4], "relu", seed=0), tmp_path)
    code, out, _ = _run(capsys, ["propagate", "--model", str(tmp_path), "--mask", "naive",
                                 "--cumulants", str(cumulants), "--search", "greedy",
                                 "--search-steps", "3", "--n-inputs", "256", "--json"])
    assert code == 0
    s = json.loads(out)["search"]
    assert len(s["path"]) > 2  # the search took steps at more than one site
    assert s["best_total_bits"] == pytest.approx(s["verified_total_bits"], rel=1e-12)


def test_search_leaves_the_top_level_on_the_stated_mask(capsys, tmp_path):
    """With --search the top-level surprise, output and layers are those of `mask` (the stated
    one, as without --search); the best mask and its score are under `search`."""
    save_mlp(random_mlp([4, 6, 6, 4], "relu", seed=0), tmp_path)
    base = ["propagate", "--model", str(tmp_path), "--mask", "naive", "--n-inputs", "256",
            "--json"]
    _, plain, _ = _run(capsys, base)
    code, searched, _ = _run(capsys, base + ["--search", "greedy", "--search-steps", "2"])
    plain, searched = json.loads(plain), json.loads(searched)
    assert code == 0 and searched["mask_hash"] == plain["mask_hash"]
    assert searched["surprise"]["total_bits"] == pytest.approx(plain["surprise"]["total_bits"],
                                                               rel=1e-12)
    assert searched["layers"] == plain["layers"]
    assert searched["search"]["best_total_bits"] < plain["surprise"]["total_bits"]


def test_negative_exponent_values_reach_their_option():
    """`--threshold -1e6` is one option with its value (argparse alone reads `-1e6` as an
    option); plain negatives and `=` forms are left as they were."""
    from estimators.cli import _attach_negative_values, build_parser

    argv = ["tail-risk", "--model", "charlm", "--distribution", "hex", "--target", "q",
            "--method", "mc", "--behaviour", "logit", "--threshold", "-1e6", "--budget", "64"]
    args = build_parser().parse_args(_attach_negative_values(argv))
    assert args.threshold == -1e6
    assert _attach_negative_values(["--x", "-3", "--y=-1e3", "--z", "-inf"]) == \
        ["--x", "-3", "--y=-1e3", "--z=-inf"]
