"""Pareto-smoothed importance sampling (PSIS), compiled: ArviZ's numbers at scale.

ArviZ's ``az.psislw`` (and so ``az.loo``) loops over the observations in Python, one set of
NumPy calls each; at 10^6 (covariate, feature) cells of 4,000 draws that is minutes. Here the
same algorithm (Vehtari, Simpson, Gelman, Yao & Gabry 2024, "Pareto smoothed importance
sampling", as ArviZ 0.23 writes it) runs on blocks of observations: the elementwise
exponentials vectorised in NumPy over the whole block; the per-observation selection of the
tail, the fit (its profile, a log1p per grid point and tail draw, is most of the work) and
the smoothing in compiled loops; the blocks in one thread per CPU:

* the tail is the draws whose log weight exceeds the (T + 1)-th largest (or log of the
  smallest positive float, if larger), T = ⌈min(S / 5, 3 √(S / r_eff))⌉ for S draws;
* a generalised Pareto distribution is fitted to the tail's weights above the cutoff by
  Zhang & Stephens' (2009) empirical Bayes estimate (grid of 30 + ⌊√T⌋ values, prior 3 on the
  scale's quartile, k̂ shrunk by a weakly informative prior of 10 observations at 0.5);
* the tail's weights are replaced by the fitted distribution's quantiles at
  (i + ½) / T and truncated at the largest raw weight; with T ≤ 4 no fit is made
  (k̂ = ∞) and, if the fit fails (k̂ not finite), nothing is smoothed;
* the log weights are normalised to sum to one.

Differences from ArviZ, none of them in the estimates' definition:

* Everything is computed in float64. ArviZ keeps float32 input in float32 through the
  exponentials and sums (the GPD fit is float64 in both), so on float32 log-likelihoods the
  two agree to float32 rounding (about 1e-6 relative), on float64 ones to about 1e-12.
* Tied log weights in the tail are ordered by draw (a stable sort); ArviZ's quicksort leaves
  their order unspecified. It decides only which of the tied draws gets which smoothed
  weight; k̂ and the LOO sums do not depend on it.
* Log weights that are not finite (NaN or ±∞) are refused with a ValueError; ArviZ lets them
  through into NaN results. Fewer than 2 draws are refused too (ArviZ fails with an
  IndexError).
* The GPD fit's weights of the grid points are computed as exp(ℓ_i − logsumexp(ℓ)) instead of
  1 / Σ_j exp(ℓ_j − ℓ_i): the same numbers but O(grid) exponentials instead of O(grid²).

:func:`psislw` is ``az.psislw`` (normalised); :func:`psis_loo` gives, per observation, what
``az.loo`` needs (the LOO log predictive density, k̂ and the log pointwise predictive
density) without keeping any weight, from log-likelihood values stored draws first, as the
package stores them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc._threads import in_threads

__all__ = ["PsisLoo", "good_k", "psis_loo", "psislw"]

_CUTOFF_MIN = float(np.log(np.finfo(float).tiny))
"""Smallest cutoff of the tail: log of the smallest positive normal float64."""
_PRIOR_SCALE = 3.0
"""Zhang & Stephens' prior on the GPD's b: scaled by the tail's first quartile."""
_PRIOR_K = 10.0
"""Weight (in observations) of the prior that shrinks k̂ towards 0.5."""
_NEGLIGIBLE_WEIGHT = 10 * float(np.finfo(float).eps)
"""Grid points of the GPD fit with a smaller weight are dropped, as in ArviZ."""
_EPS = float(np.finfo(float).eps)
_MIN_TAIL = 5
"""Fewest tail draws for which the GPD is fitted (k̂ = ∞ below)."""
_BLOCK_VALUES = 1 << 18
"""Log weights per block of observations: the block's float64 arrays take 2 MiB each."""


class PsisLoo(NamedTuple):
    """Per observation: what ``az.loo`` sums.

    Attributes
    ----------
    loo_i
        The leave-one-out log predictive density, logsumexp of the normalised smoothed log
        weights plus the log-likelihood.
    pareto_k
        k̂ of the fitted generalised Pareto distribution (∞ when the tail is too short).
    lppd_i
        The log pointwise predictive density, log of the mean likelihood over the draws.
    """

    loo_i: np.ndarray
    pareto_k: np.ndarray
    lppd_i: np.ndarray


def _tail_length(n_samples: int, reff: float) -> int:
    """The number of draws in the tail: ⌈min(S / 5, 3 √(S / r_eff))⌉, as ArviZ's ``psislw``."""
    return int(np.ceil(min(n_samples / 5.0, 3 * (n_samples / reff) ** 0.5)))


