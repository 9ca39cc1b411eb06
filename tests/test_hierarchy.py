import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Hierarchy


@pytest.fixture
def annotations():
    return pd.DataFrame(
        {
            "sub": ["b", "a", "a", "c", "c", "d"],
            "super": ["X", "X", "X", "Y", "Y", "Y"],
        },
        index=[f"f{j}" for j in range(6)],
    )


def test_from_frame_builds_integer_maps_with_labels(annotations):
    tree = Hierarchy.from_frame(annotations, ["sub", "super"])
    assert tree.levels == ("sub", "super")
    assert tree.groups[0].tolist() == ["a", "b", "c", "d"]
    assert tree.groups[1].tolist() == ["X", "Y"]
    np.testing.assert_array_equal(tree.parents[0], [1, 0, 0, 2, 2, 3])
    np.testing.assert_array_equal(tree.parents[1], [0, 0, 1, 1])
    np.testing.assert_array_equal(tree.membership("super"), [0, 0, 0, 1, 1, 1])
    pd.testing.assert_frame_equal(tree.to_frame(), annotations, check_names=False)
    assert tree.group_sizes("sub").to_dict() == {"a": 2, "b": 1, "c": 2, "d": 1}


def test_single_level_name_and_singleton_groups(annotations):
    tree = Hierarchy.from_frame(annotations, "sub")
    assert tree.depth == 1 and tree.n_groups == (4,)


def test_broken_nesting_names_the_offending_labels(annotations):
    annotations.loc["f0", "sub"] = "d"
    with pytest.raises(ValueError, match=r"not nested.*'d' in \['X', 'Y'\]"):
        Hierarchy.from_frame(annotations, ["sub", "super"])


def test_missing_annotation_raises_or_forms_unassigned_groups(annotations):
    annotations.loc["f1", "sub"] = np.nan
    annotations.loc["f5", ["sub", "super"]] = [None, ""]
    with pytest.raises(ValueError, match=r"no 'super' annotation.*f5.*missing='unassigned'"):
        Hierarchy.from_frame(annotations, ["sub", "super"])
    tree = Hierarchy.from_frame(annotations, ["sub", "super"], missing="unassigned")
    frame = tree.to_frame()
    assert frame.loc["f1", "sub"] == "unassigned (X)"
    assert frame.loc["f5"].tolist() == ["unassigned", "unassigned"]


def test_drop_unannotated_leaves_out_features_annotated_at_no_level(annotations, caplog):
    annotations.loc["f1", "sub"] = np.nan  # annotated at one level: kept, then `missing` applies
    annotations.loc["f5", ["sub", "super"]] = [None, " "]
    with caplog.at_level("INFO", logger="bayeshier_pymc"):
        tree = Hierarchy.from_frame(
            annotations, ["sub", "super"], missing="unassigned", drop_unannotated=True
        )
    assert tree.features.tolist() == ["f0", "f1", "f2", "f3", "f4"]
    assert tree.to_frame().loc["f1", "sub"] == "unassigned (X)"
    assert "left out 1 of 6 feature(s) without annotation: ['f5']" in caplog.text
    with pytest.raises(ValueError, match=r"no 'sub' annotation.*\['f1'\]"):
        Hierarchy.from_frame(annotations, ["sub", "super"], drop_unannotated=True)
    annotations.loc[:, ["sub", "super"]] = np.nan
    with pytest.raises(ValueError, match="no feature has an annotation"):
        Hierarchy.from_frame(annotations, ["sub", "super"], drop_unannotated=True)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: a.set_axis(["f0"] * 6), "duplicated labels"),
        (lambda a: a.iloc[:0], "no rows"),
        (lambda a: a.to_numpy(), "must be a pandas DataFrame"),
    ],
)
def test_bad_tables(annotations, make, message):
    with pytest.raises(ValueError, match=message):
        Hierarchy.from_frame(make(annotations), ["sub"])


def test_unknown_or_repeated_levels(annotations):
    with pytest.raises(ValueError, match=r"\['nope'\] are not columns"):
        Hierarchy.from_frame(annotations, ["sub", "nope"])
    with pytest.raises(ValueError, match="repeated"):
        Hierarchy.from_frame(annotations, ["sub", "sub"])


def test_align_reorders_drops_extra_and_names_missing(annotations):
    tree = Hierarchy.from_frame(annotations, ["sub", "super"])
    aligned = tree.align(["f4", "f3", "f5"])
    assert aligned.features.tolist() == ["f4", "f3", "f5"]
    assert aligned.groups[0].tolist() == ["c", "d"]
    assert aligned.groups[1].tolist() == ["Y"]
    np.testing.assert_array_equal(aligned.parents[0], [0, 0, 1])
    with pytest.raises(ValueError, match=r"2 feature\(s\) have no annotation.*'zz'"):
        tree.align(["f1", "zz", "yy"])


def test_truncate(annotations):
    tree = Hierarchy.from_frame(annotations, ["sub", "super"])
    assert tree.truncate(1).levels == ("sub",)
    assert tree.truncate(0).depth == 0
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        tree.truncate(3)


def test_describe_and_html_summary():
    annotations = pd.DataFrame(
        {"sub": ["a", "a", "a", "b", "c", "c"], "super": ["X", "X", "X", "X", "Y", "Y"]},
        index=[f"f{j}" for j in range(6)],
    )
    tree = Hierarchy.from_frame(annotations, ["sub", "super"])
    table = tree.describe(largest=2)
    assert table.index.tolist() == ["sub", "super"]
    assert table.loc["sub", "groups"] == 3
    assert (table.loc["sub", "min_size"], table.loc["sub", "max_size"]) == (1, 3)
    assert table.loc["sub", "largest_groups"] == "a (3), c (2)"
    assert table.loc["super", "largest_groups"] == "X (4), Y (2)"
    rendered = tree._repr_html_()
    assert "Hierarchy(6 features" in rendered and "<table" in rendered
