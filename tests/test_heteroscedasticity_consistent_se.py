"""The HC2 and HC3 standard errors of the calibration diagnosis, against statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

import bayeshier_pymc as bh
from tests.research import research_module

diagnosis = research_module("bench_calibration_diagnosis")


@pytest.fixture(scope="module")
def heteroscedastic_fit() -> bh.MLMFit:
    """Stage 1 of 40 samples × 6 features whose noise grows with the first covariate."""
    rng = np.random.default_rng(3)
    x = pd.DataFrame(
        {"age": rng.normal(size=40), "sex": rng.integers(0, 2, size=40).astype(float)},
        index=[f"s{i}" for i in range(40)],
    )
    noise = rng.normal(size=(40, 6)) * np.exp(x[["age"]].to_numpy())
    y = pd.DataFrame(
        0.5 * x[["age"]].to_numpy() + noise,
        index=x.index,
        columns=[f"m{j}" for j in range(6)],
    )
    return bh.mlm(y, x)


@pytest.mark.parametrize("kind", ["HC2", "HC3"])
def test_matches_statsmodels_per_feature(heteroscedastic_fit: bh.MLMFit, kind: str) -> None:
    fit = heteroscedastic_fit
    ours = diagnosis.standard_errors(fit, kind)
    for feature in fit.Y.columns:
        reference = sm.OLS(fit.Y[feature], fit.X).fit(cov_type=kind).bse
        np.testing.assert_allclose(
            ours.sel(feature=feature).to_numpy(), reference.to_numpy(), rtol=1e-10
        )
    assert ours.dims == fit.se.dims
    assert list(ours["covariate"].values) == ["(Intercept)", "age", "sex"]


def test_plain_is_the_fits_own(heteroscedastic_fit: bh.MLMFit) -> None:
    fit = heteroscedastic_fit
    assert diagnosis.standard_errors(fit, "plain") is fit.se


def test_hc2_is_unbiased_under_homoscedastic_noise() -> None:
    """E[e_i²] = σ²(1 − h_ii), so HC2's variance has mean σ² (X'X)⁻¹_kk exactly."""
    rng = np.random.default_rng(11)
    n_obs, n_features = 30, 4000
    x = np.column_stack([np.ones(n_obs), rng.normal(size=(n_obs, 2))])
    y = rng.normal(size=(n_obs, n_features))
    residuals = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    variance = diagnosis.heteroscedasticity_consistent_se(x, residuals, "HC2") ** 2
    exact = np.diag(np.linalg.inv(x.T @ x))
    mean = variance.mean(axis=1)
    standard_error = variance.std(axis=1, ddof=1) / np.sqrt(n_features)
    assert np.all(np.abs(mean - exact) < 4 * standard_error)
    hc3 = diagnosis.heteroscedasticity_consistent_se(x, residuals, "HC3") ** 2
    assert np.all(hc3.mean(axis=1) > exact + 4 * standard_error)  # HC3 errs on the wide side


def test_leverages_sum_to_the_number_of_columns() -> None:
    x = np.column_stack([np.ones(12), np.arange(12.0), np.arange(12.0) ** 2])
    leverage = diagnosis.leverages(x)
    np.testing.assert_allclose(leverage, np.diag(x @ np.linalg.solve(x.T @ x, x.T)))
    assert leverage.sum() == pytest.approx(3)


def test_bad_input_is_refused() -> None:
    x = np.column_stack([np.ones(5), np.arange(5.0)])
    residuals = np.ones((5, 2))
    with pytest.raises(ValueError, match="kind must be one of"):
        diagnosis.heteroscedasticity_consistent_se(x, residuals, "HC1")
    with pytest.raises(ValueError, match="share their rows"):
        diagnosis.heteroscedasticity_consistent_se(x, residuals[:4], "HC3")
    spike = np.column_stack([np.ones(5), [0.0, 0.0, 0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="leverage 1"):
        diagnosis.heteroscedasticity_consistent_se(spike, residuals, "HC2")


def test_exclusive_indicators_are_a_categoricals_dummies() -> None:
    binary = pd.DataFrame(
        {
            "steatosis": [1, 0, 0, 0, 1, 0],
            "nash": [0, 1, 0, 0, 0, 0],
            "cirrhosis": [0, 0, 1, 0, 0, 1],
            "male": [1, 1, 0, 1, 0, 0],
        }
    )
    assert diagnosis.exclusive_indicators(binary) == ["steatosis", "nash", "cirrhosis"]
    assert diagnosis.exclusive_indicators(binary[["steatosis", "male"]]) == []
