"""The activation model at scale (issue #11 item 3): unit and SAE-feature subsets, Ledoit–Wolf
and per-unit marginal KL distances, K and N sized to a time budget."""

import json
import math

import pytest
import torch

from estimators.activation.chain import chain_for_zoo
from estimators.activation.engine import Propagator
from estimators.activation.gaussian import (gaussian_kl, ledoit_wolf, marginal_kl,
                                            site_distance_shrunk)
from estimators.activation.masks import CovarianceMask
from estimators.activation.scale import (K_BOUNDS, N_BOUNDS, parse_units, pilot,
                                         resolve_resid_units, size_to_budget)
from estimators.cli import main
from estimators.loading import load_model, load_sae

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def induction():
    return load_model("induction", "cpu")


# ------------------------------------------------------------------------- unit subsets

def test_parse_units_forms_and_errors():
    assert parse_units("first:8").resid == ("first", 8)
    assert parse_units(["top-variance:3", "firing:5"]).sae_firing == 5
    assert parse_units("7,2,5").resid == ("list", (2, 5, 7))
    assert resolve_resid_units(parse_units("first:3"), 16) == (0, 1, 2)
    real = [torch.randn(50, 2 * 4, generator=torch.Generator().manual_seed(0))
            * torch.tensor([1.0, 5, 0.1, 3] * 2)]
    assert resolve_resid_units(parse_units("top-variance:2"), 4, real) == (1, 3)
    for bad in ("first:0", "first:x", "1,1", "-1,2", "nope:3", "3,,4", "3,4,"):
        with pytest.raises(ValueError):
            parse_units(bad)
    with pytest.raises(ValueError):
        resolve_resid_units(parse_units("first:17"), 16)
    with pytest.raises(ValueError):
        resolve_resid_units(parse_units("3,16"), 16)


def test_unit_subset_transitions_equal_full_chain_on_chosen_units(induction):
    """With the other units at the real activations, the subset chain's transition is the full
    chain's restricted to the chosen units, also for perturbed inputs (exact)."""
    full = chain_for_zoo(induction, n_inputs=8, samples=8, seed=1)
    sub = chain_for_zoo(induction, n_inputs=8, samples=8, seed=1, units="1,4,9,30")
    units = [1, 4, 9, 30]
    d = full.info["d_model"]
    assert [s.units for s in sub.sites if s.kind == "resid"][0] == tuple(units)
    assert sub.info["units"]["resid_units"] == 4
    gen = torch.Generator().manual_seed(0)
    for st_f, st_s in zip(full.steps, sub.steps):
        name = full.sites[st_f.parent].name
        real = full.empirical[name]  # [N, pos·d]
        n_pos = real.shape[1] // d
        delta = torch.zeros(real.shape[0], n_pos, d, dtype=real.dtype)
        delta[:, :, units] = torch.randn(real.shape[0], n_pos, len(units), generator=gen,
                                         dtype=real.dtype)
        x_full = real + delta.flatten(1)
        x_sub = x_full.view(-1, n_pos, d)[:, :, units].flatten(1)
        assert torch.equal(x_sub, sub.empirical[name] + delta[:, :, units].flatten(1))
        for c_f, c_s, y_f, y_s in zip(st_f.children, st_s.children, st_f.transition(x_full),
                                      st_s.transition(x_sub)):
            site = full.sites[c_f]
            if site.kind == "resid":
                y_f = y_f.view(-1, n_pos, d)[:, :, units].flatten(1)
            torch.testing.assert_close(y_s, y_f, rtol=1e-6, atol=1e-6)


def test_unit_subset_marginals_equal_full_chain_point_mass(induction):
    """Identical real inputs (zero covariance): both chains propagate point masses, and the
    subset's means and variances at every site equal the full chain's on the chosen units."""
    from estimators.activation.chain import transformer_chain
    from estimators import zoo

    tok = zoo.get("induction").sample(1, seed=3).tokens.repeat(4, 1)
    kw = dict(positions=[28, 29, 30, 31], samples=4, seed=0)
    full = Propagator(transformer_chain(induction.model, tok, **kw)).run()
    sub = Propagator(transformer_chain(induction.model, tok, units="first:5", **kw)).run()
    for name, e in sub.sites.items():
        f = full.sites[name]
        if e.site.kind == "resid":
            pick = torch.tensor([p * 32 + u for p in range(4) for u in range(5)])
            fm, fv = f.mean[pick], f.masked.var[pick]
        else:
            fm, fv = f.mean, f.masked.var
        torch.testing.assert_close(e.mean, fm, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(e.masked.var, fv, rtol=1e-6, atol=1e-8)


def test_sae_firing_subset():
    lm = load_model("maxk", "cpu")
    sae = load_sae("zoo", lm, "cpu")
    ch = chain_for_zoo(lm, sae=sae, n_inputs=32, samples=8, seed=0, units="firing:3")
    s = [s for s in ch.sites if s.kind == "sae"][0]
    assert s.n_units == 3 and ch.info["units"]["sae"] == "firing:3"
    with pytest.raises(ValueError, match="needs an SAE"):
        chain_for_zoo(lm, n_inputs=8, samples=4, units="firing:3")


# ------------------------------------------------------------------------- distances

def test_ledoit_wolf_matches_direct_formula():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 1] *= 3
    n, d = x.shape
    c = x - x.mean(0)
    S = sum(torch.outer(r, r) for r in c) / n
    mu = torch.trace(S) / d
    eye = torch.eye(d, dtype=x.dtype)
    norm2 = lambda a: float((a * a).sum()) / d  # LW's ‖A‖² = tr(AAᵀ)/d
    d2 = norm2(S - mu * eye)
    b2 = min(sum(norm2(torch.outer(r, r) - S) for r in c) / n ** 2, d2)
    delta = b2 / d2
    mean, cov, got = ledoit_wolf(x)
    assert got == pytest.approx(delta, rel=1e-12)
    torch.testing.assert_close(cov, delta * mu * eye + (1 - delta) * S)
    torch.testing.assert_close(mean, x.mean(0))
    assert 0 < got < 1
    assert float(torch.linalg.eigvalsh(ledoit_wolf(torch.randn(5, 30, dtype=torch.float64))[1])
                 .min()) > 0  # positive definite with n < d


