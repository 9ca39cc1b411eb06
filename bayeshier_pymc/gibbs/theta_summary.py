"""The summary storage mode: θ summarised while it is drawn, regenerated in part on demand.

Design. At 10^5 features the θ draws and their pointwise log-likelihood do not fit in memory
(16 GB each at m = 100,000, p = 10, 4 × 1000 draws in float32), but θ is exact given the
recorded τ and its parents: draw (c, d) is θ = w b + (1 − w) p + √(w s²) z with z the
standard normals of the θ writer's own generator (SFC64 seeded by the second child of
``random_seed``'s seed sequence), drawn chain by chain, draw by draw, a (covariate × feature)
block each (:mod:`~bayeshier_pymc.gibbs.theta_writer`). With correlated estimates
(tree-structured noise) p is the total of θ's parent in the noise tree and θ is its draw less
the noise on the parent's path: the engine records both, (chain, draw, covariate, parent),
O(groups) a draw (:class:`~bayeshier_pymc.gibbs.theta_writer.ThetaParents`), and the fit keeps
them. :class:`ThetaStream` replays that stream a block of draws at a time into a buffer with
the writer's own kernel, so each θ draw is bitwise the stored mode's; a thread draws the next
blocks' noise meanwhile (the stream is one sequence: its noise cannot be split over threads).
One replay after the sweeps accumulates per (covariate, feature) the sum and sum of squares of
θ − b and the numbers of positive and negative draws (:func:`summarise`, O(p·m) memory); a
later replay keeps the draws of any subset of features (:func:`regenerate`), computing θ of
those only. The pointwise log-likelihood ``b_marginal`` needs no θ at all (τ and the parents'
means; with correlated estimates τ alone), so LOO computes it a chunk of features at a time
(:mod:`bayeshier_pymc.streamed`).

Only pooled problems, sampled by the collapsed Gibbs engine, have this form.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc.gibbs.theta_writer import ThetaKernel, ThetaParents
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "SUMMARY_COUNTS",
    "ThetaStream",
    "check_summary_problem",
    "noise_seed",
    "regenerate",
    "summarise",
]

SUMMARY_COUNTS = ("n_positive", "n_negative")
"""The per-cell counts of draws with θ > 0 and θ < 0 that :func:`summarise` returns."""
NOISE_BUFFERS = 3
"""Blocks of θ's noise a replay holds at once: drawn ahead, being turned into θ, or visited."""
BLOCK_VALUES = 1 << 23
"""Values (draws × covariates × features) per block of a replay, up to :data:`MAX_BLOCK_DRAWS`
draws (32 MiB in float32): one exchange between the threads per block."""
MAX_BLOCK_DRAWS = 16
"""Most draws per block of a replay."""


def noise_seed(random_seed: int) -> np.random.SeedSequence:
    """The seed of θ's noise generator for a Gibbs run seeded with ``random_seed``.

    The engine spawns two children from ``SeedSequence(random_seed)``: the sweeps' and θ's.
    """
    return np.random.SeedSequence(random_seed).spawn(2)[1]


def check_summary_problem(problem: ShrinkageProblem) -> None:
    """Raise a ValueError unless θ of ``problem`` can be summarised and regenerated."""
    if not problem.pooled:
        raise ValueError(
            "storage='summary' needs pooling (a hierarchy): without it θ is drawn directly; "
            "use storage='full'."
        )


