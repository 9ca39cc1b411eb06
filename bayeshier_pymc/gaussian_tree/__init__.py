"""Exact Gaussian algebra on the annotation tree given the scales τ: the one reference.

With every τ fixed, the model

    b_j ~ N(θ_j, s_j²),  θ_j ~ N(u¹_h(j), τ_0²),  u¹_h ~ N(u²_g(h), τ_1²), …,  u^D ~ N(θ0, τ_D²),
    θ0 ~ N(mu0, s0²)

is jointly Gaussian on a tree. This module is the plain NumPy reference of everything the
package computes on that tree: the upward pass (the log marginal likelihood p(b | τ)), exact
downward draws from p(θ0, group means, θ | b, τ), the posterior mean and variance of every
unit, and the predictive of a held-out group (leave-one-group-out). The upward pass also runs
on PyTensor tensors (the collapsed PyMC model's graph for JAX, :mod:`.pytensor_ops`) through
:class:`ArrayOps`; :mod:`.kernels` holds the compiled (numba) versions the Gibbs engine and the
collapsed model's Op (:mod:`.log_marginal_op`) run, each tested against this reference. Each
formula has one numerically stable form, written here and copied verbatim by the kernels.

Glossary
--------
unit
    One Gaussian quantity of the tree: a θ_j, the mean of one group, or θ0.
level
    The units of one kind: level 0 the θ_j (one per feature), level d = 1..D the groups of the
    d-th annotation level (finest first), level D + 1 θ0 alone. ``depth`` is D, the number of
    annotation levels.
parent, children
    The unit one level up that a unit is drawn around (the groups of level D hang from θ0),
    and the units one level down drawn around it. A θ_j's only "child" is its estimate b_j.
scale, level variance
    ``tau[..., d]`` is the sd of the level-d units around their parents; the level variance
    τ_d² is their prior variance given the parent (:func:`level_variance`, the one place where
    τ enters). θ0 has the fixed prior N(mu0, s0²).
message
    ``N(y; u, v)``: the likelihood of all data below a unit as a function of its value u, up
    to a constant (y and v its mean and variance). A θ_j's message is its data, N(b_j; θ_j,
    s_j²). The messages of a unit's children, each widened by the level variance, multiply
    into the unit's message: the upward pass.
parent mean
    The value of a unit's parent; given it, the unit is N(parent mean, level variance) a priori.
posterior of a unit given its parent
    Prior N(parent mean, τ²) times the message N(y; u, v): mean w·y + (1 − w)·parent mean with
    w = τ² / (τ² + v), variance w·v (:func:`posterior_normal`). The downward pass draws every
    level from it, θ0 first.
cavity
    The distribution of a unit given all data except that below one of its children: what the
    child's subtree is predicted from when it is held out (:func:`group_log_predictive`).
outside
    The distribution of a unit given all data outside its own subtree.
row
    One independent copy of the tree problem (one covariate; in the Gibbs engine one
    (chain, covariate) pair). Arrays here have the rows in their leading axes.
shared noise, total
    With correlated stage-1 errors (:class:`NodeNoise`) every group node g and the top carry
    a known noise variance n_g shared by all features below them: b_j = θ_j + N_h(j) + ε_j
    with N_h the sum of the noise on h's path to the top and ε_j of variance ``var_b``. The
    algebra then runs on the *totals* T_u = effect_u + N_u (N_u the noise on u's path, T_j =
    θ_j + N_h(j) for a feature): the same tree, with level variance τ² + n_u and θ0's prior
    variance s0² + n_top (:func:`level_variance`, :func:`top_variance`). Given the totals, each
    node's increment T_u − T_parent splits into effect and noise independently of the others
    (:func:`split_totals`), which turns drawn totals into effects exactly.
local scale
    Under a heavy-tailed group prior (``Priors.group_prior``) every group g of the annotation
    levels used has its own scale λ_g around its parent: its level variance is τ_d² λ_g²
    (:func:`level_variance`). Given λ the tree stays Gaussian; every function here takes
    ``local``, the local variances λ² of the groups of the first ``len(local)`` annotation
    levels (finest first, each ``(..., n_groups)``), or ``None`` (every λ = 1).
lane layout
    The compiled kernels' layout: units first, rows last (units × rows), so that every
    innermost loop runs over rows, which share the tree, and vectorises whatever the group
    sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayeshier_pymc.hierarchy import Hierarchy

__all__ = [
    "LOG_2PI",
    "NUMPY_OPS",
    "ArrayOps",
    "Messages",
    "NodeNoise",
    "TreeIndex",
    "draw_noise",
    "draw_tree",
    "group_log_predictive",
    "leave_one_out_normal",
    "level_variance",
    "noise_log_density",
    "normal_log_density",
    "pad_scales",
    "pointwise_marginal",
    "posterior_moments",
    "posterior_normal",
    "split_totals",
    "top_variance",
    "upward_pass",
]

LOG_2PI = float(np.log(2.0 * np.pi))


def normal_log_density(deviation: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Log N(deviation; 0, variance), elementwise: the one NumPy form of the reference."""
    return -0.5 * (LOG_2PI + np.log(variance) + deviation * deviation / variance)


