"""The Gibbs engine, θ writer and PyMC step with tree-structured (correlated) noise.

The problem: one covariate of a simulation whose residuals share noise within subclasses,
superclasses and overall, so the estimates' noise tree has two levels; the effects use 0, 1
or 2 of them (or none: no pooling). References: dense Gaussian conditioning on the m × m
noise covariance given τ (``tests/dense_gaussian.py``), the reference tree pass with noise
for log p(b | τ), and quadrature of p(τ | b) over a grid of log τ.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel
from bayeshier_pymc.convergence import bulk_ess, ess, split_chains
from bayeshier_pymc.gaussian_tree import (
    LOG_2PI,
    NodeNoise,
    TreeIndex,
    noise_log_density,
    upward_pass,
)
from bayeshier_pymc.gaussian_tree import split_totals as reference_split
from bayeshier_pymc.gibbs.layout import TreeData, TreeState
from bayeshier_pymc.gibbs.scale_kernels import evaluate
from bayeshier_pymc.gibbs.step import TreeGibbs
from bayeshier_pymc.gibbs.sweeps import draw_units_given_scales, split_effects
from bayeshier_pymc.gibbs.theta_writer import ThetaParents, ThetaWriter
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.model import build_model, group_mean_name
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.sampler_comparison import compare_samplers
from bayeshier_pymc.sampling import sample, sample_gibbs
from bayeshier_pymc.simulate import ResidualNoise, simulate
from tests.dense_gaussian import dense_posterior, tree_noise_covariance

Z_LIMIT = 4.0
FAMILY_ALPHA = 1e-3
"""False alarm rate of the many z-scores of one test together (Bonferroni)."""
N_COPIES = 20_000
"""Rows (independent copies of the problem) of the draws given τ."""
TAU = np.array([0.12, 0.3, 0.45])
"""Fixed scales of the draws given τ (the first depth + 1 of them are used)."""


@pytest.fixture(scope="module")
def study():
    sim = simulate(
        n=40,
        m=24,
        p=1,
        proportions=(0.2, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 0.05),
        n_superclasses=3,
        tau_w=0.1,
        tau_v=0.2,
        tau_u=0.2,
        residuals=ResidualNoise(subclass_sd=1.2, superclass_sd=0.8, global_sd=0.6),
        random_seed=3,
    )
    fit = mlm(sim.Y, sim.X, x_intercept=False)
    return fit, Hierarchy.from_frame(sim.annotations, levels=sim.levels)


def _problem(study, depth, noise="auto", priors=None) -> ShrinkageProblem:
    fit, tree = study
    return ShrinkageModel(
        fit, tree, depth=depth, noise=noise, priors=priors, effect_scale="raw"
    ).problem


def _dense_noise(problem: ShrinkageProblem, covariate: int = 0) -> np.ndarray:
    """The m × m noise covariance of one covariate's estimates."""
    noise = problem.noise.row(covariate)
    return tree_noise_covariance(problem.noise_tree, problem.var_b[covariate], noise)


def test_the_problem_is_correlated(study):
    problem = _problem(study, 2)
    assert problem.correlated and problem.index.depth == 2
    shared = _dense_noise(problem) - np.diag(np.diag(_dense_noise(problem)))
    # shared noise comparable to the own noise: an independent model would be far off
    assert shared.max() > 0.5 * problem.var_b.mean()


