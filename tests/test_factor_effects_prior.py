"""Effects along a noise remainder's loadings (``tree_level_posterior(..., directions=L)``).

A factor remainder of the noise reads every pattern of the estimates along its loadings as
noise; with ``directions`` the prior gives the effects such a pattern too, with a scale of its
own (``benchmarks/bench_factor_effects.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.research import research_module

tree_level_posterior = research_module("bench_low_rank").tree_level_posterior
N_FEATURES = 60
CLASSES = np.repeat(np.arange(12), 5)
N_REPLICATES = 20


def _noise(loadings: np.ndarray) -> np.ndarray:
    """Own noise, shared class noise and the factors: c_kk (A Aᵀ + L Lᵀ + Ψ) with c_kk = 1."""
    same_class = (CLASSES[:, None] == CLASSES[None, :]).astype(float)
    return 0.05 * np.eye(N_FEATURES) + 0.02 * same_class + loadings @ loadings.T


def _scores(effects_follow_factors: bool, with_directions: bool) -> tuple[float, float]:
    """Mean squared error of the posterior means and coverage of the 95% intervals of θ."""
    rng = np.random.default_rng(11)
    loadings = rng.normal(0.0, 0.3, (N_FEATURES, 2))
    noise = _noise(loadings)
    errors, covered = [], []
    for _ in range(N_REPLICATES):
        theta = 0.1 * rng.standard_normal(N_FEATURES)
        if effects_follow_factors:
            theta += loadings @ rng.normal(0.0, 2.0, 2)
        b = rng.multivariate_normal(theta, noise)
        mean, sd = tree_level_posterior(
            b,
            noise,
            [CLASSES],
            start_from_grid=True,
            directions=loadings if with_directions else None,
        )
        errors.append(np.mean((mean - theta) ** 2))
        covered.append(np.mean(np.abs(mean - theta) <= 1.96 * sd))
    return float(np.mean(errors)), float(np.mean(covered))


def test_effects_along_the_loadings_are_kept_as_effects():
    # without them the posterior removes the effects along L as noise
    mse_without, coverage_without = _scores(effects_follow_factors=True, with_directions=False)
    mse_with, coverage_with = _scores(effects_follow_factors=True, with_directions=True)
    assert mse_with < 0.5 * mse_without
    assert coverage_with > coverage_without + 0.3


def test_directions_keep_the_coverage_where_the_effects_do_not_follow_the_factors():
    # their scale is learned from r = 2 components, so it costs accuracy here (the MSE about
    # triples, as docs/model.md reports), but not calibration
    _, coverage_without = _scores(effects_follow_factors=False, with_directions=False)
    _, coverage_with = _scores(effects_follow_factors=False, with_directions=True)
    assert coverage_with == pytest.approx(coverage_without, abs=0.02)


def test_no_directions_is_the_tree_prior():
    rng = np.random.default_rng(3)
    loadings = rng.normal(0.0, 0.3, (N_FEATURES, 2))
    b = rng.multivariate_normal(np.zeros(N_FEATURES), _noise(loadings))
    plain = tree_level_posterior(b, _noise(loadings), [CLASSES])
    empty = tree_level_posterior(
        b, _noise(loadings), [CLASSES], directions=np.empty((N_FEATURES, 0))
    )
    np.testing.assert_array_equal(plain[0], empty[0])
    np.testing.assert_array_equal(plain[1], empty[1])