def good_k(n_samples: int) -> float:
    """The k̂ above which ``az.loo`` warns: min(1 − 1 / log10(S), 0.7).

    Parameters
    ----------
    n_samples
        The number of draws S (over all chains).

    Returns
    -------
    float
        The threshold: observations whose k̂ exceeds it have unreliable PSIS estimates.
    """
    return min(1 - 1 / np.log10(n_samples), 0.7)


def psislw(log_weights: np.ndarray, reff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, truncated and normalised log weights, as ``az.psislw``.

    Parameters
    ----------
    log_weights
        Raw log weights (..., draws): the last axis holds the draws of each observation
        (for LOO, minus the log-likelihood). Any floating type, byte order and memory layout:
        each block of observations is copied into float64 in turn, never the whole array.
    reff
        Relative efficiency of the draws (ESS / S), which sets the tail's length.

    Returns
    -------
    log_weights : numpy.ndarray
        (..., draws) in float64, each observation's weights summing to one.
    pareto_k : numpy.ndarray
        (...) k̂ of each observation (∞ where the tail is too short to fit).
    """
    values = np.asarray(log_weights)
    _check_values(values, axis=-1, reff=reff)
    table = values if values.ndim > 1 else values[np.newaxis]  # views, never a copy
    lead, n_samples = table.shape[:-1], table.shape[-1]
    n_rows = int(np.prod(lead))
    tail = _tail_length(n_samples, reff)
    out = np.empty((n_rows, n_samples), dtype=np.float64)
    pareto_k = np.empty(n_rows, dtype=np.float64)

    def run(block: slice) -> None:
        # a copy of the block's rows only (fancy indexing), in float64 whatever the input's
        # type, byte order and layout
        rows = np.unravel_index(np.arange(block.start, block.stop), lead)
        x = np.asarray(table[rows], dtype=np.float64)
        _check_finite(x, "log weights")
        x -= x.max(axis=1, keepdims=True)
        smoothed = _smooth(x, tail)
        out[block] = x - smoothed.total[:, None]
        pareto_k[block] = smoothed.pareto_k

    in_threads(run, _blocks(n_rows, n_samples))
    return out.reshape(values.shape), pareto_k.reshape(values.shape[:-1])


def psis_loo(log_likelihood: np.ndarray, reff: float) -> PsisLoo:
    """PSIS-LOO of every observation, as ``az.loo`` computes it, without keeping the weights.

    Parameters
    ----------
    log_likelihood
        Pointwise log-likelihood (draws, observations), any floating type, byte order and
        memory layout (copied into float64 a block of observations at a time): row s holds draw s
        of every observation (draws in the order of ``az.loo``'s stacking, chain-major, give
        its numbers to the last bits of the sums).
    reff
        Relative efficiency of the draws (ESS / S).

    Returns
    -------
    PsisLoo
        Float64 arrays (observations,).
    """
    values = np.asarray(log_likelihood)
    if values.ndim != 2:
        raise ValueError(f"log_likelihood must be (draws, observations), got shape {values.shape}.")
    _check_values(values, axis=0, reff=reff)
    n_samples, n_observations = values.shape
    tail = _tail_length(n_samples, reff)
    loo_i, pareto_k, lppd_i = (np.empty(n_observations) for _ in range(3))

    def run(block: slice) -> None:
        ll = np.array(values[:, block].T, dtype=np.float64, order="C")
        _check_finite(ll, "log-likelihood values")
        lppd_i[block] = _logsumexp_rows(ll) - np.log(n_samples)
        smallest = ll.min(axis=1)
        # log weights −ll, shifted to a maximum of 0
        x = smallest[:, None] - ll
        smoothed = _smooth(x, tail)
        pareto_k[block] = smoothed.pareto_k
        loo_i[block] = _loo_rows(
            x,
            ll,
            smoothed.tail_index,
            smoothed.n_smoothed,
            smoothed.total,
            smallest - smoothed.total,
        )

    in_threads(run, _blocks(n_observations, n_samples))
    return PsisLoo(loo_i, pareto_k, lppd_i)


class _Smoothed(NamedTuple):
    """Per row of a block: k̂, the smoothed draws and the log of the sum of the weights."""

    pareto_k: np.ndarray
    tail_index: np.ndarray
    n_smoothed: np.ndarray
    total: np.ndarray


def _smooth(x: np.ndarray, tail: int) -> _Smoothed:
    """Pareto-smooth the tails of the log weights ``x`` (rows × draws, maximum 0) in place.

    The cutoffs (a partition) and the elementwise exponentials run in NumPy over the whole
    block (vectorised); the per-row tail, fit and smoothing in compiled loops.
    """
    n_rows, n_samples = x.shape
    # the (T + 1)-th largest log weight, or log of the smallest positive float if larger
    rank = n_samples - tail - 1
    cutoff = np.maximum(np.partition(x, rank, axis=1)[:, rank], _CUTOFF_MIN)
    tail_index = np.empty((n_rows, tail), dtype=np.intp)
    n_tail = np.empty(n_rows, dtype=np.intp)
    excess = np.zeros((n_rows, tail))
    grid = np.zeros((n_rows, _grid_size(tail)))
    exp_cutoff = np.exp(cutoff)
    _select_tails(x, cutoff, exp_cutoff, tail_index, n_tail, excess, grid)
    pareto_k = np.empty(n_rows)
    n_smoothed = np.empty(n_rows, dtype=np.intp)
    _fit_and_smooth(x, tail_index, n_tail, excess, exp_cutoff, grid, pareto_k, n_smoothed)
    return _Smoothed(pareto_k, tail_index, n_smoothed, _logsumexp_rows(x))


def _logsumexp_rows(values: np.ndarray) -> np.ndarray:
    """Log of Σ exp over each row, shifted by the row's maximum (ArviZ's ``logsumexp``)."""
    largest = values.max(axis=1)
    return np.log(np.exp(values - largest[:, None]).sum(axis=1)) + largest


def _blocks(n_rows: int, n_samples: int) -> list[slice]:
    """Blocks of rows of about :data:`_BLOCK_VALUES` values (at least one row each)."""
    size = max(1, _BLOCK_VALUES // n_samples)
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def _grid_size(n_tail: int) -> int:
    """Zhang & Stephens' number of grid points for a tail of ``n_tail`` draws."""
    return 30 + int(n_tail**0.5)


