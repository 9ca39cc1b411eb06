import numpy as np
import pytest

from bayeshier_pymc import demo_study, simulate, train_test_split


def test_shapes_labels_and_determinism():
    a = simulate(30, 100, 4, random_seed=5)
    b = simulate(30, 100, 4, random_seed=5)
    assert a.X.shape == (30, 4) and a.Y.shape == (30, 100) and a.B.shape == (4, 100)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert not np.array_equal(a.Y, simulate(30, 100, 4, random_seed=6).Y)
    assert a.levels == ["subclass"]
    counts = a.annotations["subclass"].value_counts()
    assert counts.to_dict() == {
        "subclass_0": 55,
        "subclass_1": 25,
        "subclass_2": 15,
        "subclass_3": 5,
    }


def test_effects_follow_the_design():
    study = simulate(10, 20_000, 3, tau_w=0.08, tau_v=0.12, random_seed=1)
    B = study.B.to_numpy()
    subclass = study.annotations["subclass"].to_numpy()
    within = np.concatenate(
        [
            B[:, subclass == s] - B[:, subclass == s].mean(axis=1, keepdims=True)
            for s in set(subclass)
        ],
        axis=1,
    )
    # sd of 60,000 draws: relative standard error about 0.3%
    assert within.std() == pytest.approx(0.08, rel=0.02)
    residual = study.Y.to_numpy() - study.X.to_numpy() @ B
    assert residual.std() == pytest.approx(1.0, rel=0.02)


def test_superclasses_even_and_by_size():
    study = simulate(10, 120, 2, proportions=[1] * 6, n_superclasses=[2, 4], random_seed=0)
    pairs = study.annotations.drop_duplicates()
    assert pairs.groupby("superclass").size().to_dict() == {"superclass_0": 2, "superclass_1": 4}
    with pytest.raises(ValueError, match="sum to the 6 subclasses"):
        simulate(10, 120, 2, proportions=[1] * 6, n_superclasses=[2, 2])
    with pytest.raises(ValueError, match="between 1 and 4"):
        simulate(10, 120, 2, n_superclasses=5)


def test_train_test_split_partitions_rows():
    study = simulate(60, 20, 2, random_seed=0)
    train, test = train_test_split(study, 0.7, random_seed=3)
    assert len(train.X) == 42 and len(test.X) == 18
    assert set(train.X.index).isdisjoint(test.X.index)
    assert (train.Y.index == train.X.index).all()
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        train_test_split(study, 1.0)


def test_demo_study_tree_matches_generation():
    study = demo_study()
    generated = simulate(
        150,
        300,
        3,
        proportions=[0.14, 0.12, 0.07, 0.05, 0.1, 0.08, 0.06, 0.12, 0.05, 0.09, 0.07, 0.05],
        tau_u=0.15,
        tau_v=0.10,
        tau_w=0.05,
        n_superclasses=[4, 3, 3, 2],
        random_seed=2026,
    )
    np.testing.assert_array_equal(study.B, generated.B)
    pairs = set(
        zip(study.annotations["SUPER_PATHWAY"], generated.annotations["superclass"], strict=True)
    )
    assert len(pairs) == 4  # a one-to-one relabelling of the generating superclasses
    sizes = study.annotations.drop_duplicates().groupby("SUPER_PATHWAY").size()
    assert sizes.to_dict() == {"Lipid": 4, "Amino acid": 3, "Xenobiotics": 3, "Nucleotide": 2}
