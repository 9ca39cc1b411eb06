"""Extreme scales, collinear designs and the convergence warning."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import ConvergenceWarning, check_convergence
from bayeshier_pymc.gaussian_tree import TreeIndex, upward_pass


def _tree_model(se: np.ndarray, b: np.ndarray) -> bh.ShrinkageModel:
    features = [f"f{j}" for j in range(b.shape[1])]
    frame = pd.DataFrame({"SUB": [f"g{j % 2}" for j in range(len(features))]}, index=features)
    return bh.ShrinkageModel(
        (pd.DataFrame(b, columns=features), pd.DataFrame(se, columns=features)),
        bh.Hierarchy.from_frame(frame, "SUB"),
    )


@pytest.mark.parametrize("tau", [1e-300, 1e-150, 1e-8, 1e8, 1e150])
def test_exact_draws_stay_finite_and_right_for_extreme_tau(tau: float) -> None:
    se = 10.0 ** np.linspace(-6, 6, 8)[None, :]
    b = np.linspace(-3, 3, 8)[None, :]
    model = _tree_model(se, b)
    posterior = model.draw_given_scales(np.full((1, 200, 1, 2), tau), np.random.default_rng(0))
    assert all(np.isfinite(v).all() for v in posterior.values())
    theta = posterior["theta"][0, :, 0]
    if tau < 1e-100:  # no spread: θ_j equals its group mean
        group = posterior["SUB_mean"][0, :, 0]
        np.testing.assert_allclose(theta, group[:, [j % 2 for j in range(8)]], atol=1e-12)
    if tau > 1e100:  # no pooling: θ_j | b ~ N(b_j, s_j²)
        np.testing.assert_allclose(theta[:, 0], b[0, 0], atol=10 * se[0, 0])


def test_marginal_likelihood_matches_a_dense_gaussian_over_many_orders_of_magnitude() -> None:
    se = 10.0 ** np.array([[-3.0, -2.0, 0.0, 2.0, 3.0, 1.0]])
    b = np.array([[1e-3, -2e-2, 0.5, 1e2, -1e3, 2.0]])
    parents = np.array([0, 0, 1, 1, 1, 2])
    tree = TreeIndex(6, (parents,), (3,))
    tau = np.array([[0.7, 2.0]])
    mu0, s0 = 0.3, 1.5
    # b = θ0 + u[parent] + e_θ + e_b  (all independent Gaussians)
    membership = (parents[:, None] == np.arange(3)[None, :]).astype(float)
    cov = s0**2 + tau[0, 1] ** 2 * membership @ membership.T + np.diag(tau[0, 0] ** 2 + se[0] ** 2)
    expected = stats.multivariate_normal(np.full(6, mu0), cov).logpdf(b[0])
    got = upward_pass(b, se**2, tau, tree, mu0, s0).log_marginal[0]
    assert got == pytest.approx(expected, rel=1e-9)


def test_near_collinear_design_is_accurate_and_exact_collinearity_raises() -> None:
    rng = np.random.default_rng(4)
    n = 200
    x1 = rng.normal(size=n)
    y = rng.normal(size=(n, 3))
    for eps in (1e-4, 1e-7):
        x = np.column_stack([x1, x1 + eps * rng.normal(size=n)])
        fit = bh.mlm(y, x)
        design = np.column_stack([np.ones(n), x])
        reference = np.linalg.lstsq(design, y, rcond=None)[0]
        condition = np.linalg.cond(design)
        np.testing.assert_allclose(
            fit.coef.values, reference, rtol=0, atol=condition * 1e-13 * np.abs(reference).max()
        )
        assert np.isfinite(fit.se.values).all() and (fit.se.values[1:] > 1.0).all()
    with pytest.raises(ValueError, match=r"rank-deficient .* collinear"):
        bh.mlm(y, np.column_stack([x1, 2 * x1]))


@pytest.mark.parametrize(
    ("y_scale", "x_scale", "message"),
    [
        (1e200, 1.0, r"Y has 3 features .* outside \[1e-100, 1e100\]"),
        (1e-200, 1.0, r"Y has 3 features .* outside"),
        (1.0, 1e-200, r"X has 1 columns \['x0'\] .* outside"),
        (1e90, 1e-90, r"overflow or underflow float64"),
    ],
)
def test_mlm_refuses_unrepresentable_scales_by_name(
    y_scale: float, x_scale: float, message: str
) -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=message):
        bh.mlm(rng.normal(size=(20, 3)) * y_scale, rng.normal(size=(20, 1)) * x_scale)


@pytest.mark.parametrize("scale", [1e-90, 1e-6, 1e6, 1e90])
def test_mlm_is_scale_equivariant_within_range(scale: float) -> None:
    rng = np.random.default_rng(6)
    y, x = rng.normal(size=(30, 4)), rng.normal(size=(30, 2))
    base, scaled = bh.mlm(y, x), bh.mlm(y * scale, x)
    np.testing.assert_allclose(scaled.coef.values, base.coef.values * scale, rtol=1e-10)
    np.testing.assert_allclose(scaled.se.values, base.se.values * scale, rtol=1e-10)
    np.testing.assert_allclose(scaled.pvalue.values, base.pvalue.values, rtol=1e-8)


def test_complex_input_is_refused() -> None:
    with pytest.raises(ValueError, match="complex values are not supported"):
        bh.mlm(np.ones((5, 2)) + 1j, np.arange(5.0))


# ------------------------------------------------------------------- convergence warning
def _idata(draws: np.ndarray, diverging: int = 0) -> az.InferenceData:
    stats_ = np.zeros(draws.shape[:2], dtype=bool)
    stats_.flat[:diverging] = True
    return az.from_dict(
        posterior={"tau": np.abs(draws), "mu": draws}, sample_stats={"diverging": stats_}
    )


def test_check_convergence_flags_each_failure() -> None:
    rng = np.random.default_rng(7)
    good = rng.normal(size=(4, 1000))
    assert check_convergence(_idata(good)).ok
    assert "divergent" in check_convergence(_idata(good, diverging=3)).problems[0]
    shifted = good + np.arange(4)[:, None]
    assert any("r̂" in p for p in check_convergence(_idata(shifted)).problems)
    sticky = np.repeat(rng.normal(size=(4, 50)), 20, axis=1)
    assert any("ESS" in p for p in check_convergence(_idata(sticky)).problems)


def test_check_convergence_reports_arviz_values() -> None:
    """Extremes over several variables with ties (sticky MH-like chains) as ArviZ finds them."""
    rng = np.random.default_rng(9)
    draws = np.repeat(rng.normal(size=(3, 300, 2)), 3, axis=1) + np.array([0.0, 0.2])
    idata = az.from_dict(posterior={"tau": np.exp(draws), "mu": draws[..., 0]})
    report = check_convergence(idata)
    subset = idata.posterior[["tau", "mu"]]
    rhat = max(float(az.rhat(subset)[name].max()) for name in ("tau", "mu"))
    ess = min(float(az.ess(subset, method="bulk")[name].min()) for name in ("tau", "mu"))
    np.testing.assert_allclose([report.max_rhat, report.min_ess_bulk], [rhat, ess], rtol=1e-10)


def test_sample_warns_on_a_short_run_and_not_on_a_good_one() -> None:
    rng = np.random.default_rng(8)
    model = bh.ShrinkageModel((rng.normal(size=(1, 8)), np.full((1, 8), 0.5)))
    with pytest.warns(ConvergenceWarning, match="ESS"):
        model.sample(draws=30, tune=30, chains=2, random_seed=1, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        idata = model.sample(draws=1000, tune=500, chains=2, random_seed=1, progressbar=False)
    assert check_convergence(idata).ok


def test_the_convergence_warning_names_the_callers_line() -> None:
    """Through ShrinkageModel.sample (and its Ctrl-C wrapper) or the registry's sample, the
    warning names this file, not a frame of the package."""
    rng = np.random.default_rng(8)
    model = bh.ShrinkageModel((rng.normal(size=(1, 8)), np.full((1, 8), 0.5)))
    short = {"draws": 10, "tune": 10, "chains": 2, "random_seed": 1, "progressbar": False}
    with pytest.warns(ConvergenceWarning) as by_model:
        model.sample("gibbs", **short)
    with pytest.warns(ConvergenceWarning) as by_registry:
        bh.sample(model.problem, "gibbs", **short)
    for record in (*by_model, *by_registry):
        assert record.filename == __file__
