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
differ strongly between groups and reproduce across independent halves of real data (the
per-class averages of the liver lipidome and QMDiab correlate strongly between halves), so a
single pooled value per level would misstate most groups; but a group of two metabolites has
one pair and a noisy average. ``pooling="partial"`` (default) therefore shrinks each node's
increment towards its level's mean by its sampling variance (normal–normal empirical Bayes,
between-node variance by moments); ``"none"`` keeps the raw increments, ``"complete"`` uses one
pooled increment per level. Negative increments are set to zero (variances); a node without
pairs (a single child) gets zero, its child carries its noise. Each metabolite keeps as its own
variance what remains of its residual variance after its shared path, at least
``min_own_share`` of it; a feature much quieter than its group's shared noise thus gets a total
variance above its own residual variance (conservative; on the liver lipidome and QMDiab a
minority of the features).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bayeshier_pymc.covariance import residual_divisor
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit

__all__ = ["NodeVariances", "TreeNoise", "path_variance", "tree_noise"]

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
    own_by_covariate
        For a stage-1 fit with missing values (``missing="per-feature"``), each estimate's own
        variance (covariate × feature; NaN where the feature has no estimate): each feature
        has its own ``c_kk`` there, so its own variance is not ``c_kk`` × ``residual.own``.
        ``None`` otherwise.
    """

    hierarchy: Hierarchy
    residual: NodeVariances
    covariate_scale: pd.Series
    estimation: pd.DataFrame
    own_by_covariate: pd.DataFrame | None = None

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
        scaled = self.residual.scaled(float(self.covariate_scale[covariate]))
        if self.own_by_covariate is None:
            return scaled
        own = self.own_by_covariate.loc[covariate].to_numpy(dtype=float)
        return NodeVariances(scaled.top, scaled.groups, own)

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
        own_by_covariate = (
            None if self.own_by_covariate is None else self.own_by_covariate[tree.features]
        )
        return TreeNoise(tree, residual, self.covariate_scale, self.estimation, own_by_covariate)

    def shared_variance(self) -> np.ndarray:
        """Each feature's residual variance shared with others (the sum over its path)."""
        return path_variance(self.hierarchy, self.residual.top, self.residual.groups)

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


def path_variance(
    hierarchy: Hierarchy,
    top: float | np.ndarray,
    groups: Sequence[np.ndarray],
    own: np.ndarray | None = None,
) -> np.ndarray:
    """Each feature's noise variance along its path in the tree: own + top + its groups'.

    The diagonal of the tree-structured noise covariance: the variance of the noise shared by
    all features, plus at every level that of the feature's group, plus (with ``own``) the
    feature's own. Leading axes (e.g. covariates) broadcast.

    Parameters
    ----------
    hierarchy
        The tree of the noise, aligned to the features.
    top
        Variance of the noise shared by all features, shape ``(...,)``.
    groups
        For each annotation level, finest first, the variance of each group's shared noise,
        shape ``(..., n_groups)``.
    own
        Each feature's own variance, shape ``(..., m)``; ``None``: the shared part only.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., m)``.
    """
    shared = np.asarray(top)[..., None]
    if own is None:
        total = np.full((*shared.shape[:-1], hierarchy.n_features), shared)
    else:
        total = own + shared
    for level, variances in enumerate(groups):
        total = total + np.asarray(variances)[..., hierarchy.membership(level)]
    return total


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
    observed = ~np.isnan(resid) if fit.per_feature else None
    top, groups, estimation = _node_variances(resid, tree, divisor, pooling, observed)
    shared = path_variance(tree, top, groups)
    own = np.maximum(residual_variance - shared, min_own_share * residual_variance)
    if not fit.per_feature:
        scale = fit.coef_variance_factor.to_series()
        return TreeNoise(
            hierarchy=tree,
            residual=NodeVariances(top, tuple(groups), own),
            covariate_scale=scale.rename_axis("covariate").rename("c_kk"),
            estimation=estimation,
        )
    assert observed is not None
    scale = pd.Series(
        shared_factor(fit.X.to_numpy(), observed),
        index=pd.Index(fit.X.columns, name="covariate"),
        name="c_kk",
    )
    # each estimate's own variance: its total se² less the shared part, kept positive
    total = fit.se.to_numpy() ** 2
    shared_by_covariate = scale.to_numpy()[:, None] * shared[None, :]
    own_by_covariate = np.maximum(total - shared_by_covariate, min_own_share * total)
    return TreeNoise(
        hierarchy=tree,
        residual=NodeVariances(top, tuple(groups), own),
        covariate_scale=scale,
        estimation=estimation,
        own_by_covariate=pd.DataFrame(
            own_by_covariate, index=scale.index, columns=pd.Index(tree.features, name="feature")
        ),
    )


