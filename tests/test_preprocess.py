from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc.preprocess import (
    drop_sparse_features,
    impute,
    log_transform,
    preprocess,
    standardize,
)


@pytest.fixture
def qmdiab(shared_data):
    return pd.read_csv(shared_data / "qmdiab_plasma_data.csv", index_col="sample_id")


@pytest.fixture
def sacurine(shared_data):
    return pd.read_csv(shared_data / "sacurine_dataMatrix.csv", index_col="sample_id")


@pytest.fixture
def small():
    return pd.DataFrame(
        {
            "a": [1.0, np.nan, 4.0, 8.0],
            "b": [np.nan, np.nan, np.nan, 2.0],
            "c": [3.0, 5.0, 7.0, 9.0],
        },
        index=["s1", "s2", "s3", "s4"],
    )


def test_qmdiab_missing_fractions_match_the_readme(qmdiab, shared_data):
    features = pd.read_csv(shared_data / "qmdiab_plasma_features.csv")
    named = features.loc[~features["BIOCHEMICAL"].str.startswith("X - "), "featureID"]
    assert len(named) == 404
    assert qmdiab.isna().to_numpy().mean() == pytest.approx(0.284, abs=5e-4)
    kept = drop_sparse_features(qmdiab[named], max_missing=0.1)
    assert kept.shape == (356, 275)
    assert list(kept.index) == list(qmdiab.index)


def test_qmdiab_half_min_imputation(qmdiab):
    data = drop_sparse_features(qmdiab, max_missing=0.2)
    filled = impute(data, "half_min")
    assert not filled.isna().any().any()
    observed = data.notna()
    pd.testing.assert_frame_equal(filled[observed], data[observed].astype(float))
    for column in data.columns[:50]:
        missing = data[column].isna()
        expected = np.nanmin(data[column].to_numpy()) / 2
        np.testing.assert_allclose(filled.loc[missing, column], expected)


def test_qmdiab_pipeline_equals_its_steps(qmdiab):
    result = preprocess(qmdiab, max_missing=0.2, impute="half_min", log=True, base=2)
    manual = np.log2(impute(drop_sparse_features(qmdiab, 0.2), "half_min"))
    pd.testing.assert_frame_equal(result, manual)
    assert not result.isna().any().any()
    assert result.shape[0] == 356 and result.shape[1] < qmdiab.shape[1]
    standardised = preprocess(qmdiab, standardize=True)
    np.testing.assert_allclose(standardised.mean(), 0.0, atol=1e-10)
    np.testing.assert_allclose(standardised.std(ddof=1), 1.0, rtol=1e-10)


def test_sacurine_standardize(sacurine):
    result = standardize(sacurine)
    values = sacurine.to_numpy()
    expected = (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)
    np.testing.assert_allclose(result.to_numpy(), expected, rtol=1e-10, atol=1e-12)
    assert list(result.columns) == list(sacurine.columns)
    population = standardize(sacurine, ddof=0).to_numpy()
    np.testing.assert_allclose(population, (values - values.mean(0)) / values.std(0), rtol=1e-10)


def test_sacurine_is_already_logged_so_log_refuses_non_positive_values(sacurine):
    non_positive = sacurine.columns[(sacurine <= 0).any()]
    assert len(non_positive) > 0
    with pytest.raises(ValueError, match="values <= 0") as info:
        log_transform(sacurine, base=10)
    assert non_positive[0] in str(info.value)
    cleaned = preprocess(sacurine, log=False, impute=None, max_missing=None)
    pd.testing.assert_frame_equal(cleaned, sacurine.astype(float))


@pytest.mark.parametrize(("base", "reference"), [(2, np.log2), (10, np.log10), (np.e, np.log)])
def test_log_bases(small, base, reference):
    result = log_transform(small, base=base)
    np.testing.assert_allclose(result.to_numpy(), reference(small.to_numpy()), rtol=1e-12)
    assert result["b"].isna().sum() == 3


def test_log_pseudocount():
    frame = pd.DataFrame({"x": [0.0, 3.0]})
    np.testing.assert_allclose(log_transform(frame, pseudocount=1.0)["x"], [0.0, 2.0])
    with pytest.raises(ValueError, match=r"values <= 0.*\['x'\]"):
        log_transform(frame)
    with pytest.raises(ValueError, match="base must be positive"):
        log_transform(frame, base=1.0)
    with pytest.raises(ValueError, match="pseudocount must be"):
        log_transform(frame, pseudocount=-1.0)


def test_drop_sparse_features(small):
    assert list(drop_sparse_features(small, 0.25).columns) == ["a", "c"]
    assert list(drop_sparse_features(small, 0.75).columns) == ["a", "b", "c"]
    assert list(drop_sparse_features(small, 0.0).columns) == ["c"]
    with pytest.raises(ValueError, match="max_missing must lie in"):
        drop_sparse_features(small, 1.5)


@pytest.mark.parametrize(("method", "fill"), [("half_min", 0.5), ("min", 1.0), ("median", 4.0)])
def test_impute_methods(small, method, fill):
    result = impute(small[["a", "c"]], method)
    assert result.loc["s2", "a"] == fill
    pd.testing.assert_series_equal(result["c"], small["c"])


def test_impute_errors(small):
    with pytest.raises(ValueError, match=r"no observed value: \['d'\]"):
        impute(small.assign(d=np.nan))
    with pytest.raises(ValueError, match="unknown imputation method 'mean'"):
        impute(small, "mean")
    with pytest.raises(ValueError, match=r"half_min .* \['n'\] have a minimum <= 0"):
        impute(pd.DataFrame({"n": [-1.0, np.nan, 2.0]}))
    # a feature without gaps needs no fill, whatever its sign (e.g. data already on a log scale)
    complete = pd.DataFrame({"n": [-1.0, 0.5, 2.0], "p": [1.0, np.nan, 2.0]})
    pd.testing.assert_frame_equal(impute(complete), complete.fillna({"p": 0.5}))


def test_standardize_errors_and_missing_values(small):
    result = standardize(small[["a", "c"]])
    assert np.isnan(result.loc["s2", "a"])
    with pytest.raises(ValueError, match=r"zero or undefined standard deviation: \['k'\]"):
        standardize(pd.DataFrame({"k": [1.0, 1.0, 1.0], "v": [1.0, 2.0, 3.0]}))


def test_input_validation():
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['id'\]"):
        preprocess(pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="expected a pandas DataFrame"):
        impute(np.ones((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        standardize(pd.DataFrame())
    with pytest.raises(ValueError, match="duplicated labels"):
        standardize(pd.DataFrame(np.ones((2, 2)), columns=["x", "x"]))
    with pytest.raises(ValueError, match=r"infinite values"):
        standardize(pd.DataFrame({"x": [1.0, np.inf]}))


def test_labels_are_kept(small):
    result = preprocess(small, max_missing=0.5, impute="min", standardize=True)
    assert list(result.index) == list(small.index)
    assert list(result.columns) == ["a", "c"]
