"""The tree algebra with shared noise at the nodes (issue 14) against dense Gaussian algebra.

The estimates' noise is tree-structured: own variances on the diagonal plus, for every pair,
the shared variances of the nodes on their common path. Every O(m) function of
:mod:`bayeshier_pymc.gaussian_tree` given that noise is compared with dense conditioning on the
m × m covariance (``tests/dense_gaussian.py``), including effect trees shallower than the noise
tree (the scales of the unused levels fixed at zero).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc.gaussian_tree import (
    NodeNoise,
    TreeIndex,
    draw_noise,
    draw_tree,
    group_log_predictive,
    leave_one_out_normal,
    noise_log_density,
    upward_pass,
)
from bayeshier_pymc.hierarchy import Hierarchy
from tests.dense_gaussian import (
    dense_posterior,
    leave_one_out_log_predictive,
    tree_noise_covariance,
)

MU0, S0 = 0.3, 1.4


def _hierarchy(seed: int, depth: int, m: int = 13) -> Hierarchy:
    """A random tree of ``depth`` levels over ``m`` features (every group non-empty)."""
    rng = np.random.default_rng(seed)
    features = pd.Index([f"f{j}" for j in range(m)], name="feature")
    parents, groups, levels = [], [], []
    n_below = m
    for level in range(depth):
        n = max(1, n_below // 3)
        index = np.concatenate([np.arange(n), rng.integers(0, n, n_below - n)])
        parents.append(rng.permutation(index).astype(np.intp))
        name = f"level{level}"
        levels.append(name)
        groups.append(pd.Index([f"{name}_{g}" for g in range(n)], name=name))
        n_below = n
    return Hierarchy(features, tuple(levels), tuple(groups), tuple(parents))


def _noise(tree: TreeIndex, seed: int) -> tuple[np.ndarray, NodeNoise]:
    """Own variances and node noise (some nodes without shared noise)."""
    rng = np.random.default_rng(50 + seed)
    own = rng.uniform(0.1, 1.0, tree.n_features)
    groups = tuple(rng.uniform(0.0, 0.8, n) * (rng.uniform(size=n) > 0.2) for n in tree.n_groups)
    return own, NodeNoise(groups, np.asarray(rng.uniform(0.0, 0.5)))


CASES = [
    (seed, depth, used) for seed, depth in enumerate((0, 1, 2, 3)) for used in range(depth + 1)
]


@pytest.mark.parametrize(("seed", "depth", "used"), CASES)
def test_marginal_and_loo_match_dense(seed, depth, used):
    """log p(b | τ), leave-one-out and leave-one-group-out predictives, at every effect depth."""
    hierarchy = _hierarchy(seed, depth)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, seed)
    rng = np.random.default_rng(seed)
    b = rng.normal(MU0, 1.5, tree.n_features)
    tau_used = rng.uniform(0.2, 1.2, used + 1)
    tau = np.concatenate([tau_used, np.zeros(depth - used)])
    dense_noise = tree_noise_covariance(hierarchy, own, noise)
    effect_tree = hierarchy.truncate(used)
    expected = dense_posterior(b, dense_noise, tau_used, effect_tree, MU0, S0)
    messages = upward_pass(b, own, tau, tree, MU0, S0, noise=noise)
    np.testing.assert_allclose(messages.log_marginal, expected.log_marginal, rtol=1e-10)
    loo = group_log_predictive(
        b, own, tau, tree, MU0, S0, 0, np.arange(tree.n_features), noise=noise
    )
    dense_loo = leave_one_out_log_predictive(b, dense_noise, tau_used, effect_tree, MU0, S0)
    np.testing.assert_allclose(loo, dense_loo, rtol=1e-9)
    if depth:
        # leave out whole first-level groups
        groups = group_log_predictive(b, own, tau, tree, MU0, S0, 0, tree.parents[0], noise=noise)
        cov = expected_cov = dense_noise + _effect_cov(effect_tree, tau_used)
        for group in range(tree.n_groups[0]):
            held = tree.parents[0] == group
            kept = ~held
            gain = np.linalg.solve(cov[np.ix_(kept, kept)], cov[np.ix_(kept, held)]).T
            mean = MU0 + gain @ (b[kept] - MU0)
            cond = expected_cov[np.ix_(held, held)] - gain @ cov[np.ix_(kept, held)]
            want = stats.multivariate_normal(mean, cond).logpdf(b[held])
            np.testing.assert_allclose(groups[group], want, rtol=1e-9)


def _effect_cov(effect_tree: Hierarchy, tau: np.ndarray) -> np.ndarray:
    from tests.dense_gaussian import marginal_covariance

    return marginal_covariance(np.zeros((effect_tree.n_features,) * 2), tau, effect_tree, S0)


@pytest.mark.parametrize(("seed", "depth", "used"), [(1, 1, 1), (2, 2, 2), (3, 2, 0), (4, 3, 1)])
def test_draws_match_dense_posterior(seed, depth, used):
    """Exact draws of the effects (totals drawn, then split) have the dense posterior's moments."""
    hierarchy = _hierarchy(seed, depth, m=9)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, seed)
    rng = np.random.default_rng(seed)
    b = rng.normal(MU0, 1.5, tree.n_features)
    tau_used = rng.uniform(0.2, 1.2, used + 1)
    tau = np.concatenate([tau_used, np.zeros(depth - used)])
    effect_tree = hierarchy.truncate(used)
    expected = dense_posterior(
        b, tree_noise_covariance(hierarchy, own, noise), tau_used, effect_tree, MU0, S0
    )
    n_draws = 200_000
    tau_draws = np.broadcast_to(tau, (n_draws, depth + 1))
    messages = upward_pass(b, own, tau_draws, tree, MU0, S0, noise=noise)
    theta0, group_means, theta = draw_tree(
        messages, tau_draws, tree, MU0, S0, np.random.default_rng(7), noise=noise
    )
    parts = [("mu", theta0[:, None]), ("theta", theta)]
    parts += [(effect_tree.levels[d], group_means[d]) for d in range(used)]
    for name, draws in parts:
        mean, cov = expected.part(name)
        sd = np.sqrt(np.diag(cov))
        # Monte Carlo: the draw mean's sd is sd / sqrt(n); allow 4.5 of them
        np.testing.assert_array_less(
            np.abs(draws.mean(axis=0) - mean), 4.5 * sd / np.sqrt(n_draws) + 1e-12
        )
        # the variance's relative Monte Carlo sd is about sqrt(2 / n)
        np.testing.assert_allclose(draws.var(axis=0), np.diag(cov), rtol=6 * np.sqrt(2 / n_draws))
    for level in range(used, depth):
        # unused levels: every group's effect equals θ0 exactly
        np.testing.assert_allclose(
            group_means[level], np.broadcast_to(theta0[:, None], group_means[level].shape)
        )


