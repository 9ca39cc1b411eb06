"""The τ updates of the collapsed sweep: slice sampling and adaptive independence MH.

Each log τ_l is updated from p(τ_l | b, other τ) ∝ p(b | τ) HalfCauchy(τ_l; A_l) τ_l, with
θ0, the group means and θ integrated out by the compiled upward pass of the tree
(:func:`~bayeshier_pymc.gaussian_tree.kernels.upward_pass_from`; :class:`Evaluation` holds its
result per row). While tuning, slice sampling with stepping out (Neal 2003) runs first; then
independence Metropolis–Hastings with a Student-t proposal fitted to the draws so far
(:class:`ScaleKernel`, whose tuning state is the dataclass :class:`ScaleTuning`).

With correlated estimates the pass runs on the totals of the noise tree (each unit's level
variance τ² + n_u, :class:`~bayeshier_pymc.gaussian_tree.kernels.LaneProblem`'s ``noise``);
only the scales of the effect levels are updated, those above stay zero. Under a heavy-tailed
group prior each group's variance is τ_l² λ_u², λ given (the state's local scales,
:mod:`bayeshier_pymc.gibbs.local_scales`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numba
import numpy as np

from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc.gaussian_tree.kernels import (
    LaneMessages,
    LaneProblem,
    LaneScratch,
    upward_pass_from,
)
from bayeshier_pymc.gibbs.layout import TreeData, TreeState

__all__ = [
    "DEFAULT_SCALE_STEPS",
    "Evaluation",
    "RowMessages",
    "ScaleKernel",
    "ScaleProposal",
    "ScaleTuning",
    "evaluate",
    "log_scale_prior",
    "slice_sample",
    "update_scales",
]

RowMessages = list[tuple[np.ndarray, np.ndarray]]
"""Upward messages N(y; u, v) to the units of each level, rows first, θ0's last (rows × 1)."""

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


@numba.vectorize(["float64(float64, float64)"], cache=True)
def log_scale_prior(eta: float, tau_scale: float) -> float:  # pragma: no cover - compiled
    """Log density of η = log τ for τ ~ HalfCauchy(A), up to a constant (Jacobian included).

    A NumPy ufunc (arrays broadcast), also callable with scalars from compiled code.
    """
    return eta - np.log1p(np.exp(2.0 * eta) / (tau_scale * tau_scale))


@dataclass(frozen=True)
class Evaluation:
    """log p(b | τ) of every row, level by level, with the upward messages, for one τ.

    Attributes
    ----------
    terms
        For each level 0..D, its term (:func:`~bayeshier_pymc.gaussian_tree.kernels.level_term`),
        then θ0's (rows each); their sum is log p(b | τ) up to a constant.
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

    def updated_from(
        self, data: TreeData, level: int, tau: np.ndarray, local_var: np.ndarray | None = None
    ) -> Evaluation:
        """The evaluation of ``tau``, whose scales differ from this one's only from ``level`` up.

        ``local_var``: the local variances λ² in lane layout
        (:meth:`~bayeshier_pymc.gibbs.layout.TreeState.local_lane`), the same as this one's;
        ``None``: every λ = 1.
        """
        problem = data.lane_problem
        offsets = problem.message_offsets
        messages = LaneMessages(*np.empty((2, offsets[-1], data.n_rows)))
        if level:
            y, v = self.messages[level]
            messages.y[offsets[level] : offsets[level + 1]] = y.T
            messages.v[offsets[level] : offsets[level + 1]] = v.T
        terms = np.empty((data.depth + 2, data.n_rows))
        upward_pass_from(
            level,
            _level_variances(data.algebra_scales(tau)),
            problem,
            np.empty((0, data.n_rows)) if local_var is None else local_var,
            messages,
            terms,
            messages,
            _scratch(problem),
        )
        upper = _messages_by_row(messages, offsets, range(level + 1, data.depth + 2))
        return Evaluation(
            (*self.terms[:level], *terms[level:]), (*self.messages[: level + 1], *upper)
        )


def evaluate(data: TreeData, tau: np.ndarray, local_var: np.ndarray | None = None) -> Evaluation:
    """:class:`Evaluation` of scales ``tau`` (rows × levels): θ, groups and θ0 integrated out.

    ``local_var``: λ² in lane layout, as :meth:`Evaluation.updated_from`.
    """
    empty = Evaluation((), ((data.b, data.var_b),))
    return empty.updated_from(data, 0, tau, local_var)


def _level_variances(tau: np.ndarray) -> np.ndarray:
    """The level variances τ² in lane layout (levels × rows), from every level's scales."""
    return np.ascontiguousarray(np.square(tau).T)


