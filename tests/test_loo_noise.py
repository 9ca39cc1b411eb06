"""LOO, the InferenceData contract and the depth comparison with correlated estimates.

With tree-structured noise the estimates are not conditionally independent, so the pointwise
log-likelihood is the leave-one-out predictive of the non-factorised normal model (Bürkner,
Gabry & Vehtari 2021) and the group one leaves whole groups out of the joint normal. Every
value is compared with dense Gaussian conditioning on the m × m covariance, draw by draw; the
noise must survive the InferenceData (``from_idata``, save and load) and every depth of
``compare_depths``; independent estimates keep their numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc import depth_comparison
from bayeshier_pymc.depth_comparison import (
    RecommendationRule,
    compare_depths,
    compare_fits,
    group_log_likelihood,
)
from bayeshier_pymc.diagnostics import loo_elpd
from bayeshier_pymc.inference_data import (
    build_inference_data,
    log_likelihood_dataset,
    posterior_dims,
    problem_from_idata,
)
from bayeshier_pymc.persistence import load_results, save_results
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.simulate import ResidualNoise, simulate
from tests.dense_gaussian import (
    leave_one_out_log_predictive,
    marginal_covariance,
    tree_noise_covariance,
)

NUTS = {
    "draws": 60,
    "tune": 60,
    "chains": 2,
    "nuts_sampler": "pymc",
    "cores": 1,
    "progressbar": False,
}
pytestmark = pytest.mark.filterwarnings(
    "ignore:the sampler's diagnostics failed",
    "ignore:Estimated shape parameter of Pareto",
    "ignore:.*Pareto k.*",
)


@pytest.fixture(scope="module")
def study() -> tuple[bh.MLMFit, bh.Hierarchy]:
    sim = simulate(
        n=40,
        m=14,
        p=2,
        proportions=(0.4, 0.3, 0.2, 0.1),
        n_superclasses=2,
        residuals=ResidualNoise(subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3),
        random_seed=3,
    )
    fit = bh.mlm(sim.Y, sim.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(sim.annotations, levels=sim.levels)


def _draws(problem: ShrinkageProblem, seed: int, lead=(2, 3)) -> dict[str, np.ndarray]:
    """Arbitrary posterior draws of every variable (the LOO formulas hold for any)."""
    rng = np.random.default_rng(seed)
    shape = (*lead, len(problem.covariates))
    draws = {"theta": rng.normal(size=(*shape, len(problem.features)))}
    if problem.tree is not None:
        draws["mu"] = rng.normal(size=shape)
        draws["tau"] = rng.uniform(0.1, 0.8, (*shape, problem.tree.depth + 1))
        for level, n in zip(problem.tree.levels, problem.tree.n_groups, strict=True):
            draws[f"{level}_mean"] = rng.normal(size=(*shape, n))
    assert set(draws) == set(posterior_dims(problem.tree))
    return draws


def _fabricated_fit(study, depth, seed=0, noise="auto"):
    fit, tree = study
    problem = bh.ShrinkageModel(fit, tree, depth=depth, noise=noise).problem
    return problem, build_inference_data(_draws(problem, seed), problem, sampler="test")


def dense_noise_covariance(problem: ShrinkageProblem, c: int) -> np.ndarray:
    """The dense noise covariance of covariate ``c``'s estimates."""
    return tree_noise_covariance(problem.noise_tree, problem.own_variance[c], problem.noise.row(c))


def _dense_loo(problem, c, tau):
    """Dense log p(b_j | b_−j, τ) of covariate ``c`` (τ None: no pooling)."""
    mu0, s0 = problem.priors.mu0[c], problem.priors.s0[c]
    if tau is None:  # θ_j ~ N(mu0, s0²) independently: a depth-0 tree with θ0 fixed at mu0
        flat = problem.noise_tree.truncate(0)
        args = (np.array([s0]), flat, mu0, 0.0)
    else:
        args = (tau, problem.tree, mu0, s0)
    return leave_one_out_log_predictive(problem.b[c], dense_noise_covariance(problem, c), *args)


@pytest.mark.parametrize("depth", ["none", 0, 1, 2])
def test_pointwise_loo_is_the_dense_leave_one_out_predictive(study, depth):
    problem, idata = _fabricated_fit(study, depth)
    assert problem.correlated
    got = idata.log_likelihood["b_marginal"].to_numpy()
    assert got.dtype == idata.posterior["theta"].dtype
    tau = idata.posterior["tau"].to_numpy() if depth != "none" else None
    for c in range(len(problem.covariates)):
        for chain, draw in np.ndindex(got.shape[:2]):
            want = _dense_loo(problem, c, None if tau is None else tau[chain, draw, c])
            np.testing.assert_allclose(got[chain, draw, c], want, rtol=1e-9)
    if depth == "none":  # exact: the same in every draw, no τ
        np.testing.assert_array_equal(got, np.broadcast_to(got[:1, :1], got.shape))


