"""The sampler registry: one place chooses a sampler by name, one place finishes its draws.

Every sampler takes a :class:`~bayeshier_pymc.problem.ShrinkageProblem` and returns a
:class:`SamplerRun` (its draws, statistics and settings); :func:`sample` looks the sampler up in
:data:`SAMPLERS`, runs it, turns the run into the InferenceData contract
(:func:`~bayeshier_pymc.inference_data.build_inference_data`) and warns when the
convergence diagnostics fail. :class:`~bayeshier_pymc.shrinkage.ShrinkageModel` is the user's
way in; it builds the problem and calls :func:`sample`.

``"nuts"``
    ``pymc.sample`` with the ``pymc``, ``nutpie`` or ``numpyro`` NUTS backend, on the collapsed
    model by default (θ0, the group means and θ then drawn exactly given each τ draw by
    :func:`draw_given_scales`) or on a full parameterisation.
``"gibbs"``
    The vectorised Gibbs engine (:func:`~bayeshier_pymc.gibbs.engine.run_engine`), or with
    ``backend="pymc"`` ``pymc.sample`` with the
    :class:`~bayeshier_pymc.gibbs.step.TreeGibbs` step on the centred model.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

from bayeshier_pymc._interrupt import (
    caught_interrupts_raised,
    numpyro_steps_from_python,
    nutpie_start_logged,
)
from bayeshier_pymc._memory import commit, store_array
from bayeshier_pymc._nutpie_cache import cached_nutpie_compilation
from bayeshier_pymc._threads import beside, in_threads
from bayeshier_pymc._validation import check_sampler_arguments
from bayeshier_pymc.convergence import warn_if_not_converged
from bayeshier_pymc.gaussian_tree import TreeIndex, noise_log_density
from bayeshier_pymc.gaussian_tree.kernels import LEAVE_ONE_OUT_PARENT_TERMS
from bayeshier_pymc.gibbs.engine import check_settings, run_engine
from bayeshier_pymc.gibbs.layout import LocalScales, TreeData, TreeState
from bayeshier_pymc.gibbs.scale_kernels import DEFAULT_SCALE_STEPS, evaluate
from bayeshier_pymc.gibbs.step import TreeGibbs
from bayeshier_pymc.gibbs.sweeps import check_scheme, draw_units_given_scales, split_effects
from bayeshier_pymc.inference_data import (
    THETA_PARENT_STORES,
    build_inference_data,
    local_variance_draws,
    posterior_dims,
)
from bayeshier_pymc.log_likelihood import conditional_constant, conditional_total, leave_one_out
from bayeshier_pymc.model import (
    Parameterization,
    build_model,
    group_mean_name,
    local_scale_name,
)
from bayeshier_pymc.predictive import add_posterior_predictive, predictive_generator
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "DEFAULT_NUTS_SAMPLER",
    "NUTPIE_COMPILATION",
    "NUTS_SAMPLERS",
    "SAMPLERS",
    "SUMMARY_THRESHOLD_BYTES",
    "SamplerRun",
    "cached_nutpie_compilation",
    "draw_given_scales",
    "finish",
    "sample",
    "sample_gibbs",
]

NutsSampler = Literal["pymc", "nutpie", "numpyro"]
NUTS_SAMPLERS: tuple[str, ...] = ("pymc", "nutpie", "numpyro")
DEFAULT_NUTS_SAMPLER: NutsSampler = "nutpie"
"""Fastest NUTS backend measured on the research simulation, compilation included
(``benchmarks/bench_nuts.py``; ``docs/nuts.md``)."""
NUTPIE_COMPILATION: Mapping[str, str] = {"backend": "numba"}
"""How nutpie compiles the log density and its gradient unless ``nuts_sampler_kwargs`` names a
``backend``: with numba, which calls the collapsed model's compiled log density and gradient
(:mod:`~bayeshier_pymc.gaussian_tree.log_marginal_op`) from nutpie's Rust threads without
Python, its compiled entry points read from numba's disk cache after a model's first fit
(:func:`cached_nutpie_compilation`); ``{"backend": "jax", "gradient_backend": "jax"}`` runs
the model's graph in JAX instead (a GPU when JAX sees one). Measured in
``benchmarks/bench_nuts.py`` (``docs/nuts.md``)."""


@dataclass(frozen=True)
class SamplerRun:
    """What a sampler of :data:`SAMPLERS` returns, before it becomes the contract.

    Attributes
    ----------
    posterior
        Draws with leading dims (chain, draw): ``theta`` and, with pooling, ``mu``, ``tau`` and
        ``<level>_mean``.
    sample_stats
        Sampler statistics with leading dims (chain, draw).
    sampler
        Name stored in ``attrs["sampler"]``.
    attrs
        The run's settings, stored in the InferenceData's attrs.
    log_likelihood
        The default pointwise log-likelihood if the sampler computed it.
    theta_summary
        In summary storage, θ's per-cell summaries (``posterior`` then has no ``theta``).
    """

    posterior: Mapping[str, np.ndarray]
    sample_stats: xr.Dataset | Mapping[str, np.ndarray]
    sampler: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    log_likelihood: np.ndarray | None = None
    theta_summary: Mapping[str, np.ndarray] | None = None


def sample(
    problem: ShrinkageProblem,
    sampler: str = "nuts",
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    cores: int | None = None,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    **options: Any,
) -> az.InferenceData:
    """Draw from the posterior of ``problem`` with the sampler named ``sampler``.

    Parameters
    ----------
    problem
        What to sample.
    sampler
        A name in :data:`SAMPLERS`: ``"nuts"`` or ``"gibbs"``.
    draws, tune, chains
        Kept draws and tuning steps per chain, and the number of chains.
    cores
        CPUs the sampler may use (default: all, at most one process per chain).
    random_seed
        An integer in [0, 2**63) or a :class:`numpy.random.Generator` (one seed is drawn
        from it); the same seed gives the same draws.
    progressbar
        Show progress.
    **options
        The sampler's own options. ``"nuts"``: ``nuts_sampler`` (one of
        :data:`NUTS_SAMPLERS`, default :data:`DEFAULT_NUTS_SAMPLER`, compiled as
        :data:`NUTPIE_COMPILATION` says), ``parameterization``
        (``"collapsed"``, the default: NUTS samples τ and the rest is drawn by
        :func:`draw_given_scales`; or a full-model choice, see :mod:`bayeshier_pymc.model`),
        ``target_accept`` (default 0.9) and :func:`pymc.sample`'s keywords. ``"gibbs"``: the
        keywords of :func:`sample_gibbs`.

    Returns
    -------
    arviz.InferenceData
        The contract of :func:`~bayeshier_pymc.inference_data.build_inference_data`; a
        :class:`~bayeshier_pymc.convergence.ConvergenceWarning` is emitted when the
        diagnostics fail.

    Raises
    ------
    ValueError
        For a bad argument, before any compilation or tuning.
    """
    checked = check_sampler_arguments(
        draws=draws, tune=tune, chains=chains, cores=cores, random_seed=random_seed
    )
    check_sampler_name(sampler)
    if sampler != "gibbs":
        storage = options.pop("storage", "full")
        if storage not in ("full", "auto"):
            raise ValueError(
                f"storage={storage!r} is offered by the Gibbs engine only "
                "(sample('gibbs', storage='summary')); NUTS keeps every draw."
            )
    run = SAMPLERS[sampler](problem, **checked._asdict(), progressbar=progressbar, **options)
    idata = finish(problem, run)
    warn_if_not_converged(idata)
    return idata


def finish(problem: ShrinkageProblem, run: SamplerRun) -> az.InferenceData:
    """The InferenceData contract of ``run``, a run of a sampler on ``problem``.

    Replicated estimates (``posterior_predictive``) are drawn here, for every sampler, from
    their own stream under the run's seed (:mod:`bayeshier_pymc.predictive`); a run in
    summary storage has neither them nor a stored pointwise log-likelihood
    (:mod:`bayeshier_pymc.streamed`).
    """
    if run.theta_summary is not None:
        return build_inference_data(
            run.posterior,
            problem,
            sampler=run.sampler,
            sample_stats=run.sample_stats,
            attrs=run.attrs,
            theta_summary=run.theta_summary,
        )
    rng = predictive_generator(run.attrs.get("random_seed"))
    log_likelihood, replicates = run.log_likelihood, None
    if problem.correlated and log_likelihood is None:
        # the leave-one-out log-likelihood and the replicates from the same moments
        theta = run.posterior["theta"]
        tau = run.posterior["tau"] if problem.pooled else None
        log_likelihood, replicates = leave_one_out(
            problem,
            tau,
            lead=theta.shape[:2],
            dtype=theta.dtype,
            rng=rng,
            local=local_variance_draws(run.posterior, problem),
        )
    idata = build_inference_data(
        run.posterior,
        problem,
        sampler=run.sampler,
        sample_stats=run.sample_stats,
        attrs=run.attrs,
        log_likelihood=log_likelihood,
    )
    return add_posterior_predictive(idata, problem, rng, replicates)


def sample_gibbs(
    problem: ShrinkageProblem,
    *,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int | None = None,
    progressbar: bool = True,
    scheme: Literal["collapsed", "conjugate"] = "collapsed",
    scale_steps: int = DEFAULT_SCALE_STEPS,
    theta_dtype: Any = np.float32,
    backend: Literal["numpy", "pymc"] = "numpy",
    cores: int | None = None,
    storage: Literal["auto", "full", "summary"] = "auto",
) -> az.InferenceData:
    """Sample the shrinkage posterior by Gibbs sampling.

    :func:`sample` with ``"gibbs"``, without its convergence warning (for runs too short
    for diagnostics, such as tests and benchmarks).

    Parameters
    ----------
    problem
        What to sample.
    draws, tune, chains
        Kept sweeps and tuning sweeps per chain, and the number of chains.
    random_seed
        The same seed gives the same draws.
    progressbar
        Show a progress bar.
    scheme
        ``"collapsed"`` (default): τ from its collapsed conditional, everything else exactly
        given τ (mixes τ well); ``"conjugate"``: the centred conjugate sweep of the research
        algorithm. See :mod:`bayeshier_pymc.gibbs.sweeps`.
    scale_steps
        Metropolis–Hastings steps per τ and sweep in the collapsed scheme.
    theta_dtype
        Storage type of the engine's θ draws and pointwise log-likelihood: float32 (default;
        see :mod:`bayeshier_pymc.gibbs.engine`) or float64 (``backend="pymc"`` keeps PyMC's
        float64).
    backend
        ``"numpy"`` (default): the vectorised engine; ``"pymc"``: ``pymc.sample`` with the
        :class:`~bayeshier_pymc.gibbs.step.TreeGibbs` step on the centred model.
    cores
        With 2 or more (default: the CPUs), θ is drawn in a background thread; with
        ``backend="pymc"``, the processes of ``pymc.sample`` (default ``min(chains, CPUs)``).
    storage
        ``"full"``: every θ draw, the pointwise log-likelihood and replicated estimates are
        stored; ``"summary"``: θ's per-cell summaries only, in the ``theta_summary`` group,
        with LOO and θ draws computed on demand (:mod:`bayeshier_pymc.streamed`; the
        collapsed engine on a pooled problem, with independent or correlated estimates); ``"auto"``
        (default): ``"summary"`` when that is possible and what ``"full"`` keeps would exceed
        :data:`SUMMARY_THRESHOLD_BYTES` and θ's summaries take less,
        announced by one warning, else ``"full"``.

    Returns
    -------
    arviz.InferenceData
        The contract; ``sample_stats`` holds ``log_likelihood`` (Σ log N(b; θ, s²) per draw;
        with shared noise Σ log N(b; θ, Σ) per covariate, summed) and, for the collapsed
        scheme, ``scale_acceptance``; ``attrs["sampling_time"]`` is in seconds.
    """
    run = _sample_gibbs(
        problem,
        draws=draws,
        tune=tune,
        chains=chains,
        cores=cores,
        random_seed=random_seed,
        progressbar=progressbar,
        scheme=scheme,
        scale_steps=scale_steps,
        theta_dtype=theta_dtype,
        backend=backend,
        storage=storage,
    )
    return finish(problem, run)


def draw_given_scales(
    problem: ShrinkageProblem,
    tau: np.ndarray,
    rng: np.random.Generator,
    local_scales: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Exact draws of θ0, the group means and θ given scale draws ``tau``.

    Parameters
    ----------
    problem
        A pooled problem.
    tau
        Array (chain, draw, covariate, level).
    rng
        Random generator.
    local_scales
        Under a heavy-tailed group prior, the draws of the local scales λ of every annotation
        level, finest first, each (chain, draw, covariate, group), drawn with ``tau``.

    Returns
    -------
    dict
        ``mu``, ``tau``, ``<level>_mean`` and ``theta`` (float64), each with leading (chain,
        draw), and ``local_scales`` as ``<level>_local_scale``.

    Raises
    ------
    ValueError
        Without pooling; with ``local_scales`` given or missing against the group prior; when
        ``tau`` is not (chain, draw, covariate, level) with the problem's covariates and
        levels, or a level's local scales not (chain, draw, covariate, group) with tau's
        chains and draws and the level's groups (the message names the level and both
        shapes).

    Notes
    -----
    The draws run the Gibbs engine's compiled passes (:func:`_draw_tree_given`) on blocks of
    a chain's draws (:data:`DRAW_BLOCK_CELLS`), with the standard normals of the NumPy
    reference algebra (:func:`~bayeshier_pymc.gaussian_tree.upward_pass` and
    :func:`~bayeshier_pymc.gaussian_tree.draw_tree` per chain), drawn from ``rng`` in its
    order: the same draws as that algebra, up to rounding.
    """
    _check_given_scales(problem, tau, local_scales)
    normals = _draw_normals(problem, tau.shape[:3], rng)
    return _draw_given_normals(problem, tau, normals, local_scales)


