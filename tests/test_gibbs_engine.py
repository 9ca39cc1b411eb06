"""The vectorised engine: the InferenceData contract, seeds, exact posteriors and τ mixing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, simulate
from bayeshier_pymc.convergence import bulk_ess, rank_rhat
from bayeshier_pymc.gaussian_tree import TreeIndex, posterior_normal, upward_pass
from bayeshier_pymc.inference_data import posterior_dims
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.model import model_coords
from bayeshier_pymc.sampler_comparison import _summaries
from bayeshier_pymc.sampling import sample_gibbs

Z_LIMIT = 4.0


def _model(m=60, p=2, n=60, depth=None, seed=11, **kwargs) -> ShrinkageModel:
    study = simulate(
        n=n, m=m, p=p, proportions=(0.5, 0.3, 0.2), n_superclasses=2, random_seed=seed, **kwargs
    )
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    return ShrinkageModel(fit, tree, depth=depth, noise="independent")


@pytest.fixture(scope="module")
def depth_one() -> ShrinkageModel:
    return _model(depth=1)


@pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed")
@pytest.mark.parametrize("depth", ["none", 0, 1, 2])
def test_engine_returns_the_contract(depth):
    model = _model(m=20, depth=depth)
    idata = model.sample("gibbs", draws=30, tune=10, chains=3, random_seed=1, progressbar=False)
    dims = posterior_dims(model.tree)
    assert set(idata.posterior.data_vars) == set(dims)
    coords = (
        model_coords(model.estimates, model.tree)
        if model.tree is not None
        else {
            "covariate": model.estimates.covariates.tolist(),
            "feature": model.estimates.features.tolist(),
        }
    )
    for name, var_dims in dims.items():
        assert idata.posterior[name].dims == ("chain", "draw", *var_dims)
        for dim in var_dims:
            assert idata.posterior[dim].to_numpy().tolist() == coords[dim]
    assert idata.posterior["theta"].dtype == np.float32
    assert idata.posterior.sizes["chain"] == 3 and idata.posterior.sizes["draw"] == 30
    assert set(idata.log_likelihood.data_vars) == {"b_marginal"}
    assert idata.log_likelihood["b_marginal"].dtype == np.float32
    total = stats.norm(idata.posterior["theta"], idata.constant_data["se"]).logpdf(
        idata.observed_data["b"]
    )
    np.testing.assert_allclose(
        idata.sample_stats["log_likelihood"], total.sum(axis=(2, 3)), rtol=1e-6
    )
    assert idata.attrs["sampling_time"] > 0 and idata.attrs["sampler"].startswith("gibbs")
    assert np.isfinite(idata.log_likelihood["b_marginal"]).all()


def test_same_seed_same_draws_and_chains_start_apart(depth_one):
    def run(seed, scheme):
        return sample_gibbs(
            depth_one.problem,
            draws=5,
            tune=0,
            chains=4,
            random_seed=seed,
            progressbar=False,
            scheme=scheme,
        )

    for scheme in ("collapsed", "conjugate"):
        first, again, other = run(3, scheme), run(3, scheme), run(4, scheme)
        for name in first.posterior.data_vars:
            np.testing.assert_array_equal(first.posterior[name], again.posterior[name])
        assert not np.array_equal(first.posterior["tau"], other.posterior["tau"])
        start = first.posterior["tau"].isel(draw=0).to_numpy()
        assert len(np.unique(start[:, 0, 0])) == 4


def test_progress_bar_and_argument_checks(depth_one, capsys):
    sample_gibbs(depth_one.problem, draws=150, tune=0, chains=1, random_seed=0, progressbar=True)
    assert "Gibbs (collapsed)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scheme"):
        sample_gibbs(depth_one.problem, draws=5, scheme="asis")
    with pytest.raises(ValueError, match="backend"):
        sample_gibbs(depth_one.problem, draws=5, backend="jax")
    with pytest.raises(ValueError, match="draws >= 1"):
        sample_gibbs(depth_one.problem, draws=0)
    with pytest.raises(ValueError, match="theta_dtype must be float32 or float64"):
        sample_gibbs(depth_one.problem, draws=5, theta_dtype=np.float16)


def _exact_posterior_means(model: ShrinkageModel, covariate: int, features: list[int]):
    """E[τ_w], E[τ_v], sd of both, E[θ0] and E[θ_j] by quadrature over (log τ_w, log τ_v)."""
    b = model.estimates.estimate.to_numpy()[covariate]
    var_b = model.estimates.se.to_numpy()[covariate] ** 2
    tree = TreeIndex.from_hierarchy(model.tree)
    priors = model.priors
    mu0, s0, scale = priors.mu0[covariate], priors.s0[covariate], priors.tau_scale[covariate]
    grid = np.meshgrid(np.linspace(-9, 1.5, 260), np.linspace(-9, 2.5, 260), indexing="ij")
    eta = np.stack([g.ravel() for g in grid], axis=1)
    tau = np.exp(eta)
    messages = upward_pass(np.broadcast_to(b, (len(tau), b.size)), var_b, tau, tree, mu0, s0)
    log_post = messages.log_marginal + (eta - np.log1p((tau / scale) ** 2)).sum(axis=1)
    weight = np.exp(log_post - log_post.max())
    weight /= weight.sum()
    theta0, _ = posterior_normal(mu0, s0**2, messages.y[-1], messages.v[-1])
    group, _ = posterior_normal(theta0[:, None], tau[:, 1:2] ** 2, messages.y[1], messages.v[1])
    parent = group[:, tree.parents[0][features]]
    theta, _ = posterior_normal(parent, tau[:, :1] ** 2, b[features], var_b[features])
    moments = {
        "tau_w": weight @ tau[:, 0],
        "tau_v": weight @ tau[:, 1],
        "mu": weight @ theta0,
        **{f"theta_{j}": weight @ theta[:, i] for i, j in enumerate(features)},
    }
    sds = {"tau_w": np.sqrt(weight @ tau[:, 0] ** 2 - moments["tau_w"] ** 2)}
    sds["tau_v"] = np.sqrt(weight @ tau[:, 1] ** 2 - moments["tau_v"] ** 2)
    return moments, sds


@pytest.mark.parametrize("scheme", ["collapsed", "conjugate"])
def test_engine_reproduces_the_exact_posterior(depth_one, scheme):
    features = [0, 25, 59]
    idata = sample_gibbs(
        depth_one.problem,
        draws=2000,
        tune=500,
        chains=4,
        random_seed=21,
        progressbar=False,
        scheme=scheme,
    )
    post = idata.posterior
    for covariate in range(2):
        exact_mean, exact_sd = _exact_posterior_means(depth_one, covariate, features)
        draws = {
            "tau_w": post["tau"][:, :, covariate, 0],
            "tau_v": post["tau"][:, :, covariate, 1],
            "mu": post["mu"][:, :, covariate],
            **{f"theta_{j}": post["theta"][:, :, covariate, j] for j in features},
        }
        for name, values in draws.items():
            summary = _summaries(values.to_numpy()[..., None].astype(float))
            z = (summary["mean"][0] - exact_mean[name]) / summary["mcse_mean"][0]
            assert abs(z) < Z_LIMIT, (scheme, covariate, name, z)
            if name in exact_sd:
                z_sd = (summary["sd"][0] - exact_sd[name]) / summary["mcse_sd"][0]
                assert abs(z_sd) < Z_LIMIT, (scheme, covariate, name, z_sd)


def test_collapsed_scheme_mixes_tau_w_where_the_centred_sweep_crawls():
    """τ_w = 0.05 against s ≈ 0.13: the issue's hard regime, in small.

    Here the posterior of log τ_w has a long left tail (τ_w near 0 fits the data almost as
    well), which the independence proposal reaches in excursions, so a covariate's ESS ratio
    scatters between runs (0.3–0.7 over seeds for the first covariate, true value ≈ 0.6 from
    4 × 4000 draws): the median over covariates must reach half the θ ESS per draw, and the
    worst covariate must stay far above the centred sweep's typical covariate.
    """
    model = _model(m=300, p=3, depth=1, seed=5, tau_w=0.05)
    ratios, rhats, conjugate = [], [], []
    for scheme in ("collapsed", "conjugate"):
        idata = sample_gibbs(
            model.problem,
            draws=1000,
            tune=500,
            chains=4,
            random_seed=2,
            progressbar=False,
            scheme=scheme,
        )
        tau_w = idata.posterior["tau"].isel(level=0).transpose("chain", "draw", "covariate")
        theta = idata.posterior["theta"].transpose("chain", "draw", "covariate", "feature")
        tau_ess = bulk_ess(tau_w.to_numpy())
        theta_values = theta.to_numpy().reshape(4, 1000, -1).astype(float)
        theta_ess = np.median(bulk_ess(theta_values))
        if scheme == "collapsed":
            ratios, rhats = tau_ess / theta_ess, rank_rhat(tau_w.to_numpy())
        else:
            conjugate = tau_ess / theta_ess
    assert np.median(ratios) >= 0.5, ratios
    assert np.all(rhats <= 1.01), rhats
    assert np.median(conjugate) < 0.1, conjugate
    assert ratios.min() >= 10 * np.median(conjugate), (ratios, conjugate)


def test_short_gibbs_run_warns_when_diagnostics_fail():
    import warnings

    from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
    from bayeshier_pymc.convergence import ConvergenceWarning

    study = simulate(60, 40, 2, random_seed=0)
    fit = mlm(study.Y, study.X, x_intercept=False)
    model = ShrinkageModel(fit, Hierarchy.from_frame(study.annotations, ["subclass"]))
    with pytest.warns(ConvergenceWarning, match="bulk ESS"):
        model.sample("gibbs", draws=20, tune=5, chains=2, random_seed=1, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.sample("gibbs", draws=1000, tune=500, chains=2, random_seed=1, progressbar=False)