def _scratch(problem: LaneProblem) -> LaneScratch:
    return LaneScratch(np.empty_like(problem.b), np.empty_like(problem.b))


def _messages_by_row(messages: LaneMessages, offsets: np.ndarray, levels: range) -> RowMessages:
    """The messages to each of ``levels`` (1..D + 1) from lane layout, rows first."""
    return [
        (
            np.ascontiguousarray(messages.y[offsets[level] : offsets[level + 1]].T),
            np.ascontiguousarray(messages.v[offsets[level] : offsets[level + 1]].T),
        )
        for level in levels
    ]


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


class ScaleProposal(NamedTuple):
    """Independence proposal for log τ per row and level: Student-t(5) at ``loc``, ``scale``.

    Its polynomial tails are heavier than the exponential tails of the collapsed conditional
    of log τ, so the weight ratio target / proposal stays bounded (a uniformly ergodic
    independence sampler; Mengersen & Tweedie 1996).
    """

    loc: np.ndarray
    scale: np.ndarray


class ProposalDraws(NamedTuple):
    """The random numbers of the MH steps, (rows, levels, steps): t(5) draws and log U(0, 1)."""

    t: np.ndarray
    log_uniform: np.ndarray


class CachedEvaluation(NamedTuple):
    """The evaluation of the τ left by the last independence update, in lane layout.

    ``tau`` (rows × levels; NaN before the first update), its ``terms`` (levels + 1 × rows)
    and its ``messages``: the next update reuses them while τ is unchanged.
    """

    tau: np.ndarray
    terms: np.ndarray
    messages: LaneMessages


@dataclass
class ScaleTuning:
    """The tuning state of :class:`ScaleKernel` (as PyMC's ``SliceState`` of its slicer).

    Attributes
    ----------
    tuning
        Whether the kernel is still tuning.
    sweep
        Tuning sweeps seen.
    count, mean, m2
        Welford count, mean and sum of squared deviations of the recorded log τ (rows ×
        levels).
    frozen
        The proposal fixed by :meth:`ScaleKernel.stop_tuning`.
    """

    tuning: bool = True
    sweep: int = 0
    count: int = 0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frozen: ScaleProposal | None = None