@dataclass(frozen=True)
class _ExactDrawNormals:
    """The standard normals of :func:`draw_given_scales`, drawn before the scales are known.

    They do not depend on the scales, so that NUTS can have them drawn while it samples
    (:func:`_draw_normals`).

    Attributes
    ----------
    theta
        θ's store (chain, draw, covariate, feature), holding θ's normals until the draws
        overwrite them.
    by_chain
        Every chain's normals of the other levels, as :func:`_reference_normals` returns them
        (θ's are views of ``theta``).
    """

    theta: np.ndarray
    by_chain: list[list[np.ndarray]]


def _draw_normals(
    problem: ShrinkageProblem,
    lead: tuple[int, ...],
    rng: np.random.Generator,
    stopped: Callable[[], bool] = lambda: False,
) -> _ExactDrawNormals:
    """The standard normals of :func:`draw_given_scales` for scale draws of shape ``lead``.

    Parameters
    ----------
    problem
        A pooled problem.
    lead
        (chains, draws, covariates) of the scale draws.
    rng
        Random generator, drawn from chain by chain in the reference algebra's order.
    stopped
        Asked between blocks of :data:`NORMAL_BLOCK_CELLS` normals: once it is True, the call
        gives up (a thread drawing the normals while NUTS samples stops within a block of a
        Ctrl-C, :func:`~bayeshier_pymc._threads.beside`).

    Returns
    -------
    _ExactDrawNormals
        The normals, θ's in θ's store (:func:`~bayeshier_pymc._memory.store_array`, each
        block committed in one system call before it is drawn); the call releases the GIL
        while it commits and draws, so a thread can run it while NUTS samples.

    Raises
    ------
    concurrent.futures.CancelledError
        Once ``stopped()`` is True.
    """
    theta = store_array((*lead, problem.index.n_features))
    by_chain = [
        _reference_normals(problem.index, problem.correlated, chain_theta, rng, stopped)
        for chain_theta in theta
    ]
    return _ExactDrawNormals(theta, by_chain)


