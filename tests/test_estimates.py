import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Estimates, mlm, simulate


def test_from_fit_tidy_and_arrays_agree():
    study = simulate(40, 12, 3, random_seed=0)
    fit = mlm(study.Y, study.X, x_intercept=False)
    from_fit = Estimates.from_any(fit)
    assert from_fit.estimate.dims == ("covariate", "feature")
    np.testing.assert_array_equal(from_fit.estimate, fit.coef)
    from_tidy = Estimates.from_any(from_fit.to_frame().sample(frac=1, random_state=1))
    assert set(from_tidy.covariates) == set(from_fit.covariates)
    np.testing.assert_array_equal(
        from_tidy.se.sel(covariate=from_fit.covariates, feature=from_fit.features), from_fit.se
    )
    frames = (
        pd.DataFrame(fit.coef.values, index=fit.coef.covariate, columns=fit.coef.feature),
        pd.DataFrame(fit.se.values, index=fit.coef.covariate, columns=fit.coef.feature),
    )
    from_frames = Estimates.from_any(frames)
    assert from_frames.features.equals(from_fit.features)
    subset = Estimates.from_any(fit, covariates=["x2", "x0"])
    assert subset.covariates.tolist() == ["x2", "x0"]


def test_one_dimensional_arrays_are_one_covariate():
    est = Estimates.from_any({"estimate": [1.0, 2.0], "se": [0.5, 0.5]})
    assert est.estimate.shape == (1, 2)
    assert est.features.tolist() == ["feature_0", "feature_1"]


@pytest.mark.parametrize(
    ("b", "se", "message"),
    [
        ([1.0, 2.0], [0.5, 0.0], "strictly positive"),
        ([1.0, 2.0], [0.5, -1.0], "strictly positive"),
        ([1.0, np.nan], [0.5, 0.5], "NaN or inf"),
        ([1.0, np.inf], [0.5, 0.5], "NaN or inf"),  # an infinite se is a missing cell
        ([1.0, 2.0], [0.5, 0.5, 0.5], "shape"),
        ([], [], "empty"),
    ],
)
def test_bad_arrays(b, se, message):
    with pytest.raises(ValueError, match=message):
        Estimates.from_any((b, se))


def test_bad_tidy_frames_and_types():
    tidy = pd.DataFrame(
        {"covariate": ["a", "a"], "feature": ["f", "f"], "estimate": [1, 2], "se": [1, 1]}
    )
    with pytest.raises(ValueError, match="duplicated"):
        Estimates.from_any(tidy)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['se'\]"):
        Estimates.from_any(tidy.drop(columns="se"))
    # an absent (covariate, feature) row is a missing cell (docs/missing_values.md) ...
    incomplete = pd.DataFrame(
        {"covariate": ["a", "b"], "feature": ["f", "g"], "estimate": [1, 2], "se": [1, 1]}
    )
    assert Estimates.from_any(incomplete).missing.to_numpy().tolist() == [
        [False, True],
        [True, False],
    ]
    # ... but a covariate with no estimate at all is refused
    empty = incomplete.assign(estimate=[1.0, np.nan], se=[1.0, np.nan])
    with pytest.raises(ValueError, match="every cell missing"):
        Estimates.from_any(empty)
    with pytest.raises(ValueError, match="must be a stage-1 fit"):
        Estimates.from_any([1, 2, 3])
    with pytest.raises(ValueError, match="not among"):
        Estimates.from_any(([1.0], [1.0]), covariates=["age"])
    with pytest.raises(ValueError, match="duplicated labels"):
        Estimates.from_any(
            (pd.DataFrame([[1.0, 2.0]], columns=["f", "f"]), pd.DataFrame([[1.0, 1.0]]))
        )
