"""Depth comparison: exact leave-one-group-out algebra, the rule, and picking the true depth."""

from __future__ import annotations

import json

import arviz as az
import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Hierarchy, mlm, simulate
from bayeshier_pymc.depth_comparison import (
    DepthComparison,
    RecommendationRule,
    compare_depths,
    compare_fits,
    group_log_likelihood,
)
from bayeshier_pymc.diagnostics import loo_elpd
from bayeshier_pymc.gaussian_tree import TreeIndex, upward_pass

FAST = {"draws": 1000, "tune": 500, "chains": 2, "progressbar": False, "nuts_sampler": "numpyro"}
PRIORS = {"mu0": 0.1, "s0": 0.7}
BY_LOO = RecommendationRule(criterion="loo")
"""The rule of the tests about what each LOO question recommends."""


# ---------------------------------------------------------------------- exact algebra
@pytest.fixture(scope="module")
def small():
    study = simulate(40, 30, 2, proportions=[0.3, 0.3, 0.2, 0.1, 0.1], n_superclasses=2,
                     random_seed=2)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    return fit, Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])


def _fake_fit(fit, tree, depth, tau):
    """An InferenceData with what group_log_likelihood reads: b, se, indexes, τ, attrs."""
    levels = [] if depth == "none" else list(tree.levels[:depth])
    posterior = {"theta": np.zeros((1, 3, *fit.coef.shape))}
    if tau is not None:
        posterior["tau"] = tau
    constant = {"se": fit.se.to_numpy()}
    for index, level in enumerate(levels):
        constant[f"{level}_index"] = tree.parents[index]
    idata = az.from_dict(
        posterior=posterior,
        observed_data={"b": fit.coef.to_numpy()},
        constant_data=constant,
        coords={"covariate": fit.coef.covariate.values, "feature": fit.coef.feature.values},
        dims={
            "theta": ["covariate", "feature"],
            "tau": ["covariate", "level"],
            "b": ["covariate", "feature"],
            "se": ["covariate", "feature"],
            "subclass_index": ["feature"],
            "superclass_index": ["subclass"],
        },
    )
    idata.attrs.update(depth=str(depth), levels=levels, priors=json.dumps(PRIORS))
    return idata


def _log_marginal(b, var_b, tau, tree, depth):
    index = TreeIndex.from_hierarchy(tree.truncate(depth))
    return upward_pass(b, var_b, tau, index, PRIORS["mu0"], PRIORS["s0"]).log_marginal


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("level", ["feature", "subclass", "superclass"])
def test_group_log_likelihood_is_the_ratio_of_marginal_likelihoods(small, depth, level):
    """log p(b_G | b_−G, τ) = log p(b | τ) − log p(b_−G | τ), the latter on the pruned tree."""
    fit, tree = small
    tau = np.exp(np.random.default_rng(depth).normal(-1.5, 0.7, size=(1, 3, 2, depth + 1)))
    values = group_log_likelihood(_fake_fit(fit, tree, depth, tau), tree, level)
    b, var_b = fit.coef.to_numpy(), fit.se.to_numpy() ** 2
    members = np.arange(tree.n_features) if level == "feature" else tree.membership(level)
    assert values.dims == ("chain", "draw", "covariate", level)
    assert values.sizes[level] == members.max() + 1
    for group in range(members.max() + 1):
        keep = np.flatnonzero(members != group)
        pruned = tree.align(tree.features[keep])
        for draw in range(3):
            for c in range(2):
                t = tau[0, draw, c]
                expected = _log_marginal(b[c], var_b[c], t, tree, depth) - _log_marginal(
                    b[c, keep], var_b[c, keep], t, pruned, depth
                )
                assert values[0, draw, c, group] == pytest.approx(expected, abs=1e-10)


def test_group_log_likelihood_without_pooling_is_the_prior_predictive(small):
    fit, tree = small
    values = group_log_likelihood(_fake_fit(fit, tree, "none", None), tree, "subclass")
    total = fit.se.to_numpy() ** 2 + PRIORS["s0"] ** 2
    per_feature = -0.5 * (np.log(2 * np.pi * total) + (fit.coef.to_numpy() - 0.1) ** 2 / total)
    expected = pd.DataFrame(per_feature.T).groupby(tree.membership("subclass")).sum().T
    np.testing.assert_allclose(values[0, 0], expected.to_numpy())
    np.testing.assert_array_equal(values[0, 0], values[0, 2])
    assert np.isnan(loo_elpd_with(values)["pareto_k"]).all()