def _check_values(values: np.ndarray, *, axis: int, reff: float) -> None:
    if values.dtype.kind != "f":
        raise ValueError(f"log weights must be floating point, got {values.dtype}.")
    if values.ndim < 1 or values.shape[axis] < 2:
        raise ValueError(f"PSIS needs at least 2 draws per observation, got shape {values.shape}.")
    if not (np.isfinite(reff) and reff > 0):
        raise ValueError(f"reff must be a positive number, got {reff}.")


def _check_finite(block: np.ndarray, what: str) -> None:
    """Refuse a block of values (in float64) with a NaN or an infinity."""
    if not np.isfinite(block).all():
        raise ValueError(f"{what} must be finite, found NaN or ±inf.")


@compiled_kernel
def _select_tails(
    x: np.ndarray,
    cutoff: np.ndarray,
    exp_cutoff: np.ndarray,
    tail_index: np.ndarray,
    n_tail: np.ndarray,
    excess: np.ndarray,
    grid: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Each row's tail: the draws above the row's cutoff, ordered by weight, and the fit's grid.

    Writes the tail's draws ordered by weight (ties by draw) into ``tail_index``, their
    excesses exp(x) − exp(cutoff) into ``excess`` and the grid of b values; ``n_tail`` is 0
    where the tail is too short to fit.
    """
    n_rows, n_samples = x.shape
    for row in range(n_rows):
        values = x[row]
        n = 0
        for s in range(n_samples):
            if values[s] > cutoff[row]:
                tail_index[row, n] = s
                n += 1
        if n < _MIN_TAIL:
            n_tail[row] = 0
            continue
        n_tail[row] = n
        order = np.argsort(values[tail_index[row, :n]], kind="mergesort")
        tail_index[row, :n] = tail_index[row, :n][order]
        for i in range(n):
            excess[row, i] = np.exp(values[tail_index[row, i]]) - exp_cutoff[row]
        n_grid = 30 + int(n**0.5)
        quartile = excess[row, int(n / 4 + 0.5) - 1]
        for i in range(n_grid):
            grid[row, i] = (1 - np.sqrt(n_grid / (i + 1 - 0.5))) / (_PRIOR_SCALE * quartile)
            grid[row, i] += 1 / excess[row, n - 1]


@compiled_kernel
def _fit_and_smooth(
    x: np.ndarray,
    tail_index: np.ndarray,
    n_tail: np.ndarray,
    excess: np.ndarray,
    exp_cutoff: np.ndarray,
    grid: np.ndarray,
    pareto_k: np.ndarray,
    n_smoothed: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Fit each row's GPD on its grid and replace the tail by its quantiles.

    A row without a tail to fit gets k̂ = ∞, one whose fit fails a k̂ that is not finite;
    neither is smoothed (``n_smoothed`` 0).
    """
    for row in range(x.shape[0]):
        n = n_tail[row]
        n_smoothed[row] = 0
        if n == 0:
            pareto_k[row] = np.inf
            continue
        k, sigma = _gpd_fit(excess[row, :n], grid[row, : 30 + int(n**0.5)])
        pareto_k[row] = k
        if not np.isfinite(k):
            continue
        for i in range(n):
            quantile = _gpd_quantile((i + 0.5) / n, k, sigma)
            smoothed = np.log(quantile + exp_cutoff[row])
            # truncated at the largest raw weight, 0 (a NaN of a failed quantile stays NaN)
            x[row, tail_index[row, i]] = 0.0 if smoothed > 0 else smoothed
        n_smoothed[row] = n


@compiled_kernel
def _gpd_fit(excess: np.ndarray, b: np.ndarray) -> tuple[float, float]:  # pragma: no cover
    """Zhang & Stephens' empirical Bayes (k̂, σ̂) of a GPD from sorted excesses (ArviZ's).

    ``b`` is the grid. Its profile, Σ log1p(−b_i x) over the excesses x at every grid point,
    is summed in this loop: NumPy's would need a (rows × grid × tail) temporary of several
    MiB per block, which the kernel may stall to back with huge pages, and its log1p is
    several times slower on the profile's large arguments.
    """
    n = excess.size
    n_grid = b.size
    log_scale = np.empty(n_grid)
    for i in range(n_grid):
        sum_log1p = 0.0
        for value in excess:
            sum_log1p += np.log1p(-b[i] * value)
        k_i = sum_log1p / n
        log_scale[i] = n * (np.log(-(b[i] / k_i)) - k_i - 1)
    total = _logsumexp(log_scale)
    weights = np.empty(n_grid)
    weight_sum = 0.0
    for i in range(n_grid):
        weights[i] = np.exp(log_scale[i] - total)
        if weights[i] >= _NEGLIGIBLE_WEIGHT:
            weight_sum += weights[i]
    b_post = 0.0
    for i in range(n_grid):
        if weights[i] >= _NEGLIGIBLE_WEIGHT:
            b_post += b[i] * (weights[i] / weight_sum)
    k_post = 0.0
    for value in excess:
        k_post += np.log1p(-b_post * value)
    k_post /= n
    sigma = -k_post / b_post
    k_post = (n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K)
    return k_post, sigma


@compiled_kernel
def _gpd_quantile(probability: float, k: float, sigma: float) -> float:  # pragma: no cover
    """The GPD's quantile function at ``probability`` in (0, 1) (ArviZ's ``_gpinv``)."""
    if sigma <= 0:
        return np.nan
    if abs(k) < _EPS:
        return -np.log1p(-probability) * sigma
    return np.expm1(-k * np.log1p(-probability)) / k * sigma


@compiled_kernel
def _loo_rows(
    x: np.ndarray,
    ll: np.ndarray,
    tail_index: np.ndarray,
    n_smoothed: np.ndarray,
    total: np.ndarray,
    unsmoothed: np.ndarray,
) -> np.ndarray:  # pragma: no cover - compiled
    """Per row, logsumexp over the draws of the normalised log weight plus the log-likelihood.

    ``total`` is the row's logsumexp of the log weights ``x``. Where a draw's weight was not
    smoothed the sum's term is the same number for every draw, ``unsmoothed`` =
    min(log-likelihood) − ``total``, so only the smoothed draws need an exponential each.
    """
    n_rows, n_samples = x.shape
    out = np.empty(n_rows)
    for row in range(n_rows):
        n = n_smoothed[row]
        largest = unsmoothed[row]
        for i in range(n):
            s = tail_index[row, i]
            largest = max(largest, (x[row, s] - total[row]) + ll[row, s])
        terms = (n_samples - n) * np.exp(unsmoothed[row] - largest)
        for i in range(n):
            s = tail_index[row, i]
            terms += np.exp((x[row, s] - total[row]) + ll[row, s] - largest)
        out[row] = np.log(terms) + largest
    return out


@compiled_kernel
def _logsumexp(values: np.ndarray) -> float:  # pragma: no cover - compiled
    """Log of Σ exp(values), shifted by the maximum; NaN if any value is NaN."""
    largest = -np.inf
    for value in values:
        largest = max(largest, value)
    total = 0.0
    for value in values:
        total += np.exp(value - largest)
    return np.log(total) + largest
