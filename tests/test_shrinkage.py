"""ShrinkageModel end to end with NUTS: contract, references, reproducibility, bad input."""

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, loo, mlm, simulate

FAST = {"draws": 500, "tune": 500, "chains": 2, "progressbar": False}


@pytest.fixture(scope="module")
def study():
    return simulate(80, 60, 2, proportions=[0.4, 0.3, 0.2, 0.1], n_superclasses=2, random_seed=3)


@pytest.fixture(scope="module")
def fit(study):
    return mlm(study.Y, study.X, x_intercept=False)


@pytest.fixture(scope="module")
def tree(study):
    return Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])


@pytest.fixture(scope="module")
def idata(fit, tree):
    return ShrinkageModel(fit, tree).sample(random_seed=11, **FAST)


def test_inference_data_contract(idata, fit):
    post = idata.posterior
    assert set(post.data_vars) == {"theta", "mu", "tau", "subclass_mean", "superclass_mean"}
    assert post["theta"].dims == ("chain", "draw", "covariate", "feature")
    assert post["tau"].dims == ("chain", "draw", "covariate", "level")
    assert post["level"].values.tolist() == ["feature", "subclass", "superclass"]
    assert post["subclass_mean"].dims[2:] == ("covariate", "subclass")
    assert post["feature"].values.tolist() == fit.coef.feature.values.tolist()
    assert set(idata.log_likelihood.data_vars) == {"b_marginal"}
    # the default units: each feature's residual SD, which the fit carries
    standardized = fit.standardized()
    np.testing.assert_array_equal(idata.observed_data["b"], standardized.coef)
    np.testing.assert_array_equal(idata.constant_data["se"], standardized.se)
    np.testing.assert_array_equal(idata.constant_data["residual_sd"], fit.residual_sd)
    assert idata.attrs["effect_scale"] == "residual_sd"
    assert idata.constant_data["subclass_index"].dims == ("feature",)
    assert idata.constant_data["superclass_index"].dims == ("subclass",)
    assert "diverging" in idata.sample_stats
    assert idata.attrs["sampler"] == "nuts (nutpie)"
    assert idata.attrs["depth"] == "2" and list(idata.attrs["levels"]) == ["subclass", "superclass"]
    assert idata.attrs["default_log_likelihood"] == "b_marginal"


def test_arviz_works_directly(idata):
    summary = az.summary(idata, var_names=["tau", "mu"])
    assert summary.shape[0] == 2 * 3 + 2
    # a short run (2 × 500 draws); the ≤ 1.01 target at default settings is checked in
    # test_research_simulation.py
    assert float(az.rhat(idata, var_names=["tau", "mu"]).to_array().max()) < 1.02
    assert int(idata.sample_stats["diverging"].sum()) == 0
    axes = az.plot_forest(idata, var_names=["tau"])
    assert len(axes[0].get_yticklabels()) == 6
    marginal = az.loo(idata)
    assert marginal.elpd_loo == loo(idata).elpd_loo
    assert (marginal.pareto_k < 0.7).all()
    assert loo(idata, "conditional").elpd_loo > marginal.elpd_loo


def test_marginal_log_likelihood_is_the_predictive_density(fit, tree):
    """Independent estimates: b_marginal is log N(b; parent mean, se² + τ_w²) per draw."""
    idata = ShrinkageModel(fit, tree, noise="independent").sample(random_seed=11, **FAST)
    post = idata.posterior.isel(chain=0, draw=7)
    parent = post["subclass_mean"].values[:, idata.constant_data["subclass_index"].values]
    sd = np.sqrt(idata.constant_data["se"].values ** 2 + post["tau"].values[:, :1] ** 2)
    expected = stats.norm(parent, sd).logpdf(idata.observed_data["b"].values)
    got = idata.log_likelihood["b_marginal"].isel(chain=0, draw=7).values
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_same_seed_same_draws_and_chains_differ(fit, tree, idata):
    again = ShrinkageModel(fit, tree).sample(random_seed=11, **FAST)
    np.testing.assert_array_equal(again.posterior["theta"], idata.posterior["theta"])
    tau = idata.posterior["tau"].values
    assert not np.array_equal(tau[0], tau[1])


