"""The dense reference of ``dense_gaussian.py`` against the tree algebra and closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dense_gaussian import dense_posterior, leave_one_out_log_predictive, marginal_covariance
from scipy import stats

from bayeshier_pymc.gaussian_tree import TreeIndex, draw_tree, upward_pass
from bayeshier_pymc.hierarchy import Hierarchy

MU0, S0 = 0.3, 1.4


def _tree(depth: int) -> Hierarchy:
    annotations = pd.DataFrame(
        {
            "sub": ["a", "a", "b", "b", "b", "c", "d", "d"],
            "super": ["X", "X", "X", "X", "X", "Y", "Y", "Y"],
        },
        index=[f"f{j}" for j in range(8)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"]).truncate(depth)


def _case(depth: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=8), rng.uniform(0.2, 1.5, 8), rng.uniform(0.2, 1.2, depth + 1)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_independent_noise_log_marginal_equals_the_upward_pass(depth):
    b, se, tau = _case(depth, depth)
    tree = _tree(depth)
    dense = dense_posterior(b, np.diag(se**2), tau, tree, MU0, S0)
    messages = upward_pass(b, se**2, tau, TreeIndex.from_hierarchy(tree), MU0, S0)
    assert dense.log_marginal == pytest.approx(float(messages.log_marginal), rel=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_independent_noise_posterior_matches_exact_tree_draws(depth):
    b, se, tau = _case(depth, 10 + depth)
    tree = _tree(depth)
    dense = dense_posterior(b, np.diag(se**2), tau, tree, MU0, S0)
    n = 40_000
    index = TreeIndex.from_hierarchy(tree)
    tau_rep = np.broadcast_to(tau, (n, depth + 1))
    messages = upward_pass(
        np.broadcast_to(b, (n, 8)), np.broadcast_to(se**2, (n, 8)), tau_rep, index, MU0, S0
    )
    theta0, groups, theta = draw_tree(messages, tau_rep, index, MU0, S0, np.random.default_rng(1))
    draws = {"mu": theta0[:, None], "theta": theta}
    draws.update({level: groups[i] for i, level in enumerate(tree.levels)})
    for name, values in draws.items():
        mean, cov = dense.part(name)
        sd = np.sqrt(np.diag(cov))
        assert np.abs((values.mean(axis=0) - mean) / (sd / np.sqrt(n))).max() < 4.5, name
        # sd of a sample covariance entry: sqrt((c_ii c_jj + c_ij²) / n)
        tol = 4.5 * np.sqrt((np.outer(sd**2, sd**2) + cov**2) / n)
        assert (np.abs(np.atleast_2d(np.cov(values.T)) - cov) < tol).all(), name


def test_depth_zero_closed_form():
    """θ0's posterior with one global mean: precision-weighted mean of b with var s² + τ²."""
    b, se, tau = _case(0, 5)
    dense = dense_posterior(b, np.diag(se**2), tau, _tree(0), MU0, S0)
    weights = 1.0 / (se**2 + tau[0] ** 2)
    precision = weights.sum() + 1.0 / S0**2
    mean, cov = dense.part("mu")
    assert mean[0] == pytest.approx((weights @ b + MU0 / S0**2) / precision)
    assert cov[0, 0] == pytest.approx(1.0 / precision)


@pytest.mark.parametrize("depth", [0, 2])
def test_shared_top_noise_adds_to_the_prior_variance_of_theta0(depth):
    """Noise shared by all features is indistinguishable from θ0: s0² → s0² + v in p(b | τ)."""
    b, se, tau = _case(depth, 20 + depth)
    shared = 0.37
    tree = _tree(depth)
    dense = dense_posterior(b, np.diag(se**2) + shared, tau, tree, MU0, S0)
    index = TreeIndex.from_hierarchy(tree)
    moved = upward_pass(b, se**2, tau, index, MU0, np.sqrt(S0**2 + shared))
    assert dense.log_marginal == pytest.approx(float(moved.log_marginal), rel=1e-12)


def test_shared_group_noise_adds_to_that_level_s_scale_in_the_marginal():
    """Per-subclass shared noise v adds v to τ_1² in p(b | τ) (the same v in every subclass)."""
    b, se, tau = _case(2, 30)
    tree = _tree(2)
    codes = tree.membership(0)
    shared = 0.25
    noise = np.diag(se**2) + shared * (codes[:, None] == codes[None, :])
    dense = dense_posterior(b, noise, tau, tree, MU0, S0)
    moved_tau = tau.copy()
    moved_tau[1] = np.sqrt(tau[1] ** 2 + shared)
    moved = upward_pass(b, se**2, moved_tau, TreeIndex.from_hierarchy(tree), MU0, S0)
    assert dense.log_marginal == pytest.approx(float(moved.log_marginal), rel=1e-12)
    # but θ's posterior differs: the shared part is noise, not effect
    independent = dense_posterior(b, np.diag(se**2), moved_tau, tree, MU0, S0)
    assert not np.allclose(dense.part("theta")[0], independent.part("theta")[0])


def test_leave_one_out_predictive_matches_explicit_conditioning():
    b, se, tau = _case(2, 40)
    tree = _tree(2)
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(8, 2))
    noise = np.diag(se**2) + loadings @ loadings.T
    got = leave_one_out_log_predictive(b, noise, tau, tree, MU0, S0)
    cov = marginal_covariance(noise, tau, tree, S0)
    for j in range(8):
        rest = np.arange(8) != j
        weights = np.linalg.solve(cov[np.ix_(rest, rest)], cov[rest, j])
        mean = MU0 + weights @ (b[rest] - MU0)
        var = cov[j, j] - weights @ cov[rest, j]
        assert got[j] == pytest.approx(stats.norm.logpdf(b[j], mean, np.sqrt(var)), rel=1e-10)
