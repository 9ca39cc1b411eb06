"""Pointwise log-likelihoods of the stage-1 estimates b, from the posterior draws.

Two forms (see :data:`bayeshier_pymc.inference_data.DEFAULT_LOG_LIKELIHOOD` for which LOO
uses by default and what each answers):

:func:`marginal`
    log N(b_j; parent mean, s_j² + τ_w²), θ_j integrated out (:func:`prior_predictive`
    without pooling: log N(b_j; mu0, s_j² + s0²)). With correlated estimates the b_j are not
    conditionally independent, and the marginal form is the leave-one-out predictive
    log p(b_j | b_−j, τ) of the non-factorised normal model (:func:`held_out_predictive`).
:func:`conditional`
    log N(b_j; θ_j, s_j²); :func:`conditional_total` sums it per draw. With correlated
    estimates, log p(b_j | b_−j, θ) under the noise covariance
    (:func:`conditional_leave_one_out`).

Each is one value per (chain, draw, covariate, feature): 80 million at 4 × 2000 draws,
10 covariates and 999 features. Compiled kernels write them straight into an array of θ's
storage type, with no temporaries of that size, split over threads by draw (the kernels
release the GIL). So does the leave-one-out predictive of correlated estimates
(:func:`leave_one_out`, O(m) per draw on the tree), over chunks of draws (:func:`chunks`)
for which it draws the replicates' normals; :class:`HeldOutFeatures` gives its values a chunk
of features at a time, for LOO in summary storage. The leave-one-group-out predictive
(:func:`held_out_predictive`) and :func:`conditional_leave_one_out`, computed on demand, run
the NumPy tree algebra on such chunks and write each into the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from bayeshier_pymc import _threads
from bayeshier_pymc._memory import store_array
from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc._threads import in_threads
from bayeshier_pymc.gaussian_tree import (
    TreeIndex,
    group_log_predictive,
)
from bayeshier_pymc.gaussian_tree.kernels import (
    LEAVE_ONE_OUT_PARENT_TERMS,
    LEAVE_ONE_OUT_WORK,
    LeaveOneOutTree,
    held_out_log_density,
    leave_one_out_moments,
    leave_one_out_parent_terms,
    leave_one_out_tree,
    log_normal,
    pointwise_marginal,
)
from bayeshier_pymc.model import group_mean_name

if TYPE_CHECKING:
    from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "CHUNK_VALUES",
    "HeldOutFeatures",
    "chunks",
    "conditional",
    "conditional_constant",
    "conditional_leave_one_out",
    "conditional_total",
    "held_out_predictive",
    "leave_one_out",
    "marginal",
    "prior_predictive",
    "theta_parents",
]

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))
"""½ log 2π, the constant of every normal log density."""
_MIN_DRAWS_PER_THREAD = 64
CHUNK_VALUES = 1 << 20
"""Draws × units per chunk of draws (:func:`chunks`): 8 MiB per temporary in float64."""


def conditional(theta: np.ndarray, b: np.ndarray, se: np.ndarray) -> np.ndarray:
    """The conditional form, log N(b_kj; θ_kj, s_kj²), for every draw.

    Parameters
    ----------
    theta
        Draws (chain, draw, covariate, feature).
    b, se
        Estimates and standard errors (covariate, feature).

    Returns
    -------
    numpy.ndarray
        (chain, draw, covariate, feature), in θ's floating type.
    """
    b, var_b = _data(b, se)
    out = np.empty(theta.shape, dtype=theta.dtype)
    flat_out = out.reshape(-1, *b.shape)
    flat_theta = np.ascontiguousarray(theta).reshape(flat_out.shape)
    log_norm = -0.5 * np.log(var_b) - _HALF_LOG_2PI
    inverse_var = 1.0 / var_b
    _in_threads(
        lambda lo, hi: _conditional_kernel(b, inverse_var, log_norm, flat_theta, lo, hi, flat_out),
        flat_out.shape[0],
    )
    return out


def marginal(
    b: np.ndarray,
    se: np.ndarray,
    *,
    parent_mean: np.ndarray,
    parent_index: np.ndarray,
    tau_w: np.ndarray,
    dtype: Any = np.float64,
) -> np.ndarray:
    """The marginal form, log N(b_kj; parent mean, s_kj² + τ_w²), for every draw.

    Parameters
    ----------
    b, se
        Estimates and standard errors (covariate, feature).
    parent_mean
        Draws (chain, draw, covariate, group) of the means of θ's parent groups (θ0 as one
        group at depth 0).
    parent_index
        The parent group of each feature.
    tau_w
        Draws (chain, draw, covariate) of the sd of θ around its parent.
    dtype
        Floating type of the result.

    Returns
    -------
    numpy.ndarray
        (chain, draw, covariate, feature).
    """
    b, var_b = _data(b, se)
    lead = parent_mean.shape[:2]
    out = np.empty((*lead, *b.shape), dtype=dtype)
    flat_out = out.reshape(-1, *b.shape)
    means = np.ascontiguousarray(parent_mean, dtype=float).reshape(
        flat_out.shape[0], b.shape[0], -1
    )
    scales = np.ascontiguousarray(tau_w, dtype=float).reshape(flat_out.shape[0], b.shape[0])
    index = np.ascontiguousarray(parent_index, dtype=np.intp)
    _in_threads(
        lambda lo, hi: pointwise_marginal(b, var_b, means, index, scales, lo, hi, flat_out),
        flat_out.shape[0],
    )
    return out


def theta_parents(
    draws: Mapping[str, np.ndarray],
    first_level: str | None,
    parent_index: np.ndarray | None,
    n_features: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The draws of the means of θ's parents and each feature's parent, for :func:`marginal`.

    θ's parents are the groups of the first annotation level ``first_level`` (feature j in
    group ``parent_index[j]``), or θ0 at depth 0 (``first_level=None``), then one group.
    ``draws`` holds ``mu`` and the group means, (chain, draw, covariate, ...).
    """
    if first_level is None:
        return draws["mu"][..., None], np.zeros(n_features, dtype=np.intp)
    return draws[group_mean_name(first_level)], np.asarray(parent_index, dtype=np.intp)


