"""Replicated estimates: the posterior predictive group of every fit and prior predictive draws."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, log_likelihood, mlm, tree_noise
from bayeshier_pymc.log_likelihood import leave_one_out
from bayeshier_pymc.predictive import _around_parents, predictive_generator
from bayeshier_pymc.sampling import sample_gibbs
from bayeshier_pymc.simulate import ResidualNoise, simulate
from tests.dense_gaussian import marginal_covariance

DIMS = ("chain", "draw", "covariate", "feature")


def _tidy(b: np.ndarray, se: np.ndarray, features: pd.Index) -> dict[str, pd.DataFrame]:
    return {
        "estimate": pd.DataFrame([b], index=["x"], columns=features),
        "se": pd.DataFrame([se], index=["x"], columns=features),
    }


def _tree(m: int, n_groups: int) -> Hierarchy:
    features = pd.Index([f"f{j}" for j in range(m)])
    annotations = pd.DataFrame({"group": [f"g{j % n_groups}" for j in range(m)]}, index=features)
    return Hierarchy.from_frame(annotations, ["group"])


@pytest.mark.parametrize("sampler", ["gibbs", "nuts"])
def test_every_fit_has_replicated_estimates_for_arviz(sampler):
    tree = _tree(30, 5)
    rng = np.random.default_rng(0)
    b = rng.normal(0.2, 0.5, 30)
    model = ShrinkageModel(_tidy(b, np.full(30, 0.3), tree.features), tree)
    options = {"nuts_sampler": "pymc", "cores": 1} if sampler == "nuts" else {}
    idata = model.sample(
        sampler, draws=200, tune=200, chains=2, random_seed=4, progressbar=False, **options
    )
    replicated = idata.posterior_predictive["b"]
    assert replicated.dims == ("chain", "draw", "covariate", "feature")
    assert replicated.dtype == idata.posterior["theta"].dtype
    # independent estimates: b_j ~ N(parent, τ_w² + se²) given each draw, θ_j drawn afresh
    post = idata.posterior
    parent = post["group_mean"].isel(group=xr.DataArray(tree.parents[0], dims="feature"))
    sd = np.sqrt(post["tau"].sel(level="feature") ** 2 + 0.3**2)
    z = ((replicated - parent.to_numpy()) / sd).to_numpy().ravel()
    # the replicate's noise is fresh in every draw: z is iid N(0, 1)
    assert abs(z.mean()) < 4.5 / np.sqrt(z.size)
    assert abs(z.var() - 1.0) < 4.5 * np.sqrt(2 / z.size)
    pit = az.loo_pit(idata, y="b")
    assert pit.shape == (1, 30) and np.all((pit >= 0) & (pit <= 1))
    az.plot_ppc(idata, num_pp_samples=20)
    again = model.sample(
        sampler, draws=200, tune=200, chains=2, random_seed=4, progressbar=False, **options
    )
    np.testing.assert_array_equal(again.posterior_predictive["b"], replicated)


def _two_covariates(tree: Hierarchy, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """Estimates of two covariates whose standard errors differ by feature and covariate."""
    m = tree.n_features
    b = rng.normal(0.2, 0.8, (2, m))
    se = np.stack([rng.uniform(0.1, 0.3, m), rng.uniform(1.0, 2.0, m)])
    index = pd.Index(["x1", "x2"], name="covariate")
    return {
        "estimate": pd.DataFrame(b, index=index, columns=tree.features),
        "se": pd.DataFrame(se, index=index, columns=tree.features),
    }


def test_replicates_around_parents_of_every_covariate(monkeypatch):
    """b_kj = parent_k + sqrt(τ_w,k² + s_kj²) · z_kj for every covariate k of every draw.

    The standard normals z from one generator, drawn in the order chain, draw, covariate,
    feature (several chunks of draws per chain give the stream of one call).
    """
    tree = _tree(12, 3)
    problem = ShrinkageModel(_two_covariates(tree, np.random.default_rng(0)), tree).problem
    posterior = sample_gibbs(
        problem, draws=5, tune=5, chains=2, random_seed=1, progressbar=False
    ).posterior
    monkeypatch.setattr(log_likelihood, "CHUNK_VALUES", 48)  # 2 draws × 2 covariates × 12
    assert len(list(log_likelihood.chunks((2, 5), 24))) == 6
    replicated = _around_parents(posterior, problem, np.random.default_rng(2), np.float64)
    z = np.random.default_rng(2).standard_normal((2, 5, 2, 12))
    lead = ("chain", "draw", "covariate")
    parent = posterior["group_mean"].transpose(*lead, "group").to_numpy()[..., tree.parents[0]]
    tau_w = posterior["tau"].sel(level="feature").transpose(*lead).to_numpy()
    sd = np.sqrt(tau_w[..., None] ** 2 + problem.var_b)
    assert problem.var_b[1].min() > problem.var_b[0].max()
    assert np.all(tau_w[..., 0] != tau_w[..., 1])
    np.testing.assert_allclose(replicated, parent + sd * z, rtol=1e-13, atol=1e-14)


def test_leave_one_out_replicates_alone_store_no_log_density(monkeypatch):
    """A fit that needs only the replicates commits no store for their log density.

    Independent estimates without pooling: one store (the replicates) of chain × draw ×
    covariate × feature values, holding what the full pass draws from the same generator.
    """
    tree = _tree(12, 3)
    estimates = _two_covariates(tree, np.random.default_rng(0))
    problem = ShrinkageModel(estimates, tree, depth="none").problem
    new_store = log_likelihood.store_array
    stores: list[tuple[int, ...]] = []

    def recorded_store(shape: tuple[int, ...], dtype: type) -> np.ndarray:
        stores.append(shape)
        return new_store(shape, dtype)

    monkeypatch.setattr(log_likelihood, "store_array", recorded_store)
    idata = sample_gibbs(problem, draws=5, tune=5, chains=2, random_seed=1, progressbar=False)
    assert stores == [(2, 5, 2, 12)]
    dtype = idata.posterior["theta"].dtype
    full = leave_one_out(problem, None, lead=(2, 5), dtype=dtype, rng=predictive_generator(1))
    replicated = idata.posterior_predictive["b"].transpose(*DIMS)
    np.testing.assert_array_equal(replicated, full[1])
    alone = leave_one_out(
        problem, None, lead=(2, 5), dtype=dtype, rng=predictive_generator(1), log_density=False
    )
    assert alone[0] is None
    np.testing.assert_array_equal(alone[1], full[1])
    with pytest.raises(ValueError, match="log_density=True or a generator"):
        leave_one_out(problem, None, lead=(2, 5), log_density=False)


@pytest.mark.parametrize("depth", [0, 2, "none"])
def test_correlated_replicates_follow_the_leave_one_out_predictive(depth):
    """Given τ, each replicate is N(mean, var) of p(b_j | b_−j, τ) under the tree noise."""
    sim = simulate(
        n=40,
        m=12,
        p=1,
        proportions=[0.5, 0.5],
        n_superclasses=1,
        residuals=ResidualNoise(subclass_sd=0.8, superclass_sd=0.5, global_sd=0.4),
        random_seed=2,
    )
    fit = mlm(sim.Y, sim.X, x_intercept=False)
    tree = Hierarchy.from_frame(sim.annotations, levels=sim.levels)
    problem = ShrinkageModel(fit, tree, depth=depth, effect_scale="raw").problem
    mu0, s0 = problem.priors.mu0[0], problem.priors.s0[0]
    n = 40_000
    tau = None if depth == "none" else np.full((1, n, 1, depth + 1), 0.3)
    replicated = leave_one_out(problem, tau, lead=(1, n), rng=np.random.default_rng(1))[1][0, :, 0]
    # the dense leave-one-out predictive of b ~ N(mu0, K): K = the effects' prior covariance
    # given τ (s0² I without pooling) plus the tree noise's covariance
    noise_cov = tree_noise(fit, tree).covariance(problem.covariates[0])
    effects = (
        s0**2 * np.eye(12)
        if depth == "none"
        else marginal_covariance(
            np.zeros((12, 12)), np.full(depth + 1, 0.3), tree.truncate(depth), s0
        )
    )
    precision = np.linalg.inv(effects + noise_cov)
    b = problem.b[0]
    variance = 1.0 / np.diag(precision)
    mean = b - precision @ (b - mu0) * variance
    np.testing.assert_array_less(
        np.abs(replicated.mean(axis=0) - mean), 4.5 * np.sqrt(variance / n)
    )
    np.testing.assert_allclose(replicated.var(axis=0), variance, rtol=4.5 * np.sqrt(2 / n))


def test_a_heavy_tailed_error_is_visible_in_the_check():
    """LOO-PIT of estimates with t(2) errors is far from uniform; with normal errors it is not.

    Three data sets per error law (noise-dominated: effects sd 0.15, se 0.5), each checked by
    a Kolmogorov–Smirnov test of its LOO-PIT values, combined by Fisher's method.
    """
    m = 300
    tree = _tree(m, 10)
    se = np.full(m, 0.5)
    p_values: dict[str, list[float]] = {"normal": [], "t2": []}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        theta = rng.normal(0.0, 0.15, m)
        errors = {"normal": rng.standard_normal(m), "t2": rng.standard_t(2, m)}
        for name, error in errors.items():
            model = ShrinkageModel(_tidy(theta + se * error, se, tree.features), tree)
            idata = sample_gibbs(
                model.problem, draws=500, tune=300, chains=2, random_seed=1, progressbar=False
            )
            pit = az.loo_pit(idata, y="b").ravel()
            p_values[name].append(stats.kstest(pit, "uniform").pvalue)
    combined = {name: stats.combine_pvalues(p).pvalue for name, p in p_values.items()}
    assert combined["t2"] < 1e-3 and combined["normal"] > 0.01, p_values


def test_prior_predictive_draws():
    tree = _tree(20, 4)
    rng = np.random.default_rng(3)
    se = rng.uniform(0.1, 0.4, 20)
    model = ShrinkageModel(
        _tidy(rng.normal(size=20), se, tree.features), tree, depth="none", priors="research"
    )
    prior = model.sample_prior_predictive(4000, random_seed=5)
    b = prior.prior_predictive["b"].isel(chain=0, covariate=0)
    # without pooling b ~ N(mu0, s0² + se²) with the research priors' mu0 = 0, s0 = 1
    np.testing.assert_allclose(b.var("draw"), 1.0 + se**2, rtol=4.5 * np.sqrt(2 / 4000))
    pooled = ShrinkageModel(_tidy(rng.normal(size=20), se, tree.features), tree)
    prior = pooled.sample_prior_predictive(50, random_seed=5)
    assert set(prior.prior.data_vars) == {"tau", "mu", "group_mean", "theta"}
    assert (prior.prior["tau"] > 0).all()
    az.plot_ppc(prior, group="prior", num_pp_samples=10)
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        pooled.sample_prior_predictive(0)
