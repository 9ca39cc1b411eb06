"""Shrinkage plot: every stage-1 estimate b̂_j moved to its posterior mean, one band per group."""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.plots._common import (
    FeatureLabels,
    Groups,
    feature_groups,
    feature_names,
    new_axes,
    pick_covariate,
    posterior_mean,
    text_color,
    units_suffix,
)
from bayeshier_pymc.results import theta_moments

__all__ = ["plot_shrinkage"]

BAND_FILL = 0.84
"""Share of a band's height that its rows fill (the rest separates the bands)."""
INCHES_PER_UNIT = 0.55
"""Figure height per unit of band height (a band of a few features is one unit)."""
MAX_FIGURE_HEIGHT = 24.0
"""Tallest default figure, in inches; pass ``ax=`` or ``groups=`` for more room."""


def band_height(n_features: int) -> float:
    """Height of a band of ``n_features`` rows: 1 up to 9 features, then ∝ √n, at most 4."""
    return float(np.clip(np.sqrt(n_features) / 3.0, 1.0, 4.0))


def plot_shrinkage(
    idata: az.InferenceData,
    *,
    covariate: object | None = None,
    level: str | None = None,
    groups: Sequence[object] | None = None,
    labels: FeatureLabels | None = None,
    n_labels: int = 5,
    ax: Axes | None = None,
) -> Axes:
    """Draw the shrinkage of every feature as an arrow from b̂_j to its posterior mean.

    One horizontal band per group of ``level``, bands ordered by the group's posterior mean.
    Inside a band every feature has its own row (a strip layout), so arrows never overlap:
    a dot at the stage-1 estimate b̂_j, an arrow to the posterior mean of θ_j, coloured by
    group. Rows are sorted by the finest group (the group each θ_j is shrunk toward) and then
    by b̂_j, so a band of 150 features reads as two curves, the spread-out estimates and the
    pulled-in posterior means. The posterior mean of each finest group, the target of its
    features' shrinkage, is a black vertical segment across that group's rows with a diamond
    at its middle; where the bands are coarser groups, their own posterior mean is a dotted
    segment across the band. The dashed line is the global mean θ0. Bands grow with √n;
    alpha falls with the band's size. Everything is in the fit's own units (for a fit in
    residual-SD units, the standardized estimates and effects, as the axis says), where the
    group means are what θ shrinks toward.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The annotation level whose groups form the bands (default: the finest of the fit);
        fits without levels show one band.
    groups
        Show only these groups of ``level`` (e.g. ``["Lipid"]``: one large group at full
        height); default every group.
    labels
        Feature id → name (a dict, or a Series such as ``annotations["name"]``) for the
        named features.
    n_labels
        How many features to name at their arrow heads: those moved farthest by the
        shrinkage, the largest absolute b̂_j − E[θ_j] first.
    ax
        Axes to draw on (default: a new figure sized to the bands).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if n_labels < 0:
        raise ValueError(f"n_labels must be at least 0, got {n_labels}.")
    covariate = pick_covariate(idata, covariate)
    bands = feature_groups(idata, level)
    finest = feature_groups(idata, None)
    problem = problem_from_idata(idata)
    estimate = problem.b[problem.covariates.get_loc(covariate)]
    shrunk = theta_moments(idata, covariate, in_y_units=False)["mean"].to_numpy()
    names = feature_names(idata, labels)
    finest_means = _group_means(idata, finest, covariate)
    band_means = _group_means(idata, bands, covariate)

    shown_bands = _chosen_groups(bands, groups)
    if band_means is not None:
        shown_bands = shown_bands[np.argsort(band_means[shown_bands], kind="stable")]
    heights = np.array([band_height(bands.sizes[g]) for g in shown_bands])
    bottoms = np.r_[0.0, np.cumsum(heights)[:-1]]
    features = np.flatnonzero(np.isin(bands.codes, shown_bands))
    target = finest_means[finest.codes] if finest_means is not None else np.zeros(len(shrunk))
    y = np.empty(len(shrunk))
    for bottom, height, g in zip(bottoms, heights, shown_bands, strict=True):
        members = np.flatnonzero(bands.codes == g)
        members = members[np.lexsort((estimate[members], target[members]))]
        y[members] = bottom + height * (1 - BAND_FILL) / 2 + _row_positions(len(members), height)
    missing = problem.missing[problem.covariates.get_loc(covariate)]
    n_missing = int(missing[features].sum())
    features = features[~missing[features]]  # no stage-1 estimate, no arrow

    total = float(heights.sum())
    ax = new_axes(ax, (9.5, min(1.6 + INCHES_PER_UNIT * total, MAX_FIGURE_HEIGHT)))
    colors = np.array(
        [to_rgba(bands.colors[g], _alpha(bands.sizes[g])) for g in bands.codes[features]]
    )
    ax.quiver(
        estimate[features],
        y[features],
        shrunk[features] - estimate[features],
        np.zeros(len(features)),
        color=colors,
        angles="xy",
        scale_units="xy",
        scale=1.0,
        width=0.0025,
        headwidth=3.0,
        headlength=3.5,
        headaxislength=3.0,
        rasterized=len(features) > 500,
    )
    ax.scatter(estimate[features], y[features], s=8, c=colors, linewidths=0, zorder=3)
    if band_means is not None and bands.level != finest.level:
        for bottom, height, g in zip(bottoms, heights, shown_bands, strict=True):
            ax.vlines(band_means[g], bottom, bottom + height, colors="0.2", ls=":", lw=1.2)
    if finest_means is not None:
        _draw_targets(ax, finest_means, finest.codes[features], y[features])
    if problem.pooled:
        ax.axvline(posterior_mean(idata, "mu", covariate), color="0.3", ls="--", lw=1)
    for band, (bottom, height) in enumerate(zip(bottoms, heights, strict=True)):
        if band % 2 == 0:
            ax.axhspan(bottom, bottom + height, color="0.94", zorder=0)
    ax.set_yticks(
        bottoms + heights / 2,
        [f"{bands.labels[g]} (n={bands.sizes[g]})" for g in shown_bands],
    )
    for tick, g in zip(ax.get_yticklabels(), shown_bands, strict=True):
        tick.set_color(text_color(bands.colors[g]))
    ax.set_ylim(total, 0.0)  # the first band (smallest mean) on top
    _name_features(ax, features, estimate, shrunk, y, names, n_labels)
    ax.set_xlabel(f"effect of {covariate}{units_suffix(idata)}")
    ax.set_title(
        f"Shrinkage of {len(features)} features: stage-1 estimate (dot) → posterior mean "
        "(arrow head)"
        + (f"\n{n_missing} feature(s) without a stage-1 estimate not shown" if n_missing else ""),
        fontsize="medium",
    )
    ax.legend(
        handles=_legend_handles(finest.level, bands.level, problem.pooled),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )
    return ax


def _group_means(idata: az.InferenceData, groups: Groups, covariate: object) -> np.ndarray | None:
    if groups.level is None:
        return None
    return posterior_mean(idata, f"{groups.level}_mean", covariate)


def _chosen_groups(bands: Groups, groups: Sequence[object] | None) -> np.ndarray:
    """Codes of the groups to show, in the fit's order."""
    if groups is None:
        return np.arange(len(bands.labels))
    if isinstance(groups, str) or not len(groups):
        raise ValueError(f"groups must be a non-empty list of group labels, got {groups!r}.")
    unknown = [g for g in groups if g not in bands.labels]
    if unknown:
        raise ValueError(
            f"unknown groups {unknown!r} of level {bands.level!r}; it has "
            f"{bands.labels[:10].tolist()!r}{' …' if len(bands.labels) > 10 else ''}."
        )
    return np.flatnonzero(bands.labels.isin(groups))


