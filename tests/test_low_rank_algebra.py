"""The tree algebra with a low-rank noise remainder (Woodbury) against dense Gaussian algebra."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, pad_scales
from tests.dense_gaussian import marginal_covariance, tree_noise_covariance
from tests.research import research_module
from tests.test_tree_noise_algebra import MU0, S0, _hierarchy, _noise

low_rank_marginal = research_module("low_rank_algebra").low_rank_marginal
tree_solve = research_module("low_rank_algebra").tree_solve
CASES = [(0, 0, 0, 1), (1, 1, 1, 2), (2, 2, 1, 3), (3, 3, 3, 2), (4, 2, 0, 1)]


def _rows(seed: int, depth: int, used: int, rank: int):
    """Two rows (covariates): their b, own variances, node noise, scales and loadings."""
    hierarchy = _hierarchy(seed, depth)
    tree = TreeIndex.from_hierarchy(hierarchy)
    own, noise = _noise(tree, seed)
    rng = np.random.default_rng(seed)
    scale = np.array([1.0, 0.6])  # c_kk of the two rows
    rows_noise = NodeNoise(
        tuple(scale[:, None] * g[None, :] for g in noise.groups), scale * noise.top
    )
    loadings = np.sqrt(scale)[:, None, None] * rng.normal(0.0, 0.7, (tree.n_features, rank))
    tau_used = rng.uniform(0.2, 1.2, (2, used + 1))
    b = rng.normal(MU0, 1.5, (2, tree.n_features))
    dense = [
        marginal_covariance(
            scale[k] * tree_noise_covariance(hierarchy, own, noise) + loadings[k] @ loadings[k].T,
            tau_used[k],
            hierarchy.truncate(used),
            S0,
        )
        for k in range(2)
    ]
    return tree, b, scale[:, None] * own[None, :], rows_noise, tau_used, loadings, dense


@pytest.mark.parametrize(("seed", "depth", "used", "rank"), CASES)
def test_log_marginal_and_factor_posterior_match_dense(seed, depth, used, rank):
    tree, b, own, noise, tau_used, loadings, dense = _rows(seed, depth, used, rank)
    tau = pad_scales(tau_used, depth)
    result = low_rank_marginal(b, own, tau, tree, MU0, S0, loadings, noise)
    for k in range(2):
        expected = stats.multivariate_normal(np.full(tree.n_features, MU0), dense[k]).logpdf(b[k])
        np.testing.assert_allclose(result.log_marginal[k], expected, rtol=1e-10)
        # f and b jointly normal: Cov(f, b) = Lᵀ
        gain = np.linalg.solve(dense[k], loadings[k]).T
        np.testing.assert_allclose(result.factor_mean[k], gain @ (b[k] - MU0), atol=1e-10)
        np.testing.assert_allclose(
            result.factor_covariance[k], np.eye(rank) - gain @ loadings[k], atol=1e-10
        )


def test_tree_solve_is_the_dense_inverse():
    tree, b, own, noise, tau_used, _, _ = _rows(5, 2, 2, 1)
    tau = pad_scales(tau_used, 2)
    hierarchy = _hierarchy(5, 2)
    for k in range(2):
        row_noise = noise.row(k)
        dense = marginal_covariance(
            tree_noise_covariance(hierarchy, own[k], row_noise), tau_used[k], hierarchy, S0
        )
        solved = tree_solve(b[k], own[k], tau[k], tree, S0, row_noise)
        np.testing.assert_allclose(solved, np.linalg.solve(dense, b[k]), rtol=1e-9)
