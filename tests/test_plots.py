"""Plots rendered headless at 20 and 2000 features and checked for what they show."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.quiver import Quiver
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.inference_data import build_inference_data, problem_from_idata
from bayeshier_pymc.model import empirical_bayes_scales
from bayeshier_pymc.plots import (
    plot_compare,
    plot_forest_by_group,
    plot_group_effects,
    plot_shrinkage,
    plot_stage1_vs_shrunken,
    plot_tau,
    plot_tau_prior_posterior,
    plot_volcano,
)
from bayeshier_pymc.results import (
    coefficient_table,
    format_rate,
    group_effects,
    lfsr,
    scale_summary,
)

SIZES = {20: (4, 2), 2000: (24, 6)}  # features: (subclasses, superclasses)


def exact_fit(m, depth=None, seed=0):
    """Posterior-like draws without MCMC: τ near its posterior mode, the rest exact given τ."""
    n_sub, n_sup = SIZES[m]
    proportions = np.random.default_rng(0).dirichlet(np.full(n_sub, 2.0))
    study = simulate(60, m, 2, proportions=proportions, n_superclasses=n_sup, tau_u=0.3,
                     tau_v=0.15, tau_w=0.1, random_seed=7)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    model = ShrinkageModel(fit, tree, depth=depth)
    tau_hat = empirical_bayes_scales(model.estimates, model.tree, model.priors)
    rng = np.random.default_rng(seed)
    tau = tau_hat * np.exp(rng.normal(0.0, 0.15, size=(2, 200, *tau_hat.shape)))
    posterior = model.draw_given_scales(tau, rng)
    return build_inference_data(posterior, model.problem, sampler="exact")


@pytest.fixture(scope="module", params=[20, 2000], ids=["m20", "m2000"])
def idata(request):
    return exact_fit(request.param)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _posterior_mean(idata, name, covariate="x0"):
    """In the fit's own units (residual-SD units by default)."""
    return idata.posterior[name].sel(covariate=covariate).mean(("chain", "draw")).to_numpy()


def _in_y_units(idata, values):
    """Per-feature ``values`` of a fit in residual-SD units, multiplied into Y's units."""
    return values * idata.constant_data["residual_sd"].to_numpy()


def test_shrinkage_arrows_end_at_the_posterior_means(idata, tmp_path):
    ax = plot_shrinkage(idata)
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    m = idata.posterior.sizes["feature"]
    assert m == quiver.N
    b = idata.observed_data["b"].sel(covariate="x0").to_numpy()
    np.testing.assert_allclose(quiver.X, b)
    np.testing.assert_allclose(quiver.X + quiver.U, _posterior_mean(idata, "theta"))
    diamonds = [c for c in ax.collections if isinstance(c, PathCollection)][-1]
    n_groups = idata.posterior.sizes["subclass"]
    np.testing.assert_allclose(
        np.sort(diamonds.get_offsets()[:, 0]), np.sort(_posterior_mean(idata, "subclass_mean"))
    )
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == n_groups and all("(n=" in label for label in labels)
    assert sum(int(label.split("(n=")[1][:-1]) for label in labels) == m
    assert ax.get_xlabel() == "effect of x0 (residual-SD units)"  # the fit's own units
    assert f"Shrinkage of {m} features" in ax.get_title()
    ax.figure.savefig(tmp_path / "shrinkage.png")
    assert (tmp_path / "shrinkage.png").stat().st_size > 10_000


def test_shrinkage_by_superclass_on_given_axes(idata):
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_shrinkage(idata, level="superclass", covariate="x1", ax=right) is right
    assert plt.get_fignums() == [fig.number]
    assert len(right.get_yticklabels()) == idata.posterior.sizes["superclass"]
    assert right.get_xlabel() == "effect of x1 (residual-SD units)"
    assert not left.has_data()
    with pytest.raises(ValueError, match="unknown level"):
        plot_shrinkage(idata, level="pathway", ax=left)
    with pytest.raises(ValueError, match="unknown covariate"):
        plot_shrinkage(idata, covariate="age", ax=left)


def test_shrinkage_without_levels_shows_one_band():
    ax = plot_shrinkage(exact_fit(20, depth=0))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["all features (n=20)"]


