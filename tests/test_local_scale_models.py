"""The heavy-tailed group prior in the PyMC models: densities against closed forms (scipy).

Under ``group_prior`` "horseshoe" or "student_t" each group g has a local scale λ_g and the
prior variance τ_l² λ_g² around its parent. The collapsed model's log p(b | τ, λ) (the
:class:`~bayeshier_pymc.gaussian_tree.log_marginal_op.LocalScaleLogMarginalOp`) is checked
against the dense multivariate normal of b, its gradients against finite differences, on
every backend; the full models against the hand-written joint density; the prior of λ
against its specified distribution.
"""

import numpy as np
import pandas as pd
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel
from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex
from bayeshier_pymc.gaussian_tree.log_marginal_op import (
    log_marginal,
    log_marginal_with_local_scales,
)

MODES = ("FAST_RUN", "NUMBA", "JAX")
"""PyTensor's C/Python backend (the Op's ``perform``), numba (the kernel) and JAX (the graph)."""


@pytest.fixture(scope="module")
def tree():
    annotations = pd.DataFrame(
        {"sub": list("aabbcddc"), "super": list("XXXXYZZY")},
        index=[f"f{j}" for j in range(8)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"])


@pytest.fixture(scope="module")
def problem(tree):
    """Three rows of data, scales, local scales and shared noise on ``tree``."""
    rng = np.random.default_rng(1)
    n_rows = 3
    return {
        "b": rng.normal(size=(n_rows, 8)),
        "var_b": rng.uniform(0.2, 1.0, (n_rows, 8)),
        "tau": rng.uniform(0.3, 1.5, (n_rows, 3)),
        "local": [rng.uniform(0.3, 3.0, (n_rows, n)) for n in tree.n_groups],
        "mu0": np.array([0.1, -0.2, 0.3]),
        "s0": np.array([1.0, 1.5, 0.7]),
        "noise": NodeNoise(
            tuple(rng.uniform(0.0, 0.5, (n_rows, n)) for n in tree.n_groups),
            rng.uniform(0.0, 0.5, n_rows),
        ),
    }


def _dense_log_marginal(tree, problem, local, noise):
    """Σ_rows log N(b; mu0, Cov(b | τ, λ)), the covariance built from group memberships."""
    total = 0.0
    for r in range(problem["b"].shape[0]):
        tau = problem["tau"][r]
        cov = np.diag(tau[0] ** 2 + problem["var_b"][r]) + problem["s0"][r] ** 2
        if noise is not None:
            cov += noise.top[r]
        for level in (1, 2):
            member = tree.membership(level - 1)
            node_var = (tau[level] * local[level - 1][r]) ** 2
            if noise is not None:
                node_var = node_var + noise.groups[level - 1][r]
            cov += (member[:, None] == member[None, :]) * node_var[member][:, None]
        mean = np.full(tree.n_features, problem["mu0"][r])
        total += stats.multivariate_normal(mean, cov).logpdf(problem["b"][r])
    return total


def _compiled(tree, problem, noise, mode):
    """(τ, λ_1, λ_2) ↦ (Σ log p(b | τ, λ), its gradients), compiled in ``mode``."""
    tau = pt.matrix("tau")
    local = [pt.matrix(f"local_{level}") for level in (1, 2)]
    density = log_marginal_with_local_scales(
        pt.constant(problem["b"]),
        tau,
        local,
        problem["var_b"],
        TreeIndex.from_hierarchy(tree),
        problem["mu0"],
        problem["s0"],
        noise,
    ).sum()
    return pytensor.function(
        [tau, *local], [density, *pytensor.grad(density, [tau, *local])], mode=mode
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared_noise", [False, True], ids=["independent", "shared-noise"])
def test_log_density_and_gradient_with_local_scales(tree, problem, mode, shared_noise):
    noise = problem["noise"] if shared_noise else None
    function = _compiled(tree, problem, noise, mode)
    tau, local = problem["tau"], problem["local"]
    value, *gradients = function(tau, *local)
    np.testing.assert_allclose(value, _dense_log_marginal(tree, problem, local, noise), rtol=1e-12)
    # central differences, each coordinate of τ and of every λ
    step = 1e-6
    arguments = [tau, *local]
    for which, (argument, gradient) in enumerate(zip(arguments, gradients, strict=True)):
        numeric = np.empty_like(argument)
        for cell in np.ndindex(argument.shape):
            shift = np.zeros_like(argument)
            shift[cell] = step
            up = [a + shift if k == which else a for k, a in enumerate(arguments)]
            down = [a - shift if k == which else a for k, a in enumerate(arguments)]
            numeric[cell] = (function(*up)[0] - function(*down)[0]) / (2 * step)
        np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-7)


def test_unit_local_scales_give_the_normal_prior_density(tree, problem):
    tau = pt.matrix("tau")
    args = (problem["var_b"], TreeIndex.from_hierarchy(tree), problem["mu0"], problem["s0"])
    b = pt.constant(problem["b"])
    ones = [pt.ones((3, n)) for n in tree.n_groups]
    normal = log_marginal(b, tau, *args)
    heavy = log_marginal_with_local_scales(b, tau, ones, *args)
    got = pytensor.function([tau], [normal, heavy])(problem["tau"])
    np.testing.assert_array_equal(got[0], got[1])


def test_local_scales_above_the_levels_used_are_one(tree, problem):
    """A tree deeper than the levels with local scales (shared noise's) has λ = 1 above."""
    tau = pt.matrix("tau")
    local_sub = pt.matrix("local_sub")
    args = (problem["var_b"], TreeIndex.from_hierarchy(tree), problem["mu0"], problem["s0"])
    density = log_marginal_with_local_scales(pt.constant(problem["b"]), tau, [local_sub], *args)
    got = pytensor.function([tau, local_sub], density.sum())(problem["tau"], problem["local"][0])
    local = [problem["local"][0], np.ones((3, 3))]
    np.testing.assert_allclose(got, _dense_log_marginal(tree, problem, local, None), rtol=1e-12)
    with pytest.raises(ValueError, match="local_scales must hold 1 to 2 levels"):
        log_marginal_with_local_scales(pt.constant(problem["b"]), tau, [], *args)


# --------------------------------------------------------------------------- the PyMC models
@pytest.fixture(scope="module")
def small():
    annotations = pd.DataFrame(
        {"sub": ["a", "a", "b", "b", "c"], "super": ["X", "X", "X", "X", "Y"]},
        index=[f"f{j}" for j in range(5)],
    )
    rng = np.random.default_rng(0)
    b = pd.DataFrame(rng.normal(size=(2, 5)), index=["k0", "k1"], columns=annotations.index)
    se = pd.DataFrame(rng.uniform(0.3, 1.0, size=(2, 5)), index=b.index, columns=b.columns)
    return b, se, Hierarchy.from_frame(annotations, ["sub", "super"])


def _model(small, group_prior):
    b, se, tree = small
    priors = {"mu0": 0.2, "s0": 1.5, "tau_scale": 0.7, "group_prior": group_prior, "group_df": 5}
    return ShrinkageModel((b, se), tree, priors=priors)


def _local_point(group_prior, local):
    """The free variables' values of local scales ``local`` and their log prior (+ Jacobian)."""
    point, log_prior = {}, 0.0
    for name, scale in zip(("sub", "super"), local, strict=True):
        if group_prior == "horseshoe":
            point[f"{name}_local_scale_log__"] = np.log(scale)
            log_prior += (stats.halfcauchy().logpdf(scale) + np.log(scale)).sum()
        else:
            variance = scale**2
            point[f"{name}_local_variance_log__"] = np.log(variance)
            log_prior += (stats.invgamma(2.5, scale=2.5).logpdf(variance) + np.log(variance)).sum()
    return point, log_prior


@pytest.mark.parametrize("group_prior", ["horseshoe", "student_t"])
def test_full_and_collapsed_models_have_the_closed_form_densities(small, group_prior):
    """The full model's joint density by hand; the collapsed one's the dense marginal of b.

    Both with the same priors of τ and λ: integrating θ0, the group means and θ out of the
    first gives the second.
    """
    model = _model(small, group_prior)
    tree, b, se = model.tree, model.estimates.estimate.values, model.estimates.se.values
    rng = np.random.default_rng(3)
    tau = np.array([[0.3, 0.5, 0.9], [1.2, 0.1, 0.4]])
    local = [rng.uniform(0.2, 4.0, (2, 3)), rng.uniform(0.2, 4.0, (2, 2))]
    mu, sup_mean = rng.normal(size=2), rng.normal(size=(2, 2))
    sub_mean, theta = rng.normal(size=(2, 3)), rng.normal(size=(2, 5))
    local_point, local_prior = _local_point(group_prior, local)
    scale_prior = (stats.halfcauchy(scale=0.7).logpdf(tau) + np.log(tau)).sum() + local_prior
    centred = model.build("centered")
    point = {"mu": mu, "tau_log__": np.log(tau), "super_mean": sup_mean, "sub_mean": sub_mean}
    expected = (
        scale_prior
        + stats.norm(0.2, 1.5).logpdf(mu).sum()
        + stats.norm(mu[:, None], tau[:, 2:3] * local[1]).logpdf(sup_mean).sum()
        + stats.norm(sup_mean[:, tree.parents[1]], tau[:, 1:2] * local[0]).logpdf(sub_mean).sum()
        + stats.norm(sub_mean[:, tree.parents[0]], tau[:, 0:1]).logpdf(theta).sum()
        + stats.norm(theta, se).logpdf(b).sum()
    )
    got = centred.compile_logp()({**point, **local_point, "theta": theta})
    # PyMC's HalfCauchy and InverseGamma log densities differ from scipy's by ~2e-9 per value
    np.testing.assert_allclose(got, expected, rtol=1e-8)

    collapsed = model.build()
    marginal = 0.0
    for row in range(2):
        sub, sup = tree.membership(0), tree.membership(1)
        cov = (
            1.5**2
            + np.diag(tau[row, 0] ** 2 + se[row] ** 2)
            + (sub[:, None] == sub) * ((tau[row, 1] * local[0][row]) ** 2)[sub][:, None]
            + (sup[:, None] == sup) * ((tau[row, 2] * local[1][row]) ** 2)[sup][:, None]
        )
        marginal += stats.multivariate_normal(np.full(5, 0.2), cov).logpdf(b[row])
    got = collapsed.compile_logp()({"tau_log__": np.log(tau), **local_point})
    np.testing.assert_allclose(got, scale_prior + marginal, rtol=1e-8)


@pytest.mark.parametrize("group_prior", ["horseshoe", "student_t"])
def test_the_models_local_scales_have_the_specified_prior(small, group_prior):
    """Prior draws of ``<level>_local_scale`` against HalfCauchy(1) / √InvGamma(ν/2, ν/2)."""
    import pymc as pm

    model = _model(small, group_prior).build()
    draws = pm.draw(model["sub_local_scale"], draws=2000, random_seed=7).ravel()
    if group_prior == "horseshoe":
        reference = stats.halfcauchy().cdf
    else:
        reference = stats.invgamma(2.5, scale=2.5).cdf  # λ² ~ InvGamma(ν/2, ν/2), ν = 5
        draws = draws**2
    assert stats.kstest(draws, reference).pvalue > 1e-3
    assert model.named_vars_to_dims["super_local_scale"] == ("covariate", "super")


def test_the_normal_prior_has_no_local_scales(small):
    model = _model(small, "normal").build()
    assert not any("local" in name for name in model.named_vars)


# ------------------------------------------------------------------ draws given τ and λ
def test_draws_given_scales_follow_the_dense_posterior_given_tau_and_local_scales(small):
    """θ drawn given fixed τ and λ (λ far from 1): mean and variance of the dense posterior."""
    model = _model(small, "horseshoe")
    tree, b, se = model.tree, model.estimates.estimate.values, model.estimates.se.values
    n_draws = 4000
    tau = np.array([[0.3, 0.5, 0.9], [1.2, 0.1, 0.4]])
    local = [np.array([[0.2, 3.0, 1.0], [4.0, 0.5, 1.5]]), np.array([[2.5, 0.3], [0.4, 3.0]])]
    repeated = [np.broadcast_to(x, (1, n_draws, *x.shape)) for x in (tau, *local)]
    draws = model.draw_given_scales(repeated[0], np.random.default_rng(5), repeated[1:])
    np.testing.assert_array_equal(draws["sub_local_scale"], repeated[1])
    theta = draws["theta"][0]
    sub, sup = tree.membership(0), tree.membership(1)
    for row in range(2):
        prior = (
            1.5**2
            + np.diag(np.full(5, tau[row, 0] ** 2))
            + (sub[:, None] == sub) * ((tau[row, 1] * local[0][row]) ** 2)[sub][:, None]
            + (sup[:, None] == sup) * ((tau[row, 2] * local[1][row]) ** 2)[sup][:, None]
        )
        gain = prior @ np.linalg.inv(prior + np.diag(se[row] ** 2))
        mean = 0.2 + gain @ (b[row] - 0.2)
        variance = np.diag(prior - gain @ prior)
        z_mean = (theta[:, row].mean(axis=0) - mean) / np.sqrt(variance / n_draws)
        z_var = (theta[:, row].var(axis=0) / variance - 1) / np.sqrt(2 / n_draws)
        assert np.abs(z_mean).max() < 4 and np.abs(z_var).max() < 4, (z_mean, z_var)


def test_draws_given_scales_need_local_scales_exactly_when_heavy_tailed(small):
    tau = np.ones((1, 2, 2, 3))
    with pytest.raises(ValueError, match="needs local_scales exactly when"):
        _model(small, "horseshoe").draw_given_scales(tau, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs local_scales exactly when"):
        _model(small, "normal").draw_given_scales(
            tau, np.random.default_rng(0), [np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 2))]
        )


# ------------------------------------------------------------------ NUTS against Gibbs (slow)
@pytest.mark.slow
@pytest.mark.parametrize("group_prior", ["horseshoe", "student_t"])
def test_nuts_agrees_with_the_gibbs_engine(group_prior):
    """The collapsed NUTS and the Gibbs engine on one small heavy-tailed model: same contract,
    posteriors of τ, θ0, the group means and θ within the Bonferroni bound (MCSE-based |z|),
    no divergence, r̂ of every scale (local ones included) below 1.01.

    The local scales themselves are not compared by their means: where the data say little
    their posterior keeps the prior's heavy tail (the horseshoe's has no mean).
    """
    import warnings

    import arviz as az

    from bayeshier_pymc import mlm, simulate
    from bayeshier_pymc.sampler_comparison import compare_samplers

    study = simulate(40, 200, 3, random_seed=1)
    fit = mlm(study.Y, study.X, x_intercept=False)
    model = ShrinkageModel(
        fit,
        Hierarchy.from_frame(study.annotations, ["subclass"]),
        priors={"group_prior": group_prior},
        effect_scale="raw",  # the units of its measured r̂ (residual-SD units: 1.012 for λ)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nuts = model.sample(draws=1000, tune=1000, chains=4, random_seed=1, progressbar=False)
    gibbs = model.sample("gibbs", draws=2000, tune=1000, chains=4, random_seed=1, progressbar=False)
    assert set(nuts.posterior.data_vars) == set(gibbs.posterior.data_vars)
    assert nuts.posterior["subclass_local_scale"].dims == (
        "chain",
        "draw",
        "covariate",
        "subclass",
    )
    assert int(nuts.sample_stats["diverging"].sum()) == 0
    scales = az.rhat(nuts, var_names=["tau", "subclass_local_scale"]).to_array()
    assert float(scales.max()) < 1.01
    comparison = compare_samplers(
        nuts, gibbs, var_names=["tau", "mu", "subclass_mean", "theta"], theta_features=50
    )
    assert comparison.ok, comparison.summary()


@pytest.mark.parametrize("group_prior", ["horseshoe", "student_t"])
def test_prior_predictive_draws_the_local_scales_and_groups_from_their_prior(small, group_prior):
    """The package's prior draws: λ as specified, each group N(parent, τ_l² λ_g²) given them."""
    model = _model(small, group_prior)
    prior = model.sample_prior_predictive(draws=1500, random_seed=2).prior
    local = prior["sub_local_scale"].to_numpy().ravel()
    if group_prior == "horseshoe":
        assert stats.kstest(local, stats.halfcauchy().cdf).pvalue > 1e-3
    else:
        assert stats.kstest(local**2, stats.invgamma(2.5, scale=2.5).cdf).pvalue > 1e-3
    parent = prior["super_mean"].to_numpy()[..., model.tree.parents[1]]
    scale = prior["tau"].to_numpy()[..., 1:2] * prior["sub_local_scale"].to_numpy()
    standardised = (prior["sub_mean"].to_numpy() - parent) / scale
    assert stats.kstest(standardised.ravel(), stats.norm().cdf).pvalue > 1e-3