def test_draws_without_noise_are_unchanged():
    """``noise=None`` draws exactly the normals of the independent model (same numbers)."""
    hierarchy = _hierarchy(0, 2)
    tree = TreeIndex.from_hierarchy(hierarchy)
    rng = np.random.default_rng(0)
    b, var_b, tau = rng.normal(size=13), rng.uniform(0.1, 1, 13), rng.uniform(0.2, 1, 3)
    messages = upward_pass(b, var_b, tau, tree, MU0, S0)
    first = draw_tree(messages, tau, tree, MU0, S0, np.random.default_rng(3))
    zero = NodeNoise(tuple(np.zeros(n) for n in tree.n_groups), np.asarray(0.0))
    messages_zero = upward_pass(b, var_b, tau, tree, MU0, S0, noise=zero)
    second = draw_tree(messages_zero, tau, tree, MU0, S0, np.random.default_rng(3), noise=zero)
    np.testing.assert_allclose(second[0], first[0], rtol=1e-12)
    np.testing.assert_allclose(second[2], first[2], rtol=1e-12)
    for got, want in zip(second[1], first[1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_noise_log_density_is_the_dense_normal(depth):
    hierarchy = _hierarchy(depth, depth)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, depth)
    residual = np.random.default_rng(depth).normal(size=(4, tree.n_features))
    got = noise_log_density(residual, own, tree, noise)
    want = stats.multivariate_normal(
        np.zeros(tree.n_features), tree_noise_covariance(hierarchy, own, noise)
    )
    np.testing.assert_allclose(got, want.logpdf(residual), rtol=1e-10)


@pytest.mark.parametrize("depth", [0, 2, 3])
def test_drawn_noise_has_the_tree_covariance(depth):
    """Noise draws have covariance Σ (own variances plus shared node variances), within MC error."""
    hierarchy = _hierarchy(depth, depth, m=8)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, depth)
    n = 100_000
    draws = draw_noise(own, tree, noise, np.random.default_rng(depth), lead=(n,))
    expected = tree_noise_covariance(hierarchy, own, noise)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    # the sample covariance's sd is about sqrt((σ_ii σ_jj + σ_ij²) / n) ≤ sqrt(2 / n) · scale
    np.testing.assert_array_less(
        np.abs(np.cov(draws, rowvar=False) - expected), 4.5 * np.sqrt(2 / n) * scale
    )
    independent = draw_noise(own, tree, None, np.random.default_rng(0), lead=(n,))
    np.testing.assert_allclose(independent.var(axis=0), own, rtol=4.5 * np.sqrt(2 / n))


