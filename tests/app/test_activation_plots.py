"""The Activation model page's plot builders put the right numbers in the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.plots.activation import (GRID_TRACES, correlation_heatmap, distance_by_layer,
                                  grid_states, mask_grid, search_path)


def _random_mask(n, seed=0, p=0.3):
    rng = np.random.default_rng(seed)
    m = rng.random((n, n)) < p
    m = np.triu(m, 1)
    m = m | m.T
    np.fill_diagonal(m, True)
    return m


def test_correlation_heatmap_holds_the_matrix_rdbu_centred():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    corr = np.corrcoef(x, rowvar=False)
    labels = [f"u{i}" for i in range(6)]
    fig = correlation_heatmap(corr, labels, "t")
    hm = fig.data[0]
    np.testing.assert_array_equal(np.asarray(hm.z, dtype=float), corr)
    assert hm.zmid == 0 and hm.zmin == -1 and hm.zmax == 1
    assert list(hm.x) == labels and list(hm.y) == labels
    # RdBu starts at red; reversed, so +1 is red and -1 blue
    names = [c[1] for c in hm.colorscale]
    assert names[0].replace(" ", "") == "rgb(103,0,31)"  # RdBu's red end…
    assert hm.reversescale  # …reversed, so +1 is red


@pytest.mark.parametrize("n", [1, 5, 12])
def test_mask_grid_marker_states_equal_the_mask(n):
    m = _random_mask(n, seed=n)
    flat = [3 * i + 1 for i in range(n)]  # a view: flat indices need not be 0..n-1
    labels = [f"p{i}·u0" for i in range(n)]
    corr = np.eye(n)
    fig = mask_grid(m, labels, flat, corr)
    assert [t.name for t in fig.data] == list(GRID_TRACES)
    states = grid_states(fig)
    assert len(states) == n * n
    for a in range(n):
        for b in range(n):
            want = "diagonal" if a == b else ("on" if m[a, b] else "off")
            assert states[(flat[a], flat[b])] == want
    # symmetric: (i, j) on iff (j, i) on
    assert all(states[(j, i)] == s for (i, j), s in states.items())
    # each marker sits at its row/column labels
    for tr in fig.data:
        for x, y, cd in zip(tr.x, tr.y, tr.customdata):
            assert x == labels[flat.index(cd[1])] and y == labels[flat.index(cd[0])]


def test_mask_grid_rejects_inconsistent_shapes():
    with pytest.raises(ValueError):
        mask_grid(np.eye(3, dtype=bool), ["a", "b"], [0, 1, 2])


def test_distance_by_layer_plots_each_distance():
    sites = ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "logits@-1"]
    rows = [{"kl_emp_est": 0.0, "kl_est_emp": 0.0, "w2": 0.0, "mean_error": 0.0,
             "var_error": 0.0},
            {"kl_emp_est": 1.5, "kl_est_emp": 2.5, "w2": 0.3, "mean_error": 0.01,
             "var_error": 0.2},
            {"kl_emp_est": 7.0, "kl_est_emp": math.inf, "w2": 4.0, "mean_error": 0.1,
             "var_error": 0.5}]
    fig = distance_by_layer(sites, rows)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["KL(real ‖ est) nats"].y) == [None, 1.5, 7.0]  # 0 off the log axis
    assert list(by_name["KL(est ‖ real) nats"].y) == [None, 2.5, None]  # inf left out
    assert list(by_name["W2"].y) == [None, 0.3, 4.0]
    assert list(by_name["mean error (rel.)"].y) == [None, 0.01, 0.1]
    assert list(by_name["var error (rel.)"].y) == [None, 0.2, 0.5]
    assert list(by_name["W2"].x) == sites
    assert fig.layout.yaxis.type == "log"


def test_search_path_plots_the_three_terms():
    path = [{"step": 0, "argument_bits": 0.0, "data_bits": 100.0, "total_bits": 100.0},
            {"step": 1, "argument_bits": 12.5, "data_bits": 80.0, "total_bits": 92.5}]
    fig = search_path(path)
    ys = {t.name: list(t.y) for t in fig.data}
    assert ys == {"S(π) argument": [0.0, 12.5], "S(Y|π) data": [100.0, 80.0],
                  "total": [100.0, 92.5]}
    assert list(fig.data[0].x) == [0, 1]


def test_grid_from_a_real_propagator_matches_its_dense_mask():
    """The page's grid for a view of a real chain shows exactly the propagator's mask."""
    from app import activation as glue
    from tests.app.test_activation_page import tiny_chain
    from estimators.activation import Propagator

    chain = tiny_chain()
    prop = Propagator(chain)
    site = chain.sites[1]
    glue.toggle_entries(prop, site.name, [(0, 5), (2, 3)])
    idx = glue.view_indices(site, list(site.positions), list(site.units[:4]))
    dense = prop.dense_mask(site.name)
    fig = mask_grid(glue.submatrix(dense, idx).numpy(), [site.label(i) for i in idx], idx)
    states = grid_states(fig)
    for a in idx:
        for b in idx:
            want = "diagonal" if a == b else ("on" if bool(dense[a, b]) else "off")
            assert states[(a, b)] == want
    n_units = site.n_units
    assert states[(0, 2)] == "off" and states[(2, 3)] == "on"
    on = {(i, j) for (i, j), s in states.items() if s == "on"}
    assert ((0, 5) in on) == (5 in idx) and ((5, 0) in on) == (5 in idx)
    assert idx == [p * n_units + u for p in range(site.n_positions) for u in range(4)]
    assert torch.equal(dense, dense.T)
