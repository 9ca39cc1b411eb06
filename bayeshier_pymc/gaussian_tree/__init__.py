"""Exact Gaussian algebra on the annotation tree, given the scales τ.

With every τ fixed, the model

    b_j ~ N(θ_j, s_j²),  θ_j ~ N(u¹_h(j), τ_0²),  u¹_h ~ N(u²_g(h), τ_1²), …,  u^D ~ N(θ0, τ_D²),
    θ0 ~ N(mu0, s0²)

is jointly Gaussian on a tree, so one upward pass of messages gives the marginal likelihood
p(b | τ) exactly, and one downward pass draws (θ0, group means, θ) exactly from p(· | b, τ).
The same code runs on NumPy arrays (exact draws, pointwise densities) and on PyTensor tensors
(the collapsed PyMC model), through :class:`ArrayOps`.

Every unit (a feature, or a group at some level) carries a message ``N(y; u, v)``: the
likelihood of the data below it as a function of its value ``u``, up to a constant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bayeshier_pymc.hierarchy import Hierarchy

__all__ = ["NUMPY_OPS", "ArrayOps", "Messages", "TreeIndex", "draw_tree", "upward_pass"]

LOG_2PI = float(np.log(2.0 * np.pi))


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

    Returns
    -------
    Messages
        ``y[0], v[0]`` are ``b, var_b``; ``y[d], v[d]`` the messages of the level-d groups;
        ``y[-1], v[-1]`` that of θ0 (shape ``(...,)``); and ``log_marginal`` with shape
        ``(...,)``.
    """
    ys, vs = [b], [var_b]
    log_marginal = 0.0
    y, v = b, var_b
    for level in range(tree.depth + 1):
        scale = tau[..., level][..., None]
        total_var = v + scale * scale
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
    total = v_top + s0 * s0
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
    cancel ``y`` away.
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
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Draw θ0, the group means and θ exactly from p(· | b, τ), top-down.

    Parameters
    ----------
    messages
        The result of :func:`upward_pass` on NumPy arrays for the same ``tau``.
    tau
        Scales, shape ``(..., depth + 1)``.
    tree
        The tree structure.
    mu0, s0
        Prior mean and sd of θ0.
    rng
        Random generator.

    Returns
    -------
    theta0 : numpy.ndarray
        Shape ``(...,)``.
    group_means : list of numpy.ndarray
        For each annotation level, finest first, shape ``(..., n_groups)``.
    theta : numpy.ndarray
        Shape ``(..., m)``.
    """
    mean, var = posterior_normal(mu0, s0 * s0, messages.y[-1], messages.v[-1])
    theta0 = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
    values = theta0[..., None]
    draws: list[np.ndarray] = []
    for level in range(tree.depth, -1, -1):
        prior_mean = values[..., tree.parents[level]] if level < tree.depth else values
        scale = tau[..., level][..., None]
        mean, var = posterior_normal(
            prior_mean, scale * scale, messages.y[level], messages.v[level]
        )
        values = mean + np.sqrt(var) * rng.standard_normal(mean.shape)
        draws.append(values)
    theta = draws.pop()
    return theta0, draws[::-1], theta
