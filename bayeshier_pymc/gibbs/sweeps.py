"""Gibbs updates of the tree model, written once and vectorised over rows.

A *row* is one independent copy of the model: one covariate in the PyMC step, one
(chain, covariate) pair in the engine. Every array has the rows first.

Units and levels
----------------
``units[0]`` holds θ (rows × m), ``units[l]`` the means of the level-l groups (l = 1..D) and
``units[D + 1]`` θ0 as a rows × 1 array. Every level ``l <= D`` thus has a parent level
``l + 1``, and ``tau[:, l]`` is the sd of the level-l units around their parents; θ0 has the
fixed prior N(mu0, s0²). Each τ has a HalfCauchy(A_l) prior. Inside :class:`TreeData` and
:class:`TreeState` the units of every level are sorted by their parent, so that the children
of a unit are a contiguous slice; :meth:`TreeData.to_sorted` and :meth:`TreeData.from_sorted`
convert.

Two sweeps
----------
:func:`conjugate_sweep`
    The centred sweep of the research algorithm. Every unit is drawn from its normal full
    conditional; then, per level, with the HalfCauchy written as τ² | λ ~ IG(1/2, 1/λ),
    λ ~ IG(1/2, 1/A²): λ | τ ~ IG(1, 1/τ² + 1/A²) and τ² | λ, units ~ IG((n + 1)/2, SS/2 + 1/λ).
    λ is drawn afresh from its conditional right before it is used, so it is not state.
:func:`collapsed_sweep`
    A collapsed sweep. For l = 0..D in turn, log τ_l is updated from p(τ_l | b, other τ): θ,
    every group mean and θ0 integrated out exactly by the upward messages of the tree (the
    algebra of :mod:`bayeshier_pymc.gaussian_tree`). Then θ0, the group means and θ are drawn
    exactly from p(· | b, τ). The τ update is an independence Metropolis–Hastings step with
    a Student-t proposal fitted while tuning (slice sampling, Neal 2003, during the first
    tuning sweeps); see :class:`ScaleKernel`. Conditioning on no unit removes the slow
    centred dependence between τ_w and θ that the conjugate sweep suffers from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numba
import numpy as np

from bayeshier_pymc._numba import compiled_kernel, vector_kernel
from bayeshier_pymc.gaussian_tree import TreeIndex, posterior_normal

__all__ = [
    "Evaluation",
    "ScaleKernel",
    "ScaleProposal",
    "TreeData",
    "TreeState",
    "collapsed_sweep",
    "conjugate_sweep",
    "draw_inverse_gamma",
    "draw_mixing",
    "draw_scale",
    "evaluate",
    "initial_state",
    "slice_sample",
    "update_scale_conjugate",
    "update_scales",
    "update_units",
]

Messages = list[tuple[np.ndarray, np.ndarray]]
"""Upward messages N(y; u, v) to the units of each level, θ0's last (rows × 1 arrays)."""

PROPOSAL_DF = 5.0
"""Degrees of freedom of the Student-t independence proposal on log τ."""
TUNING_INFLATION = 1.5
"""While tuning, the proposal scale is this many running sds of log τ; afterwards one."""
SLICE_WIDTH = 1.0
"""Slice width on the log-τ scale (a factor e), with stepping out."""
SLICE_MAX_STEPS = 20
"""Stepping-out budget (Neal's m) of the slice updates."""
MAX_SLICE_SWEEPS = 20
"""Tuning sweeps that use slice sampling before the proposal is fitted (at most)."""
MIN_FIT_DRAWS = 10
"""Draws of log τ needed to fit the proposal."""
DEFAULT_SCALE_STEPS = 2
"""Independence MH steps per τ and sweep: a second step costs one more evaluation of the
collapsed likelihood and lifts the ESS of τ_w where its conditional is skewed (τ_w small
against the standard errors)."""
MAX_SHRINK = 200
"""Shrinkage iterations after which a slice update is declared broken."""
LOG_BLOCK = 32
"""Values multiplied together before one logarithm is taken in :func:`_lane_sum_log`."""


