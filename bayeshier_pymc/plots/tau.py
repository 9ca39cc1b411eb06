"""The scales τ of every level of the tree, per covariate, with intervals."""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import numpy as np
from matplotlib.axes import Axes

from bayeshier_pymc.plots._common import group_colors, new_axes
from bayeshier_pymc.results import resolve_hdi_prob, scale_summary

__all__ = ["plot_tau"]

_LEVEL_MEANING = {"feature": "θ_j around their group"}


def plot_tau(
    idata: az.InferenceData,
    *,
    covariates: Sequence[object] | None = None,
    hdi_prob: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Posterior mean and HDI of τ for every level (rows) and covariate (colours).

    ``tau[level=L]`` is the sd of the level-L units around their parent, so a level whose τ
    sits near zero adds nothing: its units are pooled to their parent.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample` with pooling.
    covariates
        Covariates to show (default: all).
    hdi_prob
        Probability of the highest-density intervals (default: ArviZ's
        ``rcParams["stats.ci_prob"]``).
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    hdi_prob = resolve_hdi_prob(hdi_prob)
    table = scale_summary(idata, hdi_prob)
    available = list(dict.fromkeys(table["covariate"]))
    chosen = available if covariates is None else list(covariates)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"unknown covariates {unknown!r}; the fit has {available!r}.")
    levels = idata.posterior["level"].to_numpy().tolist()
    ax = new_axes(ax, (7.0, 1.5 + len(levels) * (0.5 + 0.12 * len(chosen))))
    offsets = np.linspace(0.3, -0.3, len(chosen)) if len(chosen) > 1 else np.zeros(1)
    for covariate, offset, color in zip(chosen, offsets, group_colors(len(chosen)), strict=True):
        rows = table[table["covariate"] == covariate].set_index("level").loc[levels]
        y = np.arange(len(levels))[::-1] + offset
        ax.hlines(y, rows["hdi_lower"], rows["hdi_upper"], colors=color, lw=1.6)
        ax.plot(rows["mean"], y, "o", color=color, ms=5, label=str(covariate))
    for r in range(0, len(levels), 2):
        ax.axhspan(len(levels) - 1 - r - 0.5, len(levels) - 1 - r + 0.5, color="0.94", zorder=0)
    parents = [*levels[1:], "θ0"]
    ax.set_yticks(
        np.arange(len(levels))[::-1],
        [f"{lv}\n(around {parent})" for lv, parent in zip(levels, parents, strict=True)],
    )
    ax.set_ylim(-0.6, len(levels) - 0.4)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("τ (sd of a level's units around their parent)")
    ax.set_title(f"Scales per level: posterior mean and {hdi_prob:.0%} HDI", fontsize="medium")
    if len(chosen) > 1:
        ax.legend(title="covariate", fontsize="small", loc="best")
    return ax
