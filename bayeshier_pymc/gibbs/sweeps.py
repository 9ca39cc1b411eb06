"""The two Gibbs sweeps of the tree model and their draw primitives, vectorised over rows.

Rows, units and levels are those of :mod:`bayeshier_pymc.gibbs.layout` (and of the glossary
of :mod:`bayeshier_pymc.gaussian_tree`).

:func:`conjugate_sweep`
    The centred sweep of the research algorithm. Every unit is drawn from its normal full
    conditional; then, per level, with the HalfCauchy written as τ² | ω ~ IG(1/2, 1/ω),
    ω ~ IG(1/2, 1/A²): ω | τ ~ IG(1, 1/τ² + 1/A²) and τ² | ω, units ~ IG((n + 1)/2, SS/2 + 1/ω).
    The mixing variable ω (not the local scales λ of the group effects) is drawn afresh from
    its conditional right before it is used, so it is not state.
:func:`collapsed_sweep`
    A collapsed sweep. For l = 0..D in turn, log τ_l is updated from p(τ_l | b, other τ): θ,
    every group mean and θ0 integrated out exactly by the upward pass of the tree
    (:mod:`bayeshier_pymc.gibbs.scale_kernels`). Then θ0, the group means and θ are drawn
    exactly from p(· | b, τ) by the downward pass. Conditioning on no unit removes the slow
    centred dependence between τ_w and θ that the conjugate sweep suffers from.

With correlated estimates (tree-structured noise) the collapsed sweep runs on the totals of
the noise tree: the τ updates integrate the shared noise out with everything else, the
downward pass draws totals, and :func:`split_effects` splits them into effects exactly.
The conjugate sweep conditions on θ through b ~ N(θ, s²) with independent errors; it has no
form for shared noise (:func:`check_scheme`). :func:`draw_unpooled` draws θ without pooling
under shared noise.

Under a heavy-tailed group prior the state carries the groups' local scales
(:class:`~bayeshier_pymc.gibbs.layout.LocalScales`): every group's prior variance is
τ_l² λ_g² in the τ updates, the draws and the split, and both sweeps end with λ (and the
horseshoe's ξ) drawn from their conjugate conditionals given the group effects and τ (the
collapsed sweep then draws the group effects in every sweep, kept or not). Without local
scales nothing of this runs: the draws are those of the normal model, bitwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bayeshier_pymc.gaussian_tree import Messages, draw_tree, posterior_normal, upward_pass
from bayeshier_pymc.gaussian_tree.kernels import draw_children, split_totals
from bayeshier_pymc.gibbs.layout import LocalScales, TreeData, TreeState
from bayeshier_pymc.gibbs.local_scales import draw_conditional_local_variance, draw_inverse_gamma
from bayeshier_pymc.gibbs.scale_kernels import RowMessages, ScaleKernel, evaluate, update_scales
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "check_scheme",
    "children_message",
    "collapsed_sweep",
    "conjugate_sweep",
    "draw_inverse_gamma",
    "draw_mixing",
    "draw_normal",
    "draw_scale",
    "draw_units",
    "draw_units_given_scales",
    "draw_unpooled",
    "initial_state",
    "split_effects",
    "sum_sq_deviations",
    "update_local_scales",
    "update_scale_conjugate",
    "update_units",
]


# ---------------------------------------------------------------------------- primitives
def draw_normal(mean: np.ndarray, var: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of N(mean, var), elementwise."""
    return mean + np.sqrt(var) * rng.standard_normal(np.shape(mean))


