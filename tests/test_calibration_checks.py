"""Split-half and known-truth calibration checks (``bayeshier_pymc.calibration``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, mlm, simulate
from bayeshier_pymc.calibration import (
    PosteriorSummary,
    StageTwo,
    clustered_coverage_se,
    known_truth_check,
    known_truth_scores,
    predictive_coverage,
    split_half_cells,
    split_half_check,
    split_half_scores,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.validation_data import (
    LIVER_FILES,
    blended_residual_covariance,
    has_files,
    read_liver_lipidome,
)

PYMC_NUTS = {"nuts_sampler": "pymc", "cores": 1}
"""NUTS in this process: no JAX compilation, no worker processes."""


def test_split_half_arithmetic_on_a_tiny_case():
    b_a = np.array([1.0, -1.0, 0.2, 3.0])
    b_b = np.array([1.5, 1.0, 0.0, 3.5])
    s_b = np.array([0.2, 0.2, 0.5, 0.1])
    mean = np.array([1.0, -0.5, 0.1, 3.0])
    sd = np.array([0.15, 0.2, 0.3, 0.1])
    lfsr = np.array([0.001, 0.01, 0.3, 0.04])
    scores = split_half_scores(b_a, b_b, s_b, mean, sd, lfsr)
    # |b_B - μ| vs 1.96 √(σ² + s²): 0.5 > 0.49, 1.5 > 0.554, 0.1 < 1.143, 0.5 > 0.277
    assert scores["coverage"] == 0.25
    assert scores["calls"] == 3
    # strong in B (|z| > 3): features 0 (7.5), 1 (5) and 3 (35); feature 1 has the wrong sign
    assert scores["checked_calls"] == 3
    assert scores["sign_error_rate"] == pytest.approx(1 / 3)
    assert scores["claimed_lfsr"] == pytest.approx(0.051 / 3)
    noise = np.mean(s_b**2)
    assert scores["mse"] == pytest.approx((0.25 + 2.25 + 0.01 + 0.25) / 4 - noise)
    assert scores["mse_raw"] == pytest.approx((0.25 + 4.0 + 0.04 + 0.25) / 4 - noise)
    assert scores["mse_gain"] == pytest.approx(scores["mse_raw"] / scores["mse"])
    with pytest.raises(ValueError, match="same number"):
        split_half_scores(b_a, b_b[:3], s_b, mean, sd, lfsr)


def test_predictive_intervals_with_an_estimated_se_cover_95_percent():
    """θ drawn from the posterior, b_B ~ N(θ, σ_B²), s_B² ~ σ_B² χ²_8 / 8: the Welch–
    Satterthwaite t quantile covers 95% (up to the approximation, measured 0.948); the normal
    1.96 covers 93%, and t with ν_B alone (the posterior's sd ignored) covers 96%."""
    rng = np.random.default_rng(0)
    n, nu = 200_000, 8
    sd_b = np.exp(rng.normal(0.0, 0.3, n))
    sd = sd_b * np.exp(rng.uniform(np.log(0.1), np.log(2.0), n))
    mean = rng.normal(0.0, 1.0, n)
    b_b = mean + sd * rng.standard_normal(n) + sd_b * rng.standard_normal(n)
    s_b = sd_b * np.sqrt(rng.chisquare(nu, n) / nu)
    # Monte Carlo sd of a coverage near 0.95: 0.0005
    assert abs(predictive_coverage(b_b, s_b, mean, sd, nu).mean() - 0.95) < 0.004
    assert predictive_coverage(b_b, s_b, mean, sd).mean() < 0.935
    only_b = np.abs(b_b - mean) <= stats.t.ppf(0.975, nu) * np.sqrt(sd**2 + s_b**2)
    assert only_b.mean() > 0.955
    with pytest.raises(ValueError, match="degrees of freedom"):
        predictive_coverage(b_b, s_b, mean, sd, 0.0)


def test_clustered_coverage_se_matches_the_spread_of_clustered_coverage():
    """Misses shared within clusters: the cluster-robust se matches the coverage's sd over
    replicates (the binomial se is half of it); with singleton clusters it is the
    ordinary se of a mean."""
    rng = np.random.default_rng(1)
    n_clusters, size, replicates = 60, 20, 2000
    clusters = np.repeat(np.arange(n_clusters), size)
    # each cluster's miss probability varies (Beta(0.25, 4.75): mean 0.05)
    miss = rng.beta(0.25, 4.75, (replicates, n_clusters))
    covered = rng.random((replicates, n_clusters * size)) >= np.repeat(miss, size, axis=1)
    se = np.array([clustered_coverage_se(c, clusters) for c in covered])
    spread = covered.mean(axis=1).std(ddof=1)
    # the sd of 2000 replicates is known to ±1.6%, the mean se to better than that
    assert abs(se.mean() / spread - 1.0) < 0.06
    assert np.sqrt(0.05 * 0.95 / covered.shape[1]) < 0.6 * spread
    values = rng.random(50)
    assert clustered_coverage_se(values, np.arange(50)) == pytest.approx(
        values.std(ddof=1) / np.sqrt(50)
    )
    assert np.isnan(clustered_coverage_se(values, np.zeros(50)))
    with pytest.raises(ValueError, match="same number"):
        clustered_coverage_se(values, np.arange(49))


def test_known_truth_arithmetic_on_a_tiny_case():
    import xarray as xr

    def array(values):
        return xr.DataArray(np.asarray(values, float)[None, :], dims=("covariate", "feature"))

    truth = np.array([[0.5, -0.2, 1.0]])
    posterior = PosteriorSummary(
        mean=array([0.4, 0.1, 0.9]),
        sd=array([0.1, 0.1, 0.1]),
        lower=array([0.2, -0.1, 0.7]),
        upper=array([0.6, 0.3, 1.1]),
        lfsr=array([0.01, 0.02, 0.03]),
    )
    scores = known_truth_scores(truth, np.array([[0.7, 0.3, 1.0]]), posterior)
    assert scores["coverage"] == pytest.approx(2 / 3)
    assert scores["calls"] == 3
    assert scores["false_sign_rate"] == pytest.approx(1 / 3)
    assert scores["claimed_lfsr"] == pytest.approx(0.02)
    assert scores["mse"] == pytest.approx((0.01 + 0.09 + 0.01) / 3)
    assert scores["mse_raw"] == pytest.approx((0.04 + 0.25) / 3)


def test_split_halves_of_unshrunk_estimates_are_calibrated():
    """With θ ~ N(b_A, s_A²), b_B − b_A ~ N(0, s_A² + s_B²): coverage 95%, gain 1."""
    study = simulate(n=120, m=300, p=2, random_seed=3)
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    result = split_half_check(
        study.Y, study.X, tree, stage_two=stage_one_posterior, n_splits=4, random_seed=1
    )
    assert list(result.index) == [0, 1, 2, 3, "mean"]
    mean = result.loc["mean"]
    # 2400 intervals, correlated within a split only through shared rows: sd ≈ 0.0045
    assert abs(mean["coverage"] - 0.95) < 0.02
    assert np.allclose(result["mse_gain"], 1.0)
    assert mean["sign_error_rate"] < 0.02
    # independent noise: each split's cluster-robust se (classes × covariates) is about the
    # binomial one, 0.0045; the mean row's, of the coverage averaged over splits, is smaller
    assert np.all(np.abs(np.log(result["coverage_se"].drop(index="mean") / 0.0045)) < np.log(2))
    assert 0.001 < mean["coverage_se"] < 0.0045
    assert abs(mean["coverage"] - 0.95) < 4.0 * mean["coverage_se"]


def test_split_half_cells_hold_every_estimate_of_every_split():
    study = simulate(n=60, m=30, p=2, random_seed=3)
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    cells = split_half_cells(
        study.Y, study.X, tree, stage_two=stage_one_posterior, n_splits=2, random_seed=1
    )
    assert len(cells) == 2 * study.X.shape[1] * 30
    one = cells[(cells["split"] == 1) & (cells["covariate"] == study.X.columns[0])]
    assert one["feature"].tolist() == tree.features.tolist()
    assert one["group"].tolist() == tree.groups[0][tree.membership(0)].tolist()
    # stage 1 as the posterior: its mean and sd are half A's estimates; 30 samples - 3 df
    assert np.allclose(one["mean"], one["b_a"]) and np.allclose(one["sd"], one["s_a"])
    assert (cells["df_b"] == 27).all()
    recomputed = predictive_coverage(*(cells[c] for c in ("b_b", "s_b", "mean", "sd", "df_b")))
    assert (cells["covered"] == recomputed).all()
    summary = split_half_summary(cells)
    for split in (0, 1):
        assert summary.loc[split, "coverage"] == pytest.approx(
            cells.loc[cells["split"] == split, "covered"].mean()
        )


def test_known_truth_check_of_unshrunk_estimates_covers_under_correlated_noise(rng):
    study = simulate(n=80, m=40, p=2, random_seed=5)
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    loadings = rng.normal(size=(40, 3))
    covariance = loadings @ loadings.T + np.eye(40)
    result = known_truth_check(
        study.X,
        tree,
        covariance,
        stage_two=stage_one_posterior,
        feature_sd=1.0,
        n_replicates=30,
        random_seed=2,
    )
    coverage = result.drop(index="mean")["coverage"].to_numpy()
    # stage 1 is calibrated for each estimate whatever Σ: 95% up to the t quantile (df 77)
    assert abs(coverage.mean() - 0.945) < 3.0 * coverage.std(ddof=1) / np.sqrt(coverage.size)
    assert result.loc["mean", "mse_gain"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive definite"):
        known_truth_check(study.X, tree, -np.eye(40), stage_two=stage_one_posterior)
    with pytest.raises(ValueError, match="40 × 40"):
        known_truth_check(study.X, tree, np.eye(3), stage_two=stage_one_posterior)


@pytest.mark.parametrize(
    ("group_sd", "shared_level"),
    [(0.0, None), ((1.0, 0.0), "subclass"), ((0.0, 1.0), "superclass"), (1.0, "subclass")],
)
def test_known_truth_is_drawn_at_the_depth_its_group_sds_give(group_sd, shared_level):
    """With no feature deviations and almost no noise, stage 1 returns the truth: equal within
    every group of the coarsest level with a positive sd, different between them, and 0 (the
    global mean) when no level has one."""
    study = simulate(n=60, m=48, p=2, n_superclasses=2, random_seed=3)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    estimates = []

    def keep_estimates(fit, hierarchy, covariates, random_seed):
        estimates.append(fit.coef.sel(covariate=covariates).to_numpy())
        return stage_one_posterior(fit, hierarchy, covariates, random_seed)

    known_truth_check(
        study.X,
        tree,
        1e-14 * np.eye(48),
        stage_two=keep_estimates,
        group_sd=group_sd,
        feature_sd=0.0,
        n_replicates=1,
    )
    (truth,) = estimates
    if shared_level is None:
        np.testing.assert_allclose(truth, 0.0, atol=1e-5)
        return
    groups = study.annotations[shared_level].to_numpy()
    group_means = pd.DataFrame(truth.T).groupby(groups).transform("mean").to_numpy().T
    np.testing.assert_allclose(truth, group_means, atol=1e-5)
    assert np.unique(np.round(truth[0], 4)).size == np.unique(groups).size


def test_known_truth_check_names_bad_group_sds():
    study = simulate(n=40, m=24, p=1, n_superclasses=2, random_seed=3)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    check = {"stage_two": stage_one_posterior, "n_replicates": 1}
    with pytest.raises(ValueError, match=r"one per annotation level.*1 to 2 values"):
        known_truth_check(study.X, tree, np.eye(24), group_sd=(0.1, 0.2, 0.3), **check)
    with pytest.raises(ValueError, match="group_sd must be finite and non-negative"):
        known_truth_check(study.X, tree, np.eye(24), group_sd=(0.1, -0.2), **check)
    with pytest.raises(ValueError, match="feature_sd must be finite"):
        known_truth_check(study.X, tree, np.eye(24), feature_sd=float("nan"), **check)


@pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")
def test_split_half_check_runs_the_shrinkage_model():
    study = simulate(n=60, m=60, p=2, random_seed=4)
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    stage_two = StageTwo(depth=1, draws=200, tune=100, chains=2, sample_options=PYMC_NUTS)
    result = split_half_check(study.Y, study.X, tree, stage_two=stage_two, n_splits=1)
    assert 0.8 < result.loc["mean", "coverage"] <= 1.0
    assert result.loc["mean", "mse_gain"] > 1.0


def test_split_halves_of_the_liver_lipidome_are_calibrated_before_shrinkage(shared_data):
    if not has_files(shared_data, LIVER_FILES):
        pytest.skip("liver lipidome CSVs absent")
    study = read_liver_lipidome(shared_data)
    result = split_half_check(
        study.Y,
        study.X,
        study.hierarchy,
        stage_two=stage_one_posterior,
        n_splits=3,
        random_seed=0,
    )
    # real data, unshrunk: only stage 1's own assumptions are checked
    # (measured 0.928: heavier tails than normal and the t quantile at 38 df)
    assert 0.9 < result.loc["mean", "coverage"] < 0.98
    fit_residual = np.random.default_rng(0).normal(size=(20, 5))
    blended = blended_residual_covariance(fit_residual, 18, 0.2)
    raw = fit_residual.T @ fit_residual / 18
    assert np.allclose(np.diag(blended), np.diag(raw))
    assert np.allclose(blended - np.diag(np.diag(blended)), 0.8 * (raw - np.diag(np.diag(raw))))
    assert isinstance(study.Y, pd.DataFrame)


def test_stage_two_rejects_an_unknown_noise_model():
    with pytest.raises(ValueError, match="noise must be one of"):
        StageTwo(noise="tree")
    with pytest.raises(ValueError, match="effect_scale must be one of"):
        StageTwo(effect_scale="z")


def test_stage_two_in_residual_sd_units_fits_the_standardized_fit_and_scales_back():
    study = simulate(n=60, m=40, p=2, random_seed=5)
    Y = study.Y * np.geomspace(0.2, 5.0, 40)  # features in very different units
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    fit = mlm(Y, study.X)
    settings = {"depth": 1, "sampler": "gibbs", "draws": 200, "tune": 200, "chains": 2}
    covariates = list(study.X.columns)
    summary = StageTwo(effect_scale="residual_sd", **settings)(fit, tree, covariates, 7)
    reference = StageTwo(effect_scale="raw", **settings)(fit.standardized(), tree, covariates, 7)
    sd = fit.residual_sd.to_numpy()
    for name in ("mean", "sd", "lower", "upper"):
        np.testing.assert_allclose(getattr(summary, name), getattr(reference, name) * sd)
    np.testing.assert_array_equal(summary.lfsr, reference.lfsr)
    default = StageTwo(**settings)(fit, tree, covariates, 7)
    np.testing.assert_array_equal(default.mean, summary.mean)  # the default units
    raw = StageTwo(effect_scale="raw", **settings)(fit, tree, covariates, 7)
    assert not np.allclose(raw.mean, summary.mean)  # a different model, not a relabelling


@pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")
def test_structured_noise_restores_coverage_that_independent_noise_loses():
    """Known truth under strong class-shared noise: the package default covers, the research
    model that treats the estimates as independent does not (issue 14)."""
    study = simulate(n=80, m=60, p=2, random_seed=6)
    tree = Hierarchy.from_frame(study.annotations, ["subclass"])
    classes = tree.membership(0)
    covariance = 0.6 * (classes[:, None] == classes[None, :]) + 0.4 * np.eye(60)
    scores = {}
    for noise in ("auto", "independent"):
        stage_two = StageTwo(
            depth=1, noise=noise, draws=300, tune=300, chains=2, sample_options=PYMC_NUTS
        )
        result = known_truth_check(
            study.X, tree, covariance, stage_two=stage_two, n_replicates=4, random_seed=3
        )
        scores[noise] = result.loc["mean"]
    # measured: 0.950 against 0.629 (480 intervals each, correlated within a replicate)
    assert scores["auto"]["coverage"] > 0.9
    assert scores["independent"]["coverage"] < 0.8
    assert scores["auto"]["mse"] < scores["independent"]["mse"]