def test_marginal_kl_closed_form():
    mu0, v0 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 0.5, 4.0])
    mu1, v1 = torch.tensor([0.5, 1.0, 0.0]), torch.tensor([2.0, 0.5, 1.0])
    got = marginal_kl(mu0, v0, mu1, v1)
    for i in range(3):
        ref = torch.distributions.kl_divergence(
            torch.distributions.Normal(float(mu0[i]), math.sqrt(v0[i])),
            torch.distributions.Normal(float(mu1[i]), math.sqrt(v1[i])))
        assert float(got[i]) == pytest.approx(float(ref), rel=1e-6)
        one = gaussian_kl(mu0[i:i + 1].double(), v0[i].double().view(1, 1),
                          mu1[i:i + 1].double(), v1[i].double().view(1, 1))
        assert float(got[i]) == pytest.approx(float(one), rel=1e-9)


def test_shrunk_distance_is_finite_and_stated_when_n_below_d():
    g = torch.Generator().manual_seed(0)
    emp = torch.randn(10, 40, generator=g, dtype=torch.float64)
    dist = site_distance_shrunk(emp.mean(0), torch.diag(emp.var(0)), emp)
    d = dist.to_dict()
    assert d["covariance_method"] == "ledoit-wolf" and 0 < d["shrinkage"] <= 1
    assert d["kl_marginal"] == pytest.approx(0.0, abs=1e-9)  # same marginals
    assert all(math.isfinite(d[k]) for k in ("kl", "kl_est_emp", "w2"))


def test_propagator_auto_method(induction):
    ch = chain_for_zoo(induction, n_inputs=8, samples=8, seed=0, units="first:4")
    res = Propagator(ch).run()  # N = 8 < dim = 16: Ledoit–Wolf
    d = res.distances["blocks.0.hook_resid_pre"].to_dict()
    assert d["covariance_method"] == "ledoit-wolf" and "kl_marginal" in d
    res = Propagator(ch, distance_method="ridge").run()
    assert res.distances["blocks.0.hook_resid_pre"].to_dict()["covariance_method"] == "ridge"


# ------------------------------------------------------------------------- time budget

def test_size_to_budget_bounds():
    t = 2.0 ** -7  # exact in binary
    p = size_to_budget(10.0, per_sample=t, per_input=t, fixed=1.0, n_available=10_000)
    assert (p.samples, p.n_inputs) == (576, 576) and p.predicted_seconds == 10.0
    p = size_to_budget(1e6, 0.01, 0.01, 0.0, 10_000)
    assert (p.samples, p.n_inputs) == (K_BOUNDS[1], N_BOUNDS[1]) and p.limited_by == "bounds"
    p = size_to_budget(0.01, 0.01, 0.01, 1.0, 10_000)
    assert (p.samples, p.n_inputs) == (K_BOUNDS[0], N_BOUNDS[0]) and p.limited_by == "minimum"
    p = size_to_budget(10.0, t, t, 0.0, n_available=100)  # data runs out: K gets the rest
    assert p.n_inputs == 100 and p.samples == 1180 and p.limited_by == "data"
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            size_to_budget(bad, 0.01, 0.01, 0.0, 100)


def test_pilot_on_a_zoo_model(induction):
    def build(samples, n_inputs):
        return chain_for_zoo(induction, n_inputs=n_inputs, samples=samples, seed=0,
                             units="first:4")

    plan = pilot(build, lambda ch: CovarianceMask.naive(), n_available=64, budget=2.0, rows=8)
    assert K_BOUNDS[0] <= plan.samples <= K_BOUNDS[1]
    assert N_BOUNDS[0] <= plan.n_inputs <= 64
    assert plan.per_sample_seconds > 0 and plan.per_input_seconds > 0
    assert all(math.isfinite(v) for v in plan.to_dict().values() if isinstance(v, float))


# ------------------------------------------------------------------------- CLI

def test_cli_units_and_budget(capsys):
    code = main(["propagate", "--model", "induction", "--units", "first:4", "--time-budget",
                 "1", "--json"])
    out, _ = capsys.readouterr()
    assert code == 0
    d = json.loads(out)
    assert d["chain"]["info"]["units"]["resid"] == "first:4"
    assert d["sites"][0]["dim"] == 4 * len(d["chain"]["info"]["positions"])
    assert {"samples", "n_inputs", "predicted_seconds", "run_seconds"} <= set(d["budget"])
    assert d["chain"]["info"]["samples"] == d["budget"]["samples"]
    assert d["distance_method"] == "auto"
    assert all("covariance_method" in s for s in d["sites"])
    for argv, msg in ((["--units", "first:0"], "at least 1"),
                      (["--units", "firing:3"], "needs an SAE"),
                      (["--time-budget", "-1"], "time-budget")):
        code = main(["propagate", "--model", "induction", "--samples", "4", "--n-inputs", "4",
                     *argv])
        _, err = capsys.readouterr()
        assert code == 2 and msg in err and "Traceback" not in err