def _row_positions(n: int, height: float) -> np.ndarray:
    """Centres of ``n`` equal rows filling :data:`BAND_FILL` of a band of ``height``."""
    return (np.arange(n) + 0.5) * (height * BAND_FILL / n)


def _alpha(n_features: int) -> float:
    return float(np.clip(6.0 / np.sqrt(n_features), 0.35, 0.9))


def _draw_targets(ax: Axes, means: np.ndarray, codes: np.ndarray, y: np.ndarray) -> None:
    """Each finest group's posterior mean across its rows, with a diamond at their middle."""
    shown = np.unique(codes)
    low = np.array([y[codes == g].min() for g in shown])
    high = np.array([y[codes == g].max() for g in shown])
    pad = 0.08
    ax.vlines(means[shown], low - pad, high + pad, colors="black", lw=1.0, zorder=4)
    ax.scatter(means[shown], (low + high) / 2, marker="D", s=30, c="black", zorder=5)


def _name_features(
    ax: Axes,
    features: np.ndarray,
    estimate: np.ndarray,
    shrunk: np.ndarray,
    y: np.ndarray,
    names: np.ndarray,
    n_labels: int,
) -> None:
    """Name the ``n_labels`` features moved farthest, beside their arrow heads."""
    moved = np.abs(estimate[features] - shrunk[features])
    for j in features[np.argsort(-moved, kind="stable")[:n_labels]]:
        leftward = shrunk[j] < estimate[j]
        ax.annotate(
            names[j],
            (shrunk[j], y[j]),
            xytext=(-4 if leftward else 4, 0),
            textcoords="offset points",
            ha="right" if leftward else "left",
            va="center",
            fontsize="x-small",
            color="0.2",
            zorder=6,
        )


def _legend_handles(finest: str | None, bands: str | None, with_global_mean: bool) -> list[Line2D]:
    handles = [Line2D([], [], marker="o", ls="-", color="0.4", label="b̂_j → posterior mean")]
    if finest is not None:
        handles.append(
            Line2D([], [], marker="D", ls="-", color="black", label=f"{finest} posterior mean")
        )
    if bands is not None and bands != finest:
        handles.append(Line2D([], [], ls=":", color="0.2", label=f"{bands} posterior mean"))
    if with_global_mean:
        handles.append(Line2D([], [], ls="--", color="0.3", label="global mean θ0"))
    return handles
