"""LOO comparison of hierarchy depths (through :func:`arviz.plot_compare`)."""

from __future__ import annotations

import warnings

import arviz as az
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.transforms import blended_transform_factory

from bayeshier_pymc.depth_comparison import DepthComparison
from bayeshier_pymc.plots._common import new_axes

__all__ = ["plot_compare"]


def plot_compare(comparison: DepthComparison, *, ax: Axes | None = None) -> Axes:
    """elpd_loo of every depth with its standard error and the difference to the best.

    Rows are labelled ``depth: what it pools over``; the recommended depth is written in
    bold and named in the title with the rule that chose it.

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
    ax = new_axes(ax, (8.0, 1.6 + 0.7 * len(comparison.table)))
    with warnings.catch_warnings():  # ArviZ's own pandas deprecation
        warnings.filterwarnings("ignore", message="The inplace keyword")
        az.plot_compare(
            comparison.table,
            insample_dev=False,
            plot_ic_diff=True,
            legend=False,
            title=False,
            textsize=9,
            ax=ax,
        )
    names = [label.get_text() for label in ax.get_yticklabels()]
    positions = ax.get_yticks()
    ax.set_yticks(positions, [_describe(name, comparison) for name in names])
    to_axes_x = blended_transform_factory(ax.transAxes, ax.transData)
    for name, label, y in zip(names, ax.get_yticklabels(), positions, strict=True):
        if name not in comparison.table.index:
            continue
        row = comparison.table.loc[name]
        difference = "best" if row["rank"] == 0 else f"Δ {-row['elpd_diff']:.1f} ± {row['dse']:.1f}"
        ax.text(1.02, y, difference, transform=to_axes_x, va="center", fontsize=9)
        if _depth(name) == comparison.recommended:
            label.set_fontweight("bold")
    ax.legend(
        handles=[
            Line2D([], [], marker="o", mfc="white", color="black", label="elpd_loo ± SE"),
            Line2D([], [], marker="^", color="grey", label="difference to the best ± dse"),
        ],
        fontsize="small",
        loc="lower left",
    )
    ax.set_ylabel("depth")
    ax.set_xlabel("elpd_loo (higher is better)")
    ax.set_title(
        f"{comparison.loo} PSIS-LOO — recommended: depth {comparison.recommended}\n"
        f"rule: simplest within max({comparison.rule.dse_factor:g} × dse, "
        f"{comparison.rule.negligible:g}) of the best",
        fontsize="medium",
    )
    return ax


def _depth(name: str) -> int | str:
    return "none" if name == "none" else int(name)


def _describe(name: str, comparison: DepthComparison) -> str:
    """``"<depth>: <what it pools over>"`` for a row of the comparison table."""
    if name not in comparison.table.index:
        return name
    return f"{name}: {comparison.descriptions.get(_depth(name), '')}"
