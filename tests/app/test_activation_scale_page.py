"""The Activation model page at scale (issue #11 item 3): the Units and Time budget settings,
the distance table's method, marginal KL and shrinkage columns, their links and files, and the
same numbers as `python -m estimators propagate --units ...` on the same settings."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from app import activation as glue
from app import state
from estimators.activation import CovarianceMask, Propagator, chain_for_zoo
from estimators.cli import main
from estimators.loading import load_model
from tests.app.conftest import assert_no_exception, open_page

torch.set_num_threads(1)
N_SMALL = 24  # below the 4 × 8 = 32 dimensions of an 8-unit site: Ledoit–Wolf distances


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HEW_CACHE_DIR", str(tmp_path / "cache"))


_KIND = {"_act_n": "number_input", "_act_unit_count": "number_input",
         "_act_budget": "number_input", "_act_budget_on": "checkbox", "_act_units": "selectbox"}


def _apply(at, **widgets):
    """Set the settings form's widgets and press Apply."""
    for key, value in widgets.items():
        getattr(at, _KIND[key])(key=key).set_value(value)
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert_no_exception(at)
    return at


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _surprise_text(res) -> dict[str, str]:
    s = res.surprise
    return {"S(π) argument": f"{s.argument_bits:,.3f} bits",
            "S(Y|π) data": f"{s.data_bits:,.3f} bits", "Total": f"{s.total_bits:,.3f} bits"}


def _distance_frame(at):
    return next(d.value for d in at.dataframe if "marginal KL (nats/unit)" in d.value.columns)


def _query(at, key):
    v = at.query_params.get(key)
    return v[0] if isinstance(v, list) else v


# ============================================================================ glue (fast)
def test_unit_settings_round_trip_and_clamp_messages():
    lm = load_model("induction", "cpu")
    s = glue.Settings((28, 29, 30, 31), None, 32, 64, 1, "", "first", 8, 2.5)
    assert glue.Settings.from_dict(s.to_dict()) == s
    assert glue.unit_spec(lm, s) == "first:8"
    assert glue.unit_spec(lm, glue.Settings((31,))) is None  # auto: every unit of width 32
    assert glue.Settings((31,), units="all", unit_count=5).unit_count == 0  # no count
    d = {**s.to_dict(), "unit_count": 999, "time_budget": 1e6}
    got, notes = glue.settings_from_untrusted(d, lm)
    assert got.unit_count == 32 and got.time_budget == 3600.0
    assert sorted(notes) == ["time_budget = 1e+06 is outside [0.5, 3600]; using 3600",
                             "unit_count = 999 is outside [1, 32]; using 32"]
    for bad in ({**s.to_dict(), "units": "most"}, {**s.to_dict(), "unit_count": "8"},
                {**s.to_dict(), "time_budget": "fast"}, {**s.to_dict(), "time_budget": True}):
        with pytest.raises(ValueError):
            glue.settings_from_untrusted(bad, lm)
    with pytest.raises(ValueError, match="at least 1"):
        glue.Settings((31,), units="first", unit_count=0)


# ============================================================================ AppTests
def test_units_first_8_equal_the_cli_numbers(capsys):
    at = open_page("activation.py")
    _apply(at, _act_units="first", _act_unit_count=8, _act_n=N_SMALL)
    assert not at.error, [e.value for e in at.error]
    caption = next(c.value for c in at.caption if c.value.startswith("**Units:**"))
    assert "8 of 32 units" in caption and "units 0–7" in caption
    assert "held at the real activations" in caption
    assert main(["propagate", "--model", "induction", "--units", "first:8", "--n-inputs",
                 str(N_SMALL), "--samples", str(glue.DEFAULT_SAMPLES), "--json"]) == 0
    cli = json.loads(capsys.readouterr()[0])
    m = _metrics(at)
    s = cli["surprise"]
    assert m["S(π) argument"] == f"{s['argument_bits']:,.3f} bits"
    assert m["S(Y|π) data"] == f"{s['data_bits']:,.3f} bits"
    assert m["Total"] == f"{s['total_bits']:,.3f} bits"
    frame = _distance_frame(at)
    sites = {d["name"]: d for d in cli["sites"]}
    assert list(frame["site"]) == [n for n in sites if "kl_emp_est" in sites[n]]
    for _, row in frame.iterrows():
        c = sites[row["site"]]
        assert row["dim (positions × units)"] == c["dim"]
        if row["site"].startswith("blocks."):
            assert c["dim"] == 4 * 8  # 4 positions × the first 8 units
        assert row["KL(real‖est) (nats)"] == pytest.approx(c["kl_emp_est"], rel=1e-9)
        assert row["marginal KL (nats/unit)"] == pytest.approx(c["kl_marginal"], rel=1e-9)
        assert row["covariance method"].startswith(
            {"ridge": "ridge", "ledoit-wolf": "Ledoit–Wolf"}[c["covariance_method"]])
        if c["covariance_method"] == "ledoit-wolf":
            assert row["shrinkage δ (0–1)"] == pytest.approx(c["shrinkage"], rel=1e-9)
        else:
            assert row["shrinkage δ (0–1)"] is None or math.isnan(row["shrinkage δ (0–1)"])
    assert "ledoit-wolf" in {c.get("covariance_method") for c in cli["sites"]}
    # the link holds the units, and the file the page offers is one the CLI reads
    act = state.decode_blob(_query(at, "act"))
    assert (act["units"], act["unit_count"]) == ("first", 8)


