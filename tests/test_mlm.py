from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.api as sm
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from bayeshier_pymc.mlm import MLMFit, mlm, resolve_effect_scale
from tests.test_covariance import schafer_strimmer_moments

RTOL, ATOL = 1e-8, 1e-10


@pytest.fixture
def sacurine(shared_data):
    Y = pd.read_csv(shared_data / "sacurine_dataMatrix.csv", index_col="sample_id")
    meta = pd.read_csv(shared_data / "sacurine_sampleMetadata.csv", index_col="sample_id")
    return Y, meta


def covariates(meta: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"age": meta["age"], "bmi": meta["bmi"], "male": (meta["gender"] == "M").astype(float)}
    )


def ols_reference(Y: pd.DataFrame, design: np.ndarray) -> dict[str, np.ndarray]:
    fits = [sm.OLS(Y[column].to_numpy(), design).fit() for column in Y.columns]
    return {
        name: np.column_stack([getattr(fit, name) for fit in fits])
        for name in ("params", "bse", "tvalues", "pvalues")
    }


def small_problem(rng, n=25, m=7, p=2, q=2):
    X = rng.normal(size=(n, p))
    Z = rng.normal(size=(m, q))
    B = rng.normal(size=(p + 1, q + 1))
    Xd = np.column_stack([np.ones(n), X])
    Zd = np.column_stack([np.ones(m), Z])
    Y = Xd @ B @ Zd.T + rng.normal(size=(n, m))
    return Y, X, Z, Xd, Zd


def kron_reference(Y, Xd, Zd, weights=None, divisor=None):
    """Least squares on vec(Y) = (Z ⊗ X) vec(B), optionally weighting the columns of Y."""
    n, m = Y.shape
    w = np.ones(m) if weights is None else weights
    root = np.sqrt(np.repeat(w, n))
    design = np.kron(Zd, Xd) * root[:, None]
    vec_b = np.linalg.lstsq(design, Y.flatten(order="F") * root, rcond=None)[0]
    B = vec_b.reshape(Xd.shape[1], Zd.shape[1], order="F")
    E = Y - Xd @ B @ Zd.T
    d = n - Xd.shape[1] if divisor is None else divisor
    sigma = E.T @ E / d
    W = np.diag(w)
    A = np.linalg.inv(Zd.T @ W @ Zd) @ Zd.T @ W
    var = np.diag(np.kron(np.linalg.inv(Xd.T @ Xd), A @ sigma @ A.T))
    return B, np.sqrt(var.reshape(Xd.shape[1], Zd.shape[1])), sigma


# --- Z = None against per-feature OLS -------------------------------------------------------


