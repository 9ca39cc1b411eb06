"""The heavy-tailed group prior (local scales λ of the group effects) in the Gibbs engine.

Given τ and λ the tree stays Gaussian: the reference algebra and the engine's compiled pass
and draws against dense Gaussian conditioning; the λ (and ξ) updates against the priors they
must leave invariant; the engine's posterior against NUTS on the collapsed model, the PyMC
step and simulation-based calibration; ``group_prior="normal"`` unchanged.
"""

from __future__ import annotations

import dataclasses
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ess, split_chains
from bayeshier_pymc.depth_comparison import group_log_likelihood
from bayeshier_pymc.gaussian_tree import (
    draw_noise,
    draw_tree,
    group_log_predictive,
    leave_one_out_normal,
    upward_pass,
)
from bayeshier_pymc.gaussian_tree.kernels import (
    LEAVE_ONE_OUT_WORK,
    leave_one_out_moments,
    leave_one_out_tree,
)
from bayeshier_pymc.gibbs.engine import run_engine
from bayeshier_pymc.gibbs.layout import LocalScales, TreeData, TreeState
from bayeshier_pymc.gibbs.scale_kernels import evaluate
from bayeshier_pymc.gibbs.sweeps import (
    draw_units_given_scales,
    split_effects,
    update_local_scales,
)
from bayeshier_pymc.inference_data import local_variance_draws, marginal_chunks, pointwise_draws
from bayeshier_pymc.model import group_mean_name, local_scale_name
from bayeshier_pymc.prediction import predict_new
from bayeshier_pymc.predictive import add_posterior_predictive, predictive_generator
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.sampling import draw_given_scales, sample_gibbs
from bayeshier_pymc.simulate import ResidualNoise
from bayeshier_pymc.streamed import theta_draws


@pytest.fixture(scope="module")
def study():
    """A small study whose residuals share noise within subclasses, superclasses and all."""
    return bh.simulate(
        30,
        18,
        2,
        proportions=np.ones(6),
        n_superclasses=2,
        sigma_y=0.5,
        random_seed=4,
        residuals=ResidualNoise(subclass_sd=0.5, superclass_sd=0.4, global_sd=0.3),
    )


def _model(study, depth: int, group_prior: str = "horseshoe", **options) -> bh.ShrinkageModel:
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    priors = {"group_prior": group_prior}
    return bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, depth=depth, priors=priors, **options)


def _given(problem, rng, spread: float = 1.5):
    """Random scales (covariate, D + 1 of the algebra tree) and λ² of every tree level."""
    index = problem.index
    tau = problem.priors.tau_scale * np.exp(rng.normal(0.0, 0.5, problem.priors.tau_scale.shape))
    local = tuple(np.exp(spread * rng.standard_normal((tau.shape[0], n))) for n in index.n_groups)
    return problem.algebra_scales(tau), tau, local


def _dense(problem, scales, local, row: int):
    """θ's ancestry, the units' prior variances and the noise covariance of b, dense.

    Units (columns of ``ancestry``): θ0, the groups of every level of the algebra tree
    (finest first), the features' own deviations; θ = mu0 + ancestry @ w.
    """
    index = problem.index
    m = index.n_features
    noise = problem.noise
    priors = problem.priors
    columns = [np.ones((m, 1))]
    variances = [np.atleast_1d(priors.s0[row] ** 2)]
    covariance = np.diag(problem.var_b[row])
    if noise is not None:
        covariance = covariance + noise.top[row]
    group = np.arange(m)
    for level in range(index.depth):
        group = index.parents[level][group] if level else index.parents[0]
        member = (group[:, None] == np.arange(index.n_groups[level])[None, :]).astype(float)
        columns.append(member)
        variances.append(scales[row, level + 1] ** 2 * local[level][row])
        if noise is not None:
            covariance = covariance + member @ np.diag(noise.groups[level][row]) @ member.T
    columns.append(np.eye(m))
    variances.append(np.full(m, scales[row, 0] ** 2))
    return np.hstack(columns), np.concatenate(variances), covariance