def draw_mixing(tau: np.ndarray, tau_scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ω | τ ~ IG(1, 1/τ² + 1/A²), the mixing variable of τ's HalfCauchy(A) prior."""
    return draw_inverse_gamma(1.0, 1.0 / tau**2 + 1.0 / tau_scale**2, rng)


def draw_scale(
    sum_sq: np.ndarray, n_units: int, mixing: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """τ from τ² | ω, units ~ IG((n + 1)/2, SS/2 + 1/ω), SS the squared deviations."""
    return np.sqrt(draw_inverse_gamma(0.5 * (n_units + 1), 0.5 * sum_sq + 1.0 / mixing, rng))


# ---------------------------------------------------------------------------- units
def children_message(data: TreeData, state: TreeState, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Message N(y; u, v) to the level-``level`` units from their children's current values.

    θ_j's child is b_j (y = b, v = s²); a group's children are its n units one level down
    (y = their mean, v = τ²_(level-1) / n); θ0's children are the top-level groups. Children
    with local scales λ_c (:mod:`~bayeshier_pymc.gibbs.local_scales`) are weighted by 1/λ_c²:
    y = Σ u_c / λ_c² / Σ 1/λ_c², v = τ²_(level-1) / Σ 1/λ_c².
    """
    if level == 0:
        return data.b, data.var_b
    if state.local is not None and level - 1 <= state.local.n_levels and level > 1:
        weights = 1.0 / state.local.unit(level - 1)
        total_weight = data.sum_into_parents(weights, level - 1)
        y = data.sum_into_parents(weights * state.units[level - 1], level - 1) / total_weight
        return y, state.tau[:, level - 1, None] ** 2 / total_weight
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
    rng: np.random.Generator | None,
    normals: np.ndarray | None = None,
) -> None:
    """Draw the level-``level`` units from their prior times the message N(y; u, v).

    The prior is N(parent, τ_level²) (τ_level² λ_u² with local scales), or N(mu0, s0²) for
    θ0; the conditional is :func:`~bayeshier_pymc.gaussian_tree.posterior_normal` (compiled
    below θ0: :func:`~bayeshier_pymc.gaussian_tree.kernels.draw_children`). With shared
    noise the units are totals and each prior variance has the unit's noise variance added.
    Each unit is ``mean + sqrt(var) · z``, with ``z`` from ``normals`` (rows × units, sorted)
    when given, else drawn from ``rng``.
    """
    y, v = message
    if normals is None:
        normals = _generator(rng).standard_normal(np.shape(y))
    if level > data.depth:
        s0 = data.s0[:, None]
        prior_var = s0**2 + data.noise[-1] if data.correlated else s0**2
        mean, var = posterior_normal(data.mu0[:, None], prior_var, y, v)
        state.units[level] = mean + np.sqrt(var) * normals
        return
    with_noise = data.correlated and level > 0
    none = np.empty((data.n_rows, 0))
    state.units[level] = draw_children(
        state.units[level + 1],
        data.parent_index[level],
        np.square(data.algebra_scales(state.tau)[:, level]),
        data.noise[level - 1] if with_noise else none,
        none if state.local is None else state.local.unit(level),
        y,
        v,
        normals,
    )


def draw_units_given_scales(
    data: TreeData,
    state: TreeState,
    messages: RowMessages,
    rng: np.random.Generator | None,
    lowest_level: int = 0,
    normals: Sequence[np.ndarray] | None = None,
) -> None:
    """Draw θ0, the group means and, with ``lowest_level=0``, θ exactly given τ, top-down.

    ``messages`` are the upward messages given the current τ
    (:attr:`~bayeshier_pymc.gibbs.scale_kernels.Evaluation.messages`); ``normals``, if
    given, the standard normals of every level 0..D + 1 (rows × units, sorted), else they
    are drawn from ``rng``, one call per level, θ0's first.
    """
    for level in range(data.depth + 1, lowest_level - 1, -1):
        level_normals = None if normals is None else normals[level]
        draw_units(data, state, level, messages[level], rng, level_normals)


def split_effects(
    data: TreeData,
    state: TreeState,
    rng: np.random.Generator | None,
    normals: np.ndarray | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Effects from the totals of a state with shared noise, drawn exactly given them.

    The group means and θ0 are split from their totals, top-down, by the compiled
    :func:`~bayeshier_pymc.gaussian_tree.kernels.split_totals` (one standard normal per
    unit: ``normals``, rows × the units of levels 1..D + 1 as :attr:`TreeData.message_offsets`
    numbers them, else drawn from ``rng``); a feature's effect is its total less the noise on
    its parent's path. With local scales each group's effect variance is τ_l² λ_u².

    Returns
    -------
    units : list of numpy.ndarray
        The group means of every level of the tree (finest first), then θ0 (rows × 1),
        sorted as the state's units.
    parent_noise : numpy.ndarray
        The noise on the path of each of θ's parents, rows × ``n_units[1]``.
    """
    totals = np.concatenate(state.units[1:], axis=1)
    effect_var = np.empty((data.n_rows, data.depth + 2))
    effect_var[:, :-1] = np.square(data.algebra_scales(state.tau))
    effect_var[:, -1] = data.s0**2
    effects, path_noise = np.empty_like(totals), np.empty_like(totals)
    if normals is None:
        normals = _generator(rng).standard_normal(totals.shape)
    local = (
        np.empty((data.n_rows, 0))
        if state.local is None
        else np.ascontiguousarray(state.local.lane(data).T)
    )
    split_totals(totals, effect_var, data.split_tree, data.mu0, local, normals, effects, path_noise)
    units = np.split(effects, data.message_offsets[2:-1], axis=1)
    return units, path_noise[:, : data.n_units[1]]


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    """``rng``, which the draws need when they are given no normals."""
    if rng is None:
        raise ValueError("draws without given normals need a random generator.")
    return rng


def draw_unpooled(problem: ShrinkageProblem, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Exact draws (n_draws, covariate, feature) of θ without pooling, under shared noise.

    Each θ_j ~ N(mu0, s0²) independently a priori: the tree algebra on the noise tree with
    scales [s0, 0, …, 0] and θ0 fixed at mu0 (prior sd zero), whose downward draw of the
    totals, split into effects, is :func:`~bayeshier_pymc.gaussian_tree.draw_tree`. The
    messages do not depend on the draw, so the pass runs once.
    """
    priors = problem.priors
    n_covariates = problem.b.shape[0]
    scales, top_sd = problem.unpooled_algebra()
    index, noise = problem.index, problem.noise
    messages = upward_pass(
        problem.algebra_b, problem.var_b, scales, index, priors.mu0, top_sd, noise=noise
    )
    lead = (n_draws, n_covariates)
    repeated = Messages(
        tuple(np.broadcast_to(y, (*lead, *np.shape(y)[1:])) for y in messages.y),
        tuple(np.broadcast_to(v, (*lead, *np.shape(v)[1:])) for v in messages.v),
        messages.log_marginal,
    )
    scales = np.broadcast_to(scales, (*lead, scales.shape[-1]))
    return draw_tree(repeated, scales, index, priors.mu0, top_sd, rng, noise=noise)[2]


def check_scheme(problem: ShrinkageProblem, scheme: str) -> None:
    """Refuse the conjugate scheme for estimates with shared noise, before any work."""
    if scheme == "conjugate" and problem.correlated:
        raise ValueError(
            "scheme='conjugate' needs independent estimates, but these carry a correlated-noise "
            "structure; use scheme='collapsed' (the default), or noise='independent' in "
            "ShrinkageModel for the independent research model."
        )


def sum_sq_deviations(data: TreeData, state: TreeState, level: int) -> np.ndarray:
    """Σ (unit - parent)² over the level-``level`` units of each row (each over λ_u²)."""
    parent = state.units[level + 1][:, data.parent_index[level]]
    squares = (state.units[level] - parent) ** 2
    if state.local is not None and 1 <= level <= state.local.n_levels:
        squares = squares / state.local.unit(level)
    return squares.sum(axis=-1)


# ---------------------------------------------------------------------------- centred sweep
def conjugate_sweep(data: TreeData, state: TreeState, rng: np.random.Generator) -> None:
    """One centred Gibbs sweep, in place: θ, group means and θ0, then ω and τ per level.

    With local scales of the group effects they are drawn last, given the units and τ.
    """
    for level in range(data.depth + 2):
        update_units(data, state, level, rng)
    for level in range(data.depth + 1):
        update_scale_conjugate(data, state, level, rng)
    if state.local is not None:
        update_local_scales(data, state.local, state.units[1:], state.tau, rng)


def update_scale_conjugate(
    data: TreeData, state: TreeState, level: int, rng: np.random.Generator
) -> None:
    """Centred update of τ_level: its mixing variable ω | τ, then τ² | ω, units (in place)."""
    mixing = draw_mixing(state.tau[:, level], data.tau_scale[:, level], rng)
    sum_sq = sum_sq_deviations(data, state, level)
    state.tau[:, level] = draw_scale(sum_sq, data.n_units[level], mixing, rng)


def update_local_scales(
    data: TreeData,
    local: LocalScales,
    effects: list[np.ndarray],
    tau: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Draw λ² (and ξ) of every level from their conditionals given the effects, in place.

    ``effects`` are the group effects of levels 1..D, then θ0 (rows × 1), sorted as the
    state's units (index l − 1 for level l); ``tau`` the rows' scales (rows × levels). The
    conditionals are :func:`~bayeshier_pymc.gibbs.local_scales.draw_conditional_local_variance`
    of δ² / τ_l², δ = u − parent.
    """
    priors = local.priors
    for level in range(1, local.n_levels + 1):
        parent = effects[level][:, data.parent_index[level]]
        standardised = np.square((effects[level - 1] - parent) / tau[:, level, None])
        local.variances[level - 1], local.auxiliary[level - 1] = draw_conditional_local_variance(
            priors.group_prior, priors.group_df, standardised, local.auxiliary[level - 1], rng
        )


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
        engine draws θ from the kept τ and group means). With local scales the group
        means and θ0 are always drawn: λ is drawn next from the group effects (split from
        the totals with shared noise, kept in ``state.split``).

    Returns
    -------
    numpy.ndarray
        Per row, the share of the independence proposals accepted (NaN for a sweep that
        used slice sampling).
    """
    messages, acceptance = update_scales(data, state, kernel, rng)
    kernel.observe(np.log(state.tau))
    if state.local is not None:
        lowest = 1 if draw_units_from is None else min(draw_units_from, 1)
        draw_units_given_scales(data, state, messages, rng, lowest_level=lowest)
        if data.correlated:
            state.split = split_effects(data, state, rng)
            effects = state.split[0]
        else:
            effects = state.units[1:]
        update_local_scales(data, state.local, effects, state.tau, rng)
    elif draw_units_from is not None:
        draw_units_given_scales(data, state, messages, rng, lowest_level=draw_units_from)
    return acceptance


def initial_state(
    data: TreeData, rng: np.random.Generator, priors: Priors | None = None
) -> TreeState:
    """Dispersed starting points: log τ_l uniform on [log(A_l / 20), log A_l], units exact.

    Every row gets its own scales; θ0, the group means and θ are then drawn exactly given
    them, so each chain starts from a different, internally consistent point. Under a
    heavy-tailed group prior of ``priors`` the local scales start at λ = 1
    (:meth:`~bayeshier_pymc.gibbs.layout.LocalScales.start`).
    """
    log_scale = np.log(data.tau_scale)
    tau = np.exp(log_scale - np.log(20.0) * rng.random((data.n_rows, data.n_scales)))
    state = TreeState(tau, [np.zeros((data.n_rows, n)) for n in data.n_units])
    if priors is not None and priors.heavy_tailed and data.n_scales > 1:
        state.local = LocalScales.start(data, priors)
    draw_units_given_scales(data, state, list(evaluate(data, tau).messages), rng)
    return state
