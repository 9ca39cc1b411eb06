"""Tree-structured noise of the stage-1 estimates, estimated from the stage-1 residuals.

All m metabolites are measured on the same samples, so with ``Z = None`` the estimates of one
covariate k share their errors: ``Cov(b̂_k·) = c_kk Σ`` with ``c = (X'X)⁻¹`` and ``Σ`` the m × m
residual covariance (the standard errors of :func:`bayeshier_pymc.mlm.mlm` are the plain,
not sandwich, ones: ``se_kj² = c_kk Σ_jj``, the diagonal of this). A full ``Σ̂`` is poorly
estimated from tens of samples; the part of ``Σ`` that biases the tree model is the part that
aliases with the tree's own groups, and that part is modelled here as nested shared noise:

    e_ij = η_i + Σ_d η^d_{i, g_d(j)} + ε_ij,   Var η = top,  Var η^d_g = v_{d,g},  Var ε_ij = own_j,

so ``Cov(e_j, e_j') = top + Σ_{d ≥ meet(j, j')} v_{d, g_d(j)}``, where ``meet`` is the finest
level at which j and j' share a group. Each node's variance is one more known Gaussian variance
at that node of the tree (the tree algebra stays O(m)); per covariate every variance is
multiplied by ``c_kk``.

Estimation (moments of the residuals, top-down): for each node the average residual
covariance ``a_g`` of the pairs whose meet is that node, computed from per-sample group sums in
O(n m) (never the m × m matrix), with its sampling variance from the spread of the per-sample
contributions (as in :func:`bayeshier_pymc.covariance.covariance_and_variance`). The node's
variance is its increment over its parent's cumulative shared covariance. Per-node averages
differ strongly between groups and reproduce across independent halves of real data (liver
lipidome: correlation of per-class averages between halves 0.81–0.85; QMDiab 0.91–0.94), so a
single pooled value per level would misstate most groups; but a group of two metabolites has
one pair and a noisy average. ``pooling="partial"`` (default) therefore shrinks each node's
increment towards its level's mean by its sampling variance (normal–normal empirical Bayes,
between-node variance by moments); ``"none"`` keeps the raw increments, ``"complete"`` uses one
pooled increment per level. Negative increments are set to zero (variances); a node without
pairs (a single child) gets zero, its child carries its noise. Each metabolite keeps as its own
variance what remains of its residual variance after its shared path, at least
``min_own_share`` of it; a feature much quieter than its group's shared noise thus gets a total
variance above its own residual variance (conservative: on the liver lipidome 18% of the lipids,
median 1.24×; QMDiab 7%, median 1.41×).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bayeshier_pymc.covariance import residual_divisor
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit

__all__ = ["NodeVariances", "TreeNoise", "tree_noise"]

Pooling = Literal["partial", "none", "complete"]
POOLING_CHOICES = ("partial", "none", "complete")


@dataclass(frozen=True)
class NodeVariances:
    """Shared-noise variances at every node of a tree and each feature's own variance.

    Attributes
    ----------
    top
        Variance of the noise shared by all features.
    groups
        For each annotation level, finest first, the variance of each group's shared noise.
    own
        Each feature's own noise variance (positive).
    """

    top: float
    groups: tuple[np.ndarray, ...]
    own: np.ndarray

    def scaled(self, factor: float) -> NodeVariances:
        """Every variance multiplied by ``factor``."""
        return NodeVariances(
            self.top * factor, tuple(v * factor for v in self.groups), self.own * factor
        )


@dataclass(frozen=True, eq=False)
class TreeNoise:
    """Tree-structured residual noise and the per-covariate factors ``c_kk`` that scale it.

    Build it with :func:`tree_noise`.

    Attributes
    ----------
    hierarchy
        The tree the noise lives on, aligned to the features (in the fit's order).
    residual
        The variances of the residual noise ``Σ`` (covariate-free).
    covariate_scale
        ``c_kk = [(X'X)⁻¹]_kk`` by covariate: the estimates of covariate k have noise
        ``c_kk`` times ``residual``.
    estimation
        One row per node level (top first): estimable nodes, pooled increment, between-node
        sd, median sampling sd of a node's average and mean weight kept by each node's own
        average (1 = no pooling), as used by the estimator.
    """

    hierarchy: Hierarchy
    residual: NodeVariances
    covariate_scale: pd.Series
    estimation: pd.DataFrame

    @property
    def features(self) -> pd.Index:
        """Feature labels, in the order of every array."""
        return self.hierarchy.features

    def for_covariate(self, covariate: object) -> NodeVariances:
        """The noise variances of the estimates of ``covariate`` (``c_kk`` × residual)."""
        if covariate not in self.covariate_scale.index:
            raise ValueError(
                f"covariate {covariate!r} is not among the noise structure's covariates "
                f"{self.covariate_scale.index.tolist()!r}."
            )
        return self.residual.scaled(float(self.covariate_scale[covariate]))

    def align(self, features: object) -> TreeNoise:
        """The same noise restricted to ``features``, in that order (a node's variance stays).

        Raises
        ------
        ValueError
            For features the noise structure does not cover.
        """
        tree = self.hierarchy.align(features)
        kept = self.hierarchy.features.get_indexer(tree.features)
        groups = tuple(
            variances[self.hierarchy.groups[level].get_indexer(tree.groups[level])]
            for level, variances in enumerate(self.residual.groups)
        )
        residual = NodeVariances(self.residual.top, groups, self.residual.own[kept])
        return TreeNoise(tree, residual, self.covariate_scale, self.estimation)

    def shared_variance(self) -> np.ndarray:
        """Each feature's residual variance shared with others (the sum over its path)."""
        shared = np.full(self.hierarchy.n_features, self.residual.top)
        for level, variances in enumerate(self.residual.groups):
            shared += variances[self.hierarchy.membership(level)]
        return shared

    def covariance(self, covariate: object | None = None) -> np.ndarray:
        """The dense m × m covariance (residual, or of ``covariate``'s estimates); small m only.

        Parameters
        ----------
        covariate
            ``None`` for the residual covariance ``Σ``; a covariate label for ``c_kk Σ``.

        Returns
        -------
        numpy.ndarray
        """
        variances = self.residual if covariate is None else self.for_covariate(covariate)
        matrix = np.full((self.hierarchy.n_features,) * 2, variances.top)
        for level, group_variances in enumerate(variances.groups):
            codes = self.hierarchy.membership(level)
            matrix += (codes[:, None] == codes[None, :]) * group_variances[codes][:, None]
        matrix[np.diag_indices_from(matrix)] += variances.own
        return matrix


def tree_noise(
    fit: MLMFit,
    hierarchy: Hierarchy,
    *,
    pooling: Pooling = "partial",
    min_own_share: float = 0.05,
) -> TreeNoise:
    """Estimate tree-structured noise from a stage-1 fit's residuals.

    Parameters
    ----------
    fit
        A stage-1 fit with ``Z=None`` (one coefficient per feature).
    hierarchy
        The features' annotation tree (it may annotate more features than the fit has).
    pooling
        How node variances of one level borrow from each other: ``"partial"`` (default),
        ``"none"`` or ``"complete"`` (see the module docstring).
    min_own_share
        Smallest share in (0, 1] of a feature's residual variance kept as its own variance.

    Returns
    -------
    TreeNoise

    Raises
    ------
    ValueError
        For a fit with a feature design ``Z`` (the tree is over features, its coefficients
        are over Z's columns: ``Cov(b̂_k·) = c_kk A Σ A'`` is not tree-structured), an unknown
        ``pooling``, ``min_own_share`` outside (0, 1], or features the tree does not annotate.
    """
    if fit.per_feature:
        raise ValueError(
            "tree-structured noise is not estimated from a fit with missing='per-feature' "
            "(features fitted on different rows); use noise='independent'."
        )
    if fit.Z is not None:
        raise ValueError(
            "tree-structured noise needs a fit with Z=None: with a feature design the "
            "coefficients belong to Z's columns, whose errors (c_kk A Σ A') do not follow the "
            "features' tree."
        )
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLING_CHOICES}.")
    if not 0.0 < min_own_share <= 1.0:
        raise ValueError(f"min_own_share must lie in (0, 1], got {min_own_share}.")
    if not isinstance(hierarchy, Hierarchy):
        raise ValueError(f"hierarchy must be a Hierarchy, got {type(hierarchy).__name__}.")
    tree = hierarchy.align(fit.Y.columns)
    resid = fit.residuals.to_numpy()
    divisor = residual_divisor(fit.n_obs, fit.X.shape[1], fit.dof)
    residual_variance = fit.sigma.to_numpy()
    top, groups, estimation = _node_variances(resid, tree, divisor, pooling)
    shared = np.full(tree.n_features, top)
    for level, variances in enumerate(groups):
        shared += variances[tree.membership(level)]
    own = np.maximum(residual_variance - shared, min_own_share * residual_variance)
    scale = fit.coef_variance_factor.to_series()
    return TreeNoise(
        hierarchy=tree,
        residual=NodeVariances(top, tuple(groups), own),
        covariate_scale=scale.rename_axis("covariate").rename("c_kk"),
        estimation=estimation,
    )


@dataclass(frozen=True)
class _PairAverages:
    """Per node: average residual covariance of the pairs meeting there, its sampling variance."""

    mean: np.ndarray
    sampling_variance: np.ndarray
    n_pairs: np.ndarray


def _pair_averages(
    sums: np.ndarray,
    child_squares: np.ndarray,
    sizes: np.ndarray,
    child_size_squares: np.ndarray,
    divisor: int,
) -> _PairAverages:
    """Averages over the pairs of children-distinct members of each node.

    ``sums`` (n × nodes) are per-sample sums of residuals over each node's members and
    ``child_squares`` the per-sample sums over its children of their squared sums, so that
    ``(sums² - child_squares) / 2`` is each sample's sum of cross-products over those pairs.
    """
    n_obs = sums.shape[0]
    n_pairs = (sizes.astype(float) ** 2 - child_size_squares) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sample = (sums * sums - child_squares) / (2.0 * n_pairs)
    per_sample[:, n_pairs == 0] = 0.0
    mean = per_sample.sum(axis=0) / divisor
    spread = ((per_sample - per_sample.mean(axis=0)) ** 2).sum(axis=0)
    sampling_variance = spread * n_obs / (divisor**2 * (n_obs - 1))
    return _PairAverages(mean, sampling_variance, n_pairs)


def _node_variances(
    resid: np.ndarray, tree: Hierarchy, divisor: int, pooling: Pooling
) -> tuple[float, list[np.ndarray], pd.DataFrame]:
    """Top variance and per-level node variances, estimated top-down."""
    n_obs = resid.shape[0]
    # per level (features, then each annotation level): per-sample group sums and sizes
    sums = [resid]
    sizes = [np.ones(tree.n_features)]
    codes = [np.arange(tree.n_features)]
    for level in range(tree.depth):
        codes.append(tree.parents[level])
        n_groups = tree.n_groups[level]
        level_sums = np.zeros((n_obs, n_groups))
        np.add.at(level_sums.T, tree.parents[level], sums[-1].T)
        sums.append(level_sums)
        sizes.append(np.bincount(tree.parents[level], weights=sizes[-1], minlength=n_groups))

    def children_of(level: int, n_nodes: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        squares = np.zeros((n_obs, n_nodes))
        np.add.at(squares.T, index, (sums[level] ** 2).T)
        size_squares = np.bincount(index, weights=sizes[level] ** 2, minlength=n_nodes)
        return squares, size_squares

    top_children = np.zeros(sizes[-1].size, dtype=np.intp)
    squares, size_squares = children_of(tree.depth, 1, top_children)
    top_avg = _pair_averages(
        sums[-1].sum(axis=1, keepdims=True),
        squares,
        np.array([sizes[-1].sum()]),
        size_squares,
        divisor,
    )
    top = max(float(top_avg.mean[0]), 0.0) if top_avg.n_pairs[0] > 0 else 0.0
    rows = [_summary_row("top", top_avg, top_avg.mean, np.ones(1), float("nan"))]
    cumulative = np.array([top])
    groups: list[np.ndarray] = [np.empty(0)] * tree.depth
    for level in range(tree.depth, 0, -1):
        n_nodes = tree.n_groups[level - 1]
        parent = tree.parents[level] if level < tree.depth else np.zeros(n_nodes, dtype=np.intp)
        squares, size_squares = children_of(level - 1, n_nodes, tree.parents[level - 1])
        averages = _pair_averages(sums[level], squares, sizes[level], size_squares, divisor)
        raw = averages.mean - cumulative[parent]
        increment, weight, between = _pool(
            raw, averages.sampling_variance, averages.n_pairs, pooling
        )
        variances = np.where(averages.n_pairs > 0, np.maximum(increment, 0.0), 0.0)
        groups[level - 1] = variances
        rows.append(_summary_row(tree.levels[level - 1], averages, raw, weight, between))
        cumulative = cumulative[parent] + variances
    return top, groups, pd.DataFrame(rows).set_index("level")


def _pool(
    raw: np.ndarray, sampling_variance: np.ndarray, n_pairs: np.ndarray, pooling: Pooling
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pooled increments of one level's nodes, their kept weights, the between-node variance.

    The weight is the share each node keeps of its own average; the between-node variance is
    NaN where it is not estimated.
    """
    estimable = n_pairs > 0
    weight = np.ones_like(raw)
    if pooling == "none" or estimable.sum() < 2:
        return raw, weight, float("nan")
    x, se2 = raw[estimable], sampling_variance[estimable]
    if pooling == "complete":
        pooled = float(np.average(x, weights=n_pairs[estimable]))
        return np.full_like(raw, pooled), np.zeros_like(raw), 0.0
    between = max(float(np.var(x, ddof=1) - se2.mean()), 0.0)
    centre = float(np.average(x, weights=1.0 / (between + se2 + np.finfo(float).tiny)))
    kept = between / (between + sampling_variance) if between > 0 else np.zeros_like(raw)
    weight = np.where(estimable, kept, 1.0)
    return centre + weight * (raw - centre), weight, between


def _summary_row(
    level: str, averages: _PairAverages, raw: np.ndarray, weight: np.ndarray, between: float
) -> dict[str, object]:
    estimable = averages.n_pairs > 0
    if not estimable.any():
        return {"level": level, "estimable_nodes": 0}
    return {
        "level": level,
        "estimable_nodes": int(estimable.sum()),
        "mean_increment": float(raw[estimable].mean()),
        "between_node_sd": float(np.sqrt(between)),
        "median_sampling_sd": float(np.sqrt(np.median(averages.sampling_variance[estimable]))),
        "mean_weight_kept": float(weight[estimable].mean()),
    }
