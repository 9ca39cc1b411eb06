from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc.design import (
    INTERCEPT,
    align_rows,
    build_design,
    check_full_rank,
    response_matrix,
)


def build_x(source, *, frame=None, intercept=True, labels=None, n_rows=4):
    return build_design(
        source,
        name="X",
        frame=frame,
        frame_arg="data",
        intercept=intercept,
        labels=labels,
        row_kind="sample",
        n_rows=n_rows,
    )


@pytest.fixture
def samples():
    return pd.DataFrame(
        {"age": [30.0, 40.0, 50.0, 60.0], "sex": ["F", "M", "M", "F"]},
        index=pd.Index(["a", "b", "c", "d"], name="sample_id"),
    )


def test_array_design_with_and_without_intercept():
    design = build_x(np.arange(8.0).reshape(4, 2))
    assert list(design.columns) == [INTERCEPT, "x0", "x1"]
    np.testing.assert_array_equal(design.matrix[:, 0], 1.0)
    assert list(design.rows) == ["sample_0", "sample_1", "sample_2", "sample_3"]
    plain = build_x(np.arange(8.0).reshape(4, 2), intercept=False)
    assert list(plain.columns) == ["x0", "x1"]


def test_one_dimensional_array_is_a_column():
    design = build_x(np.arange(4.0))
    assert design.matrix.shape == (4, 2)


def test_frame_design_is_aligned_to_labels(samples):
    labels = pd.Index(["d", "c", "b", "a"])
    design = build_x(samples[["age"]], labels=labels)
    np.testing.assert_array_equal(design.matrix[:, 1], [60.0, 50.0, 40.0, 30.0])
    assert list(design.rows) == list(labels)
    assert list(design.frame().columns) == [INTERCEPT, "age"]


def test_frame_with_intercept_column_is_refused(samples):
    frame = samples[["age"]].assign(**{INTERCEPT: 1.0})
    with pytest.raises(ValueError, match="already has a column named"):
        build_x(frame)


def test_formula_treatment_coding_honours_the_base(samples):
    design = build_x("age + C(sex, contr.treatment('M'))", frame=samples)
    assert list(design.columns) == [INTERCEPT, "age", "C(sex, contr.treatment('M'))[T.F]"]
    np.testing.assert_array_equal(design.matrix[:, 2], [1.0, 0.0, 0.0, 1.0])
    assert design.spec is not None


def test_formula_transform_for_new_data(samples):
    design = build_x("age + C(sex, contr.treatment('M'))", frame=samples)
    new = pd.DataFrame({"age": [1.0], "sex": ["F"]}, index=["z"])
    matrix, rows = design.transform(new, "sample")
    np.testing.assert_array_equal(matrix, [[1.0, 1.0, 1.0]])
    assert list(rows) == ["z"]
    with pytest.raises(ValueError, match="pass a DataFrame"):
        design.transform(np.ones((1, 3)), "sample")


def test_transform_of_arrays_and_frames(samples):
    design = build_x(samples[["age"]])
    matrix, _ = design.transform(np.array([[5.0]]), "sample")
    np.testing.assert_array_equal(matrix, [[1.0, 5.0]])
    matrix, rows = design.transform(pd.DataFrame({"age": [7.0]}, index=["q"]), "sample")
    np.testing.assert_array_equal(matrix, [[1.0, 7.0]])
    assert list(rows) == ["q"]
    matrix, _ = design.transform(design.frame(), "sample")
    np.testing.assert_array_equal(matrix, design.matrix)


def test_label_mismatch_message(samples):
    with pytest.raises(ValueError, match=r"1 label\(s\) only in Y's samples.*\['e'\]"):
        build_x(samples[["age"]], labels=pd.Index(["a", "b", "c", "e"]))


def test_row_count_mismatch():
    with pytest.raises(ValueError, match="X has 4 rows but Y has 5 samples"):
        build_x(np.ones((4, 1)), n_rows=5)


def test_frame_for_non_formula_is_refused(samples):
    with pytest.raises(ValueError, match="data= is only used when X is a formula"):
        build_x(samples[["age"]], frame=samples)


def test_non_numeric_columns_are_named(samples):
    with pytest.raises(ValueError, match=r"non-numeric column\(s\) \['sex'\]"):
        build_x(samples)


def test_nullable_missing_values_are_refused(samples):
    frame = samples[["age"]].astype("Float64")
    frame.iloc[1, 0] = pd.NA
    with pytest.raises(ValueError, match="non-finite"):
        build_x(frame)


def test_full_rank_check_is_scale_free():
    rng = np.random.default_rng(1)
    tiny = rng.normal(size=(10, 3)) * np.array([1e-9, 1.0, 1e6])
    check_full_rank(tiny, pd.Index(["a", "b", "c"]), "X")
    collinear = np.column_stack([tiny, 3e-9 * tiny[:, 0] - 2.0 * tiny[:, 1]])
    with pytest.raises(ValueError, match=r"rank 3 < 4 columns"):
        check_full_rank(collinear, pd.Index(["a", "b", "c", "d"]), "X")


def test_response_matrix_labels():
    frame = pd.DataFrame(np.ones((2, 3)), index=["s1", "s2"], columns=["f1", "f2", "f3"])
    response = response_matrix(frame)
    assert list(response.samples) == ["s1", "s2"]
    assert list(response.features) == ["f1", "f2", "f3"]
    assert response_matrix(np.ones((2, 3))).features is None
    with pytest.raises(ValueError, match="Y must be 2-dimensional"):
        response_matrix(np.ones(3))


def test_align_rows_returns_same_frame_when_equal(samples):
    assert align_rows(samples, samples.index, target="t", source="s") is samples
    assert align_rows(samples, None, target="t", source="s") is samples