def test_time_budget_states_the_chosen_k_and_n():
    lm = load_model("induction", "cpu")
    at = open_page("activation.py")
    _apply(at, _act_units="first", _act_unit_count=4, _act_budget_on=True, _act_budget=1.0)
    assert not at.error, [e.value for e in at.error]
    text = next(i.value for i in at.info if i.value.startswith("**Time budget"))
    k = int(re.search(r"K = (\d+)", text).group(1))
    n = int(re.search(r"N = (\d+)", text).group(1))
    assert re.search(r"predicted \*\*[\d.]+ s\*\*, actual \*\*[\d.]+ s\*\*", text)
    # the run used exactly that K and N: the library's numbers for them
    positions = list(glue.default_settings(lm).positions)
    chain = chain_for_zoo(lm, n_inputs=n, samples=k, seed=0, positions=positions,
                          units="first:4")
    assert _metrics(at) == {**_surprise_text(Propagator(chain).run()),
                            "Bits per tracked covariance": f"{0.5 * math.log2(n):.3f}"}
    act = state.decode_blob(_query(at, "act"))
    assert act["time_budget"] == 1.0  # the link re-sizes on open


def test_units_and_budget_link_round_trip_and_clamped_count():
    lm = load_model("induction", "cpu")
    s = glue.Settings(glue.default_settings(lm).positions, units="top-variance", unit_count=6,
                      n_inputs=N_SMALL)
    at = open_page("activation.py", query={"act": state.encode_blob(s.to_dict())})
    assert_no_exception(at)
    assert (at.selectbox(key="_act_units").value, at.number_input(key="_act_unit_count").value
            ) == ("top-variance", 6)
    assert not at.checkbox(key="_act_budget_on").value
    assert state.decode_blob(_query(at, "act")) == s.to_dict()
    assert any("top-variance:6" in c.value for c in at.caption)
    # an out-of-range unit count: one message, clamped to d_model
    bad = {**s.to_dict(), "units": "first", "unit_count": 999}
    at = open_page("activation.py", query={"act": state.encode_blob(bad)})
    assert_no_exception(at)
    warned = [w.value for w in at.warning if "unit_count" in w.value]
    assert warned == ["The link's activation settings: unit_count = 999 is outside [1, 32]; "
                      "using 32."]
    assert not at.error
    assert at.number_input(key="_act_unit_count").value == 32
    assert state.decode_blob(_query(at, "act"))["unit_count"] == 32


def test_cli_reads_the_pages_file_with_a_unit_subset(tmp_path, capsys):
    """The explanation file the page writes for a first:8 chain (its context: settings and
    the chain's units record) is read by `propagate --mask FILE`, which models the same units;
    the numbers equal the page's; a malformed units record is one line, exit 2."""
    lm = load_model("induction", "cpu")
    s = glue.Settings(glue.default_settings(lm).positions, units="first", unit_count=8,
                      n_inputs=N_SMALL)
    chain = glue.build_chain(lm, None, s)
    mask = CovarianceMask.preset("topk", chain.layouts, k=4)
    res = Propagator(chain, mask).run()
    context = {"model": "induction", "settings": s.to_dict(), **glue.scale_context(chain)}
    assert context["units"] == {"resid": "first:8", "sae": None}
    path = tmp_path / "page.json"
    path.write_bytes(state.explanation_bytes("covariance-mask", mask.to_dict(), context))
    assert glue.read_explanation(path.read_bytes())[1] == s  # the page reads it back
    assert main(["propagate", "--model", "induction", "--mask", str(path), "--n-inputs",
                 str(N_SMALL), "--samples", str(glue.DEFAULT_SAMPLES), "--json"]) == 0
    out = json.loads(capsys.readouterr()[0])
    assert out["chain"]["info"]["units"]["resid"] == "first:8"
    assert out["surprise"]["total_bits"] == pytest.approx(res.surprise.total_bits, rel=1e-12)
    context["units"] = {"resid": "first:0", "sae": None}
    path.write_bytes(state.explanation_bytes("covariance-mask", mask.to_dict(), context))
    assert main(["propagate", "--model", "induction", "--mask", str(path)]) == 2
    err = capsys.readouterr()[1]
    assert "at least 1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="at least 1"):
        glue.read_explanation(path.read_bytes())


def test_wide_model_gets_an_automatic_unit_subset(tmp_path):
    """A residual stream wider than AUTO_FULL_WIDTH (a 160-wide checkpoint): by default the page
    models the top-variance units that keep a site at 128 variables and says so."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from estimators.loading import save_checkpoint

    cfg = HookedTransformerConfig(n_layers=1, d_model=160, n_ctx=4, d_head=16, n_heads=2,
                                  d_vocab=11, attn_only=True, normalization_type="LN", seed=0)
    folder = save_checkpoint(HookedTransformer(cfg).eval(), tmp_path / "wide")
    at = open_page("activation.py", query={"model": str(folder)})
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="_act_units").value == "auto"
    caption = next(c.value for c in at.caption if c.value.startswith("**Units:**"))
    assert "128 of 160 units (`top-variance:128`, chosen automatically" in caption
    frame = _distance_frame(at)
    dims = dict(zip(frame["site"], frame["dim (positions × units)"]))
    assert dims["blocks.0.hook_resid_post"] == 128  # one position × 128 units
