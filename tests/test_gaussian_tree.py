"""The tree algebra against dense multivariate-normal computations."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc.gaussian_tree import TreeIndex, draw_tree, upward_pass
from bayeshier_pymc.hierarchy import Hierarchy


def _tree(depth: int) -> Hierarchy:
    annotations = pd.DataFrame(
        {
            "sub": ["a", "a", "b", "b", "b", "c", "d"],
            "super": ["X", "X", "X", "X", "X", "Y", "Y"],
        },
        index=[f"f{j}" for j in range(7)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"]).truncate(depth)


def _dense_joint(tree: Hierarchy, tau: np.ndarray, mu0: float, s0: float, se: np.ndarray):
    """Prior mean and covariance of (theta0, groups..., theta), and the map to theta."""
    m = tree.n_features
    # theta = theta0 + sum over levels of the group deviations + own deviation
    loadings = [np.ones((m, 1))]
    variances = [np.array([s0**2])]
    for level in range(tree.depth - 1, -1, -1):
        membership = tree.membership(level)
        loadings.append(np.eye(tree.n_groups[level])[membership])
        variances.append(np.full(tree.n_groups[level], tau[level + 1] ** 2))
    loadings.append(np.eye(m))
    variances.append(np.full(m, tau[0] ** 2))
    L = np.hstack(loadings)
    D = np.concatenate(variances)
    cov_theta = (L * D) @ L.T
    return np.full(m, mu0), cov_theta + np.diag(se**2), cov_theta


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_log_marginal_matches_dense_mvn(depth):
    rng = np.random.default_rng(1)
    tree = _tree(depth)
    b, se = rng.normal(size=7), rng.uniform(0.2, 2.0, size=7)
    tau = rng.uniform(0.1, 1.5, size=depth + 1)
    mean, cov, _ = _dense_joint(tree, tau, 0.3, 1.7, se)
    expected = stats.multivariate_normal(mean, cov).logpdf(b)
    got = upward_pass(b, se**2, tau, TreeIndex.from_hierarchy(tree), 0.3, 1.7).log_marginal
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_log_marginal_vectorised_over_leading_dims():
    rng = np.random.default_rng(2)
    tree = _tree(2)
    b, se = rng.normal(size=(3, 7)), rng.uniform(0.2, 2.0, size=(3, 7))
    tau = rng.uniform(0.1, 1.5, size=(5, 3, 3))
    index = TreeIndex.from_hierarchy(tree)
    batched = upward_pass(b, se**2, tau, index, 0.0, 1.0).log_marginal
    assert batched.shape == (5, 3)
    single = upward_pass(b[1], se[1] ** 2, tau[4, 1], index, 0.0, 1.0).log_marginal
    np.testing.assert_allclose(batched[4, 1], single, rtol=1e-12)


@pytest.mark.parametrize("depth", [0, 2])
def test_exact_draws_match_dense_conditional(depth):
    rng = np.random.default_rng(3)
    tree = _tree(depth)
    b, se = rng.normal(size=7), rng.uniform(0.2, 1.0, size=7)
    tau = rng.uniform(0.3, 1.0, size=depth + 1)
    mean, cov_b, cov_theta = _dense_joint(tree, tau, 0.0, 1.0, se)
    # theta | b: Gaussian conditioning with cov(theta, b) = cov_theta
    gain = np.linalg.solve(cov_b, cov_theta).T
    post_mean = mean + gain @ (b - mean)
    post_cov = cov_theta - gain @ cov_theta
    n = 40_000
    index = TreeIndex.from_hierarchy(tree)
    tau_rep = np.broadcast_to(tau, (n, depth + 1))
    messages = upward_pass(
        np.broadcast_to(b, (n, 7)), np.broadcast_to(se**2, (n, 7)), tau_rep, index, 0.0, 1.0
    )
    _, _, theta = draw_tree(messages, tau_rep, index, 0.0, 1.0, np.random.default_rng(4))
    sd = np.sqrt(np.diag(post_cov))
    z = (theta.mean(axis=0) - post_mean) / (sd / np.sqrt(n))
    assert np.abs(z).max() < 4.0
    np.testing.assert_allclose(np.cov(theta.T), post_cov, atol=5 * post_cov.max() / np.sqrt(n) * 3)


def test_draws_stay_finite_for_extreme_scales():
    tree = _tree(2)
    index = TreeIndex.from_hierarchy(tree)
    b = np.linspace(-1, 1, 7)
    se = np.array([1e-6, 1e6, 1.0, 1e-3, 1e3, 1.0, 1.0])
    tau = np.array([1e-12, 1e8, 1e-300])
    messages = upward_pass(b, se**2, tau, index, 0.0, 1.0)
    theta0, groups, theta = draw_tree(messages, tau, index, 0.0, 1.0, np.random.default_rng(0))
    assert np.isfinite(messages.log_marginal)
    assert (
        np.isfinite(theta).all()
        and np.isfinite(theta0)
        and all(np.isfinite(g).all() for g in groups)
    )
