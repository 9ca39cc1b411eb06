"""The problem object and the contract read back: from_idata, persistence, no mutation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ConvergenceWarning
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.inference_data import loo, problem_from_idata
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.sampling import sample

RUN = {"draws": 40, "tune": 20, "chains": 2, "progressbar": False}
PRIORS = {"mu0": 0.3, "s0": 2.0, "tau_scale": [0.5, 2.0, 0.8]}


@pytest.fixture(scope="module")
def study():
    data = bh.simulate(
        n=40, m=24, p=2, proportions=(0.5, 0.3, 0.2), n_superclasses=2, random_seed=5
    )
    fit = bh.mlm(data.Y, data.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(data.annotations, ["subclass", "superclass"])


@pytest.fixture(scope="module")
def fits(study):
    fit, tree = study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return {
            depth: bh.ShrinkageModel(
                fit, tree, depth=depth, priors=PRIORS if depth == 2 else None
            ).sample("gibbs", random_seed=4, **RUN)
            for depth in ("none", 0, 1, 2)
        }


def _assert_same_problem(got: ShrinkageProblem, expected: ShrinkageProblem) -> None:
    np.testing.assert_array_equal(got.b, expected.b)
    np.testing.assert_array_equal(got.se, expected.se)
    assert got.covariates.tolist() == expected.covariates.tolist()
    assert got.features.tolist() == expected.features.tolist()
    assert got.depth == expected.depth and got.pooled == expected.pooled
    assert got.priors.scale_levels == expected.priors.scale_levels
    np.testing.assert_array_equal(got.priors.tau_scale, expected.priors.tau_scale)
    np.testing.assert_array_equal(got.priors.mu0, expected.priors.mu0)
    np.testing.assert_array_equal(got.priors.s0, expected.priors.s0)
    assert got.priors.preset == expected.priors.preset
    if expected.tree is None:
        assert got.tree is None
        return
    assert got.tree.levels == expected.tree.levels
    for mine, theirs in zip(got.tree.groups, expected.tree.groups, strict=True):
        assert mine.tolist() == theirs.tolist()
    for mine, theirs in zip(got.tree.parents, expected.tree.parents, strict=True):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("depth", ["none", 0, 1, 2])
def test_problem_from_idata_reads_back_what_was_sampled(study, fits, depth, tmp_path):
    fit, tree = study
    model = bh.ShrinkageModel(fit, tree, depth=depth, priors=PRIORS if depth == 2 else None)
    _assert_same_problem(problem_from_idata(fits[depth]), model.problem)
    path = bh.save_results(tmp_path / "fit.nc", fits[depth])
    _assert_same_problem(problem_from_idata(bh.load_results(path).idata), model.problem)


def test_problem_from_idata_names_what_is_missing(fits):
    idata = fits[1].copy()
    del idata.attrs["priors"]
    with pytest.raises(ValueError, match="lacks priors"):
        problem_from_idata(idata)
    with pytest.raises(ValueError, match="not JSON"):
        Priors.from_json("{mu0", ("feature",), ["x"], np.ones((1, 3)))


def test_priors_round_trip_through_json():
    levels, se = ("feature", "sub"), np.ones((1, 3))
    settings = {"preset": "research", "mu0": 0.1, "tau_scale": {"sub": 0.3}}
    priors = Priors.resolve(settings, levels, ["x"], se)
    again = Priors.from_json(priors.to_json(), levels, ["x"], se)
    assert (again.mu0[0], again.s0[0], again.scale_levels) == (0.1, 1.0, ("feature", "sub"))
    np.testing.assert_array_equal(again.tau_scale, [[1.0, 0.3]])


@pytest.mark.parametrize("sampler", ["gibbs", "gibbs_step"])
def test_from_idata_samples_the_same_draws_again(study, fits, sampler):
    fit, tree = study
    options = (
        {"backend": "pymc", "cores": 1, "draws": 10, "tune": 10} if sampler == "gibbs_step" else {}
    )
    run = {**RUN, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first = bh.ShrinkageModel(fit, tree, priors=PRIORS).sample("gibbs", random_seed=4, **run)
        again = bh.ShrinkageModel.from_idata(first).sample("gibbs", random_seed=4, **run)
    for name in first.posterior.data_vars:
        np.testing.assert_array_equal(again.posterior[name], first.posterior[name])
    assert again.attrs["priors"] == first.attrs["priors"]


def test_loo_and_compare_fits_leave_the_fits_alone(study, fits):
    _, tree = study
    before = {depth: set(idata.log_likelihood.data_vars) for depth, idata in fits.items()}
    comparison = compare_fits(fits, tree, loo="group")
    loo(fits[1], "conditional")
    assert {depth: set(idata.log_likelihood.data_vars) for depth, idata in fits.items()} == before
    assert all("b_group" in idata.log_likelihood for idata in comparison.fits.values())
    assert comparison.fits[1].posterior is fits[1].posterior


def test_the_registry_refuses_an_unknown_sampler(study):
    fit, tree = study
    problem = bh.ShrinkageModel(fit, tree).problem
    with pytest.raises(ValueError, match=r"unknown sampler 'hmc'; use one of \['gibbs', 'nuts'\]"):
        sample(problem, "hmc")


def test_problem_checks_its_parts(study):
    fit, tree = study
    problem = bh.ShrinkageModel(fit, tree, depth=1).problem
    assert problem.pooled and problem.levels == ("subclass",)
    assert not bh.ShrinkageModel(fit, tree, depth="none").problem.pooled
    with pytest.raises(ValueError, match="does not match the tree"):
        ShrinkageProblem(
            problem.b, problem.se, problem.covariates, problem.features, None, problem.priors, 1
        )
    with pytest.raises(ValueError, match="scale levels"):
        ShrinkageProblem(
            problem.b,
            problem.se,
            problem.covariates,
            problem.features,
            problem.tree,
            Priors.resolve(None, ("feature",), problem.covariates, problem.se),
            1,
        )