class ThetaStream:
    """Replays the collapsed engine's θ draws one at a time, in the writer's order.

    Parameters
    ----------
    problem
        The pooled problem sampled.
    seed
        Seed of θ's noise generator (:func:`noise_seed`).
    posterior
        The recorded draws, (chain, draw, covariate, ...): ``tau``, ``mu`` and the means of
        the first annotation level.
    dtype
        θ's storage type in the run (the noise is drawn in it, as the writer does).
    parents
        With correlated estimates (``problem.correlated``), the recorded totals of θ's
        parents and the noise on their paths; ``None`` otherwise.
    features
        Positions of the features whose θ the replay computes (default: all). The noise of
        every feature is drawn all the same (the stream's order fixes each draw's noise),
        but θ only of these.
    """

    def __init__(
        self,
        problem: ShrinkageProblem,
        seed: np.random.SeedSequence,
        posterior: dict[str, np.ndarray],
        dtype: Any,
        parents: ThetaParents | None = None,
        features: np.ndarray | None = None,
    ):
        check_summary_problem(problem)
        self._seed = seed
        # the recorded draws, contiguous for the kernel (a loaded fit's may not be)
        recorded = {name: np.ascontiguousarray(values) for name, values in posterior.items()}
        self._kernel = ThetaKernel(problem, recorded, parents, features)
        self._features = None if features is None else np.asarray(features, dtype=np.intp)
        self._noise_shape = problem.b.shape
        self.b, self.shape = self._kernel.b, self._kernel.shape
        self.dtype = np.dtype(dtype)

    def replay(self, visit: Callable[[int, slice, np.ndarray], None]) -> np.ndarray | None:
        """Call ``visit(chain, draws, theta)`` for every block of draws, chain by chain.

        ``theta`` (draw, covariate, feature) holds the θ draws ``draws`` of ``chain``, a few
        at a time (:data:`BLOCK_VALUES`), in a buffer reused for a later block. Returns the
        per-draw conditional totals over the observed cells (chain, draw), as the writer's:
        Σ log N(b; θ, s²), or with correlated estimates Σ over covariates of log N(b; θ, Σ);
        ``None`` when the stream computes θ of some features only. The noise is drawn ahead
        in a thread of its own (:class:`_NoiseAhead`) while this one turns it into θ.
        """
        n_chains, n_draws = self.shape[:2]
        per_block = min(MAX_BLOCK_DRAWS, max(1, BLOCK_VALUES // int(np.prod(self._noise_shape))))
        blocks = [
            (chain, slice(start, min(start + per_block, n_draws)))
            for chain in range(n_chains)
            for start in range(0, n_draws, per_block)
        ]
        # θ of the features streamed, taken from the noise; with all of them, the noise itself
        selected = (
            None
            if self._features is None
            else np.empty((per_block, *self.shape[2:]), dtype=self.dtype)
        )
        scratch = np.empty((1, 1, *self.shape[2:]), dtype=self.dtype)
        totals = np.empty((n_chains, n_draws))
        sizes = [draws.stop - draws.start for _, draws in blocks]
        with _NoiseAhead(self._seed, (per_block, *self._noise_shape), self.dtype, sizes) as noise:
            for chain, draws in blocks:
                drawn = noise.next()
                size = draws.stop - draws.start
                if selected is None:
                    theta = drawn  # turned into θ in place
                else:
                    theta = np.take(drawn[:size], self._features, axis=-1, out=selected[:size])
                for offset in range(size):
                    self._kernel.write(
                        theta[offset][None, None], scratch, totals, draws.start + offset, chain
                    )
                visit(chain, draws, theta[:size])
                noise.release(drawn)
        return self._kernel.observed_totals(totals) if self._kernel.complete else None


class _NoiseAhead:
    """θ's noise stream, a block of draws a buffer, drawn by a thread ahead of its consumer.

    The generator is SFC64 seeded with ``seed``, the draws filled in ``dtype`` one after the
    other, as the θ writer draws them: the same numbers as drawing in the consumer's thread,
    which meanwhile works on earlier draws (NumPy's generator releases the GIL).
    :data:`NOISE_BUFFERS` buffers of ``shape`` (draw, ...) circulate, block ``i`` filling the
    first ``sizes[i]`` draws of one: :meth:`next` hands the next block's buffer, which the
    consumer gives back with :meth:`release` once done with it. Use it as a context manager:
    leaving it stops the thread.
    """

    def __init__(
        self, seed: np.random.SeedSequence, shape: tuple[int, ...], dtype: Any, sizes: list[int]
    ):
        self._rng = np.random.Generator(np.random.SFC64(seed))
        self._sizes = sizes
        self._free: queue.SimpleQueue[np.ndarray | None] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[np.ndarray | BaseException] = queue.SimpleQueue()
        for _ in range(NOISE_BUFFERS):
            self._free.put(np.empty(shape, dtype=dtype))
        self._thread = threading.Thread(target=self._fill, daemon=True)

    def __enter__(self) -> _NoiseAhead:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._free.put(None)  # wakes the thread if it waits for a buffer; it stops there
        self._thread.join()

    def next(self) -> np.ndarray:
        """The next block's noise (raises what the drawing thread raised)."""
        item = self._filled.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, buffer: np.ndarray) -> None:
        """Give back a buffer of :meth:`next`, free for a later block."""
        self._free.put(buffer)

    def _fill(self) -> None:
        try:
            for size in self._sizes:
                buffer = self._free.get()
                if buffer is None:
                    return
                self._rng.standard_normal(out=buffer[:size], dtype=buffer.dtype)
                self._filled.put(buffer)
        except BaseException as error:  # handed to the consumer, which raises it
            self._filled.put(error)


def summarise(stream: ThetaStream) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-cell summaries of every θ draw, and the per-draw conditional totals.

    Returns ``mean`` and ``sd`` (ddof 1) from sums of θ − b and its square in float64, and
    the counts :data:`SUMMARY_COUNTS`, each (covariate, feature).
    """
    shape = stream.shape[2:]
    sums, squares = np.zeros(shape), np.zeros(shape)
    positive, negative = np.zeros(shape, np.int64), np.zeros(shape, np.int64)

    def accumulate(chain: int, draws: slice, theta: np.ndarray) -> None:
        _accumulate(theta, stream.b, sums, squares, positive, negative)

    totals = stream.replay(accumulate)
    if totals is None:
        raise ValueError("summarise needs the stream of every feature.")
    n = stream.shape[0] * stream.shape[1]
    mean = sums / n
    variance = np.maximum(squares - n * mean * mean, 0.0) / max(n - 1, 1)
    summary = {
        "mean": stream.b + mean,
        "sd": np.sqrt(variance),
        "n_positive": positive,
        "n_negative": negative,
    }
    return summary, totals


def regenerate(stream: ThetaStream) -> np.ndarray:
    """The θ draws of the stream's features, (chain, draw, covariate, feature).

    One replay of the whole stream: the noise of every feature is drawn, θ of the stream's
    features only (:class:`ThetaStream`).
    """
    out = np.empty((*stream.shape[:3], stream.shape[3]), dtype=stream.dtype)

    def keep(chain: int, draws: slice, theta: np.ndarray) -> None:
        out[chain, draws] = theta

    stream.replay(keep)
    return out


@compiled_kernel
def _accumulate(
    theta: np.ndarray,
    shift: np.ndarray,
    sums: np.ndarray,
    squares: np.ndarray,
    positive: np.ndarray,
    negative: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Add draws (draw, covariate, feature): Σ (θ − shift), Σ (θ − shift)², #(θ > 0), #(θ < 0).

    Each cell's sums run over the draws in order (the numbers of adding one draw at a time).
    The counts add comparisons rather than branch on them, which lets the loop vectorise
    (a third of the time of the branching loop).
    """
    n_draws, n_covariates, n_features = theta.shape
    for d in range(n_draws):
        for k in range(n_covariates):
            for j in range(n_features):
                value = theta[d, k, j]
                x = value - shift[k, j]
                sums[k, j] += x
                squares[k, j] += x * x
                positive[k, j] += value > 0
                negative[k, j] += value < 0
