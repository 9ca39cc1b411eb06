"""Shrinkage plot: every stage-1 estimate b̂_j moved to its posterior mean, one band per group."""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.plots._common import (
    feature_groups,
    new_axes,
    pick_covariate,
    posterior_mean,
)

__all__ = ["plot_shrinkage"]

_HALF_BAND = 0.32


def plot_shrinkage(
    idata: az.InferenceData,
    *,
    covariate: object | None = None,
    level: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw the shrinkage of every feature as an arrow from b̂_j to its posterior mean.

    One horizontal band per group of ``level``, groups ordered by their posterior mean: the
    top edge of a band holds the stage-1 estimates b̂_j (dots), the bottom edge the posterior
    means of θ_j (arrow heads), coloured by group. A black diamond marks the group's posterior
    mean and the dashed line the global mean θ0. Transparency falls with the number of
    features, so thousands of arrows show where the mass goes.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The annotation level whose groups form the bands (default: the finest of the fit);
        fits without levels show one band.
    ax
        Axes to draw on (default: a new figure sized to the number of groups).

    Returns
    -------
    matplotlib.axes.Axes
    """
    covariate = pick_covariate(idata, covariate)
    groups = feature_groups(idata, level)
    problem = problem_from_idata(idata)
    estimate = problem.b[problem.covariates.get_loc(covariate)]
    shrunk = posterior_mean(idata, "theta", covariate)
    group_means = (
        posterior_mean(idata, f"{groups.level}_mean", covariate)
        if groups.level is not None
        else None
    )
    order = np.argsort(group_means) if group_means is not None else np.arange(len(groups.labels))
    row = np.empty(len(order), dtype=int)
    row[order] = np.arange(len(order))
    y = row[groups.codes].astype(float)

    ax = new_axes(ax, (9.5, 1.6 + 0.42 * len(groups.labels)))
    alpha = float(np.clip(12.0 / np.sqrt(len(estimate)), 0.15, 0.9))
    colors = np.asarray(groups.colors)[groups.codes]
    ax.quiver(
        estimate,
        y + _HALF_BAND,
        shrunk - estimate,
        np.full_like(y, -2 * _HALF_BAND),
        color=colors,
        alpha=alpha,
        angles="xy",
        scale_units="xy",
        scale=1.0,
        width=0.0022,
        headwidth=4.0,
        headlength=4.0,
        headaxislength=3.5,
    )
    ax.scatter(estimate, y + _HALF_BAND, s=9, c=colors, alpha=alpha, linewidths=0, zorder=3)
    if group_means is not None:
        ax.scatter(
            group_means,
            row - _HALF_BAND,
            marker="D",
            s=36,
            c="black",
            zorder=4,
        )
    if problem.pooled:
        ax.axvline(posterior_mean(idata, "mu", covariate), color="0.3", ls="--", lw=1)
    for r in range(0, len(order), 2):
        ax.axhspan(r - 0.5, r + 0.5, color="0.94", zorder=0)
    ax.set_yticks(
        np.arange(len(order)),
        [f"{groups.labels[g]} (n={groups.sizes[g]})" for g in order],
    )
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlabel(f"effect of {covariate}")
    ax.set_title(
        f"Shrinkage of {len(estimate)} features: stage-1 estimate (band top) → posterior mean"
        " (band bottom)",
        fontsize="medium",
    )
    ax.legend(
        handles=_legend_handles(groups.level, problem.pooled),
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )
    return ax


def _legend_handles(level: str | None, with_global_mean: bool) -> list[Line2D]:
    handles = [Line2D([], [], marker="o", ls="-", color="0.4", label="b̂_j → posterior mean")]
    if level is not None:
        handles.append(
            Line2D([], [], marker="D", ls="", color="black", label=f"{level} posterior mean")
        )
    if with_global_mean:
        handles.append(Line2D([], [], ls="--", color="0.3", label="global mean θ0"))
    return handles