def shared_factor(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """The factor of the shared noise of each covariate's estimates when rows are missing.

    Features j and l fitted on their own complete rows R_j, R_l have
    Cov(b̂_kj, b̂_kl) = [(X_j'X_j)⁻¹ X_j' D_jl X_l (X_l'X_l)⁻¹]_kk Σ_jl (``D_jl`` keeps the
    rows of both). With rows missing at random, X_j'X_j ≈ π_j X'X and X_j' D_jl X_l ≈
    π_jl X'X (π the observed fractions), so the factor is c_kk π_jl / (π_j π_l), c = (X'X)⁻¹
    on all rows. The tree carries one factor per covariate: c_kk times the average of
    π_jl / (π_j π_l) over the pairs of features, exact in O(n m):
    Σ_{j≠l} π_jl / (π_j π_l) = (1/n) Σ_i (Σ_j o_ij / π_j)² − Σ_j 1 / π_j.
    (Independent missingness gives π_jl = π_j π_l: the complete-data c_kk.)

    Parameters
    ----------
    x
        The design on all rows (n × p).
    observed
        Which responses were observed (n × m).
    """
    n_obs, n_features = observed.shape
    c = np.diag(np.linalg.inv(x.T @ x))
    if n_features < 2:
        return c
    fraction = observed.mean(axis=0)
    used = fraction > 0
    weighted = observed[:, used] / fraction[used]
    pair_sum = float((weighted.sum(axis=1) ** 2).sum() / n_obs - (1.0 / fraction[used]).sum())
    n_used = int(used.sum())
    return c * pair_sum / (n_used * (n_used - 1)) if n_used > 1 else c


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
    pair_counts: np.ndarray | None = None,
) -> _PairAverages:
    """Averages over the pairs of children-distinct members of each node.

    ``sums`` (n × nodes) are per-sample sums of residuals over each node's members and
    ``child_squares`` the per-sample sums over its children of their squared sums, so that
    ``(sums² - child_squares) / 2`` is each sample's sum of cross-products over those pairs.
    With missing residuals (counted as zero in the sums) ``pair_counts`` (n × nodes) holds
    each sample's number of pairs observed in both: the average is then over the pairwise-
    complete products, Σ_i cross-products / mean_i(pairs) / divisor.
    """
    n_obs = sums.shape[0]
    n_pairs = (sizes.astype(float) ** 2 - child_size_squares) / 2.0
    if pair_counts is not None:
        n_pairs = pair_counts.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_sample = (sums * sums - child_squares) / (2.0 * n_pairs)
    per_sample[:, n_pairs == 0] = 0.0
    mean = per_sample.sum(axis=0) / divisor
    spread = ((per_sample - per_sample.mean(axis=0)) ** 2).sum(axis=0)
    sampling_variance = spread * n_obs / (divisor**2 * (n_obs - 1))
    return _PairAverages(mean, sampling_variance, n_pairs)


def _node_variances(
    resid: np.ndarray,
    tree: Hierarchy,
    divisor: int,
    pooling: Pooling,
    observed: np.ndarray | None = None,
) -> tuple[float, list[np.ndarray], pd.DataFrame]:
    """Top variance and per-level node variances, estimated top-down.

    With ``observed`` (n × m, missing residuals NaN) the averages are over the pairwise-
    complete products (:func:`_pair_averages`).
    """
    # per level (features, then each annotation level): per-sample group sums and sizes
    sums = [resid if observed is None else np.where(observed, resid, 0.0)]
    counts = None if observed is None else [observed.astype(float)]
    sizes = [np.ones(tree.n_features)]
    for level in range(tree.depth):
        n_groups = tree.n_groups[level]
        sums.append(_group_sums(sums[-1], tree.parents[level], n_groups))
        if counts is not None:
            counts.append(_group_sums(counts[-1], tree.parents[level], n_groups))
        sizes.append(np.bincount(tree.parents[level], weights=sizes[-1], minlength=n_groups))

    def pairs_of(level_sums: np.ndarray, level: int, index: np.ndarray, n: int) -> np.ndarray:
        """Per sample, the pairs of children-distinct members observed together."""
        assert counts is not None
        return (level_sums**2 - _group_sums(counts[level] ** 2, index, n)) / 2.0

    def children_of(level: int, n_nodes: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        squares = _group_sums(sums[level] ** 2, index, n_nodes)
        size_squares = np.bincount(index, weights=sizes[level] ** 2, minlength=n_nodes)
        return squares, size_squares

    top_children = np.zeros(sizes[-1].size, dtype=np.intp)
    squares, size_squares = children_of(tree.depth, 1, top_children)
    top_counts = None
    if counts is not None:
        top_counts = pairs_of(counts[-1].sum(axis=1, keepdims=True), tree.depth, top_children, 1)
    top_avg = _pair_averages(
        sums[-1].sum(axis=1, keepdims=True),
        squares,
        np.array([sizes[-1].sum()]),
        size_squares,
        divisor,
        top_counts,
    )
    top = max(float(top_avg.mean[0]), 0.0) if top_avg.n_pairs[0] > 0 else 0.0
    rows = [_summary_row("top", top_avg, top_avg.mean, np.ones(1), float("nan"))]
    cumulative = np.array([top])
    groups: list[np.ndarray] = [np.empty(0)] * tree.depth
    for level in range(tree.depth, 0, -1):
        n_nodes = tree.n_groups[level - 1]
        parent = tree.parents[level] if level < tree.depth else np.zeros(n_nodes, dtype=np.intp)
        squares, size_squares = children_of(level - 1, n_nodes, tree.parents[level - 1])
        level_counts = None
        if counts is not None:
            level_counts = pairs_of(counts[level], level - 1, tree.parents[level - 1], n_nodes)
        averages = _pair_averages(
            sums[level], squares, sizes[level], size_squares, divisor, level_counts
        )
        raw = averages.mean - cumulative[parent]
        increment, weight, between = _pool(
            raw, averages.sampling_variance, averages.n_pairs, pooling
        )
        variances = np.where(averages.n_pairs > 0, np.maximum(increment, 0.0), 0.0)
        groups[level - 1] = variances
        rows.append(_summary_row(tree.levels[level - 1], averages, raw, weight, between))
        cumulative = cumulative[parent] + variances
    return top, groups, pd.DataFrame(rows).set_index("level")


def _group_sums(values: np.ndarray, index: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-sample sums (n × groups) of the columns of ``values`` (n × units) by group."""
    out = np.zeros((values.shape[0], n_groups))
    np.add.at(out.T, index, values.T)
    return out


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
