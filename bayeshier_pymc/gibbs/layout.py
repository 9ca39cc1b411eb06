"""The layout of the Gibbs sweeps: the data every sweep reads and the state it changes.

A *row* is one independent copy of the tree problem (see the glossary of
:mod:`bayeshier_pymc.gaussian_tree`): one covariate in the PyMC step, one (chain, covariate)
pair in the engine. Every array has the rows first, except the lane layout that the compiled
upward pass reads (:attr:`TreeData.lane_problem`).

``units[0]`` holds θ (rows × m), ``units[l]`` the means of the level-l groups (l = 1..D) and
``units[D + 1]`` θ0 as a rows × 1 array. Every level ``l <= D`` thus has a parent level
``l + 1``, and ``tau[:, l]`` is the sd of the level-l units around their parents; θ0 has the
fixed prior N(mu0, s0²) and τ_l the prior HalfCauchy(A_l), each row with its own numbers
(a row's covariate's priors). Inside :class:`TreeData` and :class:`TreeState` the units of every
level are sorted by their parent, so that the children of a unit are a contiguous slice;
:meth:`TreeData.to_sorted` and :meth:`TreeData.from_sorted` convert.

With correlated estimates (tree-structured noise, *shared noise, total* in the glossary) the
tree is the problem's noise tree (:attr:`~bayeshier_pymc.problem.ShrinkageProblem.index`),
which may have more levels than the effects use: τ has one column per effect level
(:attr:`TreeData.n_scales`) and the levels above have no effect variation (scale zero,
:meth:`TreeData.algebra_scales`). The units then hold the totals (effect plus the noise on
their path) that the sweeps draw; :func:`~bayeshier_pymc.gibbs.sweeps.split_effects` turns
them into effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, pad_scales
from bayeshier_pymc.gaussian_tree.kernels import LaneProblem, SplitTree, lane_problem, sort_tree
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = ["LocalScales", "TreeData", "TreeState"]


@dataclass(frozen=True)
class TreeData:
    """Everything a sweep reads but never changes.

    The units of every level are sorted by their parent, so that the children of a unit are
    a contiguous slice; ``orders`` maps back to the caller's order.

    Attributes
    ----------
    b, var_b
        Estimates and their variances, rows × m (sorted features); with shared noise, the
        own noise variances.
    tau_scale
        HalfCauchy scale A of each τ, rows × ``n_scales`` (``D + 1`` unless the effects use
        fewer levels than the tree has).
    mu0, s0
        Mean and sd of the normal prior of θ0, one per row.
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
    noise
        For each level 1..D + 1, rows × units (sorted): the shared-noise variance of every
        group and of θ0; zeros for independent estimates.
    correlated
        Whether the estimates carry shared noise (the units are then totals).
    """

    b: np.ndarray
    var_b: np.ndarray
    tau_scale: np.ndarray
    mu0: np.ndarray
    s0: np.ndarray
    parent_index: tuple[np.ndarray, ...]
    starts: tuple[np.ndarray, ...]
    n_units: tuple[int, ...]
    n_children: tuple[np.ndarray, ...]
    orders: tuple[np.ndarray, ...]
    positions: tuple[np.ndarray, ...]
    noise: tuple[np.ndarray, ...]
    correlated: bool

    @cached_property
    def message_offsets(self) -> np.ndarray:
        """Where the units of each level 1..D + 1 begin among all levels' units, concatenated.

        As in a lane array of all levels' messages, or in :attr:`split_tree`.

        Index ``l`` holds the start of level ``l`` (index 0 is unused and equals index 1).
        """
        return np.cumsum([0, 0, *self.n_units[1:]])

    @cached_property
    def lane_problem(self) -> LaneProblem:
        """The data, tree and θ0 prior in lane layout, for the compiled upward pass."""
        return lane_problem(
            self.b, self.var_b, self.starts, self.n_units, self.mu0, self.s0, self.noise
        )

    @cached_property
    def split_tree(self) -> SplitTree:
        """The groups and θ0, their parents and shared noise, for the compiled split.

        The units are numbered as in a lane array of messages (:attr:`message_offsets`).
        """
        offsets = self.message_offsets
        return SplitTree(
            parent=np.concatenate(
                [
                    offsets[level + 1] + self.parent_index[level]
                    for level in range(1, self.depth + 1)
                ]
                + [np.zeros(1, dtype=np.intp)]
            ).astype(np.intp),
            unit_level=np.repeat(np.arange(1, self.depth + 2), self.n_units[1:]).astype(np.intp),
            noise=np.ascontiguousarray(np.concatenate(self.noise, axis=1)),
        )

    @property
    def n_scales(self) -> int:
        """Number of sampled scales: the levels with effect variation, features first."""
        return self.tau_scale.shape[1]

    def algebra_scales(self, tau: np.ndarray) -> np.ndarray:
        """Scales (rows × n_scales) padded with zeros to every level of the tree (D + 1)."""
        return pad_scales(tau, self.depth)

    @classmethod
    def build(
        cls,
        b: np.ndarray,
        var_b: np.ndarray,
        tree: TreeIndex,
        tau_scale: np.ndarray,
        mu0: float | np.ndarray,
        s0: float | np.ndarray,
        noise: NodeNoise | None = None,
    ) -> TreeData:
        """Assemble the data of ``b.shape[0]`` rows on ``tree``.

        Parameters
        ----------
        b, var_b
            Rows × m arrays, features in the order of ``tree``.
        tree
            The integer tree structure.
        tau_scale
            HalfCauchy scale of each τ, one per level with effect variation (features first),
            the same for every row or rows × levels; the levels above have scale zero.
        mu0, s0
            Prior mean and sd of θ0: one number, or one per row.
        noise
            Shared noise at the groups and the top, rows first, groups in the order of
            ``tree``; ``None`` for independent estimates (``var_b`` their variances).
        """
        orders, parent_index, starts = sort_tree(tree)
        n_units = tree.n_units
        b = np.asarray(b, dtype=float)
        var_b = np.broadcast_to(np.asarray(var_b, dtype=float), b.shape)
        n_rows = b.shape[0]
        if noise is None:
            shared = tuple(np.zeros((n_rows, n)) for n in n_units[1:])
        else:
            shared = (
                *(
                    np.ascontiguousarray(np.broadcast_to(g, (n_rows, n))[:, order], dtype=float)
                    for g, n, order in zip(noise.groups, n_units[1:-1], orders[1:], strict=True)
                ),
                np.broadcast_to(np.asarray(noise.top, dtype=float), (n_rows,))[:, None].copy(),
            )
        return cls(
            b=np.ascontiguousarray(b[:, orders[0]]),
            var_b=np.ascontiguousarray(var_b[:, orders[0]]),
            tau_scale=_scales_per_row(tau_scale, n_rows),
            mu0=_per_row(mu0, n_rows),
            s0=_per_row(s0, n_rows),
            parent_index=parent_index,
            starts=starts,
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
            noise=shared,
            correlated=noise is not None,
        )

    @classmethod
    def from_problem(cls, problem: ShrinkageProblem, copies: int = 1) -> TreeData:
        """The data of a pooled ``problem``, every covariate repeated ``copies`` times (chains).

        The tree is the problem's algebra tree (its noise tree with correlated estimates).
        """
        if problem.tree is None:
            raise ValueError("a problem without pooling has no tree to sweep.")
        priors = problem.priors
        noise = problem.noise
        if noise is not None:
            noise = NodeNoise(
                tuple(np.tile(g, (copies, 1)) for g in noise.groups), np.tile(noise.top, copies)
            )
        return cls.build(
            np.tile(problem.algebra_b, (copies, 1)),
            np.tile(problem.var_b, (copies, 1)),
            problem.index,
            np.tile(priors.tau_scale, (copies, 1)),
            np.tile(priors.mu0, copies),
            np.tile(priors.s0, copies),
            noise,
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

    def rows_to_sorted(self, values: np.ndarray, level: int = 0) -> np.ndarray:
        """:meth:`to_sorted`, C-contiguous: the rows as the compiled kernels read them.

        ``np.take`` gathers straight into rows, where indexing the last axis
        (:meth:`to_sorted`) gives a transposed copy that a second copy lays out by rows. The
        values are the same; :meth:`to_sorted` stays as it is for its callers, whose NumPy
        sums over such a copy run in its order.
        """
        return np.take(values, self.orders[level], axis=-1)

    def from_sorted(
        self, values: np.ndarray, level: int = 0, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Units of ``level`` (last axis) from the internal order to the caller's one.

        With ``out`` (C-contiguous, of the result's shape and type) the result is written
        there, gathered by rows (``np.take``), and returned.
        """
        if out is None:
            return values[..., self.positions[level]]
        # the positions are a permutation: mode="clip" never clips, and writes ``out`` unbuffered
        return np.take(values, self.positions[level], axis=-1, out=out, mode="clip")

    def sum_into_parents(self, values: np.ndarray, level: int) -> np.ndarray:
        """Sum rows × n_units[level] ``values`` into their parents (rows × n_units[level+1])."""
        return np.add.reduceat(values, self.starts[level], axis=-1)