def loo_elpd_with(values):
    idata = az.from_dict(
        posterior={"a": np.random.default_rng(0).normal(size=(1, 3))},
        log_likelihood={"b_group": values.to_numpy()},
        dims={"b_group": ["covariate", "subclass"]},
    )
    return loo_elpd(idata, "group")


def test_group_log_likelihood_rejects_a_mismatched_tree(small):
    fit, tree = small
    tau = np.full((1, 3, 2, 2), 0.2)
    idata = _fake_fit(fit, tree, 1, tau)
    with pytest.raises(ValueError, match="unknown level"):
        group_log_likelihood(idata, tree, "pathway")
    other = Hierarchy.from_frame(tree.to_frame()[["superclass"]].rename(columns={"superclass":
                                 "subclass"}), "subclass")  # fmt: skip
    with pytest.raises(ValueError, match="groups differ"):
        group_log_likelihood(idata, other)


# ---------------------------------------------------------------------- the rule
def _table(rows):
    return pd.DataFrame(rows, columns=["elpd_diff", "dse"], index=["2", "1", "0"])


def test_rule_picks_the_simplest_close_model():
    rule = RecommendationRule()
    assert rule.choose(_table([(0.0, 0.0), (3.0, 2.0), (50.0, 5.0)])) == 1
    # 6 > 2 × 2 and > 4: depth 1 is clearly worse
    assert rule.choose(_table([(0.0, 0.0), (6.0, 2.0), (50.0, 5.0)])) == 2
    # a difference below 4 counts as no difference even when dse is tiny
    assert rule.choose(_table([(0.0, 0.0), (0.2, 0.05), (50.0, 5.0)])) == 1
    assert RecommendationRule(negligible=0.0).choose(_table([(0, 0), (0.2, 0.05), (50, 5)])) == 2
    with pytest.raises(ValueError, match="dse_factor"):
        RecommendationRule(dse_factor=0.0)


def test_rule_can_prefer_the_deepest_close_model():
    deepest = RecommendationRule(prefer="deepest")
    table = pd.DataFrame(
        [(0.0, 0.0), (3.0, 2.0), (3.5, 3.0), (50.0, 5.0)],
        columns=["elpd_diff", "dse"],
        index=["1", "2", "0", "none"],
    )
    assert deepest.choose(table) == 2 and RecommendationRule().choose(table) == 0
    assert "the deepest model" in str(deepest)
    with pytest.raises(ValueError, match="prefer must be"):
        RecommendationRule(prefer="best")


# ---------------------------------------------------------------------- real comparisons
@pytest.fixture(scope="module")
def subclass_truth():
    """Subclass means far apart (τ_v = 0.5), superclasses irrelevant: the truth is depth 1."""
    study = simulate(60, 200, 1, tau_v=0.5, tau_w=0.05, tau_u=0.0, n_superclasses=2,
                     random_seed=5)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    # the research priors: the outcome checked below (every fit's diagnosis) was set for them
    return fit, tree, compare_depths(fit, tree, random_seed=1, priors="research", **FAST)


def test_compare_depths_picks_the_subclass_level(subclass_truth):
    _, _, comparison = subclass_truth
    assert isinstance(comparison, DepthComparison)
    assert comparison.recommended == 1
    assert set(comparison.fits) == {"none", 0, 1, 2}
    assert set(comparison.table.index) == {"none", "0", "1", "2"}
    table = comparison.table
    # pooling within subclasses beats one global mean by far, and no pooling by more
    assert table.loc["0", "elpd_diff"] > 10 * max(table.loc["0", "dse"], 1.0)
    assert table.loc["none", "elpd_loo"] < table.loc["0", "elpd_loo"]
    assert comparison.pareto_k.loc["none", "n_exact"] == 200
    assert comparison.pareto_k[["n_bad", "n_very_bad"]].to_numpy().sum() == 0
    assert all(d.ok for d in comparison.diagnostics.values())
    assert "Recommended: depth 1 (subclass)" in comparison.verdict
    assert "max(2 × dse, 4)" in comparison.verdict
    assert "DepthComparison" in repr(comparison) and "<table" in comparison._repr_html_()


def test_group_and_conditional_loo_on_the_same_fits(subclass_truth):
    _, tree, comparison = subclass_truth
    by_group = compare_fits(comparison.fits, tree, loo="group", rule=BY_LOO)
    assert by_group.recommended == 1
    assert by_group.table.loc["0", "elpd_diff"] > 2 * by_group.table.loc["0", "dse"]
    assert by_group.fits[1].log_likelihood["b_group"].sizes["subclass"] == 4
    conditional = compare_fits(comparison.fits, loo="conditional")
    # one estimate per θ_j: without strong pooling PSIS fails for most points
    for depth in ("none", 0):
        assert conditional.pareto_k.loc[depth, ["n_bad", "n_very_bad"]].sum() > 50
    assert "expected for conditional LOO" in conditional.verdict