@dataclass(frozen=True)
class TreeIndex:
    """Integer structure of a tree of ``depth`` annotation levels over ``n_features`` features.

    ``parents[0]`` maps features to level-1 groups, ``parents[d]`` maps level-d groups to
    level-(d+1) groups; the groups of the last level all hang from θ0.
    """

    n_features: int
    parents: tuple[np.ndarray, ...]
    n_groups: tuple[int, ...]

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy) -> TreeIndex:
        """The integer structure of ``hierarchy``."""
        return cls(hierarchy.n_features, tuple(hierarchy.parents), hierarchy.n_groups)

    @property
    def depth(self) -> int:
        """Number of annotation levels."""
        return len(self.parents)

    @property
    def n_units(self) -> tuple[int, ...]:
        """Number of units per level: features, each annotation level's groups, then θ0."""
        return (self.n_features, *self.n_groups, 1)

    def parent_of(self, level: int) -> np.ndarray:
        """The parent of every unit of ``level`` (0..D); the top level's hang from θ0 (0)."""
        if level < self.depth:
            return self.parents[level]
        return np.zeros(self.n_units[level], dtype=np.intp)


@dataclass(frozen=True)
class ArrayOps:
    """The few array operations the tree algebra needs, for one array library."""

    log: Callable[[Any], Any]
    sum_last: Callable[[Any], Any]
    segment_sum: Callable[[Any, np.ndarray, int], Any]


