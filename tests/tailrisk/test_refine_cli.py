"""`tail-risk --refine-fraction F`: the refinement's share of the budget (pmc.py) from the command
line, checked before the model loads, and the top-level `refine` of the JSON."""

import json

import pytest
import torch

from tests.cli_run import run_cli as _run
from estimators.loading import save_checkpoint
from estimators.tailrisk import Argmax, run_estimator
from estimators.tailrisk.distributions import from_json

from .conftest import tiny_model

torch.set_num_threads(1)
DIST = [{"id:0": 0.5, "id:1": 0.25, "id:2": 0.25}, {"fixed": "id:3"}, {"uniform": [0, 2, 4]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny 5-token model on disk and a 9-input distribution: token 0 is the argmax of 1/6 of
    it (exact), token 2 of none."""
    d = tmp_path_factory.mktemp("refine")
    model = tiny_model(vocab=5, seed=0, n_ctx=4)
    save_checkpoint(model, d / "model")
    (d / "d.json").write_text(json.dumps(DIST))
    return model, from_json(DIST, 5, 4), ["tail-risk", "--model", str(d / "model"),
                                          "--distribution", str(d / "d.json"), "--budget",
                                          "200", "--json"]


@pytest.mark.parametrize("method, f", [("itgis", 0.5), ("mhis", 0.5), ("itgis", 0.0)])
def test_refine_fraction_reaches_the_estimator_and_the_json(files, capsys, method, f):
    model, dist, base = files
    code, out, err = _run(capsys, base + ["--target", "id:0", "--method", method,
                                          "--refine-fraction", str(f)])
    assert code == 0, err
    d = json.loads(out)
    lib = run_estimator(method, model, dist, Argmax(0), 200, 0, refine_fraction=f)
    assert d["diagnostics"]["config"]["refine_fraction"] == f
    assert d["estimate"] == pytest.approx(lib.value, rel=1e-12, abs=1e-300)
    assert d["refine"] == d["diagnostics"]["refine"] == lib.diagnostics["refine"]
    assert d["refine"] == ("estimate" if f else None)
    assert d["diagnostics"]["refine_calls"] <= int(f * 200)
    assert (d["diagnostics"]["refine_calls"] > 0) == (f > 0)


def test_json_refine_without_the_flag_is_the_default_run(files, capsys):
    """No flag: the method's default share; a run whose refinement found no hit says so."""
    model, dist, base = files
    code, out, err = _run(capsys, base + ["--target", "id:2", "--method", "itgis"])
    assert code == 0, err
    d = json.loads(out)
    lib = run_estimator("itgis", model, dist, Argmax(2), 200, 0)
    assert d["diagnostics"]["config"]["refine_fraction"] == lib.diagnostics["config"][
        "refine_fraction"]
    assert d["refine"] == lib.diagnostics["refine"] and d["refine"] not in (None, "estimate")
    code, out, _ = _run(capsys, base + ["--target", "id:0", "--method", "mc"])
    assert code == 0 and "refine" not in json.loads(out)  # ITGIS/MHIS only


@pytest.mark.parametrize("method, f, msg", [
    ("qld", "0.5", "--refine-fraction applies to itgis and mhis, not qld"),
    ("mc", "0", "--refine-fraction applies to itgis and mhis, not mc"),
    ("itgis", "1", "--refine-fraction must be a number in [0, 1)"),
    ("mhis", "-0.1", "--refine-fraction must be a number in [0, 1)"),
    ("itgis", "nan", "--refine-fraction must be a finite number"),
    ("mhis", "inf", "--refine-fraction must be a finite number"),
])
def test_bad_refine_fraction_is_one_line_before_the_model_loads(tmp_path, capsys, method, f,
                                                                msg):
    """A model path that does not exist: the flag's own error comes first (exit 2)."""
    code, out, err = _run(capsys, ["tail-risk", "--model", str(tmp_path / "missing"),
                                   "--distribution", "hex", "--target", "q", "--method", method,
                                   "--refine-fraction", f])
    assert code == 2 and out == ""
    assert msg in err and len(err.strip().splitlines()) == 1