def test_forest_shows_the_top_ranked_features_grouped(idata):
    m = idata.posterior.sizes["feature"]
    ax = plot_forest_by_group(idata, top_k=40)
    shown = _labels(ax)
    assert len(shown) == min(40, m)
    values = lfsr(idata.posterior["theta"].sel(covariate="x0")).to_series()
    hidden = values.drop(shown)
    if len(hidden):
        assert values[shown].max() <= hidden.min()
    group_of = dict(
        zip(
            idata.posterior["feature"].to_numpy(),
            idata.posterior["subclass"].to_numpy()[idata.constant_data["subclass_index"]],
            strict=True,
        )
    )
    group_texts = {t.get_text() for t in ax.texts}
    assert {group_of[f] for f in shown} == group_texts
    # rows of one group are contiguous
    runs = [group_of[f] for f in shown]
    assert len(set(runs)) == sum(1 for a, b in zip(runs, [None, *runs[:-1]], strict=True) if a != b)
    if m > 40:
        assert f"page 1 of {-(-m // 40)}" in ax.get_title()


def _labels(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def test_forest_pages_do_not_overlap():
    idata = exact_fit(2000)
    first = _labels(plot_forest_by_group(idata, top_k=30, sort_by="abs_mean"))
    second = _labels(plot_forest_by_group(idata, top_k=30, page=1, sort_by="abs_mean"))
    assert len(first) == len(second) == 30 and set(first).isdisjoint(second)
    size = np.abs(_in_y_units(idata, _posterior_mean(idata, "theta")))  # the forest's units
    index = {f: j for j, f in enumerate(idata.posterior["feature"].to_numpy())}
    assert min(size[index[f]] for f in first) >= max(size[index[f]] for f in second)
    with pytest.raises(ValueError, match="page 67 is outside"):
        plot_forest_by_group(idata, top_k=30, page=67)
    with pytest.raises(ValueError, match="sort_by"):
        plot_forest_by_group(idata, sort_by="pvalue")


def test_volcano_has_one_point_per_feature(idata):
    ax = plot_volcano(idata, n_labels=5)
    m = idata.posterior.sizes["feature"]
    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert points == m
    n_signed = int((lfsr(idata.posterior["theta"].sel(covariate="x0")) < 0.05).sum())
    assert ax.get_title() == f"{n_signed} of {m} features with lfsr < 0.05"
    assert len(ax.texts) == min(5, n_signed)
    assert ax.get_ylabel() == "−log10 lfsr"
    # the reporting threshold is drawn
    assert any(np.allclose(line.get_ydata(), -np.log10(0.05)) for line in ax.get_lines())


def test_tau_intervals_match_the_scale_summary(idata):
    ax = plot_tau(idata, hdi_prob=0.9)
    table = scale_summary(idata, 0.9)
    segments = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(segments) == 2  # one per covariate
    lows = np.sort(np.concatenate([[s[0, 0] for s in c.get_segments()] for c in segments]))
    np.testing.assert_allclose(lows, np.sort(table["hdi_lower"]))
    labels = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
    assert labels == ["feature", "subclass", "superclass"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["x0", "x1"]
    with pytest.raises(ValueError, match="unknown covariates"):
        plot_tau(idata, covariates=["age"])


def test_tau_prior_posterior_overlays_each_covariates_prior_and_the_shares(idata, tmp_path):
    axes = plot_tau_prior_posterior(idata, bins=30)
    levels = idata.posterior["level"].to_numpy().tolist()
    assert axes.shape == (2, len(levels) + 1)
    scales = problem_from_idata(idata).priors.tau_scale
    assert scales[0, 0] != scales[1, 0]  # the covariates' priors differ: the test can tell
    for row, covariate in enumerate(["x0", "x1"]):
        tau = idata.posterior["tau"].sel(covariate=covariate)
        for column, level in enumerate(levels):
            panel = axes[row, column]
            (prior,) = panel.get_lines()
            x, density = prior.get_data()
            np.testing.assert_allclose(density, stats.halfcauchy(scale=scales[row, column]).pdf(x))
            draws = tau.sel(level=level).to_numpy().ravel()
            area = sum(bar.get_height() * bar.get_width() for bar in panel.patches)
            shown = np.mean(draws <= panel.get_xlim()[1])
            assert area == pytest.approx(shown, rel=1e-9) and len(panel.patches) == 30
        shares = (tau**2 / (tau**2).sum("level")).mean(("chain", "draw"))
        bars = axes[row, -1].patches
        widths = [bar.get_width() for bar in sorted(bars, key=lambda bar: -bar.get_y())]
        np.testing.assert_allclose(widths, shares.sel(level=levels).to_numpy())
        assert sum(widths) == pytest.approx(1.0)
    axes[0, 0].figure.savefig(tmp_path / "tau_prior.png")
    assert (tmp_path / "tau_prior.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="unknown covariates"):
        plot_tau_prior_posterior(idata, covariates=["age"])


def test_compare_plot_names_the_depths_and_the_recommendation():
    fits = {depth: exact_fit(20, depth=depth) for depth in (0, 1, 2)}
    comparison = compare_fits(fits)
    ax = plot_compare(comparison)
    labels = {t.get_text(): t for t in ax.get_yticklabels()}
    assert {"0: global mean", "1: subclass", "2: subclass within superclass"} <= set(labels)
    recommended = next(t for k, t in labels.items() if k.startswith(f"{comparison.recommended}:"))
    assert recommended.get_fontweight() == "bold"
    assert f"recommended: depth {comparison.recommended}" in ax.get_title()


def _study_fit(m):
    """The stage-1 fit and hierarchy behind :func:`exact_fit`."""
    n_sub, n_sup = SIZES[m]
    proportions = np.random.default_rng(0).dirichlet(np.full(n_sub, 2.0))
    study = simulate(60, m, 2, proportions=proportions, n_superclasses=n_sup, tau_u=0.3,
                     tau_v=0.15, tau_w=0.1, random_seed=7)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    return fit, Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])


def _names(idata):
    """Names for every other feature: the rest keep their ids."""
    return pd.Series({f: f"name {f[-3:]}" for f in idata.posterior["feature"].to_numpy()[::2]})


def test_compare_plot_zooms_on_the_decision_and_shows_bad_pareto_k():
    fit, tree = _study_fit(20)
    fits = {depth: exact_fit(20, depth=depth) for depth in (0, 1, 2)}
    fits["none"] = ShrinkageModel(fit, tree, depth="none").sample(
        "gibbs", draws=100, chains=2, random_seed=1, progressbar=False
    )
    comparison = compare_fits(fits)
    comparison.pareto_k.loc[2, "n_bad"] += 3  # as if PSIS failed at three points of depth 2
    ax = plot_compare(comparison)
    table = comparison.table
    delta_none = -table.loc["none", "elpd_diff"]
    left, right = ax.get_xlim()
    assert delta_none < left < 0 < right  # no pooling is off the axis ...
    (note,) = [t for t in ax.texts if t.get_text().startswith(f"Δ {delta_none:.1f}")]
    assert "off axis" in note.get_text()  # ... and written out
    close = [i for i in table.index if comparison.rule.close_enough(table.loc[i])]
    for name in close:  # every close-enough model is on the axis, at its Δ ± dse
        assert left < -table.loc[name, "elpd_diff"] - table.loc[name, "dse"]
    points = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() == "o")
    on_axis = [-table.loc[i, "elpd_diff"] for i in table.index if -table.loc[i, "elpd_diff"] > left]
    np.testing.assert_allclose(points, sorted(on_axis))
    counts = comparison.pareto_k["n_bad"] + comparison.pareto_k["n_very_bad"]
    column = {t.get_text().split(" · ")[0]: t for t in ax.texts if " · " in t.get_text()}
    for depth, n_bad in counts.items():
        text = column[
            f"{table.loc[str(depth), 'elpd_loo']:.1f} ± {table.loc[str(depth), 'se']:.1f}"
        ]
        assert text.get_text().endswith(f" · {n_bad}")
        assert (text.get_color() == "black") == (n_bad == 0)
    assert counts[2] >= 3


