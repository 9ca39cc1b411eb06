from __future__ import annotations

import numpy as np
import pytest

from bayeshier_pymc.covariance import (
    covariance_and_variance,
    residual_divisor,
    shrink_covariance,
    validate_dof,
    validate_target,
)


def residuals(rng, n=30, m=6, rho=0.4):
    """Correlated residuals with mean-zero columns (as after a fit with an intercept)."""
    cov = rho * np.ones((m, m)) + (1 - rho) * np.eye(m)
    cov *= np.outer(np.linspace(0.5, 2.0, m), np.linspace(0.5, 2.0, m))
    E = rng.multivariate_normal(np.zeros(m), cov, size=n)
    return E - E.mean(axis=0)


def schafer_strimmer_moments(E):
    """s_ij and Var(s_ij) exactly as in Schäfer & Strimmer (2005), section 2.2, with loops."""
    n, m = E.shape
    x = E - E.mean(axis=0)
    s = np.empty((m, m))
    var_s = np.empty((m, m))
    for i in range(m):
        for j in range(m):
            w = x[:, i] * x[:, j]
            w_bar = w.mean()
            s[i, j] = n / (n - 1) * w_bar
            var_s[i, j] = n / (n - 1) ** 3 * sum((w_k - w_bar) ** 2 for w_k in w)
    return s, var_s


def clip(value):
    return min(1.0, max(0.0, value))


def table2_reference(E, target):
    """Targets and optimal lambda of Schäfer & Strimmer (2005), Table 2, written out plainly."""
    s, var_s = schafer_strimmer_moments(E)
    m = s.shape[0]
    off = [(i, j) for i in range(m) for j in range(m) if i != j]
    diag = [(i, i) for i in range(m)]
    v = np.mean([s[i, i] for i in range(m)])
    c = np.mean([s[i, j] for i, j in off])
    if target == "A":
        t = np.eye(m)
        num = sum(var_s[k] for k in off + diag)
        den = sum(s[k] ** 2 for k in off) + sum((s[k] - 1) ** 2 for k in diag)
    elif target == "B":
        t = v * np.eye(m)
        num = sum(var_s[k] for k in off + diag)
        den = sum(s[k] ** 2 for k in off) + sum((s[k] - v) ** 2 for k in diag)
    elif target == "C":
        t = np.full((m, m), c)
        np.fill_diagonal(t, v)
        num = sum(var_s[k] for k in off) + sum(var_s[k] for k in diag)
        den = sum((s[k] - c) ** 2 for k in off) + sum((s[k] - v) ** 2 for k in diag)
    else:
        t = np.diag(np.diag(s))
        num = sum(var_s[k] for k in off)
        den = sum(s[k] ** 2 for k in off)
    lam = clip(num / den)
    return lam * t + (1 - lam) * s, lam


def r_target_reference(E, df_resid):
    """Target R written out: log-variances and Fisher-z correlations shrunk toward their means."""
    s, var_s = schafer_strimmer_moments(E)
    m = s.shape[0]
    log_v = [np.log(s[i, i]) for i in range(m)]
    mean_log = sum(log_v) / m
    var_log = [var_s[i, i] / s[i, i] ** 2 for i in range(m)]
    lam_v = clip(sum(var_log) / sum((lv - mean_log) ** 2 for lv in log_v))
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    z = {(i, j): np.arctanh(s[i, j] / np.sqrt(s[i, i] * s[j, j])) for i, j in pairs}
    z_bar = sum(z.values()) / len(pairs)
    lam_r = clip(len(pairs) / (df_resid - 2) / sum((zz - z_bar) ** 2 for zz in z.values()))
    sd = [np.exp(((1 - lam_v) * log_v[i] + lam_v * mean_log) / 2) for i in range(m)]
    out = np.empty((m, m))
    for i in range(m):
        out[i, i] = sd[i] ** 2
        for j in range(i + 1, m):
            r = np.tanh((1 - lam_r) * z[i, j] + lam_r * z_bar)
            out[i, j] = out[j, i] = r * sd[i] * sd[j]
    return out, {"variance": lam_v, "correlation": lam_r}


def test_moments_match_schafer_strimmer(rng):
    E = residuals(rng)
    s, var_s = covariance_and_variance(E, divisor=E.shape[0] - 1)
    ref_s, ref_var = schafer_strimmer_moments(E)
    np.testing.assert_allclose(s, ref_s, rtol=1e-12)
    np.testing.assert_allclose(var_s, ref_var, rtol=1e-10)


