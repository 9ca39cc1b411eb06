"""Tree-structured noise estimated from stage-1 residuals (``bayeshier_pymc.noise``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Estimates, Hierarchy, ShrinkageModel, mlm
from bayeshier_pymc.noise import TreeNoise, path_variance, tree_noise

SUB = np.repeat(np.arange(6), [5, 4, 6, 3, 4, 2])
SUPER_OF_SUB = np.array([0, 0, 0, 1, 1, 1])
TOP, SUPER_VAR, SUB_VAR = 0.1, np.array([0.3, 0.15]), np.array([0.5, 0.2, 0.8, 0.0, 0.4, 0.6])
OWN = np.linspace(0.3, 1.2, SUB.size)


def _hierarchy() -> Hierarchy:
    annotations = pd.DataFrame(
        {"sub": [f"s{h}" for h in SUB], "super": [f"S{SUPER_OF_SUB[h]}" for h in SUB]},
        index=[f"f{j}" for j in range(SUB.size)],
    )
    return Hierarchy.from_frame(annotations, ["sub", "super"])


def _true_covariance() -> np.ndarray:
    """The dense residual covariance of the nested shared noise above (written out directly)."""
    sup = SUPER_OF_SUB[SUB]
    same_sub = SUB[:, None] == SUB[None, :]
    same_super = sup[:, None] == sup[None, :]
    return (
        TOP + same_super * SUPER_VAR[sup][:, None] + same_sub * SUB_VAR[SUB][:, None] + np.diag(OWN)
    )


def _study(n: int, rng: np.random.Generator, x: np.ndarray | None = None):
    """``Y = X B + E`` with E's rows from the tree covariance; X has two covariates."""
    x = rng.normal(size=(n, 2)) if x is None else x
    noise = rng.multivariate_normal(np.zeros(SUB.size), _true_covariance(), size=n)
    y = x @ np.linspace(-1.0, 1.0, 2 * SUB.size).reshape(2, SUB.size) + noise
    features = [f"f{j}" for j in range(SUB.size)]
    return mlm(pd.DataFrame(y, columns=features), pd.DataFrame(x, columns=["a", "b"]))


def test_recovers_a_known_tree_covariance_within_monte_carlo_error(rng):
    n_reps = 30
    estimates = {"top": [], "super": [], "sub": []}
    for _ in range(n_reps):
        noise = tree_noise(_study(400, rng), _hierarchy(), pooling="none")
        estimates["top"].append(noise.residual.top)
        estimates["sub"].append(noise.residual.groups[0])
        estimates["super"].append(noise.residual.groups[1])
    # group labels sort as s0..s5 and S0, S1, in the order of the truth
    for name, truth in (("top", TOP), ("super", SUPER_VAR), ("sub", SUB_VAR)):
        draws = np.asarray(estimates[name])
        mc_se = draws.std(axis=0, ddof=1) / np.sqrt(n_reps)
        # a true variance of zero is estimated clipped at zero: biased upwards by design
        unclipped = np.asarray(truth) > 0
        error = np.abs(draws.mean(axis=0) - truth)[unclipped]
        assert (error < 4.0 * mc_se[unclipped] + 1e-12).all(), (name, error, mc_se)


def test_dense_covariance_and_own_variances_reproduce_the_residual_variances(rng):
    fit = _study(300, rng)
    noise = tree_noise(fit, _hierarchy())
    dense = noise.covariance()
    assert (noise.residual.own > 0).all()
    unclipped = noise.residual.own > 0.05 * fit.sigma.to_numpy() + 1e-12
    assert np.allclose(np.diag(dense)[unclipped], fit.sigma.to_numpy()[unclipped])
    # covariance of two features in different superclasses is the top variance alone
    assert dense[0, -1] == pytest.approx(noise.residual.top)
    assert np.allclose(noise.covariance("b"), noise.covariate_scale["b"] * dense)


def test_path_variance_is_the_diagonal_of_the_dense_covariance():
    """Known node variances, one row per covariate scale: own + top + the path's groups."""
    scale = np.array([1.0, 2.5])[:, None]
    top = scale[:, 0] * TOP
    groups = (scale * SUB_VAR, scale * SUPER_VAR)
    own = scale * OWN
    total = path_variance(_hierarchy(), top, groups, own)
    np.testing.assert_allclose(total, scale * np.diag(_true_covariance()), rtol=1e-14)
    shared = path_variance(_hierarchy(), TOP, (SUB_VAR, SUPER_VAR))
    np.testing.assert_allclose(shared, np.diag(_true_covariance()) - OWN, rtol=1e-14)


