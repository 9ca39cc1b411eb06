"""The priors: the unit-invariant default, the research preset, overrides, the table, storage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.priors import AUTO_S0_MULTIPLE, MIN_GROUP_DF, Priors

pytestmark = pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")

LEVELS = ("feature", "sub")


@pytest.fixture(scope="module")
def study():
    return bh.simulate(40, 24, 2, proportions=(0.5, 0.3, 0.2), random_seed=3)


@pytest.fixture(scope="module")
def tree(study):
    return bh.Hierarchy.from_frame(study.annotations, ["subclass"])


def _se() -> np.ndarray:
    """Standard errors of two covariates in very different units (medians 0.002 and 5)."""
    return np.array([[0.001, 0.002, 0.004], [4.0, 5.0, 9.0]])


def test_auto_priors_are_scaled_to_each_covariates_median_standard_error():
    priors = Priors.resolve(None, LEVELS, ["age", "sex"], _se())
    np.testing.assert_array_equal(priors.typical_se, [0.002, 5.0])
    np.testing.assert_array_equal(priors.mu0, [0.0, 0.0])
    np.testing.assert_allclose(priors.s0, AUTO_S0_MULTIPLE * np.array([0.002, 5.0]))
    np.testing.assert_allclose(priors.tau_scale, [[0.002, 0.002], [5.0, 5.0]])
    assert priors.preset == "auto" and Priors.resolve("auto", LEVELS, ["a", "b"], _se()).preset


def test_research_preset_gives_the_research_codes_fixed_priors():
    priors = Priors.resolve("research", LEVELS, ["age", "sex"], _se())
    np.testing.assert_array_equal(priors.mu0, [0.0, 0.0])
    np.testing.assert_array_equal(priors.s0, [1.0, 1.0])
    np.testing.assert_array_equal(priors.tau_scale, np.ones((2, 2)))


def test_settings_override_the_preset_per_covariate_and_level():
    settings = {"mu0": {"sex": 0.5}, "s0": [2.0, 3.0], "tau_scale": {"sub": 0.7}}
    priors = Priors.resolve(settings, LEVELS, ["age", "sex"], _se())
    np.testing.assert_array_equal(priors.mu0, [0.0, 0.5])
    np.testing.assert_array_equal(priors.s0, [2.0, 3.0])
    np.testing.assert_allclose(priors.tau_scale, [[0.002, 0.7], [5.0, 0.7]])
    table = [[0.1, 0.2], [0.3, 0.4]]
    given = Priors.resolve({"preset": "research", "tau_scale": table}, LEVELS, ["a", "b"], _se())
    np.testing.assert_array_equal(given.tau_scale, table)
    np.testing.assert_array_equal(given.s0, [1.0, 1.0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("flat", r"preset must be one of \('auto', 'research'\), got 'flat'"),
        ({"mu0": {"weight": 1.0}}, r"priors\['mu0'\] names unknown covariate\(s\) \['weight'\]"),
        ({"s0": [1.0, 2.0, 3.0]}, r"priors\['s0'\] has 3 entries but the model has 2 covariate"),
        ({"tau_scale": np.ones((3, 2))}, r"priors\['tau_scale'\] has 6 entries but the model"),
        ({"s0": {"sex": -1.0}}, r"priors\['s0'\] must be a positive number"),
        ({"group_prior": "laplace"}, r"priors\['group_prior'\] must be one of \('normal', "),
        ({"group_prior": "student_t", "group_df": 0.0}, r"priors\['group_df'\] must be a posit"),
        ({"group_df": "three"}, r"priors\['group_df'\] must be a number"),
    ],
)
def test_bad_priors_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        Priors.resolve(settings, LEVELS, ["age", "sex"], _se())


def test_priors_print_as_a_table_of_covariates_by_parameter(study, tree):
    model = bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree)
    table = model.priors.to_frame()
    assert table.index.tolist() == ["x0", "x1"]
    assert table.columns.tolist() == [
        "typical_se",
        "mu0",
        "s0",
        "tau_scale[feature]",
        "tau_scale[subclass]",
    ]
    np.testing.assert_allclose(table["typical_se"], np.median(model.problem.se, axis=1))
    assert "tau_scale[subclass]" in repr(model.priors) and "preset 'auto'" in repr(model)
    assert "<table" in model.priors._repr_html_()


def test_priors_are_stored_in_the_fit_and_read_back(study, tree):
    model = bh.ShrinkageModel(
        bh.mlm(study.Y, study.X), tree, priors={"tau_scale": {"subclass": 2.0}}
    )
    idata = model.sample("gibbs", draws=20, tune=20, chains=1, random_seed=1, progressbar=False)
    stored = json.loads(idata.attrs["priors"])
    assert stored["preset"] == "auto" and stored["covariates"] == ["x0", "x1"]
    again = bh.ShrinkageModel.from_idata(idata).priors
    for name in ("mu0", "s0", "tau_scale", "typical_se"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model.priors, name))
    # a fit stored before the per-covariate priors holds settings over the research priors
    idata.attrs["priors"] = json.dumps({"mu0": 0.0, "s0": 1.0, "tau_scale": {"feature": 0.5}})
    old = bh.ShrinkageModel.from_idata(idata).priors
    np.testing.assert_array_equal(old.tau_scale, [[0.5, 1.0], [0.5, 1.0]])


def test_the_models_tau_prior_is_half_cauchy_with_each_covariates_scale(study, tree):
    model = bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, noise="independent")
    pymc_model = model.build("centered")
    logp = pymc_model.compile_logp(vars=[pymc_model["tau"]], jacobian=False)
    tau = np.array([[0.1, 0.3], [0.2, 0.05]])
    point = pymc_model.initial_point()
    point["tau_log__"] = np.log(tau)
    expected = stats.halfcauchy(scale=model.priors.tau_scale).logpdf(tau).sum()
    np.testing.assert_allclose(logp(point), expected, rtol=1e-8)


def test_prior_draws_follow_each_covariates_priors(study, tree):
    fit = bh.mlm(study.Y, study.X)
    scaled = bh.mlm(study.Y, study.X.assign(x1=study.X["x1"] * 1000.0))
    model = bh.ShrinkageModel(scaled, tree)
    prior = model.sample_prior_predictive(4000, random_seed=2).prior
    median_tau = prior["tau"].median(("chain", "draw")).to_numpy()
    # HalfCauchy(A) has median A; the sample median's sd is about π A / (2 √n) ≈ 0.025 A
    np.testing.assert_allclose(median_tau, model.priors.tau_scale, rtol=0.1)
    sd_mu = prior["mu"].std(("chain", "draw")).to_numpy()
    np.testing.assert_allclose(sd_mu, model.priors.s0, rtol=0.1)
    assert model.priors.s0[1] == pytest.approx(
        bh.ShrinkageModel(fit, tree).priors.s0[1] / 1000.0, rel=1e-12
    )


@pytest.mark.parametrize("sampler", ["gibbs", "gibbs_step"])
def test_rescaling_a_covariate_rescales_the_posterior_exactly(study, tree, sampler):
    """X[:, 1] × 1000: θ of that covariate / 1000, the same lfsr, the other covariate unchanged."""
    options = {"draws": 100, "tune": 100, "chains": 2, "random_seed": 5, "progressbar": False}
    noise = "auto"  # correlated noise from the residuals, the engine's collapsed scheme
    if sampler == "gibbs_step":
        options.update(scheme="conjugate", backend="pymc", cores=1)
        noise = "independent"

    def fit(X: pd.DataFrame):
        model = bh.ShrinkageModel(bh.mlm(study.Y, X), tree, noise=noise)
        return model.sample("gibbs", **options)

    before = fit(study.X)
    after = fit(study.X.assign(x1=study.X["x1"] * 1000.0))
    theta_before, theta_after = before.posterior["theta"], after.posterior["theta"]
    np.testing.assert_allclose(
        theta_after.sel(covariate="x1"), theta_before.sel(covariate="x1") / 1000.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        theta_after.sel(covariate="x0"), theta_before.sel(covariate="x0"), rtol=1e-6
    )
    lfsr = [bh.coefficient_table(idata)["lfsr"].to_numpy() for idata in (before, after)]
    np.testing.assert_array_equal(*lfsr)


def test_fixed_priors_are_not_invariant_to_units(study, tree):
    """The contrast: under the research priors the same rescaling changes the posterior."""
    options = {"draws": 100, "tune": 100, "chains": 2, "random_seed": 5, "progressbar": False}

    def fit(X: pd.DataFrame):
        model = bh.ShrinkageModel(bh.mlm(study.Y, X), tree, noise="independent", priors="research")
        return model.sample("gibbs", **options).posterior["theta"].sel(covariate="x1")

    scaled = fit(study.X.assign(x1=study.X["x1"] * 1000.0)) * 1000.0
    assert not np.allclose(scaled, fit(study.X), rtol=1e-2)


def _sensitivity_script():
    """The docs' prior-sensitivity example, imported from docs/examples."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "examples" / "prior_sensitivity.py"
    spec = importlib.util.spec_from_file_location("prior_sensitivity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path.parents[1] / "_static" / "prior_sensitivity.md"


def test_the_docs_prior_sensitivity_example_runs_and_matches_the_committed_table(tmp_path):
    script, committed = _sensitivity_script()
    table = script.prior_sensitivity(tmp_path, draws=30, tune=30)
    assert len(table) == 3 * 3 * len(script.FACTORS)  # covariates × levels × prior scales
    assert (tmp_path / "prior_sensitivity.png").stat().st_size > 10_000
    written = (tmp_path / "prior_sensitivity.md").read_text(encoding="utf-8").splitlines()
    # the committed table was written by the script from the current defaults
    assert committed.read_text(encoding="utf-8").splitlines()[2] == written[2].replace(
        "30 draws", "1000 draws"
    )


@pytest.mark.parametrize("scheme", ["collapsed", "conjugate"])
def test_the_engine_gives_every_covariate_its_own_priors(scheme):
    """The same estimates twice, priors 100× apart: each covariate's draws match the exact
    posterior (quadrature) under its own priors, not the other's."""
    from tests.test_gibbs_engine import Z_LIMIT, _exact_posterior_means, _model, _summaries

    base = _model(depth=1).estimates
    b = np.repeat(base.estimate.to_numpy()[:1], 2, axis=0)
    se = np.repeat(base.se.to_numpy()[:1], 2, axis=0)
    labels = {"index": ["narrow", "wide"], "columns": base.features}
    estimates = (pd.DataFrame(b, **labels), pd.DataFrame(se, **labels))
    tree = _model(depth=1).tree
    priors = {"s0": [0.05, 5.0], "tau_scale": [[0.002, 0.002], [2.0, 2.0]]}
    model = bh.ShrinkageModel(estimates, tree, priors=priors, noise="independent")
    idata = model.sample(
        "gibbs", draws=2000, tune=500, chains=2, random_seed=3, progressbar=False, scheme=scheme
    )
    means = []
    for covariate in range(2):
        exact_mean, _ = _exact_posterior_means(model, covariate, [0])
        tau = idata.posterior["tau"][:, :, covariate]
        means.append(exact_mean["tau_v"])
        for name, values in {"tau_w": tau[..., 0], "tau_v": tau[..., 1]}.items():
            summary = _summaries(values.to_numpy()[..., None].astype(float))
            z = (summary["mean"][0] - exact_mean[name]) / summary["mcse_mean"][0]
            assert abs(z) < Z_LIMIT, (covariate, name, z)
    assert means[1] > 2 * means[0]  # the priors matter here: a mix-up could not pass


def test_another_fits_priors_keep_their_typical_se():
    """Priors passed on to data in other units keep the s̄ their values were scaled by."""
    source = Priors.resolve(None, LEVELS, ["age", "sex"], _se())
    reused = Priors.resolve(source, ("feature",), ["sex"], 100.0 * _se()[1:])
    np.testing.assert_array_equal(reused.typical_se, [5.0])
    np.testing.assert_allclose(reused.s0, AUTO_S0_MULTIPLE * reused.typical_se)
    np.testing.assert_allclose(reused.tau_scale, [[5.0]])


@pytest.mark.parametrize("group_df", [1e-3, 0.09])
def test_a_group_df_whose_prior_draws_overflow_is_refused(group_df):
    with pytest.raises(
        ValueError, match=r"priors\['group_df'\] must be a positive number in \[0.1,"
    ):
        Priors.resolve(
            {"group_prior": "student_t", "group_df": group_df}, LEVELS, ["age", "sex"], _se()
        )


def test_prior_local_variances_are_finite_at_the_smallest_group_df(rng):
    """At ν = MIN_GROUP_DF a draw is infinite with probability about exp(-744 ν/2) = 7e-17."""
    priors = Priors.resolve(
        {"group_prior": "student_t", "group_df": MIN_GROUP_DF}, LEVELS, ["age", "sex"], _se()
    )
    local_variances = priors.draw_local_variances((1_000_000,), rng)
    assert np.isfinite(local_variances).all() and local_variances.min() > 0


def test_the_group_prior_is_normal_by_default_and_kept_through_storage_and_restriction():
    default = Priors.resolve(None, LEVELS, ["age", "sex"], _se())
    assert default.group_prior == "normal" and not default.heavy_tailed
    assert "group effects" not in default.describe()
    chosen = Priors.resolve(
        {"group_prior": "student_t", "group_df": 5}, LEVELS, ["age", "sex"], _se()
    )
    assert chosen.heavy_tailed and chosen.group_df == 5.0
    assert "Student-t with 5 df" in chosen.describe()
    again = Priors.from_json(chosen.to_json(), LEVELS, ["age", "sex"], _se())
    assert (again.group_prior, again.group_df) == ("student_t", 5.0)
    restricted = Priors.resolve(chosen, ("feature",), ["sex"], _se()[1:])
    assert (restricted.group_prior, restricted.group_df) == ("student_t", 5.0)
    horseshoe = Priors.resolve({"group_prior": "horseshoe"}, LEVELS, ["age", "sex"], _se())
    assert "horseshoe" in horseshoe.describe()
    # depth 0: no group effects, so no group prior to describe
    flat = Priors.resolve({"group_prior": "horseshoe"}, ("feature",), ["age", "sex"], _se())
    assert flat.group_prior == "horseshoe" and "group effects" not in flat.describe()
