"""Pathway-effect forest: the posterior mean of every group, nested under its parent group."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from bayeshier_pymc.plots._common import (
    group_colors,
    new_axes,
    pick_covariate,
    text_color,
    units_suffix,
)
from bayeshier_pymc.results import format_rate, group_effects, group_level, resolve_hdi_prob
from bayeshier_pymc.results import n_draws as draw_count

__all__ = ["plot_group_effects"]


def plot_group_effects(
    idata: az.InferenceData,
    *,
    covariate: object | None = None,
    level: str | None = None,
    lfsr_threshold: float = 0.05,
    hdi_prob: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Posterior mean and HDI of every group's effect, groups nested under their parent.

    One row per group of ``level``; where the fit has a coarser level, each parent group
    comes first as a bold row (its own mean and HDI, a square) with its groups indented
    below it, parents and groups each ordered by posterior mean. Right of every row: the
    number of features n and the group's lfsr (``"<1/S"`` where no draw has the other
    sign). Groups with lfsr below ``lfsr_threshold`` are filled, the others open. The
    dashed line is the global mean θ0.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample` with at least one annotation level.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The level whose groups are the rows (default: the finest of the fit); its parent
        level, if any, nests them.
    lfsr_threshold
        Groups below it are drawn filled.
    hdi_prob
        Interval level (default: ArviZ's ``rcParams["stats.ci_prob"]``).
    ax
        Axes to draw on (default: a new figure sized to the rows).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not 0.0 < lfsr_threshold < 0.5:
        raise ValueError(f"lfsr_threshold must lie in (0, 0.5), got {lfsr_threshold}.")
    hdi_prob = resolve_hdi_prob(hdi_prob)
    covariate = pick_covariate(idata, covariate)
    tree, level = group_level(idata, level)
    depth = tree.levels.index(level)
    children = _rows_of(group_effects(idata, level, hdi_prob), covariate, level)
    parent_level = tree.levels[depth + 1] if depth + 1 < len(tree.levels) else None
    n_draws = draw_count(idata)

    if parent_level is None:
        rows = children.sort_values("mean").assign(kind="group", parent=0)
        parents = pd.DataFrame()
    else:
        parents = _rows_of(group_effects(idata, parent_level, hdi_prob), covariate, parent_level)
        parents = parents.sort_values("mean").reset_index(drop=True)
        children["parent"] = tree.parents[depth + 1][children["code"].to_numpy()]
        parents["parent"] = parents["code"]
        order = {code: rank for rank, code in enumerate(parents["code"])}
        blocks = []
        for code in parents["code"]:
            block = children[children["parent"] == code].sort_values("mean").assign(kind="group")
            blocks += [parents[parents["code"] == code].assign(kind="parent"), block]
        rows = pd.concat(blocks, ignore_index=True)
        rows["parent"] = rows["parent"].map(order)
    rows = rows.reset_index(drop=True)
    y = np.arange(len(rows), dtype=float)
    colors = group_colors(max(len(parents), 1))

    ax = new_axes(ax, (8.0, 1.4 + 0.26 * len(rows)))
    for row, position in zip(rows.itertuples(), y, strict=True):
        color = colors[row.parent] if len(parents) else colors[0]
        is_parent = row.kind == "parent"
        ax.hlines(
            position, row.hdi_lower, row.hdi_upper, colors=color, lw=2.2 if is_parent else 1.4
        )
        filled = row.lfsr < lfsr_threshold
        ax.plot(
            row.mean,
            position,
            marker="s" if is_parent else "o",
            ms=7 if is_parent else 5,
            mfc=color if filled else "white",
            mec=color,
            ls="",
        )
    labels = [
        str(label) if kind == "parent" or not len(parents) else f"    {label}"
        for label, kind in zip(rows["label"], rows["kind"], strict=True)
    ]
    ax.set_yticks(y, labels)
    for tick, row in zip(ax.get_yticklabels(), rows.itertuples(), strict=True):
        tick.set_color(text_color(colors[row.parent] if len(parents) else colors[0]))
        if row.kind == "parent":
            tick.set_fontweight("bold")
    to_axes_x = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(1.02, -1.0, "n    lfsr", transform=to_axes_x, va="center", fontsize=8, color="0.3")
    for row, position in zip(rows.itertuples(), y, strict=True):
        ax.text(
            1.02,
            position,
            f"{row.n_features:<4d} {format_rate(row.lfsr, n_draws)}",
            transform=to_axes_x,
            va="center",
            fontsize=8,
            family="monospace",
            fontweight="bold" if row.kind == "parent" else "normal",
        )
    ax.set_ylim(len(rows) - 0.5, -1.5)
    ax.axvline(0.0, color="0.6", lw=0.8)
    mu = float(idata.posterior["mu"].sel(covariate=covariate).mean())
    ax.axvline(mu, color="0.3", ls="--", lw=1)
    ax.set_xlabel(f"group effect of {covariate}{units_suffix(idata)}")
    nested = f" within {parent_level}" if parent_level is not None else ""
    ax.set_title(
        f"{level}{nested} effects of {covariate}: posterior mean and {hdi_prob:.0%} HDI",
        fontsize="medium",
    )
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color="0.3", label=f"lfsr < {lfsr_threshold:g}"),
            Line2D([], [], marker="o", ls="", mfc="white", color="0.3", label="lfsr ≥ threshold"),
            Line2D([], [], ls="--", color="0.3", label="global mean θ0"),
        ],
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.16, 1.0),
        frameon=False,
    )
    return ax


def _rows_of(frame: pd.DataFrame, covariate: object, level: str) -> pd.DataFrame:
    """The rows of one covariate, with the group's label and its code in the tree."""
    rows = frame[frame["covariate"] == covariate].reset_index(drop=True)
    return rows.assign(label=rows[level], code=np.arange(len(rows)))