@dataclass(frozen=True)
class TreeData:
    """Everything a sweep reads but never changes.

    The units of every level are sorted by their parent, so that the children of a unit are
    a contiguous slice; ``orders`` maps back to the caller's order.

    Attributes
    ----------
    b, var_b
        Estimates and their variances, rows × m (sorted features).
    tau_scale
        HalfCauchy scale A of each τ, shape ``(D + 1,)``.
    mu0, s0
        Mean and sd of the normal prior of θ0.
    parent_index
        For each level l = 0..D, the parent (a level-(l + 1) unit) of each level-l unit;
        non-decreasing.
    starts
        For each level l = 0..D, the first level-l child of each level-(l + 1) unit.
    n_units
        Units per level: m, each annotation level's groups, then 1 (θ0).
    n_children
        For each level, the number of children of each unit (1 for a θ_j: its b_j).
    orders
        For each level l = 0..D, the caller's index of each sorted unit.
    positions
        The inverse permutations of ``orders``.
    """

    b: np.ndarray
    var_b: np.ndarray
    tau_scale: np.ndarray
    mu0: float
    s0: float
    parent_index: tuple[np.ndarray, ...]
    starts: tuple[np.ndarray, ...]
    n_units: tuple[int, ...]
    n_children: tuple[np.ndarray, ...]
    orders: tuple[np.ndarray, ...]
    positions: tuple[np.ndarray, ...]

    @cached_property
    def flat_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """All levels' ``starts`` in one array, and where each level's begin (D + 2 offsets)."""
        return np.concatenate(self.starts), np.cumsum([0, *(s.size for s in self.starts)])

    @cached_property
    def message_offsets(self) -> np.ndarray:
        """Where the units of each level 1..D + 1 begin in a row of all levels' messages.

        Index ``l`` holds the start of level ``l`` (index 0 is unused and equals index 1).
        """
        return np.cumsum([0, 0, *self.n_units[1:]])

    @cached_property
    def lanes(self) -> tuple[np.ndarray, np.ndarray]:
        """``b`` and ``var_b`` in lane layout (features × rows).

        The compiled τ update reads the data this way (:func:`_lane_level_term`).
        """
        return np.ascontiguousarray(self.b.T), np.ascontiguousarray(self.var_b.T)

    @classmethod
    def build(
        cls,
        b: np.ndarray,
        var_b: np.ndarray,
        tree: TreeIndex,
        tau_scale: np.ndarray,
        mu0: float,
        s0: float,
    ) -> TreeData:
        """Assemble the data of ``b.shape[0]`` rows on ``tree``.

        Parameters
        ----------
        b, var_b
            Rows × m arrays, features in the order of ``tree``.
        tree
            The integer tree structure.
        tau_scale
            HalfCauchy scale of each τ, one per level (features first).
        mu0, s0
            Prior mean and sd of θ0.
        """
        orders, parent_index = _sorted_levels(tree)
        n_units = tree.n_units
        b = np.asarray(b, dtype=float)
        var_b = np.broadcast_to(np.asarray(var_b, dtype=float), b.shape)
        return cls(
            b=np.ascontiguousarray(b[:, orders[0]]),
            var_b=np.ascontiguousarray(var_b[:, orders[0]]),
            tau_scale=np.asarray(tau_scale, dtype=float),
            mu0=float(mu0),
            s0=float(s0),
            parent_index=parent_index,
            starts=tuple(np.flatnonzero(np.diff(i, prepend=-1)) for i in parent_index),
            n_units=n_units,
            n_children=(
                np.ones(n_units[0]),
                *(
                    np.bincount(index, minlength=n).astype(float)
                    for index, n in zip(parent_index, n_units[1:], strict=True)
                ),
            ),
            orders=orders,
            positions=tuple(np.argsort(order) for order in orders),
        )

    @property
    def depth(self) -> int:
        """Number of annotation levels D."""
        return len(self.n_units) - 2

    @property
    def n_rows(self) -> int:
        """Number of independent rows."""
        return self.b.shape[0]

    def to_sorted(self, values: np.ndarray, level: int = 0) -> np.ndarray:
        """Units of ``level`` (last axis) from the caller's order to the internal one."""
        return values[..., self.orders[level]]

    def from_sorted(self, values: np.ndarray, level: int = 0) -> np.ndarray:
        """Units of ``level`` (last axis) from the internal order to the caller's one."""
        return values[..., self.positions[level]]

    def sum_into_parents(self, values: np.ndarray, level: int) -> np.ndarray:
        """Sum rows × n_units[level] ``values`` into their parents (rows × n_units[level+1])."""
        return np.add.reduceat(values, self.starts[level], axis=-1)


def _sorted_levels(tree: TreeIndex) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Orders that sort every level's units by parent, and the parent index after sorting."""
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
    return tuple(orders), tuple(parent_index)


@dataclass
class TreeState:
    """The sampled quantities of every row.

    Attributes
    ----------
    tau
        Rows × (D + 1) scales.
    units
        ``D + 2`` arrays: θ (sorted features), the group means finest first, θ0 (rows × 1).
    """

    tau: np.ndarray
    units: list[np.ndarray]


