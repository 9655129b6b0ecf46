"""Surprise accounting for circuits, and the `python -m estimators circuit` CLI."""

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from estimators import cli
from estimators.circuits import CircuitConfig, analyse, load_preset, track_all
from estimators.circuits.accounting import elias_gamma_bits, output_epsilon
from estimators.surprise import log2_binomial, mdl_bits_per_parameter


def _data_bits_reference(circuit, mean, var, n, seed, eps):
    """−Σ log2(pdf(y)·ε) with scipy, on the documented draws (seed + 1)."""
    y = circuit.sample(n, seed + 1)[circuit.output].numpy()
    return float(-(stats.norm.logpdf(y, mean, math.sqrt(var)) + math.log(eps)).sum() / math.log(2))


@pytest.mark.parametrize("preset", ["square", "difference_of_squares", "shared_coin"])
def test_surprise_terms_match_their_definitions(preset):
    c = load_preset(preset)
    n_cand = len(track_all(c))
    for tracked in ([], track_all(c)[:1], track_all(c)):
        a = analyse(c, CircuitConfig(method="sparse", tracked=tuple(tracked), samples=400,
                                     seed=3))
        k = len(tracked)
        want_arg = 0.0 if k == 0 else math.log2(n_cand + 1) + log2_binomial(n_cand, k)
        assert a.surprise.argument_bits == pytest.approx(want_arg)
        mean, var = a.estimate.mean_of(c.output), a.estimate.var_of(c.output)
        assert a.surprise.data_bits == pytest.approx(
            _data_bits_reference(c, mean, var, 400, 3, a.epsilon), rel=1e-9)
        assert a.surprise.total_bits == pytest.approx(want_arg + a.surprise.data_bits)


def test_pointing_out_the_correlation_pays_for_itself():
    for preset in ["square", "difference_of_squares", "power_chain", "shared_coin"]:
        c = load_preset(preset)
        naive = analyse(c, CircuitConfig(method="sparse"))
        full = analyse(c, CircuitConfig(method="sparse", tracked=tuple(track_all(c))))
        assert full.surprise.argument_bits > 0 == naive.surprise.argument_bits
        assert full.surprise.total_bits < naive.surprise.total_bits, preset


def test_epsilon_is_the_output_spacing_for_finite_inputs():
    eps, how = output_epsilon(load_preset("shared_coin"))  # y = (a+b)(b+c) ∈ {0, 1, 2, 4}
    assert eps == 1.0 and "4 values" in how
    assert output_epsilon(load_preset("square"))[0] == 0.01


def test_other_methods_argument_bits():
    c = load_preset("power_chain")
    n = len(track_all(c))
    w = analyse(c, CircuitConfig(method="wick", order=8, samples=20))
    assert w.surprise.argument_bits == pytest.approx(math.log2(n + 1) + elias_gamma_bits(8))
    assert elias_gamma_bits(1) == 1 and elias_gamma_bits(8) == 7
    assert analyse(c, CircuitConfig(method="independence", samples=20)).surprise.argument_bits \
        == 0
    mc = analyse(c, CircuitConfig(method="montecarlo", mc_samples=4096, samples=20))
    assert mc.surprise.argument_bits == pytest.approx(2 * mdl_bits_per_parameter(4096))


def test_degenerate_variance_is_floored_not_infinite():
    c = load_preset("square")  # Wick order 1 at μ = 0 would claim variance 0
    c0 = type(c).from_dict({**c.to_dict(), "inputs": {"x": {"dist": "normal", "mean": 0.0,
                                                           "var": 1.0}}})
    a = analyse(c0, CircuitConfig(method="wick", order=1, samples=50))
    assert a.estimate.var_of("y") == 0.0
    assert math.isfinite(a.surprise.data_bits) and a.surprise.data_bits > 0
    assert "floored" in a.surprise.notes


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_fields(capsys):
    code, out, _ = _run(capsys, "circuit", "--circuit", "square", "--track", "all",
                        "--samples", "200", "--json")
    assert code == 0
    r = json.loads(out)
    nodes = {n["id"]: n for n in r["nodes"]}
    assert set(nodes["y"]) >= {"id", "mean_est", "var_est", "mean_true", "var_true"}
    assert nodes["y"]["mean_est"] == pytest.approx(2.0) and nodes["y"]["mean_true"] == \
        pytest.approx(2.0)
    assert set(r["surprise"]) >= {"argument_bits", "data_bits", "total_bits"}
    lib = analyse(load_preset("square"), CircuitConfig(tracked=(("x", "x"),), samples=200))
    assert r["surprise"]["total_bits"] == pytest.approx(lib.surprise.total_bits)


def test_cli_track_file_order_and_circuit_file(capsys, tmp_path: Path):
    circ = tmp_path / "c.json"
    circ.write_text(json.dumps(load_preset("difference_of_squares").to_dict()))
    track = tmp_path / "t.json"
    track.write_text(json.dumps({"pairs": [["d", "s"]]}))
    code, out, _ = _run(capsys, "circuit", "--circuit", str(circ), "--track", str(track),
                        "--json")
    assert code == 0
    r = json.loads(out)
    assert r["tracked"] == [["s", "d"]]
    assert r["nodes"][-1]["mean_est"] == pytest.approx(3.75)
    code, out, _ = _run(capsys, "circuit", "--circuit", "power_chain", "--order", "8", "--json")
    r = json.loads(out)
    assert r["method"] == "wick" and r["order"] == 8
    y = r["nodes"][-1]
    assert y["mean_est"] == pytest.approx(y["mean_true"], rel=1e-12)
    code, out, _ = _run(capsys, "circuit", "--circuit", "shared_coin")
    assert code == 0 and "S(π) = 0.00 bits" in out


@pytest.mark.parametrize("argv, message", [
    (["--circuit", "nope"], "neither a preset"),
    (["--circuit", "square", "--track", "missing.json"], "--track must be"),
    (["--circuit", "shared_coin", "--track", "BADPAIR"], "not combined by any node"),
    (["--circuit", "square", "--order", "0"], "order must be"),
    (["--circuit", "square", "--order", "2", "--method", "sparse"], "--order applies"),
    (["--circuit", "BADFILE"], "cycle"),
])
def test_cli_errors_are_one_line_exit_2(capsys, tmp_path, argv, message):
    bad_pair = tmp_path / "pair.json"
    bad_pair.write_text(json.dumps({"pairs": [["a", "c"]]}))
    bad_file = tmp_path / "cyc.json"
    bad_file.write_text(json.dumps({"inputs": {"a": {"dist": "bernoulli", "p": 0.5}},
                                    "nodes": [{"id": "p", "op": "add", "args": ["q", "a"]},
                                              {"id": "q", "op": "add", "args": ["p", "a"]}],
                                    "output": "q"}))
    argv = [str(bad_pair) if a == "BADPAIR" else str(bad_file) if a == "BADFILE" else a
            for a in argv]
    code, out, err = _run(capsys, "circuit", *argv, "--json")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_library_never_imports_streamlit():
    src = Path(__file__).resolve().parents[2] / "estimators" / "circuits"
    for f in src.glob("*.py"):
        assert "streamlit" not in f.read_text(), f
