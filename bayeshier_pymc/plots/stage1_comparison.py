"""Stage 1 against stage 2: every estimate b̂_j beside its posterior mean, and the two hit lists."""

from __future__ import annotations

import arviz as az
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from scipy import stats

from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.plots._common import (
    MAX_LEGEND_GROUPS,
    FeatureLabels,
    feature_groups,
    feature_names,
    new_axes,
    pick_covariate,
    posterior_mean,
)
from bayeshier_pymc.results import (
    DEFAULT_ALPHA,
    check_alpha,
    qvalue,
    theta_moments,
)

__all__ = ["plot_stage1_vs_shrunken"]

HIT_KINDS = ("both", "stage 2 only", "stage 1 only", "neither")
"""How a feature fares on the two lists: BH at stage 1, q-value (from the lfsr) at stage 2."""


def _stage1_adjusted_pvalues(
    idata: az.InferenceData, covariate: object, fit: MLMFit | None = None
) -> np.ndarray:
    """Benjamini–Hochberg adjusted stage-1 p-values of the fit's features for ``covariate``.

    With ``fit``, its own (t-test) adjusted p-values, BH over every feature of the fit;
    without, two-sided normal tests of b̂_j / s_j adjusted over the observed features.
    A missing cell's adjusted p-value is NaN.
    """
    problem = problem_from_idata(idata)
    features = idata.constant_data["feature"].to_numpy()
    if fit is None:
        row = problem.covariates.get_loc(covariate)
        observed = ~problem.missing[row]
        adjusted = np.full(len(features), np.nan)
        p = 2.0 * stats.norm.sf(np.abs(problem.b[row, observed]) / problem.se[row, observed])
        adjusted[observed] = stats.false_discovery_control(p, method="bh")
        return adjusted
    table = fit.to_frame()
    adjusted = table[table["covariate"] == covariate].set_index("feature")["p_adj"]
    if adjusted.empty:
        raise ValueError(f"the stage-1 fit has no covariate {covariate!r}.")
    missing = [f for f in features if f not in adjusted.index]
    if missing:
        raise ValueError(f"the stage-1 fit lacks features of the shrinkage fit: {missing[:5]!r}.")
    return adjusted.reindex(features).to_numpy()