def _group_rows(index, ancestry_width: int, level: int) -> np.ndarray:
    """Rows expressing each group effect of ``level`` (1-based) as θ0 plus its ancestors."""
    n_groups = index.n_groups
    offsets = np.cumsum([1, *n_groups])
    rows = np.zeros((n_groups[level - 1], ancestry_width))
    rows[:, 0] = 1.0
    group = np.arange(n_groups[level - 1])
    for upper in range(level, index.depth + 1):
        rows[np.arange(group.size), offsets[upper - 1] + group] = 1.0
        if upper < index.depth:
            group = index.parents[upper][group]
    return rows


@pytest.mark.parametrize("noise", ["tree", "independent"])
@pytest.mark.parametrize("depth", [1, 2])
def test_reference_pass_with_local_scales_is_the_dense_marginal(study, rng, noise, depth):
    problem = _model(study, depth, noise=noise).problem
    scales, _, local = _given(problem, rng)
    messages = upward_pass(
        problem.algebra_b,
        problem.var_b,
        scales,
        problem.index,
        problem.priors.mu0,
        problem.priors.s0,
        noise=problem.noise,
        local=local,
    )
    for row in range(problem.b.shape[0]):
        ancestry, variances, covariance = _dense(problem, scales, local, row)
        covariance = covariance + (ancestry * variances) @ ancestry.T
        mean = np.full(problem.index.n_features, problem.priors.mu0[row])
        expected = stats.multivariate_normal(mean, covariance).logpdf(problem.algebra_b[row])
        np.testing.assert_allclose(messages.log_marginal[row], expected, rtol=1e-10)


def _dense_posterior(problem, scales, local, row: int, level: int):
    """Posterior mean and sd of θ and of the level-``level`` group effects given τ and λ."""
    ancestry, variances, noise = _dense(problem, scales, local, row)
    units = np.vstack([ancestry, _group_rows(problem.index, ancestry.shape[1], level)])
    prior = (units * variances) @ ancestry.T
    covariance_b = (ancestry * variances) @ ancestry.T + noise
    gain = np.linalg.solve(covariance_b, prior.T).T
    mu0 = problem.priors.mu0[row]
    mean = mu0 + gain @ (problem.algebra_b[row] - mu0)
    sd = np.sqrt(np.diag((units * variances) @ units.T - gain @ prior.T))
    return mean, sd