def test_labels_name_the_features_of_forest_volcano_and_shrinkage():
    idata = exact_fit(20)
    names = _names(idata)
    shown = _labels(plot_forest_by_group(idata, labels=names))
    ids = idata.posterior["feature"].to_numpy()
    assert sorted(shown) == sorted(names.reindex(ids).fillna(pd.Series(ids, ids)).tolist())
    volcano = plot_volcano(idata, labels=names.to_dict(), n_labels=20)
    named = {t.get_text() for t in volcano.texts}
    assert named and named <= set(names) | set(ids[1::2])
    assert named & set(names)
    shrinkage = plot_shrinkage(idata, labels=names, n_labels=20)
    assert {t.get_text() for t in shrinkage.texts} == set(names) | set(ids[1::2])
    with pytest.raises(ValueError, match="name none of the fit's features"):
        plot_volcano(idata, labels={"M00584": "mannose"})
    with pytest.raises(ValueError, match="labels must map feature ids"):
        plot_forest_by_group(idata, labels="name")


def test_shrinkage_targets_are_the_finest_groups_and_rows_never_overlap():
    idata = exact_fit(2000)
    ax = plot_shrinkage(idata, level="superclass", n_labels=0)
    (quiver,) = [c for c in ax.collections if isinstance(c, Quiver)]
    diamonds = [c for c in ax.collections if isinstance(c, PathCollection)][-1]
    # superclass bands, but each feature shrinks toward its subclass: one diamond per subclass
    np.testing.assert_allclose(
        np.sort(diamonds.get_offsets()[:, 0]), np.sort(_posterior_mean(idata, "subclass_mean"))
    )
    np.testing.assert_array_equal(quiver.V, 0.0)  # one row per feature, arrows horizontal
    assert len(np.unique(quiver.Y)) == quiver.N
    codes = idata.constant_data["superclass_index"].to_numpy()[
        idata.constant_data["subclass_index"].to_numpy()
    ]
    ticks = ax.get_yticks()
    for band in range(len(ticks)):  # the rows of a band lie around its tick, apart from others
        ys = quiver.Y[codes == np.argsort(_posterior_mean(idata, "superclass_mean"))[band]]
        others = np.delete(ticks, band)
        assert np.all(np.abs(ys - ticks[band])[:, None] < np.abs(ys[:, None] - others))
    one = plot_shrinkage(idata, groups=["superclass_2"], level="superclass", n_labels=0)
    assert [t.get_text() for t in one.get_yticklabels()] == [
        f"superclass_2 (n={int((codes == 2).sum())})"
    ]
    with pytest.raises(ValueError, match="unknown groups"):
        plot_shrinkage(idata, groups=["Lipid"])


