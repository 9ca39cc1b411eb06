"""Correlated residual settings of the research simulation (``simulate(residuals=...)``)."""

from __future__ import annotations

import numpy as np
import pytest

from bayeshier_pymc import simulate
from bayeshier_pymc.simulate import ResidualNoise
from bayeshier_pymc.validation_data import (
    LIVER_FILES,
    has_files,
    read_liver_lipidome,
    real_residual_covariance,
)

M = 12
SHARES = (1, 1, 1, 1)


def _residuals(study) -> np.ndarray:
    return study.Y.to_numpy() - study.X.to_numpy() @ study.B.to_numpy()


def _assert_covariance_matches(study) -> None:
    """Empirical residual covariance within 4.5 sampling sds of the study's true one."""
    resid = _residuals(study)
    n = resid.shape[0]
    truth = study.residual_covariance
    empirical = resid.T @ resid / n
    sd = np.sqrt((np.outer(np.diag(truth), np.diag(truth)) + truth**2) / n)
    assert (np.abs(empirical - truth) < 4.5 * sd).all(), np.abs(empirical - truth).max()


def test_the_independent_setting_is_unchanged_and_keeps_truth_and_design():
    plain = simulate(40, M, 3, proportions=SHARES, random_seed=9)
    defaults = simulate(40, M, 3, proportions=SHARES, residuals=ResidualNoise(), random_seed=9)
    assert plain.residual_covariance is None
    assert np.array_equal(plain.Y, defaults.Y)
    assert np.allclose(defaults.residual_covariance, np.eye(M))
    tree = simulate(
        40, M, 3, proportions=SHARES, residuals=ResidualNoise(subclass_sd=0.5), random_seed=9
    )
    assert np.array_equal(plain.X, tree.X) and np.array_equal(plain.B, tree.B)
    assert not np.array_equal(plain.Y, tree.Y)


@pytest.mark.parametrize(
    "residuals",
    [
        ResidualNoise(subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3),
        ResidualNoise(n_factors=2, factor_sd=0.5),
        ResidualNoise(covariance=np.full((M, M), 0.3) + np.eye(M), subclass_sd=0.5),
    ],
    ids=["tree", "factors", "given covariance + tree"],
)
def test_each_setting_reproduces_its_covariance(residuals):
    study = simulate(
        20_000, M, 1, proportions=SHARES, n_superclasses=2, residuals=residuals, random_seed=2
    )
    _assert_covariance_matches(study)


def test_tree_setting_has_the_nested_structure():
    study = simulate(
        10,
        M,
        1,
        proportions=SHARES,
        n_superclasses=2,
        residuals=ResidualNoise(subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3),
        random_seed=0,
    )
    cov = study.residual_covariance
    # subclasses of 3: same subclass, same superclass only, nothing shared
    assert cov[0, 1] == pytest.approx(0.36 + 0.16 + 0.09)
    assert cov[0, 3] == pytest.approx(0.16 + 0.09)
    assert cov[0, -1] == pytest.approx(0.09)
    assert cov[0, 0] == pytest.approx(1.0 + 0.36 + 0.16 + 0.09)


def test_bad_residual_settings_raise():
    with pytest.raises(ValueError, match="superclasses"):
        simulate(10, M, 1, proportions=SHARES, residuals=ResidualNoise(superclass_sd=0.1))
    with pytest.raises(ValueError, match="12 × 12"):
        simulate(10, M, 1, proportions=SHARES, residuals=ResidualNoise(covariance=np.eye(3)))
    with pytest.raises(ValueError, match="positive definite"):
        simulate(10, M, 1, proportions=SHARES, residuals=ResidualNoise(covariance=-np.eye(M)))
    with pytest.raises(ValueError, match="negative"):
        simulate(10, M, 1, proportions=SHARES, residuals=ResidualNoise(global_sd=-1.0))


def test_residuals_from_the_liver_lipidome_covariance(shared_data):
    if not has_files(shared_data, LIVER_FILES):
        pytest.skip("liver lipidome CSVs absent")
    study = read_liver_lipidome(shared_data)
    covariance = real_residual_covariance(study)
    m = study.Y.shape[1]
    assert covariance.shape == (m, m) and np.allclose(covariance, covariance.T)
    simulated = simulate(5000, m, 1, residuals=ResidualNoise(covariance=covariance), random_seed=1)
    resid = _residuals(simulated)
    # per-feature variances within 5 sampling sds (sd of a variance: σ² √(2/n))
    variance = np.diag(covariance)
    assert (np.abs(resid.var(axis=0) - variance) < 5 * variance * np.sqrt(2 / 5000)).all()
    assert np.allclose(simulated.residual_covariance, covariance)