def plot_stage1_vs_shrunken(
    idata: az.InferenceData,
    *,
    fit: MLMFit | None = None,
    covariate: object | None = None,
    level: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    labels: FeatureLabels | None = None,
    n_labels: int = 5,
    ax: Axes | None = None,
) -> Axes:
    """Posterior mean E[θ_j] (y) against the stage-1 estimate b̂_j (x), one point per feature.

    Points are coloured by group and sized by the standard error s_j (large points are
    noisy estimates, which shrink the most). Both axes are in Y's units. The diagonal y = x is
    no shrinkage, the dashed line the global mean θ0 (only for a fit in Y's units: in
    residual-SD units θ0 has none). Two hit lists at the same level ``alpha``: stage 1, BH-adjusted
    p < alpha (a black ring), and stage 2, q-value ≤ alpha (the mean lfsr of the list, as in
    ``coefficient_table(...)["called"]``; a filled point). Features on neither list are
    faded. The legend counts each kind; the ``n_labels`` features whose call differs
    between the stages, farthest from the diagonal first, are named. Features without a
    stage-1 estimate for the covariate (missing cells) are left out; the title counts them.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    fit
        The stage-1 fit, for its own BH-adjusted p-values; without it they come from
        normal tests of b̂_j / s_j.
    covariate
        The covariate to show (default: the first that is not the intercept).
    level
        The annotation level that colours the points (default: the finest of the fit).
    alpha
        Level of both lists: BH false discovery rate at stage 1, false sign rate at stage 2.
    labels
        Feature id → name (a dict, or a Series such as ``annotations["name"]``).
    n_labels
        How many features that change list to name.
    ax
        Axes to draw on (default: a new figure).

    Returns
    -------
    matplotlib.axes.Axes
    """
    check_alpha(alpha)
    covariate = pick_covariate(idata, covariate)
    groups = feature_groups(idata, level)
    problem = problem_from_idata(idata)
    given = problem.estimates.in_y_units()  # as results.stage1_estimates, from one read
    observed = ~given.missing.sel(covariate=covariate).to_numpy()
    estimate = given.estimate.sel(covariate=covariate).to_numpy()[observed]
    se = given.se.sel(covariate=covariate).to_numpy()[observed]
    moments = theta_moments(idata, covariate)
    shrunk = moments["mean"].to_numpy()[observed]
    stage1 = (_stage1_adjusted_pvalues(idata, covariate, fit) < alpha)[observed]
    stage2 = (qvalue(moments["lfsr"]) <= alpha).to_numpy()
    stage2 = stage2[observed]
    kind = np.select([stage1 & stage2, stage2, stage1], HIT_KINDS[:3], default=HIT_KINDS[3]).astype(
        object
    )

    ax = new_axes(ax, (7.5, 6.0))
    base = float(np.clip(300.0 / np.sqrt(len(se)), 6.0, 40.0))
    size = np.clip(base * (se / np.median(se)) ** 2, base / 4, base * 6)
    colors = np.asarray(groups.colors)[groups.codes[observed]]
    rasterized = len(shrunk) > 500
    faded = kind == "neither"
    ax.scatter(estimate[faded], shrunk[faded], s=size[faded], c=colors[faded], alpha=0.25,
               linewidths=0, rasterized=rasterized)  # fmt: skip
    called = stage2
    ax.scatter(estimate[called], shrunk[called], s=size[called], c=colors[called], alpha=0.9,
               linewidths=0, rasterized=rasterized, zorder=3)  # fmt: skip
    open_stage1 = stage1 & ~stage2
    ax.scatter(estimate[open_stage1], shrunk[open_stage1], s=size[open_stage1], facecolors="none",
               edgecolors=colors[open_stage1], linewidths=1.0, zorder=3)  # fmt: skip
    ax.scatter(estimate[stage1], shrunk[stage1], s=size[stage1] + 30, facecolors="none",
               edgecolors="black", linewidths=0.8, zorder=4)  # fmt: skip
    low = float(min(estimate.min(), shrunk.min()))
    high = float(max(estimate.max(), shrunk.max()))
    ax.plot([low, high], [low, high], color="0.5", lw=0.8, zorder=1)
    if problem.pooled and problem.residual_sd is None:  # θ0 has Y's units only then
        ax.axhline(posterior_mean(idata, "mu", covariate), color="0.3", ls="--", lw=1)
    names = feature_names(idata, labels)[observed]
    _name_changes(ax, names, estimate, shrunk, stage1 != stage2, n_labels)
    counts = {k: int((kind == k).sum()) for k in HIT_KINDS}
    handles = [
        Line2D(
            [], [], marker="o", ls="", mfc="0.3", mec="black", label=f"both lists: {counts['both']}"
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="0.3",
            mec="0.3",
            label=f"stage 2 only (q ≤ {alpha:g}): {counts['stage 2 only']}",
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="none",
            mec="black",
            label=f"stage 1 only (BH < {alpha:g}): {counts['stage 1 only']}",
        ),
        Line2D(
            [], [], marker="o", ls="", mfc="0.8", mec="0.8", label=f"neither: {counts['neither']}"
        ),
        Line2D([], [], color="0.5", lw=0.8, label="no shrinkage (y = x)"),
    ]
    if groups.level is not None and len(groups.labels) <= MAX_LEGEND_GROUPS:
        handles += [
            Line2D([], [], marker="o", ls="", color=color, label=str(label))
            for label, color in zip(groups.labels, groups.colors, strict=True)
        ]
    ax.legend(handles=handles, title=groups.level, fontsize="small", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False)  # fmt: skip
    ax.set_xlabel(f"stage-1 estimate b̂ ({covariate})")
    ax.set_ylabel(f"posterior mean of θ ({covariate})")
    n_missing = int((~observed).sum())
    ax.set_title(
        f"Stage 1 vs shrunken: {int(stage1.sum())} BH hits, {int(stage2.sum())} called at "
        f"stage 2 (level {alpha:g}); point area ∝ s²"
        + (f"\n{n_missing} feature(s) without a stage-1 estimate not shown" if n_missing else ""),
        fontsize="medium",
    )
    return ax


def _name_changes(
    ax: Axes,
    names: np.ndarray,
    estimate: np.ndarray,
    shrunk: np.ndarray,
    changed: np.ndarray,
    n_labels: int,
) -> None:
    """Name up to ``n_labels`` features whose call changes, farthest from y = x first."""
    candidates = np.flatnonzero(changed)
    distance = np.abs(estimate[candidates] - shrunk[candidates])
    for j in candidates[np.argsort(-distance, kind="stable")[:n_labels]]:
        ax.annotate(
            names[j],
            (estimate[j], shrunk[j]),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize="x-small",
            color="0.2",
        )
