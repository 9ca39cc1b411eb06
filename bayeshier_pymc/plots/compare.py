"""LOO comparison of hierarchy depths: each model's difference to the best, and the rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from bayeshier_pymc.depth_comparison import DepthComparison
from bayeshier_pymc.plots._common import new_axes

__all__ = ["plot_compare"]

ZOOM = 3.0
"""The axis spans this many times the widest close-enough row (difference + 2 dse, or the
rule's tolerance); models farther from the best are drawn at the edge, their Δ written out."""
BAD_K_COLOR = "#c0392b"


def plot_compare(comparison: DepthComparison, *, ax: Axes | None = None) -> Axes:
    """Difference in elpd_loo of every depth to the best, with the recommendation rule drawn.

    The recommended depth (in bold) comes from the rule's criterion: by default the elpd of
    a fresh replicate (``comparison.replicate``), which the title names; the grey bars are
    the rule's tolerance on the PSIS-LOO elpd drawn here.

    One row per model, best first, labelled ``depth: what it pools over`` (the recommended
    depth in bold). The point is Δ elpd = elpd − elpd_best with ± dse, the standard error of
    the difference, which is what decides; the grey bar is the rule's tolerance
    ``max(dse_factor × dse, negligible)``: a point inside it is close enough to the best. The
    axis is zoomed onto the close-enough models, so a model far behind (typically no
    pooling) does not squeeze the decision into a dot: it sits at the left edge as a
    triangle with its Δ written beside it. Right of every row: elpd_loo ± SE and the count
    of held-out points with Pareto k above good_k (in red when any: that elpd is
    unreliable).

    Parameters
    ----------
    comparison
        A result of :func:`~bayeshier_pymc.depth_comparison.compare_depths`.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    table = comparison.table
    rule = comparison.rule
    names = [str(name) for name in table.index]
    delta = -table["elpd_diff"].to_numpy(dtype=float)
    dse = table["dse"].to_numpy(dtype=float)
    tolerance = np.maximum(rule.dse_factor * dse, rule.negligible)
    close = np.array([rule.close_enough(table.loc[name]) for name in table.index])
    half_width = ZOOM * float(np.max(np.maximum(-delta + 2 * dse, tolerance)[close]))
    left = -half_width
    off_axis = delta - dse < left
    y = np.arange(len(names), dtype=float)

    ax = new_axes(ax, (8.0, 1.6 + 0.55 * len(names)))
    for position, width in zip(y[~off_axis], tolerance[~off_axis], strict=True):
        ax.barh(position, -width, height=0.5, color="0.9", zorder=0)
    bad_k = _bad_k_counts(comparison, names)
    for position, d, s, far, n_bad in zip(y, delta, dse, off_axis, bad_k, strict=True):
        color = BAD_K_COLOR if n_bad else "black"
        if far:
            ax.plot(left, position, marker="<", color=color, ms=8, clip_on=False, zorder=3)
            ax.annotate(
                f"Δ {d:.1f} ± {s:.1f} (off axis)",
                (left, position),
                xytext=(8, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color=color,
            )
        else:
            ax.errorbar(d, position, xerr=s, fmt="o", color=color, capsize=3, zorder=3)
    ax.axvline(0.0, color="0.5", lw=0.8)
    ax.set_xlim(left, 0.15 * half_width)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_yticks(y, [_describe(name, comparison) for name in names])
    for label, name in zip(ax.get_yticklabels(), names, strict=True):
        if _depth(name) == comparison.recommended:
            label.set_fontweight("bold")
    to_axes_x = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(
        1.02,
        -0.55,
        "elpd_loo ± SE · bad k",
        transform=to_axes_x,
        va="bottom",
        fontsize=8,
        color="0.3",
    )
    for position, name, n_bad in zip(y, names, bad_k, strict=True):
        row = table.loc[name]
        ax.text(
            1.02,
            position,
            f"{row['elpd_loo']:.1f} ± {row['se']:.1f} · {n_bad}",
            transform=to_axes_x,
            va="center",
            fontsize=9,
            color=BAD_K_COLOR if n_bad else "black",
        )
    ax.legend(
        handles=[
            Line2D([], [], marker="o", color="black", label="Δ elpd to the best ± dse"),
            Patch(color="0.9", label="close enough (the rule's tolerance)"),
            Line2D([], [], marker="o", ls="", color=BAD_K_COLOR, label="Pareto k above good_k"),
        ],
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncols=3,
        frameon=False,
    )
    ax.set_ylabel("depth")
    ax.set_xlabel("Δ elpd_loo to the best (higher is better)")
    by = "the elpd of a fresh replicate" if rule.criterion == "replicate" else "this elpd"
    ax.set_title(
        f"{comparison.loo} PSIS-LOO — recommended: depth {comparison.recommended}\n"
        f"rule: {'simplest' if rule.prefer == 'simplest' else 'deepest'} within "
        f"max({rule.dse_factor:g} × dse, {rule.negligible:g}) of the best, by {by}",
        fontsize="medium",
    )
    return ax


def _bad_k_counts(comparison: DepthComparison, names: list[str]) -> list[int]:
    """Held-out points with Pareto k above good_k, per row of the table."""
    counts = comparison.pareto_k["n_bad"] + comparison.pareto_k["n_very_bad"]
    by_name = pd.Series(counts.to_numpy(), index=counts.index.map(str))
    return [int(by_name.get(name, 0)) for name in names]


def _depth(name: str) -> int | str:
    return "none" if name == "none" else int(name)


def _describe(name: str, comparison: DepthComparison) -> str:
    """``"<depth>: <what it pools over>"`` for a row of the comparison table."""
    return f"{name}: {comparison.descriptions.get(_depth(name), '')}"