def _eight_schools_reference(y, sigma, mu_sd=5.0, tau_scale=5.0):
    """E[μ], E[τ], E[θ_1] by quadrature over τ of the closed-form conditionals (BDA 5.4)."""

    def conditional(tau):
        var = sigma**2 + tau**2
        precision = 1 / mu_sd**2 + np.sum(1 / var)
        mu_hat = np.sum(y / var) / precision
        cov = np.diag(var) + mu_sd**2
        log_lik = stats.multivariate_normal(np.zeros_like(y), cov).logpdf(y)
        weight = np.exp(log_lik) * stats.halfcauchy(scale=tau_scale).pdf(tau)
        shrink = sigma[0] ** 2 / (sigma[0] ** 2 + tau**2)
        theta1 = shrink * mu_hat + (1 - shrink) * y[0]
        return weight, mu_hat, theta1

    def moment(f):
        return integrate.quad(lambda t: conditional(t)[0] * f(t), 0, np.inf, limit=400)[0]

    norm = moment(lambda t: 1.0)
    return {
        "mu": moment(lambda t: conditional(t)[1]) / norm,
        "tau": moment(lambda t: t) / norm,
        "theta_A": moment(lambda t: conditional(t)[2]) / norm,
    }


def test_nuts_exact_draws_are_draw_given_scales_of_its_scales(fit, tree, idata):
    """θ0, the group means and θ after NUTS: draw_given_scales on its τ, the seed's stream.

    Their normals are drawn in a thread while nutpie samples; they must be those that
    draw_given_scales draws afterwards from the generator spawned from the seed.
    """
    posterior = idata.posterior
    tau = posterior["tau"].transpose("chain", "draw", "covariate", "level").to_numpy()
    rng = np.random.default_rng(np.random.SeedSequence(11).spawn(1)[0])
    drawn = ShrinkageModel(fit, tree).draw_given_scales(tau, rng)
    for name in ("mu", "subclass_mean", "superclass_mean", "theta"):
        np.testing.assert_array_equal(posterior[name].to_numpy(), drawn[name], err_msg=name)


def test_eight_schools_against_quadrature(shared_data):
    schools = pd.read_csv(shared_data / "eight_schools.csv")
    y, sigma = schools["y"].to_numpy(float), schools["sigma"].to_numpy(float)
    estimates = (
        pd.DataFrame([y], index=["coaching"], columns=schools["school"]),
        pd.DataFrame([sigma], index=["coaching"], columns=schools["school"]),
    )
    model = ShrinkageModel(estimates, priors={"mu0": 0.0, "s0": 5.0, "tau_scale": 5.0})
    idata = model.sample(draws=2000, tune=1000, chains=4, random_seed=8, progressbar=False)
    reference = _eight_schools_reference(y, sigma)
    # the literature values for this model: E[μ] ≈ 4.4, E[τ] ≈ 3.6, E[θ_A] ≈ 6.2
    assert reference["mu"] == pytest.approx(4.4, abs=0.1)
    assert reference["tau"] == pytest.approx(3.6, abs=0.1)
    draws = {
        "mu": idata.posterior["mu"].sel(covariate="coaching"),
        "tau": idata.posterior["tau"].sel(covariate="coaching", level="feature"),
        "theta_A": idata.posterior["theta"].sel(covariate="coaching", feature="A"),
    }
    for name, value in draws.items():
        mcse = float(az.mcse(value.to_dataset(name="x"))["x"])
        assert abs(float(value.mean()) - reference[name]) < 4 * mcse, name
    assert int(idata.sample_stats["diverging"].sum()) == 0


def test_no_pooling_matches_the_closed_form():
    b = np.array([[0.5, -1.0, 2.0]])
    se = np.array([[0.5, 1.0, 2.0]])
    model = ShrinkageModel((b, se), depth="none", priors={"mu0": 0.0, "s0": 1.0})
    assert not model.pooled
    idata = model.sample(random_seed=1, **FAST)
    assert set(idata.posterior.data_vars) == {"theta"}
    precision = 1 + 1 / se**2
    expected_mean = (b / se**2) / precision
    theta = idata.posterior["theta"]
    mcse = az.mcse(theta.to_dataset(name="t"))["t"].values
    assert (np.abs(theta.mean(("chain", "draw")).values - expected_mean) < 4 * mcse).all()