def test_group_effect_forest_nests_groups_under_their_parent():
    idata = exact_fit(20)
    ax = plot_group_effects(idata, hdi_prob=0.9)
    table = group_effects(idata, "subclass", 0.9).query("covariate == 'x0'").set_index("subclass")
    parents = group_effects(idata, "superclass", 0.9).query("covariate == 'x0'")
    parent_of = idata.posterior["superclass"].to_numpy()[
        idata.constant_data["superclass_index"].to_numpy()
    ]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == len(table) + len(parents)
    current = None
    for tick, label in zip(ax.get_yticklabels(), labels, strict=True):
        if not label.startswith(" "):
            current = label
            assert tick.get_fontweight() == "bold" and label in set(parents["superclass"])
        else:
            child = label.strip()
            assert parent_of[list(table.index).index(child)] == current
    means = sorted(
        line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() in ("o", "s")
    )
    np.testing.assert_allclose(means, sorted([*table["mean"], *parents["mean"]]))
    n_draws = 400
    column = [t.get_text() for t in ax.texts][1:]
    expected = [
        f"{n:<4d} {format_rate(rate, n_draws)}"
        for n, rate in zip(table["n_features"], table["lfsr"], strict=True)
    ]
    assert set(expected) <= set(column) and not any(t.endswith(" 0") for t in column)
    with pytest.raises(ValueError, match="no annotation levels"):
        plot_group_effects(exact_fit(20, depth=0))


def test_stage1_vs_shrunken_places_every_feature_and_counts_both_lists():
    idata = exact_fit(20)
    fit, _ = _study_fit(20)
    ax = plot_stage1_vs_shrunken(idata, fit=fit)
    b = fit.coef.sel(covariate="x0").to_numpy()  # both axes in Y's units
    np.testing.assert_allclose(b, _in_y_units(idata, idata.observed_data["b"].sel(covariate="x0")))
    points = np.concatenate(
        [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)][:3]
    )
    order = np.lexsort((points[:, 1], points[:, 0]))
    expected = np.column_stack([b, _in_y_units(idata, _posterior_mean(idata, "theta"))])
    np.testing.assert_allclose(points[order], expected[np.lexsort((expected[:, 1], b))])
    stage1 = fit.to_frame().query("covariate == 'x0'")["p_adj"].to_numpy() < 0.05
    table = coefficient_table(idata).query("covariate == 'x0'")
    stage2 = table["called"].to_numpy()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"both lists: {int((stage1 & stage2).sum())}" in legend
    assert f"stage 1 only (BH < 0.05): {int((stage1 & ~stage2).sum())}" in legend
    assert f"neither: {int((~stage1 & ~stage2).sum())}" in legend
    rings = [c for c in ax.collections if isinstance(c, PathCollection)][3]
    assert len(rings.get_offsets()) == stage1.sum()
    # without the fit, normal tests of b / s give the stage-1 list
    assert plot_stage1_vs_shrunken(idata, covariate="x1").get_xlabel() == "stage-1 estimate b̂ (x1)"


@pytest.mark.parametrize("name", ["(Intercept)", "Intercept"])
def test_the_default_covariate_is_never_an_intercept(name):
    import arviz as az
    import xarray as xr

    from bayeshier_pymc.plots._common import pick_covariate

    theta = xr.DataArray(np.zeros((1, 1, 2)), dims=("chain", "draw", "covariate"))
    idata = az.InferenceData(
        posterior=xr.Dataset({"theta": theta}, coords={"covariate": [name, "age"]})
    )
    assert pick_covariate(idata, None) == "age"
