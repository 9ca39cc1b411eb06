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
    tau_w2, tau_v2, tau_u2 = (float((tau.isel(level=i) ** 2).mean()) for i in range(3))
    beta = post["subclass_mean"].sel(subclass=sub0)
    alpha = post["superclass_mean"].sel(superclass=super0)
    n = DRAWS * CHAINS

    def close(got: float, want: float, sd: float) -> None:
        assert abs(got - want) < 4.5 * sd, (got, want, sd)

    # known group: θ = β_h + τ_w z
    x = theta.sel(feature="known_a")
    close(float(x.mean()), float(beta.mean()), np.sqrt(float(x.var()) / n))
    close(float(x.var()), float(beta.var()) + tau_w2, float(x.var()) * np.sqrt(2 / n) * 3)
    # new subclass under a known superclass: both members share the new subclass mean
    a, b, other = (theta.sel(feature=f) for f in ("newsub_a", "newsub_b", "newsub_other"))
    close(float(a.mean()), float(alpha.mean()), np.sqrt(float(a.var()) / n) * 3)
    shared = float(alpha.var()) + tau_v2
    cov_same = float(np.cov(a, b)[0, 1])
    cov_other = float(np.cov(a, other)[0, 1])
    close(cov_same, shared, float(a.var()) * np.sqrt(2 / n) * 3)
    close(cov_other, float(alpha.var()), float(a.var()) * np.sqrt(2 / n) * 3)
    assert cov_same > cov_other
    # a feature without any known group: around θ0 with every scale
    orphan = theta.sel(feature="orphan")
    want = float(post["mu"].var()) + tau_u2 + tau_v2 + tau_w2
    close(float(orphan.var()), want, want * np.sqrt(2 / n) * 3)


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
    with pytest.raises(ValueError, match="no rows"):
        predict_new(idata, _annotations({}))
