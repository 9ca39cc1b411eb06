"""The PyMC step method: it targets the model's conditionals and behaves as a PyMC step."""

from __future__ import annotations

import cloudpickle
import numpy as np
import pymc as pm
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, simulate
from bayeshier_pymc.gibbs import TreeGibbs
from bayeshier_pymc.gibbs.sweeps import sum_sq_deviations
from bayeshier_pymc.inference_data import posterior_dims
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.model import group_mean_name
from bayeshier_pymc.sampling import sample_gibbs

PRIORS = {"mu0": 0.3, "s0": 2.0, "tau_scale": [0.5, 2.0, 0.8]}


@pytest.fixture(scope="module")
def shrinkage() -> ShrinkageModel:
    study = simulate(n=40, m=30, p=2, proportions=(0.5, 0.3, 0.2), n_superclasses=2, random_seed=3)
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    return ShrinkageModel(fit, tree, priors=PRIORS, noise="independent")


@pytest.fixture(scope="module")
def centred(shrinkage):
    model = shrinkage.build("centered")
    with model:
        step = TreeGibbs(problem=shrinkage.problem)
    return model, step


def _point(model, step, seed=0):
    values = step.initial_points(1, seed)[0]
    point = model.initial_point()
    point.update({k: v for k, v in values.items() if k != "tau"})
    point["tau_log__"] = np.log(values["tau"])
    return point


def test_step_reads_priors_and_data_from_the_model(shrinkage, centred):
    _, step = centred
    np.testing.assert_allclose(step.data.tau_scale, np.tile(PRIORS["tau_scale"], (2, 1)))
    assert np.all(step.data.mu0 == PRIORS["mu0"]) and np.all(step.data.s0 == PRIORS["s0"])
    b = shrinkage.estimates.estimate.to_numpy()
    np.testing.assert_allclose(step.data.from_sorted(step.data.b), b)
    np.testing.assert_allclose(
        step.data.from_sorted(step.data.var_b), shrinkage.estimates.se.to_numpy() ** 2
    )


def _constant_over_grid(model_logp, analytic):
    difference = np.asarray(model_logp) - np.asarray(analytic)
    assert np.ptp(difference) < 1e-8 * max(1.0, np.abs(difference).max())


def test_unit_conditionals_match_the_model_logp(shrinkage, centred):
    """Model logp minus the step's normal conditional is flat in θ_j, a group mean and θ0."""
    model, step = centred
    logp = model.compile_logp()
    point = _point(model, step)
    tree = shrinkage.tree
    tau = np.exp(point["tau_log__"][1])
    grid = np.linspace(-1.5, 1.5, 9)
    # θ_j: prior N(subclass mean, τ_w²), child b_j ~ N(θ_j, s_j²)
    j = 4
    parent = point[group_mean_name(tree.levels[0])][1, tree.parents[0][j]]
    b, se = shrinkage.estimates.estimate.to_numpy()[1, j], shrinkage.estimates.se.to_numpy()[1, j]
    precision = 1 / tau[0] ** 2 + 1 / se**2
    mean = (parent / tau[0] ** 2 + b / se**2) / precision
    values = [logp({**point, "theta": _with(point["theta"], (1, j), x)}) for x in grid]
    _constant_over_grid(values, stats.norm.logpdf(grid, mean, precision**-0.5))
    # θ0: prior N(mu0, s0²), children the superclass means with sd τ_u
    children = point[group_mean_name(tree.levels[1])][1]
    precision = 1 / PRIORS["s0"] ** 2 + children.size / tau[2] ** 2
    mean = (PRIORS["mu0"] / PRIORS["s0"] ** 2 + children.sum() / tau[2] ** 2) / precision
    values = [logp({**point, "mu": _with(point["mu"], (1,), x)}) for x in grid]
    _constant_over_grid(values, stats.norm.logpdf(grid, mean, precision**-0.5))


def _with(array, index, value):
    new = np.array(array, dtype=float)
    new[index] = value
    return new


@pytest.mark.parametrize("level", [0, 1, 2])
def test_scale_conditional_matches_the_model_logp(centred, level):
    """The step's target for τ_l (HalfCauchy × normal units, on log τ) is the model's."""
    model, step = centred
    logp = model.compile_logp()
    point = _point(model, step, seed=1)
    state = step._state_from_point(point)
    sum_sq = sum_sq_deviations(step.data, state, level)[0]
    n = step.data.n_units[level]
    grid = np.linspace(-3.0, 1.0, 9)
    values = [logp({**point, "tau_log__": _with(point["tau_log__"], (0, level), x)}) for x in grid]
    tau = np.exp(grid)
    analytic = (
        stats.halfcauchy.logpdf(tau, scale=PRIORS["tau_scale"][level])
        - n * grid
        - 0.5 * sum_sq / tau**2
        + grid
    )
    _constant_over_grid(values, analytic)


def test_collapsed_scale_target_matches_the_collapsed_model(shrinkage, centred):
    from bayeshier_pymc.gibbs.scale_kernels import evaluate, log_scale_prior

    _, step = centred
    collapsed = shrinkage.build("collapsed")
    logp = collapsed.compile_logp()
    start = collapsed.initial_point()
    grid = np.linspace(-3.0, 1.0, 9)
    for level in range(3):
        log_tau = np.tile(np.log([0.3, 0.5, 0.7]), (2, 1))
        model_values, step_values = [], []
        for x in grid:
            log_tau[:, level] = x
            model_values.append(logp({**start, "tau_log__": log_tau}))
            own = evaluate(step.data, np.exp(log_tau)).log_marginal + log_scale_prior(
                log_tau, step.data.tau_scale
            ).sum(axis=1)
            step_values.append(own.sum())
        _constant_over_grid(model_values, step_values)


