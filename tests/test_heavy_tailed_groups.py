"""The heavy-tailed group prior prototype of ``benchmarks/bench_heavy_tailed_groups.py``.

Its algebra given τ and the local scales λ (the package's reference algebra, with ``local``)
against dense Gaussian conditioning on a small tree with tree-structured noise, its λ ≡ 1
pass against the package's, and the local scales' conditionals (the package's) against the
priors they must leave invariant.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.gaussian_tree import draw_tree, upward_pass
from tests.research import research_module


@pytest.fixture(scope="module")
def prototype():
    """The benchmark script, imported as a module."""
    return research_module("bench_heavy_tailed_groups")


@pytest.fixture(scope="module")
def study():
    return bh.simulate(
        30, 18, 2, proportions=np.ones(6), n_superclasses=2, sigma_y=0.5, random_seed=4
    )


def _problem(study, depth: int):
    """The package's problem of the study: tree noise from stage 1, "auto" priors."""
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    return bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, depth=depth).problem


def _state(prototype, problem, rng, spread: float):
    """Random log τ and local scales λ² = exp(spread · N(0, 1)), one row per covariate."""
    data = prototype.RowData.from_problem(problem, chains=1)
    log_tau = np.log(data.tau_scale) + rng.normal(0.0, 0.5, data.tau_scale.shape)
    local = [
        prototype.LocalScales(*[np.exp(spread * rng.standard_normal((data.b.shape[0], n)))] * 2)
        for n in problem.index.n_groups[: problem.depth]
    ]
    return data, log_tau, local


def _dense(problem, data, log_tau, local, row: int):
    """Prior covariance of (θ0, every group effect, θ) and the noise covariance of b, dense."""
    tree, index = problem.algebra_tree, problem.index
    m = tree.n_features
    # ancestry: columns θ0, the groups of each level, the features' own deviations
    columns = [np.ones((m, 1))]
    variances = [np.atleast_1d(data.s0[row] ** 2)]
    noise = np.full((m, m), data.top[row]) + np.diag(data.var_b[row])
    for level in range(index.depth):
        member = tree.membership(level)[:, None] == np.arange(index.n_groups[level])[None, :]
        columns.append(member.astype(float))
        if level < problem.depth:
            variances.append(np.exp(2.0 * log_tau[row, level + 1]) * local[level].lam2[row])
        else:  # the levels above the depth used carry no effects
            variances.append(np.zeros(index.n_groups[level]))
        noise += member @ np.diag(data.shared[level][row]) @ member.T
    columns.append(np.eye(m))
    variances.append(np.full(m, np.exp(2.0 * log_tau[row, 0])))
    ancestry = np.hstack(columns)  # θ = ancestry @ w (w: θ0 − mu0, group and feature deviations)
    return ancestry, np.concatenate(variances), noise


@pytest.mark.parametrize("depth", [1, 2])
def test_the_pass_with_unit_local_scales_is_the_package_pass(prototype, study, rng, depth):
    problem = _problem(study, depth)
    data, log_tau, local = _state(prototype, problem, rng, spread=0.0)
    messages = prototype.collapsed_pass(data, log_tau, local, problem.index)
    expected = upward_pass(
        problem.algebra_b,
        problem.var_b,
        problem.algebra_scales(np.exp(log_tau)),
        problem.index,
        problem.priors.mu0,
        problem.priors.s0,
        noise=problem.noise,
    )
    np.testing.assert_allclose(messages.log_marginal, expected.log_marginal, rtol=1e-12)


@pytest.mark.parametrize("depth", [1, 2])
def test_the_pass_with_local_scales_is_the_dense_marginal(prototype, study, rng, depth):
    problem = _problem(study, depth)
    data, log_tau, local = _state(prototype, problem, rng, spread=1.5)
    messages = prototype.collapsed_pass(data, log_tau, local, problem.index)
    for row in range(data.b.shape[0]):
        ancestry, variances, noise = _dense(problem, data, log_tau, local, row)
        covariance = (ancestry * variances) @ ancestry.T + noise
        expected = stats.multivariate_normal(np.full(data.b.shape[1], data.mu0[row]), covariance)
        np.testing.assert_allclose(messages.log_marginal[row], expected.logpdf(data.b[row]))


