"""The CLI end to end (in-process `estimators.cli.main`, the same code `python -m estimators`
runs), on a checkpoint folder of a tiny random model."""

import json

import pytest

from estimators.cli import main
from estimators.loading import save_checkpoint
from estimators.tailrisk import Argmax, ground_truth, run_estimator
from estimators.tailrisk.distributions import from_json

from .conftest import tiny_model

DIST = [{"id:0": 0.5, "id:1": 0.25, "id:2": 0.25}, {"fixed": "id:3"}, {"uniform": [0, 2, 4]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model(vocab=5, seed=0, n_ctx=4)
    save_checkpoint(model, root / "model")
    (root / "dist.json").write_text(json.dumps(DIST))
    (root / "bad_sum.json").write_text(json.dumps([{"id:0": 0.5, "id:1": 0.4}]))
    (root / "bad_token.json").write_text(json.dumps([{"zz": 1.0}]))
    (root / "bad_id.json").write_text(json.dumps([{"id:77": 1.0}]))
    return root, model


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tail_risk_json_fields_match_the_library(files, capsys):
    root, model = files
    code, out, _ = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--target", "id:2", "--method", "mc",
                       "--budget", "500", "--seed", "3", "--json")
    assert code == 0
    d = json.loads(out)
    assert {"estimate", "interval", "calls", "seconds"} <= set(d)
    dist = from_json(DIST, 5)
    lib = run_estimator("mc", model, dist, Argmax(2), 500, seed=3)
    assert d["estimate"] == lib.value and d["interval"] == list(lib.interval)
    assert d["calls"] == 500
    code, out, _ = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--target", "2", "--method", "gld",
                       "--budget", "300", "--json")
    d = json.loads(out)
    assert code == 0 and d["interval"] is None and d["calls"] == 300


def test_ground_truth_json(files, capsys):
    root, model = files
    code, out, _ = run(capsys, "ground-truth", "--model", str(root / "model"),
                       "--distribution", str(root / "dist.json"), "--target", "id:2", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["method"] == "exact"
    assert d["probability"] == ground_truth(model, from_json(DIST, 5), Argmax(2)).probability
    code, out, _ = run(capsys, "ground-truth", "--model", str(root / "model"),
                       "--distribution", str(root / "dist.json"), "--target", "id:2",
                       "--max-exact", "2", "--samples", "1000", "--json")
    assert json.loads(out)["method"] == "sampled"


@pytest.mark.parametrize("dist_file, target, message", [
    ("bad_sum.json", "id:0", "sum to 0.9"),
    ("bad_token.json", "id:0", "token string 'zz' given, but this model has no token labels"),
    ("bad_id.json", "id:0", "token id 77 is outside the vocabulary"),
    ("dist.json", "id:9", "outside the output vocabulary"),
    ("missing.json", "id:0", "neither a built-in"),
])
def test_bad_input_is_one_clear_line(files, capsys, dist_file, target, message):
    root, _ = files
    code, out, err = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                         str(root / dist_file), "--target", target, "--method", "mc",
                         "--budget", "100", "--json")
    assert code == 2 and out == ""
    assert err.startswith("error:") and message in err and err.count("\n") == 1