def prior_predictive(
    b: np.ndarray,
    se: np.ndarray,
    *,
    mu0: np.ndarray,
    s0: np.ndarray,
    lead: tuple[int, int],
    dtype: Any = np.float64,
) -> np.ndarray:
    """The marginal form without pooling, log N(b_kj; mu0_k, s_kj² + s0_k²), for every draw.

    ``mu0`` and ``s0`` are one number or one per covariate (the rows of ``b``).
    """
    b, var_b = _data(b, se)
    mu0, s0 = np.reshape(mu0, (-1, 1)), np.reshape(s0, (-1, 1))
    variance = var_b + s0**2
    out = np.empty((*lead, *b.shape), dtype=dtype)
    out[:] = log_normal(b - mu0, variance)
    return out


def held_out_predictive(
    problem: ShrinkageProblem,
    tau: np.ndarray | None,
    unit_level: int,
    to_group: np.ndarray,
    *,
    lead: tuple[int, int],
    dtype: Any = np.float64,
    local: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """Log p(b_G | b_−G, τ) for every held-out group G of units, draw by draw.

    :func:`~bayeshier_pymc.gaussian_tree.group_log_predictive` on the problem's algebra tree
    (:attr:`~bayeshier_pymc.problem.ShrinkageProblem.index`, the noise tree for correlated
    estimates) with its shared noise, every covariate and chunk of draws in turn. With one
    feature per group this is the leave-one-out predictive log p(b_j | b_−j, τ) of the
    non-factorised normal model (Bürkner, Gabry & Vehtari 2021).

    Parameters
    ----------
    problem
        What was sampled: pooled, or with a noise structure.
    tau
        Draws of the scales (chain, draw, covariate, level); ``None`` without pooling, where
        every θ_j ~ N(mu0, s0²) independently (scales ``[s0, 0, …]``, θ0 fixed at mu0 with
        only the top noise around it) and the value is the same in every draw.
    unit_level
        The level of the held-out units (0 = features) of the algebra tree.
    to_group
        The held-out group (0..G-1) of each unit of ``unit_level``.
    lead
        Numbers of chains and draws of the result.
    dtype
        Floating type of the result.
    local
        Under a heavy-tailed group prior, draws of the local variances λ² of the groups of
        each annotation level used (chain, draw, covariate, group); ``None``: every λ = 1.

    Returns
    -------
    numpy.ndarray
        (chain, draw, covariate, group).
    """
    b, var_b, index, priors = problem.algebra_b, problem.var_b, problem.index, problem.priors
    n_groups = int(to_group.max()) + 1
    out = np.empty((*lead, b.shape[0], n_groups), dtype=dtype)
    # a missing estimate in a held-out group is scored as N(0; ·, V) ≈ (2πV)^(-1/2) with its
    # stand-in variance V (estimates.fill_missing): adding ½ log 2πV back leaves the observed
    # members' predictive log p(b_G,obs | b_−G,obs, τ)
    feature_group = to_group[_unit_of_features(index, unit_level)]
    stand_in = np.where(problem.missing, 0.5 * np.log(2.0 * np.pi * var_b), 0.0)
    correction = np.stack(
        [np.bincount(feature_group, weights=row, minlength=n_groups) for row in stand_in]
    )
    for c in range(b.shape[0]):
        noise = problem.noise.row(c) if problem.noise is not None else None
        if tau is None:
            scales, top_sd = problem.unpooled_algebra()
            out[:, :, c] = correction[c] + group_log_predictive(
                b[c], var_b[c], scales[c], index, priors.mu0[c], top_sd, unit_level, to_group, noise
            )
            continue
        for chain, draws in chunks(lead, index.n_features):
            out[chain, draws, c] = correction[c] + group_log_predictive(
                b[c],
                var_b[c],
                problem.algebra_scales(tau[chain, draws, c]),
                index,
                priors.mu0[c],
                priors.s0[c],
                unit_level,
                to_group,
                noise,
                None if local is None else tuple(x[chain, draws, c] for x in local),
            )
    return out


def _kernel_local_variances(
    problem: ShrinkageProblem,
    local: tuple[np.ndarray, ...] | None,
    covariate: int,
    lead: tuple[int, ...],
) -> np.ndarray:
    """λ² of every group of the algebra tree per draw, (chain, draw, groups), for the kernels.

    The groups of every level, finest first, in the tree's order (the numbering of
    :class:`~bayeshier_pymc.gaussian_tree.kernels.LeaveOneOutTree` from its first group on);
    ones at the levels above those with local scales. ``local`` ``None``: no groups (every
    λ = 1, the kernels' cheaper path).
    """
    if local is None:
        return np.empty((*lead, 0))
    n_groups = problem.index.n_groups
    ones = [np.ones((*lead, n)) for n in n_groups[len(local) :]]
    return np.ascontiguousarray(np.concatenate([x[:, :, covariate] for x in local] + ones, axis=-1))


def _unit_of_features(index: TreeIndex, unit_level: int) -> np.ndarray:
    """The unit of ``unit_level`` (0 = the feature itself) above every feature."""
    units = np.arange(index.n_features)
    for parent in index.parents[:unit_level]:
        units = parent[units]
    return units


def leave_one_out(
    problem: ShrinkageProblem,
    tau: np.ndarray | None,
    *,
    lead: tuple[int, int],
    dtype: Any = np.float64,
    rng: np.random.Generator | None = None,
    log_density: bool = True,
    local: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Log p(b_j | b_−j, τ) for every draw and, with ``rng``, one replicate of b_j from it.

    The leave-one-out predictive normal of
    :func:`~bayeshier_pymc.gaussian_tree.leave_one_out_normal` on the problem's algebra tree
    with its noise (correlated estimates: the non-factorised normal model of Bürkner, Gabry &
    Vehtari 2021); its moments serve both the log density and the replicate
    (:mod:`bayeshier_pymc.predictive`), computed once. A compiled kernel
    (:func:`~bayeshier_pymc.gaussian_tree.kernels.leave_one_out_moments`, O(m) per draw)
    writes both straight into the results (stores on ordinary pages,
    :func:`~bayeshier_pymc._memory.store_array`), every covariate and chunk of draws in turn,
    split over threads by draw; the replicates' standard normals are drawn a chunk at a time,
    in the order covariate, chain, draw, feature.

    Parameters
    ----------
    problem
        What was sampled.
    tau
        Draws of the scales (chain, draw, covariate, level); ``None`` without pooling (the
        value is then the same in every draw).
    lead
        Numbers of chains and draws.
    dtype
        Floating type of the results.
    rng
        Generator of the replicates; ``None``: no replicates.
    log_density
        Whether to compute the log density; ``False`` (with ``rng``): only the replicates,
        with no store for the log density.
    local
        Under a heavy-tailed group prior, draws of the local variances λ² of the groups of
        each annotation level used (chain, draw, covariate, group); ``None``: every λ = 1.

    Returns
    -------
    log_density, replicates : numpy.ndarray or None
        (chain, draw, covariate, feature); ``log_density`` is ``None`` when not asked for,
        ``replicates`` without ``rng``.

    Raises
    ------
    ValueError
        If neither the log density nor the replicates are asked for.
    """
    if not log_density and rng is None:
        raise ValueError("leave_one_out needs log_density=True or a generator of replicates.")
    b, var_b = problem.algebra_b, problem.var_b
    shape = (*lead, *b.shape)
    densities = store_array(shape, dtype) if log_density else None
    replicates = store_array(shape, dtype) if rng is not None else None
    index, scales, top_sd = _leave_one_out_scales(problem, tau, lead)
    no_normals = np.empty((0, b.shape[1]))
    no_rows = np.empty((0, b.shape[1]), dtype=dtype)
    with ThreadPoolExecutor(max_workers=_threads.cpu_count()) as pool:
        writing: list[Future[None]] = []
        for c in range(b.shape[0]):
            noise = problem.noise.row(c) if problem.noise is not None else None
            tree = leave_one_out_tree(index, noise)
            row_scales = np.ascontiguousarray(scales[:, :, c])
            row_local = _kernel_local_variances(problem, local, c, lead)
            mu0, s0 = float(problem.priors.mu0[c]), float(top_sd[c])
            for chain, draws in chunks(lead, b.shape[1]):
                chunk_scales = row_scales[chain, draws]
                density_rows = densities[chain, draws, c] if densities is not None else no_rows
                normals, replicate_rows = no_normals, no_rows
                if replicates is not None:
                    # drawn while the threads write the previous chunk
                    normals = rng.standard_normal((len(chunk_scales), b.shape[1]))
                    replicate_rows = replicates[chain, draws, c]
                _wait(writing)
                arguments = (
                    b[c],
                    var_b[c],
                    chunk_scales,
                    row_local[chain, draws],
                    tree,
                    mu0,
                    s0,
                    normals,
                )
                writing = [
                    pool.submit(
                        _leave_one_out_kernel, *arguments, lo, hi, density_rows, replicate_rows
                    )
                    for lo, hi in _parts(len(chunk_scales))
                ]
        _wait(writing)
    return densities, replicates


class HeldOutFeatures:
    """Log p(b_j | b_−j, τ) of one covariate's features, any chunk of them at a time.

    The values of :func:`leave_one_out` (pooled, correlated or not), bitwise, without its
    (chain, draw, feature) store: the O(m) passes of each draw run once, here, and keep four
    numbers per parent of θ
    (:func:`~bayeshier_pymc.gaussian_tree.kernels.leave_one_out_parent_terms`), (chain, draw,
    parent) in all; :meth:`chunk` then computes a chunk of features in O(1) per value.

    Parameters
    ----------
    problem
        What was sampled, pooled.
    tau
        Draws of the scales (chain, draw, covariate, level).
    covariate
        The covariate's position.
    local
        Under a heavy-tailed group prior, draws of the local variances λ² of the groups of
        each annotation level used (chain, draw, covariate, group); ``None``: every λ = 1.
    """

    def __init__(
        self,
        problem: ShrinkageProblem,
        tau: np.ndarray,
        covariate: int,
        local: tuple[np.ndarray, ...] | None = None,
    ):
        if not problem.pooled:
            raise ValueError("the held-out features' parent terms need a pooled problem.")
        b, var_b, index = problem.algebra_b, problem.var_b, problem.index
        noise = problem.noise.row(covariate) if problem.noise is not None else None
        self._tree = leave_one_out_tree(index, noise)
        self._b = np.ascontiguousarray(b[covariate])
        self._var_b = np.ascontiguousarray(var_b[covariate])
        self._parent = index.parent_of(0).astype(np.intp)
        scales = np.ascontiguousarray(problem.algebra_scales(tau[:, :, covariate]))
        self._lead = scales.shape[:2]
        flat_scales = scales.reshape(-1, scales.shape[-1])
        flat_local = _kernel_local_variances(problem, local, covariate, self._lead)
        flat_local = flat_local.reshape(len(flat_scales), -1)
        self._tau_w = np.ascontiguousarray(flat_scales[:, 0])
        n_parents = index.n_units[1]
        self._terms = np.empty((len(flat_scales), n_parents, LEAVE_ONE_OUT_PARENT_TERMS))
        mu0, s0 = float(problem.priors.mu0[covariate]), float(problem.priors.s0[covariate])
        arguments = (
            self._b,
            self._var_b,
            flat_scales,
            flat_local,
            self._tree,
            mu0,
            s0,
            self._terms,
        )
        _in_threads(lambda lo, hi: _parent_terms_kernel(*arguments, lo, hi), len(flat_scales))

    def chunk(self, features: slice, dtype: Any) -> np.ndarray:
        """The values of the features ``features``, (chain, draw, feature), in ``dtype``."""
        noise = self._tree.noise[: len(self._b)]
        out = np.empty((len(self._tau_w), len(self._b[features])), dtype=dtype)
        arguments = (
            self._b[features],
            self._var_b[features],
            noise[features],
            self._parent[features],
        )
        _in_threads(
            lambda lo, hi: held_out_log_density(
                *arguments, self._tau_w[lo:hi], self._terms[lo:hi], out[lo:hi]
            ),
            len(out),
        )
        return out.reshape(*self._lead, out.shape[-1])


@compiled_kernel
def _parent_terms_kernel(
    b: np.ndarray,
    var_b: np.ndarray,
    scales: np.ndarray,
    local: np.ndarray,
    tree: LeaveOneOutTree,
    mu0: float,
    s0: float,
    terms: np.ndarray,
    start: int,
    stop: int,
) -> None:  # pragma: no cover - compiled
    """terms[s] = the parent terms of draw s's scales, for the draws s in ``start:stop``.

    ``local[s]``: draw s's local variances of the groups (no columns: none). A draw whose
    scales (and local variances) are the last one's (its τ updates all rejected) copies its
    terms.
    """
    work = np.empty((LEAVE_ONE_OUT_WORK, tree.level_offsets[-1]))
    for s in range(start, stop):
        if s == start or _changed(scales, local, s):
            leave_one_out_parent_terms(b, var_b, scales[s], local[s], tree, mu0, s0, work, terms[s])
        else:
            terms[s] = terms[s - 1]


def _wait(futures: list[Future[None]]) -> None:
    """Wait for ``futures`` in turn (raising the first error)."""
    for future in futures:
        future.result()


def _leave_one_out_scales(
    problem: ShrinkageProblem, tau: np.ndarray | None, lead: tuple[int, int]
) -> tuple[TreeIndex, np.ndarray, np.ndarray]:
    """The algebra tree, scales (chain, draw, covariate, level) and θ0's prior sd per covariate.

    Without pooling every θ_j ~ N(mu0, s0²) independently: on the noise tree
    (:meth:`~bayeshier_pymc.problem.ShrinkageProblem.unpooled_algebra`), or for independent
    estimates on a tree without levels, the features' scale is s0 and θ0 is fixed at mu0.
    """
    if problem.pooled:
        assert tau is not None
        return problem.index, problem.algebra_scales(tau), problem.priors.s0
    if problem.correlated:
        index = problem.index
        scales, top_sd = problem.unpooled_algebra()
    else:
        index = TreeIndex(problem.b.shape[1], (), ())
        scales, top_sd = problem.priors.s0[:, None], 0.0
    per_draw = np.broadcast_to(scales, (*lead, *scales.shape))
    return index, per_draw, np.full(problem.b.shape[0], top_sd)


def conditional_leave_one_out(theta: np.ndarray, problem: ShrinkageProblem) -> np.ndarray:
    """Log p(b_j | b_−j, θ) under the problem's correlated noise, for every draw.

    Given θ, b − θ is the noise N(0, Σ) with tree-structured Σ: the leave-one-out predictive
    of :func:`~bayeshier_pymc.gaussian_tree.group_log_predictive` on b − θ with every scale
    zero and θ0 fixed at 0.

    Parameters
    ----------
    theta
        Draws (chain, draw, covariate, feature).
    problem
        What was sampled; it must carry a noise structure.

    Returns
    -------
    numpy.ndarray
        (chain, draw, covariate, feature), in θ's floating type.
    """
    if problem.noise is None:
        raise ValueError("the leave-one-out conditional needs correlated estimates (noise).")
    b, var_b, index = problem.algebra_b, problem.var_b, problem.index
    zeros = np.zeros(index.depth + 1)
    features = np.arange(index.n_features)
    out = np.empty(theta.shape, dtype=theta.dtype)
    for c in range(b.shape[0]):
        noise = problem.noise.row(c)
        for chain, draws in chunks(theta.shape[:2], index.n_features):
            residual = b[c] - np.asarray(theta[chain, draws, c], dtype=float)
            out[chain, draws, c] = group_log_predictive(
                residual, var_b[c], zeros, index, 0.0, 0.0, 0, features, noise
            )
    return out


def chunks(lead: tuple[int, int], n_units: int) -> Iterator[tuple[int, slice]]:
    """(chain, slice of draws) with about :data:`CHUNK_VALUES` draws × units each."""
    step = max(1, CHUNK_VALUES // max(n_units, 1))
    for chain in range(lead[0]):
        for start in range(0, lead[1], step):
            yield chain, slice(start, min(start + step, lead[1]))


def conditional_total(theta: np.ndarray, b: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Σ over covariates and features of log N(b; θ, s²), one per (chain, draw).

    A missing cell (NaN ``se``) is no data point: it adds nothing.
    """
    observed = ~np.isnan(se)
    b, var_b = _data(np.where(observed, b, 0.0), np.where(observed, se, 1.0))
    flat_theta = np.ascontiguousarray(theta).reshape(-1, *b.shape)
    totals = np.empty(flat_theta.shape[0])
    inverse_var = np.where(observed, 1.0 / var_b, 0.0)
    _in_threads(
        lambda lo, hi: _conditional_total_kernel(b, inverse_var, flat_theta, lo, hi, totals),
        totals.size,
    )
    return (totals + conditional_constant(var_b[observed])).reshape(theta.shape[:2])


def conditional_constant(var_b: np.ndarray) -> float:
    """The part of the conditional log-likelihood total that does not depend on θ.

    Σ over the cells of -½ log(2π s²), for variances ``var_b``. Of the missing cells'
    stand-in variances (:func:`~bayeshier_pymc.estimates.fill_missing`), it is what the
    algebra's total holds for them, to take out: their residual term is below rounding.
    """
    return float(np.sum(-0.5 * np.log(var_b) - _HALF_LOG_2PI))


def _data(b: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(b, dtype=float), np.ascontiguousarray(se, dtype=float) ** 2


def _in_threads(run: Callable[[int, int], Any], n: int) -> None:
    """``run(start, stop)`` over contiguous parts of ``range(n)``, one thread per CPU."""
    in_threads(lambda part: run(*part), _parts(n))


def _parts(n: int) -> list[tuple[int, int]]:
    """Contiguous parts of ``range(n)``, one per CPU, of at least ``_MIN_DRAWS_PER_THREAD``."""
    n_threads = max(1, min(_threads.cpu_count(), n // _MIN_DRAWS_PER_THREAD))
    bounds = np.linspace(0, n, n_threads + 1).astype(int)
    return list(itertools.pairwise(bounds.tolist()))


@compiled_kernel
def _conditional_kernel(
    b: np.ndarray,
    inverse_var: np.ndarray,
    log_norm: np.ndarray,
    theta: np.ndarray,
    start: int,
    stop: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[s, k, j] = log N(b_kj; θ[s, k, j], s_kj²), with ``log_norm`` = -log(s √(2π))."""
    n_covariates, n_features = b.shape
    for s in range(start, stop):
        for k in range(n_covariates):
            for j in range(n_features):
                z = b[k, j] - theta[s, k, j]
                out[s, k, j] = log_norm[k, j] - 0.5 * z * z * inverse_var[k, j]


@compiled_kernel
def _leave_one_out_kernel(
    b: np.ndarray,
    var_b: np.ndarray,
    scales: np.ndarray,
    local: np.ndarray,
    tree: LeaveOneOutTree,
    mu0: float,
    s0: float,
    normals: np.ndarray,
    start: int,
    stop: int,
    log_density: np.ndarray,
    replicates: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """log_density[s, j] = log p(b_j | b_−j, τ_s) for the draws s in ``start:stop``.

    ``scales[s]`` are draw s's scales (D + 1), ``local[s]`` its groups' local variances (no
    columns: none). With ``normals`` (standard normal, draws ×
    features; no rows: no replicates), replicates[s, j] = mean + sd · normals[s, j] of that
    predictive; a ``log_density`` without rows is not written. The moments are computed only
    when a draw's scales differ from the last ones (a draw whose τ updates were all rejected
    repeats them; without pooling they never change).
    """
    n_features = b.size
    work = np.empty((LEAVE_ONE_OUT_WORK, tree.level_offsets[-1]))
    mean = np.empty(n_features)
    variance = np.empty(n_features)
    for s in range(start, stop):
        if s == start or _changed(scales, local, s):
            leave_one_out_moments(
                b, var_b, scales[s], local[s], tree, mu0, s0, work, mean, variance
            )
        if log_density.shape[0]:
            row = log_density[s]
            for j in range(n_features):
                row[j] = log_normal(b[j] - mean[j], variance[j])
        if normals.shape[0]:
            replicate = replicates[s]
            for j in range(n_features):
                replicate[j] = mean[j] + np.sqrt(variance[j]) * normals[s, j]


@compiled_kernel
def _changed(scales: np.ndarray, local: np.ndarray, s: int) -> bool:  # pragma: no cover - compiled
    """Whether draw s's scales or local variances differ from draw s − 1's."""
    return not _same(scales[s], scales[s - 1]) or (
        local.shape[1] > 0 and not _same(local[s], local[s - 1])
    )


@compiled_kernel
def _same(first: np.ndarray, second: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Whether two vectors of the same length are equal."""
    same = True
    for i in range(first.size):
        same = same and first[i] == second[i]
    return same


@compiled_kernel
def _conditional_total_kernel(
    b: np.ndarray,
    inverse_var: np.ndarray,
    theta: np.ndarray,
    start: int,
    stop: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[s] = -½ Σ_kj (b_kj - θ[s, k, j])² / s_kj²."""
    n_covariates, n_features = b.shape
    for s in range(start, stop):
        total = 0.0
        for k in range(n_covariates):
            for j in range(n_features):
                z = b[k, j] - theta[s, k, j]
                total += z * z * inverse_var[k, j]
        out[s] = -0.5 * total
