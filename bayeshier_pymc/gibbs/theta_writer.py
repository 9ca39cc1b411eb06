"""The kept θ draws of the collapsed engine and their log-likelihoods, written off the sweep.

In the collapsed sweep nothing conditions on θ: given a sweep's τ_w and the means of θ's
parent groups, θ_j | b, τ ~ N(w b_j + (1 - w) p, w s_j²) with w = τ_w² / (τ_w² + s_j²),
independently over j (the lowest level of the tree's downward draw,
:func:`~bayeshier_pymc.gaussian_tree.kernels.write_theta_draw`). The engine therefore sweeps
only τ and the group means, records them, and :class:`ThetaWriter` turns each recorded draw
into θ, reading the parents and τ_w from the posterior stores. In the same pass it writes the
pointwise marginal log-likelihood log N(b_j; p, s_j² + τ_w²) and sums the conditional one,
Σ log N(b_j; θ_j, s_j²), per draw.

With correlated estimates (tree-structured noise) the engine records instead the totals of
θ's parents in the noise tree and the noise on their paths (:class:`ThetaParents`): θ_j's
total is drawn given its parent's and θ_j is that total less the parent's path noise
(:func:`~bayeshier_pymc.gaussian_tree.kernels.write_correlated_theta_draw`). The pointwise
marginal log N(b_j; p, s_j² + τ_w²) is then not the model's likelihood and is not written
(the default pointwise log-likelihood is computed afterwards); the per-draw total is
log N(b; θ, Σ) with the tree-structured Σ.

The writer allocates the θ and log-likelihood stores, committing their memory at once
(:func:`~bayeshier_pymc._memory.store_array`), and draws the noise first, in one call per
chain, from its own generator (SFC64, NumPy's fastest) straight into the θ store; each draw's
kernel then turns its noise into θ in place. With ``background=True`` a thread does all of
this: it allocates and draws the noise while the main thread tunes, then follows the main
thread's kept draws. Once the main thread has swept them all, it writes the draws the thread
has not reached yet alongside it (:meth:`ThetaWriter.finish`); each draw is claimed once, in
order. NumPy's generator and the compiled kernel release the
GIL. The draws are the same with or without the thread, whichever thread writes a draw.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from bayeshier_pymc._memory import store_array
from bayeshier_pymc.gaussian_tree.kernels import (
    NoisePrecision,
    ThetaData,
    ThetaStores,
    TotalStores,
    noise_precision,
    write_correlated_theta_draw,
    write_theta_draw,
)
from bayeshier_pymc.log_likelihood import conditional_constant, theta_parents
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = ["ThetaKernel", "ThetaParents", "ThetaWriter", "WrittenDraws"]

_STOP = -1
"""Queue item that ends the background thread early."""
NOISE_BLOCK = 1 << 20
"""Normal draws per call of the noise generator (about 4 ms): the longest wait of ``close``."""


class ThetaParents(NamedTuple):
    """The stores, (chain, draw, covariate, parent), of θ's parents under shared noise.

    ``total``: the totals of θ's parents in the noise tree (its first level's groups, or θ0
    as one group); ``noise``: the noise on their paths.
    """

    total: np.ndarray
    noise: np.ndarray


class ThetaKernel:
    """θ's data, its parents' stores and the compiled kernel that turns noise into θ.

    The one construction of what the kernel reads
    (:func:`~bayeshier_pymc.gaussian_tree.kernels.write_theta_draw` for independent
    estimates, :func:`~bayeshier_pymc.gaussian_tree.kernels.write_correlated_theta_draw`
    with shared noise), for the writer during sampling and for the replay of a fit in
    summary storage (:class:`~bayeshier_pymc.gibbs.theta_summary.ThetaStream`). The stores
    of ``posterior`` and ``parents`` are kept as they are, not copied: the writer reads them
    while the engine fills them.

    Parameters
    ----------
    problem
        The problem sampled (a pooled one).
    posterior
        The draws, (chain, draw, covariate, ...): ``tau`` and the means of θ's parents
        (``mu`` at depth 0).
    parents
        With shared noise (``problem.correlated``), the stores of θ's parents; ``None``
        otherwise.
    features
        Positions of the features whose θ it writes (default: all). θ of each is the same,
        bitwise, whichever others are written; with a subset the conditional totals, which
        need every feature, are not computed (:attr:`complete` is False).
    """

    def __init__(
        self,
        problem: ShrinkageProblem,
        posterior: dict[str, np.ndarray],
        parents: ThetaParents | None,
        features: np.ndarray | None = None,
    ):
        tree = problem.tree
        if tree is None:
            raise ValueError("θ is written from its parents, which a model without pooling lacks.")
        if (parents is None) == problem.correlated:
            raise ValueError("the stores of θ's parents go with shared noise, and only with it.")
        self.complete = features is None
        kept = slice(None) if features is None else np.asarray(features, dtype=np.intp)
        self.b = np.ascontiguousarray(problem.algebra_b[:, kept], dtype=float)
        self.var_b = np.ascontiguousarray(problem.var_b[:, kept], dtype=float)
        self.missing = problem.missing[:, kept]
        self.tau = posterior["tau"]
        self.shape = (*self.tau.shape[:3], self.b.shape[1])
        self.parents = parents
        self.precision: NoisePrecision | None = None
        if parents is None:
            self.parent_mean, parent_index = theta_parents(
                posterior,
                tree.levels[0] if tree.depth else None,
                tree.parents[0] if tree.depth else None,
                problem.b.shape[1],
            )
        else:
            parent_index = problem.index.parent_of(0)
            assert problem.noise is not None  # for the type checker: correlated
            if self.complete:
                self.precision = noise_precision(self.var_b, problem.index, problem.noise)
        parent_index = np.ascontiguousarray(parent_index[kept], dtype=np.intp)
        self.data = ThetaData(self.b, self.var_b, 1.0 / self.var_b, parent_index)

    def write(
        self,
        theta: np.ndarray,
        log_likelihood: np.ndarray,
        totals: np.ndarray,
        draw: int,
        chain: int | None = None,
    ) -> None:
        """Turn θ's noise in ``theta`` into draw ``draw`` of every chain, or of ``chain``.

        ``totals`` (chain, draw) receives each draw's conditional total (unless the kernel
        writes a subset of the features: then its content is of no use). Without ``chain``,
        ``theta`` and ``log_likelihood`` are the (chain, draw, covariate, feature) stores;
        with it, they hold that one (chain, draw) (leading dims of size 1). With shared noise
        the kernel writes no pointwise log-likelihood and ``log_likelihood`` is not used.
        """
        lead: tuple[slice, ...] = ()
        index = draw
        if chain is not None:
            lead, index = (slice(chain, chain + 1), slice(draw, draw + 1)), 0
        if self.parents is not None:
            stores = TotalStores(
                self.parents.total[lead],
                self.parents.noise[lead],
                self.tau[lead],
                theta,
                totals[lead],
            )
            write_correlated_theta_draw(self.data, self.precision, stores, index)
            return
        write_theta_draw(
            self.data,
            ThetaStores(
                self.parent_mean[lead], self.tau[lead], theta, log_likelihood, totals[lead]
            ),
            index,
        )

    def observed_totals(self, totals: np.ndarray) -> np.ndarray:
        """The conditional totals over the observed cells: a missing cell is no data point.

        The kernels sum every cell, a missing one with its stand-in variance; its constant
        is taken out (the kernels' totals leave the constant of the observed cells out with
        independent estimates, and include it with shared noise).
        """
        if self.parents is not None:
            return totals - conditional_constant(self.var_b[self.missing])
        return totals + conditional_constant(self.var_b[~self.missing])


@dataclass(frozen=True)
class WrittenDraws:
    """What :meth:`ThetaWriter.finish` returns.

    Attributes
    ----------
    theta
        The θ draws, (chain, draw, covariate, feature).
    log_likelihood
        The marginal pointwise log-likelihood, log N(b; parent mean, s² + τ_w²), same shape;
        ``None`` with shared noise.
    conditional_total
        Σ over covariates and features of log N(b; θ, s²), (chain, draw); with shared noise
        Σ over covariates of log N(b; θ, Σ).
    """

    theta: np.ndarray
    log_likelihood: np.ndarray | None
    conditional_total: np.ndarray


class ThetaWriter:
    """Writes θ and its log-likelihoods from the recorded τ and group means.

    Parameters
    ----------
    problem
        The problem sampled (a pooled one).
    seed
        Seed of the noise generator.
    posterior
        The engine's stores, (chain, draw, covariate, ...): ``tau`` and the means of θ's
        parents (``mu`` at depth 0), read once a draw is recorded.
    dtype
        Storage type of θ and of the log-likelihood.
    background
        Work in a thread of its own.
    parents
        With shared noise (``problem.correlated``), the engine's stores of θ's parents.

    Notes
    -----
    Call :meth:`recorded` once the stores hold draw ``d`` (in order), then :meth:`finish`;
    :meth:`close` stops the thread (call it in a ``finally``).
    """

    def __init__(
        self,
        problem: ShrinkageProblem,
        seed: np.random.SeedSequence,
        posterior: dict[str, np.ndarray],
        dtype: Any,
        background: bool,
        parents: ThetaParents | None = None,
    ):
        self._kernel = ThetaKernel(problem, posterior, parents)
        self._rng = np.random.Generator(np.random.SFC64(seed))
        self._shape = self._kernel.shape
        self._dtype = dtype
        self._theta = self._log_likelihood = np.empty(0, dtype=dtype)  # allocated by _prepare
        self._totals = np.empty(self._shape[:2])
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._claims = itertools.count()
        self._prepared = threading.Event()
        self._stopping = threading.Event()
        self._ready = False
        self._pool = ThreadPoolExecutor(max_workers=1) if background else None
        self._done: Future[None] | None = None
        if self._pool is None:
            self._prepare()
        else:
            self._done = self._pool.submit(self._follow)

    def recorded(self, draw: int) -> None:
        """Draw number ``draw`` of every chain is in the stores: write its θ."""
        if self._pool is None:
            self._write(draw)
        else:
            self._queue.put(draw)

    def finish(self) -> WrittenDraws:
        """Write the draws left, alongside the thread, and return all that was written.

        Call it once every draw is recorded.
        """
        if self._done is not None:
            self._prepared.wait()
            while self._ready and self._write_next():
                pass
            self._done.result()
        totals = self._kernel.observed_totals(self._totals)
        if self._kernel.parents is not None:
            return WrittenDraws(self._theta, None, totals)
        return WrittenDraws(self._theta, self._log_likelihood, totals)

    def close(self, *, abandon: bool = False) -> None:
        """Stop the thread (after :meth:`finish`, or early after an error in the sweeps).

        Parameters
        ----------
        abandon
            Stop after the draw, or the draw's noise, under way, leaving the draws still
            queued unwritten: what the engine does, whose stores are of no use once it stops
            early (on an error or Ctrl-C). Without it the thread first writes every draw
            recorded.
        """
        if self._pool is not None:
            if abandon:
                self._stopping.set()
            self._queue.put(_STOP)
            self._pool.shutdown(wait=True)

    def _follow(self) -> None:
        try:
            self._prepare()
        finally:
            self._prepared.set()  # on failure too: finish() then skips to the error
        for _ in range(self._shape[1]):  # one claim per recorded draw, at most
            if self._queue.get() == _STOP or self._stopping.is_set() or not self._write_next():
                return

    def _write_next(self) -> bool:
        """Write the first draw no thread has claimed; False when none is left.

        The thread claims one draw per recorded one, and :meth:`finish` claims only once all
        are recorded, so a claimed draw is always in the stores.
        """
        draw = next(self._claims)
        if draw >= self._shape[1]:
            return False
        self._write(draw)
        return True

    def _prepare(self) -> None:
        """Allocate the stores and draw θ's noise into the θ store, a block of draws at a time.

        Filling the draws block after block gives the same noise as one call per chain; it
        lets :meth:`close` stop the thread between two blocks (a few milliseconds each). One
        call per draw instead cost 0.13 s of the 1.2 s engine job at the COPDGene shape.
        """
        self._theta = store_array(self._shape, self._dtype, commit=True)
        if self._stopping.is_set():
            return
        if self._kernel.parents is None:
            self._log_likelihood = store_array(self._shape, self._dtype, commit=True)
        draws = self._theta.reshape(-1, *self._shape[2:])
        per_block = max(1, NOISE_BLOCK // (draws.size // len(draws)))
        for start in range(0, len(draws), per_block):
            if self._stopping.is_set():
                return
            block = draws[start : start + per_block]
            self._rng.standard_normal(out=block, dtype=block.dtype)
        self._ready = True

    def _write(self, draw: int) -> None:
        self._kernel.write(self._theta, self._log_likelihood, self._totals, draw)
