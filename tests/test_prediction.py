"""Posterior draws of θ for new metabolites, placed by annotation (bambi's new-group rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc import Hierarchy, ShrinkageModel, predict_new
from bayeshier_pymc.simulate import simulate

DRAWS, CHAINS = 1000, 4


@pytest.fixture(scope="module")
def fitted():
    sim = simulate(n=60, m=60, p=1, proportions=[0.25] * 4, n_superclasses=2, random_seed=5)
    tree = Hierarchy.from_frame(sim.annotations, levels=sim.levels)
    fit_features = sim.annotations.index[:-3]  # three features are kept back as "new"
    b = sim.B.sel(feature=fit_features).to_pandas() + 0.1
    se = b * 0 + 0.2
    idata = ShrinkageModel({"estimate": b, "se": se}, tree.align(fit_features)).sample(
        "gibbs", draws=DRAWS, chains=CHAINS, random_seed=1, progressbar=False
    )
    return idata, tree


def _annotations(rows: dict[str, tuple[object, object]]) -> pd.DataFrame:
    return pd.DataFrame.from_dict(rows, orient="index", columns=["subclass", "superclass"])


def test_placement_and_moments_follow_the_tree(fitted):
    idata, tree = fitted
    sub0, super0 = tree.groups[0][0], tree.groups[1][tree.parents[1][0]]
    new = _annotations(
        {
            "known_a": (sub0, super0),
            "known_b": (sub0, super0),
            "newsub_a": ("brand-new", super0),
            "newsub_b": ("brand-new", super0),
            "newsub_other": ("another-new", super0),
            "orphan": (None, None),
        }
    )
    result = predict_new(idata, new, random_seed=3)
    theta = result.predictions["theta"].isel(covariate=0).stack(s=("chain", "draw"))
    placement = result.predictions_constant_data["placement"].to_series()
    assert placement["known_a"] == "in a known group"
    assert placement["newsub_a"] == "new group under a known parent"
    assert placement["orphan"] == "new at every level"
    assert result.predictions_constant_data["known_level"].sel(feature="newsub_a") == "superclass"
    post = idata.posterior.isel(covariate=0).stack(s=("chain", "draw"))
    tau = post["tau"]
    beta = post["subclass_mean"].sel(subclass=sub0)
    alpha = post["superclass_mean"].sel(superclass=super0)
    n = DRAWS * CHAINS

    def standard_normal_like(values: np.ndarray, scale_sq: np.ndarray) -> None:
        """values / scale are iid N(0, 1) over the draws: mean and variance within 4.5 MC sd."""
        z = np.asarray(values) / np.sqrt(np.asarray(scale_sq))
        assert abs(z.mean()) < 4.5 / np.sqrt(n), z.mean()
        assert abs(z.var() - 1.0) < 4.5 * np.sqrt(2 / n), z.var()

    tau_sq = [np.asarray(tau.isel(level=i) ** 2) for i in range(3)]
    # known group: θ = β_h + τ_w z, z fresh in every draw
    standard_normal_like(theta.sel(feature="known_a") - beta, tau_sq[0])
    # new subclass under a known superclass: its mean α + τ_v z' is shared by its members,
    # so the difference of two members is τ_w (z_a − z_b) and their mean ~ α + N(0, τ_v² + τ_w²/2)
    a, b, other = (theta.sel(feature=f) for f in ("newsub_a", "newsub_b", "newsub_other"))
    standard_normal_like(a - b, 2 * tau_sq[0])
    standard_normal_like((a + b) / 2 - alpha, tau_sq[1] + tau_sq[0] / 2)
    # members of two different new subclasses share only α: a − other ~ N(0, 2 (τ_v² + τ_w²))
    standard_normal_like(a - other, 2 * (tau_sq[1] + tau_sq[0]))
    # a feature without any known group: around θ0 with every scale
    standard_normal_like(
        theta.sel(feature="orphan") - post["mu"], tau_sq[0] + tau_sq[1] + tau_sq[2]
    )


def test_same_seed_same_draws_and_labels(fitted):
    idata, tree = fitted
    new = _annotations({"x": (tree.groups[0][1], tree.groups[1][tree.parents[1][1]])})
    first = predict_new(idata, new, random_seed=9)
    second = predict_new(idata, new, random_seed=9)
    np.testing.assert_array_equal(first.predictions["theta"], second.predictions["theta"])
    assert first.predictions["theta"].dims == ("chain", "draw", "covariate", "feature")
    assert first.predictions["feature"].to_numpy().tolist() == ["x"]


def test_the_model_method_checks_its_fit(fitted):
    idata, tree = fitted
    new = _annotations({"x": (tree.groups[0][1], tree.groups[1][tree.parents[1][1]])})
    model = ShrinkageModel.from_idata(idata)
    via_model = model.predict_new(idata, new, random_seed=2)
    np.testing.assert_array_equal(
        via_model.predictions["theta"], predict_new(idata, new, random_seed=2).predictions["theta"]
    )
    other = ShrinkageModel.from_problem(model.problem)
    other.problem = ShrinkageModel(
        {
            "estimate": idata.observed_data["b"].to_pandas(),
            "se": idata.constant_data["se"].to_pandas(),
        },
        tree.align(model.problem.features),
        depth=1,
    ).problem
    with pytest.raises(ValueError, match="not a fit of this model"):
        other.predict_new(idata, new)


def test_bad_annotations_are_named(fitted):
    idata, tree = fitted
    estimated = tree.features[0]
    with pytest.raises(ValueError, match="were estimated in the fit"):
        predict_new(idata, _annotations({estimated: ("a", "b")}))
    with pytest.raises(ValueError, match="lacks the fit's level column"):
        predict_new(idata, pd.DataFrame({"subclass": ["x"]}, index=["new"]))
    # a known subclass placed under the wrong superclass
    sub0 = tree.groups[0][0]
    wrong = next(g for g in tree.groups[1] if g != tree.groups[1][tree.parents[1][0]])
    with pytest.raises(ValueError, match="under another parent"):
        predict_new(idata, _annotations({"new": (sub0, wrong)}))
    # a known subclass with its superclass left out takes the fit's superclass
    filled = predict_new(idata, _annotations({"new": (sub0, None)}), random_seed=1)
    assert filled.predictions_constant_data["placement"].item() == "in a known group"
    with pytest.raises(ValueError, match="no rows"):
        predict_new(idata, _annotations({}))
