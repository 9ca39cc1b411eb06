"""The engine's θ writer: exact θ draws and likelihoods from recorded τ and group means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.gibbs import theta_writer
from bayeshier_pymc.gibbs.theta_writer import ThetaWriter, WrittenDraws
from bayeshier_pymc.model import group_mean_name

CHAINS, DRAWS = 2, 3000
KS_LEVEL = 1e-3
"""p-value below which a KS test rejects (fixed seeds, a handful of tests)."""


@pytest.fixture(scope="module", params=[0, 1])
def model(request) -> bh.ShrinkageModel:
    data = bh.simulate(n=40, m=12, p=2, proportions=(0.5, 0.5), n_superclasses=1, random_seed=3)
    fit = bh.mlm(data.Y, data.X, x_intercept=False)
    tree = bh.Hierarchy.from_frame(data.annotations, ["subclass"])
    return bh.ShrinkageModel(fit, tree, depth=request.param, noise="independent")


def _stores(model: bh.ShrinkageModel) -> dict[str, np.ndarray]:
    """Posterior stores whose τ and group means are fixed draws of a random state."""
    rng = np.random.default_rng(4)
    n_covariates = model.estimates.estimate.shape[0]
    lead = (CHAINS, DRAWS, n_covariates)
    stores = {
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


def _write_all(model, stores, *, background: bool, seed: int = 1, dtype=np.float32) -> WrittenDraws:
    writer = ThetaWriter(model.problem, np.random.SeedSequence(seed), stores, dtype, background)
    try:
        for draw in range(DRAWS):
            writer.recorded(draw)
        return writer.finish()
    finally:
        writer.close()


def test_theta_draws_follow_their_exact_conditional(model):
    """θ_j | b, τ_w, parent ~ N(p + w (b_j - p), w s_j²), w = τ_w² / (τ_w² + s_j²)."""
    stores = _stores(model)
    written = _write_all(model, stores, background=True)
    b = model.estimates.estimate.to_numpy()
    var_b = model.estimates.se.to_numpy() ** 2
    tau_sq = stores["tau"][0, 0, :, :1] ** 2
    parent = _parent_mean(model, stores)
    weight = tau_sq / (tau_sq + var_b)
    mean, sd = parent + weight * (b - parent), np.sqrt(weight * var_b)
    theta = written.theta.reshape(-1, *b.shape)
    p_values = [
        stats.kstest(theta[:, k, j], stats.norm(mean[k, j], sd[k, j]).cdf).pvalue
        for k in range(b.shape[0])
        for j in (0, b.shape[1] - 1)
    ]
    assert min(p_values) > KS_LEVEL / len(p_values)


def test_log_likelihoods_match_scipy(model):
    stores = _stores(model)
    written = _write_all(model, stores, background=False, dtype=np.float64)
    b = model.estimates.estimate.to_numpy()
    se = model.estimates.se.to_numpy()
    tau_w = stores["tau"][..., :1]
    marginal = stats.norm(_parent_mean(model, stores), np.sqrt(se**2 + tau_w**2)).logpdf(b)
    np.testing.assert_allclose(written.log_likelihood, marginal, rtol=1e-12)
    conditional = stats.norm(written.theta, se).logpdf(b).sum(axis=(2, 3))
    np.testing.assert_allclose(written.conditional_total, conditional, rtol=1e-10)


def test_same_draws_with_and_without_the_thread(model):
    alone, threaded = (_write_all(model, _stores(model), background=b) for b in (False, True))
    for field in ("theta", "log_likelihood", "conditional_total"):
        np.testing.assert_array_equal(getattr(alone, field), getattr(threaded, field))


def test_the_thread_alone_writes_every_draw_and_stops(model):
    """When the thread keeps up with the sweeps, finishing claims nothing and waits for it."""
    expected = _write_all(model, _stores(model), background=False)
    writer = ThetaWriter(model.problem, np.random.SeedSequence(1), _stores(model), np.float32, True)
    try:
        for draw in range(DRAWS):
            writer.recorded(draw)
        writer._done.result(timeout=60)  # the thread ends by itself after the last draw
        written = writer.finish()
    finally:
        writer.close()
    np.testing.assert_array_equal(written.theta, expected.theta)
    np.testing.assert_array_equal(written.conditional_total, expected.conditional_total)


def test_finish_raises_what_stopped_the_thread(model, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("no room for the stores")

    monkeypatch.setattr(theta_writer, "store_array", no_memory)
    writer = ThetaWriter(model.problem, np.random.SeedSequence(0), _stores(model), np.float32, True)
    try:
        for draw in range(DRAWS):
            writer.recorded(draw)
        with pytest.raises(MemoryError, match="no room"):
            writer.finish()
    finally:
        writer.close()


def test_close_stops_a_thread_left_waiting(model):
    """After an error in the sweeps the engine closes the writer without finishing it."""
    complete = _write_all(model, _stores(model), background=False, seed=2)
    writer = ThetaWriter(model.problem, np.random.SeedSequence(2), _stores(model), np.float32, True)
    writer.recorded(0)
    writer.close()  # returns although draws 1.. never come; draw 0 was written first
    np.testing.assert_array_equal(writer._theta[:, 0], complete.theta[:, 0])


def test_a_model_without_pooling_is_refused():
    data = bh.simulate(n=30, m=6, p=1, random_seed=1)
    model = bh.ShrinkageModel(bh.mlm(data.Y, data.X, x_intercept=False), depth="none")
    assert model.tree is None
    with pytest.raises(ValueError, match="without pooling"):
        ThetaWriter(model.problem, np.random.SeedSequence(0), {}, np.float32, False)
