"""Compiled (numba) versions of the tree algebra, for the Gibbs engine and the θ writer.

Each kernel computes what a function of :mod:`bayeshier_pymc.gaussian_tree` computes, with
the same formulas, and is tested against it (``tests/test_tree_kernels.py``). The terms
(unit, level, message, row, lane layout, …) are those of the package's glossary there.

:func:`upward_pass_from`
    The upward pass of every row at once in lane layout, from one level up (a change of τ_l
    leaves the levels below l unchanged): the terms of log p(b | τ) and the messages.
:func:`draw_children`
    One level of the downward draw: every unit from its posterior given its parent.
:func:`pointwise_marginal`
    The marginal log-likelihood of every b_j given its parent's value, θ_j integrated out.
:func:`write_theta_draw`
    The θ writer's job for one stored draw: θ given its parents and τ_w, with the pointwise
    marginal log-likelihood and the conditional one summed.
:func:`split_totals`
    The split of drawn totals into effects, every group and θ0 of every row in one pass.
:func:`write_correlated_theta_draw`
    The same with tree-structured (shared) noise: θ's total given its parent's total, less
    the parent's path noise, and log N(b; θ, Σ) summed (:func:`noise_quadratic`).
:func:`leave_one_out_moments`
    The leave-one-out predictive p(b_j | b_−j, τ) of every feature of one row, shared noise
    or not: its mean and variance, in O(m).
:func:`leave_one_out_parent_terms`, :func:`held_out_log_density`
    The same split in two: the O(m) passes keep four numbers per parent of θ, from which the
    log predictive of any set of features follows in O(1) each (LOO a chunk of features at a
    time, in summary storage).

With shared noise (*shared noise, total* in the glossary) the upward pass and the downward
draws run on the totals: every unit of the groups' levels and θ0 carries its noise variance
in :attr:`LaneProblem.noise`, added to its level variance (zeros for independent estimates,
which leaves every number as it was).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from bayeshier_pymc._numba import compiled_kernel, inline_kernel, vector_kernel
from bayeshier_pymc.gaussian_tree import (
    NodeNoise,
    TreeIndex,
    level_variance,
    noise_log_density,
    top_variance,
    upward_pass,
)

__all__ = [
    "LEAVE_ONE_OUT_PARENT_TERMS",
    "LEAVE_ONE_OUT_WORK",
    "LOG_BLOCK",
    "LaneMessages",
    "LaneProblem",
    "LaneScratch",
    "LeaveOneOutTree",
    "NoisePrecision",
    "SortedTree",
    "SplitTree",
    "ThetaData",
    "ThetaStores",
    "TotalStores",
    "draw_children",
    "held_out_log_density",
    "lane_problem",
    "leave_one_out_moments",
    "leave_one_out_parent_terms",
    "leave_one_out_tree",
    "level_variance_gradient",
    "log_marginal_and_gradient",
    "log_marginal_and_local_gradient",
    "log_normal",
    "node_variance_gradient",
    "noise_precision",
    "noise_quadratic",
    "pointwise_marginal",
    "posterior_normal",
    "sort_tree",
    "split_totals",
    "sum_log",
    "upward_pass_from",
    "write_correlated_theta_draw",
    "write_theta_draw",
]

LOG_BLOCK = 32
"""Values multiplied together before one logarithm is taken in :func:`sum_log`."""
_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


class LaneProblem(NamedTuple):
    """The data, tree and θ0 prior of every row, in lane layout (units × rows).

    Attributes
    ----------
    b, var_b
        Estimates and their variances, features × rows.
    first_child
        For each level 0..D in turn, the first child of each of its parents (children sorted
        by parent, so a parent's children are ``first_child[h]:first_child[h + 1]``), all
        levels concatenated.
    first_child_offsets
        Where each level's ``first_child`` entries begin (D + 2 offsets).
    message_offsets
        Where the units of each level 1..D + 1 begin in a :class:`LaneMessages` array (index
        0 unused, equal to index 1; the last entry is the total).
    mu0, s0
        Mean and sd of θ0's prior, one per row.
    noise
        The shared-noise variance of every unit of levels 1..D + 1 (θ0's last), at the
        units' places in a :class:`LaneMessages` array; zeros for independent estimates.
    """

    b: np.ndarray
    var_b: np.ndarray
    first_child: np.ndarray
    first_child_offsets: np.ndarray
    message_offsets: np.ndarray
    mu0: np.ndarray
    s0: np.ndarray
    noise: np.ndarray


class LaneMessages(NamedTuple):
    """The messages N(y; u, v) to every unit of levels 1..D + 1, stacked, in lane layout."""

    y: np.ndarray
    v: np.ndarray


class LaneScratch(NamedTuple):
    """Work arrays of :func:`upward_pass_from`, each at least as large as ``b``."""

    variance: np.ndarray
    precision: np.ndarray


@inline_kernel
def posterior_normal(
    prior_mean: float, prior_var: float, y: float, v: float
) -> tuple[float, float]:  # pragma: no cover - compiled
    """Mean and variance of N(prior_mean, prior_var) × N(y; u, v): the reference's form.

    See :func:`bayeshier_pymc.gaussian_tree.posterior_normal` (convex combination, weights
    ``prior_var / (prior_var + v)``).
    """
    total = prior_var + v
    weight = prior_var / total
    return weight * y + (v / total) * prior_mean, weight * v


@numba.vectorize(["float64(float64, float64)"], cache=True)
def log_normal(deviation: float, variance: float) -> float:  # pragma: no cover - compiled
    """Log N(deviation; 0, variance), elementwise.

    A NumPy ufunc (arrays broadcast), also callable with scalars from compiled code. Kernels
    compile it in (:func:`write_theta_draw`, ``log_likelihood``), and numba's disk cache does
    not see when it changes: after editing it, delete the cached ``*.nbi``/``*.nbc`` files.
    """
    return -0.5 * (deviation * deviation / variance + np.log(variance)) - _HALF_LOG_2PI


# ------------------------------------------------------------------------------ upward pass
@vector_kernel
def sum_log(values: np.ndarray, total: np.ndarray) -> None:  # pragma: no cover - compiled
    """Add Σ_j log ``values[j, r]`` to ``total[r]`` (positive values, units × rows).

    One logarithm per product of ``LOG_BLOCK`` values of a row; a block whose product leaves
    the range of normal floats is summed value by value.
    """
    n_values, n_rows = values.shape
    product = np.empty(n_rows)
    for start in range(0, n_values, LOG_BLOCK):
        stop = min(start + LOG_BLOCK, n_values)
        product[:] = 1.0
        for j in range(start, stop):
            for r in range(n_rows):
                product[r] *= values[j, r]
        for r in range(n_rows):
            if 1e-300 < product[r] < 1e300:
                total[r] += np.log(product[r])
            else:
                for j in range(start, stop):
                    total[r] += np.log(values[j, r])


@vector_kernel
def level_term(
    child_y: np.ndarray,
    child_v: np.ndarray,
    level_var: np.ndarray,
    unit_noise: np.ndarray,
    unit_local: np.ndarray,
    first_child: np.ndarray,
    parent_y: np.ndarray,
    parent_v: np.ndarray,
    scratch: LaneScratch,
    term: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Integrate out one level's units given their messages N(y; u, v) and level variance.

    The level's contribution to log p(b | τ), up to a constant, goes to ``term`` (one per
    row): -½ Σ_units [log(v + τ²) + (y - ȳ_parent)² / (v + τ²)] - ½ Σ_parents log P, with P
    and ȳ the precision and precision-weighted mean of the children of each parent; the
    messages N(ȳ; u, 1/P) to the parents go to ``parent_y``, ``parent_v``. With local
    scales each unit's τ² is τ² λ_u² (``unit_local``: λ², units × rows; no rows: none); with
    shared noise n_u is added (``unit_noise``, units × rows; no rows: none).

    Lane layout: ``child_y``, ``child_v`` are units × rows, ``parent_y``, ``parent_v``
    parents × rows, ``level_var`` one per row. Two exact rearrangements keep the pass cheap:
    Σ (y - ȳ)² / (v + τ²) = S2 - S1²/P from the weighted sums S1, S2 of y shifted by the
    parent's first child (which keeps them well conditioned), and the logarithms of every
    v + τ² and every P are summed by :func:`sum_log`, one per ``LOG_BLOCK`` values.
    """
    n_units, n_rows = child_y.shape
    n_parents = first_child.size
    variance, precision = scratch
    if unit_local.shape[0]:
        for j in range(n_units):
            for r in range(n_rows):
                variance[j, r] = child_v[j, r] + level_var[r] * unit_local[j, r]
    else:
        for j in range(n_units):
            for r in range(n_rows):
                variance[j, r] = child_v[j, r] + level_var[r]
    if unit_noise.shape[0]:
        for j in range(n_units):
            for r in range(n_rows):
                variance[j, r] += unit_noise[j, r]
    s1 = np.empty(n_rows)
    s2 = np.empty(n_rows)
    term[:] = 0.0
    for h in range(n_parents):
        first = first_child[h]
        end = first_child[h + 1] if h + 1 < n_parents else n_units
        shift = child_y[first]
        group_precision = precision[h]
        group_precision[:] = 0.0
        s1[:] = 0.0
        s2[:] = 0.0
        for j in range(first, end):
            for r in range(n_rows):
                weight = 1.0 / variance[j, r]
                deviation = child_y[j, r] - shift[r]
                weighted = weight * deviation
                group_precision[r] += weight
                s1[r] += weighted
                s2[r] += weighted * deviation
        for r in range(n_rows):
            mean = s1[r] / group_precision[r]
            term[r] += s2[r] - s1[r] * mean
            parent_y[h, r] = shift[r] + mean
            parent_v[h, r] = 1.0 / group_precision[r]
    sum_log(variance[:n_units], term)
    sum_log(precision[:n_parents], term)
    for r in range(n_rows):
        term[r] *= -0.5


@compiled_kernel
def top_term(y: float, v: float, mu0: float, s0: float, noise: float) -> float:  # pragma: no cover
    """θ0 integrated out: log N(y; mu0, v + s0² + n_top) up to a constant."""
    total = v + s0 * s0 + noise
    return -0.5 * (np.log(total) + (y - mu0) ** 2 / total)


@compiled_kernel
def upward_pass_from(
    level: int,
    level_var: np.ndarray,
    problem: LaneProblem,
    local_var: np.ndarray,
    given: LaneMessages,
    terms: np.ndarray,
    out: LaneMessages,
    scratch: LaneScratch,
) -> None:  # pragma: no cover - compiled
    """The upward pass of every row from ``level`` up, in lane layout.

    Parameters
    ----------
    level
        The lowest level whose term is recomputed.
    level_var
        The level variances τ² (levels × rows), every level of the tree (zero for a level
        without effect variation).
    problem
        Data, tree, shared noise and θ0 prior.
    local_var
        The local variances λ² of every unit of levels 1..D + 1 at its place in a
        :class:`LaneMessages` array (each unit's prior variance τ_l² λ_u²; θ0's and those
        of levels without local scales are ignored or one), or an array without rows: none
        (every λ = 1).
    given
        The messages to the units of ``level`` (read only when ``level > 0``; level 0's are
        the data). It may be ``out`` itself.
    terms
        Levels + 1 × rows: the terms of levels ``level``..D and θ0 are written; their sum
        over all levels is log p(b | τ) up to a constant (:func:`level_term`,
        :func:`top_term`).
    out
        Receives the messages to the levels above ``level``.
    scratch
        Work arrays.
    """
    depth = level_var.shape[0] - 1
    offsets = problem.message_offsets
    starts = problem.first_child_offsets
    for upper in range(level, depth + 1):
        first_child = problem.first_child[starts[upper] : starts[upper + 1]]
        below = slice(offsets[upper], offsets[upper + 1])
        above = slice(offsets[upper + 1], offsets[upper + 2])
        if upper == 0:
            y, v = problem.b, problem.var_b
        elif upper == level:
            y, v = given.y[below], given.v[below]
        else:
            y, v = out.y[below], out.v[below]
        level_term(
            y,
            v,
            level_var[upper],
            problem.noise[below],
            local_var[below],
            first_child,
            out.y[above],
            out.v[above],
            scratch,
            terms[upper],
        )
    top = offsets[depth + 1]
    for r in range(level_var.shape[1]):
        terms[depth + 1, r] = top_term(
            out.y[top, r], out.v[top, r], problem.mu0[r], problem.s0[r], problem.noise[top, r]
        )


class SortedTree(NamedTuple):
    """Every level's units sorted by their parent, so that a unit's children are contiguous.

    Attributes
    ----------
    orders
        For each level 0..D, the tree's index of each sorted unit.
    parent_index
        For each level 0..D, the parent (a sorted level-(l + 1) unit) of each sorted unit;
        non-decreasing.
    starts
        For each level 0..D, the first child of each level-(l + 1) unit.
    """

    orders: tuple[np.ndarray, ...]
    parent_index: tuple[np.ndarray, ...]
    starts: tuple[np.ndarray, ...]


def sort_tree(tree: TreeIndex) -> SortedTree:
    """The orders that sort every level's units of ``tree`` by parent, coarsest level first."""
    n_top = tree.n_units[-2]
    orders = [np.arange(n_top)]
    parent_index = [np.zeros(n_top, dtype=np.intp)]
    position = np.arange(n_top)
    for level in range(tree.depth - 1, -1, -1):
        parent_position = position[tree.parents[level]]
        order = np.argsort(parent_position, kind="stable")
        orders.insert(0, order)
        parent_index.insert(0, parent_position[order].astype(np.intp))
        position = np.argsort(order)
    starts = tuple(np.flatnonzero(np.diff(index, prepend=-1)) for index in parent_index)
    return SortedTree(tuple(orders), tuple(parent_index), starts)


def lane_problem(
    b: np.ndarray,
    var_b: np.ndarray,
    starts: tuple[np.ndarray, ...],
    n_units: tuple[int, ...],
    mu0: np.ndarray,
    s0: np.ndarray,
    noise: tuple[np.ndarray, ...],
) -> LaneProblem:
    """The :class:`LaneProblem` of rows-first arrays whose units are sorted by parent.

    ``b`` and ``var_b`` are rows × m, ``starts`` :attr:`SortedTree.starts`, ``mu0`` and ``s0``
    one per row, ``noise`` for each level 1..D + 1 rows × units (zeros without shared noise).
    """
    return LaneProblem(
        b=np.ascontiguousarray(b.T),
        var_b=np.ascontiguousarray(var_b.T),
        first_child=np.concatenate(starts).astype(np.intp),
        first_child_offsets=np.cumsum([0, *(s.size for s in starts)]).astype(np.intp),
        message_offsets=np.cumsum([0, 0, *n_units[1:]]).astype(np.intp),
        mu0=np.ascontiguousarray(mu0, dtype=float),
        s0=np.ascontiguousarray(s0, dtype=float),
        noise=np.ascontiguousarray(np.concatenate([n.T for n in noise]), dtype=float),
    )


# ------------------------------------------------------------------------------ gradient
@vector_kernel
def level_variance_gradient(
    level_var: np.ndarray, problem: LaneProblem, messages: LaneMessages, gradient: np.ndarray
) -> None:  # pragma: no cover - compiled
    """The derivative of log p(b | τ) in τ_l² of every level l and row (levels × rows).

    By Fisher's identity the derivative in the prior variance V = τ_l² + n_u of a unit u
    around its parent p is E[d log N(u; p, V) / dV | b] = ½ (E[(u − p)² | b] − V) / V².
    Given p and the data below u (its message N(y; u, v)), u − p is N(w (y − p), w v) with
    w = V / S, S = V + v, so that with D = (y − E[p | b])² + Var[p | b] the derivative is
    ½ (D − S) / S², finite however small V. The posterior moments of the parents come
    top-down (:func:`bayeshier_pymc.gaussian_tree.posterior_moments`, on the totals with
    shared noise): E[u | b] = w y + (1 − w) E[p | b], Var[u | b] = w v + (v / S)² Var[p | b].

    ``messages`` are the upward pass's (:func:`upward_pass_from` from level 0) for the same
    ``level_var`` (levels × rows) and ``problem``; the derivatives go to ``gradient``: the
    units' own (:func:`node_variance_gradient`) summed over each level, in the units' order.
    """
    n_rows = level_var.shape[1]
    offsets = problem.message_offsets
    node_gradient = np.empty((offsets[-1], n_rows))
    node_variance_gradient(level_var, problem, messages, gradient[0], node_gradient)
    for level in range(1, level_var.shape[0]):
        row_gradient = gradient[level]
        row_gradient[:] = 0.0
        for u in range(offsets[level], offsets[level + 1]):
            for r in range(n_rows):
                row_gradient[r] += node_gradient[u, r]


@compiled_kernel
def _log_marginal_pass(
    b: np.ndarray,
    feature_order: np.ndarray,
    level_var: np.ndarray,
    problem: LaneProblem,
    node_noise: np.ndarray,
) -> tuple[np.ndarray, LaneProblem, LaneMessages]:  # pragma: no cover - compiled
    """Log p(b | τ) of every row by the upward pass, with the problem and messages it used.

    ``b`` (rows × m, the tree's order of features) is laid out by ``feature_order`` into
    ``problem`` (whose ``b`` it replaces), with ``node_noise`` as the units' own variances;
    the log density carries every constant (:func:`upward_pass_from` plus -½ m log 2π). The
    problem and messages are what the passes down the tree (the gradients) read.
    """
    n_rows = level_var.shape[1]
    n_levels = level_var.shape[0]
    n_features = feature_order.size
    lane_b = np.empty((n_features, n_rows))
    for j in range(n_features):
        for r in range(n_rows):
            lane_b[j, r] = b[r, feature_order[j]]
    data = LaneProblem(
        lane_b,
        problem.var_b,
        problem.first_child,
        problem.first_child_offsets,
        problem.message_offsets,
        problem.mu0,
        problem.s0,
        node_noise,
    )
    n_messages = problem.message_offsets[-1]
    messages = LaneMessages(np.empty((n_messages, n_rows)), np.empty((n_messages, n_rows)))
    scratch = LaneScratch(np.empty((n_features, n_rows)), np.empty((n_features, n_rows)))
    terms = np.empty((n_levels + 1, n_rows))
    no_local = np.empty((0, n_rows))
    upward_pass_from(0, level_var, data, no_local, messages, terms, messages, scratch)
    log_marginal = np.full(n_rows, -n_features * _HALF_LOG_2PI)
    for level in range(n_levels + 1):
        for r in range(n_rows):
            log_marginal[r] += terms[level, r]
    return log_marginal, data, messages


@compiled_kernel
def log_marginal_and_gradient(
    tau: np.ndarray, b: np.ndarray, feature_order: np.ndarray, problem: LaneProblem
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Log p(b | τ) of every row and its gradient in τ: the upward pass, then one pass down.

    ``tau`` is rows × (D + 1) and ``b`` rows × m in the tree's order of features;
    ``feature_order`` sorts the features by parent (:attr:`SortedTree.orders` ``[0]``) and
    ``problem`` holds everything else (its ``b`` is replaced by ``b``). Returns log p(b | τ),
    one per row, with every constant (:func:`upward_pass_from` plus -½ m log 2π), and
    d log p(b | τ) / dτ (rows × (D + 1); 2 τ_l times :func:`level_variance_gradient`).
    """
    n_rows, n_levels = tau.shape
    level_var = np.empty((n_levels, n_rows))
    for level in range(n_levels):
        for r in range(n_rows):
            level_var[level, r] = tau[r, level] * tau[r, level]
    log_marginal, data, messages = _log_marginal_pass(
        b, feature_order, level_var, problem, problem.noise
    )
    variance_gradient = np.empty((n_levels, n_rows))
    level_variance_gradient(level_var, data, messages, variance_gradient)
    gradient = np.empty((n_rows, n_levels))
    for r in range(n_rows):
        for level in range(n_levels):
            gradient[r, level] = 2.0 * tau[r, level] * variance_gradient[level, r]
    return log_marginal, gradient


@vector_kernel
def node_variance_gradient(
    level_var: np.ndarray,
    problem: LaneProblem,
    messages: LaneMessages,
    feature_gradient: np.ndarray,
    node_gradient: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The derivative of log p(b | τ) in the prior variance of every group unit, and τ_0².

    The terms of :func:`level_variance_gradient` (which gives the derivation) unit by unit:
    the derivative ½ (D − S) / S² in the prior variance V_u = ``level_var[l]`` +
    ``problem.noise[u]`` of every unit u of levels 1..D goes to ``node_gradient[u]``
    (:class:`LaneMessages` places, units × rows; θ0's place is left as it is), and the sum
    over the features of theirs, the derivative in τ_0², to ``feature_gradient`` (one per
    row). With one prior variance per group (a local scale
    each, held in ``problem.noise``) these are the terms of the gradient in τ and λ.
    """
    depth = level_var.shape[0] - 1
    n_rows = level_var.shape[1]
    offsets = problem.message_offsets
    starts = problem.first_child_offsets
    noise = problem.noise
    y, v = messages
    mean = np.empty_like(y)
    var = np.empty_like(v)
    top = offsets[depth + 1]
    for r in range(n_rows):
        mean[top, r], var[top, r] = posterior_normal(
            problem.mu0[r], problem.s0[r] * problem.s0[r] + noise[top, r], y[top, r], v[top, r]
        )
    feature_gradient[:] = 0.0
    for level in range(depth, -1, -1):
        first_child = problem.first_child[starts[level] : starts[level + 1]]
        n_parents = first_child.size
        n_units = problem.b.shape[0] if level == 0 else offsets[level + 1] - offsets[level]
        for h in range(n_parents):
            parent = offsets[level + 1] + h
            end = first_child[h + 1] if h + 1 < n_parents else n_units
            for j in range(first_child[h], end):
                if level == 0:
                    for r in range(n_rows):
                        total = level_var[0, r] + problem.var_b[j, r]
                        deviation = problem.b[j, r] - mean[parent, r]
                        spread = deviation * deviation + var[parent, r]
                        feature_gradient[r] += 0.5 * (spread - total) / (total * total)
                else:
                    u = offsets[level] + j
                    for r in range(n_rows):
                        prior_var = level_var[level, r] + noise[u, r]
                        total = prior_var + v[u, r]
                        deviation = y[u, r] - mean[parent, r]
                        spread = deviation * deviation + var[parent, r]
                        node_gradient[u, r] = 0.5 * (spread - total) / (total * total)
                        mean[u, r], conditional_var = posterior_normal(
                            mean[parent, r], prior_var, y[u, r], v[u, r]
                        )
                        parent_weight = v[u, r] / total
                        var[u, r] = conditional_var + parent_weight * parent_weight * var[parent, r]


@compiled_kernel
def log_marginal_and_local_gradient(
    tau: np.ndarray,
    b: np.ndarray,
    local_scale: np.ndarray,
    feature_order: np.ndarray,
    group_order: np.ndarray,
    problem: LaneProblem,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """:func:`log_marginal_and_gradient` with a local scale λ_g for every group unit.

    A unit g of level l ≥ 1 has the prior variance τ_l² λ_g² around its parent (plus its
    shared noise). ``local_scale`` is rows × G (G the group units of levels 1..D, level by
    level, each in the tree's order); ``group_order`` gives, for each :class:`LaneMessages`
    place of levels 1..D, the column of ``local_scale`` of its unit. The upward pass runs
    with those variances as the units' own (:attr:`LaneProblem.noise` plus τ_l² λ_g², level
    variance zero, no λ² multipliers of :func:`upward_pass_from`); the pass down
    (:func:`node_variance_gradient`) gives d log p / dV_g, so d/dτ_l = Σ_g 2 τ_l λ_g² d/dV_g
    and d/dλ_g = 2 τ_l² λ_g d/dV_g.

    Returns
    -------
    tuple
        log p(b | τ, λ) per row, its gradient in τ (rows × (D + 1)) and in λ (rows × G).
    """
    n_rows, n_levels = tau.shape
    offsets = problem.message_offsets
    level_var = np.zeros((n_levels, n_rows))
    for r in range(n_rows):
        level_var[0, r] = tau[r, 0] * tau[r, 0]
    node_var = problem.noise.copy()
    for level in range(1, n_levels):
        for u in range(offsets[level], offsets[level + 1]):
            column = group_order[u]
            for r in range(n_rows):
                scale = tau[r, level] * local_scale[r, column]
                node_var[u, r] += scale * scale
    # the groups' variances are their own (``node_var``): no λ² multipliers
    log_marginal, data, messages = _log_marginal_pass(
        b, feature_order, level_var, problem, node_var
    )
    n_messages = offsets[-1]
    feature_gradient = np.empty(n_rows)
    node_gradient = np.empty((n_messages, n_rows))
    node_variance_gradient(level_var, data, messages, feature_gradient, node_gradient)
    tau_gradient = np.zeros((n_rows, n_levels))
    scale_gradient = np.zeros((n_rows, local_scale.shape[1]))
    for r in range(n_rows):
        tau_gradient[r, 0] = 2.0 * tau[r, 0] * feature_gradient[r]
    for level in range(1, n_levels):
        for u in range(offsets[level], offsets[level + 1]):
            column = group_order[u]
            for r in range(n_rows):
                lam = local_scale[r, column]
                scale = tau[r, level]
                tau_gradient[r, level] += 2.0 * scale * lam * lam * node_gradient[u, r]
                scale_gradient[r, column] = 2.0 * scale * scale * lam * node_gradient[u, r]
    return log_marginal, tau_gradient, scale_gradient


@compiled_kernel
def pointwise_marginal(
    b: np.ndarray,
    var_b: np.ndarray,
    parent_mean: np.ndarray,
    parent_index: np.ndarray,
    tau_w: np.ndarray,
    start: int,
    stop: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[s, k, j] = log N(b_kj; parent_mean[s, k, parent(j)], s_kj² + τ_w[s, k]²).

    For the draws s in ``start:stop``: θ integrated out given its parent
    (:func:`bayeshier_pymc.gaussian_tree.pointwise_marginal`).
    """
    n_covariates, n_features = b.shape
    for s in range(start, stop):
        for k in range(n_covariates):
            tau_sq = tau_w[s, k] * tau_w[s, k]
            means = parent_mean[s, k]
            for j in range(n_features):
                variance = var_b[k, j] + tau_sq
                out[s, k, j] = log_normal(b[k, j] - means[parent_index[j]], variance)


# ------------------------------------------------------------------------------ downward draws
@vector_kernel
def draw_children(
    parent: np.ndarray,
    parent_index: np.ndarray,
    level_var: np.ndarray,
    unit_noise: np.ndarray,
    unit_local: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """One level of the downward draw, rows first: u = mean + sqrt(var) · noise.

    Each unit j of every row r is drawn from N(parent[r, parent_index[j]], level_var[r]) ×
    N(y; u, v) (:func:`posterior_normal`), with ``noise`` standard normal (rows × units).
    With local scales (``unit_local``: λ², rows × units; no columns: none) the prior
    variance is level_var[r] λ²[r, j]; with shared noise (``unit_noise``, rows × units; no
    columns: none) the units are totals and unit_noise[r, j] is added to it.
    """
    n_rows, n_units = y.shape
    out = np.empty((n_rows, n_units))
    if unit_local.shape[1]:
        with_noise = unit_noise.shape[1] > 0
        for r in range(n_rows):
            for j in range(n_units):
                prior_var = level_var[r] * unit_local[r, j]
                if with_noise:
                    prior_var += unit_noise[r, j]
                mean, var = posterior_normal(
                    parent[r, parent_index[j]], prior_var, y[r, j], v[r, j]
                )
                out[r, j] = mean + np.sqrt(var) * noise[r, j]
        return out
    if unit_noise.shape[1]:
        for r in range(n_rows):
            for j in range(n_units):
                mean, var = posterior_normal(
                    parent[r, parent_index[j]], level_var[r] + unit_noise[r, j], y[r, j], v[r, j]
                )
                out[r, j] = mean + np.sqrt(var) * noise[r, j]
        return out
    for r in range(n_rows):
        for j in range(n_units):
            mean, var = posterior_normal(parent[r, parent_index[j]], level_var[r], y[r, j], v[r, j])
            out[r, j] = mean + np.sqrt(var) * noise[r, j]
    return out


class ThetaData(NamedTuple):
    """What the θ writer reads but never changes: estimates (covariate × feature) and tree.

    ``parent_index`` is the parent (a group of the first level, or θ0 as group 0) of each
    feature; ``inverse_var_b`` is 1 / ``var_b``.
    """

    b: np.ndarray
    var_b: np.ndarray
    inverse_var_b: np.ndarray
    parent_index: np.ndarray


class ThetaStores(NamedTuple):
    """The stores, (chain, draw, covariate, ...), that :func:`write_theta_draw` reads or writes.

    ``parent_mean`` and ``tau`` are read; ``theta`` holds standard normal noise and receives
    θ; ``log_likelihood`` receives the marginal pointwise log-likelihood; ``totals``
    (chain, draw) the conditional one summed, without its constant.
    """

    parent_mean: np.ndarray
    tau: np.ndarray
    theta: np.ndarray
    log_likelihood: np.ndarray
    totals: np.ndarray


@vector_kernel
def write_theta_draw(
    data: ThetaData, stores: ThetaStores, draw: int
) -> None:  # pragma: no cover - compiled
    """Draw number ``draw`` of every chain: θ from the noise in ``stores.theta``, in place.

    θ_j | parent p, τ_w ~ N(p, τ_w²) × N(b_j; θ_j, s_j²) (:func:`posterior_normal`, the
    lowest level of the downward draw); the marginal log-likelihood is
    log N(b_j; p, s_j² + τ_w²); ``totals[chain, draw]`` gets -½ Σ (b - θ)² / s² from θ as
    stored. Arrays are whole stores so that each row is contiguous and loops vectorise.
    """
    b, var_b, inverse_var_b, parent_index = data
    theta, log_likelihood = stores.theta, stores.log_likelihood
    n_chains, _, n_covariates, n_features = theta.shape
    parent = np.empty(n_features)
    for c in range(n_chains):
        total = 0.0
        for k in range(n_covariates):
            means = stores.parent_mean[c, draw, k]
            for j in range(n_features):
                parent[j] = means[parent_index[j]]
            tau_sq = stores.tau[c, draw, k, 0] * stores.tau[c, draw, k, 0]
            row = theta[c, draw, k]
            row_log_likelihood = log_likelihood[c, draw, k]
            for j in range(n_features):
                mean, var = posterior_normal(parent[j], tau_sq, b[k, j], var_b[k, j])
                row[j] = mean + np.sqrt(var) * row[j]
            for j in range(n_features):
                residual = b[k, j] - row[j]
                total += residual * residual * inverse_var_b[k, j]
            for j in range(n_features):
                row_log_likelihood[j] = log_normal(b[k, j] - parent[j], var_b[k, j] + tau_sq)
        stores.totals[c, draw] = -0.5 * total


# ------------------------------------------------------------------------------ shared noise
class NoisePrecision(NamedTuple):
    """Tree-structured noise Σ of every covariate's estimates, for :func:`noise_quadratic`.

    The upward pass of the residuals b − θ with every scale zero (the pass of
    :func:`bayeshier_pymc.gaussian_tree.noise_log_density`), its θ-free parts computed once.
    Units are numbered level by level: the features, each annotation level's groups, θ0.

    Attributes
    ----------
    parent
        The parent, within the next level, of every unit of levels 0..D.
    level_offsets
        Where each level 0..D + 1 begins in the unit numbering, then the total (D + 3).
    weight
        (covariate, unit): 1 / (v_u + n_u), the precision of each unit's message about its
        parent (v_u its upward message's variance, n_u its shared noise; a feature's own
        noise variance for a feature).
    message_variance
        (covariate, unit): v_u, 1 / Σ of the children's weights (a feature's own variance).
    constant
        (covariate,): log N(0; 0, Σ), the part of log N(r; 0, Σ) free of r.
    """

    parent: np.ndarray
    level_offsets: np.ndarray
    weight: np.ndarray
    message_variance: np.ndarray
    constant: np.ndarray


def noise_precision(var_b: np.ndarray, tree: TreeIndex, noise: NodeNoise) -> NoisePrecision:
    """:class:`NoisePrecision` of own variances ``var_b`` (covariate × feature) and ``noise``.

    ``noise`` has the covariates leading; the weights come from the reference upward pass.
    """
    var_b = np.asarray(var_b, dtype=float)
    zeros = np.zeros(tree.depth + 1)
    messages = upward_pass(np.zeros_like(var_b), var_b, zeros, tree, 0.0, 0.0, noise=noise)
    variances = [*messages.v[:-1], messages.v[-1][:, None]]
    shared = [
        *(
            np.broadcast_to(level_variance(zeros, level, noise), v.shape)
            for level, v in enumerate(variances[:-1])
        ),
        np.broadcast_to(
            np.asarray(top_variance(0.0, noise), dtype=float)[:, None], (len(var_b), 1)
        ),
    ]
    message_variance = np.concatenate(variances, axis=1)
    return NoisePrecision(
        parent=np.concatenate([tree.parent_of(level) for level in range(tree.depth + 1)]).astype(
            np.intp
        ),
        level_offsets=np.cumsum([0, *tree.n_units]),
        weight=1.0 / (message_variance + np.concatenate(shared, axis=1)),
        message_variance=message_variance,
        constant=noise_log_density(np.zeros_like(var_b), var_b, tree, noise),
    )


@inline_kernel
def noise_quadratic(
    residual: np.ndarray, covariate: int, precision: NoisePrecision, work: np.ndarray
) -> float:  # pragma: no cover - compiled
    """The quadratic form r' Σ⁻¹ r of one covariate's residuals r = b − θ, in O(m).

    log N(r; 0, Σ) is ``precision.constant[covariate] - ½`` this. ``work`` holds one value
    per unit. Per level, each parent's value is the weighted mean of its children's and the
    level adds Σ weight · (child − parent)²; θ0's value (mean 0) adds weight · value².
    """
    parent, offsets = precision.parent, precision.level_offsets
    weight = precision.weight[covariate]
    message_variance = precision.message_variance[covariate]
    n_features = offsets[1]
    for j in range(n_features):
        work[j] = residual[j]
    quadratic = 0.0
    for level in range(offsets.size - 2):
        first, stop = offsets[level], offsets[level + 1]
        parents = offsets[level + 1]
        for h in range(parents, offsets[level + 2]):
            work[h] = 0.0
        for u in range(first, stop):
            work[parents + parent[u]] += weight[u] * work[u]
        for h in range(parents, offsets[level + 2]):
            work[h] *= message_variance[h]
        for u in range(first, stop):
            deviation = work[u] - work[parents + parent[u]]
            quadratic += weight[u] * deviation * deviation
    top = offsets[-2]
    return quadratic + weight[top] * work[top] * work[top]


class TotalStores(NamedTuple):
    """The stores, (chain, draw, covariate, ...), of :func:`write_correlated_theta_draw`.

    ``parent_total`` (the totals of θ's parents in the noise tree), ``parent_noise`` (the
    noise on their paths) and ``tau`` are read; ``theta`` holds standard normal noise and
    receives θ; ``totals`` (chain, draw) receives Σ_k log N(b_k; θ_k, Σ_k).
    """

    parent_total: np.ndarray
    parent_noise: np.ndarray
    tau: np.ndarray
    theta: np.ndarray
    totals: np.ndarray


@compiled_kernel
def write_correlated_theta_draw(
    data: ThetaData, precision: NoisePrecision | None, stores: TotalStores, draw: int
) -> None:  # pragma: no cover - compiled
    """Draw number ``draw`` of every chain with shared noise: θ from ``stores.theta``'s noise.

    θ_j's total T_j | T_h, τ_w ~ N(T_h, τ_w²) × N(b_j; T_j, own variance) (the lowest level
    of the downward draw on the totals), and θ_j = T_j − N_h with N_h the noise on the path
    of θ_j's parent h (``data.parent_index``: parents in the noise tree).
    ``totals[chain, draw]`` gets Σ over covariates of log N(b; θ, Σ); with ``precision``
    None, θ only is written (of any subset of the features: ``data`` and ``stores.theta``
    restricted to it), ``totals`` untouched.
    """
    b, var_b, _, parent_index = data
    theta = stores.theta
    n_chains, _, n_covariates, n_features = theta.shape
    n_units = 0
    if precision is not None:
        n_units = precision.weight.shape[1]
    work = np.empty(n_units)
    residual = np.empty(n_features)
    for c in range(n_chains):
        total = 0.0
        for k in range(n_covariates):
            parent_total = stores.parent_total[c, draw, k]
            parent_noise = stores.parent_noise[c, draw, k]
            tau_sq = stores.tau[c, draw, k, 0] * stores.tau[c, draw, k, 0]
            row = theta[c, draw, k]
            for j in range(n_features):
                h = parent_index[j]
                mean, var = posterior_normal(parent_total[h], tau_sq, b[k, j], var_b[k, j])
                row[j] = mean + np.sqrt(var) * row[j] - parent_noise[h]
            if precision is not None:
                for j in range(n_features):
                    residual[j] = b[k, j] - row[j]
                total += precision.constant[k] - 0.5 * noise_quadratic(residual, k, precision, work)
        if precision is not None:
            stores.totals[c, draw] = total


class SplitTree(NamedTuple):
    """The groups and θ0 of a tree as :func:`split_totals` walks them, rows first.

    Units are numbered level by level, finest first, θ0 last (the order of the state's units
    1..D + 1, concatenated), so that every parent comes after its children.

    Attributes
    ----------
    parent
        The parent (in this numbering) of every group.
    unit_level
        The level (1..D + 1) of every unit, θ0's last.
    noise
        Rows × units: the shared-noise variance of every unit.
    """

    parent: np.ndarray
    unit_level: np.ndarray
    noise: np.ndarray


@inline_kernel
def _noise_given_increment(
    noise_var: float, effect_var: float, increment: float, normal: float
) -> float:  # pragma: no cover - compiled
    """η from p(η | η + δ = increment), η ~ N(0, noise_var), δ ~ N(0, effect_var)."""
    total = noise_var + effect_var
    weight = noise_var / total if total > 0.0 else 0.0
    return weight * increment + np.sqrt(weight * effect_var) * normal


@compiled_kernel
def split_totals(
    totals: np.ndarray,
    effect_var: np.ndarray,
    tree: SplitTree,
    mu0: np.ndarray,
    unit_local: np.ndarray,
    normals: np.ndarray,
    effects: np.ndarray,
    path_noise: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Effects and path noise of every group and θ0 from their totals, in place.

    :func:`bayeshier_pymc.gaussian_tree.split_totals` above the features, top-down: each
    unit's increment over its parent's total (θ0's over mu0) splits into effect and noise;
    the unit's path noise is its parent's plus its own, its effect its total less its path
    noise. ``totals``, ``normals`` (standard normal), ``effects`` and ``path_noise`` are
    rows × units (:class:`SplitTree`'s numbering); ``effect_var`` is rows × (D + 2): the
    effect variance τ_l² of each level l = 1..D, then θ0's prior variance s0² (index 0
    unused). With local scales ``unit_local`` (λ², rows × units; no columns: none) a
    group's effect variance is τ_l² λ_u².
    """
    n_rows, n_units = totals.shape
    top = n_units - 1
    local = unit_local.shape[1] > 0
    for r in range(n_rows):
        eta = _noise_given_increment(
            tree.noise[r, top], effect_var[r, -1], totals[r, top] - mu0[r], normals[r, top]
        )
        path_noise[r, top] = eta
        effects[r, top] = totals[r, top] - eta
        for u in range(top - 1, -1, -1):
            parent = tree.parent[u]
            unit_var = effect_var[r, tree.unit_level[u]]
            if local:
                unit_var *= unit_local[r, u]
            eta = _noise_given_increment(
                tree.noise[r, u],
                unit_var,
                totals[r, u] - totals[r, parent],
                normals[r, u],
            )
            path_noise[r, u] = path_noise[r, parent] + eta
            effects[r, u] = totals[r, u] - path_noise[r, u]


# ------------------------------------------------------------------------------ leave one out
class LeaveOneOutTree(NamedTuple):
    """A tree and one row's shared noise, as :func:`leave_one_out_moments` walks them.

    Units are numbered level by level: the features, each annotation level's groups (finest
    first), θ0 last (the numbering of :class:`NoisePrecision`).

    Attributes
    ----------
    parent
        The parent, in this numbering, of every unit but θ0.
    level_offsets
        Where each level 0..D + 1 begins, then the number of units (D + 3 entries).
    noise
        The shared-noise variance of every unit (zero for the features, which have none of
        their own, and everywhere for independent estimates).
    """

    parent: np.ndarray
    level_offsets: np.ndarray
    noise: np.ndarray


def leave_one_out_tree(tree: TreeIndex, noise: NodeNoise | None) -> LeaveOneOutTree:
    """:class:`LeaveOneOutTree` of ``tree`` with one row's ``noise`` (``None``: independent)."""
    offsets = np.cumsum([0, *tree.n_units])
    parent = np.concatenate(
        [offsets[level + 1] + tree.parent_of(level) for level in range(tree.depth + 1)]
    ).astype(np.intp)
    unit_noise = np.zeros(offsets[-1])
    if noise is not None:
        for level in range(1, tree.depth + 1):
            unit_noise[offsets[level] : offsets[level + 1]] = noise.groups[level - 1]
        unit_noise[-1] = noise.top
    return LeaveOneOutTree(parent, offsets.astype(np.intp), unit_noise)


LEAVE_ONE_OUT_WORK = 7
"""Rows of the work array of :func:`leave_one_out_moments` (one column per unit)."""


@compiled_kernel
def leave_one_out_moments(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    local: np.ndarray,
    tree: LeaveOneOutTree,
    mu0: float,
    s0: float,
    work: np.ndarray,
    mean: np.ndarray,
    variance: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Mean and variance of p(b_j | b_−j, τ) for every feature j of one row, in O(m).

    :func:`bayeshier_pymc.gaussian_tree.leave_one_out_normal`, with the same formulas: the
    upward messages of every unit, then top-down each group's distribution given the data
    outside its subtree, then b_j | b_−j ~ N(m, s_j² + τ_0² + 1 / P) from the cavity N(m,
    1 / P) of θ_j's parent. ``b``, ``var_b``, ``mean`` and ``variance`` hold one value per
    feature, ``tau`` one scale per level (D + 1); ``local`` the local variances λ² of the
    groups of levels 1..D in the tree's numbering (ones at levels without local scales), or
    nothing (every λ = 1); ``work`` is :data:`LEAVE_ONE_OUT_WORK` × the number of units.
    The parts of the cavities that only depend on the parent are computed once per parent
    (:func:`_parents_outside`), and the units' precisions once for both passes.
    """
    parent = tree.parent
    _parents_outside(b, var_b, tau, local, tree, mu0, s0, work)
    outside_mean, outside_var, precision = work[2], work[3], work[4]
    message_precision, outside_part = work[5], work[6]
    scale_sq = tau[0] * tau[0]
    for u in range(b.size):
        h = parent[u]
        mean[u], variance[u] = _held_out_feature(
            outside_mean[h],
            outside_var[h],
            message_precision[h],
            outside_part[h],
            precision[u],
            b[u],
            var_b[u],
            scale_sq,
        )


LEAVE_ONE_OUT_PARENT_TERMS = 4
"""Numbers per parent of θ that :func:`leave_one_out_parent_terms` keeps."""
_PARENT_TERM_ROWS = (2, 3, 5, 6)
"""Their rows in the work array: outside mean and variance, message precision, outside part."""


@compiled_kernel
def leave_one_out_parent_terms(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    local: np.ndarray,
    tree: LeaveOneOutTree,
    mu0: float,
    s0: float,
    work: np.ndarray,
    terms: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """What :func:`leave_one_out_moments` needs of θ's parents, for :func:`held_out_log_density`.

    The same passes as :func:`leave_one_out_moments` up to θ's parents (the units of level
    1); ``terms`` (parents × :data:`LEAVE_ONE_OUT_PARENT_TERMS`) receives each parent's
    outside mean and variance, its message precision and its outside part. With them and
    τ_0 the predictive of any feature takes O(1): a chunk of features at a time.
    """
    _parents_outside(b, var_b, tau, local, tree, mu0, s0, work)
    first = tree.level_offsets[1]
    for h in range(terms.shape[0]):
        for t, row in enumerate(_PARENT_TERM_ROWS):
            terms[h, t] = work[row, first + h]


@compiled_kernel
def held_out_log_density(
    b: np.ndarray,
    var_b: np.ndarray,
    feature_noise: np.ndarray,
    parent: np.ndarray,
    tau_w: np.ndarray,
    terms: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[s, j] = log p(b_j | b_−j, τ_s) from draw s's parent terms, for a set of features.

    ``b``, ``var_b``, ``feature_noise`` (the features' entries of
    :attr:`LeaveOneOutTree.noise`) and ``parent`` (their parents, 0-based within level 1)
    hold one value per feature; ``tau_w`` the features' scale of every draw; ``terms``
    (draw, parent, :data:`LEAVE_ONE_OUT_PARENT_TERMS`) from :func:`leave_one_out_parent_terms`.
    The formulas of :func:`leave_one_out_moments`, so the values are its, bitwise.
    """
    for s in range(out.shape[0]):
        scale_sq = tau_w[s] * tau_w[s]
        draw_terms = terms[s]
        row = out[s]
        for j in range(b.size):
            h = parent[j]
            mean, variance = _held_out_feature(
                draw_terms[h, 0],
                draw_terms[h, 1],
                draw_terms[h, 2],
                draw_terms[h, 3],
                _unit_precision(var_b[j], scale_sq, feature_noise[j]),
                b[j],
                var_b[j],
                scale_sq,
            )
            row[j] = log_normal(b[j] - mean, variance)


@inline_kernel
def _unit_precision(
    message_var: float, scale_sq: float, noise: float
) -> float:  # pragma: no cover - compiled
    """The precision of a unit's message about its parent: 1 / (v + (τ² + n))."""
    return 1.0 / (message_var + (scale_sq + noise))


@compiled_kernel
def _parents_outside(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    local: np.ndarray,
    tree: LeaveOneOutTree,
    mu0: float,
    s0: float,
    work: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The passes of :func:`leave_one_out_moments` down to θ's parents, into ``work``.

    Upward, the message N(y; u, v) of every unit and each unit's precision; downward, each
    group's distribution given the data outside its subtree, and for every parent of θ its
    message precision and outside part (outside_mean / outside_var + message precision ·
    message y), which :func:`_held_out_feature` combines with a feature's own terms. A group
    u's prior variance is τ² λ_u² with ``local`` (λ² of the groups, from the first group
    on; no values: λ = 1).
    """
    parent, offsets, noise = tree
    depth = offsets.size - 3
    n_features = offsets[1]
    with_local = local.size > 0
    y, v, outside_mean, outside_var, precision = work[0], work[1], work[2], work[3], work[4]
    message_precision, outside_part = work[5], work[6]
    for j in range(n_features):
        y[j] = b[j]
        v[j] = var_b[j]
    # upward: the message N(y; u, v) of every unit; a parent's v first sums its children's
    # precisions and its y their precision-weighted values
    for level in range(depth + 1):
        scale_sq = tau[level] * tau[level]
        for h in range(offsets[level + 1], offsets[level + 2]):
            y[h] = 0.0
            v[h] = 0.0
        for u in range(offsets[level], offsets[level + 1]):
            unit_sq = scale_sq * local[u - n_features] if with_local and level else scale_sq
            precision[u] = _unit_precision(v[u], unit_sq, noise[u])
            v[parent[u]] += precision[u]
            y[parent[u]] += precision[u] * y[u]
        for h in range(offsets[level + 1], offsets[level + 2]):
            y[h] = y[h] / v[h]
            v[h] = 1.0 / v[h]
    # downward: every group given the data outside its subtree, from its parent's cavity; the
    # parents' parts of the cavities (outside belief times message) once per parent
    top = offsets[depth + 1]
    outside_mean[top] = mu0
    outside_var[top] = s0 * s0 + noise[top]
    for level in range(depth, -1, -1):
        for h in range(offsets[level + 1], offsets[level + 2]):
            message_precision[h] = 1.0 / v[h]
            outside_part[h] = outside_mean[h] / outside_var[h] + message_precision[h] * y[h]
        if level == 0:
            break
        scale_sq = tau[level] * tau[level]
        for u in range(offsets[level], offsets[level + 1]):
            h = parent[u]
            cavity_mean, cavity_precision = _cavity(
                outside_mean[h],
                outside_var[h],
                message_precision[h],
                outside_part[h],
                precision[u],
                y[u],
            )
            outside_mean[u] = cavity_mean
            unit_sq = scale_sq * local[u - n_features] if with_local else scale_sq
            outside_var[u] = 1.0 / cavity_precision + (unit_sq + noise[u])


@inline_kernel
def _held_out_feature(
    outside_mean: float,
    outside_var: float,
    message_precision: float,
    outside_part: float,
    precision: float,
    b: float,
    var_b: float,
    scale_sq: float,
) -> tuple[float, float]:  # pragma: no cover - compiled
    """Mean and variance of p(b_j | b_−j, τ) from the terms of θ_j's parent and θ_j's own.

    ``precision`` is θ_j's message precision about its parent (:func:`_unit_precision`),
    ``scale_sq`` τ_0².
    """
    cavity_mean, cavity_precision = _cavity(
        outside_mean, outside_var, message_precision, outside_part, precision, b
    )
    return cavity_mean, (var_b + scale_sq) + 1.0 / cavity_precision


@inline_kernel
def _cavity(
    outside_mean: float,
    outside_var: float,
    message_precision: float,
    outside_part: float,
    held_precision: float,
    held_y: float,
) -> tuple[float, float]:  # pragma: no cover - compiled
    """Mean and precision of a unit given the data outside it and all but one child.

    The reference's ``_cavity``: the outside belief times the unit's message divided by the
    held-out child's; an outside variance of zero stays a point mass at ``outside_mean``.
    ``outside_part`` is the part that depends on the unit alone, outside_mean / outside_var +
    message_precision · message_y (computed once per unit, for all of its children).
    """
    precision = 1.0 / outside_var + max(message_precision - held_precision, 0.0)
    if outside_var > 0.0:
        return (outside_part - held_precision * held_y) / precision, precision
    return outside_mean, precision