def test_moments_with_divisor_n_minus_p(rng):
    E = residuals(rng)
    n = E.shape[0]
    s, var_s = covariance_and_variance(E, divisor=n - 4)
    ref_s, ref_var = schafer_strimmer_moments(E)
    np.testing.assert_allclose(s, ref_s * (n - 1) / (n - 4), rtol=1e-12)
    np.testing.assert_allclose(var_s, ref_var * (n - 1) ** 2 / (n - 4) ** 2, rtol=1e-10)


@pytest.mark.parametrize("target", ["A", "B", "C", "D"])
@pytest.mark.parametrize("rho", [0.0, 0.4])
def test_linear_targets_match_table_2(rng, target, rho):
    E = residuals(rng, rho=rho)
    shrunk = shrink_covariance(E, target, divisor=E.shape[0] - 1, df_resid=E.shape[0] - 3)
    expected, lam = table2_reference(E, target)
    assert shrunk.shrinkage_lambda == pytest.approx(lam, rel=1e-9)
    np.testing.assert_allclose(shrunk.matrix, expected, rtol=1e-9, atol=1e-14)
    assert 0.0 < lam <= 1.0


def test_target_d_keeps_the_variances(rng):
    E = residuals(rng)
    shrunk = shrink_covariance(E, "D", divisor=29, df_resid=28)
    np.testing.assert_allclose(np.diag(shrunk.matrix), (E * E).sum(axis=0) / 29)


def test_lambda_is_truncated_to_one(rng):
    """S = 1.001 I: the target is almost exact, the unclipped ratio exceeds one."""
    q, _ = np.linalg.qr(rng.normal(size=(20, 5)))
    E = q * np.sqrt(19 * 1.001)
    shrunk = shrink_covariance(E, "A", divisor=19, df_resid=17)
    assert shrunk.shrinkage_lambda == 1.0
    np.testing.assert_allclose(shrunk.matrix, np.eye(5), atol=1e-12)


def test_target_r_matches_direct_computation(rng):
    loadings = rng.normal(size=(5, 2))
    cov = loadings @ loadings.T + np.diag(rng.uniform(0.2, 3.0, size=5))
    E = rng.multivariate_normal(np.zeros(5), cov, size=40)
    E -= E.mean(axis=0)
    shrunk = shrink_covariance(E, "R", divisor=39, df_resid=37)
    expected, lam = r_target_reference(E, df_resid=37)
    assert shrunk.shrinkage_lambda["variance"] == pytest.approx(lam["variance"], rel=1e-9)
    assert shrunk.shrinkage_lambda["correlation"] == pytest.approx(lam["correlation"], rel=1e-9)
    assert 0 < lam["variance"] < 1 and 0 < lam["correlation"] < 1
    np.testing.assert_allclose(shrunk.matrix, expected, rtol=1e-9)


def test_target_r_is_repaired_to_positive_semidefinite(rng):
    """Two strong factors, 12 samples, 40 features: elementwise tanh breaks definiteness."""
    E = rng.normal(size=(12, 2)) @ rng.normal(size=(2, 40)) + 0.3 * rng.normal(size=(12, 40))
    E -= E.mean(axis=0)
    shrunk = shrink_covariance(E, "R", divisor=11, df_resid=10)
    unrepaired, _ = r_target_reference(E, df_resid=10)
    assert np.linalg.eigvalsh(unrepaired).min() < -1e-3
    assert np.linalg.eigvalsh(shrunk.matrix).min() > -1e-10
    np.testing.assert_allclose(np.diag(shrunk.matrix), np.diag(unrepaired), rtol=1e-9)
    scale = np.sqrt(np.diag(unrepaired))
    corr_gap = (shrunk.matrix - unrepaired) / np.outer(scale, scale)
    assert np.abs(corr_gap).max() < 0.1


def test_target_r_errors(rng):
    E = residuals(rng)
    E[:, 2] = 0.0
    with pytest.raises(ValueError, match="needs positive residual variances"):
        shrink_covariance(E, "R", divisor=29, df_resid=27)
    with pytest.raises(ValueError, match="more than 2 residual degrees of freedom"):
        shrink_covariance(residuals(rng), "R", divisor=29, df_resid=2)


def test_single_feature(rng):
    E = rng.normal(size=(10, 1))
    for target in ("A", "B", "C", "D", "R"):
        shrunk = shrink_covariance(E, target, divisor=9, df_resid=8)
        assert shrunk.matrix.shape == (1, 1)
        assert np.isfinite(shrunk.matrix).all()


def test_validation():
    assert validate_target(None) is None
    assert validate_target("C") == "C"
    with pytest.raises(ValueError, match="unknown shrinkage target 'a'"):
        validate_target("a")
    assert validate_dof("n-1") == "n-1"
    with pytest.raises(ValueError, match="unknown dof"):
        validate_dof(None)
    assert residual_divisor(10, 3, "n-p") == 7
    assert residual_divisor(10, 3, "n-1") == 9
