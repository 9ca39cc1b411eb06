"""Pointwise log-likelihoods: the compiled kernels against scipy, on demand, and with ArviZ."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.inference_data import (
    add_log_likelihood,
    log_likelihood_dataset,
    with_log_likelihood,
)
from bayeshier_pymc.model import group_mean_name

# 2 chains × 80 draws = 160 draws: the kernels split them over two threads
RUN = {"draws": 80, "tune": 40, "chains": 2, "progressbar": False}
pytestmark = pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")


@pytest.fixture(scope="module")
def study() -> tuple[bh.MLMFit, bh.Hierarchy]:
    data = bh.simulate(
        n=60, m=30, p=2, proportions=(0.5, 0.3, 0.2), n_superclasses=2, random_seed=5
    )
    fit = bh.mlm(data.Y, data.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(data.annotations, ["subclass", "superclass"])


@pytest.fixture(scope="module", params=["none", 0, 1, 2])
def gibbs_fit(request, study) -> az.InferenceData:
    fit, tree = study
    # the research model's independent likelihood, whose closed form scipy checks
    model = bh.ShrinkageModel(fit, tree, depth=request.param, noise="independent")
    return model.sample("gibbs", random_seed=2, **RUN)


def _scipy_marginal(idata: az.InferenceData) -> np.ndarray:
    """log N(b; parent mean, se² + τ_w²) draw by draw with scipy (fixed prior without pooling)."""
    b = idata.observed_data["b"].to_numpy()
    se = idata.constant_data["se"].to_numpy()
    post = idata.posterior
    if "mu" not in post:
        priors = json.loads(idata.attrs["priors"])
        mu0, s0 = np.array(priors["mu0"])[:, None], np.array(priors["s0"])[:, None]
        density = stats.norm(mu0, np.sqrt(se**2 + s0**2)).logpdf(b)
        return np.broadcast_to(density, post["theta"].shape)
    levels = list(idata.attrs["levels"])
    if levels:
        index = idata.constant_data[f"{levels[0]}_index"].to_numpy()
        parent = post[group_mean_name(levels[0])].to_numpy()[..., index]
    else:
        parent = post["mu"].to_numpy()[..., None]
    tau_w = post["tau"].to_numpy()[..., :1]
    return stats.norm(parent, np.sqrt(se**2 + tau_w**2)).logpdf(b)


def test_stored_marginal_matches_scipy(gibbs_fit):
    got = gibbs_fit.log_likelihood["b_marginal"]
    assert got.dims == ("chain", "draw", "covariate", "feature")
    assert got.dtype == gibbs_fit.posterior["theta"].dtype
    np.testing.assert_allclose(got, _scipy_marginal(gibbs_fit), rtol=2e-6, atol=2e-6)
    recomputed = log_likelihood_dataset(gibbs_fit, "marginal")["b_marginal"]
    np.testing.assert_allclose(recomputed, got, rtol=2e-6, atol=2e-6)


def test_conditional_on_demand_matches_scipy(gibbs_fit):
    got = log_likelihood_dataset(gibbs_fit, "conditional")["b_conditional"]
    expected = stats.norm(gibbs_fit.posterior["theta"], gibbs_fit.constant_data["se"]).logpdf(
        gibbs_fit.observed_data["b"]
    )
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=2e-6)
    assert got.coords["feature"].values.tolist() == gibbs_fit.posterior["feature"].values.tolist()


def test_nuts_log_likelihood_in_double_precision(study):
    fit, tree = study
    idata = bh.ShrinkageModel(fit, tree, depth=1, noise="independent").sample(
        draws=100, tune=100, chains=2, random_seed=4, progressbar=False
    )
    got = idata.log_likelihood["b_marginal"]
    assert got.dtype == np.float64
    # the density is a sum of terms of order one, so rounding leaves an absolute error of a
    # few ulp of one: values near zero (1e-4 here) differ from scipy's by 2e-16 = 1.6e-12 rel.
    np.testing.assert_allclose(got, _scipy_marginal(idata), rtol=1e-12, atol=1e-14)


def test_engine_draws_do_not_depend_on_the_background_thread(study):
    fit, tree = study
    model = bh.ShrinkageModel(fit, tree)
    alone, threaded = (model.sample("gibbs", random_seed=9, cores=cores, **RUN) for cores in (1, 2))
    for group in ("posterior", "log_likelihood"):
        for name in alone[group].data_vars:
            np.testing.assert_array_equal(alone[group][name], threaded[group][name])


def test_loo_computes_a_missing_log_likelihood_and_leaves_the_fit_alone(study):
    fit, tree = study
    idata = bh.ShrinkageModel(fit, tree).sample("gibbs", random_seed=3, **RUN)
    conditional = bh.loo(idata, "conditional")
    assert set(idata.log_likelihood.data_vars) == {"b_marginal"}
    light = with_log_likelihood(idata, "conditional")
    assert light is not idata and light.posterior is idata.posterior
    assert with_log_likelihood(idata, "marginal") is idata
    assert add_log_likelihood(idata, "conditional") is idata
    assert set(idata.log_likelihood.data_vars) == {"b_marginal", "b_conditional"}
    stored = az.loo(idata, var_name="b_conditional")
    assert stored.elpd_loo == pytest.approx(conditional.elpd_loo, rel=1e-12)
    with pytest.raises(ValueError, match="kind must be"):
        log_likelihood_dataset(idata, "joint")


def test_arviz_compare_needs_no_var_name(study):
    fit, tree = study
    fits = {
        str(depth): bh.ShrinkageModel(fit, tree, depth=depth).sample("gibbs", random_seed=1, **RUN)
        for depth in (1, 2)
    }
    table = az.compare(fits)
    assert set(table.index) == {"1", "2"}
    assert np.isfinite(table["elpd_loo"]).all()


def test_log_likelihood_from_loaded_results(study, tmp_path):
    fit, tree = study
    idata = bh.ShrinkageModel(fit, tree).sample("gibbs", random_seed=6, **RUN)
    path = bh.save_results(tmp_path / "fit.nc", idata, hierarchy=tree)
    loaded = bh.load_results(path).idata
    for kind, name in (("marginal", "b_marginal"), ("conditional", "b_conditional")):
        np.testing.assert_array_equal(
            log_likelihood_dataset(loaded, kind)[name], log_likelihood_dataset(idata, kind)[name]
        )
