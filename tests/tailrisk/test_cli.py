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
    assert d["calls"] == 500 and d["samples"] == 500 and "backward" in d["calls_convention"]
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


# ------------------------------------------------------------------ SAE feature, probe direction

def test_probe_unit_and_direction_file_match_the_library(files, capsys):
    from estimators.tailrisk import probe_direction

    root, model = files
    hook = "blocks.1.hook_resid_post"
    b = probe_direction(model, hook, unit=3, threshold=0.5)
    dist = from_json(DIST, 5)
    code, out, _ = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--behaviour", "direction", "--hook", hook,
                       "--unit", "3", "--threshold", "0.5", "--method", "mc", "--budget",
                       "400", "--seed", "1", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["estimate"] == run_estimator("mc", model, dist, b, 400, seed=1).value
    assert d["target"] is None and d["behaviour"] == f"{hook}[3] > 0.5"
    code, out, _ = run(capsys, "ground-truth", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--behaviour", "direction", "--hook", hook,
                       "--unit", "3", "--threshold", "0.5", "--json")
    g = json.loads(out)
    assert code == 0 and g["method"] == "exact"
    assert g["probability"] == ground_truth(model, dist, b).probability
    assert 0 < g["probability"] < 1  # the threshold cuts the support: a non-trivial check
    # the same probe as a JSON file and as CSV; a bias shifts it
    w = [0.1 * i - 1 for i in range(32)]
    (root / "w.json").write_text(json.dumps({"direction": w, "note": "probe"}))
    (root / "w.csv").write_text(",".join(str(v) for v in w) + "\n")
    lib = run_estimator("qld", model, dist,
                        probe_direction(model, hook, direction=w, threshold=1.0, bias=0.2),
                        256, seed=0).value
    for f in ("w.json", "w.csv"):
        code, out, _ = run(capsys, "tail-risk", "--model", str(root / "model"),
                           "--distribution", str(root / "dist.json"), "--behaviour",
                           "direction", "--hook", hook, "--direction", str(root / f),
                           "--bias", "0.2", "--threshold", "1.0", "--method", "qld",
                           "--budget", "256", "--json")
        assert code == 0 and json.loads(out)["estimate"] == lib, f


@pytest.mark.parametrize("extra, message", [
    (["--hook", "blocks.1.hook_resid_post", "--direction", "short.json"],
     "the direction has 3 entries; the residual stream has d_model = 32"),
    (["--hook", "blocks.1.hook_resid_post", "--direction", "nan.csv"], "NaN or infinite"),
    (["--hook", "blocks.1.attn.hook_z", "--unit", "0"], "not a residual-stream hook"),
    (["--hook", "blocks.1.hook_resid_post", "--unit", "32"], "outside the residual stream"),
    (["--hook", "blocks.1.hook_resid_post"], "exactly one of --direction FILE, --unit U"),
])
def test_bad_probe_is_one_clear_line(files, capsys, extra, message):
    root, _ = files
    (root / "short.json").write_text("[1, 2, 3]")
    (root / "nan.csv").write_text("1, nan, 3")
    extra = [str(root / e) if e.endswith((".json", ".csv")) else e for e in extra]
    code, out, err = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                         str(root / "dist.json"), "--behaviour", "direction", *extra,
                         "--method", "mc", "--budget", "100", "--json")
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err


def test_sae_feature_on_the_zoo_charlm_matches_the_library(tmp_path, capsys):
    from estimators.loading import load_model, load_sae
    from estimators.tailrisk import sae_feature

    lm = load_model("charlm", "cpu")
    sae = load_sae("zoo", lm, "cpu")
    dist_obj = [{"uniform": ["id:10", "id:20", "id:30", "id:40"]}] * 3
    (tmp_path / "d.json").write_text(json.dumps(dist_obj))
    dist = from_json(dist_obj, int(lm.model.cfg.d_vocab), int(lm.model.cfg.n_ctx))
    base = ["--model", "charlm", "--distribution", str(tmp_path / "d.json"), "--behaviour",
            "sae", "--sae", "zoo", "--json"]
    # a feature that fires on some but not all of the 64 inputs
    from estimators.tailrisk.ground_truth import exact
    feature, p = None, None
    for j in range(int(sae.cfg.d_sae)):
        q = float(exact(lm.model, dist, sae_feature(sae, j, 0.0)))
        if 0 < q < 0.5:
            feature, p = j, q
            break
    assert feature is not None
    code, out, _ = run(capsys, "ground-truth", *base, "--feature", str(feature))
    assert code == 0 and json.loads(out)["probability"] == pytest.approx(p, rel=1e-12)
    code, out, _ = run(capsys, "tail-risk", *base, "--feature", str(feature), "--method",
                       "gld", "--budget", "256")
    lib = run_estimator("gld", lm.model, dist, sae_feature(sae, feature, 0.0), 256, seed=0)
    assert code == 0 and json.loads(out)["estimate"] == lib.value
    code, _, err = run(capsys, "tail-risk", *base, "--feature", "100000", "--method", "mc")
    assert code == 2 and "out of range" in err


def test_activation_mask_option_matches_the_library(files, capsys):
    root, model = files
    dist = from_json(DIST, 5)
    code, out, _ = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--target", "id:2", "--method", "activation",
                       "--mask", "full", "--budget", "300", "--json")
    d = json.loads(out)
    lib = run_estimator("activation", model, dist, Argmax(2), 300, seed=0, mask="full")
    assert code == 0 and d["estimate"] == lib.value and d["diagnostics"]["mask"] == "full"
    assert d["diagnostics"]["engine"] == "activation" and d["calls"] == lib.cost.calls
    code, _, err = run(capsys, "tail-risk", "--model", str(root / "model"), "--distribution",
                       str(root / "dist.json"), "--target", "id:2", "--method", "mc",
                       "--mask", "full", "--json")
    assert code == 2 and "--mask applies to the activation method" in err