def _per_row(values: float | np.ndarray, n_rows: int) -> np.ndarray:
    """One number, or one per row, as an array (rows,)."""
    return np.ascontiguousarray(np.broadcast_to(np.asarray(values, dtype=float), (n_rows,)))


def _scales_per_row(tau_scale: np.ndarray, n_rows: int) -> np.ndarray:
    """One scale per level, the same for every row, or rows × levels, as rows × levels."""
    scales = np.asarray(tau_scale, dtype=float)
    scales = scales[None, :] if scales.ndim == 1 else scales
    return np.ascontiguousarray(np.broadcast_to(scales, (n_rows, scales.shape[-1])))


@dataclass
class LocalScales:
    """λ² (and the horseshoe's ξ) of every group of every level used, for every row.

    The state of a heavy-tailed group prior's local scales
    (:mod:`bayeshier_pymc.gibbs.local_scales`); the sweeps update it
    (:func:`~bayeshier_pymc.gibbs.sweeps.update_local_scales`).

    Attributes
    ----------
    priors
        The priors (their ``group_prior`` and ``group_df``).
    variances
        For each annotation level used, l = 1..L in turn, λ² (rows × groups, sorted as the
        state's units, :class:`~bayeshier_pymc.gibbs.layout.TreeState`).
    auxiliary
        The horseshoe's ξ, as ``variances`` (ones and unused under the Student-t prior).
    """

    priors: Priors
    variances: list[np.ndarray]
    auxiliary: list[np.ndarray]

    @classmethod
    def start(cls, data: TreeData, priors: Priors) -> LocalScales:
        """Every λ² and ξ at 1 (the model's normal prior), on the levels with a scale."""
        levels = range(1, data.n_scales)
        return cls(
            priors,
            [np.ones((data.n_rows, data.n_units[level])) for level in levels],
            [np.ones((data.n_rows, data.n_units[level])) for level in levels],
        )

    @property
    def n_levels(self) -> int:
        """Number of annotation levels with local scales (L)."""
        return len(self.variances)

    def unit(self, level: int) -> np.ndarray:
        """λ² of the level-``level`` units (rows × units), or no columns where they have none."""
        if 1 <= level <= self.n_levels:
            return self.variances[level - 1]
        return np.empty((self.variances[0].shape[0], 0))

    def lane(self, data: TreeData) -> np.ndarray:
        """λ² of every unit of levels 1..D + 1 in lane layout (units × rows), ones elsewhere.

        The units at their places in a :class:`~bayeshier_pymc.gaussian_tree.kernels.LaneMessages`
        array (:attr:`TreeData.message_offsets`); the transpose is the numbering of
        :attr:`TreeData.split_tree`.
        """
        offsets = data.message_offsets
        lane = np.ones((offsets[-1], data.n_rows))
        for level, variances in enumerate(self.variances, start=1):
            lane[offsets[level] : offsets[level + 1]] = variances.T
        return lane


@dataclass
class TreeState:
    """The sampled quantities of every row.

    Attributes
    ----------
    tau
        Rows × (D + 1) scales.
    units
        ``D + 2`` arrays: θ (sorted features), the group means finest first, θ0 (rows × 1).
    local
        The local scales of the group effects under a heavy-tailed group prior
        (:mod:`bayeshier_pymc.gibbs.local_scales`); ``None`` under the normal one.
    split
        With local scales and shared noise, the effects split from the last drawn totals
        and the noise on the paths of θ's parents
        (:func:`~bayeshier_pymc.gibbs.sweeps.split_effects`), which λ was drawn from and
        which the kept draw records; ``None`` otherwise.
    """

    tau: np.ndarray
    units: list[np.ndarray]
    local: LocalScales | None = None
    split: tuple[list[np.ndarray], np.ndarray] | None = None

    def local_lane(self, data: TreeData) -> np.ndarray:
        """λ² in lane layout for the compiled upward pass; no rows under the normal prior."""
        if self.local is None:
            return np.empty((0, data.n_rows))
        return self.local.lane(data)