def _assert_moments(drawn: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> None:
    """Draws' means and sds within Bonferroni-corrected bounds of the exact ones."""
    n = drawn.shape[0]
    z_mean = (drawn.mean(axis=0) - mean) / (sd / np.sqrt(n))
    z_sd = (drawn.std(axis=0) - sd) / (sd / np.sqrt(2 * n))
    bound = stats.norm.isf(0.005 / (2 * mean.size))
    assert np.abs(z_mean).max() < bound
    assert np.abs(z_sd).max() < bound


@pytest.mark.parametrize("noise", ["tree", "independent"])
def test_reference_draws_with_local_scales_have_the_dense_posterior(study, rng, noise):
    problem = _model(study, 2, noise=noise).problem
    scales, _, local = _given(problem, rng)
    row, n_draws, level = 1, 4000, 2
    repeat = lambda x: np.repeat(x[row : row + 1], n_draws, axis=0)  # noqa: E731
    noise_rows = problem.noise
    if noise_rows is not None:
        noise_rows = bh.gaussian_tree.NodeNoise(
            tuple(repeat(g) for g in noise_rows.groups), repeat(noise_rows.top)
        )
    local_rows = tuple(repeat(x) for x in local)
    b, var_b, tau = repeat(problem.algebra_b), repeat(problem.var_b), repeat(scales)
    mu0, s0 = problem.priors.mu0[row], problem.priors.s0[row]
    messages = upward_pass(
        b, var_b, tau, problem.index, mu0, s0, noise=noise_rows, local=local_rows
    )
    _, groups, theta = draw_tree(
        messages, tau, problem.index, mu0, s0, rng, noise=noise_rows, local=local_rows
    )
    mean, sd = _dense_posterior(problem, scales, local, row, level)
    _assert_moments(np.hstack([theta, groups[level - 1]]), mean, sd)


@pytest.mark.parametrize("noise", ["tree", "independent"])
def test_engine_pass_and_draws_with_local_scales_match_the_dense_posterior(study, rng, noise):
    """The compiled upward pass (its λ-dependence) and the engine's draws and split."""
    problem = _model(study, 2, noise=noise).problem
    scales, tau, local = _given(problem, rng)
    row, n_draws, level = 0, 4000, 2
    data = TreeData.from_problem(problem, 1)
    state = TreeState(tau.copy(), [np.zeros((data.n_rows, n)) for n in data.n_units])
    state.local = LocalScales.start(data, problem.priors)
    state.local.variances = [data.to_sorted(x, lev) for lev, x in enumerate(local, start=1)][
        : state.local.n_levels
    ]
    # the compiled log p(b | τ, λ) − log p(b | τ, 1) is the reference's (constants cancel)
    unit = evaluate(data, tau).log_marginal
    scaled = evaluate(data, tau, state.local_lane(data)).log_marginal
    reference = [
        upward_pass(
            problem.algebra_b,
            problem.var_b,
            scales,
            problem.index,
            problem.priors.mu0,
            problem.priors.s0,
            noise=problem.noise,
            local=given,
        ).log_marginal
        for given in (None, local)
    ]
    np.testing.assert_allclose(scaled - unit, reference[1] - reference[0], rtol=1e-9, atol=1e-9)
    # many copies of every covariate (rows copy by copy), one draw each
    rows = TreeData.from_problem(problem, n_draws)
    draws = TreeState(
        np.tile(tau, (n_draws, 1)), [np.zeros((rows.n_rows, n)) for n in rows.n_units]
    )
    draws.local = LocalScales.start(rows, problem.priors)
    draws.local.variances = [np.tile(x, (n_draws, 1)) for x in state.local.variances]
    pick = np.arange(n_draws) * problem.b.shape[0] + row
    messages = list(evaluate(rows, draws.tau, draws.local_lane(rows)).messages)
    draw_units_given_scales(rows, draws, messages, rng)
    if rows.correlated:
        effects, path_noise = split_effects(rows, draws, rng)
        theta = draws.units[0] - path_noise[:, rows.parent_index[0]]
    else:
        effects, theta = draws.units[1:], draws.units[0]
    theta = rows.from_sorted(theta[pick])
    groups = rows.from_sorted(effects[level - 1][pick], level)
    mean, sd = _dense_posterior(problem, scales, local, row, level)
    _assert_moments(np.hstack([theta, groups]), mean, sd)


def _prior_effects(data, tau, local, rng):
    """Group effects of levels 1..D and θ0 (last) drawn from their prior given τ and λ."""
    effects = [np.zeros((data.n_rows, 1))]
    for level in range(data.depth, 0, -1):
        parent = effects[0][:, data.parent_index[level]]
        sd = tau[:, level, None] * np.sqrt(local.unit(level))
        effects.insert(0, parent + sd * rng.standard_normal(parent.shape))
    return effects


@pytest.mark.parametrize(
    ("group_prior", "reference"),
    [
        ("student_t", lambda rng, n: stats.t(3).rvs(n, random_state=rng)),
        ("horseshoe", lambda rng, n: np.abs(rng.standard_cauchy(n)) * rng.standard_normal(n)),
    ],
)
def test_local_scale_updates_leave_the_prior_invariant(study, rng, group_prior, reference):
    """Alternating the effects from their prior given λ and λ | effects keeps the prior.

    The standardised deviations (u − parent) / τ of every level are then Student-t with 3 df
    (ν's default) or horseshoe draws (λ z, λ ~ HalfCauchy(0, 1)).
    """
    problem = _model(study, 2, group_prior, noise="independent").problem
    data = TreeData.from_problem(problem, 2000)
    tau = data.tau_scale * np.exp(rng.normal(0.0, 0.5, data.tau_scale.shape))
    local = LocalScales.start(data, problem.priors)
    for _ in range(100):
        update_local_scales(data, local, _prior_effects(data, tau, local, rng), tau, rng)
    effects = _prior_effects(data, tau, local, rng)
    for level in (1, 2):
        deviation = effects[level - 1] - effects[level][:, data.parent_index[level]]
        standardised = (deviation / tau[:, level, None]).ravel()
        expected = reference(rng, standardised.size)
        assert stats.ks_2samp(standardised, expected).pvalue > 0.001, level


def test_prior_draws_of_new_local_scales(rng):
    """λ² of new groups: IG(ν/2, ν/2) (so that λ z is t_ν) and a squared HalfCauchy."""
    n = 20_000
    for group_prior, df, reference in (
        ("student_t", 5.0, stats.t(5)),
        ("horseshoe", 3.0, None),
    ):
        priors = Priors.resolve(
            {"group_prior": group_prior, "group_df": df}, ["feature", "a"], ["x"], np.ones((1, 2))
        )
        local_variance = priors.draw_local_variances((n,), rng)
        if reference is None:
            drawn = np.sqrt(local_variance)
            assert stats.kstest(drawn, stats.halfcauchy().cdf).pvalue > 0.001
        else:
            drawn = np.sqrt(local_variance) * rng.standard_normal(n)
            assert stats.kstest(drawn, reference.cdf).pvalue > 0.001


def _mean_and_sd_with_errors(
    draws: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and sd per cell of (chain, draw, …) draws, and their Monte Carlo errors.

    The mean's error is sd / √ESS; the sd's, by the delta method, that of the mean of the
    squared deviations (its own ESS) over 2 sd.
    """
    flat = draws.reshape(*draws.shape[:2], -1)
    mean = flat.mean(axis=(0, 1))
    deviation2 = (flat - mean) ** 2
    sd = np.sqrt(deviation2.mean(axis=(0, 1)))
    mean_error = sd / np.sqrt(ess(split_chains(flat)))
    square_error = deviation2.std(axis=(0, 1)) / np.sqrt(ess(split_chains(deviation2)))
    return mean, sd, mean_error, square_error / (2.0 * sd)


def _assert_same_means(runs, level: str) -> None:
    """θ, log τ and the finest level's log λ: posterior means within Bonferroni MCSE bounds.

    ``runs`` are two mappings from ``"theta"``, ``"tau"`` and ``level`` to (chain, draw, …)
    arrays; the Monte Carlo errors come from the ESS of each run.
    """
    for name in ("theta", "tau", level):
        moments = [
            _mean_and_sd_with_errors(run[name] if name == "theta" else np.log(run[name]))
            for run in runs
        ]
        (mean_a, _, error_a, _), (mean_b, _, error_b, _) = moments
        z = (mean_a - mean_b) / np.hypot(error_a, error_b)
        assert np.abs(z).max() < stats.norm.isf(0.005 / z.size), name


def _engine_draws(idata, level: str) -> dict[str, np.ndarray]:
    names = {"theta": "theta", "tau": "tau", level: f"{level}_local_scale"}
    return {
        key: idata.posterior[name].transpose("chain", "draw", ...).to_numpy()
        for key, name in names.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("group_prior", ["horseshoe", "student_t"])
def test_engine_samples_the_collapsed_nuts_posterior(study, group_prior):
    """Tree noise, depth 2: the engine against NUTS on the collapsed model (its own code)."""
    model = _model(study, 2, group_prior)
    level = model.problem.tree.levels[0]
    engine = sample_gibbs(
        model.problem, draws=1000, tune=500, chains=2, random_seed=1, progressbar=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = model.sample(
            draws=1000, tune=1000, chains=2, random_seed=2, progressbar=False, cores=1
        )
    assert int(nuts.sample_stats["diverging"].sum()) == 0
    _assert_same_means([_engine_draws(engine, level), _engine_draws(nuts, level)], level)


def test_conjugate_and_collapsed_schemes_agree(study):
    """Independent estimates, horseshoe: the two schemes sample one posterior."""
    problem = _model(study, 2, "horseshoe", noise="independent").problem
    level = problem.tree.levels[0]
    runs = [
        _engine_draws(
            sample_gibbs(
                problem,
                draws=3000,
                tune=1000,
                chains=4,
                random_seed=1,
                progressbar=False,
                scheme=scheme,
            ),
            level,
        )
        for scheme in ("collapsed", "conjugate")
    ]
    _assert_same_means(runs, level)


def _local_for_row(problem, local, row: int):
    return tuple(x[row] for x in local)


def test_leave_one_out_with_local_scales_is_the_dense_conditional(study, rng):
    """p(b_j | b_−j, τ, λ): the compiled kernel and the reference against dense algebra."""
    problem = _model(study, 2).problem
    scales, _, local = _given(problem, rng)
    index = problem.index
    for row in range(problem.b.shape[0]):
        ancestry, variances, covariance = _dense(problem, scales, local, row)
        covariance = covariance + (ancestry * variances) @ ancestry.T
        precision = np.linalg.inv(covariance)
        b = problem.algebra_b[row]
        centred = b - problem.priors.mu0[row]
        variance = 1.0 / np.diag(precision)
        mean = b - variance * (precision @ centred)
        mu0, s0 = problem.priors.mu0[row], problem.priors.s0[row]
        noise = problem.noise.row(row)
        given = _local_for_row(problem, local, row)
        reference = leave_one_out_normal(
            b, problem.var_b[row], scales[row], index, mu0, s0, noise, given
        )
        np.testing.assert_allclose(reference[0], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(reference[1], variance, rtol=1e-9)
        work = np.empty((LEAVE_ONE_OUT_WORK, sum(index.n_units)))
        compiled = np.empty((2, index.n_features))
        leave_one_out_moments(
            b,
            problem.var_b[row],
            scales[row],
            np.concatenate(given),
            leave_one_out_tree(index, noise),
            float(mu0),
            float(s0),
            work,
            compiled[0],
            compiled[1],
        )
        np.testing.assert_allclose(compiled[0], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(compiled[1], variance, rtol=1e-9)


def test_group_predictive_with_local_scales_is_the_dense_conditional(study, rng):
    """p(b_G | b_−G, τ, λ) of each subclass G against dense Gaussian conditioning."""
    problem = _model(study, 2).problem
    scales, _, local = _given(problem, rng)
    index, row = problem.index, 0
    to_group = np.arange(index.n_groups[0])
    got = group_log_predictive(
        problem.algebra_b[row],
        problem.var_b[row],
        scales[row],
        index,
        problem.priors.mu0[row],
        problem.priors.s0[row],
        1,
        to_group,
        problem.noise.row(row),
        _local_for_row(problem, local, row),
    )
    ancestry, variances, covariance = _dense(problem, scales, local, row)
    covariance = covariance + (ancestry * variances) @ ancestry.T
    centred = problem.algebra_b[row] - problem.priors.mu0[row]
    members = index.parents[0]
    for group in to_group:
        held, rest = members == group, members != group
        gain = np.linalg.solve(covariance[np.ix_(rest, rest)], covariance[np.ix_(rest, held)]).T
        mean = gain @ centred[rest]
        conditional = covariance[np.ix_(held, held)] - gain @ covariance[np.ix_(rest, held)]
        expected = stats.multivariate_normal(mean, conditional).logpdf(centred[held])
        np.testing.assert_allclose(got[group], expected, rtol=1e-9)


@pytest.fixture(scope="module")
def horseshoe_fits(study):
    """A short horseshoe fit under tree noise, in full and in summary storage (one seed)."""
    problem = _model(study, 2).problem
    options = {"draws": 40, "tune": 40, "chains": 2, "random_seed": 5, "progressbar": False}
    return problem, {
        storage: sample_gibbs(problem, storage=storage, **options)
        for storage in ("full", "summary")
    }


def test_stored_log_likelihood_uses_each_draws_local_scales(horseshoe_fits):
    """b_marginal of a horseshoe fit (tree noise) is the reference LOO given τ and λ."""
    problem, fits = horseshoe_fits
    full = fits["full"]
    assert set(full.posterior["subclass_local_scale"].dims) == {
        "chain",
        "draw",
        "covariate",
        "subclass",
    }
    draws = pointwise_draws(full.posterior, problem, with_theta=False)
    local = local_variance_draws(draws, problem)
    stored = full.log_likelihood["b_marginal"].transpose("chain", "draw", "covariate", "feature")
    scales = problem.algebra_scales(draws["tau"])
    for chain, draw, row in ((0, 0, 0), (1, 17, 1), (0, 39, 1)):
        mean, variance = leave_one_out_normal(
            problem.algebra_b[row],
            problem.var_b[row],
            scales[chain, draw, row],
            problem.index,
            problem.priors.mu0[row],
            problem.priors.s0[row],
            problem.noise.row(row),
            tuple(x[chain, draw, row] for x in local),
        )
        expected = stats.norm(mean, np.sqrt(variance)).logpdf(problem.algebra_b[row])
        np.testing.assert_allclose(stored[chain, draw, row], expected, rtol=2e-6)


def test_summary_storage_with_local_scales_is_the_full_storage(horseshoe_fits):
    """The same draws, θ replayed, and b_marginal a chunk at a time: the stored fit's."""
    _, fits = horseshoe_fits
    full, summary = fits["full"], fits["summary"]
    for name in ("tau", "subclass_local_scale", "superclass_local_scale", "subclass_mean"):
        np.testing.assert_array_equal(summary.posterior[name], full.posterior[name])
    np.testing.assert_array_equal(theta_draws(summary), full.posterior["theta"])
    stored = full.log_likelihood["b_marginal"].transpose("chain", "draw", "covariate", "feature")
    n_samples = stored.shape[0] * stored.shape[1]
    for features, cells, values in marginal_chunks(summary, chunk_features=7):
        expected = stored.to_numpy()[:, :, :, features].reshape(n_samples, len(cells), -1)
        row = np.flatnonzero(cells.any(axis=1))[0]
        np.testing.assert_array_equal(values, expected[:, row])


def test_group_loo_uses_each_draws_local_scales(study, horseshoe_fits):
    problem, fits = horseshoe_fits
    full = fits["full"]
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    values = group_log_likelihood(full, tree, "subclass").transpose(
        "chain", "draw", "covariate", "subclass"
    )
    draws = pointwise_draws(full.posterior, problem, with_theta=False)
    local = local_variance_draws(draws, problem)
    scales = problem.algebra_scales(draws["tau"])
    chain, draw, row = 1, 11, 0
    expected = group_log_predictive(
        problem.algebra_b[row],
        problem.var_b[row],
        scales[chain, draw, row],
        problem.index,
        problem.priors.mu0[row],
        problem.priors.s0[row],
        1,
        np.arange(problem.index.n_groups[0]),
        problem.noise.row(row),
        tuple(x[chain, draw, row] for x in local),
    )
    np.testing.assert_allclose(values[chain, draw, row], expected, rtol=1e-10)


def test_predict_new_draws_new_groups_local_scales_from_the_prior(study, horseshoe_fits, rng):
    """A new subclass under a known superclass: θ_new − parent = τ_sub λ z + τ_w z′, λ ~ C⁺."""
    problem, fits = horseshoe_fits
    full = fits["full"]
    n_new = 60
    annotations = pd.DataFrame(
        {"subclass": [f"new{j}" for j in range(n_new)], "superclass": "superclass_0"},
        index=[f"novel{j}" for j in range(n_new)],
    )
    annotations.columns = list(problem.levels)
    annotations.iloc[:, 1] = problem.tree.groups[1][0]
    predicted = predict_new(full, annotations, random_seed=3).predictions["theta"]
    predicted = predicted.transpose("chain", "draw", "covariate", "feature").to_numpy()
    parent = full.posterior[group_mean_name(problem.levels[1])].isel({problem.levels[1]: 0})
    tau = full.posterior["tau"].transpose("chain", "draw", "covariate", "level").to_numpy()
    deviation = predicted - parent.transpose("chain", "draw", "covariate").to_numpy()[..., None]
    shape = predicted.shape
    local = np.abs(rng.standard_cauchy(shape))
    expected = tau[..., 1:2] * local * rng.standard_normal(shape) + tau[..., 0:1] * (
        rng.standard_normal(shape)
    )
    assert stats.ks_2samp(deviation.ravel(), expected.ravel()).pvalue > 0.001
    # without λ the tails are too light: the same check rejects normal new groups
    normal = tau[..., 1:2] * rng.standard_normal(shape) + tau[..., 0:1] * rng.standard_normal(shape)
    assert stats.ks_2samp(normal.ravel(), expected.ravel()).pvalue < 0.001


def test_draw_given_scales_uses_the_local_scales(horseshoe_fits, rng):
    """Given one (τ, λ) repeated, θ and the finest effects have the dense posterior."""
    problem, fits = horseshoe_fits
    full = fits["full"]
    tau = full.posterior["tau"].transpose("chain", "draw", "covariate", "level").to_numpy()
    with pytest.raises(ValueError, match="local_scales"):
        draw_given_scales(problem, tau, rng)
    local = local_variance_draws(pointwise_draws(full.posterior, problem), problem)
    level = problem.levels[0]
    n_draws, row = 4000, 1
    repeated_tau = np.repeat(tau[:1, 5:6], n_draws, axis=1)
    repeated = [np.sqrt(np.repeat(x[:1, 5:6], n_draws, axis=1)) for x in local]
    drawn = draw_given_scales(problem, repeated_tau, rng, repeated)
    scales = problem.algebra_scales(tau[0, 5])
    given = tuple(x[0, 5] for x in local)
    mean, sd = _dense_posterior(problem, scales, given, row, 1)
    _assert_moments(
        np.hstack([drawn["theta"][0, :, row], drawn[group_mean_name(level)][0, :, row]]),
        mean,
        sd,
    )


@pytest.mark.parametrize(
    ("group_prior", "noise", "scheme", "draws", "chains"),
    [
        ("horseshoe", "tree", "collapsed", 600, 2),
        ("student_t", "independent", "conjugate", 3000, 4),
    ],
)
def test_pymc_step_samples_the_engine_posterior(study, group_prior, noise, scheme, draws, chains):
    """The PyMC Gibbs step on the centred model with λ: the engine's θ, log τ and log λ."""
    problem = _model(study, 2, group_prior, noise=noise).problem
    level = problem.levels[0]
    options = {"draws": draws, "tune": 300, "chains": chains, "progressbar": False}
    runs = [
        _engine_draws(
            sample_gibbs(problem, random_seed=seed, cores=1, scheme=scheme, **options, **backend),
            level,
        )
        for seed, backend in ((1, {"backend": "pymc"}), (2, {}))
    ]
    _assert_same_means(runs, level)


def _draw_from_prior(problem, rng):
    """τ, λ (every level used), θ and b drawn from the horseshoe model's prior, per covariate."""
    priors, index = problem.priors, problem.index
    n_rows = problem.b.shape[0]
    tau = priors.tau_scale * np.abs(rng.standard_cauchy(priors.tau_scale.shape))
    local = [np.abs(rng.standard_cauchy((n_rows, n))) for n in index.n_groups]
    values = (priors.mu0 + priors.s0 * rng.standard_normal(n_rows))[:, None]
    for level in range(index.depth, 0, -1):
        parent = index.parent_of(level)
        sd = tau[:, level, None] * local[level - 1]
        values = values[:, parent] + sd * rng.standard_normal((n_rows, index.n_groups[level - 1]))
    theta = values[:, index.parent_of(0)] + tau[:, :1] * rng.standard_normal(problem.b.shape)
    b = theta + draw_noise(problem.var_b, index, problem.noise, rng)
    return {"theta": theta, "tau": tau, "local": local[0]}, b


def _sbc_ranks(study, n_replicates: int, draws: int, thin: int):
    """Ranks of the true θ, τ and finest λ among thinned posterior draws, per replicate."""
    problem = _model(study, 2).problem
    rng = np.random.default_rng(17)
    ranks: dict[str, list[np.ndarray]] = {"theta": [], "tau": [], "local": []}
    for replicate in range(n_replicates):
        truth, b = _draw_from_prior(problem, rng)
        simulated = dataclasses.replace(problem, b=b)
        drawn = run_engine(
            simulated,
            draws=draws,
            tune=200,
            chains=1,
            random_seed=replicate,
            progressbar=False,
            scheme="collapsed",
            scale_steps=2,
            theta_dtype=np.float64,
            cores=1,
        ).posterior
        draws_of = {
            "theta": drawn["theta"],
            "tau": drawn["tau"],
            "local": drawn[local_scale_name(problem.levels[0])],
        }
        for name, values in draws_of.items():
            kept = values[0, ::thin]
            ranks[name].append((kept < truth[name][None]).sum(axis=0).ravel())
    return {name: np.concatenate(values) for name, values in ranks.items()}, draws // thin


def _assert_uniform_ranks(ranks, n_kept: int, bins: int = 8) -> None:
    for name, values in ranks.items():
        counts = np.bincount(values * bins // (n_kept + 1), minlength=bins)
        assert stats.chisquare(counts).pvalue > 0.001 / len(ranks), (name, counts)


def test_sbc_tree_noise_horseshoe_quick(study):
    """Simulation-based calibration, depth 2, tree noise, horseshoe: ranks look uniform."""
    ranks, n_kept = _sbc_ranks(study, n_replicates=15, draws=240, thin=3)
    _assert_uniform_ranks(ranks, n_kept)


@pytest.mark.slow
def test_sbc_tree_noise_horseshoe(study):
    """The long version: 200 replicates."""
    ranks, n_kept = _sbc_ranks(study, n_replicates=200, draws=600, thin=4)
    _assert_uniform_ranks(ranks, n_kept, bins=10)


def test_local_scales_are_in_the_posterior_only_under_a_heavy_tailed_prior(study, horseshoe_fits):
    problem, fits = horseshoe_fits
    for level in problem.levels:
        scales = fits["full"].posterior[local_scale_name(level)]
        assert scales.dims == ("chain", "draw", "covariate", level)
        assert bool((scales > 0).all())
    normal = sample_gibbs(
        _model(study, 2, "normal").problem, draws=5, tune=5, chains=1, progressbar=False
    )
    assert not [name for name in normal.posterior.data_vars if name.endswith("_local_scale")]


def test_exact_group_refits_refuse_a_heavy_tailed_prior(study):
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    with pytest.raises(ValueError, match="refit_bad_k is not available with group_prior"):
        bh.compare_depths(
            bh.mlm(study.Y, study.X),
            tree,
            loo="group",
            refit_bad_k=True,
            priors={"group_prior": "horseshoe"},
            sampler="gibbs",
        )


def test_replicates_drawn_later_are_the_stored_ones(horseshoe_fits):
    """The posterior predictive drawn from a horseshoe fit (tree noise) uses each draw's λ."""
    problem, fits = horseshoe_fits
    full = fits["full"]
    stripped = az.InferenceData(posterior=full.posterior)
    again = add_posterior_predictive(
        stripped, problem, predictive_generator(full.attrs["random_seed"])
    )
    np.testing.assert_array_equal(again.posterior_predictive["b"], full.posterior_predictive["b"])
