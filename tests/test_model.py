"""The PyMC models against independent densities (scipy), and the per-level centring rule."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
from bayeshier_pymc.model import choose_centering


@pytest.fixture(scope="module")
def small():
    annotations = pd.DataFrame(
        {"sub": ["a", "a", "b", "b", "c"], "super": ["X", "X", "X", "X", "Y"]},
        index=[f"f{j}" for j in range(5)],
    )
    rng = np.random.default_rng(0)
    b = pd.DataFrame(rng.normal(size=(2, 5)), index=["k0", "k1"], columns=annotations.index)
    se = pd.DataFrame(rng.uniform(0.3, 1.0, size=(2, 5)), index=b.index, columns=b.columns)
    tree = Hierarchy.from_frame(annotations, ["sub", "super"])
    return ShrinkageModel((b, se), tree, priors={"mu0": 0.2, "s0": 1.5, "tau_scale": 0.7})


def _dense_marginal_logpdf(b, se, tau, mu0, s0, tree):
    """log N(b; mu0, Σ) with Σ built from the tree's loadings (independent of the package)."""
    sub, sup = tree.membership(0), tree.membership(1)
    cov = (
        s0**2
        + tau[2] ** 2 * (sup[:, None] == sup[None, :])
        + tau[1] ** 2 * (sub[:, None] == sub[None, :])
        + np.diag(tau[0] ** 2 + se**2)
    )
    return stats.multivariate_normal(np.full(len(b), mu0), cov).logpdf(b)


def test_collapsed_potential_is_the_exact_marginal_likelihood(small):
    model = small.build()
    tau = np.array([[0.3, 0.5, 0.9], [1.2, 0.1, 0.4]])
    [potential] = model.replace_rvs_by_values(model.potentials)
    got = model.compile_fn(potential, inputs=model.value_vars)({"tau_log__": np.log(tau)})
    b, se = small.estimates.estimate.values, small.estimates.se.values
    expected = sum(
        _dense_marginal_logpdf(b[k], se[k], tau[k], 0.2, 1.5, small.tree) for k in range(2)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert model.named_vars_to_dims["tau"] == ("covariate", "level")
    assert list(model.coords["level"]) == ["feature", "sub", "super"]


def test_centred_and_noncentred_models_have_the_hand_computed_density(small):
    tau = np.array([[0.3, 0.5, 0.9], [1.2, 0.1, 0.4]])
    rng = np.random.default_rng(3)
    mu = rng.normal(size=2)
    sup_mean = rng.normal(size=(2, 2))
    sub_mean = rng.normal(size=(2, 3))
    theta = rng.normal(size=(2, 5))
    tree = small.tree
    b, se = small.estimates.estimate.values, small.estimates.se.values
    expected = (
        stats.norm(0.2, 1.5).logpdf(mu).sum()
        + (stats.halfcauchy(scale=0.7).logpdf(tau) + np.log(tau)).sum()
        + stats.norm(mu[:, None], tau[:, 2:3]).logpdf(sup_mean).sum()
        + stats.norm(sup_mean[:, tree.parents[1]], tau[:, 1:2]).logpdf(sub_mean).sum()
        + stats.norm(sub_mean[:, tree.parents[0]], tau[:, 0:1]).logpdf(theta).sum()
        + stats.norm(theta, se).logpdf(b).sum()
    )
    centred = small.build("centered")
    point = {
        "mu": mu,
        "tau_log__": np.log(tau),
        "super_mean": sup_mean,
        "sub_mean": sub_mean,
        "theta": theta,
    }
    np.testing.assert_allclose(centred.compile_logp()(point), expected, rtol=1e-10)
    # the non-centred model has the same density up to the Jacobian of the offsets
    noncentred = small.build("noncentered")
    offsets = {
        "super_mean_offset": (sup_mean - mu[:, None]) / tau[:, 2:3],
        "sub_mean_offset": (sub_mean - sup_mean[:, tree.parents[1]]) / tau[:, 1:2],
        "theta_offset": (theta - sub_mean[:, tree.parents[0]]) / tau[:, 0:1],
    }
    jacobian = (2 * np.log(tau[:, 2]) + 3 * np.log(tau[:, 1]) + 5 * np.log(tau[:, 0])).sum()
    got = noncentred.compile_logp()({"mu": mu, "tau_log__": np.log(tau), **offsets})
    np.testing.assert_allclose(got, expected + jacobian, rtol=1e-10)


def test_auto_centring_follows_the_information_in_each_level():
    study = simulate(60, 770, 10, random_seed=1)
    fit = mlm(study.Y, study.X, x_intercept=False)
    model = ShrinkageModel(fit, Hierarchy.from_frame(study.annotations, ["subclass"]))
    # one noisy observation per θ_j (s_j ≈ 0.14 > τ_w = 0.08): non-centred; subclasses of
    # 38–424 metabolites are strongly informed: centred
    assert choose_centering(model.estimates, model.tree, model.priors) == {
        "feature": "noncentered",
        "subclass": "centered",
    }
    built = model.build("auto")
    assert "theta_offset" in built.named_vars and "subclass_mean_offset" not in built.named_vars


def test_parameterization_errors(small):
    with pytest.raises(ValueError, match="unknown parameterization 'centred'"):
        small.build("centred")
    with pytest.raises(ValueError, match="unknown levels \\['nope'\\]"):
        small.build({"nope": "centered"})
    with pytest.raises(ValueError, match="values \\['x'\\]"):
        small.build({"sub": "x"})
