"""Forest plot of the shrunken coefficients, grouped by annotation and paged by rank."""

from __future__ import annotations

from typing import Literal

import arviz as az
import numpy as np
from matplotlib.axes import Axes
from matplotlib.transforms import blended_transform_factory

from bayeshier_pymc.plots._common import (
    FeatureLabels,
    Groups,
    feature_groups,
    feature_names,
    new_axes,
    pick_covariate,
    posterior_mean,
    text_color,
)
from bayeshier_pymc.results import resolve_hdi_prob, theta_moments
from bayeshier_pymc.streamed import theta_draws

__all__ = ["plot_forest_by_group"]

SortBy = Literal["lfsr", "abs_mean"]


def plot_forest_by_group(
    idata: az.InferenceData,
    *,
    covariate: object | None = None,
    level: str | None = None,
    top_k: int | None = 40,
    page: int = 0,
    sort_by: SortBy = "lfsr",
    hdi_prob: float | None = None,
    labels: FeatureLabels | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Posterior intervals of θ_j (through :func:`arviz.plot_forest`), grouped by annotation.

    Features are ranked (by lfsr, or by the absolute posterior mean) and ``top_k`` of them
    are shown per page; on the page they are grouped by ``level`` (groups in shaded bands,
    labelled on the right, tick labels in the group colour), sorted by posterior mean within
    a group, with the group's posterior mean as a vertical line across its band. At
    thousands of features the plot stays one readable page of ``top_k`` rows.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The annotation level that groups the rows (default: the finest of the fit).
    top_k
        Rows per page; ``None`` shows every feature.
    page
        Which page of the ranking (0: the ``top_k`` best ranked).
    sort_by
        ``"lfsr"`` (smallest first, ties by absolute mean) or ``"abs_mean"``.
    hdi_prob
        Probability of the highest-density intervals (default: ArviZ's
        ``rcParams["stats.ci_prob"]``).
    labels
        Feature id → name (a dict, or a Series such as ``annotations["name"]``) for the row
        labels; features it does not name keep their id.
    ax
        Axes to draw on (default: a new figure sized to the rows).

    Returns
    -------
    matplotlib.axes.Axes
    """
    hdi_prob = resolve_hdi_prob(hdi_prob)
    covariate = pick_covariate(idata, covariate)
    groups = feature_groups(idata, level)
    moments = theta_moments(idata, covariate)
    mean = moments["mean"].to_numpy()
    ranking = _rank(mean, moments["lfsr"].to_numpy(), sort_by)
    n_features = len(mean)
    per_page = n_features if top_k is None else top_k
    if per_page < 1:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    n_pages = -(-n_features // per_page)
    if not 0 <= page < n_pages:
        raise ValueError(f"page {page} is outside 0..{n_pages - 1}.")
    chosen = ranking[page * per_page : (page + 1) * per_page]
    chosen = chosen[np.lexsort((mean[chosen], groups.codes[chosen]))]

    features = moments["feature"].to_numpy()[chosen]
    names = feature_names(idata, labels)
    ax = new_axes(ax, (7.5, 1.4 + 0.24 * len(chosen)))
    # the chosen features' draws (regenerated for a fit in summary storage)
    draws = theta_draws(idata, features).sel(covariate=covariate).to_dataset()
    az.plot_forest(
        draws,
        var_names=["theta"],
        combined=True,
        hdi_prob=hdi_prob,
        labeller=az.labels.NoVarLabeller(),
        colors="0.15",
        textsize=9,
        ax=ax,
    )
    _mark_groups(ax, groups, groups.codes[chosen], idata, covariate)
    _name_rows(ax, features.astype(str), groups, groups.codes[chosen], names[chosen])
    shown = "every" if top_k is None else f"top {len(chosen)}"
    pages = f", page {page + 1} of {n_pages}" if n_pages > 1 else ""
    ax.set_title(
        f"θ for {covariate}: {shown} of {n_features} features by {sort_by}{pages}\n"
        f"{hdi_prob:.0%} HDI (thin) and 50% interval (thick)",
        fontsize="medium",
    )
    ax.set_xlabel(f"effect of {covariate}")
    return ax


def _name_rows(
    ax: Axes, features: np.ndarray, groups: Groups, codes: np.ndarray, names: np.ndarray
) -> None:
    """Write each row's name in its group's colour (ArviZ labels the rows by feature id)."""
    row_of = {feature: row for row, feature in enumerate(features)}
    ticks = ax.get_yticks()
    rows = [row_of[label.get_text()] for label in ax.get_yticklabels()]
    ax.set_yticks(ticks, [names[row] for row in rows])
    for label, row in zip(ax.get_yticklabels(), rows, strict=True):
        label.set_color(text_color(groups.colors[codes[row]]))


def _rank(mean: np.ndarray, lfsr_values: np.ndarray, sort_by: SortBy) -> np.ndarray:
    if sort_by == "lfsr":
        return np.lexsort((-np.abs(mean), lfsr_values))
    if sort_by == "abs_mean":
        return np.argsort(-np.abs(mean), kind="stable")
    raise ValueError(f"sort_by must be 'lfsr' or 'abs_mean', got {sort_by!r}.")


def _mark_groups(
    ax: Axes,
    groups: Groups,
    row_codes: np.ndarray,
    idata: az.InferenceData,
    covariate: object,
) -> None:
    """Shade each group's rows, label the group and draw the group mean across its band."""
    # arviz.plot_forest draws the first row at the top, rows equally spaced
    y = np.sort(ax.get_yticks())[::-1]
    step = abs(y[0] - y[1]) if len(y) > 1 else 1.0
    group_means = (
        posterior_mean(idata, f"{groups.level}_mean", covariate)
        if groups.level is not None
        else None
    )
    to_axes_x = blended_transform_factory(ax.transAxes, ax.transData)
    starts = np.flatnonzero(np.r_[True, row_codes[1:] != row_codes[:-1]])
    for band, (start, stop) in enumerate(zip(starts, [*starts[1:], len(row_codes)], strict=True)):
        code = row_codes[start]
        top, bottom = y[start] + step / 2, y[stop - 1] - step / 2
        color = groups.colors[code]
        if band % 2 == 0:
            ax.axhspan(bottom, top, color="0.93", zorder=0)
        if group_means is not None:
            ax.vlines(group_means[code], bottom, top, colors=color, lw=1.5, alpha=0.7, zorder=1)
        ax.text(
            1.01,
            (top + bottom) / 2,
            f"{groups.labels[code]}",
            transform=to_axes_x,
            color=text_color(color),
            va="center",
            fontsize=9,
            clip_on=False,
        )