def test_bad_input_gets_clear_errors(fit, tree, study):
    with pytest.raises(ValueError, match=r"depth 3 is beyond the annotation levels given \(2"):
        ShrinkageModel(fit, tree, depth=3)
    with pytest.raises(ValueError, match="depth must be 0 or more"):
        ShrinkageModel(fit, tree, depth=-1)
    with pytest.raises(ValueError, match="depth must be an integer or 'none'"):
        ShrinkageModel(fit, tree, depth="all")
    partial = Hierarchy.from_frame(study.annotations.iloc[2:], ["subclass"])
    with pytest.raises(ValueError, match=r"2 feature\(s\) have no annotation.*metabolite_0"):
        ShrinkageModel(fit, partial)
    extra = pd.concat(
        [study.annotations, pd.DataFrame({"subclass": ["s9"], "superclass": ["S9"]}, index=["z"])]
    )
    model = ShrinkageModel(fit, Hierarchy.from_frame(extra, ["subclass", "superclass"]))
    assert model.tree.n_features == 60 and "s9" not in model.tree.groups[0]
    with pytest.raises(ValueError, match="hierarchy must be a Hierarchy"):
        ShrinkageModel(fit, study.annotations)
    with pytest.raises(ValueError, match="unknown prior setting"):
        ShrinkageModel(fit, tree, priors={"sigma": 1})
    with pytest.raises(ValueError, match=r"tau_scale.*3 scale level"):
        ShrinkageModel(fit, tree, priors={"tau_scale": [1.0, 2.0]})
    model = ShrinkageModel(fit, tree)
    with pytest.raises(ValueError, match="unknown sampler 'hmc'"):
        model.sample("hmc")
    with pytest.raises(ValueError, match="unknown nuts_sampler 'stan'"):
        model.sample(nuts_sampler="stan")


def test_notebook_representation(fit, tree):
    model = ShrinkageModel(fit, tree)
    assert repr(model).startswith("ShrinkageModel(2 covariates × 60 features; depth=2")
    assert model.summary_line == (
        f"ShrinkageModel(2 covariates × 60 features; depth=2; {model.tree!r}; correlated noise; "
        "residual-SD units)"
    )
    table = model.describe()
    assert table.index.tolist() == ["feature", "subclass", "superclass"]
    assert table["n_units"].tolist() == [60, 4, 2]
    research = ShrinkageModel(fit, tree, priors="research")
    assert "<table" in research._repr_html_() and "HalfCauchy(1)" in research._repr_html_()
    # without pooling: each θ_j's prior, with its numbers
    unpooled = ShrinkageModel(
        fit, tree, depth="none", priors={"preset": "research", "s0": {"x1": 2.0}}
    )
    assert unpooled.describe()["prior"].tolist() == ["N(0, 1²), N(0, 2²) by covariate"]
    assert ShrinkageModel(fit, tree, depth="none", priors="research").describe()[
        "prior"
    ].tolist() == ["N(0, 1²)"]


def test_the_intercept_is_not_shrunk_unless_asked(study, tree):
    fit = mlm(study.Y, study.X)  # with "(Intercept)"
    assert ShrinkageModel(fit, tree).estimates.covariates.tolist() == ["x0", "x1"]
    every = ShrinkageModel(fit, tree, covariates="all")
    assert every.estimates.covariates.tolist() == ["(Intercept)", "x0", "x1"]
    named = ShrinkageModel(fit, tree, covariates=["(Intercept)", "x1"])
    assert named.estimates.covariates.tolist() == ["(Intercept)", "x1"]
    assert "covariates: x0, x1" in repr(ShrinkageModel(fit, tree))
    # formulaic's and statsmodels' name of the intercept, in a tidy frame
    tidy = fit.to_frame().replace({"covariate": {"(Intercept)": "Intercept"}})
    assert ShrinkageModel(tidy, tree).estimates.covariates.tolist() == ["x0", "x1"]
    only = tidy[tidy["covariate"] == "Intercept"]
    with pytest.raises(ValueError, match="only the intercept"):
        ShrinkageModel(only, tree)
    with pytest.raises(ValueError, match="'all' or None"):
        ShrinkageModel(fit, tree, covariates="x0")


@pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")
def test_compare_depths_leaves_the_intercept_out_like_the_model(study, tree):
    from bayeshier_pymc import compare_depths

    comparison = compare_depths(
        mlm(study.Y, study.X), tree, depths=["none", 0], sampler="gibbs", draws=50, tune=50,
        chains=1, random_seed=1, progressbar=False,
    )  # fmt: skip
    for fit in comparison.fits.values():
        assert fit.posterior["covariate"].to_numpy().tolist() == ["x0", "x1"]
