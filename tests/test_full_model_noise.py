"""The full (non-collapsed) PyMC model with tree-structured noise of the estimates.

Its observed ``b`` has the log density log N(b; θ, Σ) of the correlated noise, checked against
the dense normal; its random draws (posterior predictive) have the covariance Σ; NUTS on it
draws the exact Gaussian posterior without pooling and, centred or not, the same posterior as
the collapsed model (slow).
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ConvergenceWarning
from bayeshier_pymc.simulate import ResidualNoise, simulate
from tests.test_loo_noise import dense_noise_covariance

NUTS = {"nuts_sampler": "pymc", "cores": 1, "chains": 2, "progressbar": False}


@pytest.fixture(scope="module")
def study() -> tuple[bh.MLMFit, bh.Hierarchy]:
    sim = simulate(
        n=40,
        m=10,
        p=2,
        proportions=(0.5, 0.3, 0.2),
        n_superclasses=2,
        residuals=ResidualNoise(subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3),
        random_seed=8,
    )
    fit = bh.mlm(sim.Y, sim.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(sim.annotations, levels=sim.levels)


@pytest.mark.parametrize(("depth", "parameterization"), [("none", "centered"), (1, "noncentered")])
def test_observed_b_has_the_dense_correlated_density(study, depth, parameterization):
    model = bh.ShrinkageModel(*study, depth=depth)
    problem = model.problem
    pymc_model = model.build(parameterization)
    point = pymc_model.initial_point()
    name = "theta" if depth == "none" else "theta_offset"
    point[name] = np.random.default_rng(0).normal(size=problem.b.shape)
    got = pymc_model.compile_logp(vars=[pymc_model["b"]])(point)
    [theta_graph] = pymc_model.replace_rvs_by_values([pymc_model["theta"]])
    theta = pymc_model.compile_fn(theta_graph)(point)
    want = sum(
        stats.multivariate_normal(theta[c], dense_noise_covariance(problem, c)).logpdf(problem.b[c])
        for c in range(problem.b.shape[0])
    )
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_posterior_predictive_draws_have_the_noise_covariance(study):
    problem = bh.ShrinkageModel(*study, depth=1).problem
    n_draws = 100_000
    mean = np.zeros((n_draws, *problem.b.shape))
    draws = problem.noise_model.draw(mean, np.random.default_rng(1))
    for c in range(problem.b.shape[0]):
        want = dense_noise_covariance(problem, c)
        got = np.cov(draws[:, c], rowvar=False)
        # Var of a sample covariance ≈ (Σ_ii Σ_jj + Σ_ij²) / n; allow 5 of its sds
        sd = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / n_draws)
        np.testing.assert_array_less(np.abs(got - want), 5 * sd)


def test_no_pooling_with_noise_samples_the_exact_posterior_by_nuts(study):
    model = bh.ShrinkageModel(*study, depth="none")
    problem, priors = model.problem, model.problem.priors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        idata = model.sample(draws=500, tune=300, random_seed=2, **NUTS)
    with model.build():
        predictive = pm.sample_posterior_predictive(
            idata.sel(draw=slice(0, 4)), progressbar=False, random_seed=3
        )
    assert predictive.posterior_predictive["b"].shape == (2, 5, *problem.b.shape)
    theta = idata.posterior["theta"]
    z = []
    for c in range(problem.b.shape[0]):
        noise_precision = np.linalg.inv(dense_noise_covariance(problem, c))
        mu0, s0 = priors.mu0[c], priors.s0[c]
        cov = np.linalg.inv(np.eye(problem.b.shape[1]) / s0**2 + noise_precision)
        mean = cov @ (mu0 / s0**2 + noise_precision @ problem.b[c])
        draws = theta.isel(covariate=c)
        mcse = az.mcse(draws.to_dataset(name="theta"))["theta"].to_numpy()
        z.append((draws.mean(("chain", "draw")).to_numpy() - mean) / mcse)
    assert np.max(np.abs(z)) < 4


@pytest.mark.slow
@pytest.mark.parametrize("parameterization", ["centered", "noncentered"])
def test_full_model_with_noise_agrees_with_the_collapsed_one(parameterization):
    """NUTS on the full model and on the collapsed one: the same posterior, |z| < 4.

    Eight subclasses and effects that vary well above the standard errors (τ / s ≈ 3), so
    that the centred model has no funnel to diverge in.
    """
    sim = simulate(
        n=40,
        m=32,
        p=1,
        proportions=[1.0] * 8,
        tau_w=0.5,
        tau_v=0.8,
        residuals=ResidualNoise(subclass_sd=0.6, global_sd=0.3),
        random_seed=8,
    )
    fit = bh.mlm(sim.Y, sim.X, x_intercept=False)
    model = bh.ShrinkageModel(fit, bh.Hierarchy.from_frame(sim.annotations, levels=sim.levels))
    run = {**NUTS, "draws": 2000, "tune": 1000, "target_accept": 0.95}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        collapsed = model.sample(random_seed=3, **run)
        full = model.sample(random_seed=4, parameterization=parameterization, **run)
    assert int(full.sample_stats["diverging"].sum()) <= 0.01 * 2 * run["draws"]
    for name in ("tau", "mu", "subclass_mean", "theta"):
        a, b = collapsed.posterior[name], full.posterior[name]
        mcse = np.hypot(az.mcse(a.to_dataset())[name], az.mcse(b.to_dataset())[name])
        z = (a.mean(("chain", "draw")) - b.mean(("chain", "draw"))) / mcse
        assert float(np.abs(z).max()) < 4, (name, z.to_numpy())
