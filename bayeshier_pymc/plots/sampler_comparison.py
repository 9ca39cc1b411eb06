"""Overlay of two samplers' marginal posteriors, parameter by parameter."""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes

from bayeshier_pymc.sampler_comparison import SamplerComparison, compare_samplers

__all__ = ["plot_sampler_comparison"]

_COLORS = ("C0", "C3")


def plot_sampler_comparison(
    comparison: SamplerComparison | tuple[az.InferenceData, az.InferenceData],
    *,
    parameters: Sequence[str] | None = None,
    max_panels: int = 12,
    bins: int = 40,
    ax: Axes | Sequence[Axes] | np.ndarray | None = None,
) -> np.ndarray:
    """Histograms of both samplers' draws, overlaid, one panel per parameter.

    Parameters
    ----------
    comparison
        A :class:`~bayeshier_pymc.sampler_comparison.SamplerComparison`, or a pair of
        InferenceData objects (compared with default settings).
    parameters
        Labels of :attr:`SamplerComparison.table` to show (default: the ``max_panels``
        parameters with the largest :math:`|z|` of mean or sd, the ones most worth a look).
    max_panels
        Most panels drawn by default.
    bins
        Histogram bins per panel (shared by both samplers).
    ax
        Axes to draw on, at least one per parameter (default: a new figure).

    Returns
    -------
    numpy.ndarray
        The axes drawn on.
    """
    if not isinstance(comparison, SamplerComparison):
        comparison = compare_samplers(*comparison)
    table = comparison.table
    if parameters is None:
        worst = table[["z_mean", "z_sd"]].abs().max(axis=1)
        parameters = [p for p in table.index if p in worst.nlargest(max_panels).index]
    draws_a, draws_b = comparison.draws(parameters)
    axes = _panels(ax, len(parameters))
    for i, (panel, parameter) in enumerate(zip(axes, parameters, strict=False)):
        edges = np.histogram_bin_edges(np.concatenate([draws_a[:, i], draws_b[:, i]]), bins)
        for values, name, color in zip(
            (draws_a[:, i], draws_b[:, i]), comparison.names, _COLORS, strict=True
        ):
            panel.hist(values, edges, density=True, histtype="step", color=color, label=name)
            panel.axvline(values.mean(), color=color, lw=0.8, ls="--")
        row = table.loc[parameter]
        panel.set_title(
            f"{parameter}\nz mean {row['z_mean']:+.1f}, z sd {row['z_sd']:+.1f}", fontsize=8
        )
        panel.set_yticks([])
        panel.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, frameon=False)
    for spare in axes[len(parameters) :]:
        spare.set_visible(False)
    return axes


def _panels(ax: Axes | Sequence[Axes] | np.ndarray | None, n: int) -> np.ndarray:
    """``ax`` as a flat array of at least ``n`` axes, or the axes of a new grid."""
    if ax is not None:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if axes.size < n:
            raise ValueError(f"{n} parameters need {n} axes; {axes.size} were given.")
        return axes
    columns = min(n, 4)
    rows = -(-n // columns)
    _, grid = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.1 * rows), layout="constrained", squeeze=False
    )
    return grid.ravel()