# ---------------------------------------------------------------------------- primitives
def draw_normal(mean: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of N(mean, var), elementwise."""
    return mean + np.sqrt(var) * rng.standard_normal(np.shape(mean))


def draw_inverse_gamma(
    shape: float | np.ndarray, rate: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One draw of IG(shape, rate) (density ∝ x^(-shape-1) exp(-rate / x)), elementwise."""
    return rate / rng.standard_gamma(shape, size=np.shape(rate))


def draw_mixing(tau: np.ndarray, tau_scale: float, rng: np.random.Generator) -> np.ndarray:
    """λ | τ ~ IG(1, 1/τ² + 1/A²), the auxiliary variable of the HalfCauchy(A) prior."""
    return draw_inverse_gamma(1.0, 1.0 / tau**2 + 1.0 / tau_scale**2, rng)


def draw_scale(
    sum_sq: np.ndarray, n_units: int, mixing: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """τ from τ² | λ, units ~ IG((n + 1)/2, SS/2 + 1/λ), SS the squared deviations."""
    return np.sqrt(draw_inverse_gamma(0.5 * (n_units + 1), 0.5 * sum_sq + 1.0 / mixing, rng))


@numba.vectorize(["float64(float64, float64)"], cache=True)
def log_scale_prior(eta: float, tau_scale: float) -> float:  # pragma: no cover - compiled
    """Log density of η = log τ for τ ~ HalfCauchy(A), up to a constant (Jacobian included).

    A NumPy ufunc (arrays broadcast), also callable with scalars from compiled code.
    """
    return eta - np.log1p(np.exp(2.0 * eta) / (tau_scale * tau_scale))


# ---------------------------------------------------------------------------- units
def children_message(data: TreeData, state: TreeState, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Message N(y; u, v) to the level-``level`` units from their children's current values.

    θ_j's child is b_j (y = b, v = s²); a group's children are its n units one level down
    (y = their mean, v = τ²_(level-1) / n); θ0's children are the top-level groups.
    """
    if level == 0:
        return data.b, data.var_b
    n_children = data.n_children[level]
    y = data.sum_into_parents(state.units[level - 1], level - 1) / n_children
    return y, state.tau[:, level - 1, None] ** 2 / n_children


def update_units(data: TreeData, state: TreeState, level: int, rng: np.random.Generator) -> None:
    """Centred update of the level-``level`` units from their normal full conditional."""
    draw_units(data, state, level, children_message(data, state, level), rng)


def draw_units(
    data: TreeData,
    state: TreeState,
    level: int,
    message: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> None:
    """Draw the level-``level`` units from their prior times the message N(y; u, v).

    The prior is N(parent, τ_level²), or N(mu0, s0²) for θ0; the conditional is
    :func:`~bayeshier_pymc.gaussian_tree.posterior_normal` (fused into one compiled loop
    below θ0).
    """
    y, v = message
    if level > data.depth:
        mean, var = posterior_normal(data.mu0, data.s0**2, y, v)
        state.units[level] = draw_normal(mean, var, rng)
        return
    state.units[level] = _draw_children_kernel(
        state.units[level + 1],
        data.parent_index[level],
        np.square(state.tau[:, level]),
        y,
        v,
        rng.standard_normal(np.shape(y)),
    )


@compiled_kernel
def _draw_children_kernel(
    parent: np.ndarray,
    parent_index: np.ndarray,
    tau_sq: np.ndarray,
    y: np.ndarray,
    v: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Units u ~ N(parent, τ²) × N(y; u, v), with ``noise`` standard normal (numba).

    As :func:`~bayeshier_pymc.gaussian_tree.posterior_normal`: weight w = τ² / (τ² + v),
    mean parent + w (y - parent), variance w v.
    """
    n_rows, n_units = y.shape
    out = np.empty((n_rows, n_units))
    for r in range(n_rows):
        for j in range(n_units):
            prior_mean = parent[r, parent_index[j]]
            weight = tau_sq[r] / (tau_sq[r] + v[r, j])
            mean = prior_mean + weight * (y[r, j] - prior_mean)
            out[r, j] = mean + np.sqrt(weight * v[r, j]) * noise[r, j]
    return out


def draw_units_given_scales(
    data: TreeData,
    state: TreeState,
    messages: Messages,
    rng: np.random.Generator,
    lowest_level: int = 0,
) -> None:
    """Draw θ0, the group means and, with ``lowest_level=0``, θ exactly given τ, top-down.

    ``messages`` are the upward messages given the current τ (:attr:`Evaluation.messages`).
    """
    for level in range(data.depth + 1, lowest_level - 1, -1):
        draw_units(data, state, level, messages[level], rng)


def sum_sq_deviations(data: TreeData, state: TreeState, level: int) -> np.ndarray:
    """Σ (unit - parent)² over the level-``level`` units of each row."""
    parent = state.units[level + 1][:, data.parent_index[level]]
    return ((state.units[level] - parent) ** 2).sum(axis=-1)


# ---------------------------------------------------------------------------- centred sweep
def conjugate_sweep(data: TreeData, state: TreeState, rng: np.random.Generator) -> None:
    """One centred Gibbs sweep, in place: θ, group means and θ0, then λ and τ per level."""
    for level in range(data.depth + 2):
        update_units(data, state, level, rng)
    for level in range(data.depth + 1):
        update_scale_conjugate(data, state, level, rng)


def update_scale_conjugate(
    data: TreeData, state: TreeState, level: int, rng: np.random.Generator
) -> None:
    """Centred update of τ_level: λ | τ, then τ² | λ, units (in place)."""
    mixing = draw_mixing(state.tau[:, level], data.tau_scale[level], rng)
    sum_sq = sum_sq_deviations(data, state, level)
    state.tau[:, level] = draw_scale(sum_sq, data.n_units[level], mixing, rng)


# ---------------------------------------------------------------------------- collapsed algebra
@vector_kernel
def _lane_level_term(
    y: np.ndarray,
    v: np.ndarray,
    tau_sq: np.ndarray,
    starts: np.ndarray,
    parent_y: np.ndarray,
    parent_v: np.ndarray,
    variance: np.ndarray,
    precision: np.ndarray,
    term: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Integrate out one level's units given messages N(y; u, v) to them and their scale τ.

    The level's contribution to log p(b | τ), up to a constant, goes to ``term`` (one per
    row): -½ Σ_units [log(v + τ²) + (y - ȳ_parent)² / (v + τ²)] - ½ Σ_parents log P, with P
    and ȳ the precision and precision-weighted mean of the children of each parent; the
    messages N(ȳ; u, 1/P) to the parents go to ``parent_y``, ``parent_v``.

    Every row at once, in *lane* layout (rows on the last axis): ``y``, ``v`` are units ×
    rows, ``parent_y``, ``parent_v`` parents × rows; ``variance`` and ``precision`` are
    scratch of at least units × rows. Every row shares the tree, so the innermost loops run
    over rows and vectorise whatever the group sizes. Two exact rearrangements keep the pass
    cheap: Σ (y - ȳ)² / (v + τ²) = S2 - S1²/P from the weighted sums S1, S2 of y shifted by
    the parent's first child (which keeps them well conditioned), and the logarithms of
    every v + τ² and every P are summed by :func:`_lane_sum_log`, one per ``LOG_BLOCK``
    values.
    """
    n_units, n_rows = y.shape
    n_parents = starts.size
    for j in range(n_units):
        for r in range(n_rows):
            variance[j, r] = v[j, r] + tau_sq[r]
    s1 = np.empty(n_rows)
    s2 = np.empty(n_rows)
    term[:] = 0.0
    for h in range(n_parents):
        first = starts[h]
        end = starts[h + 1] if h + 1 < n_parents else n_units
        shift = y[first]
        group_precision = precision[h]
        group_precision[:] = 0.0
        s1[:] = 0.0
        s2[:] = 0.0
        for j in range(first, end):
            for r in range(n_rows):
                weight = 1.0 / variance[j, r]
                deviation = y[j, r] - shift[r]
                weighted = weight * deviation
                group_precision[r] += weight
                s1[r] += weighted
                s2[r] += weighted * deviation
        for r in range(n_rows):
            mean = s1[r] / group_precision[r]
            term[r] += s2[r] - s1[r] * mean
            parent_y[h, r] = shift[r] + mean
            parent_v[h, r] = 1.0 / group_precision[r]
    _lane_sum_log(variance[:n_units], term)
    _lane_sum_log(precision[:n_parents], term)
    for r in range(n_rows):
        term[r] *= -0.5


@vector_kernel
def _lane_sum_log(values: np.ndarray, total: np.ndarray) -> None:  # pragma: no cover - compiled
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


@compiled_kernel
def _lane_evaluate_from(
    level: int,
    tau_sq: np.ndarray,
    b: np.ndarray,
    var_b: np.ndarray,
    in_y: np.ndarray,
    in_v: np.ndarray,
    starts: np.ndarray,
    starts_offsets: np.ndarray,
    offsets: np.ndarray,
    mu0: float,
    s0: float,
    terms: np.ndarray,
    out_y: np.ndarray,
    out_v: np.ndarray,
    variance: np.ndarray,
    precision: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The terms and upward messages from ``level`` up, every row at once (lane layout).

    ``tau_sq`` is levels × rows. The messages to the level's units are the data ``b``,
    ``var_b`` (features × rows) at level 0, else ``in_y``, ``in_v``; like ``out_y``,
    ``out_v``, these hold the messages to every level 1..D + 1, level l in rows
    ``offsets[l]:offsets[l + 1]`` (:attr:`TreeData.message_offsets`). The terms of levels
    ``level``..D and θ0 go to ``terms`` (levels + 1 × rows) and the messages to the levels
    above into ``out_y``, ``out_v``. ``variance`` and ``precision`` are scratch at least as
    large as ``b``.
    """
    depth = tau_sq.shape[0] - 1
    for upper in range(level, depth + 1):
        level_starts = starts[starts_offsets[upper] : starts_offsets[upper + 1]]
        below = slice(offsets[upper], offsets[upper + 1])
        out = slice(offsets[upper + 1], offsets[upper + 2])
        if upper == 0:
            y, v = b, var_b
        elif upper == level:
            y, v = in_y[below], in_v[below]
        else:
            y, v = out_y[below], out_v[below]
        _lane_level_term(
            y,
            v,
            tau_sq[upper],
            level_starts,
            out_y[out],
            out_v[out],
            variance,
            precision,
            terms[upper],
        )
    top = offsets[depth + 1]
    for r in range(tau_sq.shape[1]):
        terms[depth + 1, r] = _row_top_term(out_y[top, r], out_v[top, r], mu0, s0)


@compiled_kernel
def _row_top_term(y: float, v: float, mu0: float, s0: float) -> float:  # pragma: no cover
    """θ0 integrated out: log N(y; mu0, v + s0²) up to a constant."""
    total = v + s0 * s0
    return -0.5 * (np.log(total) + (y - mu0) ** 2 / total)


@dataclass(frozen=True)
class Evaluation:
    """log p(b | τ) of every row, level by level, with the upward messages, for one τ.

    Attributes
    ----------
    terms
        For each level 0..D, its term (:func:`_lane_level_term`), then θ0's (rows each);
        their sum is log p(b | τ) up to a constant.
    messages
        The upward messages N(y; u, v) to the units of each level 0..D + 1 (θ0's last).
    """

    terms: tuple[np.ndarray, ...]
    messages: tuple[tuple[np.ndarray, np.ndarray], ...]

    @property
    def log_marginal(self) -> np.ndarray:
        """Log p(b | τ) per row, up to a constant."""
        return np.sum(self.terms, axis=0)

    def from_level(self, level: int) -> np.ndarray:
        """The part of log p(b | τ) that depends on τ_level given the lower scales."""
        return np.sum(self.terms[level:], axis=0)

    def redo_from(self, data: TreeData, level: int, tau: np.ndarray) -> Evaluation:
        """The evaluation for ``tau``, which differs from this one's only from ``level`` up."""
        offsets = data.message_offsets
        message_y, message_v = np.empty((2, offsets[-1], data.n_rows))
        if level:
            y, v = self.messages[level]
            message_y[offsets[level] : offsets[level + 1]] = y.T
            message_v[offsets[level] : offsets[level + 1]] = v.T
        b, var_b = data.lanes
        starts, starts_offsets = data.flat_starts
        terms = np.empty((data.depth + 2, data.n_rows))
        _lane_evaluate_from(
            level,
            np.ascontiguousarray(np.square(tau).T),
            b,
            var_b,
            message_y,
            message_v,
            starts,
            starts_offsets,
            offsets,
            data.mu0,
            data.s0,
            terms,
            message_y,
            message_v,
            np.empty_like(b),
            np.empty_like(b),
        )
        messages = _messages_by_row(message_y, message_v, offsets, range(level + 1, data.depth + 2))
        return Evaluation(
            (*self.terms[:level], *terms[level:]), (*self.messages[: level + 1], *messages)
        )


def _messages_by_row(
    message_y: np.ndarray, message_v: np.ndarray, offsets: np.ndarray, levels: range
) -> Messages:
    """The messages to each of ``levels`` (1..D + 1) from lane layout, rows first."""
    return [
        (
            np.ascontiguousarray(message_y[offsets[level] : offsets[level + 1]].T),
            np.ascontiguousarray(message_v[offsets[level] : offsets[level + 1]].T),
        )
        for level in levels
    ]


def evaluate(data: TreeData, tau: np.ndarray) -> Evaluation:
    """:class:`Evaluation` of scales ``tau`` (rows × levels): θ, groups and θ0 integrated out."""
    empty = Evaluation((), ((data.b, data.var_b),))
    return empty.redo_from(data, 0, tau)


# ---------------------------------------------------------------------------- scale kernel
def slice_sample(
    x0: np.ndarray,
    log_density: Callable[[np.ndarray], np.ndarray],
    width: float,
    max_steps: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One univariate slice-sampling update per row (Neal 2003, stepping out and shrinkage).

    Parameters
    ----------
    x0
        Current values, one per row.
    log_density
        ``f(x)``: the rows' log densities at ``x`` (one value per row).
    width
        Width of the initial interval, placed at random around ``x0``.
    max_steps
        Neal's ``m``: at most ``m - 1`` stepping-out steps in all (1: none).
    rng
        Random generator.

    Returns
    -------
    numpy.ndarray
        The new values.
    """
    n = x0.shape[0]
    level = log_density(x0) - rng.standard_exponential(n)
    left = x0 - width * rng.random(n)
    right = left + width
    steps_left = np.floor(max_steps * rng.random(n))
    left = _step_out(x0, left, -width, steps_left, level, log_density)
    right = _step_out(x0, right, width, max_steps - 1 - steps_left, level, log_density)
    x1 = x0.copy()
    active = np.ones(n, dtype=bool)
    for _ in range(MAX_SHRINK):
        proposal = np.where(active, left + (right - left) * rng.random(n), x0)
        inside = active & (log_density(proposal) > level)
        x1[inside] = proposal[inside]
        active &= ~inside
        if not active.any():
            return x1
        below = active & (proposal < x0)
        left[below] = proposal[below]
        above = active & (proposal >= x0)
        right[above] = proposal[above]
    raise FloatingPointError(
        f"slice sampling found no point in {MAX_SHRINK} shrinkage steps for "
        f"{int(active.sum())} row(s); the log density is probably not finite there."
    )


def _step_out(
    x0: np.ndarray,
    edge: np.ndarray,
    step: float,
    n_steps: np.ndarray,
    level: np.ndarray,
    log_density: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Move each edge by ``step`` while it lies inside the slice, at most ``n_steps`` times."""
    edge, n_steps = edge.copy(), n_steps.copy()
    active = n_steps > 0
    while active.any():
        inside = active & (log_density(np.where(active, edge, x0)) > level)
        edge[inside] += step
        n_steps[inside] -= 1
        active = inside & (n_steps > 0)
    return edge


@dataclass(frozen=True)
class ScaleProposal:
    """Independence proposal for log τ per row and level: Student-t(5) at ``loc``, ``scale``.

    Its polynomial tails are heavier than the exponential tails of the collapsed conditional
    of log τ, so the weight ratio target / proposal stays bounded (a uniformly ergodic
    independence sampler; Mengersen & Tweedie 1996).
    """

    loc: np.ndarray
    scale: np.ndarray


@dataclass
class ScaleKernel:
    """The update of each log τ_l in :func:`collapsed_sweep`, with its tuning state.

    While tuning, the first ``min(20, tune // 4)`` sweeps use slice sampling with stepping out
    (robust from any start); from the second half of those on, running moments (Welford) of
    log τ are kept per row and level. The remaining tuning sweeps use independence
    Metropolis–Hastings with a :class:`ScaleProposal` at the running mean with 1.5 running
    sds; :meth:`stop_tuning` freezes it at one sd (or keeps slice sampling with fewer than
    ``MIN_FIT_DRAWS`` draws). Each update is then ``steps`` independence MH steps (one while
    tuning). The proposal approximates the marginal posterior of log τ, which the collapsed
    conditional is close to, so most proposals are accepted and successive τ are nearly
    independent.

    Attributes
    ----------
    steps
        MH steps per level and sweep after tuning.
    slice_sweeps
        Tuning sweeps that use slice sampling.
    tuning, sweep, count, mean, m2
        Tuning flag, tuning sweeps seen, and the Welford count, mean and sum of squared
        deviations of the recorded log τ (rows × levels).
    frozen
        The proposal fixed by :meth:`stop_tuning`.
    current
        The τ (rows × levels) left by the last independence update, with its terms and
        messages in lane layout (see :func:`_independence_kernel`), reused by the next update
        while τ is unchanged.
    """

    steps: int = DEFAULT_SCALE_STEPS
    slice_sweeps: int = MAX_SLICE_SWEEPS
    tuning: bool = True
    sweep: int = 0
    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frozen: ScaleProposal | None = None
    current: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, repr=False
    )

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"scale_steps must be at least 1, got {self.steps}.")

    @classmethod
    def for_tuning(cls, tune: int, steps: int = DEFAULT_SCALE_STEPS) -> ScaleKernel:
        """A kernel that will be tuned over ``tune`` sweeps."""
        return cls(steps=steps, slice_sweeps=min(MAX_SLICE_SWEEPS, max(tune // 4, 1)))

    @property
    def uses_slice(self) -> bool:
        """Whether the next sweep updates τ by slice sampling."""
        if self.tuning:
            return self.sweep < self.slice_sweeps or self.count < MIN_FIT_DRAWS
        return self.frozen is None

    def proposal(self) -> ScaleProposal:
        """The independence proposal of the next update."""
        if self.frozen is not None:
            return self.frozen
        return ScaleProposal(self.mean, TUNING_INFLATION * self._sd())

    def observe(self, log_tau: np.ndarray) -> None:
        """Record the log τ (rows × levels) of a finished sweep."""
        if not self.tuning:
            return
        self.sweep += 1
        if self.sweep <= self.slice_sweeps // 2:
            return
        if self.count == 0:
            self.mean, self.m2 = np.zeros_like(log_tau), np.zeros_like(log_tau)
        self.count += 1
        delta = log_tau - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (log_tau - self.mean)

    def stop_tuning(self) -> None:
        """Freeze the proposal (or keep slice sampling when too few draws were seen)."""
        if self.tuning and self.count >= MIN_FIT_DRAWS:
            self.frozen = ScaleProposal(self.mean.copy(), self._sd())
        self.tuning = False

    def _sd(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count - 1, 1)) + 1e-3


def _replace_column(tau: np.ndarray, level: int, values: np.ndarray) -> np.ndarray:
    new = tau.copy()
    new[:, level] = values
    return new


def _slice_update(
    data: TreeData, state: TreeState, level: int, current: Evaluation, rng: np.random.Generator
) -> Evaluation:
    """One slice-sampling update of log τ_level; returns the evaluation of the new τ."""
    tau_scale = data.tau_scale[level]

    def log_density(eta: np.ndarray) -> np.ndarray:
        tau = _replace_column(state.tau, level, np.exp(eta))
        return current.redo_from(data, level, tau).from_level(level) + log_scale_prior(
            eta, tau_scale
        )

    eta = slice_sample(np.log(state.tau[:, level]), log_density, SLICE_WIDTH, SLICE_MAX_STEPS, rng)
    state.tau[:, level] = np.exp(eta)
    return current.redo_from(data, level, state.tau)


def _independence_updates(
    data: TreeData,
    state: TreeState,
    kernel: ScaleKernel,
    levels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[Messages, np.ndarray]:
    """Independence MH steps for each of ``levels`` in the compiled kernel.

    ``kernel.steps`` steps per level, one while tuning (tuning draws are discarded, so the
    cheaper kernel is enough to fit the proposal).
    """
    proposal = kernel.proposal()
    shape = (data.n_rows, levels.size, 1 if kernel.tuning else kernel.steps)
    t_draws = rng.standard_t(PROPOSAL_DF, size=shape)
    log_uniform = np.log(rng.random(shape))
    offsets = data.message_offsets
    if kernel.current is None or kernel.current[0].shape != state.tau.shape:
        lanes = (offsets[-1], data.n_rows)
        kernel.current = (
            np.full(state.tau.shape, np.nan),
            np.empty((data.depth + 2, data.n_rows)),
            np.empty(lanes),
            np.empty(lanes),
        )
    b, var_b = data.lanes
    starts, starts_offsets = data.flat_starts
    acceptance = _independence_kernel(
        b,
        var_b,
        state.tau,
        levels,
        proposal.loc,
        proposal.scale,
        t_draws,
        log_uniform,
        data.tau_scale,
        data.mu0,
        data.s0,
        starts,
        starts_offsets,
        offsets,
        *kernel.current,
    )
    _, _, message_y, message_v = kernel.current
    upper = _messages_by_row(message_y, message_v, offsets, range(1, data.depth + 2))
    return [(data.b, data.var_b), *upper], acceptance


@compiled_kernel
def _log_t_kernel(z: float) -> float:  # pragma: no cover - compiled
    """Log density of the standardised t proposal at ``z``, up to a constant."""
    return -0.5 * (PROPOSAL_DF + 1.0) * np.log1p(z * z / PROPOSAL_DF)


@compiled_kernel
def _independence_kernel(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    levels: np.ndarray,
    loc: np.ndarray,
    scale: np.ndarray,
    t_draws: np.ndarray,
    log_uniform: np.ndarray,
    tau_scale: np.ndarray,
    mu0: float,
    s0: float,
    starts: np.ndarray,
    starts_offsets: np.ndarray,
    offsets: np.ndarray,
    current_tau: np.ndarray,
    terms: np.ndarray,
    message_y: np.ndarray,
    message_v: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Independence MH on log τ of each level in ``levels``, all rows in step, in place.

    The target of level l is log p(b | τ) + log HalfCauchy(τ_l; A_l) + log τ_l (the
    Jacobian); the proposal is the t(5) of ``loc``, ``scale`` with the given draws. Only the
    terms from level l up change with τ_l, so a proposal re-evaluates those alone, for every
    row at once (:func:`_lane_evaluate_from`); each row then accepts or rejects its own.
    ``b``, ``var_b`` are the data in lane layout (:attr:`TreeData.lanes`). ``terms``,
    ``message_y`` and ``message_v`` hold the evaluation of ``current_tau`` (lane layout): it
    is reused when ``tau`` still equals ``current_tau`` (the previous call's result) and
    computed afresh otherwise, and it is left holding the final τ's. Returns the share of
    accepted proposals per row.
    """
    n_rows, n_levels = tau.shape
    n_steps = t_draws.shape[2]
    tau_sq = np.empty((n_levels, n_rows))
    fresh = False
    for r in range(n_rows):
        for level in range(n_levels):
            tau_sq[level, r] = tau[r, level] * tau[r, level]
            fresh = fresh or tau[r, level] != current_tau[r, level]
    variance = np.empty_like(b)
    precision = np.empty_like(b)
    lane_args = (starts, starts_offsets, offsets, mu0, s0)
    if fresh:
        _lane_evaluate_from(
            0,
            tau_sq,
            b,
            var_b,
            message_y,
            message_v,
            *lane_args,
            terms,
            message_y,
            message_v,
            variance,
            precision,
        )
    proposed_tau_sq = tau_sq.copy()
    proposed_terms = np.empty_like(terms)
    proposed_y = np.empty_like(message_y)
    proposed_v = np.empty_like(message_v)
    eta = np.empty(n_rows)
    proposal = np.empty(n_rows)
    accepted = np.zeros(n_rows)
    for i in range(levels.size):
        level = levels[i]
        for step in range(n_steps):
            for r in range(n_rows):
                eta[r] = np.log(tau[r, level])
                proposal[r] = loc[r, level] + scale[r, level] * t_draws[r, i, step]
                proposed = np.exp(proposal[r])
                proposed_tau_sq[level, r] = proposed * proposed
            _lane_evaluate_from(
                level,
                proposed_tau_sq,
                b,
                var_b,
                message_y,
                message_v,
                *lane_args,
                proposed_terms,
                proposed_y,
                proposed_v,
                variance,
                precision,
            )
            for r in range(n_rows):
                log_ratio = (
                    np.sum(proposed_terms[level:, r])
                    - np.sum(terms[level:, r])
                    + log_scale_prior(proposal[r], tau_scale[level])
                    - log_scale_prior(eta[r], tau_scale[level])
                    + _log_t_kernel((eta[r] - loc[r, level]) / scale[r, level])
                    - _log_t_kernel((proposal[r] - loc[r, level]) / scale[r, level])
                )
                if log_uniform[r, i, step] < log_ratio:
                    accepted[r] += 1
                    tau[r, level] = np.exp(proposal[r])
                    tau_sq[level, r] = proposed_tau_sq[level, r]
                    terms[level:, r] = proposed_terms[level:, r]
                    message_y[offsets[level + 1] :, r] = proposed_y[offsets[level + 1] :, r]
                    message_v[offsets[level + 1] :, r] = proposed_v[offsets[level + 1] :, r]
                else:
                    proposed_tau_sq[level, r] = tau_sq[level, r]
    current_tau[:] = tau
    return accepted / (levels.size * n_steps)


def update_scales(
    data: TreeData,
    state: TreeState,
    kernel: ScaleKernel,
    rng: np.random.Generator,
    levels: list[int] | None = None,
) -> tuple[Messages, np.ndarray]:
    """Update log τ of each level from p(τ_level | b, other τ), in turn and in place.

    Parameters
    ----------
    data, state
        The data and the current state (only ``state.tau`` is read and written).
    kernel
        Slice sampling, or independence MH steps (``kernel.steps`` per level after tuning).
    rng
        Random generator.
    levels
        The levels updated, in this order (default: all, finest first).

    Returns
    -------
    messages : Messages
        The upward messages to every level given the new τ.
    acceptance : numpy.ndarray
        Per row, the share of MH proposals accepted (NaN for slice sampling).
    """
    chosen = np.arange(data.depth + 1) if levels is None else np.asarray(levels, dtype=np.intp)
    if not kernel.uses_slice:
        return _independence_updates(data, state, kernel, chosen, rng)
    current = evaluate(data, state.tau)
    for level in chosen:
        current = _slice_update(data, state, int(level), current, rng)
    return list(current.messages), np.full(data.n_rows, np.nan)


def collapsed_sweep(
    data: TreeData,
    state: TreeState,
    kernel: ScaleKernel,
    rng: np.random.Generator,
    *,
    draw_units_from: int | None = 0,
) -> np.ndarray:
    """One collapsed sweep, in place (see the module docstring).

    Parameters
    ----------
    data, state
        The data and the current state.
    kernel
        The τ update and its tuning state; the sweep's τ draws are recorded in it.
    rng
        Random generator.
    draw_units_from
        The lowest level whose units are drawn after τ (0: θ too; 1: the group means and
        θ0; None: none). Nothing in the next sweep conditions on the units, so they can be
        skipped when the draw is not kept (tuning, thinning), or drawn elsewhere (the
        engine draws θ from the kept τ and group means).

    Returns
    -------
    numpy.ndarray
        Per row, the share of the independence proposals accepted (NaN for a sweep that
        used slice sampling).
    """
    messages, acceptance = update_scales(data, state, kernel, rng)
    kernel.observe(np.log(state.tau))
    if draw_units_from is not None:
        draw_units_given_scales(data, state, messages, rng, lowest_level=draw_units_from)
    return acceptance


def initial_state(data: TreeData, rng: np.random.Generator) -> TreeState:
    """Dispersed starting points: log τ_l uniform on [log(A_l / 20), log A_l], units exact.

    Every row gets its own scales; θ0, the group means and θ are then drawn exactly given
    them, so each chain starts from a different, internally consistent point.
    """
    log_scale = np.log(data.tau_scale)
    tau = np.exp(log_scale - np.log(20.0) * rng.random((data.n_rows, data.depth + 1)))
    state = TreeState(tau, [np.zeros((data.n_rows, n)) for n in data.n_units])
    draw_units_given_scales(data, state, list(evaluate(data, tau).messages), rng)
    return state