def _numpy_segment_sum(values: np.ndarray, index: np.ndarray, n_segments: int) -> np.ndarray:
    """Sum ``values`` over its last axis into ``n_segments`` bins given by ``index``."""
    lead = values.shape[:-1]
    flat = values.reshape(-1, values.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * n_segments
    sums = np.bincount(
        (offsets + index[None, :]).ravel(),
        weights=flat.ravel(),
        minlength=flat.shape[0] * n_segments,
    )
    return sums.reshape(*lead, n_segments)


NUMPY_OPS = ArrayOps(log=np.log, sum_last=lambda x: x.sum(axis=-1), segment_sum=_numpy_segment_sum)


@dataclass(frozen=True)
class NodeNoise:
    """Known variances of the noise shared at the group nodes and the top of a tree.

    The leaves' own noise variance is the ``var_b`` every function takes; this holds the
    rest (see *shared noise* in the module docstring). Rows lead, as in every array here.

    Attributes
    ----------
    groups
        For each annotation level of the tree, finest first, shape ``(..., n_groups)``.
    top
        The noise shared by all features, shape ``(...,)``.
    """

    groups: tuple[Any, ...]
    top: Any

    def row(self, index: Any) -> NodeNoise:
        """The noise of the rows ``index`` (e.g. one covariate)."""
        return NodeNoise(tuple(g[index] for g in self.groups), self.top[index])


def level_variance(
    tau: Any,
    level: int,
    noise: NodeNoise | None = None,
    local: tuple[Any, ...] | None = None,
) -> Any:
    """Prior variance of the level-``level`` units around their parents.

    The one place where the scales enter the algebra: τ_level² (``tau`` is ``(..., D + 1)``),
    shape ``(..., 1)``; with local scales (``local``, see *local scale* in the module
    docstring) τ_level² λ_u², shape ``(..., n_units)``; with shared ``noise`` the totals'
    variance, that plus n_u, shape ``(..., n_units)`` (the features, level 0, carry no shared
    noise and no local scale of their own).
    """
    scale = tau[..., level][..., None]
    variance = scale * scale
    if local is not None and 1 <= level <= len(local):
        variance = variance * local[level - 1]
    if noise is None or level == 0:
        return variance
    return variance + noise.groups[level - 1]


def pad_scales(tau: np.ndarray, depth: int) -> np.ndarray:
    """Scales ``(..., k)`` padded with zeros to ``(..., depth + 1)``: levels without effects.

    A fit that uses fewer annotation levels than the tree of its noise has no effect variation
    at the levels above its depth; the algebra runs on the whole tree with those scales zero.
    """
    missing = depth + 1 - tau.shape[-1]
    if missing == 0:
        return tau
    return np.concatenate([tau, np.zeros((*tau.shape[:-1], missing))], axis=-1)


def top_variance(s0: float, noise: NodeNoise | None = None) -> Any:
    """Prior variance of θ0 (s0²), or of its total (s0² + n_top) with shared ``noise``."""
    return s0 * s0 if noise is None else s0 * s0 + noise.top


@dataclass(frozen=True)
class Messages:
    """Upward messages and the marginal likelihood.

    ``y`` and ``v`` hold one message per level (features first, then each annotation level,
    then θ0); ``log_marginal`` is ``log p(b | τ)`` summed over features.
    """

    y: tuple[Any, ...]
    v: tuple[Any, ...]
    log_marginal: Any


def upward_pass(
    b: Any,
    var_b: Any,
    tau: Any,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    ops: ArrayOps = NUMPY_OPS,
    noise: NodeNoise | None = None,
    local: tuple[Any, ...] | None = None,
) -> Messages:
    """Collapse the tree bottom-up given the scales.

    Parameters
    ----------
    b, var_b
        Estimates and their variances ``s²``, shape ``(..., m)``.
    tau
        Scales, shape ``(..., depth + 1)``: ``tau[..., 0]`` is the sd of θ_j around its group,
        ``tau[..., d]`` that of the level-d groups around their parents.
    tree
        The tree structure.
    mu0, s0
        Prior mean and sd of θ0.
    ops
        Array operations (NumPy by default; PyTensor for the PyMC model).
    noise
        Shared noise at the group nodes and the top (``var_b`` is then each feature's own
        noise variance); the messages are then about the totals.
    local
        The groups' local variances λ² (*local scale* in the module docstring), or ``None``.

    Returns
    -------
    Messages
        ``y[0], v[0]`` are ``b, var_b``; ``y[d], v[d]`` the messages of the level-d groups;
        ``y[-1], v[-1]`` that of θ0 (shape ``(...,)``); and ``log_marginal`` with shape
        ``(...,)``.

    Notes
    -----
    Per level, with P_h = Σ_children 1 / (v + τ²) and ȳ_h = Σ_children (y / (v + τ²)) / P_h,
    the level adds -½ Σ_children [log 2π (v + τ²) + (y - ȳ_parent)² / (v + τ²)]
    + ½ Σ_parents log (2π / P_h) to log p(b | τ), and the parents' messages are N(ȳ; u, 1/P).
    """
    ys, vs = [b], [var_b]
    log_marginal = 0.0
    y, v = b, var_b
    for level in range(tree.depth + 1):
        total_var = v + level_variance(tau, level, noise, local)
        precision = 1.0 / total_var
        if level < tree.depth:
            index, n_parents = tree.parents[level], tree.n_groups[level]

            def collect(x: Any, index: np.ndarray = index, n: int = n_parents) -> Any:
                return ops.segment_sum(x, index, n)

            def spread(x: Any, index: np.ndarray = index) -> Any:
                return x[..., index]

        else:

            def collect(x: Any) -> Any:
                return ops.sum_last(x)[..., None]

            def spread(x: Any) -> Any:
                return x

        parent_precision = collect(precision)
        parent_y = collect(precision * y) / parent_precision
        resid = y - spread(parent_y)
        n_children, n_parents = tree.n_units[level], tree.n_units[level + 1]
        log_marginal = (
            log_marginal
            - 0.5 * ops.sum_last(ops.log(total_var) + precision * resid * resid)
            - 0.5 * ops.sum_last(ops.log(parent_precision))
            - 0.5 * LOG_2PI * (n_children - n_parents)
        )
        y, v = parent_y, 1.0 / parent_precision
        ys.append(y)
        vs.append(v)
    y_top, v_top = y[..., 0], v[..., 0]
    total = v_top + top_variance(s0, noise)
    log_marginal = log_marginal - 0.5 * (
        LOG_2PI + ops.log(total) + (y_top - mu0) * (y_top - mu0) / total
    )
    ys[-1], vs[-1] = y_top, v_top
    return Messages(tuple(ys), tuple(vs), log_marginal)


def posterior_normal(
    prior_mean: np.ndarray, prior_var: np.ndarray, y: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of u given u ~ N(prior_mean, prior_var) and a message N(y; u, v).

    Written with weights ``prior_var / (prior_var + v)`` so that a scale near zero or a tiny
    standard error stays finite, and as a convex combination of ``y`` and ``prior_mean`` (not
    ``prior_mean + w (y - prior_mean)``) so that a huge ``prior_mean`` with ``w ≈ 1`` does not
    cancel ``y`` away. The compiled kernels (:mod:`.kernels`) use this form, term for term.
    """
    total = prior_var + v
    weight = prior_var / total
    return weight * y + (v / total) * prior_mean, weight * v


def draw_tree(
    messages: Messages,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    rng: np.random.Generator,
    noise: NodeNoise | None = None,
    local: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Draw θ0, the group means and θ exactly from p(· | b, τ), top-down.

    Each level is drawn from its posterior given its parent (:func:`posterior_normal`) as
    ``mean + sqrt(var) · z``, with one standard normal ``z`` per unit, θ0 first, then each
    level downwards, every level's normals drawn in one call in the tree's order of units.
    With shared ``noise`` these are draws of the totals, which :func:`split_totals` then
    turns into effects with one more normal per node (without noise no other normal is
    drawn, so the draws are those of the independent model).

    Parameters
    ----------
    messages
        The result of :func:`upward_pass` on NumPy arrays for the same ``tau`` and ``noise``.
    tau
        Scales, shape ``(..., depth + 1)``.
    tree
        The tree structure.
    mu0, s0
        Prior mean and sd of θ0.
    rng
        Random generator.
    noise
        Shared noise at the group nodes and the top, or ``None``.
    local
        The groups' local variances λ², or ``None`` (as :func:`upward_pass`).

    Returns
    -------
    theta0 : numpy.ndarray
        Shape ``(...,)``.
    group_means : list of numpy.ndarray
        For each annotation level, finest first, shape ``(..., n_groups)``.
    theta : numpy.ndarray
        Shape ``(..., m)``.
    """
    mean, var = posterior_normal(mu0, top_variance(s0, noise), messages.y[-1], messages.v[-1])
    theta0 = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
    values = theta0[..., None]
    draws: list[np.ndarray] = []
    for level in range(tree.depth, -1, -1):
        prior_mean = values[..., tree.parents[level]] if level < tree.depth else values
        mean, var = posterior_normal(
            prior_mean,
            level_variance(tau, level, noise, local),
            messages.y[level],
            messages.v[level],
        )
        values = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
        draws.append(values)
    theta = draws.pop()
    if noise is None:
        return theta0, draws[::-1], theta
    return split_totals(theta0, draws[::-1], theta, tau, tree, mu0, s0, noise, rng, local)


def split_totals(
    theta0_total: np.ndarray,
    group_totals: list[np.ndarray],
    feature_totals: np.ndarray,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    noise: NodeNoise,
    rng: np.random.Generator,
    local: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Effects θ0, group means and θ drawn exactly given the totals, top-down.

    Each node's increment T_u − T_parent is its effect increment, N(0, τ²) (τ² λ_u² with
    ``local``), plus its noise, N(0, n_u); given the totals these pairs are independent across
    nodes, and the noise is drawn from N(w · increment, w τ²) with w = n_u / (n_u + τ²) (0
    where both vanish). At
    the top, T0 − mu0 is θ0 − mu0, N(0, s0²), plus the top noise. A unit's effect is its total
    minus the noise on its path; a feature's, its total minus its parent's path noise.

    Returns
    -------
    tuple
        ``(theta0, group_means, theta)`` as :func:`draw_tree` returns them.
    """
    path_noise = _noise_given_increment(noise.top, s0 * s0, theta0_total - mu0, rng)
    theta0 = theta0_total - path_noise
    path_noise = path_noise[..., None]
    parent_total = theta0_total[..., None]
    group_means: list[np.ndarray] = []
    for level in range(tree.depth, 0, -1):
        parent = tree.parent_of(level)
        total = group_totals[level - 1]
        eta = _noise_given_increment(
            noise.groups[level - 1],
            level_variance(tau, level, local=local),
            total - parent_total[..., parent],
            rng,
        )
        path_noise = path_noise[..., parent] + eta
        group_means.insert(0, total - path_noise)
        parent_total = total
    theta = feature_totals - path_noise[..., tree.parent_of(0)]
    return theta0, group_means, theta


def _noise_given_increment(
    noise_var: Any, effect_var: Any, increment: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw η from p(η | η + δ = increment), η ~ N(0, noise_var), δ ~ N(0, effect_var)."""
    total = noise_var + effect_var
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(total > 0.0, noise_var / total, 0.0)
    mean = weight * increment
    return mean + np.sqrt(weight * effect_var) * rng.standard_normal(mean.shape)


def draw_noise(
    var_b: np.ndarray,
    tree: TreeIndex | None,
    noise: NodeNoise | None,
    rng: np.random.Generator,
    lead: tuple[int, ...] = (),
) -> np.ndarray:
    """Draws of the estimates' noise: N(0, var_b) each, plus the shared noise of every node.

    Parameters
    ----------
    var_b
        Own noise variances, shape ``(..., m)`` (rows, e.g. covariates, leading).
    tree
        The tree of the shared noise (``None`` without ``noise``).
    noise
        Shared-noise variances at the nodes, rows leading like ``var_b``; ``None``: the noise
        is independent.
    rng
        Random generator: the own noise is drawn first, then the top's, then each level's
        from the coarsest down.
    lead
        Leading shape of the draws (e.g. chain, draw).

    Returns
    -------
    numpy.ndarray
        Shape ``(*lead, ..., m)``.
    """
    own = np.sqrt(var_b) * rng.standard_normal((*lead, *np.shape(var_b)))
    if noise is None or tree is None:
        return own
    top = np.asarray(noise.top)
    path = (np.sqrt(top) * rng.standard_normal((*lead, *top.shape)))[..., None]
    for level in range(tree.depth, 0, -1):
        variances = noise.groups[level - 1]
        shared = np.sqrt(variances) * rng.standard_normal((*lead, *np.shape(variances)))
        path = path[..., tree.parent_of(level)] + shared
    return own + path[..., tree.parent_of(0)]


def noise_log_density(
    residual: Any,
    var_b: Any,
    tree: TreeIndex,
    noise: NodeNoise,
    ops: ArrayOps = NUMPY_OPS,
) -> Any:
    """Log N(residual; 0, Σ) for tree-structured noise Σ: the likelihood of b given θ.

    Σ has ``var_b`` on its diagonal plus, for every pair, the shared noise of the nodes they
    have in common: the upward pass with every scale zero and θ0 fixed at 0 (O(m), never
    the m × m matrix). ``residual`` is b − θ, shape ``(..., m)``; returns shape ``(...,)``.
    """
    zeros = np.zeros(tree.depth + 1)
    return upward_pass(residual, var_b, zeros, tree, 0.0, 0.0, ops, noise).log_marginal


def posterior_moments(
    messages: Messages,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    local: tuple[np.ndarray, ...] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Posterior mean and variance of every unit given b and τ, top-down.

    A unit u with parent p is N(w y + (1 - w) p, w v) given p and the data below u
    (:func:`posterior_normal`), and p is independent of the data below u given p's own
    posterior; so E[u | b] = w y + (1 - w) E[p | b] and Var[u | b] = w v + (1 - w)² Var[p | b].

    Parameters
    ----------
    messages
        The result of :func:`upward_pass` on NumPy arrays for the same ``tau``.
    tau, tree, mu0, s0, local
        As in :func:`upward_pass`.

    Returns
    -------
    means, variances : list of numpy.ndarray
        One array per level, features first, then each annotation level, then θ0 (shape
        ``(...,)``), like ``messages.y``.
    """
    mean, var = posterior_normal(mu0, s0 * s0, messages.y[-1], messages.v[-1])
    means, variances = [mean], [var]
    parent_mean, parent_var = mean[..., None], var[..., None]
    for level in range(tree.depth, -1, -1):
        index = tree.parent_of(level)
        prior_var = level_variance(tau, level, local=local)
        y, v = messages.y[level], messages.v[level]
        mean, conditional_var = posterior_normal(parent_mean[..., index], prior_var, y, v)
        parent_weight = v / (prior_var + v)
        var = conditional_var + parent_weight * parent_weight * parent_var[..., index]
        means.insert(0, mean)
        variances.insert(0, var)
        parent_mean, parent_var = mean, var
    return means, variances


def leave_one_out_normal(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    noise: NodeNoise | None = None,
    local: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the normal p(b_j | b_−j, τ), for every feature j.

    The predictive :func:`group_log_predictive` scores for single features, in the same
    form: b_j given its parent is N(parent, s_j² + τ_0²), and the parent's cavity (its
    belief given every other estimate) is N(m, 1 / P); so b_j | b_−j ~ N(m, s_j² + τ_0² + 1 / P).
    Built from precisions, never from a difference of variances, so that it stays exact when
    θ_j's parent is known almost only through b_j.

    Parameters
    ----------
    b, var_b, tau, tree, mu0, s0, noise, local
        As in :func:`upward_pass` (``b`` and ``var_b`` of shape ``(..., m)``).

    Returns
    -------
    mean, variance : numpy.ndarray
        Shape ``(..., m)``.
    """
    messages = upward_pass(b, var_b, tau, tree, mu0, s0, noise=noise, local=local)
    ys = [*messages.y[:-1], messages.y[-1][..., None]]
    vs = [*messages.v[:-1], messages.v[-1][..., None]]
    out_mean, out_var = _outside(ys, vs, tau, tree, 0, mu0, s0, noise, local)
    precision = 1.0 / (var_b + level_variance(tau, 0, noise))
    parent = tree.parent_of(0)
    cavity_mean, cavity_precision = _cavity(
        out_mean[..., parent],
        out_var[..., parent],
        1.0 / vs[1][..., parent],
        ys[1][..., parent],
        precision,
        b,
    )
    return cavity_mean, 1.0 / precision + 1.0 / cavity_precision


def pointwise_marginal(
    b: np.ndarray, var_b: np.ndarray, parent_mean: np.ndarray, tau: np.ndarray
) -> np.ndarray:
    """Log N(b_j; parent mean, s_j² + τ_0²): each estimate given θ_j's parent, θ_j integrated out.

    ``b``, ``var_b`` and ``parent_mean`` (the value of each θ_j's parent) have shape
    ``(..., m)``, ``tau`` ``(..., depth + 1)``.
    """
    return normal_log_density(b - parent_mean, var_b + level_variance(tau, 0))


def group_log_predictive(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    unit_level: int,
    to_group: np.ndarray,
    noise: NodeNoise | None = None,
    local: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """Log p(b_G | b_−G, τ) for every held-out group G of units of ``unit_level``.

    The units of ``unit_level`` (0 = features) are partitioned into groups by ``to_group``
    (all units of a group share one parent); the data below a group's units are held out
    together and predicted from the rest. The group's messages, combined into one message
    about the common parent, are integrated against the parent's cavity: its outside
    distribution (given all data outside its subtree) times its other children's messages.

    Parameters
    ----------
    b, var_b
        Estimates and their variances, shape ``(m,)``.
    tau
        Scales, shape ``(..., depth + 1)``.
    tree, mu0, s0
        As in :func:`upward_pass`.
    unit_level
        The level of the held-out units.
    to_group
        The group (0..G-1) of each unit of ``unit_level``.
    noise
        Shared noise at the group nodes and the top (``var_b`` the features' own noise), or
        ``None``. With correlated estimates this is the leave-one-out predictive of the
        non-factorised normal model (Bürkner, Gabry & Vehtari 2021).
    local
        The groups' local variances λ², or ``None`` (as :func:`upward_pass`).

    Returns
    -------
    numpy.ndarray
        Shape ``(..., G)``.
    """
    messages = upward_pass(b, var_b, tau, tree, mu0, s0, noise=noise, local=local)
    ys = [*messages.y[:-1], messages.y[-1][..., None]]
    vs = [*messages.v[:-1], messages.v[-1][..., None]]
    log_norm = _log_normalisers(ys, vs, tau, tree, unit_level, noise, local)
    out_mean, out_var = _outside(ys, vs, tau, tree, unit_level, mu0, s0, noise, local)
    # the held-out units' messages as functions of their common parent, combined per group
    precision = 1.0 / (vs[unit_level] + level_variance(tau, unit_level, noise, local))
    n_groups = int(to_group.max()) + 1
    group_precision = _numpy_segment_sum(precision, to_group, n_groups)
    group_y = _numpy_segment_sum(precision * ys[unit_level], to_group, n_groups)
    group_y = group_y / group_precision
    resid = ys[unit_level] - group_y[..., to_group]
    group_log_norm = _numpy_segment_sum(
        log_norm + 0.5 * (np.log(precision) - LOG_2PI) - 0.5 * precision * resid * resid,
        to_group,
        n_groups,
    ) - 0.5 * (np.log(group_precision) - LOG_2PI)
    # the cavity of the parent: its outside belief times its other children's messages
    parent = tree.parent_of(unit_level)[_first_unit(to_group, n_groups)]
    cavity_mean, cavity_precision = _cavity(
        out_mean[..., parent],
        out_var[..., parent],
        1.0 / vs[unit_level + 1][..., parent],
        ys[unit_level + 1][..., parent],
        group_precision,
        group_y,
    )
    total = 1.0 / group_precision + 1.0 / cavity_precision
    return group_log_norm + normal_log_density(group_y - cavity_mean, total)


def _first_unit(to_group: np.ndarray, n_groups: int) -> np.ndarray:
    """Index of one unit of every group (all units of a group share a parent)."""
    first = np.empty(n_groups, dtype=np.intp)
    first[to_group[::-1]] = np.arange(len(to_group))[::-1]
    return first


def _log_normalisers(
    ys: list[np.ndarray],
    vs: list[np.ndarray],
    tau: np.ndarray,
    tree: TreeIndex,
    unit_level: int,
    noise: NodeNoise | None,
    local: tuple[np.ndarray, ...] | None,
) -> np.ndarray:
    """Log C_u with ∏ (data below unit u) = C_u · N(y_u; u, v_u), for the units of a level."""
    log_norm = np.zeros(ys[0].shape)
    for level in range(unit_level):
        parent, n_parents = tree.parents[level], tree.n_groups[level]
        total = vs[level] + level_variance(tau, level, noise, local)
        resid = ys[level] - ys[level + 1][..., parent]
        log_norm = _numpy_segment_sum(
            log_norm + normal_log_density(resid, total),
            parent,
            n_parents,
        ) + 0.5 * (LOG_2PI + np.log(vs[level + 1]))
    return np.broadcast_to(log_norm, ys[unit_level].shape)


def _outside(
    ys: list[np.ndarray],
    vs: list[np.ndarray],
    tau: np.ndarray,
    tree: TreeIndex,
    unit_level: int,
    mu0: float,
    s0: float,
    noise: NodeNoise | None,
    local: tuple[np.ndarray, ...] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of every level-(unit_level + 1) unit given the data outside it.

    ``ys``, ``vs`` are the upward messages with θ0's as a one-unit level.
    """
    shape = ys[-1].shape
    mean = np.full(shape, float(mu0))
    var = np.broadcast_to(top_variance(s0, noise), shape[:-1])[..., None] * np.ones(shape)
    for level in range(tree.depth, unit_level, -1):
        parent = tree.parent_of(level)
        prior_var = level_variance(tau, level, noise, local)
        mean, precision = _cavity(
            mean[..., parent],
            var[..., parent],
            1.0 / vs[level + 1][..., parent],
            ys[level + 1][..., parent],
            1.0 / (vs[level] + prior_var),
            ys[level],
        )
        var = 1.0 / precision + prior_var
    return mean, var


def _cavity(
    outside_mean: np.ndarray,
    outside_var: np.ndarray,
    message_precision: np.ndarray,
    message_y: np.ndarray,
    held_precision: np.ndarray,
    held_y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of a unit given the data outside it and all but some of its children.

    Its outside distribution N(outside_mean, outside_var) times its message (precision
    ``message_precision``, mean ``message_y``) divided by the held-out children's (precision
    ``held_precision``, mean ``held_y``). An outside variance of zero (θ0 known exactly: no
    pooling, whose θ0 is mu0, without shared noise at the top) stays a point mass: precision
    infinite, mean ``outside_mean``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = 1.0 / outside_var + np.maximum(message_precision - held_precision, 0.0)
        mean = (
            outside_mean / outside_var + message_precision * message_y - held_precision * held_y
        ) / precision
    return np.where(outside_var > 0.0, mean, outside_mean), precision