@pytest.mark.parametrize(("seed", "depth", "used"), CASES)
def test_leave_one_out_normal_matches_dense(seed, depth, used):
    """The leave-one-out predictive's mean and variance against dense conditioning."""
    hierarchy = _hierarchy(seed, depth)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, seed)
    rng = np.random.default_rng(seed)
    b = rng.normal(MU0, 1.5, tree.n_features)
    tau_used = rng.uniform(0.2, 1.2, used + 1)
    tau = np.concatenate([tau_used, np.zeros(depth - used)])
    cov = tree_noise_covariance(hierarchy, own, noise) + _effect_cov(
        hierarchy.truncate(used), tau_used
    )
    precision = np.linalg.inv(cov)
    diagonal = np.diag(precision)
    expected_mean = b - precision @ (b - MU0) / diagonal
    mean, variance = leave_one_out_normal(b, own, tau, tree, MU0, S0, noise)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(variance, 1.0 / diagonal, rtol=1e-9)
    if used == depth:
        # without noise: the independent model's predictive
        mean, variance = leave_one_out_normal(b, own, tau, tree, MU0, S0)
        precision = np.linalg.inv(np.diag(own) + _effect_cov(hierarchy, tau_used))
        np.testing.assert_allclose(variance, 1.0 / np.diag(precision), rtol=1e-9)


@pytest.mark.parametrize("top_scale", [1e3, 1e5, 1e7])
def test_leave_one_out_normal_stays_exact_for_a_parent_known_through_one_estimate(top_scale):
    """A one-member group under a huge scale: its parent is known almost only through b_j."""
    tree = TreeIndex(4, (np.array([0, 1, 1, 1]),), (2,))
    b = np.array([0.3, -0.2, 0.1, 0.4])
    var_b = np.full(4, 0.01)
    tau = np.array([0.1, top_scale])
    noise = NodeNoise((np.array([0.02, 0.03]),), np.asarray(0.01))
    for shared in (None, noise):
        mean, variance = leave_one_out_normal(b, var_b, tau, tree, MU0, S0, shared)
        scored = group_log_predictive(b, var_b, tau, tree, MU0, S0, 0, np.arange(4), shared)
        assert np.all(variance > 0)
        np.testing.assert_allclose(
            stats.norm(mean, np.sqrt(variance)).logpdf(b), scored, rtol=1e-9, atol=1e-12
        )
