"""The cases of ../shared/cases/ that concern causal scrubbing and tail risk, each run through
the real CLI (`estimators.cli.main`, in process) with its exact expectation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from estimators.cli import main

CASES = Path(__file__).resolve().parents[1] / ".." / "shared" / "cases"

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason="../shared/cases is not present")


def cli(capsys, *argv) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


def test_softcap_all_important_scrubbing_reproduces_the_loss(capsys):
    c = CASES / "softcap-logits"
    code, d, err = cli(capsys, "scrub", "--model", c / "model", "--partition",
                       c / "all_important.json", "--data", c / "data8.json", "--json")
    assert code == 0, err
    assert d["loss_original"] == pytest.approx(3.1411, abs=1e-4)
    assert d["loss_scrubbed"] == pytest.approx(d["loss_original"], abs=1e-5)
    assert d["loss_recovered"] == pytest.approx(1.0, abs=1e-3)


def test_softcap_ground_truth_above_the_cap_is_zero(capsys):
    c = CASES / "softcap-logits"
    code, d, err = cli(capsys, "ground-truth", "--model", c / "model", "--distribution",
                       c / "dist3.json", "--behaviour", "logit", "--target", "id:3",
                       "--threshold", "2.5", "--json")
    assert code == 0, err
    assert d["method"] == "exact" and d["probability"] == 0.0


def test_vocab_out_targets_outside_are_one_line_and_fitting_data_is_exact(capsys, tmp_path):
    c = CASES / "vocab-out-scrub"
    code, d, err = cli(capsys, "scrub", "--model", c / "model", "--partition",
                       c / "all_important.json", "--data", c / "data8.json", "--json")
    assert code == 2 and d is None
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "d_vocab_out" in lines[0] and "Traceback" not in err
    # the same sequences with every next-token target folded into 0..5 score exactly
    seqs = json.loads((c / "data8.json").read_text())
    fit = [[s[0]] + [t % 6 for t in s[1:]] for s in seqs]
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    code, d, err = cli(capsys, "scrub", "--model", c / "model", "--partition",
                       c / "all_important.json", "--data", tmp_path / "fit.json", "--json")
    assert code == 0, err
    assert d["loss_scrubbed"] == pytest.approx(d["loss_original"], abs=1e-5)


def test_gt_cache_keys_cover_the_whole_config(capsys):
    c = CASES / "gt-cache-collision"
    got = {}
    for name in ("causal", "bidirectional"):
        code, d, err = cli(capsys, "ground-truth", "--model", c / name, "--distribution",
                           c / "dist3.json", "--target", "id:3", "--json")
        assert code == 0, err
        assert d["cached"] is False  # the second model never reads the first one's entry
        got[name] = d["probability"]
    assert got["causal"] == pytest.approx(0.3617, abs=1e-4)
    assert got["bidirectional"] == pytest.approx(0.4091, abs=1e-4)
    # and each model's own entry is reused
    code, d, _ = cli(capsys, "ground-truth", "--model", c / "bidirectional", "--distribution",
                     c / "dist3.json", "--target", "id:3", "--json")
    assert d["cached"] is True and d["probability"] == got["bidirectional"]


def test_info_reports_every_engine_verdict(capsys):
    from estimators import conformance

    code, d, err = cli(capsys, "info", "--model", CASES / "softcap-logits" / "model", "--json")
    assert code == 0, err
    assert set(d["conformance"]) == set(conformance.engines())
    for engine in ("scrubbing", "tailrisk"):
        v = d["conformance"][engine]
        assert v["ok"] is True and v["reason"] is None
        assert 0 <= v["max_abs_error"] <= v["tolerance"]


def test_a_refused_model_is_one_line_and_exit_2(capsys, tmp_path):
    """A model the scrubbing check refuses (attention sinks: in no list, refused by the
    numbers) gets the verdict's one line from `scrub`, never a number."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from estimators.loading import save_checkpoint

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=6, d_head=4, n_heads=2,
                                  d_vocab=8, attn_only=True, use_attention_sinks=True,
                                  device="cpu")
    save_checkpoint(HookedTransformer(cfg), tmp_path / "sinks")
    (tmp_path / "d.json").write_text("[[1, 2, 3], [3, 2, 1], [4, 5, 6]]")
    (tmp_path / "p.json").write_text('{"important": ["*"]}')
    code, d, err = cli(capsys, "scrub", "--model", tmp_path / "sinks", "--partition",
                       tmp_path / "p.json", "--data", tmp_path / "d.json", "--json")
    assert code == 2 and d is None
    assert err.strip().count("\n") == 0
    assert "scrubbing: not supported" in err and "use_attention_sinks" in err