def test_matches_statsmodels_on_sacurine(sacurine):
    Y, meta = sacurine
    X = covariates(meta)
    fit = mlm(Y, X)
    ref = ols_reference(Y, sm.add_constant(X.to_numpy()))
    assert fit.coef.dims == ("covariate", "feature")
    assert list(fit.coef["covariate"].values) == ["(Intercept)", "age", "bmi", "male"]
    assert list(fit.coef["feature"].values) == list(Y.columns)
    np.testing.assert_allclose(fit.coef.values, ref["params"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fit.se.values, ref["bse"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fit.tstat.values, ref["tvalues"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fit.pvalue.values, ref["pvalues"], rtol=RTOL, atol=1e-12)
    assert fit.df_resid == 183 - 4
    assert fit.n_obs == 183


def test_sigma_residuals_and_fitted_match_statsmodels(sacurine):
    Y, meta = sacurine
    X = covariates(meta)
    fit = mlm(Y, X)
    design = sm.add_constant(X.to_numpy())
    first = sm.OLS(Y.iloc[:, 0].to_numpy(), design).fit()
    np.testing.assert_allclose(fit.sigma.values[0], first.scale, rtol=RTOL)
    np.testing.assert_allclose(fit.residuals.values[:, 0], first.resid, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.fitted.values[:, 0], first.fittedvalues, rtol=RTOL)
    assert fit.residuals.dims == ("sample", "feature")
    assert list(fit.fitted["sample"].values) == list(Y.index)
    assert fit.sigma.dims == ("feature",)


def test_conf_int_matches_statsmodels(sacurine):
    Y, meta = sacurine
    X = covariates(meta)
    fit = mlm(Y, X)
    ci = fit.conf_int(alpha=0.1)
    assert ci.dims == ("covariate", "feature", "bound")
    assert list(ci["bound"].values) == ["lower", "upper"]
    ref = sm.OLS(Y.iloc[:, 3].to_numpy(), sm.add_constant(X.to_numpy())).fit().conf_int(0.1)
    np.testing.assert_allclose(ci.values[:, 3, :], ref, rtol=RTOL)


def test_to_frame_and_summary_use_bh_within_covariate(sacurine):
    Y, meta = sacurine
    fit = mlm(Y, covariates(meta))
    frame = fit.to_frame()
    assert list(frame.columns) == ["covariate", "feature", "estimate", "se", "t", "p", "p_adj"]
    assert len(frame) == 4 * Y.shape[1]
    age = frame[frame["covariate"] == "age"]
    expected = multipletests(fit.pvalue.sel(covariate="age").values, method="fdr_bh")[1]
    np.testing.assert_allclose(age["p_adj"].to_numpy(), expected, rtol=1e-12)
    assert list(age["feature"]) == list(Y.columns)
    np.testing.assert_allclose(age["estimate"], fit.coef.sel(covariate="age").values)
    summary = fit.summary()
    assert summary.loc["age", "n_significant_bh05"] == int((expected < 0.05).sum())
    assert summary.loc["age", "min_p"] == pytest.approx(age["p"].min())
    assert summary.loc["age", "top_feature"] == age.loc[age["p"].idxmin(), "feature"]


def test_repr_and_html(sacurine):
    Y, meta = sacurine
    fit = mlm(Y, covariates(meta), shrinkage="D")
    text = repr(fit)
    assert "183 samples" in text and "109 features" in text and "shrinkage D" in text
    assert "n_significant_bh05" in text
    html = fit._repr_html_()
    assert html.startswith("<div>") and "<table" in html


def test_attributes_are_labelled_frames(sacurine):
    Y, meta = sacurine
    fit = mlm(Y, covariates(meta))
    assert isinstance(fit, MLMFit)
    assert list(fit.X.columns) == ["(Intercept)", "age", "bmi", "male"]
    pd.testing.assert_frame_equal(fit.Y, Y.astype(float), check_index_type=False)
    assert fit.Z is None
    assert fit.shrinkage is None and fit.shrinkage_lambda is None


def test_dof_n_minus_one_rescales_variances(rng):
    Y, X, _, _, _ = small_problem(rng)
    unbiased = mlm(Y, X)
    matrixlm = mlm(Y, X, dof="n-1")
    n, p = Y.shape[0], 3
    np.testing.assert_allclose(matrixlm.sigma, unbiased.sigma * (n - p) / (n - 1), rtol=1e-12)
    np.testing.assert_allclose(matrixlm.coef, unbiased.coef, rtol=1e-12)
    assert matrixlm.df_resid == n - p


# --- general Z ---------------------------------------------------------------------------------


def test_general_z_matches_kronecker_least_squares(rng):
    Y, X, Z, Xd, Zd = small_problem(rng)
    fit = mlm(Y, X, Z)
    B, se, sigma = kron_reference(Y, Xd, Zd)
    np.testing.assert_allclose(fit.coef.values, B, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.se.values, se, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.residual_covariance().to_numpy(), sigma, rtol=1e-9)
    np.testing.assert_allclose(fit.sigma.values, np.diag(sigma), rtol=1e-9)
    assert list(fit.coef["feature"].values) == ["(Intercept)", "z0", "z1"]
    assert list(fit.fitted["feature"].values) == [f"feature_{j}" for j in range(7)]
    np.testing.assert_allclose(fit.fitted.values, Xd @ B @ Zd.T, rtol=1e-9)


def test_general_z_dof_n_minus_one(rng):
    Y, X, Z, Xd, Zd = small_problem(rng)
    fit = mlm(Y, X, Z, dof="n-1")
    _, se, _ = kron_reference(Y, Xd, Zd, divisor=Y.shape[0] - 1)
    np.testing.assert_allclose(fit.se.values, se, rtol=1e-9)


def test_weights_match_weighted_kronecker_least_squares(rng):
    Y, X, Z, Xd, Zd = small_problem(rng)
    weights = rng.uniform(0.2, 3.0, size=Y.shape[1])
    fit = mlm(Y, X, Z, weights=weights)
    B, se, _ = kron_reference(Y, Xd, Zd, weights=weights)
    np.testing.assert_allclose(fit.coef.values, B, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.se.values, se, rtol=1e-9, atol=1e-12)
    unweighted = mlm(Y, X, Z)
    assert not np.allclose(fit.coef.values, unweighted.coef.values)


def test_weights_series_is_aligned_by_feature(rng):
    Y, X, Z, _, _ = small_problem(rng)
    frame = pd.DataFrame(Y, columns=[f"m{j}" for j in range(Y.shape[1])])
    weights = pd.Series(np.arange(1.0, 8.0), index=frame.columns)
    expected = mlm(frame, X, Z, weights=weights.to_numpy())
    shuffled = mlm(frame, X, Z, weights=weights.iloc[::-1])
    xr.testing.assert_allclose(expected.coef, shuffled.coef)


def test_weights_without_z_cancel_and_warn(rng):
    Y, X, _, _, _ = small_problem(rng)
    with pytest.warns(UserWarning, match="no effect when Z is None"):
        fit = mlm(Y, X, weights=np.arange(1.0, 8.0))
    xr.testing.assert_allclose(fit.se, mlm(Y, X).se)


# --- shrinkage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["A", "B", "C", "D", "R"])
def test_shrinkage_enters_the_standard_errors(rng, target):
    Y, X, Z, Xd, Zd = small_problem(rng)
    for z_design, zd in ((None, None), (Z, Zd)):
        fit = mlm(Y, X, z_design, shrinkage=target)
        sigma = fit.residual_covariance().to_numpy()
        A = np.eye(Y.shape[1]) if zd is None else np.linalg.solve(zd.T @ zd, zd.T)
        var = np.kron(np.linalg.inv(Xd.T @ Xd), A @ sigma @ A.T).diagonal()
        np.testing.assert_allclose(fit.se.values.ravel(), np.sqrt(var), rtol=1e-9)
        np.testing.assert_allclose(fit.sigma.values, np.diag(sigma))
        resid = Y - Xd @ fit.coef.values @ (np.eye(Y.shape[1]) if zd is None else zd.T)
        unshrunk = resid.T @ resid / (Y.shape[0] - 3)
        assert not np.allclose(sigma, unshrunk)
        assert fit.shrinkage == target


def test_shrinkage_lambda_reported(rng):
    Y, X, _, _, _ = small_problem(rng)
    assert 0.0 <= mlm(Y, X, shrinkage="B").shrinkage_lambda <= 1.0
    lam = mlm(Y, X, shrinkage="R").shrinkage_lambda
    assert set(lam) == {"variance", "correlation"}


def test_shrinkage_a_by_hand_on_sacurine(sacurine):
    """Schäfer–Strimmer target A written out with loops on centred residuals (dof n-1)."""
    Y, meta = sacurine
    Y = Y.iloc[:, :12]
    fit = mlm(Y, covariates(meta), shrinkage="A", dof="n-1")
    design = sm.add_constant(covariates(meta).to_numpy())
    E = np.column_stack([sm.OLS(Y[c].to_numpy(), design).fit().resid for c in Y.columns])
    s, var_s = schafer_strimmer_moments(E)
    m = s.shape[0]
    lam = min(1.0, max(0.0, var_s.sum() / ((s - np.eye(m)) ** 2).sum()))
    assert fit.shrinkage_lambda == pytest.approx(lam, rel=1e-9)
    np.testing.assert_allclose(
        fit.residual_covariance().to_numpy(), lam * np.eye(m) + (1 - lam) * s, rtol=1e-9
    )


# --- intercepts and formulas -------------------------------------------------------------------


def test_without_x_intercept_matches_statsmodels_without_constant(sacurine):
    Y, meta = sacurine
    X = covariates(meta)
    fit = mlm(Y.iloc[:, :10], X, x_intercept=False)
    ref = ols_reference(Y.iloc[:, :10], X.to_numpy())
    assert "(Intercept)" not in fit.coef["covariate"].values
    np.testing.assert_allclose(fit.coef.values, ref["params"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(fit.se.values, ref["bse"], rtol=RTOL, atol=ATOL)


def test_z_intercept_flag(rng):
    Y, X, Z, Xd, _ = small_problem(rng)
    fit = mlm(Y, X, Z, z_intercept=False)
    B, se, _ = kron_reference(Y, Xd, Z)
    assert list(fit.coef["feature"].values) == ["z0", "z1"]
    np.testing.assert_allclose(fit.coef.values, B, rtol=1e-9)
    np.testing.assert_allclose(fit.se.values, se, rtol=1e-9)
    ignored = mlm(Y, X, z_intercept=False)
    xr.testing.assert_identical(ignored.coef, mlm(Y, X).coef)


@pytest.mark.parametrize(
    "formula",
    [
        "age + bmi + C(gender, contr.treatment('M'))",
        "age + bmi + C(gender, contr.treatment(base='M'))",
    ],
)
def test_formula_reference_level_matches_hand_built_dummies(sacurine, formula):
    Y, meta = sacurine
    fit = mlm(Y, formula, data=meta)
    hand = pd.DataFrame(
        {"age": meta["age"], "bmi": meta["bmi"], "female": (meta["gender"] == "F").astype(float)}
    )
    ref = mlm(Y, hand)
    labels = list(fit.coef["covariate"].values)
    assert labels[0] == "(Intercept)"
    assert labels[-1].endswith("[T.F]")
    np.testing.assert_allclose(fit.coef.values, ref.coef.values, rtol=1e-10)
    np.testing.assert_allclose(fit.se.values, ref.se.values, rtol=1e-10)


def test_formula_data_is_reordered_to_y(sacurine):
    Y, meta = sacurine
    fit = mlm(Y, "age + bmi", data=meta.iloc[::-1])
    ref = mlm(Y, meta[["age", "bmi"]])
    np.testing.assert_allclose(fit.coef.values, ref.coef.values, rtol=1e-12)


def test_formula_without_intercept_and_conflicting_flag(sacurine):
    Y, meta = sacurine
    fit = mlm(Y, "0 + age + bmi", data=meta)
    assert list(fit.coef["covariate"].values) == ["age", "bmi"]
    with pytest.raises(ValueError, match="has an intercept but x_intercept=False"):
        mlm(Y, "age + bmi", data=meta, x_intercept=False)


def test_formula_z_on_feature_annotation(sacurine, shared_data):
    Y, meta = sacurine
    annotation = pd.read_csv(shared_data / "sacurine_variableMetadata.csv", index_col="variable_id")
    fit = mlm(Y, "age + bmi", data=meta, Z="msiLevel", feature_data=annotation.iloc[::-1])
    ref = mlm(Y, meta[["age", "bmi"]], annotation[["msiLevel"]].astype(float))
    np.testing.assert_allclose(fit.coef.values, ref.coef.values, rtol=1e-10)
    np.testing.assert_allclose(fit.se.values, ref.se.values, rtol=1e-10)
    assert list(fit.coef["feature"].values) == ["(Intercept)", "msiLevel"]


def test_categorical_formula_z_matches_hand_built_dummies(sacurine, shared_data):
    Y, meta = sacurine
    annotation = pd.read_csv(shared_data / "sacurine_variableMetadata.csv", index_col="variable_id")
    formula = "C(class_level1, contr.treatment('Lipids'))"
    fit = mlm(Y, "age", data=meta, Z=formula, feature_data=annotation)
    levels = sorted(set(annotation["class_level1"]) - {"Lipids"})
    hand = pd.DataFrame(
        {level: (annotation["class_level1"] == level).astype(float) for level in levels}
    )
    ref = mlm(Y, meta[["age"]], hand)
    assert len(fit.coef["feature"]) == 11
    assert list(fit.coef["feature"].values)[1:] == [f"{formula}[T.{lv}]" for lv in levels]
    np.testing.assert_allclose(fit.coef.values, ref.coef.values, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.se.values, ref.se.values, rtol=1e-9)
    np.testing.assert_allclose(fit.predict(meta).values, fit.fitted.values, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(6, 30),
    m=st.integers(1, 8),
    p=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_match_lstsq(n, m, p, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    Y = rng.normal(size=(n, m))
    design = np.column_stack([np.ones(n), X])
    if n <= p + 1:
        with pytest.raises(ValueError, match="the model needs n > p"):
            mlm(Y, X)
        return
    fit = mlm(Y, X)
    coef, rss, _, _ = np.linalg.lstsq(design, Y, rcond=None)
    np.testing.assert_allclose(fit.coef.values, coef, rtol=1e-8, atol=1e-10)
    xtx_inv = np.linalg.inv(design.T @ design)
    se = np.sqrt(np.outer(np.diag(xtx_inv), rss / (n - p - 1)))
    np.testing.assert_allclose(fit.se.values, se, rtol=1e-8, atol=1e-12)


# --- labels ------------------------------------------------------------------------------------


def test_array_inputs_get_default_labels(rng):
    Y, X, _, _, _ = small_problem(rng)
    fit = mlm(Y, X)
    assert list(fit.coef["covariate"].values) == ["(Intercept)", "x0", "x1"]
    assert list(fit.coef["feature"].values)[:2] == ["feature_0", "feature_1"]
    assert list(fit.fitted["sample"].values)[:2] == ["sample_0", "sample_1"]


def test_x_frame_is_reordered_to_y_index(rng):
    Y, X, _, _, _ = small_problem(rng)
    samples = [f"s{i}" for i in range(Y.shape[0])]
    Yf = pd.DataFrame(Y, index=samples)
    Xf = pd.DataFrame(X, index=samples, columns=["a", "b"])
    fit = mlm(Yf, Xf.iloc[::-1])
    np.testing.assert_allclose(fit.coef.values, mlm(Y, X).coef.values, rtol=1e-12)
    assert list(fit.X.index) == samples


def test_x_frame_labels_used_when_y_is_an_array(rng):
    Y, X, _, _, _ = small_problem(rng)
    Xf = pd.DataFrame(X, index=[f"s{i}" for i in range(Y.shape[0])], columns=["a", "b"])
    fit = mlm(Y, Xf)
    assert list(fit.fitted["sample"].values) == list(Xf.index)


# --- predict -----------------------------------------------------------------------------------


def test_predict_round_trip(sacurine):
    Y, meta = sacurine
    X = covariates(meta)
    fit = mlm(Y, X)
    for new in (X, X.to_numpy(), fit.X, fit.X.to_numpy(), X[["bmi", "male", "age"]]):
        pred = fit.predict(new)
        np.testing.assert_allclose(pred.values, fit.fitted.values, rtol=1e-12)
        assert pred.dims == ("sample", "feature")
    formula_fit = mlm(Y, "age + C(gender, contr.treatment('F'))", data=meta)
    np.testing.assert_allclose(
        formula_fit.predict(meta).values, formula_fit.fitted.values, rtol=1e-12
    )
    one = formula_fit.predict(meta.iloc[:1])
    assert list(one["sample"].values) == [meta.index[0]]


def test_predict_general_z_and_new_features(rng):
    Y, X, Z, Xd, _ = small_problem(rng)
    fit = mlm(Y, X, Z)
    np.testing.assert_allclose(fit.predict(X).values, fit.fitted.values, rtol=1e-12)
    z_new = rng.normal(size=(3, 2))
    pred = fit.predict(X[:4], z_new)
    expected = Xd[:4] @ fit.coef.values @ np.column_stack([np.ones(3), z_new]).T
    np.testing.assert_allclose(pred.values, expected, rtol=1e-12)
    assert pred.shape == (4, 3)


def test_predict_with_external_coefficients(rng):
    Y, X, _, Xd, _ = small_problem(rng)
    fit = mlm(Y, X)
    shrunk = fit.coef * 0.5
    reordered = shrunk.isel(feature=slice(None, None, -1)).transpose("feature", "covariate")
    pred = fit.predict(X, coef=reordered)
    np.testing.assert_allclose(pred.values, Xd @ (0.5 * fit.coef.values), rtol=1e-12)
    np.testing.assert_allclose(
        fit.predict(X, coef=0.5 * fit.coef.values).values, pred.values, rtol=1e-12
    )
    with pytest.raises(ValueError, match="feature labels do not match"):
        fit.predict(X, coef=shrunk.isel(feature=slice(1, None)))
    with pytest.raises(ValueError, match="coef must have shape"):
        fit.predict(X, coef=np.ones((2, 2)))


def test_predict_bad_inputs(rng):
    Y, X, _, _, _ = small_problem(rng)
    fit = mlm(Y, X)
    with pytest.raises(ValueError, match="new X has 5 columns"):
        fit.predict(np.ones((3, 5)))
    with pytest.raises(ValueError, match="Z_new needs a fit with a Z"):
        fit.predict(X, np.ones((2, 2)))
    frame_fit = mlm(Y, pd.DataFrame(X, columns=["a", "b"]))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['b'\]"):
        frame_fit.predict(pd.DataFrame({"a": [1.0]}))


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["Y", "X", "Z"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_inputs_are_refused(rng, where, value):
    Y, X, Z, _, _ = small_problem(rng)
    arrays = {"Y": Y, "X": X, "Z": Z}
    arrays[where] = arrays[where].copy()
    arrays[where][1, 1] = value
    with pytest.raises(ValueError, match=f"{where} holds 1 non-finite value"):
        mlm(arrays["Y"], arrays["X"], arrays["Z"])


def test_shape_mismatches_are_refused(rng):
    Y, X, Z, _, _ = small_problem(rng)
    with pytest.raises(ValueError, match="X has 24 rows but Y has 25 samples"):
        mlm(Y, X[:-1])
    with pytest.raises(ValueError, match="Z has 6 rows but Y has 7 features"):
        mlm(Y, X, Z[:-1])
    with pytest.raises(ValueError, match="weights has length 6 but Y has 7 features"):
        mlm(Y, X, Z, weights=np.ones(6))


def test_label_mismatch_is_refused(rng):
    Y, X, _, _, _ = small_problem(rng)
    Yf = pd.DataFrame(Y, index=[f"s{i}" for i in range(25)])
    Xf = pd.DataFrame(X, index=[f"s{i}" for i in range(1, 26)])
    with pytest.raises(ValueError, match=r"1 label\(s\) only in Y's samples.*\['s0'\]"):
        mlm(Yf, Xf)


def test_duplicated_labels_are_refused(rng):
    Y, X, _, _, _ = small_problem(rng)
    Yf = pd.DataFrame(Y, columns=["a"] * 7)
    with pytest.raises(ValueError, match="duplicated labels"):
        mlm(Yf, X)


def test_rank_deficient_x_names_the_columns(rng):
    Y, X, _, _, _ = small_problem(rng)
    Xf = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 0] + 2 * X[:, 1]})
    with pytest.raises(
        ValueError,
        match=r"rank-deficient \(rank 3 < 4 columns\); columns \['a', 'b', 'c'\] are collinear",
    ):
        mlm(Y, Xf)
    with pytest.raises(ValueError, match=r"column\(s\) \['zero'\] are all zero"):
        mlm(Y, Xf.assign(c=0.0).rename(columns={"c": "zero"}))
    with pytest.raises(ValueError, match=r"rank-deficient.*collinear"):
        mlm(Y, np.ones((25, 1)))


def test_rank_deficient_z_is_refused(rng):
    Y, X, Z, _, _ = small_problem(rng)
    with pytest.raises(ValueError, match=r"Z is rank-deficient \(rank 3 < 4 columns\)"):
        mlm(Y, X, np.column_stack([Z, Z[:, 0] - Z[:, 1]]))


def test_too_few_samples(rng):
    with pytest.raises(ValueError, match="n=3 samples and p=3 columns; the model needs n > p"):
        mlm(rng.normal(size=(3, 4)), rng.normal(size=(3, 2)))


def test_non_positive_weights(rng):
    Y, X, Z, _, _ = small_problem(rng)
    weights = np.ones(7)
    weights[2] = 0.0
    with pytest.raises(ValueError, match="weights must be strictly positive"):
        mlm(Y, X, Z, weights=weights)


def test_unknown_options(rng):
    Y, X, _, _, _ = small_problem(rng)
    with pytest.raises(ValueError, match="unknown shrinkage target 'E'"):
        mlm(Y, X, shrinkage="E")
    with pytest.raises(ValueError, match="unknown dof 'n'"):
        mlm(Y, X, dof="n")


def test_empty_inputs(rng):
    with pytest.raises(ValueError, match="Y is empty"):
        mlm(np.empty((0, 3)), np.empty((0, 1)))
    with pytest.raises(ValueError, match="Y is empty"):
        mlm(pd.DataFrame(index=range(5)), np.ones((5, 1)))


def test_alpha_out_of_range(rng):
    Y, X, _, _, _ = small_problem(rng)
    fit = mlm(Y, X)
    for alpha in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="alpha must lie in"):
            fit.conf_int(alpha)


def test_non_numeric_and_formula_errors(sacurine):
    Y, meta = sacurine
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['gender'\]"):
        mlm(Y, meta)
    with pytest.raises(ValueError, match="pass the DataFrame it uses as data="):
        mlm(Y, "age")
    with pytest.raises(ValueError, match="data= is only used when X is a formula"):
        mlm(Y, meta[["age"]], data=meta)
    with pytest.raises(ValueError, match="could not build X from the formula 'agee'"):
        mlm(Y, "agee", data=meta)
    missing = meta.copy()
    missing.iloc[3, 0] = np.nan
    with pytest.raises(ValueError, match=r"could not build X.*null"):
        mlm(Y, "age", data=missing)
    with pytest.raises(ValueError, match="feature_data= is only used when Z is a formula"):
        mlm(Y, "age", data=meta, feature_data=meta)


def test_zero_residual_variance_feature_is_refused(rng):
    Y, X, _, _, _ = small_problem(rng)
    Yf = pd.DataFrame(Y, columns=list("abcdefg")).assign(c=3.0)
    with pytest.raises(ValueError, match=r"feature\(s\) \['c'\] have zero residual variance"):
        mlm(Yf, X)


def test_pvalue_is_two_sided_t(rng):
    Y, X, _, _, _ = small_problem(rng)
    fit = mlm(Y, X)
    expected = 2 * scipy.stats.t.sf(np.abs(fit.tstat.values), fit.df_resid)
    np.testing.assert_allclose(fit.pvalue.values, expected)


# --- standardized(): the fit in units of each feature's residual SD --------------------------


@pytest.mark.parametrize("options", [{}, {"dof": "n-1"}, {"shrinkage": "D"}])
def test_standardized_is_the_fit_of_y_over_its_residual_sd(rng, options):
    Y, X, _, _, _ = small_problem(rng, n=30, m=6)
    Y = Y * np.array([0.1, 1.0, 3.0, 10.0, 0.5, 2.0])  # features in very different units
    fit = mlm(Y, X, **options)
    standardized = fit.standardized()
    sd = fit.residual_sd.to_numpy()
    np.testing.assert_allclose(sd**2, fit.sigma.to_numpy(), rtol=RTOL)
    reference = mlm(Y / sd, X, **options)
    for name in ("coef", "se", "residuals", "sigma"):
        np.testing.assert_allclose(
            getattr(standardized, name), getattr(reference, name), rtol=1e-7, atol=ATOL
        )
    np.testing.assert_allclose(standardized.residual_covariance(), reference.residual_covariance())
    np.testing.assert_allclose(standardized.residual_sd, 1.0, rtol=RTOL)
    # every feature's standard error is √c_kk: what ashr's exchangeable z-scores assume
    c = fit.coef_variance_factor.to_numpy()
    np.testing.assert_allclose(standardized.se, np.sqrt(c)[:, None] * np.ones((1, 6)), rtol=1e-7)
    np.testing.assert_allclose(standardized.tstat, fit.tstat, rtol=RTOL)
    assert standardized.coef.indexes["feature"].equals(fit.coef.indexes["feature"])


def test_standardized_per_feature_fit_keeps_each_features_rows(rng):
    Y, X, _, _, _ = small_problem(rng, n=30, m=5)
    Y[:4, 1] = np.nan
    Y[:27, 3] = np.nan  # too few rows: no estimate, the feature stays missing
    with pytest.warns(UserWarning, match="too few complete rows"):
        fit = mlm(Y, X, missing="per-feature")
        standardized = fit.standardized()
        reference = mlm(
            Y / np.nan_to_num(fit.residual_sd.to_numpy(), nan=1.0), X, missing="per-feature"
        )
    np.testing.assert_allclose(standardized.coef, reference.coef, rtol=1e-7)
    np.testing.assert_allclose(standardized.se, reference.se, rtol=1e-7)
    assert np.isnan(standardized.coef.to_numpy()[:, 3]).all()
    np.testing.assert_array_equal(standardized.df_resid, fit.df_resid)


def test_standardized_refuses_a_feature_design(rng):
    Y, X, Z, _, _ = small_problem(rng)
    with pytest.raises(ValueError, match="feature design Z"):
        mlm(Y, X, Z).standardized()


def test_resolve_effect_scale_chooses_residual_sd_only_where_it_is_known(rng):
    Y, X, Z, _, _ = small_problem(rng)
    fit = mlm(Y, X)
    assert resolve_effect_scale("auto", fit) == "residual_sd"
    assert resolve_effect_scale("raw", fit) == "raw"
    assert resolve_effect_scale("auto", mlm(Y, X, Z)) == "raw"
    assert resolve_effect_scale("auto", fit.to_frame()) == "raw"
    with pytest.raises(ValueError, match=r"needs a stage-1 fit .* Pass effect_scale=.raw."):
        resolve_effect_scale("residual_sd", fit.to_frame())
    with pytest.raises(ValueError, match="needs a stage-1 fit"):
        resolve_effect_scale("residual_sd", mlm(Y, X, Z))
    with pytest.raises(ValueError, match=r"must be one of \('auto', 'raw', 'residual_sd'\)"):
        resolve_effect_scale("z", fit)