def test_effect_draws_have_the_dense_posterior_mean_and_sd(prototype, study, rng):
    """Many draws of θ and the finest group effects given τ and λ (rows = draws)."""
    problem = _problem(study, 2)
    n_draws = 4000
    one, log_tau, local = _state(prototype, problem, rng, spread=1.5)
    row = 1  # the second covariate, repeated n_draws times
    data = prototype.RowData(
        *(np.repeat(x[row : row + 1], n_draws, axis=0) for x in (one.b, one.var_b)),
        tuple(np.repeat(g[row : row + 1], n_draws, axis=0) for g in one.shared),
        *(np.repeat(x[row : row + 1], n_draws, axis=0) for x in (one.top, one.mu0, one.s0)),
        np.repeat(one.tau_scale[row : row + 1], n_draws, axis=0),
    )
    log_taus = np.repeat(log_tau[row : row + 1], n_draws, axis=0)
    locals_ = [
        prototype.LocalScales(*[np.repeat(s.lam2[row : row + 1], n_draws, 0)] * 2) for s in local
    ]
    index = problem.index
    messages = prototype.collapsed_pass(data, log_taus, locals_, index)
    _, groups, theta = draw_tree(
        messages,
        prototype.algebra_scales(log_taus, index),
        index,
        data.mu0,
        data.s0,
        rng,
        noise=data.noise,
        local=prototype.local_variances(locals_),
    )
    effects = [theta, *groups]
    ancestry, variances, noise = _dense(problem, one, log_tau, local, row)
    # unit values = mu0 + (ancestry of the units) @ w; the units: θ, then the finest groups
    n_finest = index.n_groups[0]
    finest = np.zeros((n_finest, ancestry.shape[1]))
    finest[:, 0] = 1.0
    finest[:, 1 : 1 + n_finest] = np.eye(n_finest)
    coarse = problem.algebra_tree.parents[1]
    finest[np.arange(n_finest), 1 + n_finest + coarse] = 1.0
    units = np.vstack([ancestry, finest])
    prior = (units * variances) @ ancestry.T  # Cov(units, θ)
    covariance_b = (ancestry * variances) @ ancestry.T + noise
    gain = np.linalg.solve(covariance_b, prior.T).T
    mean = one.mu0[row] + gain @ (one.b[row] - one.mu0[row])
    sd = np.sqrt(np.diag((units * variances) @ units.T - gain @ prior.T))
    drawn = np.hstack([effects[0], effects[1]])
    z_mean = (drawn.mean(axis=0) - mean) / (sd / np.sqrt(n_draws))
    z_sd = (drawn.std(axis=0) - sd) / (sd / np.sqrt(2 * n_draws))
    bound = stats.norm.isf(0.005 / (2 * mean.size))  # Bonferroni over means and sds
    assert np.abs(z_mean).max() < bound
    assert np.abs(z_sd).max() < bound


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("t3", lambda rng, n: stats.t(3).rvs(n, random_state=rng)),
        ("horseshoe", lambda rng, n: np.abs(rng.standard_cauchy(n)) * rng.standard_normal(n)),
    ],
)
def test_the_local_scale_updates_leave_the_prior_invariant(prototype, rng, name, reference):
    """Alternating δ ~ N(0, λ²) and λ | δ keeps δ at its prior (τ = 1): t_3 or horseshoe."""
    prior = prototype.PRIORS[name]
    n = 20_000
    local = prior.start((n,))
    for _ in range(100):
        delta = np.sqrt(local.lam2) * rng.standard_normal(n)
        local = prior.update(local, delta**2, rng)
    delta = np.sqrt(local.lam2) * rng.standard_normal(n)
    assert stats.ks_2samp(delta, reference(rng, n)).pvalue > 0.001


def test_the_sampler_with_unit_local_scales_samples_the_package_posterior(prototype, study):
    """λ ≡ 1: θ's and log τ's posterior means agree with the package's Gibbs engine."""
    tree = bh.Hierarchy.from_frame(study.annotations, study.levels)
    model = bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, depth=2)
    options = {"draws": 600, "chains": 2}
    engine = model.sample("gibbs", tune=300, random_seed=1, progressbar=False, **options)
    draws = prototype.sample_group_prior(
        model.problem, prototype.PRIORS["normal"], tune=300, rng=np.random.default_rng(2), **options
    )
    for name, drawn in (("theta", draws.theta), ("tau", draws.tau)):
        runs = [engine.posterior[name].transpose("chain", "draw", ...).to_numpy(), drawn]
        if name == "tau":
            runs = [np.log(run) for run in runs]
        (mean_a, _, error_a, _), (mean_b, _, error_b, _) = map(
            prototype.mean_and_sd_with_errors, runs
        )
        z = (mean_a - mean_b) / np.hypot(error_a, error_b)
        assert np.abs(z).max() < stats.norm.isf(0.005 / z.size), name