@dataclass
class ScaleKernel:
    """The update of each log τ_l in the collapsed sweep, with its tuning state.

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
    state
        The tuning state.
    cache
        The evaluation of the τ left by the last independence update, reused by the next.
    """

    steps: int = DEFAULT_SCALE_STEPS
    slice_sweeps: int = MAX_SLICE_SWEEPS
    state: ScaleTuning = field(default_factory=ScaleTuning)
    cache: CachedEvaluation | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"scale_steps must be at least 1, got {self.steps}.")

    @classmethod
    def for_tuning(cls, tune: int, steps: int = DEFAULT_SCALE_STEPS) -> ScaleKernel:
        """A kernel that will be tuned over ``tune`` sweeps."""
        return cls(steps=steps, slice_sweeps=min(MAX_SLICE_SWEEPS, max(tune // 4, 1)))

    @property
    def tuning(self) -> bool:
        """Whether the kernel is still tuning."""
        return self.state.tuning

    @property
    def uses_slice(self) -> bool:
        """Whether the next sweep updates τ by slice sampling."""
        state = self.state
        if state.tuning:
            return state.sweep < self.slice_sweeps or state.count < MIN_FIT_DRAWS
        return state.frozen is None

    def proposal(self) -> ScaleProposal:
        """The independence proposal of the next update."""
        if self.state.frozen is not None:
            return self.state.frozen
        return ScaleProposal(self.state.mean, TUNING_INFLATION * self._sd())

    def observe(self, log_tau: np.ndarray) -> None:
        """Record the log τ (rows × levels) of a finished sweep."""
        state = self.state
        if not state.tuning:
            return
        state.sweep += 1
        if state.sweep <= self.slice_sweeps // 2:
            return
        if state.count == 0:
            state.mean, state.m2 = np.zeros_like(log_tau), np.zeros_like(log_tau)
        state.count += 1
        delta = log_tau - state.mean
        state.mean += delta / state.count
        state.m2 += delta * (log_tau - state.mean)

    def stop_tuning(self) -> None:
        """Freeze the proposal (or keep slice sampling when too few draws were seen)."""
        state = self.state
        if state.tuning and state.count >= MIN_FIT_DRAWS:
            state.frozen = ScaleProposal(state.mean.copy(), self._sd())
        state.tuning = False

    def _sd(self) -> np.ndarray:
        return np.sqrt(self.state.m2 / max(self.state.count - 1, 1)) + 1e-3


def _replace_column(tau: np.ndarray, level: int, values: np.ndarray) -> np.ndarray:
    new = tau.copy()
    new[:, level] = values
    return new


def _slice_update(
    data: TreeData,
    state: TreeState,
    level: int,
    current: Evaluation,
    local_var: np.ndarray,
    rng: np.random.Generator,
) -> Evaluation:
    """One slice-sampling update of log τ_level; returns the evaluation of the new τ."""
    tau_scale = data.tau_scale[:, level]

    def log_density(eta: np.ndarray) -> np.ndarray:
        tau = _replace_column(state.tau, level, np.exp(eta))
        return current.updated_from(data, level, tau, local_var).from_level(
            level
        ) + log_scale_prior(eta, tau_scale)

    eta = slice_sample(np.log(state.tau[:, level]), log_density, SLICE_WIDTH, SLICE_MAX_STEPS, rng)
    state.tau[:, level] = np.exp(eta)
    return current.updated_from(data, level, state.tau, local_var)


def _independence_updates(
    data: TreeData,
    state: TreeState,
    kernel: ScaleKernel,
    levels: np.ndarray,
    rng: np.random.Generator,
) -> tuple[RowMessages, np.ndarray]:
    """Independence MH steps for each of ``levels`` in the compiled kernel.

    ``kernel.steps`` steps per level, one while tuning (tuning draws are discarded, so the
    cheaper kernel is enough to fit the proposal).
    """
    proposal = kernel.proposal()
    shape = (data.n_rows, levels.size, 1 if kernel.tuning else kernel.steps)
    t_draws = rng.standard_t(PROPOSAL_DF, size=shape)
    log_uniform = np.log(rng.random(shape))
    problem = data.lane_problem
    if state.local is not None:  # λ changed since the cached evaluation
        kernel.cache = None
    if kernel.cache is None or kernel.cache.tau.shape != state.tau.shape:
        lanes = (problem.message_offsets[-1], data.n_rows)
        kernel.cache = CachedEvaluation(
            np.full(state.tau.shape, np.nan),
            np.empty((data.depth + 2, data.n_rows)),
            LaneMessages(np.empty(lanes), np.empty(lanes)),
        )
    acceptance = _independence_kernel(
        problem,
        state.local_lane(data),
        data.tau_scale,
        state.tau,
        levels,
        proposal,
        ProposalDraws(t_draws, log_uniform),
        kernel.cache,
    )
    upper = _messages_by_row(
        kernel.cache.messages, problem.message_offsets, range(1, data.depth + 2)
    )
    return [(data.b, data.var_b), *upper], acceptance


@compiled_kernel
def _log_t_kernel(z: float) -> float:  # pragma: no cover - compiled
    """Log density of the standardised t proposal at ``z``, up to a constant."""
    return -0.5 * (PROPOSAL_DF + 1.0) * np.log1p(z * z / PROPOSAL_DF)


@compiled_kernel
def _independence_kernel(
    problem: LaneProblem,
    local_var: np.ndarray,
    tau_scale: np.ndarray,
    tau: np.ndarray,
    levels: np.ndarray,
    proposal: ScaleProposal,
    draws: ProposalDraws,
    cache: CachedEvaluation,
) -> np.ndarray:  # pragma: no cover - compiled
    """Independence MH on log τ of each level in ``levels``, all rows in step, in place.

    The target of level l is log p(b | τ) + log HalfCauchy(τ_l; A_l) + log τ_l (the
    Jacobian, :func:`log_scale_prior`); the proposal is the t(5) ``proposal`` with the given
    ``draws``. Only the terms from level l up change with τ_l, so a proposal re-evaluates
    those alone, for every row at once (:func:`upward_pass_from`); each row then accepts or
    rejects its own. ``cache`` is reused when ``tau`` still equals ``cache.tau`` (the
    previous call's result) and computed afresh otherwise, and it is left holding the final
    τ's evaluation. Returns the share of accepted proposals per row. ``tau`` holds the
    sampled scales; the tree's levels above them have scale zero. ``local_var`` holds the
    local variances λ² in lane layout (no rows: every λ = 1; the caller drops ``cache``
    when they changed).
    """
    n_rows, n_levels = tau.shape
    n_steps = draws.t.shape[2]
    offsets = problem.message_offsets
    terms, messages = cache.terms, cache.messages
    # every level of the tree: those above the sampled scales have no effect variation
    level_var = np.zeros((offsets.size - 2, n_rows))
    fresh = False
    for r in range(n_rows):
        for level in range(n_levels):
            level_var[level, r] = tau[r, level] * tau[r, level]
            fresh = fresh or tau[r, level] != cache.tau[r, level]
    scratch = LaneScratch(np.empty_like(problem.b), np.empty_like(problem.b))
    if fresh:
        upward_pass_from(0, level_var, problem, local_var, messages, terms, messages, scratch)
    proposed_var = level_var.copy()
    proposed_terms = np.empty_like(terms)
    proposed = LaneMessages(np.empty_like(messages.y), np.empty_like(messages.v))
    eta = np.empty(n_rows)
    eta_proposed = np.empty(n_rows)
    accepted = np.zeros(n_rows)
    loc, scale = proposal
    for i in range(levels.size):
        level = levels[i]
        above = offsets[level + 1]
        for step in range(n_steps):
            for r in range(n_rows):
                eta[r] = np.log(tau[r, level])
                eta_proposed[r] = loc[r, level] + scale[r, level] * draws.t[r, i, step]
                proposed_tau = np.exp(eta_proposed[r])
                proposed_var[level, r] = proposed_tau * proposed_tau
            upward_pass_from(
                level,
                proposed_var,
                problem,
                local_var,
                messages,
                proposed_terms,
                proposed,
                scratch,
            )
            for r in range(n_rows):
                log_ratio = (
                    np.sum(proposed_terms[level:, r])
                    - np.sum(terms[level:, r])
                    + log_scale_prior(eta_proposed[r], tau_scale[r, level])
                    - log_scale_prior(eta[r], tau_scale[r, level])
                    + _log_t_kernel((eta[r] - loc[r, level]) / scale[r, level])
                    - _log_t_kernel((eta_proposed[r] - loc[r, level]) / scale[r, level])
                )
                if draws.log_uniform[r, i, step] < log_ratio:
                    accepted[r] += 1
                    tau[r, level] = np.exp(eta_proposed[r])
                    level_var[level, r] = proposed_var[level, r]
                    terms[level:, r] = proposed_terms[level:, r]
                    messages.y[above:, r] = proposed.y[above:, r]
                    messages.v[above:, r] = proposed.v[above:, r]
                else:
                    proposed_var[level, r] = level_var[level, r]
    cache.tau[:] = tau
    return accepted / (levels.size * n_steps)


def update_scales(
    data: TreeData,
    state: TreeState,
    kernel: ScaleKernel,
    rng: np.random.Generator,
    levels: list[int] | None = None,
) -> tuple[RowMessages, np.ndarray]:
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
        The levels updated, in this order (default: every sampled scale, finest first).

    Returns
    -------
    messages : RowMessages
        The upward messages to every level given the new τ.
    acceptance : numpy.ndarray
        Per row, the share of MH proposals accepted (NaN for slice sampling).
    """
    chosen = np.arange(data.n_scales) if levels is None else np.asarray(levels, dtype=np.intp)
    if not kernel.uses_slice:
        return _independence_updates(data, state, kernel, chosen, rng)
    local_var = None if state.local is None else state.local_lane(data)
    current = evaluate(data, state.tau, local_var)
    for level in chosen:
        current = _slice_update(data, state, int(level), current, local_var, rng)
    return list(current.messages), np.full(data.n_rows, np.nan)
