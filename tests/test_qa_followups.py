"""Regressions for what the session's QA pass found: point-mass moment errors, model names with
control characters, token ids outside any vocabulary, and `--json | head`."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_point_mass_moment_errors_are_absolute_not_noise_over_zero():
    from estimators.activation.gaussian import site_distance

    mu = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)
    noise = torch.tensor([1e-7, -2e-7, 0.0], dtype=torch.float64)
    zero = torch.zeros(3, 3, dtype=torch.float64)
    d = site_distance(mu + noise, zero, mu, zero)
    assert d.extra["error_kind"] == "absolute"
    assert d.mean_error == pytest.approx(float((noise ** 2).mean().sqrt()), rel=1e-9)
    cov = torch.eye(3, dtype=torch.float64)
    d = site_distance(mu + 0.5, cov, mu, cov)
    assert d.extra["error_kind"] == "relative" and d.mean_error == pytest.approx(0.5)


def test_model_name_with_control_characters_is_refused_before_any_lookup():
    from estimators.loading import LoadError, load_model

    with pytest.raises(LoadError, match="printable"):
        load_model("\x00")
    with pytest.raises(LoadError, match="printable"):
        load_model("gpt2\nsmall")


@pytest.mark.parametrize("ids,shown", [("[[1, 2], [100000000000000000000, 2]]", "100000"),
                                       ("[[1, 2], [-1, 2]]", "-1")])
def test_token_ids_outside_any_vocabulary_are_one_line(tmp_path, ids, shown):
    f = tmp_path / "t.json"
    f.write_text(ids)
    r = subprocess.run([sys.executable, "-m", "estimators", "propagate", "--model", "induction",
                        "--tokens", str(f), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert shown in r.stderr and "4611686018427387904" not in r.stderr


def test_json_piped_into_a_closed_reader_has_no_traceback():
    p = subprocess.Popen([sys.executable, "-m", "estimators", "zoo", "list", "--json"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader leaves before the output is written (like `| head -0`)
    err = p.stderr.read().decode()
    p.wait()
    assert "Traceback" not in err and "BrokenPipe" not in err
