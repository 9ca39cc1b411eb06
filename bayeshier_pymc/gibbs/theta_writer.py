"""The kept θ draws of the collapsed engine and their log-likelihoods, written off the sweep.

In the collapsed sweep nothing conditions on θ: given a sweep's τ_w and the means of θ's
parent groups, θ_j | b, τ ~ N(p + w (b_j - p), w s_j²) with w = τ_w² / (τ_w² + s_j²),
independently over j. The engine therefore sweeps only τ and the group means, records them,
and :class:`ThetaWriter` turns each recorded draw into θ, reading the parents and τ_w from the
posterior stores. In the same pass it writes the pointwise marginal log-likelihood
log N(b_j; p, s_j² + τ_w²) and sums the conditional one, Σ log N(b_j; θ_j, s_j²), per draw.

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
from typing import TYPE_CHECKING, Any

import numpy as np

from bayeshier_pymc._memory import store_array
from bayeshier_pymc._numba import vector_kernel
from bayeshier_pymc.log_likelihood import conditional_constant, log_normal, theta_parents

if TYPE_CHECKING:
    from bayeshier_pymc.shrinkage import ShrinkageModel

__all__ = ["ThetaWriter", "WrittenDraws"]

_STOP = -1
"""Queue item that ends the background thread early."""


@dataclass(frozen=True)
class WrittenDraws:
    """What :meth:`ThetaWriter.finish` returns.

    Attributes
    ----------
    theta
        The θ draws, (chain, draw, covariate, feature).
    log_likelihood
        The marginal pointwise log-likelihood, log N(b; parent mean, s² + τ_w²), same shape.
    conditional_total
        Σ over covariates and features of log N(b; θ, s²), (chain, draw).
    """

    theta: np.ndarray
    log_likelihood: np.ndarray
    conditional_total: np.ndarray


class ThetaWriter:
    """Writes θ and its log-likelihoods from the recorded τ and group means.

    Parameters
    ----------
    model
        The model sampled (a pooled one).
    seed
        Seed of the noise generator.
    posterior
        The engine's stores, (chain, draw, covariate, ...): ``tau`` and the means of θ's
        parents (``mu`` at depth 0), read once a draw is recorded.
    dtype
        Storage type of θ and of the log-likelihood.
    background
        Work in a thread of its own.

    Notes
    -----
    Call :meth:`recorded` once the stores hold draw ``d`` (in order), then :meth:`finish`;
    :meth:`close` stops the thread (call it in a ``finally``).
    """

    def __init__(
        self,
        model: ShrinkageModel,
        seed: np.random.SeedSequence,
        posterior: dict[str, np.ndarray],
        dtype: Any,
        background: bool,
    ):
        tree = model.tree
        if tree is None:
            raise ValueError("θ is written from its parents, which a model without pooling lacks.")
        self._rng = np.random.Generator(np.random.SFC64(seed))
        self._b = np.ascontiguousarray(model.estimates.estimate.to_numpy(), dtype=float)
        self._var_b = np.ascontiguousarray(model.estimates.se.to_numpy(), dtype=float) ** 2
        self._inverse_var_b = 1.0 / self._var_b
        self._tau = posterior["tau"]
        self._shape = (*self._tau.shape[:3], self._b.shape[1])
        self._dtype = dtype
        self._parent_mean, self._parent_index = theta_parents(
            posterior,
            tree.levels[0] if tree.depth else None,
            tree.parents[0] if tree.depth else None,
            self._shape[-1],
        )
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
        return WrittenDraws(
            self._theta, self._log_likelihood, self._totals + conditional_constant(self._var_b)
        )

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
        """Allocate the stores and draw θ's noise into the θ store, one draw at a time.

        Filling the draws one after another gives the same noise as one call per chain; it
        lets :meth:`close` stop the thread between two of them.
        """
        self._theta = store_array(self._shape, self._dtype, commit=True)
        if self._stopping.is_set():
            return
        self._log_likelihood = store_array(self._shape, self._dtype, commit=True)
        for draw_theta in self._theta.reshape(-1, *self._shape[2:]):
            if self._stopping.is_set():
                return
            self._rng.standard_normal(out=draw_theta, dtype=draw_theta.dtype)
        self._ready = True

    def _write(self, draw: int) -> None:
        _theta_kernel(
            self._b,
            self._var_b,
            self._inverse_var_b,
            self._parent_mean,
            self._parent_index,
            self._tau,
            draw,
            self._theta,
            self._log_likelihood,
            self._totals,
        )


@vector_kernel
def _theta_kernel(
    b: np.ndarray,
    var_b: np.ndarray,
    inverse_var_b: np.ndarray,
    parent_mean: np.ndarray,
    parent_index: np.ndarray,
    tau: np.ndarray,
    draw: int,
    theta: np.ndarray,
    log_likelihood: np.ndarray,
    totals: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Draw number ``draw`` of every chain: θ from the noise in ``theta``, in place.

    Arrays are whole stores, (chain, draw, covariate, ...), so that each row is contiguous
    and the inner loop vectorises. ``totals[chain, draw]`` gets -½ Σ (b - θ)² / s², the
    conditional log-likelihood without its constant, from θ as stored.
    """
    n_chains, _, n_covariates, n_features = theta.shape
    parent = np.empty(n_features)
    for c in range(n_chains):
        total = 0.0
        for k in range(n_covariates):
            means = parent_mean[c, draw, k]
            for j in range(n_features):
                parent[j] = means[parent_index[j]]
            tau_sq = tau[c, draw, k, 0] * tau[c, draw, k, 0]
            row = theta[c, draw, k]
            row_log_likelihood = log_likelihood[c, draw, k]
            for j in range(n_features):
                weight = tau_sq / (var_b[k, j] + tau_sq)
                shrunk = parent[j] + weight * (b[k, j] - parent[j])
                row[j] = shrunk + np.sqrt(weight * var_b[k, j]) * row[j]
            for j in range(n_features):
                residual = b[k, j] - row[j]
                total += residual * residual * inverse_var_b[k, j]
            for j in range(n_features):
                row_log_likelihood[j] = log_normal(b[k, j] - parent[j], var_b[k, j] + tau_sq)
        totals[c, draw] = -0.5 * total
