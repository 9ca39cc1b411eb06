"""Missing (covariate, feature) cells in stage 2: the rule, the exact posterior, every sampler.

A missing cell leaves the likelihood: the observed cells' posterior is Gaussian conditioning
on the observed subset (checked against the dense reference), and a missing cell's θ gets its
posterior from the tree.
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Estimates, ShrinkageModel, _threads, log_likelihood
from bayeshier_pymc.gaussian_tree import NodeNoise, leave_one_out_normal
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import OBSERVATION, problem_from_idata
from bayeshier_pymc.log_likelihood import leave_one_out
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.sampling import draw_given_scales
from tests.dense_gaussian import (
    dense_posterior,
    leave_one_out_log_predictive,
    tree_noise_covariance,
)

MU0, S0 = 0.3, 1.4
FEATURES = pd.Index([f"f{j}" for j in range(9)], name="feature")
# three groups of three under two supergroups; group g1 is missing entirely in covariate 0
SUB = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
SUPER = np.array([0, 0, 1])
MISSING = np.zeros((2, 9), dtype=bool)
MISSING[0, [3, 4, 5, 7]] = True
MISSING[1, [0, 8]] = True


def _hierarchy() -> Hierarchy:
    return Hierarchy(
        FEATURES,
        ("sub", "super"),
        (pd.Index(["g0", "g1", "g2"], name="sub"), pd.Index(["s0", "s1"], name="super")),
        (SUB, SUPER),
    )


def _problem(depth: int | str, correlated: bool, seed: int = 0) -> ShrinkageProblem:
    rng = np.random.default_rng(seed)
    full = _hierarchy()
    b = rng.normal(MU0, 1.5, (2, 9))
    se = rng.uniform(0.4, 1.0, (2, 9))
    b[MISSING], se[MISSING] = np.nan, np.nan
    tree = None if depth == "none" else full.truncate(depth)
    levels = ("feature", *(tree.levels if tree is not None else ()))
    parts = {}
    if correlated:
        own = rng.uniform(0.1, 1.0, (2, 9))
        noise = NodeNoise(
            (rng.uniform(0, 0.6, (2, 3)), rng.uniform(0, 0.6, (2, 2))), np.array([0.2, 0.4])
        )
        parts = {"noise_tree": full, "noise": noise, "own_variance": own}
    return ShrinkageProblem(
        b=b,
        se=se,
        covariates=pd.Index(["x", "z"], name="covariate"),
        features=FEATURES,
        tree=tree,
        priors=Priors.resolve(
            {"mu0": MU0, "s0": S0}, levels, pd.Index(["x", "z"], name="covariate"), se
        ),
        depth=depth,  # type: ignore[arg-type]
        **parts,
    )


def _dense_noise(problem: ShrinkageProblem, c: int) -> np.ndarray:
    if problem.noise is None:
        return np.diag(problem.se[c] ** 2)
    return tree_noise_covariance(_hierarchy(), problem.own_variance[c], problem.noise.row(c))


# --- the rule -----------------------------------------------------------------------------


def test_every_form_of_a_missing_cell_becomes_one_mask():
    b = np.array([[1.0, np.nan, 2.0, 3.0], [np.nan, 0.1, 0.2, 0.3]])
    se = np.array([[0.5, np.nan, np.inf, np.nan], [np.inf, 0.3, 0.4, 0.5]])
    estimates = Estimates.from_any((b, se))
    np.testing.assert_array_equal(
        estimates.missing.to_numpy(), [[False, True, True, True], [True, False, False, False]]
    )
    # canonical: NaN in both
    assert np.isnan(estimates.estimate.to_numpy()[estimates.missing.to_numpy()]).all()
    assert np.isnan(estimates.se.to_numpy()[estimates.missing.to_numpy()]).all()
    # a tidy frame: an absent (covariate, feature) row is a missing cell; the round trip
    frame = estimates.to_frame().dropna()
    again = Estimates.from_any(frame)
    np.testing.assert_array_equal(again.missing.to_numpy(), estimates.missing.to_numpy())


@pytest.mark.parametrize(
    ("b", "se", "message"),
    [
        ([[np.nan, 1.0]], [[0.5, 0.5]], "NaN estimate"),
        ([[np.inf, 1.0]], [[0.5, 0.5]], "infinite estimate"),
        ([[1.0, 1.0]], [[-np.inf, 0.5]], "-inf"),
        ([[1.0, 1.0]], [[-0.5, 0.5]], "strictly positive"),
        ([[np.nan, np.nan], [1.0, 2.0]], [[np.nan, np.inf], [1.0, 1.0]], "every cell missing"),
    ],
)
def test_meaningless_missing_cells_are_refused(b, se, message):
    with pytest.raises(ValueError, match=message):
        Estimates.from_any((np.array(b), np.array(se)))


# --- the algebra: exact conditioning on the observed subset --------------------------------


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_draws_given_tau_are_the_dense_posterior_of_the_observed_cells(depth, correlated):
    """θ (observed and missing cells), group means and θ0 given τ: dense conditioning."""
    problem = _problem(depth, correlated)
    tau = np.array([[0.7, 0.5, 0.9][: depth + 1], [0.4, 1.1, 0.6][: depth + 1]])
    n_draws = 60_000
    draws = draw_given_scales(
        problem, np.broadcast_to(tau, (1, n_draws, *tau.shape)), np.random.default_rng(3)
    )
    for c in range(2):
        observed = ~problem.missing[c]
        expected = dense_posterior(
            np.nan_to_num(problem.b[c]),
            _dense_noise(problem, c),
            tau[c],
            problem.tree,
            MU0,
            S0,
            observed=observed,
        )
        parts = [("mu", draws["mu"][0, :, c, None]), ("theta", draws["theta"][0, :, c])]
        parts += [(level, draws[f"{level}_mean"][0, :, c]) for level in problem.levels]
        for name, values in parts:
            mean, cov = expected.part(name)
            sd = np.sqrt(np.diag(cov))
            np.testing.assert_array_less(
                np.abs(values.mean(axis=0) - mean), 4.5 * sd / np.sqrt(n_draws)
            )
            np.testing.assert_allclose(values.var(axis=0), sd**2, rtol=6 * np.sqrt(2 / n_draws))


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("depth", [0, 2])
def test_leave_one_out_of_the_observed_cells_is_the_dense_one(depth, correlated):
    """log p(b_j | b_−j, τ) over the observed cells only: the subset's non-factorised LOO."""
    problem = _problem(depth, correlated)
    tau = np.array([[0.7, 0.5, 0.9][: depth + 1], [0.4, 1.1, 0.6][: depth + 1]])
    for c in range(2):
        observed = ~problem.missing[c]
        noise = problem.noise.row(c) if problem.noise is not None else None
        mean, variance = leave_one_out_normal(
            problem.algebra_b[c],
            problem.var_b[c],
            problem.algebra_scales(tau[c]),
            problem.index,
            MU0,
            S0,
            noise,
        )
        got = -0.5 * (np.log(2 * np.pi * variance) + (problem.algebra_b[c] - mean) ** 2 / variance)
        truncated = _hierarchy().truncate(depth)
        dense_noise = _dense_noise(problem, c)[np.ix_(observed, observed)]
        sub = Hierarchy(
            FEATURES[observed],
            truncated.levels,
            truncated.groups,
            (SUB[observed], SUPER)[:depth] if depth else (),
        )
        want = leave_one_out_log_predictive(
            problem.b[c][observed], dense_noise, tau[c], sub, MU0, S0
        )
        np.testing.assert_allclose(got[observed], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize("depth", [0, 2, "none"])
def test_leave_one_out_pass_is_the_reference_draw_by_draw(depth, correlated):
    """The compiled pass: log p(b_j | b_−j, τ) and its replicates, draw by draw.

    Against the NumPy reference's moments for every draw's scales (a fixed N(mu0, s² + s0²)
    for independent estimates without pooling), the replicates from the generator's normals
    in the order covariate, chain, draw, feature; two draws repeat their scales.
    """
    problem = _problem(depth, correlated)
    lead = (2, 6)
    rng = np.random.default_rng(3)
    tau = None if depth == "none" else rng.uniform(0.05, 1.5, (*lead, 2, depth + 1))
    if tau is not None:
        tau[:, 3] = tau[:, 2]
    log_density, replicates = leave_one_out(problem, tau, lead=lead, rng=np.random.default_rng(4))
    assert replicates is not None
    normals = np.random.default_rng(4).standard_normal((2, *lead, 9))  # covariate first
    b, var_b = problem.algebra_b, problem.var_b
    for c in range(2):
        noise = problem.noise.row(c) if problem.noise is not None else None
        if depth != "none":
            mean, variance = leave_one_out_normal(
                b[c], var_b[c], problem.algebra_scales(tau[:, :, c]), problem.index, MU0, S0, noise
            )
        elif correlated:
            scales, top_sd = problem.unpooled_algebra()
            mean, variance = leave_one_out_normal(
                b[c], var_b[c], scales[c], problem.index, MU0, top_sd, noise
            )
        else:
            mean, variance = np.full(9, MU0), var_b[c] + S0**2
        expected = -0.5 * (np.log(2 * np.pi * variance) + (b[c] - mean) ** 2 / variance)
        np.testing.assert_allclose(
            log_density[:, :, c], np.broadcast_to(expected, (*lead, 9)), rtol=1e-10
        )
        np.testing.assert_allclose(
            replicates[:, :, c], mean + np.sqrt(variance) * normals[c], rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("correlated", [False, True])
def test_leave_one_out_pass_is_the_same_in_chunks_and_threads(monkeypatch, correlated):
    """Several chunks of draws per chain, each split over threads: the same numbers, bitwise.

    Against one chunk per chain in one thread, in float32 (the stores' type of the Gibbs
    sampler's fits) and float64; every draw has its own scales.
    """
    problem = _problem(2, correlated)
    lead = (2, 300)
    tau = np.random.default_rng(3).uniform(0.05, 1.5, (*lead, 2, 3))
    monkeypatch.setattr(_threads, "cpu_count", lambda: 1)
    assert len(list(log_likelihood.chunks(lead, 9))) == 2
    whole = {
        dtype: leave_one_out(problem, tau, lead=lead, dtype=dtype, rng=np.random.default_rng(4))
        for dtype in (np.float32, np.float64)
    }
    monkeypatch.setattr(log_likelihood, "CHUNK_VALUES", 1110)  # 123 draws of 9 features
    monkeypatch.setattr(log_likelihood, "_MIN_DRAWS_PER_THREAD", 4)
    monkeypatch.setattr(_threads, "cpu_count", lambda: 3)
    sizes = [draws.stop - draws.start for _, draws in log_likelihood.chunks(lead, 9)]
    assert sizes == [123, 123, 54] * 2
    assert len(log_likelihood._parts(54)) == 3
    for dtype, want in whole.items():
        got = leave_one_out(problem, tau, lead=lead, dtype=dtype, rng=np.random.default_rng(4))
        for got_values, want_values in zip(got, want, strict=True):
            assert got_values is not None and got_values.dtype == dtype
            np.testing.assert_array_equal(got_values, want_values)


def test_the_marginal_of_the_filled_tree_is_the_observed_marginal_plus_a_constant():
    """The collapsed model's log p(b | τ) differs from the observed cells' by a constant in τ."""
    from bayeshier_pymc.gaussian_tree import upward_pass

    problem = _problem(2, correlated=True)
    values = []
    for tau in ([0.7, 0.5, 0.9], [0.1, 2.0, 0.3]):
        c = 0
        got = upward_pass(
            problem.algebra_b[c],
            problem.var_b[c],
            np.array(tau),
            problem.index,
            MU0,
            S0,
            noise=problem.noise.row(c),
        ).log_marginal
        observed = ~problem.missing[c]
        want = dense_posterior(
            np.nan_to_num(problem.b[c]),
            _dense_noise(problem, c),
            np.array(tau),
            problem.tree,
            MU0,
            S0,
            observed=observed,
        ).log_marginal
        values.append(float(got) - want)
    assert abs(values[0] - values[1]) < 1e-8


# --- every sampler, derived quantities -------------------------------------------------------


def _model(noise: str, depth: int | str = 2) -> ShrinkageModel:
    problem = _problem(2, correlated=False, seed=5)
    labels = {"index": problem.covariates, "columns": FEATURES}
    estimates = (pd.DataFrame(problem.b, **labels), pd.DataFrame(problem.se, **labels))
    if noise == "independent":
        return ShrinkageModel(estimates, _hierarchy(), depth=depth, noise="independent")
    parts = _problem(2, correlated=True, seed=5)
    model = ShrinkageModel(estimates, _hierarchy(), depth=depth, noise="independent")
    # the same estimates with tree-structured noise, through the problem's constructor
    model.problem = ShrinkageProblem(
        b=parts.b,
        se=parts.se,
        covariates=parts.covariates,
        features=FEATURES,
        tree=model.problem.tree,
        priors=model.problem.priors,
        depth=model.problem.depth,
        noise_tree=parts.noise_tree,
        noise=parts.noise,
        own_variance=parts.own_variance,
    )
    return model


def _z_of_means(a: az.InferenceData, b: az.InferenceData, name: str) -> np.ndarray:
    def moments(idata: az.InferenceData) -> tuple[np.ndarray, np.ndarray]:
        values = idata.posterior[name]
        ess = az.ess(idata, var_names=[name])[name].to_numpy()
        return values.mean(("chain", "draw")).to_numpy(), values.var(
            ("chain", "draw")
        ).to_numpy() / ess

    (mean_a, var_a), (mean_b, var_b) = moments(a), moments(b)
    return (mean_a - mean_b) / np.sqrt(var_a + var_b)


@pytest.mark.slow
@pytest.mark.parametrize("noise", ["independent", "tree"])
def test_gibbs_engine_and_collapsed_nuts_agree_with_missing_cells(noise):
    model = _model(noise)
    options = {"draws": 500, "tune": 300, "chains": 2, "random_seed": 4, "progressbar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = model.sample("nuts", **options)
        gibbs = model.sample("gibbs", **options)
    for name in ("theta", "mu", "sub_mean"):
        z = _z_of_means(nuts, gibbs, name)
        assert np.all(np.abs(z) < 4.5), (name, z)
    # the missing cells' θ are not stuck at their stand-in estimate 0
    theta = gibbs.posterior["theta"].mean(("chain", "draw")).to_numpy()
    assert np.isfinite(theta).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sampler", "options"),
    [("nuts", {"parameterization": "centered"}), ("gibbs", {"backend": "pymc"})],
)
@pytest.mark.parametrize("noise", ["independent", "tree"])
def test_the_full_model_and_the_pymc_step_agree_with_the_engine(sampler, options, noise):
    model = _model(noise)
    settings = {"draws": 400, "tune": 400, "chains": 2, "random_seed": 2, "progressbar": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = model.sample("gibbs", **settings)
        other = model.sample(sampler, cores=1, **settings, **options)
    z = _z_of_means(engine, other, "theta")
    assert np.all(np.abs(z) < 4.5), z


@pytest.fixture(scope="module")
def fit() -> az.InferenceData:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _model("tree").sample(
            "gibbs", draws=200, tune=200, chains=2, random_seed=1, progressbar=False
        )


def test_loo_and_the_predictive_checks_see_the_observed_cells_only(fit):
    n_observed = int((~MISSING).sum())
    for group in ("log_likelihood", "observed_data", "posterior_predictive"):
        dataset = fit[group]
        assert dataset.sizes[OBSERVATION] == n_observed, group
        assert np.isfinite(next(iter(dataset.data_vars.values())).to_numpy()).all(), group
    loo = az.loo(fit, pointwise=True)
    assert loo.n_data_points == n_observed
    # the elpd is the sum of the observed cells' PSIS terms, which the tree computes exactly
    problem = problem_from_idata(fit)
    tau = fit.posterior["tau"].transpose("chain", "draw", "covariate", "level").to_numpy()
    exact = leave_one_out(problem, tau, lead=tau.shape[:2])[0][..., ~problem.missing]
    np.testing.assert_allclose(
        fit.log_likelihood["b_marginal"].to_numpy(), exact, rtol=1e-5, atol=1e-6
    )
    pit = az.loo_pit(fit, y="b")
    assert pit.shape == (n_observed,) and np.all((pit >= 0) & (pit <= 1))
    import bayeshier_pymc as bh

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bh.loo(fit, "conditional").n_data_points == n_observed


def test_results_and_persistence_keep_the_missing_cells(fit, tmp_path):
    import bayeshier_pymc as bh

    table = bh.coefficient_table(fit)
    missing = table.set_index(["covariate", "feature"]).loc[("x", "f3")]
    assert np.isnan(missing["estimate"]) and np.isnan(missing["se"])
    assert np.isfinite(missing["mean"])
    path = tmp_path / "fit.nc"
    bh.save_results(path, fit)
    loaded = bh.load_results(path).idata
    np.testing.assert_array_equal(problem_from_idata(loaded).missing, MISSING)


def test_without_pooling_a_missing_theta_is_drawn_from_its_prior():
    model = _model("independent", depth="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = model.sample("gibbs", draws=2000, chains=2, random_seed=3, progressbar=False)
    theta = idata.posterior["theta"].to_numpy()[..., MISSING]
    priors = model.problem.priors
    rows = np.nonzero(MISSING)[0]  # each missing cell's covariate
    mu0, s0 = priors.mu0[rows], priors.s0[rows]
    n = theta.shape[0] * theta.shape[1]
    np.testing.assert_array_less(np.abs(theta.mean(axis=(0, 1)) - mu0), 4.5 * s0 / np.sqrt(n))
    np.testing.assert_allclose(theta.std(axis=(0, 1)), s0, rtol=0.1)


@pytest.mark.parametrize("correlated", [False, True])
@pytest.mark.parametrize(
    ("depth", "unit_level", "target"), [(2, 0, 1), (2, 1, 1), (1, 1, 2), (0, 0, 1)]
)
def test_group_loo_scores_each_groups_observed_estimates_given_the_other_observed_ones(
    correlated, depth, unit_level, target
):
    """log p(b_G,obs | b_−G,obs, τ) for groups with missing members (g1 of covariate 0 has
    none observed: its value is 0, the empty predictive)."""
    from scipy import stats

    from bayeshier_pymc.log_likelihood import held_out_predictive
    from tests.dense_gaussian import marginal_covariance

    problem = _problem(depth, correlated)
    tau = np.array([[0.7, 0.5, 0.9][: depth + 1], [0.4, 1.1, 0.6][: depth + 1]])
    full = _hierarchy()
    to_target = SUB if target == 1 else SUPER[SUB]  # each feature's held-out group
    # each held-out unit's group: features (level 0) or first-level groups (level 1)
    unit_group = to_target if unit_level == 0 else (np.arange(3) if target == 1 else SUPER)
    got = held_out_predictive(problem, tau[None, None], unit_level, unit_group, lead=(1, 1))[0, 0]
    for c in range(2):
        observed = ~problem.missing[c]
        cov = marginal_covariance(_dense_noise(problem, c), tau[c], full.truncate(depth), S0)
        for group in range(int(unit_group.max()) + 1):
            held = (to_target == group) & observed
            kept = (to_target != group) & observed
            if not held.any():
                assert abs(got[c, group]) < 1e-8
                continue
            gain = np.linalg.solve(cov[np.ix_(kept, kept)], cov[np.ix_(kept, held)]).T
            mean = MU0 + gain @ (problem.b[c][kept] - MU0)
            conditional = cov[np.ix_(held, held)] - gain @ cov[np.ix_(kept, held)]
            want = stats.multivariate_normal(mean, conditional).logpdf(problem.b[c][held])
            np.testing.assert_allclose(got[c, group], want, rtol=1e-8, atol=1e-8)


def test_group_loo_of_a_fit_runs_over_the_groups_with_an_observed_estimate(fit):
    from bayeshier_pymc.depth_comparison import compare_fits, group_log_likelihood

    values = group_log_likelihood(fit, _hierarchy(), "sub")
    # 2 covariates × 3 groups, less g1 of covariate 0 (all missing)
    assert values.sizes[OBSERVATION] == 5
    assert ("x", "g1") not in set(
        zip(values["covariate"].values, values["sub"].values, strict=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shallow = _model("tree", depth=0).sample(
            "gibbs", draws=200, tune=200, chains=2, random_seed=1, progressbar=False
        )
        comparison = compare_fits({2: fit, 0: shallow}, _hierarchy(), loo="group")
    assert comparison.elpd[2]["n_data_points"] == comparison.elpd[0]["n_data_points"] == 5


# --- stage 1: missing="per-feature" ---------------------------------------------------------


def _response_with_gaps(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    n, m = 30, 6
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)})
    Y = pd.DataFrame(rng.normal(size=(n, m)), columns=[f"m{j}" for j in range(m)])
    Y = Y.mask(rng.uniform(size=(n, m)) < 0.3)
    Y.iloc[:28, 5] = np.nan  # two complete rows for three covariates
    return X, Y


def test_mlm_refuses_nan_by_default_and_names_the_option():
    import bayeshier_pymc as bh

    X, Y = _response_with_gaps()
    with pytest.raises(ValueError, match=r"non-finite.*missing=.per-feature."):
        bh.mlm(Y, X)


def test_per_feature_fits_are_ols_on_each_features_complete_rows():
    import statsmodels.api as sm

    import bayeshier_pymc as bh

    X, Y = _response_with_gaps()
    with pytest.warns(UserWarning, match="too few complete rows"):
        fit = bh.mlm(Y, X, missing="per-feature")
    for j in range(5):
        rows = Y.iloc[:, j].notna()
        ols = sm.OLS(Y.iloc[:, j][rows], sm.add_constant(X[rows])).fit()
        np.testing.assert_allclose(fit.coef.to_numpy()[:, j], ols.params.to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(fit.se.to_numpy()[:, j], ols.bse.to_numpy(), rtol=1e-10)
        np.testing.assert_allclose(fit.pvalue.to_numpy()[:, j], ols.pvalues.to_numpy(), rtol=1e-8)
        assert fit.df_resid[j] == ols.df_resid
    # the feature without enough rows: missing cells for stage 2
    assert np.isnan(fit.coef.to_numpy()[:, 5]).all()
    estimates = Estimates.from_any(fit)
    assert (
        estimates.missing.to_numpy()[:, 5].all() and not estimates.missing.to_numpy()[:, :5].any()
    )
    for refused in (fit.permutation_test, fit.residual_covariance):
        with pytest.raises(ValueError, match="per-feature"):
            refused()
    with pytest.raises(ValueError, match="per-feature"):
        bh.mlm(Y, X, missing="per-feature", shrinkage="A")


def test_tree_noise_of_a_per_feature_fit_matches_the_monte_carlo_covariance():
    """Refit many Y with a known block covariance and 30% of the values missing at random:
    the within-group, across-group and own covariances of the estimates that the tree noise
    states (pairwise-complete residuals, each feature's own c_kk, the shared factor of
    :func:`~bayeshier_pymc.noise.shared_factor`) are those of the refits."""
    import bayeshier_pymc as bh
    from bayeshier_pymc.noise import tree_noise

    rng = np.random.default_rng(0)
    n, m, reps = 40, 8, 400
    groups = np.repeat([0, 1], 4)
    features = [f"m{j}" for j in range(m)]
    hierarchy = Hierarchy.from_frame(
        pd.DataFrame({"sub": np.where(groups == 0, "A", "B")}, index=features), ["sub"]
    )
    sigma = (
        0.3 + 0.5 * np.outer(groups == 0, groups == 0) + 0.2 * np.outer(groups == 1, groups == 1)
    )
    sigma = sigma + np.diag(np.linspace(0.3, 1.0, m))
    factor = np.linalg.cholesky(sigma)
    X = pd.DataFrame({"a": rng.normal(size=n)})
    estimates, stated = [], []
    for _ in range(reps):
        values = rng.normal(size=(n, m)) @ factor.T
        Y = pd.DataFrame(np.where(rng.uniform(size=(n, m)) < 0.3, np.nan, values), columns=features)
        fit = bh.mlm(Y, X, missing="per-feature")
        estimates.append(fit.coef.sel(covariate="a").to_numpy())
        noise = tree_noise(fit, hierarchy, pooling="none")
        variances = noise.for_covariate("a")
        matrix = variances.top + sum(
            np.outer(groups == g, groups == g) * variances.groups[0][g] for g in (0, 1)
        )
        stated.append(matrix + np.diag(variances.own))
    b = np.array(estimates)
    products = (b - b.mean(axis=0))[:, :, None] * (b - b.mean(axis=0))[:, None, :]
    stated_mean = np.mean(stated, axis=0)
    same = groups[:, None] == groups[None, :]
    blocks = {
        "within A": same & (groups[:, None] == 0) & ~np.eye(m, dtype=bool),
        "within B": same & (groups[:, None] == 1) & ~np.eye(m, dtype=bool),
        "across": ~same,
        "own": np.eye(m, dtype=bool),
    }
    for name, block in blocks.items():
        per_rep = products[:, block].mean(axis=1)
        mc_se = per_rep.std(ddof=1) / np.sqrt(reps)
        assert abs(per_rep.mean() - stated_mean[block].mean()) < 4 * mc_se, name


def test_prior_predictive_and_new_metabolites_with_missing_cells(fit):
    model = _model("tree")
    prior = model.sample_prior_predictive(50, random_seed=1)
    n_observed = int((~MISSING).sum())
    assert prior.prior_predictive.sizes[OBSERVATION] == n_observed
    assert prior.observed_data.sizes[OBSERVATION] == n_observed
    assert np.isfinite(prior.prior_predictive["b"].to_numpy()).all()
    new = pd.DataFrame({"sub": ["g1"], "super": ["s0"]}, index=["new"])
    predicted = model.predict_new(fit, new, random_seed=1)
    assert np.isfinite(predicted.predictions["theta"].to_numpy()).all()


def test_a_problem_refuses_a_missing_cell_that_is_not_in_canonical_form():
    problem = _problem(1, correlated=False)
    se = problem.se.copy()
    se[0, 0] = np.inf  # Estimates.from_any would have made it NaN in both
    with pytest.raises(ValueError, match="finite positive standard errors"):
        ShrinkageProblem(
            b=problem.b,
            se=se,
            covariates=problem.covariates,
            features=FEATURES,
            tree=problem.tree,
            priors=problem.priors,
            depth=1,
        )


def test_coefficient_matrix_refits_the_intercept_of_a_per_feature_fit_on_observed_rows():
    import xarray as xr

    import bayeshier_pymc as bh

    X, Y = _response_with_gaps()
    with pytest.warns(UserWarning, match="too few complete rows"):
        fit = bh.mlm(Y, X, missing="per-feature")
    theta = np.random.default_rng(1).normal(size=(2, 5, 2, Y.shape[1]))
    idata = az.InferenceData(
        posterior=xr.Dataset(
            {"theta": (("chain", "draw", "covariate", "feature"), theta)},
            coords={"covariate": ["a", "b"], "feature": Y.columns},
        )
    )
    full = bh.coefficient_matrix(idata, fit=fit)
    slopes = theta.mean(axis=(0, 1))
    residual = Y.to_numpy() - X.to_numpy() @ slopes
    # every feature, the one stage 1 could not fit included: mean residual of its observed rows
    np.testing.assert_allclose(
        full.sel(covariate="(Intercept)"), np.nanmean(residual, axis=0), rtol=1e-10
    )


def test_plots_show_the_observed_cells_and_count_the_missing_ones(fit):
    import matplotlib.pyplot as plt

    from bayeshier_pymc.plots import plot_shrinkage, plot_stage1_vs_shrunken

    n_missing = int(MISSING[0].sum())
    ax = plot_stage1_vs_shrunken(fit, covariate="x")
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert sum(len(c.get_offsets()) for c in points[:2]) == 9 - n_missing
    for collection in points:
        assert np.isfinite(collection.get_sizes()).all()
        assert np.isfinite(np.asarray(collection.get_offsets())).all()
    assert f"{n_missing} feature(s) without a stage-1 estimate" in ax.get_title()
    ax = plot_shrinkage(fit, covariate="x")
    assert f"Shrinkage of {9 - n_missing} features" in ax.get_title()
    assert f"{n_missing} feature(s) without a stage-1 estimate" in ax.get_title()
    plt.close("all")


@pytest.mark.parametrize("backend", ["numpy", "pymc"])
@pytest.mark.parametrize("noise", ["independent", "tree"])
def test_the_gibbs_log_likelihood_stat_sums_the_observed_cells_only(backend, noise):
    """sample_stats.log_likelihood is Σ over covariates of log N(b_obs; θ_obs, Σ_obs)."""
    from scipy import stats

    model = _model(noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = model.sample(
            "gibbs", backend=backend, draws=5, tune=20, chains=1, random_seed=3,
            progressbar=False, cores=1,
        )  # fmt: skip
    problem = model.problem
    theta = idata.posterior["theta"].to_numpy()[0]
    want = np.zeros(theta.shape[0])
    for c in range(2):
        observed = ~problem.missing[c]
        covariance = _dense_noise(problem, c)[np.ix_(observed, observed)]
        residual = problem.b[c, observed] - theta[:, c, observed]
        want += stats.multivariate_normal(np.zeros(observed.sum()), covariance).logpdf(residual)
    got = idata.sample_stats["log_likelihood"].to_numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_compare_depths_refuses_refits_with_missing_cells_before_any_fit(monkeypatch):
    from bayeshier_pymc.depth_comparison import compare_depths

    def refuse(*args, **kwargs):
        raise AssertionError("a fit was sampled before the arguments were checked")

    monkeypatch.setattr(ShrinkageModel, "sample", refuse)
    problem = _problem(2, correlated=False)
    labels = {"index": problem.covariates, "columns": FEATURES}
    estimates = (pd.DataFrame(problem.b, **labels), pd.DataFrame(problem.se, **labels))
    with pytest.raises(ValueError, match="refit_bad_k is not available"):
        compare_depths(estimates, _hierarchy(), loo="group", refit_bad_k=True, noise="independent")


@pytest.mark.parametrize("depth", [2, "none"])
def test_the_pymc_model_shows_the_given_standard_errors(depth):
    """Its ``se`` data is the standard errors given (inf in a missing cell), no stand-in."""
    model = _model("independent", depth=depth)
    for parameterization in ("collapsed", "centered"):
        built = model.build(parameterization)
        se = built["se"].get_value()
        np.testing.assert_array_equal(np.isinf(se), MISSING)
        np.testing.assert_array_equal(se[~MISSING], model.problem.se[~MISSING])
        assert np.isfinite(built.compile_logp()(built.initial_point()))
