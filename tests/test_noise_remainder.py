"""A low-rank remainder on top of tree-structured noise (``benchmarks/noise_remainder.py``)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, mlm
from bayeshier_pymc.noise import tree_noise
from tests.research import research_module

remainder_module = research_module("noise_remainder")
noise_remainder = remainder_module.noise_remainder
conditional_variance_inflation = remainder_module.conditional_variance_inflation
N_FEATURES = 60
SUB = np.repeat(np.arange(12), 5)
SUPER = SUB // 4
OWN = np.linspace(0.5, 1.0, N_FEATURES)
FEATURES = [f"f{j:02d}" for j in range(N_FEATURES)]


def _hierarchy() -> Hierarchy:
    annotations = pd.DataFrame(
        {"sub": [f"s{h:02d}" for h in SUB], "super": [f"S{g}" for g in SUPER]}, index=FEATURES
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"])


def _planted_loadings(rank: int) -> np.ndarray:
    return np.random.default_rng(7).normal(0.0, 0.5, (N_FEATURES, rank))


def _tree_covariance() -> np.ndarray:
    same_sub = SUB[:, None] == SUB[None, :]
    same_super = SUPER[:, None] == SUPER[None, :]
    return 0.1 + 0.2 * same_super + 0.3 * same_sub + np.diag(OWN)


def _study(rng: np.random.Generator, rank: int, n: int = 300):
    """``Y = X B + E``, E's rows with tree-structured covariance plus ``rank`` factors."""
    loadings = _planted_loadings(rank)
    covariance = _tree_covariance() + loadings @ loadings.T
    x = rng.normal(size=(n, 2))
    y = x @ rng.normal(size=(2, N_FEATURES)) + rng.multivariate_normal(
        np.zeros(N_FEATURES), covariance, size=n
    )
    fit = mlm(pd.DataFrame(y, columns=FEATURES), pd.DataFrame(x, columns=["a", "b"]))
    return fit, loadings, covariance


def _largest_sine(basis: np.ndarray, other: np.ndarray) -> float:
    """Sine of the largest principal angle between two column spaces."""
    q1, q2 = np.linalg.qr(basis)[0], np.linalg.qr(other)[0]
    cosines = np.linalg.svd(q1.T @ q2, compute_uv=False)
    return float(np.sqrt(max(1.0 - cosines.min() ** 2, 0.0)))


def test_recovers_planted_factors_on_top_of_tree_noise(rng):
    fit, loadings, covariance = _study(rng, rank=3)
    remainder = noise_remainder(fit, _hierarchy(), rank=3)
    assert remainder.rank == 3
    assert _largest_sine(remainder.loadings, loadings) < 0.3
    planted = loadings @ loadings.T
    fitted = remainder.loadings @ remainder.loadings.T
    assert np.linalg.norm(fitted - planted) < 0.35 * np.linalg.norm(planted)
    # the total model is much closer to the truth than the tree alone
    tree_only = tree_noise(fit, _hierarchy()).covariance()
    error = np.linalg.norm(remainder.covariance() - covariance)
    assert error < 0.5 * np.linalg.norm(tree_only - covariance)


def test_the_fit_is_a_maximum_of_the_likelihood(rng):
    fit, _, _ = _study(rng, rank=2, n=200)
    remainder = noise_remainder(fit, _hierarchy(), rank=2, tol=1e-10)
    n_obs = fit.n_obs
    # residual rows scaled to covariance Σ (the fit's divisor is n − 3)
    residuals = fit.residuals.to_numpy() * np.sqrt(n_obs / (n_obs - 3))

    def log_likelihood(model) -> float:
        normal = stats.multivariate_normal(np.zeros(N_FEATURES), model.covariance())
        return float(normal.logpdf(residuals).sum())

    best = log_likelihood(remainder)
    perturb = np.random.default_rng(3)
    for _ in range(3):
        step = perturb.normal(0.0, 0.02, remainder.loadings.shape)
        assert log_likelihood(replace(remainder, loadings=remainder.loadings + step)) < best
        own = remainder.tree.residual.own * np.exp(perturb.normal(0.0, 0.05, N_FEATURES))
        residual = replace(remainder.tree.residual, own=own)
        moved = replace(remainder, tree=replace(remainder.tree, residual=residual))
        assert log_likelihood(moved) < best


