from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc.mlm import mlm


def tiny_problem(rng, n=12, m=5):
    X = rng.normal(size=(n, 2))
    Y = 0.8 * X[:, [0]] + rng.normal(size=(n, m))
    Z = rng.normal(size=(m, 1))
    return Y, X, Z


def loop_reference(Y, X, Z, n_perms, seed, by="rows", statistic="t", **kwargs):
    """One full mlm fit per permutation, drawing permutations as documented."""
    observed = mlm(Y, X, Z, **kwargs)
    stat = "tstat" if statistic == "t" else "coef"
    threshold = np.abs(getattr(observed, stat).values)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(threshold.shape)
    for _ in range(n_perms):
        perm = rng.permutation(Y.shape[0] if by == "rows" else Y.shape[1])
        permuted = Y[perm] if by == "rows" else Y[:, perm]
        values = np.abs(getattr(mlm(permuted, X, Z, **kwargs), stat).values)
        exceed += values >= threshold * (1 - 1e-10)
    return (1 + exceed) / (1 + n_perms)


@pytest.mark.parametrize(
    ("use_z", "by", "statistic", "kwargs"),
    [
        (False, "rows", "t", {}),
        (False, "rows", "coef", {}),
        (False, "rows", "t", {"x_intercept": False}),
        (False, "rows", "t", {"dof": "n-1"}),
        (True, "rows", "t", {}),
        (True, "rows", "t", {"weights": np.linspace(0.5, 2.0, 5)}),
        (True, "columns", "t", {"weights": np.linspace(0.5, 2.0, 5)}),
        (True, "columns", "coef", {}),
        (False, "rows", "t", {"shrinkage": "C"}),
        (True, "rows", "t", {"shrinkage": "R"}),
    ],
)
def test_matches_a_loop_of_full_fits(rng, use_z, by, statistic, kwargs):
    Y, X, Z = tiny_problem(rng)
    Z = Z if use_z else None
    fit = mlm(Y, X, Z, **kwargs)
    result = fit.permutation_test(30, random_seed=7, by=by, statistic=statistic)
    expected = loop_reference(Y, X, Z, 30, 7, by=by, statistic=statistic, **kwargs)
    np.testing.assert_array_equal(result.values, expected)
    assert result.dims == ("covariate", "feature")
    assert result.attrs["n_perms"] == 30


def test_range_and_reproducibility(rng):
    Y, X, _ = tiny_problem(rng, n=20, m=30)
    fit = mlm(Y, X)
    first = fit.permutation_test(99, random_seed=3)
    second = fit.permutation_test(99, random_seed=3)
    other = fit.permutation_test(99, random_seed=4)
    np.testing.assert_array_equal(first.values, second.values)
    assert not np.array_equal(first.values, other.values)
    assert first.values.min() >= 1 / 100 and first.values.max() <= 1.0
    assert first.sel(covariate="x0").values.min() == pytest.approx(1 / 100)
    np.testing.assert_allclose(first.values * 100, np.round(first.values * 100))


def test_labels_follow_the_fit(rng):
    Y, X, _ = tiny_problem(rng)
    frame = pd.DataFrame(Y, columns=list("abcde"))
    fit = mlm(frame, pd.DataFrame(X, columns=["u", "v"]))
    result = fit.permutation_test(10, random_seed=0)
    assert list(result["feature"].values) == list("abcde")
    assert list(result["covariate"].values) == ["(Intercept)", "u", "v"]


def test_roughly_uniform_under_the_null(rng):
    n, m = 40, 400
    X = rng.normal(size=(n, 2))
    Y = rng.normal(size=(n, m)) + 5.0
    pvals = mlm(Y, X).permutation_test(199, random_seed=11).sel(covariate=["x0", "x1"]).values
    assert 0.45 < pvals.mean() < 0.55
    assert 0.02 < (pvals <= 0.05).mean() < 0.09
    hist = np.histogram(pvals, bins=5, range=(0, 1))[0] / pvals.size
    assert np.all(np.abs(hist - 0.2) < 0.05)


def test_agrees_with_parametric_pvalues_on_normal_data(rng):
    n, m = 60, 50
    X = rng.normal(size=(n, 1))
    Y = 0.3 * X + rng.normal(size=(n, m))
    fit = mlm(Y, X)
    perm = fit.permutation_test(999, random_seed=5).sel(covariate="x0").values
    assert np.corrcoef(perm, fit.pvalue.sel(covariate="x0").values)[0, 1] > 0.98


def test_chunking_does_not_change_results(rng, monkeypatch):
    from bayeshier_pymc import permutation

    Y, X, Z = tiny_problem(rng)
    fit = mlm(Y, X, Z)
    full = fit.permutation_test(40, random_seed=2)
    monkeypatch.setattr(permutation, "_CHUNK_BYTES", 1)
    np.testing.assert_array_equal(fit.permutation_test(40, random_seed=2).values, full.values)


def test_bad_arguments(rng):
    Y, X, _ = tiny_problem(rng)
    fit = mlm(Y, X)
    with pytest.raises(ValueError, match="unknown permutation mode by='samples'"):
        fit.permutation_test(10, by="samples")
    with pytest.raises(ValueError, match="by='columns' permutes features against the rows of Z"):
        fit.permutation_test(10, by="columns")
    with pytest.raises(ValueError, match="unknown statistic 'f'"):
        fit.permutation_test(10, statistic="f")
    for n_perms in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_perms must be a positive integer"):
            fit.permutation_test(n_perms)


def test_progress_bar_can_be_forced(rng, capsys):
    Y, X, _ = tiny_problem(rng)
    mlm(Y, X).permutation_test(5, random_seed=0, progress=True)
    assert "5/5" in capsys.readouterr().err
    mlm(Y, X).permutation_test(5, random_seed=0, progress=False)
    assert capsys.readouterr().err == ""
