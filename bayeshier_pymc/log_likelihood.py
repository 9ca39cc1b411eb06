"""Pointwise log-likelihoods of the stage-1 estimates b, from the posterior draws.

Two forms (see :data:`bayeshier_pymc.inference_data.DEFAULT_LOG_LIKELIHOOD` for which LOO
uses by default):

:func:`marginal`
    log N(b_j; parent mean, s_j² + τ_w²), θ_j integrated out (:func:`prior_predictive`
    without pooling: log N(b_j; mu0, s_j² + s0²)).
:func:`conditional`
    log N(b_j; θ_j, s_j²); :func:`conditional_total` sums it per draw.

Each is one value per (chain, draw, covariate, feature): 80 million at 4 × 2000 draws,
10 covariates and 999 features. Compiled kernels write them straight into an array of θ's
storage type, with no temporaries of that size, split over threads by draw (the kernels
release the GIL).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc.gaussian_tree.kernels import log_normal, pointwise_marginal
from bayeshier_pymc.model import group_mean_name

__all__ = [
    "conditional",
    "conditional_constant",
    "conditional_total",
    "marginal",
    "prior_predictive",
    "theta_parents",
]

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))
"""½ log 2π, the constant of every normal log density."""
_MIN_DRAWS_PER_THREAD = 64


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
    mu0: float,
    s0: float,
    lead: tuple[int, int],
    dtype: Any = np.float64,
) -> np.ndarray:
    """The marginal form without pooling, log N(b_kj; mu0, s_kj² + s0²), for every draw."""
    b, var_b = _data(b, se)
    variance = var_b + s0**2
    out = np.empty((*lead, *b.shape), dtype=dtype)
    out[:] = log_normal(b - mu0, variance)
    return out


def conditional_total(theta: np.ndarray, b: np.ndarray, se: np.ndarray) -> np.ndarray:
    """Σ over covariates and features of log N(b; θ, s²), one per (chain, draw)."""
    b, var_b = _data(b, se)
    flat_theta = np.ascontiguousarray(theta).reshape(-1, *b.shape)
    totals = np.empty(flat_theta.shape[0])
    inverse_var = 1.0 / var_b
    _in_threads(
        lambda lo, hi: _conditional_total_kernel(b, inverse_var, flat_theta, lo, hi, totals),
        totals.size,
    )
    return (totals + conditional_constant(var_b)).reshape(theta.shape[:2])


def conditional_constant(var_b: np.ndarray) -> float:
    """The part of the conditional log-likelihood total that does not depend on θ.

    Σ over covariates and features of -½ log(2π s²), for variances ``var_b``.
    """
    return float(np.sum(-0.5 * np.log(var_b) - _HALF_LOG_2PI))


def _data(b: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(b, dtype=float), np.ascontiguousarray(se, dtype=float) ** 2


def _in_threads(run: Callable[[int, int], Any], n: int) -> None:
    """``run(start, stop)`` over contiguous parts of ``range(n)``, one thread per CPU."""
    n_threads = max(1, min(_cpu_count(), n // _MIN_DRAWS_PER_THREAD))
    bounds = np.linspace(0, n, n_threads + 1).astype(int)
    if n_threads == 1:
        run(0, n)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for future in [pool.submit(run, lo, hi) for lo, hi in itertools.pairwise(bounds)]:
            future.result()


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without affinity


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