def test_step_returns_a_transformed_point_and_its_stats(centred):
    model, step = centred
    point = _point(model, step)
    new_point, stats_list = step.step(point)
    assert set(new_point) == set(point)
    for name, value in new_point.items():
        assert value.shape == point[name].shape and value.dtype == point[name].dtype
        assert not np.array_equal(value, point[name])
    assert np.isfinite(new_point["tau_log__"]).all()
    assert len(stats_list) == 1 and set(stats_list[0]) == {"scale_acceptance"}


def test_step_uses_the_generator_it_is_given(centred):
    model, step = centred
    point = _point(model, step)
    draws = []
    for seed in (1, 1, 2):
        step.set_rng(np.random.default_rng(seed))
        draws.append(step.step(point)[0]["theta"])
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.array_equal(draws[0], draws[2])


def test_step_survives_cloudpickle(centred):
    model, step = centred
    point = _point(model, step)
    copy = cloudpickle.loads(cloudpickle.dumps(step))
    for s in (step, copy):
        s.set_rng(np.random.default_rng(5))
    np.testing.assert_array_equal(step.step(point)[0]["theta"], copy.step(point)[0]["theta"])


def test_step_refuses_models_it_cannot_sweep(shrinkage):
    with shrinkage.build("noncentered"), pytest.raises(ValueError, match="centred model"):
        TreeGibbs(problem=shrinkage.problem)
    unpooled = ShrinkageModel(shrinkage.estimates, depth="none").problem
    with shrinkage.build("centered"), pytest.raises(ValueError, match="hierarchy"):
        TreeGibbs(problem=unpooled)
    with shrinkage.build("centered") as model, pytest.raises(ValueError, match="every free"):
        TreeGibbs([model.rvs_to_values[model["theta"]]], problem=shrinkage.problem)
    with shrinkage.build("centered"), pytest.raises(ValueError, match="scheme"):
        TreeGibbs(problem=shrinkage.problem, scheme="asis")


@pytest.mark.parametrize("scheme", ["conjugate", "collapsed"])
def test_pm_sample_runs_the_step_from_dispersed_starts(shrinkage, scheme):
    runs = []
    for seed in (7, 7, 8):
        with shrinkage.build("centered"):
            step = TreeGibbs(problem=shrinkage.problem, scheme=scheme)
            runs.append(
                pm.sample(
                    draws=30,
                    tune=60,
                    chains=2,
                    cores=1,
                    step=step,
                    initvals=step.initial_points(2, seed),
                    random_seed=seed,
                    progressbar=False,
                    compute_convergence_checks=False,
                    discard_tuned_samples=False,
                )
            )
    first_draw = runs[0].warmup_posterior["tau"].isel(draw=0).to_numpy()
    assert not np.allclose(first_draw[0], first_draw[1])
    np.testing.assert_array_equal(runs[0].posterior["theta"], runs[1].posterior["theta"])
    assert not np.array_equal(runs[0].posterior["theta"], runs[2].posterior["theta"])
    if scheme == "collapsed":
        acceptance = runs[0].sample_stats["scale_acceptance"].to_numpy()
        assert np.all((acceptance >= 0) & (acceptance <= 1))


def test_pymc_backend_returns_the_contract(shrinkage):
    idata = sample_gibbs(
        shrinkage.problem,
        draws=20,
        tune=20,
        chains=2,
        random_seed=1,
        progressbar=False,
        backend="pymc",
        cores=1,
        scheme="conjugate",
    )
    engine = sample_gibbs(
        shrinkage.problem, draws=20, tune=20, chains=2, random_seed=1, progressbar=False
    )
    for group in ("posterior", "log_likelihood", "observed_data", "constant_data"):
        assert set(idata[group].data_vars) == set(engine[group].data_vars)
        for name in idata[group].data_vars:
            assert idata[group][name].dims == engine[group][name].dims
    for name, dims in posterior_dims(shrinkage.tree).items():
        assert idata.posterior[name].dims == ("chain", "draw", *dims)
        for dim in dims:
            assert list(idata.posterior[dim].to_numpy()) == list(engine.posterior[dim].to_numpy())
    assert idata.attrs["sampler"] == "gibbs (conjugate, pymc step)"
    assert idata.attrs["sampling_time"] > 0


def test_step_samples_the_no_pooling_model_exactly(shrinkage):
    flat = ShrinkageModel(shrinkage.estimates, shrinkage.tree, depth="none", priors={"s0": 2.0})
    with flat.build() as model:
        step = TreeGibbs(problem=flat.problem)
        point = model.initial_point()
        step.set_rng(np.random.default_rng(3))
        draws = np.stack([step.step(point)[0]["theta"][0, 0] for _ in range(3000)])
    b, se = flat.estimates.estimate.to_numpy()[0, 0], flat.estimates.se.to_numpy()[0, 0]
    precision = 1 / 4.0 + 1 / se**2
    cdf = stats.norm(b / se**2 / precision, precision**-0.5).cdf
    assert stats.kstest(draws, cdf).pvalue > 1e-3
