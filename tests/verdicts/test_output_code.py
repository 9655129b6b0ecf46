"""The default data code S(Y|π) of the activation model (accounting.py): the model's logits coded
jointly under the propagated Gaussian at ε = 0.01 nats, with ε²/12 added to the variances.

  * tracking a real correlation lowers S(Y|π) (Hadamard: with the real mean and covariance the
    joint code beats the diagonal one by N/2·log2(Π Σ_ii / det Σ));
  * a singular estimate cannot code below about −0.47 bits per coordinate;
  * page and CLI use the same default (continuous, ε = 0.01), and --output-code argmax /
    --epsilon switch it;
  * a mixture whose variable is unrelated to the output does not memorise the data.
"""

import json
import math

import pytest
import torch

from estimators.activation import DataCode, Propagator
from estimators.activation.accounting import continuous_bits
from estimators.activation.chain import with_output_code
from estimators.activation.gaussian import MaskedGaussian, mask_covariance
from estimators.activation.mixture import MixtureArgument, mixture_surprise
from estimators.cli import main
from tests.verdicts.helpers import page_chain, zoo_ready

D = torch.float64


def test_tracking_a_real_correlation_lowers_data_bits():
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=D)
    y = torch.randn(4000, 3, generator=g, dtype=D) @ torch.linalg.cholesky(cov).T
    mean, emp = y.mean(0), torch.cov(y.T)
    full = mask_covariance((mean, emp), torch.ones(3, 3, dtype=torch.bool))
    naive = mask_covariance((mean, emp), None)
    code = DataCode()
    saving = float(continuous_bits(y, naive, 0.01, code) - continuous_bits(y, full, 0.01, code))
    ideal = len(y) / 2 * math.log2(float(torch.diagonal(emp).prod() / torch.linalg.det(emp)))
    assert saving > 0 and saving == pytest.approx(ideal, rel=1e-3)


def test_singular_estimate_is_bounded_by_the_rounding_variance():
    y = torch.zeros(10, 4, dtype=D)
    point = MaskedGaussian(torch.zeros(4, dtype=D), torch.zeros(4, dtype=D))
    bits = float(continuous_bits(y, point, 0.01, DataCode()))
    assert bits >= -0.5 * math.log2(6 / math.pi) * 40 - 1e-6
    assert bits == pytest.approx(-0.5 * math.log2(6 / math.pi) * 40, rel=1e-3)


def _cli(capsys, extra):
    code = main(["propagate", "--model", "maxk", "--n-inputs", "32", "--samples", "32",
                 "--json"] + extra)
    out, err = capsys.readouterr()
    return code, out, err


def test_page_and_cli_share_the_default_code(capsys):
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    from app import activation as glue
    from estimators.loading import load_model

    lm = load_model("maxk", "cpu")
    page = glue.build_chain(lm, None, glue.Settings(glue.default_positions(lm), n_inputs=16,
                                                    samples=16))
    code, out, err = _cli(capsys, [])
    assert code == 0, err
    cli = json.loads(out)["chain"]["output"]
    assert cli == {"site": page.output.site, "kind": page.output.kind,
                   "epsilon": page.output.epsilon}
    assert cli["kind"] == "continuous" and cli["epsilon"] == 0.01
    code, out, err = _cli(capsys, ["--output-code", "argmax", "--epsilon", "0.5"])
    assert code == 0, err
    assert json.loads(out)["chain"]["output"]["kind"] == "argmax"
    code, out, err = _cli(capsys, ["--epsilon", "0.1"])
    d = json.loads(out)
    assert d["chain"]["output"]["epsilon"] == 0.1 and "NaN" not in out
    for bad in (["--epsilon", "0"], ["--epsilon", "nan"]):
        code, _, err = _cli(capsys, bad)
        assert code == 2 and "--epsilon" in err and "Traceback" not in err


def test_with_output_code_switches_and_refuses():
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    chain, _, _ = page_chain("maxk")
    am = with_output_code(chain, "argmax")
    assert am.output.kind == "argmax" and am.empirical is chain.empirical
    assert torch.equal(am.output.observations, chain.empirical[chain.output.site].argmax(-1))
    assert with_output_code(am, "continuous").output.epsilon == 0.01
    with pytest.raises(ValueError, match="output code"):
        with_output_code(chain, "both")
    with pytest.raises(ValueError, match="ε"):
        with_output_code(chain, "continuous", 0.0)


def test_unrelated_mixture_does_not_memorise():
    """Random pairs of inputs as components (C = N/2) at the logits cost more than one
    component there (the output's own mean and variances fitted): with the pooled covariance the
    C·d fitted means cost far more than the chance saving. A variable with a value per input is
    refused."""
    if not zoo_ready("maxk"):
        pytest.skip("maxk does not load here")
    chain, _, _ = page_chain("maxk")
    prop = Propagator(chain, distances=False)
    arg = MixtureArgument(chain.output.site, "token_at:0")
    one = mixture_surprise(prop, arg, torch.zeros(chain.n_inputs, dtype=torch.long), n_ctx=4)
    pairs = torch.randperm(chain.n_inputs, generator=torch.Generator().manual_seed(1)) // 2
    many = mixture_surprise(prop, arg, pairs, n_ctx=4)
    assert many.surprise.total_bits > one.surprise.total_bits
    assert many.surprise.data_bits > one.surprise.data_bits - 0.5 * 64 * 64  # no memorising
    with pytest.raises(ValueError, match="different value"):
        mixture_surprise(prop, arg, torch.arange(chain.n_inputs), n_ctx=4)