NORMAL_BLOCK_CELLS = 1 << 22
"""Standard normals per block of :func:`_draw_normals` (32 MB, about 0.1 s to commit and draw)."""


def _check_given_scales(
    problem: ShrinkageProblem, tau: np.ndarray, local_scales: Sequence[np.ndarray] | None
) -> None:
    """Raise a ValueError unless scales (and ``local_scales``) can be conditioned on."""
    if problem.tree is None:
        raise ValueError("a model without pooling has no scales to condition on.")
    if (local_scales is not None) != _has_local_scales(problem):
        raise ValueError(
            "draw_given_scales needs local_scales exactly when the group prior is heavy-tailed "
            f"and the tree has annotation levels (group_prior={problem.priors.group_prior!r})."
        )
    if local_scales is not None and len(local_scales) != len(problem.tree.levels):
        raise ValueError(
            f"local_scales must hold one array per annotation level {problem.tree.levels!r}, "
            f"got {len(local_scales)}."
        )
    _check_scale_shapes(problem, tau, local_scales)


def _draw_given_normals(
    problem: ShrinkageProblem,
    tau: np.ndarray,
    normals: _ExactDrawNormals,
    local_scales: Sequence[np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """:func:`draw_given_scales` with its normals drawn already (:func:`_draw_normals`)."""
    n_chains, n_draws, n_covariates = tau.shape[:3]
    if normals.theta.shape[:3] != tau.shape[:3]:
        raise ValueError(
            f"normals drawn for scale draws of shape {normals.theta.shape[:3]}, "
            f"got scale draws of shape {tau.shape[:3]}."
        )
    index = problem.index
    posterior = {
        "mu": np.empty((n_chains, n_draws, n_covariates)),
        "tau": tau,
        "theta": normals.theta,
    }
    for level, n_groups in zip(problem.tree.levels, index.n_groups, strict=False):
        posterior[group_mean_name(level)] = np.empty((n_chains, n_draws, n_covariates, n_groups))
    block_draws = max(1, DRAW_BLOCK_CELLS // problem.b.size)

    def draw_chain(chain: int) -> None:
        blocks: dict[int, TreeData] = {}  # the rows of a block of draws, by its number of draws
        for start in range(0, n_draws, block_draws):
            draws = slice(start, min(start + block_draws, n_draws))
            size = draws.stop - draws.start
            if size not in blocks:
                blocks[size] = TreeData.from_problem(problem, copies=size)
            local = None
            if local_scales is not None:
                local = tuple(scales[chain, draws] ** 2 for scales in local_scales)
            block = {name: values[chain, draws] for name, values in posterior.items()}
            chain_normals = [z[draws] for z in normals.by_chain[chain]]
            _draw_tree_given(problem, blocks[size], local, chain_normals, block)

    in_threads(draw_chain, range(n_chains))  # the chains write disjoint parts of the stores
    for level, scales in zip(problem.tree.levels, local_scales or (), strict=False):
        posterior[local_scale_name(level)] = scales
    return posterior


def _check_scale_shapes(
    problem: ShrinkageProblem, tau: np.ndarray, local_scales: Sequence[np.ndarray] | None
) -> None:
    """A ValueError unless the scales have the shapes of ``problem``'s tree and covariates.

    ``tau`` must be (chain, draw, covariate, level) and each annotation level's local scales
    (chain, draw, covariate, group), with tau's chains and draws.
    """
    n_covariates, levels = problem.b.shape[0], problem.tree.levels
    shape = np.shape(tau)
    if len(shape) != 4 or shape[2:] != (n_covariates, len(levels) + 1):
        raise ValueError(
            f"tau must be (chain, draw, covariate, level) with {n_covariates} covariates and "
            f"{len(levels) + 1} levels (the features' and {list(levels)!r}), got shape {shape}."
        )
    for level, n_groups, scales in zip(
        levels, problem.index.n_groups, local_scales or (), strict=False
    ):
        expected = (*shape[:3], n_groups)
        if np.shape(scales) != expected:
            raise ValueError(
                f"the local scales of level {level!r} must be (chain, draw, covariate, group) "
                f"{expected}, as tau's (chain, draw, covariate) {shape[:3]} and the level's "
                f"{n_groups} groups, got shape {np.shape(scales)}."
            )


DRAW_BLOCK_CELLS = 1 << 19
"""Estimates (draws × covariates × features) per block of :func:`draw_given_scales`: 4 MB per
array of the block, so that its passes work in the CPU's cache."""


def _has_local_scales(problem: ShrinkageProblem) -> bool:
    """Whether the group effects of pooled ``problem`` have local scales λ (heavy-tailed)."""
    return problem.priors.heavy_tailed and bool(problem.tree and problem.tree.levels)


def _draw_tree_given(
    problem: ShrinkageProblem,
    data: TreeData,
    local: tuple[np.ndarray, ...] | None,
    normals: list[np.ndarray],
    block: dict[str, np.ndarray],
) -> None:
    """θ0, the group means and θ of a block of draws, drawn exactly given its τ, in place.

    The Gibbs engine's compiled passes on ``data``, whose rows are the block's (draw,
    covariate) pairs: the upward pass (:func:`~bayeshier_pymc.gibbs.scale_kernels.evaluate`),
    the downward draw of every level
    (:func:`~bayeshier_pymc.gibbs.sweeps.draw_units_given_scales`) and, with shared noise, the
    split of the totals into effects (:func:`~bayeshier_pymc.gibbs.sweeps.split_effects`).

    Parameters
    ----------
    problem
        The pooled problem.
    data
        The problem's data with one row per (draw, covariate) of the block.
    local
        The groups' local variances λ² of the annotation levels used, each (draw, covariate,
        group), or ``None``.
    normals
        The block's standard normals from :func:`_reference_normals`.
    block
        The block's views of :func:`draw_given_scales`'s stores, (draw, covariate, ...):
        ``tau`` is read, ``mu``, ``theta`` and the group means are written.
    """
    n_rows = data.n_rows
    tau = np.asarray(block["tau"], dtype=float).reshape(n_rows, -1)
    state = TreeState(tau, [np.empty((n_rows, n)) for n in data.n_units])
    if local is not None:
        variances = [
            data.rows_to_sorted(np.asarray(values.reshape(n_rows, -1), dtype=float), level)
            for level, values in enumerate(local, start=1)
        ]
        state.local = LocalScales(problem.priors, variances, [np.ones_like(v) for v in variances])
    messages = evaluate(data, tau, None if local is None else state.local_lane(data)).messages
    sorted_normals = [_sorted_rows(data, z, level) for level, z in enumerate(normals)]
    depth = data.depth
    draw_units_given_scales(data, state, list(messages), None, normals=sorted_normals[: depth + 2])
    if data.correlated:
        offsets = data.message_offsets
        split_normals = np.empty((n_rows, offsets[-1]))
        for level, z in enumerate(sorted_normals[depth + 2 :], start=1):
            split_normals[:, offsets[level] : offsets[level + 1]] = z
        effects, parent_noise = split_effects(data, state, None, normals=split_normals)
        theta = state.units[0] - np.take(parent_noise, data.parent_index[0], axis=-1)
    else:
        effects, theta = state.units[1:], state.units[0]
    block["mu"][...] = effects[-1].reshape(block["mu"].shape)
    data.from_sorted(theta, out=np.reshape(block["theta"], theta.shape, copy=False))
    for level, name in enumerate(problem.tree.levels, start=1):
        means = block[group_mean_name(name)]
        means[...] = data.from_sorted(effects[level - 1], level).reshape(means.shape)


def _sorted_rows(data: TreeData, normals: np.ndarray, level: int) -> np.ndarray:
    """A block's normals of the level-``level`` units, (draw, covariate, unit), as sorted rows."""
    rows = normals.reshape(data.n_rows, -1)
    return data.rows_to_sorted(rows, level) if level <= data.depth else np.ascontiguousarray(rows)


def _reference_normals(
    tree: TreeIndex,
    correlated: bool,
    theta_store: np.ndarray,
    rng: np.random.Generator,
    stopped: Callable[[], bool],
) -> list[np.ndarray]:
    """A chain's standard normals, drawn from ``rng`` in the reference algebra's order.

    :func:`~bayeshier_pymc.gaussian_tree.draw_tree` draws θ0's normals, then each level's from
    the coarsest down to θ, then (shared noise) θ0's split and each group level's from the
    coarsest down, every level in one call, (draw, covariate, unit) in the caller's order.
    θ's are drawn into ``theta_store`` (draw, covariate, feature) a block of draws at a time,
    the same stream as one call, with ``stopped`` asked before each block (see
    :func:`_draw_normals`).

    Returns
    -------
    list of numpy.ndarray
        The normals of the downward draw of every level 0..D + 1 (θ0's (draw, covariate)),
        then, with shared noise, those of the split of every level 1..D + 1.
    """
    lead = theta_store.shape[:2]
    top = tree.depth + 1
    normals: list[np.ndarray] = [np.empty(0)] * (top + 1)
    normals[top] = rng.standard_normal(lead)
    for level in range(tree.depth, 0, -1):
        normals[level] = rng.standard_normal((*lead, tree.n_units[level]))
    block_draws = max(1, NORMAL_BLOCK_CELLS // max(1, math.prod(theta_store.shape[1:])))
    for start in range(0, len(theta_store), block_draws):
        if stopped():
            raise CancelledError("the exact draws' normals were given up")
        block = theta_store[start : start + block_draws]
        commit(block)
        rng.standard_normal(out=block)
    normals[0] = theta_store
    if correlated:
        split = [rng.standard_normal(lead)]
        split += [
            rng.standard_normal((*lead, tree.n_units[level])) for level in range(tree.depth, 0, -1)
        ]
        normals += split[::-1]
    return normals


def _default_cores(cores: int | None, chains: int) -> int:
    """Processes for ``pymc.sample``: PyMC's own guess ran chains one after another on 2 CPUs."""
    return cores or min(chains, os.cpu_count() or 1)


def _seed_attr(random_seed: int | None) -> int | str:
    return "None" if random_seed is None else int(random_seed)


def _sample_nuts(
    problem: ShrinkageProblem,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int | None,
    random_seed: int | None,
    progressbar: bool,
    nuts_sampler: NutsSampler = DEFAULT_NUTS_SAMPLER,
    parameterization: Parameterization = "collapsed",
    target_accept: float = 0.9,
    **pymc_kwargs: Any,
) -> SamplerRun:
    """NUTS through ``pymc.sample`` with the backend ``nuts_sampler``.

    On the collapsed model (the default with pooling) NUTS samples τ only and θ0, the group
    means and θ are drawn exactly given each τ draw (:func:`draw_given_scales`), with a
    generator spawned from ``random_seed``. ``**pymc_kwargs`` go to :func:`pymc.sample`.
    """
    if nuts_sampler not in NUTS_SAMPLERS:
        raise ValueError(
            f"unknown nuts_sampler {nuts_sampler!r}; use 'pymc', 'nutpie' or 'numpyro'."
        )
    if nuts_sampler == "numpyro":
        # one JAX CPU device runs "parallel" chains one after another; vectorised chains
        # were 1.6x faster on the research simulation (2 cores)
        numpyro_options = {"chain_method": "vectorized"}
        numpyro_options.update(pymc_kwargs.pop("nuts_sampler_kwargs", {}))
        pymc_kwargs["nuts_sampler_kwargs"] = numpyro_options
    elif nuts_sampler == "nutpie":
        # PyMC does not hand nutpie its cores: one thread per chain, at most the CPUs
        nutpie_options: dict[str, Any] = {"cores": _default_cores(cores, chains)}
        given = pymc_kwargs.pop("nuts_sampler_kwargs", {})
        if "backend" not in given:
            nutpie_options.update(NUTPIE_COMPILATION)
        nutpie_options.update(given)
        pymc_kwargs["nuts_sampler_kwargs"] = nutpie_options
    collapsed = problem.pooled and parameterization == "collapsed"
    # without pooling build_model ignores the parameterisation
    model = build_model(
        problem.estimates, problem.tree, problem.priors, parameterization, problem.noise_model
    )
    seed_sequence = np.random.SeedSequence(random_seed)
    nuts_seed = int(seed_sequence.generate_state(1)[0] % (2**31))
    rng = np.random.default_rng(seed_sequence.spawn(1)[0])
    lead = (chains, draws, problem.b.shape[0])
    start = time.perf_counter()
    with (
        # the exact draws' normals do not depend on τ: a thread draws them while nutpie or
        # numpyro compiles and samples (PyMC's own sampler forks processes, after sampling)
        beside(lambda stopped: _draw_normals(problem, lead, rng, stopped))
        if collapsed and nuts_sampler != "pymc"
        else nullcontext() as normals,
        caught_interrupts_raised(),
        numpyro_steps_from_python(nuts_sampler, progressbar),
        nutpie_start_logged(nuts_sampler),
        cached_nutpie_compilation() if nuts_sampler == "nutpie" else nullcontext(),
        _compiled_jax_log_density(nuts_sampler),
    ):
        raw = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=_default_cores(cores, chains),
            random_seed=nuts_seed,
            nuts_sampler=nuts_sampler,
            target_accept=target_accept,
            progressbar=progressbar,
            model=model,
            compute_convergence_checks=False,
            **pymc_kwargs,
        )
    if collapsed:
        tau = raw.posterior["tau"].to_numpy()
        local_scales = None
        if _has_local_scales(problem):
            local_scales = [
                raw.posterior[local_scale_name(level)].to_numpy() for level in problem.tree.levels
            ]
        drawn = _draw_normals(problem, lead, rng) if normals is None else normals.result()
        posterior = _draw_given_normals(problem, tau, drawn, local_scales)
    else:
        posterior = _posterior_arrays(raw, problem)
    elapsed = time.perf_counter() - start
    return SamplerRun(
        posterior,
        raw.sample_stats,
        sampler=f"nuts ({nuts_sampler})",
        attrs={
            "parameterization": parameterization
            if isinstance(parameterization, str)
            else repr(dict(parameterization)),
            "sampling_time": elapsed,
            "random_seed": _seed_attr(random_seed),
        },
    )


@contextmanager
def _compiled_jax_log_density(nuts_sampler: str) -> Iterator[None]:
    """Within the block, ``pymc.sample`` hands numpyro a compiled (``jax.jit``) log density.

    PyMC hands numpyro the log density as a plain function of JAX operations, which numpyro's
    initialisation and PyMC's jittered starting points run one operation at a time: about 380
    small XLA compilations, two thirds of the demo's NUTS time (measured: NUTS on the demo
    study 47.8 s → 20.5 s, loaded 2-core machine). Compiled, it is one program. The sampling
    steps compiled the log density already; only the starting gradient changes, in its last
    bits (1e-14: compiled, it is computed as inside the steps), and with it the draws of a seed.
    """
    if nuts_sampler != "numpyro":
        yield
        return
    import jax
    import pymc.sampling.jax as pymc_jax

    plain = pymc_jax.get_jaxified_logp

    def compiled(model: pm.Model, negative_logp: bool = True) -> Callable[..., Any]:
        return jax.jit(plain(model, negative_logp=negative_logp))

    pymc_jax.get_jaxified_logp = compiled
    try:
        yield
    finally:
        pymc_jax.get_jaxified_logp = plain


def _sample_gibbs(
    problem: ShrinkageProblem,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int | None,
    random_seed: int | None,
    progressbar: bool,
    scheme: str = "collapsed",
    scale_steps: int = DEFAULT_SCALE_STEPS,
    theta_dtype: Any = np.float32,
    backend: str = "numpy",
    storage: str = "auto",
) -> SamplerRun:
    """The Gibbs engine (``backend="numpy"``) or the PyMC step (``"pymc"``).

    See :func:`sample_gibbs` for the options.
    """
    if backend not in ("numpy", "pymc"):
        raise ValueError(f"unknown backend {backend!r}; use 'numpy' or 'pymc'.")
    check_scheme(problem, scheme)
    storage = _resolve_storage(storage, problem, backend, scheme, (chains, draws), theta_dtype)
    theta_summary = None
    if storage == "summary" and random_seed is None:
        # θ is regenerated from the seed: a run without one gets a fresh one, recorded
        random_seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
    log_likelihood = None
    start = time.perf_counter()
    if backend == "pymc":
        check_settings(draws, tune, chains, scheme, theta_dtype)  # run_engine checks its own
        cores = _default_cores(cores, chains)
        posterior, stats = _run_step(
            problem, draws, tune, chains, cores, random_seed, progressbar, scheme, scale_steps
        )
        label = f"gibbs ({scheme}, pymc step)"
    else:
        posterior, stats, log_likelihood, theta_summary = run_engine(
            problem,
            draws=draws,
            tune=tune,
            chains=chains,
            random_seed=random_seed,
            progressbar=progressbar,
            scheme=scheme,  # type: ignore[arg-type]
            scale_steps=scale_steps,
            theta_dtype=theta_dtype,
            cores=cores,
            storage=storage,  # type: ignore[arg-type]
        )
        label = f"gibbs ({scheme})"
    elapsed = time.perf_counter() - start
    if "log_likelihood" not in stats:
        stats = {**stats, "log_likelihood": _conditional_total(problem, posterior["theta"])}
    return SamplerRun(
        posterior,
        stats,
        sampler=label,
        attrs={
            "sampling_time": elapsed,
            "scheme": scheme,
            "scale_steps": scale_steps,
            "tuning_steps": tune,
            "random_seed": _seed_attr(random_seed),
            "storage": storage,
            "theta_dtype": np.dtype(theta_dtype).name,
        },
        log_likelihood=log_likelihood,
        theta_summary=theta_summary,
    )


SUMMARY_THRESHOLD_BYTES = 6 * 1024**3
"""Size of what ``storage="full"`` keeps (θ, the pointwise log-likelihood and the replicated
estimates, each chains × draws × covariates × features in θ's floating type) above which
``storage="auto"`` keeps θ's summaries only, if they take less: 6 GiB,
e.g. m = 12,500 features, p = 10 and 4 × 1000 draws in float32 (θ alone 2 GiB)."""

_CELL_SUMMARY_BYTES = 4 * 8
"""Per (covariate, feature) cell of a summary fit: θ's mean and sd (float64) and its numbers
of positive and negative draws (int64)."""


def _storage_bytes(
    problem: ShrinkageProblem, lead: tuple[int, int], theta_dtype: Any
) -> dict[str, int]:
    """What each storage mode of the Gibbs engine keeps, in bytes, for (chains, draws) ``lead``.

    ``"full"``: θ, the pointwise log-likelihood and the replicated estimates, one value each
    per draw and cell in θ's type. ``"summary"``: θ's per-cell summaries and, with correlated
    estimates, per draw and covariate, the float64 totals and path noise of θ's G parents
    (the noise tree's first-level groups, 16 G bytes) and, while LOO runs on one covariate,
    the leave-one-out terms of its parents (4 float64 per parent and draw,
    :class:`~bayeshier_pymc.log_likelihood.HeldOutFeatures`). Summary storage keeps more when
    16 G p + 32 G > 3 m p × θ's item size: G above m / 4 for one covariate in float32.

    Parameters
    ----------
    problem
        What is sampled.
    lead
        The numbers of chains and of draws per chain.
    theta_dtype
        θ's floating type.

    Returns
    -------
    dict
        ``{"full": bytes, "summary": bytes}``.
    """
    n_draws = lead[0] * lead[1]
    n_covariates, n_features = problem.b.shape
    per_value = np.dtype(theta_dtype).itemsize
    full = 3 * n_draws * n_covariates * n_features * per_value
    summary = n_covariates * n_features * _CELL_SUMMARY_BYTES
    if problem.correlated:
        n_parents = problem.index.n_units[1]
        parent_stores = len(THETA_PARENT_STORES) * n_draws * n_covariates * n_parents * 8
        loo_terms = LEAVE_ONE_OUT_PARENT_TERMS * n_draws * n_parents * 8
        summary += parent_stores + loo_terms
    return {"full": full, "summary": summary}


def _resolve_storage(
    storage: str,
    problem: ShrinkageProblem,
    backend: str,
    scheme: str,
    lead: tuple[int, int],
    theta_dtype: Any,
) -> str:
    """``"full"`` or ``"summary"`` for ``storage`` (see :func:`sample_gibbs`)."""
    if storage not in ("auto", "full", "summary"):
        raise ValueError(f"unknown storage {storage!r}; use 'auto', 'full' or 'summary'.")
    possible = backend == "numpy" and scheme == "collapsed" and problem.pooled
    if storage == "summary" and backend != "numpy":
        raise ValueError("storage='summary' needs the Gibbs engine (backend='numpy').")
    if storage != "auto":
        return storage
    if not possible:
        return "full"
    size = _storage_bytes(problem, lead, theta_dtype)
    if size["full"] <= SUMMARY_THRESHOLD_BYTES or size["summary"] >= size["full"]:
        return "full"
    warnings.warn(
        f"the θ draws, with the pointwise log-likelihood and the replicated estimates, would "
        f"take {size['full'] / 1024**3:.1f} GiB: keeping their summaries only, "
        f"{size['summary'] / 1024**3:.2f} GiB (storage='summary'; pass storage='full' to "
        "keep them).",
        UserWarning,
        stacklevel=4,
    )
    return "summary"


def _conditional_total(problem: ShrinkageProblem, theta: np.ndarray) -> np.ndarray:
    """Σ over covariates of log p(b | θ) per (chain, draw): N(θ, s²), or N(θ, Σ) with noise.

    Over the observed cells only (a missing cell is no data point).
    """
    if problem.noise is None:
        return conditional_total(theta, problem.b, problem.se)
    b = problem.algebra_b
    return np.stack(  # chain by chain, to bound the temporaries
        [
            noise_log_density(b - chain, problem.var_b, problem.index, problem.noise).sum(axis=-1)
            for chain in theta
        ]
    ) - conditional_constant(problem.var_b[problem.missing])


def _run_step(
    problem: ShrinkageProblem,
    draws: int,
    tune: int,
    chains: int,
    cores: int,
    random_seed: int | None,
    progressbar: bool,
    scheme: str,
    scale_steps: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``pymc.sample`` with :class:`TreeGibbs` on the centred model: posterior and stats."""
    model = build_model(
        problem.estimates, problem.tree, problem.priors, "centered", problem.noise_model
    )
    seeds = np.random.SeedSequence(random_seed).generate_state(2)
    with model, caught_interrupts_raised():
        step = TreeGibbs(problem=problem, scheme=scheme, scale_steps=scale_steps)
        raw = pm.sample(
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            step=step,
            initvals=step.initial_points(chains, seeds[0]),
            random_seed=int(seeds[1] % 2**31),
            progressbar=progressbar,
            compute_convergence_checks=False,
        )
    posterior = _posterior_arrays(raw, problem)
    return posterior, {"scale_acceptance": raw.sample_stats["scale_acceptance"].to_numpy()}


def _posterior_arrays(raw: az.InferenceData, problem: ShrinkageProblem) -> dict[str, np.ndarray]:
    """The contract's posterior variables of a ``pymc.sample`` result, as arrays."""
    return {
        name: raw.posterior[name].to_numpy()
        for name in posterior_dims(problem.tree, problem.priors.heavy_tailed)
    }


SAMPLERS: dict[str, Callable[..., SamplerRun]] = {"nuts": _sample_nuts, "gibbs": _sample_gibbs}
"""Sampler name → function ``(problem, *, draws, tune, chains, cores, random_seed,
progressbar, **options) -> SamplerRun``."""


def check_sampler_name(sampler: object) -> None:
    """Raise a ValueError unless ``sampler`` names one of :data:`SAMPLERS`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)!r}.")
