"""The heavy-tailed group prior (local scales λ of the group effects) in the Gibbs engine.

Given τ and λ the tree stays Gaussian: the reference algebra and the engine's compiled pass
and draws against dense Gaussian conditioning; the λ (and ξ) updates against the priors they
must leave invariant; the engine's posterior against an independent sampler of the same
model; ``group_prior="normal"`` unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.gaussian_tree import draw_tree, upward_pass
from bayeshier_pymc.gibbs.layout import TreeData, TreeState
from bayeshier_pymc.gibbs.local_scales import LocalScales
from bayeshier_pymc.gibbs.scale_kernels import evaluate
from bayeshier_pymc.gibbs.sweeps import draw_units_given_scales, split_effects
from bayeshier_pymc.simulate import ResidualNoise


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