def _moment_z(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """z-scores of the means and variances of independent draws (draw, unit)."""
    n = draws.shape[0]
    sd = np.sqrt(np.diag(cov))
    z_mean = (draws.mean(axis=0) - mean) / (sd / np.sqrt(n))
    z_var = (draws.var(axis=0) / np.diag(cov) - 1.0) / np.sqrt(2.0 / n)
    return np.concatenate([z_mean, z_var])


def _assert_small(z: dict[str, np.ndarray]) -> None:
    """Every z-score below the Bonferroni limit of a test (at least ``Z_LIMIT``).

    The family is every z-score of the test, with a false alarm rate of ``FAMILY_ALPHA``
    (4.0 for 15 z-scores, 4.5 for 140).
    """
    total = sum(values.size for values in z.values())
    limit = max(Z_LIMIT, stats.norm.isf(FAMILY_ALPHA / (2 * total)))
    for name, values in z.items():
        assert np.all(np.abs(values) < limit), (name, values, limit)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_compiled_pass_with_noise_is_the_reference(study, depth):
    """log p(b | τ) and the messages of the engine's pass on the totals (the τ target)."""
    problem = _problem(study, depth)
    data = TreeData.from_problem(problem, copies=3)
    tau = np.random.default_rng(depth).uniform(0.05, 0.6, (3, depth + 1))
    scales = problem.algebra_scales(tau)
    reference = upward_pass(
        data.from_sorted(data.b),
        data.from_sorted(data.var_b),
        scales,
        problem.index,
        problem.priors.mu0,
        problem.priors.s0,
        noise=problem.noise,
    )
    evaluation = evaluate(data, tau)
    constant = -0.5 * LOG_2PI * problem.b.shape[1]  # the kernels drop every 2π
    np.testing.assert_allclose(evaluation.log_marginal + constant, reference.log_marginal)
    y_top, v_top = evaluation.messages[-1]
    np.testing.assert_allclose(y_top[:, 0], reference.y[-1], rtol=1e-10)
    np.testing.assert_allclose(v_top[:, 0], reference.v[-1], rtol=1e-10)
    # from the top effect level up, reusing the messages below it
    changed = tau.copy()
    changed[:, -1] *= 2.0
    partial = evaluation.updated_from(data, depth, changed).log_marginal
    np.testing.assert_allclose(partial, evaluate(data, changed).log_marginal, rtol=1e-12)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_compiled_split_is_the_reference(depth):
    """The engine's split of totals into effects is the reference's, given the same normals."""
    rng = np.random.default_rng(depth)
    rows, n_groups = 3, (5, 2)[:depth]
    sizes = (12, *n_groups)
    # parents sorted, every group non-empty: the engine's order is the tree's
    parents = tuple(
        np.sort(np.concatenate([np.arange(n), rng.integers(0, n, sizes[level] - n)]))
        for level, n in enumerate(n_groups)
    )
    tree = TreeIndex(12, parents, n_groups)
    noise = NodeNoise(
        tuple(rng.uniform(0.0, 0.5, (rows, n)) * (rng.uniform(size=n) > 0.3) for n in n_groups),
        rng.uniform(0.0, 0.5, rows),
    )
    # the effects use the finest level at most: a coarser one has scale zero
    used = min(depth, 1) + 1
    tau = np.zeros((rows, depth + 1))
    tau[:, :used] = rng.uniform(0.1, 1.0, (rows, used))
    b = np.zeros((rows, tree.n_features))
    data = TreeData.build(b, 1.0, tree, np.ones(depth + 1), 0.3, 0.7, noise)
    assert all(np.array_equal(order, np.arange(order.size)) for order in data.orders)
    totals = [rng.normal(size=(rows, n)) for n in tree.n_units]
    reference_rng = np.random.default_rng(9)
    theta0, groups, theta = reference_split(
        totals[-1][:, 0], totals[1:-1], totals[0], tau, tree, 0.3, 0.7, noise, reference_rng
    )
    # the reference draws θ0's normal first, then each level's, coarsest first
    replay = np.random.default_rng(9)
    normals = [replay.standard_normal(rows)[:, None]]
    normals += [replay.standard_normal((rows, n)) for n in tree.n_units[-2:0:-1]]
    state = TreeState(tau, totals)
    units, parent_noise = split_effects(data, state, _Replay(np.concatenate(normals[::-1], 1)))
    np.testing.assert_allclose(units[-1][:, 0], theta0, rtol=1e-12)
    for got, want in zip(units[:-1], groups, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    got_theta = totals[0] - parent_noise[:, data.parent_index[0]]
    np.testing.assert_allclose(got_theta, theta, rtol=1e-12, atol=1e-14)


class _Replay:
    """A stand-in generator whose one call to ``standard_normal`` returns given normals."""

    def __init__(self, normals: np.ndarray):
        self.normals = normals

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        assert shape == self.normals.shape
        return self.normals


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_draws_given_tau_are_the_exact_posterior(study, depth):
    """The sweep's downward draw of the totals, the split into effects and the θ writer.

    Given fixed τ, θ0, the group means of the effect levels and θ (by the step's split and,
    separately, by the engine's θ writer from the recorded parents) have the moments of the
    dense Gaussian posterior. θ0's prior sd is of the order of the shared noise at the top,
    so that the top's noise weighs in its split.
    """
    problem = _problem(study, depth, priors={"s0": 0.1})
    effect_tree = problem.tree
    tau = TAU[: depth + 1]
    expected = dense_posterior(
        problem.b[0],
        _dense_noise(problem),
        tau,
        effect_tree,
        problem.priors.mu0[0],
        problem.priors.s0[0],
    )
    data = TreeData.from_problem(problem, copies=N_COPIES)
    state = TreeState(
        np.broadcast_to(tau, (N_COPIES, depth + 1)).copy(),
        [np.zeros((N_COPIES, n)) for n in data.n_units],
    )
    rng = np.random.default_rng(10 + depth)
    draw_units_given_scales(data, state, list(evaluate(data, state.tau).messages), rng)
    units, parent_noise = split_effects(data, state, rng)
    theta = data.from_sorted(state.units[0] - parent_noise[:, data.parent_index[0]])
    z = {
        "mu": _moment_z(units[-1], *expected.part("mu")),
        "theta": _moment_z(theta, *expected.part("theta")),
    }
    for level, name in enumerate(effect_tree.levels, start=1):
        z[name] = _moment_z(data.from_sorted(units[level - 1], level), *expected.part(name))
    # the writer: θ from the recorded totals of θ's parents and their path noise
    lead = (N_COPIES, 1, 1)
    stores = {"tau": state.tau.reshape(*lead, depth + 1)}
    parents = ThetaParents(
        data.from_sorted(state.units[1], 1).reshape(*lead, -1),
        data.from_sorted(parent_noise, 1).reshape(*lead, -1),
    )
    writer = ThetaWriter(
        problem, np.random.SeedSequence(3), stores, np.float64, False, parents=parents
    )
    writer.recorded(0)
    written = writer.finish()
    writer.close()
    assert written.log_likelihood is None
    written_theta = written.theta.reshape(N_COPIES, -1)
    z["written theta"] = _moment_z(written_theta, *expected.part("theta"))
    _assert_small(z)
    # its per-draw log-likelihood is log N(b; θ, Σ)
    want = noise_log_density(
        problem.b - written_theta[:50], problem.var_b, problem.index, problem.noise
    )
    np.testing.assert_allclose(written.conditional_total[:50, 0], want, rtol=1e-10)


def _exact_unpooled(problem: ShrinkageProblem) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance of θ ~ N(mu0, s0² I), b ~ N(θ, Σ)."""
    s0, mu0 = problem.priors.s0[0], problem.priors.mu0[0]
    noise_precision = np.linalg.inv(_dense_noise(problem))
    cov = np.linalg.inv(np.eye(problem.b.shape[1]) / s0**2 + noise_precision)
    return cov @ (mu0 / s0**2 + noise_precision @ problem.b[0]), cov


def test_no_pooling_draws_are_exact(study):
    problem = _problem(study, "none")
    idata = sample_gibbs(problem, draws=2500, chains=2, random_seed=4, progressbar=False)
    theta = idata.posterior["theta"].to_numpy().reshape(-1, problem.b.shape[1]).astype(float)
    _assert_small({"theta": _moment_z(theta, *_exact_unpooled(problem))})
    # the statistic log_likelihood is log N(b; θ, Σ)
    total = idata.sample_stats["log_likelihood"].to_numpy()[0, :20]
    want = noise_log_density(
        problem.b - idata.posterior["theta"].to_numpy()[0, :20].astype(float),
        problem.var_b,
        problem.index,
        problem.noise,
    )[:, 0]
    np.testing.assert_allclose(total, want, rtol=1e-10)


def _quadrature(problem: ShrinkageProblem, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of every τ by quadrature over a uniform grid of log τ.

    The target p(b | τ) HalfCauchy(τ) τ on log τ, from the reference pass with noise; the
    grid spans A·10⁻³ to A·10³ in each scale (a uniform-grid sum of a smooth density that
    decays at both ends is accurate far below the Monte Carlo error).
    """
    scale = problem.priors.tau_scale[0]
    axes = [np.linspace(np.log(a) - 7.0, np.log(a) + 7.0, n_grid) for a in scale]
    eta = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, scale.size)
    tau = np.exp(eta)
    log_marginal = upward_pass(
        problem.b,
        problem.var_b,
        problem.algebra_scales(tau),
        problem.index,
        problem.priors.mu0,
        problem.priors.s0,
        noise=problem.noise,
    ).log_marginal
    log_weight = log_marginal + np.sum(eta - np.log1p(tau**2 / scale**2), axis=1)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()
    mean = weight @ tau
    return mean, np.sqrt(weight @ (tau - mean) ** 2)


@pytest.mark.parametrize(("depth", "n_grid"), [(0, 400), (1, 120), (2, 50)])
def test_engine_tau_posterior_matches_quadrature(study, depth, n_grid):
    """The collapsed τ updates sample p(τ | b) of the correlated model (each τ, |z| < 4)."""
    problem = _problem(study, depth)
    idata = sample_gibbs(problem, draws=1000, tune=500, chains=4, random_seed=6, progressbar=False)
    draws = idata.posterior["tau"].to_numpy()[:, :, 0]
    mean, sd = _quadrature(problem, n_grid)
    mcse = sd / np.sqrt(ess(split_chains(draws)))
    z = (draws.mean(axis=(0, 1)) - mean) / mcse
    assert np.all(np.abs(z) < Z_LIMIT), (z, mean, draws.mean(axis=(0, 1)))


@pytest.mark.slow
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_engine_agrees_with_collapsed_nuts(study, depth):
    """Every posterior variable of the engine against PyMC's NUTS on the collapsed model."""
    problem = _problem(study, depth)
    settings = {"draws": 1000, "tune": 1000, "chains": 4, "progressbar": False}
    engine = sample_gibbs(problem, random_seed=11, **settings)
    nuts = sample(problem, "nuts", nuts_sampler="pymc", cores=1, random_seed=12, **settings)
    comparison = compare_samplers(engine, nuts, theta_features=None)
    assert comparison.ok, comparison.problems


def test_tau_w_mixes_at_least_half_as_well_as_theta(study):
    """τ_w's ESS per draw is at least half θ's (median over features) with shared noise."""
    problem = _problem(study, 1)
    idata = sample_gibbs(problem, draws=1000, tune=500, chains=4, random_seed=8, progressbar=False)
    tau_w = idata.posterior["tau"].to_numpy()[:, :, :, 0]
    theta = idata.posterior["theta"].to_numpy().reshape(4, 1000, -1).astype(float)
    ratio = bulk_ess(tau_w)[0] / np.median(bulk_ess(theta))
    assert ratio >= 0.5, ratio


def test_conjugate_scheme_refuses_correlated_estimates(study):
    problem = _problem(study, 1)
    for backend in ("numpy", "pymc"):
        with pytest.raises(ValueError, match="scheme='conjugate' needs independent"):
            sample_gibbs(problem, draws=5, tune=5, scheme="conjugate", backend=backend)
    model = build_model(
        problem.estimates, problem.tree, problem.priors, "centered", problem.noise_model
    )
    with model, pytest.raises(ValueError, match="scheme='conjugate' needs independent"):
        TreeGibbs(problem=problem, scheme="conjugate")


@pytest.mark.parametrize("depth", ["none", 2])
def test_pymc_step_samples_the_centred_model_with_noise(study, depth):
    """The step on the centred model with the tree-noise likelihood of b: effects, not totals."""
    problem = _problem(study, depth)
    model = build_model(
        problem.estimates, problem.tree, problem.priors, "centered", problem.noise_model
    )
    assert model["b"] in model.observed_RVs
    idata = sample_gibbs(
        problem,
        draws=300,
        tune=100,
        chains=2,
        random_seed=2,
        progressbar=False,
        backend="pymc",
        cores=1,
    )
    theta = idata.posterior["theta"].to_numpy()
    want = noise_log_density(
        problem.b - theta[0, :10], problem.var_b, problem.index, problem.noise
    )[:, 0]
    np.testing.assert_allclose(idata.sample_stats["log_likelihood"][0, :10], want, rtol=1e-10)
    if depth == "none":
        draws = theta.reshape(-1, theta.shape[-1])
        _assert_small({"theta": _moment_z(draws, *_exact_unpooled(problem))})
        return
    # a point of the step is a point of the model: its log density is finite
    point = {name: idata.posterior[name].to_numpy()[0, -1] for name in ("mu", "theta")}
    for level in problem.tree.levels:
        point[group_mean_name(level)] = idata.posterior[group_mean_name(level)].to_numpy()[0, -1]
    point["tau_log__"] = np.log(idata.posterior["tau"].to_numpy()[0, -1])
    assert np.isfinite(model.compile_logp()(point))
    # effects, not totals: the group means agree with the engine's
    engine = sample_gibbs(problem, draws=1000, chains=4, random_seed=3, progressbar=False)
    z = {}
    for name in ("mu", "theta", *(group_mean_name(level) for level in problem.tree.levels)):
        step_draws = idata.posterior[name].to_numpy().reshape(2, 300, -1)
        engine_draws = engine.posterior[name].to_numpy().reshape(4, 1000, -1)
        mcse = np.hypot(
            step_draws.std(axis=(0, 1)) / np.sqrt(ess(split_chains(step_draws))),
            engine_draws.std(axis=(0, 1)) / np.sqrt(ess(split_chains(engine_draws))),
        )
        z[name] = (step_draws.mean(axis=(0, 1)) - engine_draws.mean(axis=(0, 1))) / mcse
    _assert_small(z)


def test_independent_mode_draws_as_before(study):
    """noise='independent': the engine's draws for a seed are those of the code before noise."""
    problem = _problem(study, 2, noise="independent", priors="research")
    assert not problem.correlated
    idata = sample_gibbs(problem, draws=3, tune=5, chains=2, random_seed=5, progressbar=False)
    np.testing.assert_allclose(idata.posterior["tau"].to_numpy()[:, -1, 0], PINNED_TAU, rtol=1e-8)
    np.testing.assert_allclose(
        idata.posterior["theta"].to_numpy()[:, -1, 0, :3], PINNED_THETA, rtol=1e-6
    )


# the last draw of each chain from the code before shared noise (same seed and problem)
PINNED_TAU = np.array(
    [
        [0.04920160904631803, 0.6665378238977919, 0.6435208652592634],
        [0.10366961972823496, 0.4039781700627012, 0.6419685310280108],
    ]
)
PINNED_THETA = np.array(
    [
        [0.21097686886787415, 0.10058514028787613, 0.15394678711891174],
        [0.18689124286174774, 0.28360965847969055, 0.14599445462226868],
    ]
)
