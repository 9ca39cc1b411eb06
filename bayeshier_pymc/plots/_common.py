"""Shared helpers of the plots: axes, covariate choice, group membership and colours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb

from bayeshier_pymc.design import INTERCEPT_NAMES
from bayeshier_pymc.inference_data import problem_from_idata, residual_sd

ALL_FEATURES = "all features"
MAX_LEGEND_GROUPS = 12
"""Most groups named one by one in a legend (more would hide the figure)."""

FeatureLabels = Mapping[object, object] | pd.Series
"""Feature id → name: a dict, or a Series indexed by feature id (an annotation column)."""


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the axes of a new figure of ``figsize``."""
    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def pick_covariate(idata: az.InferenceData, covariate: object | None) -> object:
    """The covariate to plot: ``covariate``, or the first that is not the intercept."""
    covariates = idata.posterior["covariate"].to_numpy().tolist()
    if covariate is None:
        return next((c for c in covariates if c not in INTERCEPT_NAMES), covariates[0])
    if covariate not in covariates:
        raise ValueError(f"unknown covariate {covariate!r}; the fit has {covariates!r}.")
    return covariate


@dataclass(frozen=True)
class Groups:
    """Membership of every feature in the groups of one level.

    Attributes
    ----------
    level
        The level name, or ``None`` when the fit has no annotation level.
    labels
        Group labels.
    codes
        Group of every feature (index into ``labels``).
    colors
        One colour per group.
    """

    level: str | None
    labels: pd.Index
    codes: np.ndarray
    colors: list[str]

    @property
    def sizes(self) -> np.ndarray:
        """Number of features per group."""
        return np.bincount(self.codes, minlength=len(self.labels))


def feature_groups(idata: az.InferenceData, level: str | None) -> Groups:
    """The groups of ``level`` (default: the finest level of the fit) for every feature."""
    problem = problem_from_idata(idata)
    tree = problem.tree
    levels = list(tree.levels) if tree is not None else []
    n_features = len(problem.features)
    if tree is None or not levels:
        if level is not None:
            raise ValueError(f"level {level!r} given, but the fit has no annotation level.")
        return Groups(None, pd.Index([ALL_FEATURES]), np.zeros(n_features, np.intp), ["0.35"])
    level = levels[0] if level is None else level
    if level not in levels:
        raise ValueError(f"unknown level {level!r}; the fit used {levels!r}.")
    labels = pd.Index(tree.groups[levels.index(level)])
    codes = tree.membership(level)
    return Groups(level, labels, codes.astype(np.intp), group_colors(len(labels)))


def group_colors(n: int) -> list[str]:
    """``n`` distinguishable colours: tab10 / tab20, then evenly spaced on a wide colormap."""
    if n <= 10:
        return [to_hex(c) for c in plt.get_cmap("tab10").colors[:n]]
    if n <= 20:
        return [to_hex(c) for c in plt.get_cmap("tab20").colors[:n]]
    return [to_hex(c) for c in plt.get_cmap("turbo")(np.linspace(0.05, 0.95, n))]


def text_color(color: str) -> str:
    """``color`` darkened enough to read as text on white or light grey."""
    return to_hex(tuple(0.7 * c for c in to_rgb(color)))


def units_suffix(idata: az.InferenceData) -> str:
    """`` (residual-SD units)`` for a fit in those units (its group means, scales), else ``""``."""
    return "" if residual_sd(idata) is None else " (residual-SD units)"


def posterior_mean(idata: az.InferenceData, name: str, covariate: object) -> np.ndarray:
    """Posterior mean of ``name`` for one covariate."""
    return idata.posterior[name].sel(covariate=covariate).mean(("chain", "draw")).to_numpy()


def feature_names(idata: az.InferenceData, labels: FeatureLabels | None) -> np.ndarray:
    """The name shown for every feature of the fit: ``labels[feature]``, or its id.

    Features that ``labels`` does not name (absent or missing) keep their id.

    Raises
    ------
    ValueError
        If ``labels`` is not a mapping or Series, has duplicated ids, or names none of the
        fit's features.
    """
    ids = idata.constant_data["feature"].to_numpy()
    if labels is None:
        return ids.astype(str)
    if isinstance(labels, pd.DataFrame) or not isinstance(labels, Mapping | pd.Series):
        raise ValueError(
            "labels must map feature ids to names: a dict or a Series indexed by feature "
            f"(e.g. annotations['name']), got {type(labels).__name__}."
        )
    names = pd.Series(labels, dtype=object) if not isinstance(labels, pd.Series) else labels
    if names.index.has_duplicates:
        duplicated = names.index[names.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"labels name some features more than once: {duplicated!r}.")
    found = names.reindex(pd.Index(ids, dtype=object))
    if found.isna().all():
        raise ValueError(
            f"labels name none of the fit's features (e.g. {ids[0]!r}); index them by the "
            "feature ids of the fit."
        )
    return np.where(found.isna(), ids.astype(str), found.astype(str).to_numpy())
