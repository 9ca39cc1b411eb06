"""The two Gibbs sweeps of the tree model and their draw primitives, vectorised over rows.

Rows, units and levels are those of :mod:`bayeshier_pymc.gibbs.layout` (and of the glossary
of :mod:`bayeshier_pymc.gaussian_tree`).

:func:`conjugate_sweep`
    The centred sweep of the research algorithm. Every unit is drawn from its normal full
    conditional; then, per level, with the HalfCauchy written as τ² | λ ~ IG(1/2, 1/λ),
    λ ~ IG(1/2, 1/A²): λ | τ ~ IG(1, 1/τ² + 1/A²) and τ² | λ, units ~ IG((n + 1)/2, SS/2 + 1/λ).
    λ is drawn afresh from its conditional right before it is used, so it is not state.
:func:`collapsed_sweep`
    A collapsed sweep. For l = 0..D in turn, log τ_l is updated from p(τ_l | b, other τ): θ,
    every group mean and θ0 integrated out exactly by the upward pass of the tree
    (:mod:`bayeshier_pymc.gibbs.scale_kernels`). Then θ0, the group means and θ are drawn
    exactly from p(· | b, τ) by the downward pass. Conditioning on no unit removes the slow
    centred dependence between τ_w and θ that the conjugate sweep suffers from.
"""

from __future__ import annotations

import numpy as np

from bayeshier_pymc.gaussian_tree import posterior_normal
from bayeshier_pymc.gaussian_tree.kernels import draw_children
from bayeshier_pymc.gibbs.layout import TreeData, TreeState
from bayeshier_pymc.gibbs.scale_kernels import RowMessages, ScaleKernel, evaluate, update_scales

__all__ = [
    "children_message",
    "collapsed_sweep",
    "conjugate_sweep",
    "draw_inverse_gamma",
    "draw_mixing",
    "draw_normal",
    "draw_scale",
    "draw_units",
    "draw_units_given_scales",
    "initial_state",
    "sum_sq_deviations",
    "update_scale_conjugate",
    "update_units",
]


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
    :func:`~bayeshier_pymc.gaussian_tree.posterior_normal` (compiled below θ0:
    :func:`~bayeshier_pymc.gaussian_tree.kernels.draw_children`).
    """
    y, v = message
    if level > data.depth:
        mean, var = posterior_normal(data.mu0, data.s0**2, y, v)
        state.units[level] = draw_normal(mean, var, rng)
        return
    state.units[level] = draw_children(
        state.units[level + 1],
        data.parent_index[level],
        np.square(state.tau[:, level]),
        y,
        v,
        rng.standard_normal(np.shape(y)),
    )


def draw_units_given_scales(
    data: TreeData,
    state: TreeState,
    messages: RowMessages,
    rng: np.random.Generator,
    lowest_level: int = 0,
) -> None:
    """Draw θ0, the group means and, with ``lowest_level=0``, θ exactly given τ, top-down.

    ``messages`` are the upward messages given the current τ
    (:attr:`~bayeshier_pymc.gibbs.scale_kernels.Evaluation.messages`).
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


# ---------------------------------------------------------------------------- collapsed sweep
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
