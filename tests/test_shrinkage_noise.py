"""Choosing the likelihood of the estimates: ``ShrinkageModel(..., noise=...)`` and the problem.

With a stage-1 fit and a tree, the default (``noise="auto"``) models the estimates' correlated
errors with tree-structured noise estimated from the residuals; tidy frames carry none unless
given one; ``noise="independent"`` is the research model. The problem then carries each
covariate's noise variances (c_kk times the residual ones) on the full noise tree, whatever the
depth used.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Estimates, Hierarchy, ShrinkageModel, mlm, tree_noise
from bayeshier_pymc.simulate import ResidualNoise, simulate


@pytest.fixture(scope="module")
def study():
    sim = simulate(
        n=50,
        m=40,
        p=2,
        proportions=[0.25, 0.25, 0.25, 0.25],
        n_superclasses=2,
        residuals=ResidualNoise(subclass_sd=0.7, superclass_sd=0.4, global_sd=0.3),
        random_seed=3,
    )
    fit = mlm(sim.Y, sim.X, x_intercept=False)
    tree = Hierarchy.from_frame(sim.annotations, levels=sim.levels)
    return fit, tree


def test_auto_uses_tree_noise_from_a_fit(study):
    fit, tree = study
    model = ShrinkageModel(fit, tree)
    problem = model.problem
    assert problem.correlated
    expected = tree_noise(fit.standardized(), tree)  # in the default units, residual SDs
    for k, covariate in enumerate(problem.covariates):
        variances = expected.for_covariate(covariate)
        np.testing.assert_allclose(problem.var_b[k], variances.own)
        np.testing.assert_allclose(problem.noise.top[k], variances.top)
        for level, groups in enumerate(variances.groups):
            np.testing.assert_allclose(problem.noise.groups[level][k], groups)
    assert "correlated" in model.noise_description and "correlated noise" in repr(model)


@pytest.mark.parametrize("depth", [0, 1, "none"])
def test_shallower_fits_keep_the_whole_noise_tree(study, depth):
    """The likelihood of b is the same at every depth: the algebra runs on the noise tree."""
    fit, tree = study
    problem = ShrinkageModel(fit, tree, depth=depth).problem
    assert problem.index.depth == tree.depth
    assert problem.algebra_tree.levels == tree.levels
    if depth != "none":
        tau = np.ones((3, depth + 1))
        padded = problem.algebra_scales(tau)
        assert padded.shape == (3, tree.depth + 1)
        assert np.all(padded[:, depth + 1 :] == 0.0) and np.all(padded[:, : depth + 1] == 1.0)


def test_without_a_tree_the_noise_shared_by_all_is_modelled(study):
    """With no hierarchy, the noise shared by every feature (it aliases with θ0) is kept."""
    fit, _ = study
    problem = ShrinkageModel(fit, effect_scale="raw").problem
    assert problem.correlated and problem.index.depth == 0 and problem.depth == 0
    flat = tree_noise(fit, Hierarchy.flat(fit.Y.columns))
    np.testing.assert_allclose(
        problem.noise.top, flat.covariate_scale.to_numpy() * flat.residual.top
    )
    assert flat.residual.top > 0


def test_independent_reproduces_the_research_model(study):
    fit, tree = study
    model = ShrinkageModel(fit, tree, noise="independent", effect_scale="raw")
    assert not model.problem.correlated
    np.testing.assert_array_equal(model.problem.var_b, fit.se.to_numpy() ** 2)
    assert model.problem.index.depth == tree.depth
    assert "independent" in model.noise_description


def test_tidy_estimates_carry_no_noise_unless_given(study):
    fit, tree = study
    tidy = fit.to_frame()[["covariate", "feature", "estimate", "se"]]
    assert not ShrinkageModel(tidy, tree).problem.correlated
    with pytest.raises(ValueError, match="noise='tree' needs a noise structure"):
        ShrinkageModel(tidy, tree, noise="tree")
    given = ShrinkageModel(tidy, tree, noise=tree_noise(fit, tree))
    assert given.problem.correlated
    carried = Estimates.from_any(tidy, noise=tree_noise(fit, tree))
    assert ShrinkageModel(carried, tree).problem.correlated
    assert not ShrinkageModel(carried, tree, noise="independent").problem.correlated


def test_bad_noise_choices_are_named(study):
    fit, tree = study
    with pytest.raises(ValueError, match="noise must be one of"):
        ShrinkageModel(fit, tree, noise="dense")
    # the model's tree must be the noise structure's tree
    annotations = pd.DataFrame(
        {"subclass": np.roll(tree.membership(0), 1).astype(str)}, index=tree.features
    )
    shuffled = Hierarchy.from_frame(annotations, levels=["subclass"])
    with pytest.raises(ValueError, match="differs from level"):
        ShrinkageModel(fit, shuffled, noise=tree_noise(fit, tree))


def test_problem_refuses_inconsistent_noise(study):
    fit, tree = study
    problem = ShrinkageModel(fit, tree).problem
    with pytest.raises(ValueError, match="go together"):
        replace(problem, own_variance=None)
    bad = problem.own_variance.copy()
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match="own ones positive"):
        replace(problem, own_variance=bad)
