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
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from bayeshier_pymc._numba import compiled_kernel, inline_kernel, vector_kernel

__all__ = [
    "LOG_BLOCK",
    "LaneMessages",
    "LaneProblem",
    "LaneScratch",
    "ThetaData",
    "ThetaStores",
    "draw_children",
    "log_normal",
    "pointwise_marginal",
    "posterior_normal",
    "sum_log",
    "upward_pass_from",
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
        Mean and sd of θ0's prior.
    """

    b: np.ndarray
    var_b: np.ndarray
    first_child: np.ndarray
    first_child_offsets: np.ndarray
    message_offsets: np.ndarray
    mu0: float
    s0: float


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
    messages N(ȳ; u, 1/P) to the parents go to ``parent_y``, ``parent_v``.

    Lane layout: ``child_y``, ``child_v`` are units × rows, ``parent_y``, ``parent_v``
    parents × rows, ``level_var`` one per row. Two exact rearrangements keep the pass cheap:
    Σ (y - ȳ)² / (v + τ²) = S2 - S1²/P from the weighted sums S1, S2 of y shifted by the
    parent's first child (which keeps them well conditioned), and the logarithms of every
    v + τ² and every P are summed by :func:`sum_log`, one per ``LOG_BLOCK`` values.
    """
    n_units, n_rows = child_y.shape
    n_parents = first_child.size
    variance, precision = scratch
    for j in range(n_units):
        for r in range(n_rows):
            variance[j, r] = child_v[j, r] + level_var[r]
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
def top_term(y: float, v: float, mu0: float, s0: float) -> float:  # pragma: no cover
    """θ0 integrated out: log N(y; mu0, v + s0²) up to a constant."""
    total = v + s0 * s0
    return -0.5 * (np.log(total) + (y - mu0) ** 2 / total)


@compiled_kernel
def upward_pass_from(
    level: int,
    level_var: np.ndarray,
    problem: LaneProblem,
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
        The level variances τ² (levels × rows).
    problem
        Data, tree and θ0 prior.
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
            y, v, level_var[upper], first_child, out.y[above], out.v[above], scratch, terms[upper]
        )
    top = offsets[depth + 1]
    for r in range(level_var.shape[1]):
        terms[depth + 1, r] = top_term(out.y[top, r], out.v[top, r], problem.mu0, problem.s0)


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
    y: np.ndarray,
    v: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """One level of the downward draw, rows first: u = mean + sqrt(var) · noise.

    Each unit j of every row r is drawn from N(parent[r, parent_index[j]], level_var[r]) ×
    N(y; u, v) (:func:`posterior_normal`), with ``noise`` standard normal (rows × units).
    """
    n_rows, n_units = y.shape
    out = np.empty((n_rows, n_units))
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
