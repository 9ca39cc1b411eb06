"""The engine's θ writer: exact θ draws and likelihoods from recorded τ and group means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc._memory import store_array
from bayeshier_pymc.gibbs.theta_writer import ThetaWriter
from bayeshier_pymc.model import group_mean_name

CHAINS, DRAWS = 2, 3000
KS_LEVEL = 1e-3
"""p-value below which a KS test rejects (fixed seeds, a handful of tests)."""


@pytest.fixture(scope="module", params=[0, 1])
def model(request) -> bh.ShrinkageModel:
    data = bh.simulate(n=40, m=12, p=2, proportions=(0.5, 0.5), n_superclasses=1, random_seed=3)
    fit = bh.mlm(data.Y, data.X, x_intercept=False)
    tree = bh.Hierarchy.from_frame(data.annotations, ["subclass"])
    return bh.ShrinkageModel(fit, tree, depth=request.param)


def _stores(model: bh.ShrinkageModel, dtype=np.float32) -> dict[str, np.ndarray]:
    """Posterior stores whose τ and group means are fixed draws of a random state."""
    rng = np.random.default_rng(4)
    n_covariates, n_features = model.estimates.estimate.shape
    lead = (CHAINS, DRAWS, n_covariates)
    stores = {
        "theta": store_array((*lead, n_features), dtype),
        "tau": np.broadcast_to(rng.uniform(0.05, 0.4, (1, 1, n_covariates, 1)), (*lead, 1)).copy(),
        "mu": np.broadcast_to(rng.normal(size=(1, 1, n_covariates)), lead).copy(),
    }
    if model.depth:
        level = model.tree.levels[0]
        n_groups = model.tree.n_groups[0]
        means = rng.normal(size=(1, 1, n_covariates, n_groups))
        stores[group_mean_name(level)] = np.broadcast_to(means, (*lead, n_groups)).copy()
    return stores


def _parent_mean(model: bh.ShrinkageModel, stores: dict[str, np.ndarray]) -> np.ndarray:
    """The mean of each θ's parent, (covariate, feature), from the first draw."""
    if not model.depth:
        return stores["mu"][0, 0][:, None]
    means = stores[group_mean_name(model.tree.levels[0])][0, 0]
    return means[:, model.tree.parents[0]]


def _write_all(model, stores, log_likelihood, *, background: bool, seed: int = 1) -> np.ndarray:
    writer = ThetaWriter(model, np.random.SeedSequence(seed), stores, log_likelihood, background)
    try:
        for draw in range(DRAWS):
            writer.recorded(draw)
        return writer.finish()
    finally:
        writer.close()


def test_theta_draws_follow_their_exact_conditional(model):
    """θ_j | b, τ_w, parent ~ N(p + w (b_j - p), w s_j²), w = τ_w² / (τ_w² + s_j²)."""
    stores = _stores(model)
    log_likelihood = store_array(stores["theta"].shape, np.float32)
    _write_all(model, stores, log_likelihood, background=True)
    b = model.estimates.estimate.to_numpy()
    var_b = model.estimates.se.to_numpy() ** 2
    tau_sq = stores["tau"][0, 0, :, :1] ** 2
    parent = _parent_mean(model, stores)
    weight = tau_sq / (tau_sq + var_b)
    mean, sd = parent + weight * (b - parent), np.sqrt(weight * var_b)
    theta = stores["theta"].reshape(-1, *b.shape)
    p_values = [
        stats.kstest(theta[:, k, j], stats.norm(mean[k, j], sd[k, j]).cdf).pvalue
        for k in range(b.shape[0])
        for j in (0, b.shape[1] - 1)
    ]
    assert min(p_values) > KS_LEVEL / len(p_values)


def test_log_likelihoods_match_scipy(model):
    stores = _stores(model, dtype=np.float64)
    log_likelihood = store_array(stores["theta"].shape)
    totals = _write_all(model, stores, log_likelihood, background=False)
    b = model.estimates.estimate.to_numpy()
    se = model.estimates.se.to_numpy()
    tau_w = stores["tau"][..., :1]
    marginal = stats.norm(_parent_mean(model, stores), np.sqrt(se**2 + tau_w**2)).logpdf(b)
    np.testing.assert_allclose(log_likelihood, marginal, rtol=1e-12)
    conditional = stats.norm(stores["theta"], se).logpdf(b).sum(axis=(2, 3))
    np.testing.assert_allclose(totals, conditional, rtol=1e-10)  # sums reordered


def test_same_draws_with_and_without_the_thread(model):
    runs = []
    for background in (False, True):
        stores = _stores(model)
        log_likelihood = store_array(stores["theta"].shape, np.float32)
        totals = _write_all(model, stores, log_likelihood, background=background)
        runs.append((stores["theta"], log_likelihood, totals))
    for alone, threaded in zip(*runs, strict=True):
        np.testing.assert_array_equal(alone, threaded)


def test_the_thread_alone_writes_every_draw_and_stops(model):
    """When the thread keeps up with the sweeps, finishing claims nothing and waits for it."""
    stores, alone = _stores(model), _stores(model)
    log_likelihood = store_array(stores["theta"].shape, np.float32)
    expected = _write_all(
        model, alone, store_array(stores["theta"].shape, np.float32), background=False
    )
    writer = ThetaWriter(model, np.random.SeedSequence(1), stores, log_likelihood, True)
    try:
        for draw in range(DRAWS):
            writer.recorded(draw)
        writer._done.result(timeout=60)  # the thread ends by itself after the last draw
        np.testing.assert_array_equal(writer.finish(), expected)
    finally:
        writer.close()
    np.testing.assert_array_equal(stores["theta"], alone["theta"])


def test_close_stops_a_thread_left_waiting(model):
    """After an error in the sweeps the engine closes the writer without finishing it."""
    stores, complete = _stores(model), _stores(model)
    _write_all(model, complete, store_array(complete["theta"].shape), background=False, seed=2)
    writer = ThetaWriter(
        model, np.random.SeedSequence(2), stores, store_array(stores["theta"].shape), True
    )
    writer.recorded(0)
    writer.close()  # returns although draws 1.. never come; draw 0 was written first
    np.testing.assert_array_equal(stores["theta"][:, 0], complete["theta"][:, 0])


def test_a_model_without_pooling_is_refused():
    data = bh.simulate(n=30, m=6, p=1, random_seed=1)
    model = bh.ShrinkageModel(bh.mlm(data.Y, data.X, x_intercept=False), depth="none")
    assert model.tree is None
    with pytest.raises(ValueError, match="without pooling"):
        ThetaWriter(model, np.random.SeedSequence(0), {}, np.empty(0), False)


def test_store_arrays_are_zeroed_writable_and_contiguous():
    array = store_array((3, 4, 5), np.float32)
    assert array.dtype == np.float32 and array.shape == (3, 4, 5)
    assert array.flags.c_contiguous and array.flags.writeable
    assert not array.any()
    array[1, 2] = 7.0
    assert array.sum() == 35.0
    assert store_array((0, 4)).shape == (0, 4)
