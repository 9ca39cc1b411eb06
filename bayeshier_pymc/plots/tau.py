"""The scales τ of every level of the tree, per covariate: intervals, prior vs posterior, shares."""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.plots._common import group_colors, new_axes, units_suffix
from bayeshier_pymc.results import resolve_hdi_prob, scale_summary, variance_shares

__all__ = ["half_cauchy_density", "plot_tau", "plot_tau_prior_posterior"]

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
    ax.set_xlabel(f"τ (sd of a level's units around their parent){units_suffix(idata)}")
    ax.set_title(f"Scales per level: posterior mean and {hdi_prob:.0%} HDI", fontsize="medium")
    if len(chosen) > 1:
        ax.legend(title="covariate", fontsize="small", loc="best")
    return ax


def half_cauchy_density(tau: np.ndarray, scale: float) -> np.ndarray:
    """The HalfCauchy(``scale``) density at ``tau`` >= 0: 2 / (π A (1 + (τ/A)²))."""
    return 2.0 / (np.pi * scale * (1.0 + (tau / scale) ** 2))


def plot_tau_prior_posterior(
    idata: az.InferenceData,
    *,
    covariates: Sequence[object] | None = None,
    bins: int = 40,
    ax: Sequence[Axes] | np.ndarray | None = None,
) -> np.ndarray:
    """Posterior of τ with its prior overlaid, and the variance shares, per covariate.

    One row per covariate: one panel per level with the histogram of the posterior draws of
    τ and the HalfCauchy prior density the fit used (read from the fit,
    :attr:`ShrinkageModel.priors`), over the range of the draws; the panel's title gives the
    prior's mass on that range. Where the prior is flat across the posterior the data
    decided τ; where the posterior follows the prior's shape, the prior did. The last panel
    shows each level's share of the variance, τ_L² / Σ_levels τ² (under a heavy-tailed group
    prior each group level's τ_L² times the mean λ_g² of its groups:
    :func:`~bayeshier_pymc.results.variance_shares`), as its posterior mean (bar) and 90%
    interval (line).

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample` with pooling.
    covariates
        Covariates to show (default: all).
    bins
        Histogram bins per panel.
    ax
        Axes to draw on, at least covariates × (levels + 1) of them, row by row (default:
        a new figure).

    Returns
    -------
    numpy.ndarray
        The axes, covariates × (levels + 1).
    """
    if "tau" not in idata.posterior:
        raise ValueError("the fit has no scales τ (no pooling): nothing to plot.")
    priors = problem_from_idata(idata).priors
    tau = idata.posterior["tau"]
    available = tau["covariate"].to_numpy().tolist()
    chosen = available if covariates is None else list(covariates)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise ValueError(f"unknown covariates {unknown!r}; the fit has {available!r}.")
    levels = tau["level"].to_numpy().tolist()
    shape = (len(chosen), len(levels) + 1)
    axes = _grid(ax, shape)
    colors = group_colors(len(levels))
    all_shares = variance_shares(idata.posterior)
    for row, covariate in enumerate(chosen):
        draws = tau.sel(covariate=covariate).stack(sample=("chain", "draw"))
        draws = draws.transpose("level", "sample").to_numpy()
        shares = all_shares.sel(covariate=covariate).stack(sample=("chain", "draw"))
        shares = shares.transpose("level", "sample").to_numpy()
        scales = priors.tau_scale[available.index(covariate)]
        for column, level in enumerate(levels):
            panel = axes[row, column]
            upper = 1.2 * float(np.quantile(draws[column], 0.995))
            panel.hist(
                draws[column],
                bins=np.linspace(0.0, upper, bins + 1),
                density=True,
                color=colors[column],
                alpha=0.6,
                label="posterior",
            )
            grid = np.linspace(0.0, upper, 200)
            panel.plot(grid, half_cauchy_density(grid, scales[column]), "k--", label="prior")
            mass = 2.0 / np.pi * np.arctan(upper / scales[column])
            panel.set_title(
                f"{covariate}: τ[{level}]\nprior HalfCauchy({scales[column]:.3g}), "
                f"{mass:.0%} of it shown",
                fontsize="small",
            )
            panel.set_xlim(0.0, upper)
            panel.set_yticks([])
        low, high = np.quantile(shares, [0.05, 0.95], axis=1)
        panel = axes[row, -1]
        y = np.arange(len(levels))[::-1]
        panel.barh(y, shares.mean(axis=1), color=colors, alpha=0.6)
        panel.hlines(y, low, high, colors="k", lw=1.2)
        panel.set_yticks(y, levels)
        panel.set_xlim(0.0, 1.0)
        panel.set_title(f"{covariate}: variance share", fontsize="small")
    axes[0, 0].legend(fontsize="small")
    for panel in axes[-1, :-1]:
        panel.set_xlabel("τ")
    axes[-1, -1].set_xlabel("variance share (mean, 90% interval)")
    return axes


def _grid(ax: Sequence[Axes] | np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The given axes as a ``shape`` grid, or those of a new figure."""
    if ax is None:
        _, axes = plt.subplots(
            *shape,
            figsize=(2.6 * shape[1], 2.2 * shape[0] + 0.4),
            layout="constrained",
            squeeze=False,
        )
        return axes
    given = np.asarray(ax, dtype=object).ravel()
    if given.size < shape[0] * shape[1]:
        raise ValueError(
            f"ax has {given.size} axes; the figure needs {shape[0] * shape[1]} "
            f"({shape[0]} covariates × {shape[1] - 1} levels + 1)."
        )
    return given[: shape[0] * shape[1]].reshape(shape)