@pytest.mark.parametrize("depth", ["none", 1])
def test_conditional_is_the_leave_one_out_predictive_given_theta(study, depth):
    problem, idata = _fabricated_fit(study, depth, seed=1)
    got = log_likelihood_dataset(idata, "conditional")["b_conditional"].to_numpy()
    theta = idata.posterior["theta"].to_numpy()
    for c in range(len(problem.covariates)):
        precision = np.linalg.inv(dense_noise_covariance(problem, c))
        diagonal = np.diag(precision)
        for chain, draw in np.ndindex(got.shape[:2]):
            residual = problem.b[c] - theta[chain, draw, c]
            mean = problem.b[c] - precision @ residual / diagonal
            want = stats.norm.logpdf(problem.b[c], mean, 1 / np.sqrt(diagonal))
            np.testing.assert_allclose(got[chain, draw, c], want, rtol=1e-9)


@pytest.mark.parametrize(
    ("depth", "level"), [("none", "subclass"), (0, "superclass"), (1, "subclass"), (2, "subclass")]
)
def test_group_loo_is_the_dense_leave_one_group_out_predictive(study, depth, level):
    problem, idata = _fabricated_fit(study, depth, seed=2)
    tree = study[1]
    got = group_log_likelihood(idata, tree, level).to_numpy()
    codes = problem.noise_tree.membership(problem.noise_tree.levels.index(level))
    for c in range(len(problem.covariates)):
        mu0, s0 = problem.priors.mu0[c], problem.priors.s0[c]
        for chain, draw in np.ndindex(got.shape[:2]):
            if depth == "none":
                flat = problem.noise_tree.truncate(0)
                effect = marginal_covariance(dense_noise_covariance(problem, c), [s0], flat, 0.0)
            else:
                tau = idata.posterior["tau"].to_numpy()[chain, draw, c]
                effect = marginal_covariance(
                    dense_noise_covariance(problem, c), tau, problem.tree, s0
                )
            for group in range(codes.max() + 1):
                held, kept = codes == group, codes != group
                gain = np.linalg.solve(effect[np.ix_(kept, kept)], effect[np.ix_(kept, held)]).T
                mean = mu0 + gain @ (problem.b[c, kept] - mu0)
                cov = effect[np.ix_(held, held)] - gain @ effect[np.ix_(kept, held)]
                want = stats.multivariate_normal(mean, cov).logpdf(problem.b[c, held])
                np.testing.assert_allclose(got[chain, draw, c, group], want, rtol=1e-9)


def _same_noise(got: ShrinkageProblem, want: ShrinkageProblem) -> None:
    assert got.correlated and want.correlated
    assert got.noise_tree.levels == want.noise_tree.levels
    for level in range(want.noise_tree.depth):
        np.testing.assert_array_equal(got.noise_tree.parents[level], want.noise_tree.parents[level])
        assert got.noise_tree.groups[level].equals(want.noise_tree.groups[level])
        np.testing.assert_array_equal(got.noise.groups[level], want.noise.groups[level])
    np.testing.assert_array_equal(got.noise.top, want.noise.top)
    np.testing.assert_array_equal(got.own_variance, want.own_variance)
    np.testing.assert_array_equal(got.se, want.se)


@pytest.mark.parametrize("depth", ["none", 0, 1])
def test_contract_keeps_the_noise_through_from_idata_and_files(study, depth, tmp_path):
    problem, idata = _fabricated_fit(study, depth, seed=3)
    assert idata.attrs["noise"] == "tree"
    assert idata.attrs["noise_levels"] == ["subclass", "superclass"]
    # the noise tree's levels beyond the effect depth are stored too
    assert {"subclass_index", "superclass_index"} <= set(idata.constant_data.data_vars)
    assert idata.constant_data["superclass_shared_variance"].dims == ("covariate", "superclass")
    _same_noise(problem_from_idata(idata), problem)
    loaded = load_results(save_results(tmp_path / "fit.nc", idata)).idata
    _same_noise(problem_from_idata(loaded), problem)
    np.testing.assert_array_equal(
        log_likelihood_dataset(loaded, "marginal")["b_marginal"],
        idata.log_likelihood["b_marginal"],
    )


def test_from_idata_resamples_the_same_model(study):
    fit, tree = study
    idata = bh.ShrinkageModel(fit, tree, depth=1).sample(random_seed=4, **NUTS)
    again = bh.ShrinkageModel.from_idata(idata)
    _same_noise(again.problem, problem_from_idata(idata))
    redo = again.sample(random_seed=4, **NUTS)
    np.testing.assert_array_equal(redo.posterior["theta"], idata.posterior["theta"])
    np.testing.assert_array_equal(
        redo.log_likelihood["b_marginal"], idata.log_likelihood["b_marginal"]
    )


