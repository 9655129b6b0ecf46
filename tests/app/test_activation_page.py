"""The Activation model page: AppTests on the default zoo model (numbers checked against the
library run with the same settings), and the page glue on a tiny real transformer."""

from __future__ import annotations

import functools

import pytest
import torch

from app import activation as glue
from app import state
from estimators import zoo
from estimators.activation import CovarianceMask, Propagator, chain_for_zoo, transformer_chain
from estimators.loading import load_model
from tests.app.conftest import assert_no_exception, link_param, open_page

# The page's defaults on the default model (asserted below): N = 64 real inputs, K = 128
# samples per step, seed 0, the last 4 positions (4 × d_model 32 = 128 units per site).
N_INPUTS, SAMPLES, SEED = 64, 128, 0
EDIT_SITE = "blocks.0.hook_resid_post"  # the page's default site to edit


# ============================================================================ helpers
def tiny_chain():
    """A real (random-weight) 2-layer HookedTransformer chain, small enough for glue tests."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, n_heads=2,
                                  d_vocab=10, attn_only=True, normalization_type="LN",
                                  device="cpu", seed=0)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 10, (48, 4), generator=g)
    return transformer_chain(model, tokens, positions=[2, 3], samples=32, seed=0)


@functools.lru_cache(maxsize=1)
def library():
    """The default model's chain built directly with the library, with the page's defaults."""
    lm = load_model(zoo.DEFAULT_MODEL, "cpu")
    ctx = lm.zoo_entry.sample(1, seed=0).tokens.shape[1]
    positions = list(range(ctx - 128 // lm.model.cfg.d_model, ctx))
    chain = chain_for_zoo(lm, n_inputs=N_INPUTS, samples=SAMPLES, seed=SEED,
                          positions=positions)
    return lm, positions, chain


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def shown(res) -> dict[str, str]:
    s = res.surprise
    return {"S(π) argument": f"{s.argument_bits:,.3f} bits",
            "S(Y|π) data": f"{s.data_bits:,.3f} bits",
            "Total": f"{s.total_bits:,.3f} bits"}


def assert_surprise(at, res):
    m = metrics(at)
    for k, v in shown(res).items():
        assert m[k] == v, (k, m[k], v)


def url_mask(at):
    raw = at.query_params.get("mask") if hasattr(at.query_params, "get") else None
    if raw is None:
        return None
    if isinstance(raw, list):
        raw = raw[0]
    return state.decode_blob(raw)


# ============================================================================ glue (fast)
def test_settings_round_trip_and_validation():
    s = glue.Settings((1, 3), ("blocks.0.hook_resid_pre", "logits@-1"), 32, 64, 5, "")
    assert glue.Settings.from_dict(s.to_dict()) == s
    for bad in ({"positions": []}, {"positions": [1, 1]}, {"positions": [0], "n_inputs": 1},
                {"positions": [0], "samples": 10 ** 9}, {"positions": ["a"]}, {}, [1]):
        with pytest.raises(ValueError):
            glue.Settings.from_dict(bad)


def test_parse_entries():
    assert glue.parse_entries("0,1; 2 5\n(3, 4)") == [(0, 1), (2, 5), (3, 4)]
    for bad in ("0", "a,b", "1,2,3"):
        with pytest.raises(ValueError):
            glue.parse_entries(bad)


def test_toggle_entries_equals_library_toggle_and_rejects_bad_entries():
    chain = tiny_chain()
    site = chain.sites[1].name
    a, b = Propagator(chain), Propagator(chain)
    glue.toggle_entries(a, site, [(0, 3)])
    ra, rb = a.run(), b.toggle(site, 0, 3)
    assert ra.surprise.to_dict() == rb.surprise.to_dict()
    assert a.mask.to_dict() == b.mask.to_dict()
    assert bool(a.dense_mask(site)[3, 0]) and bool(a.dense_mask(site)[0, 3])
    glue.toggle_entries(a, site, [(3, 0)])  # symmetric: (3, 0) is the same entry
    assert a.mask.sites == {}
    before = a.mask.to_dict()
    for bad in ([(0, 0)], [(0, 99)], [(0, 1), (-1, 2)]):
        with pytest.raises(ValueError):
            glue.toggle_entries(a, site, bad)
        assert a.mask.to_dict() == before  # nothing changed


def test_presets_match_library_masks():
    chain = tiny_chain()
    prop = Propagator(chain)
    names = [s.name for s in chain.sites]
    glue.apply_preset(prop, names, "top-k", k=5, group_size=4, combine=False)
    assert prop.mask.to_dict() == CovarianceMask.preset("topk", chain.layouts, k=5).to_dict()
    glue.apply_preset(prop, names, "full", k=0, group_size=4, combine=False)
    assert prop.mask.to_dict() == CovarianceMask.preset("full", chain.layouts).to_dict()
    glue.apply_preset(prop, names, "naive", k=0, group_size=4, combine=False)
    assert prop.mask.sites == {}
    site = chain.sites[1]
    glue.apply_preset(prop, [site.name], "blocks by unit group", k=0, group_size=4,
                      combine=False)
    dense = prop.dense_mask(site.name)
    groups = (torch.arange(site.dim) % site.n_units) // 4
    assert torch.equal(dense, groups[:, None] == groups[None, :])
    glue.apply_preset(prop, [site.name], "blocks by position", k=0, group_size=4, combine=True)
    pos = torch.arange(site.dim) // site.n_units
    assert torch.equal(prop.dense_mask(site.name), (groups[:, None] == groups[None, :])
                       | (pos[:, None] == pos[None, :]))


def test_read_explanation_rejects_malformed_files():
    for data in (b"not json", b"{}", state.explanation_bytes("partition", {}),
                 state.explanation_bytes("covariance-mask", {"sites": {"x": {"units": -1}}}),
                 state.explanation_bytes("covariance-mask", {"sites": {}},
                                         {"settings": {"positions": [0, 0]}})):
        with pytest.raises(ValueError):
            glue.read_explanation(data)
    m, s, b = glue.read_explanation(state.explanation_bytes(
        "covariance-mask", {"sites": {}}, {"settings": {"positions": [2, 3]},
                                           "bits_per_parameter": 2.5}))
    assert m.sites == {} and s.positions == (2, 3) and b == 2.5


# ============================================================================ AppTests
def test_page_loads_and_shows_the_library_numbers():
    lm, positions, chain = library()
    assert glue.default_settings(lm) == glue.Settings(tuple(positions), None, N_INPUTS,
                                                      SAMPLES, SEED)
    at = open_page("activation.py")
    assert_no_exception(at)
    assert at.title[0].value == "Activation model"
    res = Propagator(chain).run()
    assert_surprise(at, res)
    assert metrics(at)["S(π) argument"] == "0.000 bits"  # the naive argument costs nothing
    assert res.surprise.argument_bits == 0.0
    assert url_mask(at) is None
    assert not at.error


def test_toggling_one_entry_gives_the_library_surprise():
    _, _, chain = library()
    at = open_page("activation.py")
    assert at.selectbox(key="_act_site").value == EDIT_SITE
    at.text_input(key="_act_entries").set_value("0,1").run()
    assert_no_exception(at)
    prop = Propagator(chain)
    prop.run()
    res = prop.toggle(EDIT_SITE, 0, 1)
    assert_surprise(at, res)
    assert res.surprise.argument_bits > 0
    assert url_mask(at) == prop.mask.to_dict()
    # only what follows the edited site was recomputed, and the page says so
    cap = next(c.value for c in at.caption if c.value.startswith("Last change"))
    assert f"re-propagated {len(res.recomputed)} site(s)" in cap
    assert ", ".join(res.recomputed) in cap
    assert "blocks.0.hook_resid_pre" not in res.recomputed
    # toggling it back returns to the naive argument and its numbers
    at.text_input(key="_act_entries").set_value("1,0").run()
    assert_surprise(at, Propagator(chain).run())
    assert url_mask(at) is None
    # another model starts from the naive argument, with that model's library numbers
    at.text_input(key="_act_entries").set_value("0,1").run()
    at.sidebar.selectbox(key="_model_choice").set_value("maxk").run()
    assert_no_exception(at)
    maxk = load_model("maxk", "cpu")
    ctx = maxk.zoo_entry.sample(1, seed=0).tokens.shape[1]
    positions = list(range(max(0, ctx - 128 // maxk.model.cfg.d_model), ctx))
    assert at.multiselect(key="_act_positions").value == positions
    other = chain_for_zoo(maxk, n_inputs=N_INPUTS, samples=SAMPLES, seed=SEED,
                          positions=positions)
    assert_surprise(at, Propagator(other).run())
    assert url_mask(at) is None


def test_malformed_mask_in_link_is_reported_and_naive_kept():
    _, _, chain = library()
    naive = Propagator(chain).run()
    at = open_page("activation.py", query={"mask": "!!not-a-blob"})
    assert_no_exception(at)
    assert any("argument" in e.value for e in at.error)
    assert at.title[0].value == "Activation model"
    assert_surprise(at, naive)
    # well-formed JSON of the wrong shape for this chain: reported too
    wrong = {"format": "covariance-mask/1",
             "sites": {EDIT_SITE: {"positions": 2, "units": 3, "on": [[0, 1]]}}}
    at = open_page("activation.py", query={"mask": state.encode_blob(wrong)})
    assert_no_exception(at)
    assert any("shape" in e.value for e in at.error)
    assert_surprise(at, naive)


def test_link_and_upload_set_the_argument_and_bad_files_keep_it():
    lm, positions, chain = library()
    good = CovarianceMask.naive().with_site(
        "logits@-1", CovarianceMask.preset("full", chain.layouts).sites["logits@-1"])
    at = open_page("activation.py", query={"mask": state.encode_blob(good.to_dict())})
    assert_no_exception(at)
    res = Propagator(chain, good).run()
    assert_surprise(at, res)
    # a malformed file: reported, the argument kept
    at.file_uploader(key="_act_upload").set_value(("bad.json", b"{nope", "application/json"))
    at.run()
    assert_no_exception(at)
    assert any("bad.json" in e.value for e in at.error)
    assert_surprise(at, res)
    assert url_mask(at) == good.to_dict()
    # a file for a chain of another shape: reported, kept
    other = {"format": "covariance-mask/1",
             "sites": {EDIT_SITE: {"positions": 1, "units": 32, "on": [[0, 1]]}}}
    at.file_uploader(key="_act_upload").set_value(
        ("other.json", state.explanation_bytes("covariance-mask", other), "application/json"))
    at.run()
    assert any("other.json" in e.value for e in at.error)
    assert_surprise(at, res)
    # a good file (the library's own argument): applied, with its bits per parameter
    topk = CovarianceMask.preset("topk", chain.layouts, k=16)  # breaks PSD at the input site
    data = state.explanation_bytes("covariance-mask", topk.to_dict(),
                                   {"bits_per_parameter": 2.0})
    at.file_uploader(key="_act_upload").set_value(("good.json", data, "application/json"))
    at.run()
    assert_no_exception(at)
    res2 = Propagator(chain, topk, bits_per_parameter=2.0).run()
    assert_surprise(at, res2)
    assert metrics(at)["Bits per tracked covariance"] == "2.000"
    assert url_mask(at) == topk.to_dict()
    # PSD repair is reported exactly when the library repairs
    warned = [w.value for w in at.warning if "positive semi-definite" in w.value]
    if res2.repaired_sites:
        assert warned and all(f"`{s}`" in warned[0] for s in res2.repaired_sites)
    else:
        assert not warned


def test_greedy_search_shows_the_library_path_and_keeps_its_argument():
    from estimators.activation import greedy_search

    _, _, chain = library()
    at = open_page("activation.py")
    at.number_input(key="_act_search_steps").set_value(1)
    at.number_input(key="_act_search_cands").set_value(2)
    at.button[[b.label for b in at.button].index("Find a better argument")].click().run()
    assert_no_exception(at)
    prop = Propagator(chain)
    out = greedy_search(prop, max_steps=1, candidates_per_site=2)
    frame = at.dataframe[-1].value
    assert list(frame["step"]) == [p["step"] for p in out.path]
    assert list(frame["total_bits"]) == pytest.approx([p["total_bits"] for p in out.path],
                                                      rel=1e-12)
    assert list(frame["added"].fillna("")) == [p["added"] or "" for p in out.path]
    # the page now holds the argument the search found
    assert_surprise(at, prop.run())
    assert (url_mask(at) or {"format": "covariance-mask/1", "sites": {}}) == out.mask.to_dict()


def test_sae_site_shows_reconstruction_error_and_library_numbers():
    from estimators.loading import load_sae

    lm, positions, _ = library()
    sae = load_sae("zoo", lm, "cpu")
    chain = chain_for_zoo(lm, sae=sae, n_inputs=N_INPUTS, samples=SAMPLES, seed=SEED,
                          positions=positions)
    at = open_page("activation.py", query={"sae": "zoo"})
    assert_no_exception(at)
    info = chain.info["sae"]
    panel = next(i.value for i in at.info if "reconstruction error" in i.value)
    assert f"{info['fraction_variance_unexplained']:.4f}" in panel
    assert f"{info['reconstruction_mse']:.4g}" in panel
    assert f"sae:{info['hook']}" in panel
    assert any(o.startswith(f"sae:{info['hook']} (") for o in at.selectbox(key="_act_site").options)
    assert_surprise(at, Propagator(chain).run())


def test_settings_apply_and_round_trip_through_the_link():
    lm, _, _ = library()
    at = open_page("activation.py")
    at.multiselect(key="_act_positions").set_value([])
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert any("at least one position" in e.value for e in at.error)  # bad input: kept
    at.multiselect(key="_act_positions").set_value([30, 31])
    at.number_input(key="_act_k").set_value(64)
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert_no_exception(at)
    chain = chain_for_zoo(lm, n_inputs=N_INPUTS, samples=64, seed=SEED, positions=[30, 31])
    prop = Propagator(chain)
    prop.run()
    res = prop.toggle(EDIT_SITE, 1, 40)
    at.text_input(key="_act_entries").set_value("1,40").run()
    assert_surprise(at, res)
    act, mask = link_param(at, "act"), link_param(at, "mask")
    assert state.decode_blob(act)["positions"] == [30, 31]
    again = open_page("activation.py", query={"act": act, "mask": mask})  # the shared link
    assert_no_exception(again)
    assert_surprise(again, res)
    assert again.multiselect(key="_act_positions").value == [30, 31]


def test_build_chain_refuses_sizes_that_do_not_fit(monkeypatch):
    lm, _, _ = library()
    with pytest.raises(ValueError, match="outside the context"):
        glue.build_chain(lm, None, glue.Settings((99,)))
    monkeypatch.setattr(glue, "MAX_SITE_DIM", 512)  # 32 positions × d_model 32 = 1024
    with pytest.raises(ValueError, match="variables per site"):
        glue.build_chain(lm, None, glue.Settings(tuple(range(32))))
    monkeypatch.setattr(glue, "MAX_BYTES", 2 ** 20)
    with pytest.raises(ValueError, match="GiB"):
        glue.build_chain(lm, None, glue.Settings((31,)))


def test_checkpoint_model_with_a_users_token_list(tmp_path):
    """A model outside the zoo (a saved checkpoint with MLPs): the user's token ids are the
    input distribution; MLP hidden sites can be added; numbers equal the library's."""
    from estimators.loading import load_checkpoint, save_checkpoint
    from tests.test_loading import tiny_model

    folder = save_checkpoint(tiny_model(), tmp_path / "ckpt")
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (20, 6), generator=g)
    text = "\n".join(" ".join(str(int(t)) for t in row) for row in tokens)
    at = open_page("activation.py", query={"model": str(folder)})
    assert_no_exception(at)
    at.text_area(key="_act_tokens").set_value(text)
    at.multiselect(key="_act_positions").set_value([4, 5])
    sites = ["blocks.0.hook_resid_pre", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_post",
             "logits@-1"]
    at.multiselect(key="_act_sites").set_value(sites)
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert_no_exception(at)
    assert not at.error, [e.value for e in at.error]
    model = load_checkpoint(folder, "cpu")
    chain = transformer_chain(model, tokens, sites=sites, positions=[4, 5], samples=SAMPLES,
                              seed=SEED, logits_position=-1)
    assert_surprise(at, Propagator(chain).run())
    # a malformed token list is reported and the working chain kept
    at.text_area(key="_act_tokens").set_value("1 2 3\n4 x 6")
    at.button[[b.label for b in at.button].index("Apply")].click().run()
    assert_no_exception(at)
    assert any("integers" in e.value for e in at.error)
    assert_surprise(at, Propagator(chain).run())
