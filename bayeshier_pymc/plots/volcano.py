"""Volcano plot: posterior mean against the local false sign rate."""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from scipy import stats

from bayeshier_pymc.plots._common import (
    MAX_LEGEND_GROUPS,
    FeatureLabels,
    feature_groups,
    feature_names,
    new_axes,
    pick_covariate,
)
from bayeshier_pymc.results import n_draws as draw_count
from bayeshier_pymc.results import theta_moments

__all__ = ["plot_volcano"]

LABEL_SPACING_PX = 40.0


def plot_volcano(
    idata: az.InferenceData,
    *,
    covariate: object | None = None,
    level: str | None = None,
    lfsr_threshold: float = 0.05,
    n_labels: int = 8,
    labels: FeatureLabels | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Posterior mean of θ_j (x) against −log10 lfsr_j (y), one point per feature.

    Features below ``lfsr_threshold`` are drawn opaque and coloured by group, the others
    faded grey; up to ``n_labels`` of those below the threshold are named, largest absolute
    posterior mean first, skipping points too close to one already named. With S draws the lfsr
    cannot be resolved below 1/S (no draw of the other sign): such features, which would
    pile up on one line, are placed at the normal approximation ``Φ(−|mean| / sd)`` (capped at
    1/S) and drawn as open triangles.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The annotation level that colours the points (default: the finest of the fit).
    lfsr_threshold
        Reporting threshold, drawn as a horizontal line.
    n_labels
        How many of the best-ranked features to name.
    labels
        Feature id → name (a dict, or a Series such as ``annotations["name"]``) for the
        named features; features it does not name keep their id.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if not 0.0 < lfsr_threshold < 0.5:
        raise ValueError(f"lfsr_threshold must lie in (0, 0.5), got {lfsr_threshold}.")
    covariate = pick_covariate(idata, covariate)
    groups = feature_groups(idata, level)
    moments = theta_moments(idata, covariate)
    mean = moments["mean"].to_numpy()
    n_draws = draw_count(idata)
    sampled = moments["lfsr"].to_numpy()
    unresolved = sampled < 1.0 / n_draws
    approximate = stats.norm.sf(np.abs(mean) / moments["sd"].to_numpy())
    height = -np.log10(np.where(unresolved, np.minimum(approximate, 1.0 / n_draws), sampled))
    signed = sampled < lfsr_threshold

    ax = new_axes(ax, (8.0, 5.0))
    size = float(np.clip(300.0 / np.sqrt(len(mean)), 6.0, 40.0))
    colors = np.where(signed, np.asarray(groups.colors)[groups.codes], "0.7")
    for marker, subset in (("o", ~unresolved), ("^", unresolved)):
        ax.scatter(
            mean[subset],
            height[subset],
            marker=marker,
            facecolors=colors[subset] if marker == "o" else "none",
            edgecolors=colors[subset] if marker == "^" else "none",
            s=size,
            alpha=0.9 if marker == "^" else np.where(signed[subset], 0.9, 0.4),
            linewidths=0.8,
            rasterized=len(mean) > 500,
        )
    ax.axhline(-np.log10(lfsr_threshold), color="0.3", ls="--", lw=1)
    ax.axhline(-np.log10(1.0 / n_draws), color="0.6", ls=":", lw=1)
    ax.axvline(0.0, color="0.6", lw=0.8)
    _label_extremes(ax, feature_names(idata, labels), mean, height, signed, n_labels)
    ax.set_xlabel(f"posterior mean of θ ({covariate})")
    ax.set_ylabel("−log10 lfsr")
    ax.set_ylim(bottom=0.0)
    ax.set_title(
        f"{int(signed.sum())} of {len(mean)} features with lfsr < {lfsr_threshold:g}",
        fontsize="medium",
    )
    handles = [
        Line2D([], [], ls="--", color="0.3", label=f"lfsr = {lfsr_threshold:g}"),
        Line2D([], [], ls=":", color="0.6", label=f"1/S = 1/{n_draws} (resolution)"),
        Line2D(
            [], [], marker="^", ls="", mfc="none", color="0.3", label="beyond 1/S: normal approx."
        ),
    ]
    if groups.level is not None and len(groups.labels) <= MAX_LEGEND_GROUPS:
        handles += [
            Line2D([], [], marker="o", ls="", color=color, label=str(label))
            for label, color in zip(groups.labels, groups.colors, strict=True)
        ]
    ax.legend(
        handles=handles,
        title=groups.level,
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        frameon=False,
    )
    return ax


def _label_extremes(
    ax: Axes,
    features: np.ndarray,
    mean: np.ndarray,
    height: np.ndarray,
    signed: np.ndarray,
    n_labels: int,
) -> None:
    """Name up to ``n_labels`` signed features, largest |mean| first, skipping crowded ones.

    A candidate closer than :data:`LABEL_SPACING_PX` (on screen) to a named point is skipped,
    so the names stay legible where points pile up.
    """
    ax.autoscale_view()
    screen = ax.transData.transform(np.column_stack([mean, height]))
    candidates = np.flatnonzero(signed)
    chosen: list[int] = []
    for j in candidates[np.argsort(-np.abs(mean[candidates]), kind="stable")]:
        if len(chosen) == n_labels:
            break
        if all(np.hypot(*(screen[j] - screen[i])) >= LABEL_SPACING_PX for i in chosen):
            chosen.append(int(j))
    for j in chosen:
        left = mean[j] < 0
        ax.annotate(
            str(features[j]),
            (mean[j], height[j]),
            xytext=(8 if left else -8, 4),
            textcoords="offset points",
            ha="left" if left else "right",
            fontsize="x-small",
            arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.5},
        )