def test_aligned_noise_is_the_submatrix_of_the_dense_covariance(rng):
    noise = tree_noise(_study(100, rng), _hierarchy())
    order = [5, 0, 17, 20, 3]  # drops every feature of s1 and s4
    aligned = noise.align([f"f{j}" for j in order])
    assert np.allclose(aligned.covariance("a"), noise.covariance("a")[np.ix_(order, order)])
    with pytest.raises(ValueError, match="no annotation"):
        noise.align(["f0", "g9"])


def test_own_variances_stay_positive_when_a_group_member_is_quiet(rng):
    fit = _study(300, rng)
    y = fit.Y.copy()
    y["f0"] = y["f0"] * 0.05  # far below its group's shared variance
    noise = tree_noise(mlm(y, fit.X.drop(columns="(Intercept)")), _hierarchy())
    sigma = mlm(y, fit.X.drop(columns="(Intercept)")).sigma.to_numpy()
    assert (noise.residual.own >= 0.05 * sigma - 1e-15).all()
    assert noise.residual.own[0] == pytest.approx(0.05 * sigma[0])


def test_estimate_noise_is_c_kk_times_the_residual_noise_over_replicates(rng):
    """Cov(b̂_k·) = c_kk Σ: the covariance of b̂ over replicate studies with one fixed X."""
    x = rng.normal(size=(40, 2))
    fits = [_study(40, rng, x) for _ in range(1000)]
    c_kk = fits[0].coef_variance_factor.to_series()
    assert np.allclose(fits[0].se.to_numpy() ** 2, np.outer(c_kk, fits[0].sigma))
    expected = c_kk["b"] * _true_covariance()
    coefs = np.stack([fit.coef.sel(covariate="b").to_numpy() for fit in fits])
    empirical = np.cov(coefs, rowvar=False)
    # sampling sd of a covariance entry: sqrt((s_ii s_jj + s_ij²) / (R - 1))
    sd = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / 999)
    assert (np.abs(empirical - expected) < 4.5 * sd).all()
    mean_estimated = np.mean(
        [tree_noise(fit, _hierarchy(), pooling="none").covariance("b") for fit in fits[:200]],
        axis=0,
    )
    assert np.abs(mean_estimated - expected).max() < 0.1 * expected.max()


def test_partial_pooling_lowers_the_error_of_small_groups_from_few_samples(rng):
    """20 pairs with similar shared variances, 30 samples: pooling must beat the raw averages."""
    n_groups, n = 20, 30
    group = np.repeat(np.arange(n_groups), 2)
    shared = np.linspace(0.3, 0.5, n_groups)
    tree = Hierarchy.from_frame(
        pd.DataFrame({"pair": [f"p{g:02d}" for g in group]}, index=[f"f{j}" for j in range(40)]),
        "pair",
    )
    cov = (group[:, None] == group[None, :]) * shared[group][:, None] + np.eye(group.size)
    errors = {"none": [], "partial": []}
    for _ in range(40):
        y = rng.multivariate_normal(np.zeros(group.size), cov, size=n)
        fit = mlm(pd.DataFrame(y, columns=tree.features), np.ones((n, 1)), x_intercept=False)
        for pooling, found in errors.items():
            estimate = tree_noise(fit, tree, pooling=pooling).residual.groups[0]
            found.append(((estimate - shared) ** 2).mean())
    gain = np.asarray(errors["none"]) - np.asarray(errors["partial"])
    assert gain.mean() > 3.0 * gain.std(ddof=1) / np.sqrt(gain.size), gain.mean()
    assert np.mean(errors["partial"]) < 0.5 * np.mean(errors["none"])
    complete = tree_noise(fit, tree, pooling="complete")
    assert np.ptp(complete.residual.groups[0]) < 1e-12


