"""The units of stage 2: effects exchangeable in each feature's residual SD, by default.

A model of a stage-1 fit runs on ``fit.standardized()`` (its draws are those of that fit) and
carries each feature's residual SD through the InferenceData; the results come back in Y's
units. Where the residual SD is unknown (a tidy frame, arrays, a feature design, a given
TreeNoise) the units are those of the estimates given.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.inference_data import RESIDUAL_SD, problem_from_idata
from bayeshier_pymc.noise import tree_noise
from bayeshier_pymc.persistence import load_results, save_results
from bayeshier_pymc.results import theta_moments

GIBBS = {"draws": 300, "tune": 300, "chains": 2, "progressbar": False}
SCALES = np.geomspace(0.2, 5.0, 60)
"""Features in very different units (as metabolites on their measured scales)."""


@pytest.fixture(scope="module")
def study():
    return bh.simulate(80, 60, 2, proportions=[0.4, 0.3, 0.2, 0.1], random_seed=4)


@pytest.fixture(scope="module")
def fit(study):
    return bh.mlm(study.Y * SCALES, study.X, x_intercept=False)


@pytest.fixture(scope="module")
def tree(study):
    return bh.Hierarchy.from_frame(study.annotations, ["subclass"])


@pytest.fixture(scope="module")
def idata(fit, tree):
    return bh.ShrinkageModel(fit, tree).sample("gibbs", random_seed=3, **GIBBS)


@pytest.fixture(scope="module")
def standardized(fit, tree):
    """The same posterior fitted by hand: the standardized fit in its own units."""
    model = bh.ShrinkageModel(fit.standardized(), tree, effect_scale="raw")
    return model.sample("gibbs", random_seed=3, **GIBBS)


def test_the_default_model_of_a_stage1_fit_is_the_standardized_fit(fit, tree, idata, standardized):
    model = bh.ShrinkageModel(fit, tree)
    np.testing.assert_allclose(model.problem.b, fit.standardized().coef.to_numpy())
    np.testing.assert_allclose(model.problem.residual_sd, fit.residual_sd.to_numpy())
    assert "residual-SD units" in repr(model)
    for name in ("theta", "tau", "mu", "subclass_mean"):
        np.testing.assert_array_equal(idata.posterior[name], standardized.posterior[name])
    assert idata.attrs["effect_scale"] == "residual_sd"
    assert standardized.attrs["effect_scale"] == "raw"
    np.testing.assert_allclose(idata.constant_data[RESIDUAL_SD], fit.residual_sd)


def test_results_are_in_y_units(fit, idata, standardized):
    table = bh.coefficient_table(idata).set_index(["covariate", "feature"])
    reference = bh.coefficient_table(standardized).set_index(["covariate", "feature"])
    stage1 = fit.to_frame().set_index(["covariate", "feature"]).loc[table.index]
    np.testing.assert_allclose(table["estimate"], stage1["estimate"])
    np.testing.assert_allclose(table["se"], stage1["se"])
    sd = fit.residual_sd.to_series().reindex(table.index.get_level_values("feature")).to_numpy()
    for column in ("mean", "sd", "hdi_lower", "hdi_upper"):
        np.testing.assert_allclose(table[column], reference[column] * sd, rtol=1e-6)
    for column in ("lfsr", "qvalue", "called"):
        np.testing.assert_array_equal(table[column], reference[column])
    matrix = bh.coefficient_matrix(idata)
    np.testing.assert_allclose(matrix, bh.coefficient_matrix(standardized) * fit.residual_sd)
    np.testing.assert_allclose(
        theta_moments(idata, in_y_units=False)["mean"], theta_moments(standardized)["mean"]
    )


def test_residual_sd_units_cover_a_truth_exchangeable_in_them_and_raw_units_do_not(
    study, fit, tree, idata
):
    """The truth of ``fit`` is B · σ_j (the study's effects, each feature in its own units).

    The model in Y's units shrinks the noisiest third's large effects towards the quiet
    features' small ones and covers them far less than the default (on seeds 4–6 of this
    design: 0.68, 0.65, 0.55 against 0.85, 0.85, 0.98; over all cells 0.77, 0.83, 0.74 against
    0.87, 0.87, 0.95). Fails if the results are not put back in Y's units (the default then
    covers almost nothing of the noisy features)."""
    truth = study.B * SCALES
    raw = bh.ShrinkageModel(fit, tree, effect_scale="raw").sample("gibbs", random_seed=3, **GIBBS)
    noisiest = np.quantile(SCALES, 2 / 3) <= SCALES
    covered = {name: _covered(fit_, truth) for name, fit_ in (("default", idata), ("raw", raw))}
    assert covered["default"].mean() >= 0.8
    assert covered["default"].mean() > covered["raw"].mean()
    assert covered["default"][:, noisiest].mean() >= covered["raw"][:, noisiest].mean() + 0.1


def _covered(idata, truth) -> np.ndarray:
    """Whether each true θ lies in its 95% interval, (covariate, feature)."""
    summary = bh.coefficient_summary(idata, hdi_prob=0.95)
    truth = truth.sel(covariate=summary["covariate"], feature=summary["feature"])
    return ((summary["hdi_lower"] <= truth) & (truth <= summary["hdi_upper"])).to_numpy()


def test_the_units_survive_a_round_trip(fit, tree, idata, tmp_path):
    problem = problem_from_idata(idata)
    np.testing.assert_allclose(problem.residual_sd, fit.residual_sd.to_numpy())
    again = bh.ShrinkageModel.from_idata(idata).sample("gibbs", random_seed=3, **GIBBS)
    np.testing.assert_array_equal(again.posterior["theta"], idata.posterior["theta"])
    save_results(tmp_path / "fit.nc", idata, hierarchy=tree, fit=fit)
    loaded = load_results(tmp_path / "fit.nc").idata
    pd.testing.assert_frame_equal(bh.coefficient_table(loaded), bh.coefficient_table(idata))


def test_a_fit_without_units_is_in_y_units_and_bad_units_are_named(idata):
    older = idata.copy()
    del older.attrs["effect_scale"]  # written before the choice existed
    assert problem_from_idata(older).residual_sd is None
    bad = idata.copy()
    bad.attrs["effect_scale"] = "z"
    with pytest.raises(ValueError, match=r"attrs\['effect_scale'\] must be one of"):
        problem_from_idata(bad)
    lacking = idata.copy()
    lacking.constant_data = lacking.constant_data.drop_vars(RESIDUAL_SD)
    with pytest.raises(ValueError, match="lacks 'residual_sd'"):
        problem_from_idata(lacking)


def test_estimates_without_a_residual_sd_stay_in_their_units(fit, tree):
    frame = fit.to_frame()
    model = bh.ShrinkageModel(frame, tree)
    assert model.problem.residual_sd is None
    np.testing.assert_allclose(model.problem.b, fit.coef.to_numpy())
    with pytest.raises(ValueError, match="needs a stage-1 fit"):
        bh.ShrinkageModel(frame, tree, effect_scale="residual_sd")
    with pytest.raises(ValueError, match="effect_scale must be one of"):
        bh.ShrinkageModel(fit, tree, effect_scale="z-scores")


def test_a_given_tree_noise_keeps_the_units_it_was_estimated_in(fit, tree):
    noise = tree_noise(fit, tree)
    model = bh.ShrinkageModel(fit, tree, noise=noise)
    assert model.problem.residual_sd is None
    np.testing.assert_allclose(model.problem.b, fit.coef.to_numpy())
    with pytest.raises(ValueError, match="TreeNoise is in the units"):
        bh.ShrinkageModel(fit, tree, noise=noise, effect_scale="residual_sd")


def test_summary_storage_reports_in_y_units(fit, tree, idata):
    summary = bh.ShrinkageModel(fit, tree).sample(
        "gibbs", random_seed=3, storage="summary", **GIBBS
    )
    full, kept = bh.coefficient_summary(idata), bh.coefficient_summary(summary)
    np.testing.assert_allclose(kept["mean"], full["mean"], rtol=1e-5)
    np.testing.assert_allclose(kept["sd"], full["sd"], rtol=1e-4)
    np.testing.assert_allclose(
        bh.coefficient_matrix(summary), bh.coefficient_matrix(idata), rtol=1e-5
    )


def test_predictions_for_new_features_take_their_residual_sd(fit, tree, idata):
    annotations = pd.DataFrame({"subclass": [tree.groups[0][0]]}, index=["new"])
    model = bh.ShrinkageModel(fit, tree)
    standardized = model.predict_new(idata, annotations, random_seed=1)
    assert standardized.predictions.attrs["effect_scale"] == "residual_sd"
    in_y = model.predict_new(idata, annotations, residual_sd=pd.Series({"new": 3.0}), random_seed=1)
    assert in_y.predictions.attrs["effect_scale"] == "raw"
    np.testing.assert_allclose(in_y.predictions["theta"], 3.0 * standardized.predictions["theta"])
    with pytest.raises(ValueError, match="lacks new feature"):
        model.predict_new(idata, annotations, residual_sd=pd.Series({"other": 1.0}))
    with pytest.raises(ValueError, match="finite and positive"):
        model.predict_new(idata, annotations, residual_sd=pd.Series({"new": -1.0}))
    raw_fit = bh.ShrinkageModel(fit, tree, effect_scale="raw")
    raw = raw_fit.sample("gibbs", random_seed=3, **GIBBS)
    with pytest.raises(ValueError, match="this fit is in Y's units"):
        raw_fit.predict_new(raw, annotations, residual_sd=pd.Series({"new": 3.0}))


def test_compare_depths_fits_every_depth_in_the_default_units(fit, tree):
    comparison = bh.compare_depths(fit, tree, sampler="gibbs", random_seed=1, **GIBBS)
    assert {f.attrs["effect_scale"] for f in comparison.fits.values()} == {"residual_sd"}
    raw = bh.compare_depths(
        fit, tree, sampler="gibbs", random_seed=1, effect_scale="raw", depths=[1], **GIBBS
    )
    assert {f.attrs["effect_scale"] for f in raw.fits.values()} == {"raw"}


def test_residual_sds_that_cannot_be_units_are_refused(fit, tree):
    model = bh.ShrinkageModel(fit, tree)
    estimates, problem = model.estimates, model.problem
    with pytest.raises(ValueError, match="finite and positive for every estimated feature"):
        replace(estimates, residual_sd=-estimates.residual_sd)
    with pytest.raises(ValueError, match="one value per feature, in the estimates' order"):
        replace(estimates, residual_sd=estimates.residual_sd[::-1])
    with pytest.raises(ValueError, match="finite and positive for every estimated feature"):
        replace(problem, residual_sd=np.zeros(len(problem.features)))
    with pytest.raises(ValueError, match="one value per feature"):
        replace(problem, residual_sd=np.ones(3))