def test_group_loo_at_feature_level_matches_marginal_loo(subclass_truth):
    """Both estimate Σ_j log p(b_j | b_−j); one conditions on the parent mean, one does not."""
    _, tree, comparison = subclass_truth
    idata = comparison.fits[1]
    idata.log_likelihood["b_group"] = group_log_likelihood(idata, tree, "feature")
    rao_blackwell = loo_elpd(idata, "group")
    marginal = loo_elpd(idata, "marginal")
    difference = np.asarray(rao_blackwell["loo_i"]) - np.asarray(marginal["loo_i"])
    assert abs(difference.sum()) < 1.0
    assert np.abs(difference).max() < 0.1


def test_compare_fits_checks_its_input(subclass_truth):
    fit, tree, comparison = subclass_truth
    with pytest.raises(ValueError, match="loo must be one of"):
        compare_fits(comparison.fits, tree, loo="waic")
    with pytest.raises(ValueError, match="needs the hierarchy"):
        compare_fits(comparison.fits, loo="group")
    with pytest.raises(ValueError, match="at least two fits"):
        compare_fits([comparison.fits[1]])
    with pytest.raises(ValueError, match="refit_bad_k needs loo='group'"):
        compare_depths(fit, tree, refit_bad_k=True)
    # fits given as a list are keyed by their stored depth
    listed = compare_fits([comparison.fits[0], comparison.fits[1]])
    assert set(listed.fits) == {0, 1}


@pytest.fixture(scope="module")
def superclass_truth():
    """12 small-spread subclasses in 3 distant superclasses: a new subclass needs its
    superclass (depth 2 under group LOO), a new metabolite only its subclass (depth 1)."""
    study = simulate(60, 240, 1, proportions=[1.0] * 12, n_superclasses=3, tau_u=0.6,
                     tau_v=0.05, tau_w=0.05, random_seed=5)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    return (
        fit,
        tree,
        compare_depths(fit, tree, depths=(1, 2), loo="group", rule=BY_LOO, random_seed=1, **FAST),
    )


def test_group_loo_picks_the_superclass_level(superclass_truth):
    _, tree, comparison = superclass_truth
    assert comparison.recommended == 2
    assert comparison.table.loc["1", "elpd_diff"] > 2 * comparison.table.loc["1", "dse"] + 4
    assert comparison.pareto_k[["n_bad", "n_very_bad"]].to_numpy().sum() == 0
    # leave one metabolite out: the subclass means are known, the superclass adds nothing
    assert compare_fits(comparison.fits, tree, loo="marginal", rule=BY_LOO).recommended == 1


# ---------------------------------------------------------------------- slow checks
@pytest.mark.slow
def test_exact_refits_replace_bad_pareto_k(subclass_truth):
    """With 4 subclasses, leaving one out moves τ a lot under depth 0: PSIS fails there."""
    fit, tree, _ = subclass_truth
    comparison = compare_depths(
        fit, tree, depths=(0, 1), loo="group", refit_bad_k=True, random_seed=1, **FAST
    )
    assert comparison.refits[0], "expected bad Pareto k for depth 0 on this simulation"
    assert comparison.pareto_k[["n_bad", "n_very_bad"]].to_numpy().sum() == 0
    assert comparison.recommended == 1
    assert "Exact refits replaced PSIS" in comparison.verdict


@pytest.mark.slow
def test_compare_depths_picks_the_global_mean_without_group_structure():
    study = simulate(60, 200, 1, tau_v=0.0, tau_u=0.0, tau_w=0.08, n_superclasses=2,
                     random_seed=8)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    assert compare_depths(fit, tree, random_seed=2, **FAST).recommended == 0


@pytest.mark.slow
def test_compare_depths_picks_no_pooling_when_the_prior_is_the_truth():
    """θ_j ~ N(0, 1) is exactly the no-pooling prior: pooling cannot predict better."""
    study = simulate(60, 200, 1, theta0_scale=0.0, tau_v=0.0, tau_u=0.0, tau_w=1.0,
                     n_superclasses=2, random_seed=9)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    assert compare_depths(fit, tree, random_seed=3, **FAST).recommended == "none"