def test_cross_validation_picks_the_planted_rank(rng):
    for planted in (0, 2):
        fit, _, _ = _study(rng, rank=planted)
        remainder = noise_remainder(fit, _hierarchy(), max_rank=3, n_folds=3, tol=1e-5)
        assert remainder.rank == planted, remainder.cross_validation
        assert remainder.cross_validation.index.tolist() == list(range(4))


def test_covariance_is_positive_definite_and_scaled_by_c_kk(rng):
    fit, _, _ = _study(rng, rank=2, n=80)
    remainder = noise_remainder(fit, _hierarchy(), rank=5, min_own_share=0.5)
    residual = remainder.covariance()
    assert np.linalg.eigvalsh(residual).min() > 0
    floor = 0.5 * fit.sigma.to_numpy()
    assert (remainder.tree.residual.own >= floor - 1e-12).all()
    assert np.isclose(remainder.tree.residual.own, floor).any()
    c_kk = float(remainder.tree.covariate_scale["a"])
    np.testing.assert_allclose(remainder.covariance("a"), c_kk * residual, rtol=1e-9, atol=1e-15)
    assert remainder.cross_validation is None
    with pytest.raises(ValueError, match="covariate 'z'"):
        remainder.covariance("z")


def test_bad_ranks_and_inputs_raise_clear_errors(rng):
    fit, _, _ = _study(rng, rank=1, n=40)
    tree = _hierarchy()
    for rank, message in ((-1, "non-negative"), (2.5, "integer"), ("all", "integer")):
        with pytest.raises(ValueError, match=message):
            noise_remainder(fit, tree, rank=rank)
    with pytest.raises(ValueError, match=r"rank 50 is too large.*at most 36"):
        noise_remainder(fit, tree, rank=50)
    with pytest.raises(ValueError, match="max_rank 30 is too large"):
        noise_remainder(fit, tree, max_rank=30, n_folds=2)
    with pytest.raises(ValueError, match="n_folds"):
        noise_remainder(fit, tree, n_folds=1)
    y = fit.Y.copy()
    y.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="complete residuals"):
        noise_remainder(mlm(y, fit.X, x_intercept=False, missing="per-feature"), tree, rank=1)


def _shortfall(precision: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """Per feature, the true variance of the conditional prediction error from ``precision``
    over the variance it claims."""
    return np.einsum("ij,jk,ki->i", precision, covariance, precision) / np.diag(precision)


def test_conditional_variance_inflation_measures_the_shortfall_of_few_samples(rng):
    hierarchy = _hierarchy()
    actual, estimated = [], []
    for _ in range(3):
        fit, _, covariance = _study(rng, rank=3, n=40)
        remainder = noise_remainder(fit, hierarchy, rank=3)
        actual.append(_shortfall(np.linalg.inv(remainder.covariance()), covariance).mean())
        inflation = conditional_variance_inflation(fit, hierarchy, remainder, random_seed=1)
        assert inflation.shape == (N_FEATURES,)
        estimated.append(inflation.mean())
    # 40 samples understate the conditional variances against the true Σ, and the bootstrap
    # (which never sees the true Σ) says by about how much
    assert np.mean(actual) > 1.15
    assert abs(np.mean(estimated) / np.mean(actual) - 1.0) < 0.15
    # with many samples the factors are estimated well and nothing needs inflating
    fit, _, _ = _study(rng, rank=3, n=2000)
    remainder = noise_remainder(fit, hierarchy, rank=3)
    inflation = conditional_variance_inflation(fit, hierarchy, remainder, n_bootstrap=3)
    assert 0.99 < inflation.mean() < 1.02
    with pytest.raises(ValueError, match="n_bootstrap"):
        conditional_variance_inflation(fit, hierarchy, remainder, n_bootstrap=0)