def test_independent_fits_keep_their_layout(study):
    problem, idata = _fabricated_fit(study, 1, noise="independent")
    assert not problem.correlated
    assert idata.attrs["noise"] == "independent"
    assert set(idata.constant_data.data_vars) == {"se", "subclass_index", "residual_sd"}
    assert not problem_from_idata(idata).correlated
    # a fit written before the noise attribute existed reads as independent
    del idata.attrs["noise"]
    assert not problem_from_idata(idata).correlated
    idata.attrs["noise"] = "dense"
    with pytest.raises(ValueError, match="attrs\\['noise'\\]"):
        problem_from_idata(idata)


def test_compare_fits_refuses_fits_with_different_noise(study):
    _, correlated = _fabricated_fit(study, 0)
    _, independent = _fabricated_fit(study, 1, noise="independent")
    with pytest.raises(ValueError, match="another noise model"):
        compare_fits({0: correlated, 1: independent})


@pytest.fixture(scope="module")
def comparison(study):
    fit, tree = study
    return compare_depths(fit, tree, loo="group", random_seed=5, **NUTS)


def test_compare_depths_keeps_the_noise_at_every_depth(study, comparison):
    fit, tree = study
    reference = bh.ShrinkageModel(fit, tree).problem
    assert set(comparison.fits) == {"none", 0, 1, 2}
    for depth, idata in comparison.fits.items():
        assert idata.attrs["noise"] == "tree", depth
        _same_noise(problem_from_idata(idata), reference)
    assert np.isfinite(comparison.table["elpd_loo"]).all()
    # no pooling has exact LOO, the same in every draw
    assert comparison.pareto_k.loc["none", "n_exact"] == comparison.pareto_k.loc["none", "n_points"]


def test_exact_refits_keep_the_noise_of_the_features_kept(study, monkeypatch):
    """Every refit without a group has the noise of the remaining features, nothing else."""
    fit, tree = study
    reference = bh.ShrinkageModel(fit, tree).problem
    sampled: list[ShrinkageProblem] = []
    sample = bh.ShrinkageModel.sample

    def recording(self, *args, **kwargs):
        sampled.append(self.problem)
        return sample(self, *args, **kwargs)

    def first_group_bad(idata, kind):
        elpd = loo_elpd(idata, kind)
        # the first group (of 6 features) refitted at every pooled depth (no pooling is exact)
        k = np.where(np.isnan(elpd["pareto_k"]), np.nan, 0.0)
        k[:, 0] += 1.0
        elpd["pareto_k"] = elpd["pareto_k"].copy(data=k)
        return elpd

    monkeypatch.setattr(bh.ShrinkageModel, "sample", recording)
    monkeypatch.setattr(depth_comparison, "loo_elpd", first_group_bad)
    comparison = compare_depths(
        fit, tree, depths=("none", 1), loo="group", refit_bad_k=True, random_seed=6, **NUTS
    )
    assert comparison.refits == {"none": [], 1: ["subclass_0"]}
    refits = [problem for problem in sampled if len(problem.features) < len(reference.features)]
    assert len(refits) == 1
    for problem in refits:
        assert problem.correlated and problem.noise_tree.levels == reference.noise_tree.levels
        kept = reference.features.get_indexer(problem.features)
        np.testing.assert_array_equal(problem.own_variance, reference.own_variance[:, kept])
        np.testing.assert_array_equal(problem.noise.top, reference.noise.top)
    assert np.isfinite(comparison.table["elpd_loo"]).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("truth", "loo", "seed"),
    [(0, "marginal", 1), (0, "group", 1), (2, "group", 2)],
)
def test_compare_depths_recommends_the_true_depth_under_correlated_noise(truth, loo, seed):
    """12 subclasses of 20 in 3 superclasses, noise shared within subclasses and superclasses.

    Truth 0 (no group effects): the shared noise alone makes the independent model see
    subclasses (it recommends depth 1 on this seed, by 10 ± 4.6 elpd); with the noise tree
    every LOO recommends 0. Truth 2: leave-one-group-out recommends 2 (leaving one metabolite
    out cannot see the superclass level, with or without noise).
    """
    scales = {
        0: {"tau_w": 0.15, "tau_v": 0.0, "tau_u": 0.0},
        2: {"tau_w": 0.05, "tau_v": 0.05, "tau_u": 0.6},
    }
    sim = simulate(
        n=60,
        m=240,
        p=1,
        proportions=[1.0] * 12,
        n_superclasses=3,
        residuals=ResidualNoise(subclass_sd=0.5, superclass_sd=0.4, global_sd=0.3),
        random_seed=seed,
        **scales[truth],
    )
    fit = bh.mlm(sim.Y, sim.X, x_intercept=False)
    tree = bh.Hierarchy.from_frame(sim.annotations, levels=sim.levels)
    comparison = compare_depths(
        fit,
        tree,
        loo=loo,
        rule=RecommendationRule(criterion="loo"),
        random_seed=1,
        draws=500,
        tune=500,
        chains=2,
        progressbar=False,
    )
    assert all(idata.attrs["noise"] == "tree" for idata in comparison.fits.values())
    assert comparison.recommended == truth, comparison