def test_estimates_carry_a_noise_structure_only_when_given(rng):
    fit = _study(100, rng)
    noise = tree_noise(fit, _hierarchy())
    assert Estimates.from_any(fit).noise is None
    assert Estimates.from_any(fit.to_frame()).noise is None
    carried = Estimates.from_any(fit, noise=noise, covariates=["b"])
    assert carried.noise is noise
    assert set(noise.estimation.index) == {"top", "sub", "super"}
    assert Estimates.from_any(carried, covariates=["b"]).noise is noise
    assert isinstance(carried.noise, TreeNoise)


def test_stage_two_uses_a_carried_noise_structure(rng):
    """A noise structure the estimates carry is the stage-2 likelihood, never silently dropped."""
    fit = _study(100, rng)
    noise = tree_noise(fit, _hierarchy())
    carried = Estimates.from_any(fit, noise=noise)
    problem = ShrinkageModel(carried, _hierarchy()).problem
    assert problem.correlated
    for k, covariate in enumerate(problem.covariates):
        np.testing.assert_allclose(problem.var_b[k], noise.for_covariate(covariate).own)


def test_bad_inputs_raise_clear_errors(rng):
    fit = _study(100, rng)
    with pytest.raises(ValueError, match="Z=None"):
        tree_noise(
            mlm(fit.Y, fit.X, Z=np.ones((SUB.size, 1)), x_intercept=False, z_intercept=False),
            _hierarchy(),
        )
    with pytest.raises(ValueError, match="pooling"):
        tree_noise(fit, _hierarchy(), pooling="some")
    with pytest.raises(ValueError, match="min_own_share"):
        tree_noise(fit, _hierarchy(), min_own_share=0.0)
    other = tree_noise(fit, _hierarchy().align([f"f{j}" for j in range(SUB.size)][::-1]))
    other_fit = mlm(fit.Y.iloc[:, ::-1], fit.X, x_intercept=False)
    with pytest.raises(ValueError, match="features differ"):
        Estimates.from_any(fit, noise=tree_noise(other_fit, _hierarchy()))
    with pytest.raises(ValueError, match="TreeNoise"):
        Estimates.from_any(fit, noise="tree")
    assert other.features.equals(fit.Y.columns)
    with pytest.raises(ValueError, match="no annotation"):
        tree_noise(fit, _hierarchy().align(["f0", "f1"]))


def test_node_averages_equal_the_dense_residual_covariance_averaged_over_meeting_pairs(rng):
    """The O(n m) group-sum averages against the m × m Σ̂ averaged over pairs, node by node."""
    fit = _study(2000, rng)
    noise = tree_noise(fit, _hierarchy(), pooling="none")
    dense = fit.residual_covariance().to_numpy()
    sub, sup = SUB, SUPER_OF_SUB[SUB]
    off_diagonal = ~np.eye(SUB.size, dtype=bool)

    def pair_mean(mask: np.ndarray) -> float:
        return float(dense[mask & off_diagonal].mean())

    top = pair_mean(sup[:, None] != sup[None, :])
    assert noise.residual.top == pytest.approx(top, rel=1e-10)
    for g in range(2):
        meet = (sup[:, None] == g) & (sup[None, :] == g) & (sub[:, None] != sub[None, :])
        assert noise.residual.top + noise.residual.groups[1][g] == pytest.approx(pair_mean(meet))
    for h in np.flatnonzero(SUB_VAR > 0):  # s3's true variance is 0: its estimate may clip
        meet = (sub[:, None] == h) & (sub[None, :] == h)
        path = noise.residual.top + noise.residual.groups[1][SUPER_OF_SUB[h]]
        assert path + noise.residual.groups[0][h] == pytest.approx(pair_mean(meet))


def test_liver_lipidome_noise_structure(shared_data):
    from bayeshier_pymc.validation_data import LIVER_FILES, has_files, read_liver_lipidome

    if not has_files(shared_data, LIVER_FILES):
        pytest.skip("liver lipidome CSVs absent")
    study = read_liver_lipidome(shared_data)
    fit = mlm(study.Y, study.X)
    noise = tree_noise(fit, study.hierarchy)
    sigma = fit.sigma.to_numpy()
    assert (noise.residual.own >= 0.05 * sigma - 1e-12).all()
    total = noise.shared_variance() + noise.residual.own
    assert (total >= sigma - 1e-12).all()
    # lipids of one class share most of their residual variance (measured: median 64%)
    assert np.median(noise.shared_variance() / sigma) > 0.5
    assert list(noise.estimation.index) == ["top", "lipid_category", "lipid_class"]
