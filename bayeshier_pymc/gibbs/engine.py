"""The vectorised Gibbs engine: every chain and covariate in one NumPy sweep.

:func:`run_engine` runs the sweeps of :mod:`bayeshier_pymc.gibbs.sweeps` on rows that are
(chain, covariate) pairs for a :class:`~bayeshier_pymc.problem.ShrinkageProblem` and returns the
kept draws; :mod:`bayeshier_pymc.sampling` turns them into the InferenceData contract (the
same variables, dims and coordinates as NUTS).

Two cores: in the collapsed scheme nothing in a sweep conditions on θ, so the sweeps skip θ
(the largest single cost of a sweep); the kept θ draws and their log-likelihoods are written
from the recorded τ and group means by a
:class:`~bayeshier_pymc.gibbs.theta_writer.ThetaWriter`, with noise from its own generator
spawned from ``random_seed``. With ``cores >= 2`` it works in a background thread while the
main thread sweeps on. The draws are the same either way.

Correlated estimates (tree-structured noise): the sweeps run on the totals of the noise tree
(:mod:`bayeshier_pymc.gibbs.sweeps`); each kept sweep splits its group totals into effects
(:func:`~bayeshier_pymc.gibbs.sweeps.split_effects`) and records, besides the posterior, the
totals of θ's parents and the noise on their paths, from which the writer draws θ. Only the
collapsed scheme has this form; without pooling θ is drawn exactly by
:func:`~bayeshier_pymc.gibbs.sweeps.draw_unpooled`.

A heavy-tailed group prior (``Priors.group_prior``) adds the groups' local scales λ to the
sweeps' state (:mod:`bayeshier_pymc.gibbs.local_scales`), recorded as ``<level>_local_scale``;
θ given its parent does not depend on λ, so the θ writer and the summary replay are unchanged.

Storage: θ draws are kept in float32 by default (``theta_dtype``); at 4 chains × 2000 draws ×
10 covariates × 999 features that is 320 MB instead of 640 MB, with a relative rounding error
of 6e-8, far below any Monte Carlo error. Every other variable is float64. With
``storage="summary"`` no θ draw is kept: after the sweeps θ is replayed draw by draw and
summarised per cell (:mod:`bayeshier_pymc.gibbs.theta_summary`), the same draws as stored;
with shared noise the totals of θ's parents and their path noise are returned with the
summaries, to regenerate θ from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from bayeshier_pymc._memory import store_array
from bayeshier_pymc.gaussian_tree import posterior_normal
from bayeshier_pymc.gibbs.layout import TreeData, TreeState
from bayeshier_pymc.gibbs.scale_kernels import ScaleKernel
from bayeshier_pymc.gibbs.sweeps import (
    check_scheme,
    collapsed_sweep,
    conjugate_sweep,
    draw_unpooled,
    initial_state,
    split_effects,
)
from bayeshier_pymc.gibbs.theta_summary import ThetaStream, check_summary_problem, summarise
from bayeshier_pymc.gibbs.theta_writer import ThetaParents, ThetaWriter
from bayeshier_pymc.inference_data import THETA_PARENT_STORES
from bayeshier_pymc.model import group_mean_name, local_scale_name
from bayeshier_pymc.problem import ShrinkageProblem

if TYPE_CHECKING:
    from bayeshier_pymc.hierarchy import Hierarchy

__all__ = ["SCHEMES", "STORAGES", "EngineDraws", "check_settings", "run_engine"]

Scheme = Literal["collapsed", "conjugate"]
SCHEMES: tuple[str, ...] = ("collapsed", "conjugate")
Storage = Literal["full", "summary"]
STORAGES: tuple[str, ...] = ("full", "summary")
PROGRESS_EVERY = 100
"""Sweeps between progress-bar refreshes."""
UNPOOLED_BLOCK = 100
"""Draws per exact no-pooling draw with shared noise (bounds its temporaries)."""


class EngineDraws(NamedTuple):
    """What :func:`run_engine` returns.

    Attributes
    ----------
    posterior
        The kept draws, (chain, draw, covariate, ...): ``theta`` and, with pooling, ``mu``,
        ``tau`` and ``<level>_mean``; under a heavy-tailed group prior also
        ``<level>_local_scale``, λ of every group of every level used.
    stats
        Sampler statistics, (chain, draw): for the collapsed scheme ``scale_acceptance`` and
        ``log_likelihood`` (Σ log N(b; θ, s²) per draw; with shared noise Σ log N(b; θ, Σ));
        empty otherwise.
    log_likelihood
        The marginal pointwise log-likelihood if the collapsed scheme computed it while
        sampling (independent estimates only), else ``None``.
    theta_summary
        With ``storage="summary"``, θ's per-cell summaries
        (:func:`~bayeshier_pymc.gibbs.theta_summary.summarise`) and, with shared noise, the
        stores of θ's parents
        (:data:`~bayeshier_pymc.inference_data.THETA_PARENT_STORES`), from which θ is
        regenerated; ``posterior`` then has no ``theta``.
    """

    posterior: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    log_likelihood: np.ndarray | None
    theta_summary: dict[str, np.ndarray] | None = None


def run_engine(
    problem: ShrinkageProblem,
    *,
    draws: int,
    tune: int,
    chains: int,
    random_seed: int | None,
    progressbar: bool,
    scheme: Scheme,
    scale_steps: int,
    theta_dtype: Any,
    cores: int | None,
    storage: Storage = "full",
) -> EngineDraws:
    """Sample the shrinkage posterior of ``problem`` with the vectorised Gibbs engine.

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
        ``"collapsed"``: τ from its collapsed conditional, everything else exactly given τ
        (mixes τ well); ``"conjugate"``: the centred conjugate sweep of the research
        algorithm. See :mod:`bayeshier_pymc.gibbs.sweeps`.
    scale_steps
        Metropolis–Hastings steps per τ and sweep in the collapsed scheme.
    theta_dtype
        Storage type of θ and of the pointwise log-likelihood (see the module docstring).
    cores
        With 2 or more (``None``: the CPUs), θ is drawn in a background thread.
    storage
        ``"full"``: keep every θ draw and the marginal pointwise log-likelihood;
        ``"summary"``: keep θ's per-cell summaries only (the collapsed scheme on a pooled
        problem; see the module docstring).
    """
    check_settings(draws, tune, chains, scheme, theta_dtype)
    check_scheme(problem, scheme)
    if storage not in STORAGES:
        raise ValueError(f"unknown storage {storage!r}; use one of {STORAGES!r}.")
    if storage == "summary":
        check_summary_problem(problem)
        if scheme != "collapsed":
            raise ValueError("storage='summary' needs the collapsed scheme.")
    seed = np.random.SeedSequence(random_seed)
    if problem.tree is None:
        rng = np.random.default_rng(seed)
        return EngineDraws(_sample_no_pooling(problem, draws, chains, theta_dtype, rng), {}, None)
    settings = _Settings(draws, tune, scheme, scale_steps, theta_dtype, storage == "summary")
    return EngineDraws(
        *_run_chains(problem, problem.tree, chains, settings, seed, progressbar, cores)
    )


def check_settings(draws: int, tune: int, chains: int, scheme: str, theta_dtype: Any) -> None:
    """Raise a ValueError naming the first setting of a Gibbs run that is out of range."""
    if draws < 1 or tune < 0 or chains < 1:
        raise ValueError(
            f"need draws >= 1, tune >= 0 and chains >= 1; got draws={draws}, tune={tune}, "
            f"chains={chains}."
        )
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES!r}.")
    if np.dtype(theta_dtype) not in (np.float32, np.float64):
        raise ValueError(f"theta_dtype must be float32 or float64, got {np.dtype(theta_dtype)}.")


@dataclass(frozen=True)
class _Settings:
    draws: int
    tune: int
    scheme: str
    scale_steps: int
    theta_dtype: Any
    summary: bool


class _DrawStore:
    """Writes the kept draws of a block of chains into (chain, draw, covariate, ...) arrays."""

    def __init__(self, data: TreeData, levels: tuple[str, ...], arrays: dict[str, np.ndarray]):
        self.data = data
        self.levels = levels
        self.arrays = arrays
        self.chains = arrays["mu"].shape[0]
        self.n_covariates = data.n_rows // self.chains
        self.theta_parents: ThetaParents | None = None
        if data.correlated:
            lead = arrays["mu"].shape
            self.theta_parents = ThetaParents(
                store_array((*lead, data.n_units[1])), store_array((*lead, data.n_units[1]))
            )

    @staticmethod
    def allocate(
        levels: tuple[str, ...],
        n_units: tuple[int, ...],
        lead: tuple[int, ...],
        theta_dtype: Any | None,
        heavy_tailed: bool = False,
    ) -> dict[str, np.ndarray]:
        """Stores for the posterior variables; ``lead`` is (chain, draw, covariate).

        θ gets none when ``theta_dtype`` is None (the collapsed scheme's θ writer keeps its
        own); the local scales of the group effects get stores when ``heavy_tailed``. See
        :func:`~bayeshier_pymc._memory.store_array` for why they are not ``numpy.empty``.
        """
        arrays: dict[str, np.ndarray] = {
            "mu": store_array(lead),
            "tau": store_array((*lead, len(levels) + 1)),
        }
        if theta_dtype is not None:
            arrays["theta"] = store_array((*lead, n_units[0]), theta_dtype)
        for level, n in zip(levels, n_units[1 : len(levels) + 1], strict=True):
            arrays[group_mean_name(level)] = store_array((*lead, n))
            if heavy_tailed:
                arrays[local_scale_name(level)] = store_array((*lead, n))
        return arrays

    def _by_chain(self, rows: np.ndarray) -> np.ndarray:
        return rows.reshape(self.chains, self.n_covariates, *rows.shape[1:])

    def record(self, draw: int, state: TreeState, rng: np.random.Generator) -> None:
        """Store ``state`` as draw number ``draw`` of every chain (θ too if it has θ's store).

        With shared noise the state's group units are totals: they are split into effects
        with ``rng`` (:func:`~bayeshier_pymc.gibbs.sweeps.split_effects`; the sweep's own
        split under local scales, ``state.split``), and the totals of θ's parents and the
        noise on their paths go to :attr:`theta_parents`. Local scales are stored as λ.
        """
        if "theta" in self.arrays:
            self.arrays["theta"][:, draw] = self._by_chain(self.data.from_sorted(state.units[0]))
        units = state.units[1:]
        if self.theta_parents is not None:
            split = state.split if state.split is not None else split_effects(self.data, state, rng)
            units, parent_noise = split
            for store, values in zip(
                self.theta_parents, (state.units[1], parent_noise), strict=True
            ):
                # θ's parents: the first level's groups, or θ0 on a tree without levels
                parents = self.data.from_sorted(values, 1) if self.data.depth else values
                store[:, draw] = self._by_chain(parents)
        self.arrays["mu"][:, draw] = self._by_chain(units[-1][:, 0])
        self.arrays["tau"][:, draw] = self._by_chain(state.tau)
        for index, level in enumerate(self.levels, start=1):
            means = self.data.from_sorted(units[index - 1], index)
            self.arrays[group_mean_name(level)][:, draw] = self._by_chain(means)
            if state.local is not None:
                scales = self.data.from_sorted(np.sqrt(state.local.unit(index)), index)
                self.arrays[local_scale_name(level)][:, draw] = self._by_chain(scales)

    def per_chain(self, rows: np.ndarray) -> np.ndarray:
        """Average a per-row statistic over the covariates of each chain."""
        return self._by_chain(rows).mean(axis=1)


def _run_chains(
    problem: ShrinkageProblem,
    hierarchy: Hierarchy,
    chains: int,
    settings: _Settings,
    seed: np.random.SeedSequence,
    progressbar: bool,
    cores: int | None,
) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None, dict[str, np.ndarray] | None
]:
    """Sweep all chains at once.

    Returns the posterior arrays, the sampler statistics, the marginal pointwise
    log-likelihood if it was computed while sampling (by the collapsed scheme, which also
    puts the per-draw conditional total in the statistics) and, in summary mode, θ's
    summaries (replayed after the sweeps, instead of the θ writer).
    """
    data = TreeData.from_problem(problem, chains)
    lead = (chains, settings.draws, problem.b.shape[0])
    collapsed = settings.scheme == "collapsed"
    theta_store = None if collapsed else settings.theta_dtype
    store = _DrawStore(
        data,
        hierarchy.levels,
        _DrawStore.allocate(
            hierarchy.levels, data.n_units, lead, theta_store, problem.priors.heavy_tailed
        ),
    )
    acceptance = np.full((chains, settings.draws), np.nan)
    sweep_seed, noise_seed = seed.spawn(2)
    rng = np.random.default_rng(sweep_seed)
    state = initial_state(data, rng, problem.priors)
    kernel = ScaleKernel.for_tuning(settings.tune, settings.scale_steps)
    log_likelihood = None
    writer = None
    total = settings.tune + settings.draws
    bar = tqdm(
        total=total,
        disable=not progressbar,
        desc=f"Gibbs ({settings.scheme}), {chains} chains",
        unit="sweep",
    )
    stats: dict[str, np.ndarray] = {}
    theta_summary = None
    try:
        if collapsed and not settings.summary:
            writer = ThetaWriter(
                problem,
                noise_seed,
                store.arrays,
                settings.theta_dtype,
                background=(cores or os.cpu_count() or 1) >= 2,
                parents=store.theta_parents,
            )
        for sweep in range(total):
            keep = sweep >= settings.tune
            if sweep == settings.tune:
                kernel.stop_tuning()
            if collapsed:
                accepted = collapsed_sweep(
                    data, state, kernel, rng, draw_units_from=1 if keep else None
                )
            else:
                conjugate_sweep(data, state, rng)
            if keep:
                draw = sweep - settings.tune
                store.record(draw, state, rng)
                if writer is not None:
                    writer.recorded(draw)
                if collapsed:
                    acceptance[:, draw] = store.per_chain(accepted)
            if (sweep + 1) % PROGRESS_EVERY == 0 or sweep + 1 == total:
                bar.update(sweep + 1 - bar.n)
        if writer is not None:
            written = writer.finish()
            store.arrays["theta"] = written.theta
            log_likelihood = written.log_likelihood
            stats = {"scale_acceptance": acceptance, "log_likelihood": written.conditional_total}
        if settings.summary:
            stream = ThetaStream(
                problem, noise_seed, store.arrays, settings.theta_dtype, store.theta_parents
            )
            theta_summary, totals = summarise(stream)
            if store.theta_parents is not None:  # kept: θ is regenerated from them
                theta_summary.update(zip(THETA_PARENT_STORES, store.theta_parents, strict=True))
            stats = {"scale_acceptance": acceptance, "log_likelihood": totals}
    finally:
        if writer is not None:
            writer.close(abandon=True)
        bar.close()
    return store.arrays, stats, log_likelihood, theta_summary


def _sample_no_pooling(
    problem: ShrinkageProblem,
    draws: int,
    chains: int,
    theta_dtype: Any,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Exact draws of θ without pooling.

    Independent estimates: θ_j | b_j ~ N(mu0, s0²) prior × N(b_j; θ_j, s_j²); with shared
    noise, :func:`~bayeshier_pymc.gibbs.sweeps.draw_unpooled` (``UNPOOLED_BLOCK`` draws at a
    time).
    """
    if problem.correlated:
        theta = store_array((chains, draws, *problem.b.shape), theta_dtype)
        for chain in range(chains):
            for start in range(0, draws, UNPOOLED_BLOCK):
                stop = min(start + UNPOOLED_BLOCK, draws)
                theta[chain, start:stop] = draw_unpooled(problem, stop - start, rng)
        return {"theta": theta}
    b, var_b = problem.algebra_b, problem.var_b
    priors = problem.priors
    mean, var = posterior_normal(priors.mu0[:, None], priors.s0[:, None] ** 2, b, var_b)
    noise = rng.standard_normal((chains, draws, *b.shape), dtype=np.float32)
    theta = (mean + np.sqrt(var) * noise).astype(theta_dtype, copy=False)
    return {"theta": theta}
