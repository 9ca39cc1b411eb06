"""Pareto-smoothed importance sampling (PSIS), compiled: ArviZ's numbers at scale.

ArviZ's ``az.psislw`` (and so ``az.loo``) loops over the observations in Python, about half
a millisecond each; at 10^6 (covariate, feature) cells of 4,000 draws that is minutes. Here
the same algorithm runs in one compiled loop over the observations (Vehtari, Simpson, Gelman,
Yao & Gabry 2024, "Pareto smoothed importance sampling", as ArviZ 0.23 writes it):

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

__all__ = ["PsisLoo", "good_k", "psis_loo", "psislw", "tail_length"]

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


def tail_length(n_samples: int, reff: float) -> int:
    """The number of draws in the tail: ⌈min(S / 5, 3 √(S / r_eff))⌉, as ArviZ's ``psislw``."""
    return int(np.ceil(min(n_samples / 5.0, 3 * (n_samples / reff) ** 0.5)))


def good_k(n_samples: int) -> float:
    """The k̂ above which ``az.loo`` warns: min(1 − 1 / log10(S), 0.7)."""
    return min(1 - 1 / np.log10(n_samples), 0.7)


def psislw(log_weights: np.ndarray, reff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, truncated and normalised log weights, as ``az.psislw``.

    Parameters
    ----------
    log_weights
        Raw log weights (..., draws): the last axis holds the draws of each observation
        (for LOO, minus the log-likelihood).
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
    rows = values.reshape(-1, values.shape[-1])
    out = np.empty(rows.shape, dtype=np.float64)
    pareto_k = np.empty(rows.shape[0], dtype=np.float64)
    _psislw_kernel(rows, tail_length(rows.shape[1], reff), out, pareto_k)
    return out.reshape(values.shape), pareto_k.reshape(values.shape[:-1])


def psis_loo(log_likelihood: np.ndarray, reff: float) -> PsisLoo:
    """PSIS-LOO of every observation, as ``az.loo`` computes it, without keeping the weights.

    Parameters
    ----------
    log_likelihood
        Pointwise log-likelihood (draws, observations), any floating type: row s holds draw s
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
    n_observations = values.shape[1]
    loo_i, pareto_k, lppd_i = (np.empty(n_observations) for _ in range(3))
    _loo_kernel(values, tail_length(values.shape[0], reff), loo_i, pareto_k, lppd_i)
    return PsisLoo(loo_i, pareto_k, lppd_i)


def _check_values(values: np.ndarray, *, axis: int, reff: float) -> None:
    if values.dtype.kind != "f":
        raise ValueError(f"log weights must be floating point, got {values.dtype}.")
    if values.ndim < 1 or values.shape[axis] < 2:
        raise ValueError(f"PSIS needs at least 2 draws per observation, got shape {values.shape}.")
    if not (np.isfinite(reff) and reff > 0):
        raise ValueError(f"reff must be a positive number, got {reff}.")
    if not _all_finite(values.reshape(-1)):
        raise ValueError("log weights must be finite (found NaN or ±inf).")


@compiled_kernel
def _all_finite(values: np.ndarray) -> bool:  # pragma: no cover - compiled
    for value in values:  # noqa: SIM110 - numba compiles no generator
        if not np.isfinite(value):
            return False
    return True


@compiled_kernel
def _psislw_kernel(
    log_weights: np.ndarray, tail: int, out: np.ndarray, pareto_k: np.ndarray
) -> None:  # pragma: no cover - compiled
    """Each row of ``log_weights`` (observation × draws) smoothed and normalised into ``out``."""
    n_samples = log_weights.shape[1]
    x = np.empty(n_samples)
    tail_index = np.empty(tail, dtype=np.intp)
    for row in range(log_weights.shape[0]):
        largest = -np.inf
        for s in range(n_samples):
            x[s] = log_weights[row, s]
            largest = max(largest, x[s])
        for s in range(n_samples):
            x[s] -= largest
        pareto_k[row], _ = _smooth(x, tail, tail_index)
        total = _logsumexp(x)
        for s in range(n_samples):
            out[row, s] = x[s] - total


@compiled_kernel
def _loo_kernel(
    log_likelihood: np.ndarray,
    tail: int,
    loo_i: np.ndarray,
    pareto_k: np.ndarray,
    lppd_i: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Per column of ``log_likelihood`` (draws × observations): ``az.loo``'s terms.

    loo_i is logsumexp over the draws of the normalised log weight plus the log-likelihood.
    Where a draw's weight was not smoothed that sum is the same number for every draw,
    min(log-likelihood) − logsumexp(log weights), so only the smoothed draws need one
    exponential each.
    """
    n_samples = log_likelihood.shape[0]
    log_n = np.log(n_samples)
    ll = np.empty(n_samples)
    x = np.empty(n_samples)
    tail_index = np.empty(tail, dtype=np.intp)
    for j in range(log_likelihood.shape[1]):
        smallest = np.inf
        for s in range(n_samples):
            ll[s] = log_likelihood[s, j]
            smallest = min(smallest, ll[s])
        lppd_i[j] = _logsumexp(ll) - log_n
        # log weights −ll, shifted to a maximum of 0
        for s in range(n_samples):
            x[s] = -ll[s] + smallest
        pareto_k[j], n_smoothed = _smooth(x, tail, tail_index)
        total = _logsumexp(x)
        unsmoothed = smallest - total
        largest = unsmoothed
        for i in range(n_smoothed):
            s = tail_index[i]
            largest = max(largest, (x[s] - total) + ll[s])
        terms = (n_samples - n_smoothed) * np.exp(unsmoothed - largest)
        for i in range(n_smoothed):
            s = tail_index[i]
            terms += np.exp((x[s] - total) + ll[s] - largest)
        loo_i[j] = np.log(terms) + largest


@compiled_kernel
def _smooth(
    x: np.ndarray, tail: int, tail_index: np.ndarray
) -> tuple[float, int]:  # pragma: no cover - compiled
    """Pareto-smooth the tail of the log weights ``x`` (maximum 0) in place.

    Returns k̂ and the number of smoothed draws, whose indices it leaves in the first
    entries of ``tail_index`` (room for ``tail`` indices); 0 when nothing was smoothed.
    """
    n_samples = x.size
    rank = n_samples - tail - 1
    cutoff = max(np.partition(x, rank)[rank], _CUTOFF_MIN)
    exp_cutoff = np.exp(cutoff)
    n_tail = 0
    for s in range(n_samples):
        if x[s] > cutoff:
            tail_index[n_tail] = s
            n_tail += 1
    if n_tail < _MIN_TAIL:
        return np.inf, 0
    indices = tail_index[:n_tail]
    order = np.argsort(x[indices], kind="mergesort")
    sorted_index = indices[order]
    excess = np.empty(n_tail)
    for i in range(n_tail):
        excess[i] = np.exp(x[sorted_index[i]]) - exp_cutoff
    k, sigma = _gpd_fit(excess)
    if not np.isfinite(k):
        return k, 0
    for i in range(n_tail):
        smoothed = np.log(_gpd_quantile((i + 0.5) / n_tail, k, sigma) + exp_cutoff)
        # truncated at the largest raw weight, 0 (a NaN of a failed quantile stays NaN)
        x[sorted_index[i]] = 0.0 if smoothed > 0 else smoothed
    return k, n_tail


@compiled_kernel
def _gpd_fit(excess: np.ndarray) -> tuple[float, float]:  # pragma: no cover - compiled
    """Zhang & Stephens' empirical Bayes (k̂, σ̂) of a GPD from sorted excesses (ArviZ's)."""
    n = excess.size
    n_grid = 30 + int(n**0.5)
    quartile = excess[int(n / 4 + 0.5) - 1]
    b = np.empty(n_grid)
    log_scale = np.empty(n_grid)
    for i in range(n_grid):
        b[i] = (1 - np.sqrt(n_grid / (i + 1 - 0.5))) / (_PRIOR_SCALE * quartile)
        b[i] += 1 / excess[n - 1]
        k_i = _mean_log1p(-b[i], excess)
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
    k_post = _mean_log1p(-b_post, excess)
    sigma = -k_post / b_post
    k_post = (n * k_post + _PRIOR_K * 0.5) / (n + _PRIOR_K)
    return k_post, sigma


@compiled_kernel
def _mean_log1p(factor: float, values: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0
    for value in values:
        total += np.log1p(factor * value)
    return total / values.size


@compiled_kernel
def _gpd_quantile(probability: float, k: float, sigma: float) -> float:  # pragma: no cover
    """The GPD's quantile function at ``probability`` in (0, 1) (ArviZ's ``_gpinv``)."""
    if sigma <= 0:
        return np.nan
    if abs(k) < _EPS:
        return -np.log1p(-probability) * sigma
    return np.expm1(-k * np.log1p(-probability)) / k * sigma


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
