"""The fresh-replicate criterion of the depth comparison: its scores and what it recommends."""

from __future__ import annotations

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.depth_comparison import (
    RecommendationRule,
    compare_depths,
    compare_fits,
    replicate_scores,
)
from bayeshier_pymc.noise import tree_noise
from bayeshier_pymc.simulate import ResidualNoise, simulate
from bayeshier_pymc.validation_data import (
    LIVER_FILES,
    QMDIAB_FILES,
    has_files,
    read_liver_lipidome,
    read_qmdiab,
)

GIBBS = {"sampler": "gibbs", "draws": 1000, "tune": 500, "chains": 2, "progressbar": False}
SHARED_NOISE = ResidualNoise(subclass_sd=0.5, superclass_sd=0.4, global_sd=0.3)
"""Residual noise shared within subclasses, superclasses and by all (as docs/model_comparison)."""


def _twelve_subclasses(random_seed: int, noise: ResidualNoise | None, **scales: float):
    """12 subclasses of 20 metabolites in 3 superclasses, one covariate: fit and tree."""
    study = simulate(60, 240, 1, proportions=[1.0] * 12, n_superclasses=3, residuals=noise,
                     random_seed=random_seed, **scales)  # fmt: skip
    fit = bh.mlm(study.Y, study.X, x_intercept=False)
    return study, fit, bh.Hierarchy.from_frame(study.annotations, study.levels)


def test_scores_follow_the_posterior_moments_and_the_noise_tree():
    """Every score from the θ draws' mean and variance and the dense noise covariance."""
    _, fit, tree = _twelve_subclasses(3, SHARED_NOISE, tau_u=0.3, tau_v=0.1, tau_w=0.05)
    model = bh.ShrinkageModel(fit, tree, depth=1, effect_scale="raw")  # references in Y's units
    idata = model.sample("gibbs", draws=500, chains=2, random_seed=1, progressbar=False)
    scores = replicate_scores(idata)
    draws = idata.posterior["theta"].stack(sample=("chain", "draw")).to_numpy().astype(float)
    mean, variance = draws.mean(-1), draws.var(-1, ddof=1)
    noise = tree_noise(fit, tree)
    covariate = fit.coef["covariate"].to_numpy()[0]
    sigma = np.diag(noise.covariance(covariate))[None, :]  # the dense matrix, an independent path
    np.testing.assert_allclose(scores["noise_variance"].to_numpy(), sigma, rtol=1e-10)
    b = fit.coef.to_numpy()
    np.testing.assert_allclose(scores["risk"], (mean - b) ** 2 + 2 * variance - sigma, rtol=1e-8)
    predictive = variance + sigma
    expected = -0.5 * np.log(2 * np.pi * predictive) - ((mean - b) ** 2 + 2 * variance) / (
        2 * predictive
    )
    np.testing.assert_allclose(scores["elpd_rep"], expected, rtol=1e-8)


def test_risk_is_unbiased_for_the_squared_error_of_the_posterior_mean():
    """SURE with the posterior variance as divergence: Σ r_j tracks Σ (μ_j − θ_j)².

    Independent estimates with their true standard errors (the noise model is right). The
    difference of the sums is compared with its spread, sqrt(m Var(r_j − e_j)): a risk
    without the divergence term (2 Var) or with the prior variance in its place misses by
    tens of spreads.
    """
    study, fit, tree = _twelve_subclasses(4, None, tau_u=0.3, tau_v=0.2, tau_w=0.1)
    idata = bh.ShrinkageModel(fit, tree, depth=2, noise="independent").sample(
        "gibbs", draws=1000, chains=2, random_seed=2, progressbar=False
    )
    risk = replicate_scores(idata)["risk"].to_numpy().ravel()
    mean = idata.posterior["theta"].mean(("chain", "draw")).to_numpy().ravel()
    error = (mean - study.B.to_numpy().ravel()) ** 2
    spread = np.sqrt(risk.size * np.var(risk - error))
    assert abs(risk.sum() - error.sum()) < 3 * spread
    assert error.sum() < 0.5 * (fit.se.to_numpy() ** 2).sum()  # pooling matters here


def test_fresh_replicate_finds_the_superclass_level_that_leave_one_out_misses():
    """True depth 2 (superclasses far apart, subclasses close to them), noise shared within
    subclasses and superclasses. Leaving one metabolite out predicts it from its group
    mates' shared noise, so every depth looks alike and the simplest is recommended; a fresh
    replicate shares no noise with b, and only the superclass effects carry over."""
    _, fit, tree = _twelve_subclasses(1, SHARED_NOISE, tau_u=0.6, tau_v=0.05, tau_w=0.05)
    comparison = compare_depths(fit, tree, depths=(0, 1, 2), random_seed=1, **GIBBS)
    assert comparison.recommended == 2
    table = comparison.replicate
    assert table.loc["1", "elpd_diff"] > 2 * table.loc["1", "dse"] + 4
    assert table.loc["2", "relative_mse"] < table.loc["1", "relative_mse"]
    by_loo = compare_fits(comparison.fits, rule=RecommendationRule(criterion="loo"))
    assert by_loo.recommended != 2
    assert "elpd of a fresh replicate" in comparison.verdict
    assert "Fresh replicate:" in comparison.verdict and "rep_diff" in comparison.summary


def test_rule_checks_its_criterion():
    with pytest.raises(ValueError, match="criterion must be"):
        RecommendationRule(criterion="waic")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("files", "reader"), [(QMDIAB_FILES, read_qmdiab), (LIVER_FILES, read_liver_lipidome)]
)
def test_real_data_recommendation_agrees_with_split_half_mse(shared_data, files, reader):
    """On QMDiab and the liver lipidome the split-half coefficient-MSE gain is best at depth 2
    and falls with each level removed (docs/benchmarks/depth_choice.txt, effects in Y's units):
    the fresh replicate recommends depth 2 and its estimated MSE ratios rank the depths the
    same way, where marginal LOO calls the depths close and recommends 0. (With the default
    units see docs/benchmarks/accuracy_goal.txt and test_calibration_goals.py.)"""
    if not has_files(shared_data, files):
        pytest.skip(f"{shared_data} lacks {files}")
    study = reader(shared_data)
    fit = bh.mlm(study.Y, study.X)
    comparison = compare_depths(
        fit, study.hierarchy, depths=(0, 1, 2), random_seed=0, effect_scale="raw", **GIBBS
    )
    assert comparison.recommended == 2
    ratios = comparison.replicate["relative_mse"]
    assert ratios["2"] < ratios["1"] < ratios["0"]
    by_loo = compare_fits(comparison.fits, rule=RecommendationRule(criterion="loo"))
    assert by_loo.recommended == 0
