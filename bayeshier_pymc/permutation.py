"""Batched permutation tests for the matrix linear model (used by ``MLMFit.permutation_test``).

Without covariance shrinkage every statistic of the fit depends on ``Y`` only through
``V = Y M`` (n × q), where ``M = W Z (Z'WZ)⁻¹`` (``M = I`` and ``V = Y`` when ``Z`` is None):
``B̂ = R⁻¹ Q'V`` with ``X = QR``, and the diagonal of ``A Σ̂ A'`` is the residual sum of squares of
``V`` regressed on ``X`` divided by ``d`` (because ``Z'M = I``). Hence

* ``by="rows"`` (permute samples, MatrixLM.jl's ``shuffle_rows``): ``Q' V_π = Q[π⁻¹]' V``, so the
  permutation is applied to the small p × n matrix ``Q'`` and a chunk of permutations becomes
  one (chunk·p × n) @ (n × q) product; the residual sum of squares is ``‖V_c‖² - ‖Q' V_{c,π}‖²``
  with ``V_c`` the column-centred ``V`` when ``X``'s column space holds the constant (which keeps
  the subtraction accurate), else with ``V`` itself;
* ``by="columns"`` (permute features against ``Z``, MatrixLM.jl's ``shuffle_cols``; needs a
  ``Z``): ``Y[:, σ] M = Y M[σ⁻¹]``, so a chunk becomes one n × (chunk·q) product.

With shrinkage the covariance must be re-estimated for every permutation, so the fit's own
estimator (``refit``) is called once per permutation (vectorised over features, but slower).

The k-th permutation is the k-th call of ``numpy.random.default_rng(random_seed).permutation``
(of ``n`` for rows, ``m`` for columns). p-values are ``(1 + #{|T*| >= |T|}) / (1 + n_perms)``
(with a relative tolerance of 1e-10 on the comparison, so ties from rounding count).

The permutations are drawn in this process, in order, and counted in chunks that
:func:`~bayeshier_pymc.parallel.dispatch` hands to joblib: under
``joblib.parallel_config(n_jobs=…)`` or ``backend="dask"`` the chunks (the refits, with
shrinkage, which are worth spreading) are counted by several workers, with the same p-values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bayeshier_pymc.parallel import dispatch, outer_jobs

STATISTICS = ("t", "coef")
PERMUTE_BY = ("rows", "columns")
_CHUNK_BYTES = 64 * 2**20
_TIE_TOLERANCE = 1e-10
_PROGRESS_DELAY_S = 2.0
_CHUNKS_PER_JOB = 4
"""Chunks of permutations per worker when refits are counted in parallel."""


@dataclass(frozen=True)
class LinearProblem:
    """The arrays that determine the unshrunk statistics of any permuted response.

    Attributes
    ----------
    q, r
        Thin QR factors of ``X`` (n × p and p × p).
    xtx_inv_diag
        Diagonal of ``(X'X)⁻¹``.
    y
        The response, n × m.
    z_map
        ``M = W Z (Z'WZ)⁻¹`` (m × q), or ``None`` when ``Z`` is None.
    divisor
        ``d`` of ``Σ̂ = E'E / d``.
    """

    q: np.ndarray
    r: np.ndarray
    xtx_inv_diag: np.ndarray
    y: np.ndarray
    z_map: np.ndarray | None
    divisor: int

    @cached_property
    def has_constant(self) -> bool:
        """Whether the constant vector lies in the column space of ``X``."""
        ones = np.ones(self.q.shape[0])
        leftover = ones - self.q @ (self.q.T @ ones)
        return bool(np.linalg.norm(leftover) <= 1e-8 * np.sqrt(ones.size))

    @cached_property
    def projected(self) -> np.ndarray:
        """``V = Y M`` (or ``Y`` when ``Z`` is None)."""
        return self.y if self.z_map is None else self.y @ self.z_map


def permutation_pvalues(
    problem: LinearProblem,
    *,
    n_perms: int,
    random_seed: int | np.random.Generator | None,
    by: str,
    statistic: str,
    progress: bool | None = None,
    refit: Callable[[np.ndarray], np.ndarray] | None = None,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Return permutation p-values for every (covariate, coefficient column).

    Parameters
    ----------
    problem
        The fitted problem.
    n_perms
        Number of random permutations (at least 1).
    random_seed
        Seed or generator for ``numpy.random.default_rng``.
    by
        ``"rows"`` (permute samples) or ``"columns"`` (permute features against ``Z``).
    statistic
        ``"t"`` (t statistics) or ``"coef"`` (coefficient estimates); compared in absolute value.
    progress
        ``True`` shows a progress bar, ``False`` hides it, ``None`` shows it only once a run has
        taken more than 2 seconds.
    refit
        When given, maps a permuted response (n × m) to the statistic (p × q); used for fits
        with covariance shrinkage, one call per permutation.
    n_jobs
        Chunks of permutations counted at once, through joblib
        (:func:`~bayeshier_pymc.parallel.dispatch`); ``None`` (default): the current
        ``joblib.parallel_config`` (one at a time unless it says otherwise). The permutations
        are drawn here, in order, so the p-values are the same wherever they are counted.

    Returns
    -------
    numpy.ndarray
        p × q p-values in ``[1 / (n_perms + 1), 1]``.
    """
    _validate(problem, n_perms, by, statistic)
    size = problem.y.shape[0] if by == "rows" else problem.y.shape[1]
    batch = _batch_function(problem, by, statistic, refit)
    observed = batch(np.arange(size)[None, :])[0]
    threshold = np.abs(observed) * (1.0 - _TIE_TOLERANCE)
    rng = np.random.default_rng(random_seed)
    jobs = outer_jobs(n_jobs)
    if refit is not None:  # a few chunks per worker, or one permutation at a time
        chunk = 1 if jobs == 1 else -(-n_perms // (_CHUNKS_PER_JOB * jobs))
    else:
        chunk = _chunk_size(problem, by, n_perms)
    starts = range(0, n_perms, chunk)

    def tasks() -> Iterator[tuple[str, tuple[Any, ...]]]:
        # drawn here, in order, whichever worker counts them
        for start in starts:
            count = min(chunk, n_perms - start)
            perms = np.stack([rng.permutation(size) for _ in range(count)])
            label = f"permutations {start + 1}-{start + count} of {n_perms}"
            yield label, (batch, perms, threshold)

    exceed = np.zeros(observed.shape, dtype=np.int64)
    delay = 0.0 if progress else _PROGRESS_DELAY_S
    with tqdm(total=n_perms, disable=progress is False, delay=delay, unit="perm") as bar:
        counts = dispatch(_exceedances, tasks(), n_jobs=n_jobs, total=len(starts))
        for start, count in zip(starts, counts, strict=True):
            exceed += count
            bar.update(min(chunk, n_perms - start))
    return (1.0 + exceed) / (1.0 + n_perms)


def _exceedances(
    batch: Callable[[np.ndarray], np.ndarray], perms: np.ndarray, threshold: np.ndarray
) -> np.ndarray:
    """How many of the permutations ``perms`` give a statistic at least ``threshold``."""
    return (np.abs(batch(perms)) >= threshold).sum(axis=0)


def _validate(problem: LinearProblem, n_perms: int, by: str, statistic: str) -> None:
    if isinstance(n_perms, bool) or not isinstance(n_perms, int | np.integer) or n_perms < 1:
        raise ValueError(f"n_perms must be a positive integer, got {n_perms!r}.")
    if by not in PERMUTE_BY:
        raise ValueError(f"unknown permutation mode by={by!r}; use one of {PERMUTE_BY}.")
    if by == "columns" and problem.z_map is None:
        raise ValueError(
            "by='columns' permutes features against the rows of Z and needs a fit with a Z; "
            "with Z=None use by='rows'."
        )
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; use one of {STATISTICS}.")


def _batch_function(
    problem: LinearProblem,
    by: str,
    statistic: str,
    refit: Callable[[np.ndarray], np.ndarray] | None,
) -> Callable[[np.ndarray], np.ndarray]:
    if refit is not None:

        def refit_batch(perms: np.ndarray) -> np.ndarray:
            y = problem.y
            return np.stack([refit(y[perm] if by == "rows" else y[:, perm]) for perm in perms])

        return refit_batch
    if by == "rows":
        return lambda perms: _row_statistics(problem, perms, statistic)
    return lambda perms: _column_statistics(problem, perms, statistic)


def _chunk_size(problem: LinearProblem, by: str, n_perms: int) -> int:
    n_obs, n_features = problem.y.shape
    n_cov = problem.q.shape[1]
    n_cols = problem.projected.shape[1]
    if by == "rows":
        per_perm = n_cov * n_obs + 4 * n_cov * n_cols
    else:
        per_perm = n_features * n_cols + 2 * n_obs * n_cols + 4 * n_cov * n_cols
    return int(max(1, min(n_perms, _CHUNK_BYTES // (8 * per_perm))))


def _row_statistics(problem: LinearProblem, perms: np.ndarray, statistic: str) -> np.ndarray:
    v = problem.projected
    n_perm, n_obs = perms.shape
    n_cov, n_cols = problem.q.shape[1], v.shape[1]
    inverse = np.argsort(perms, axis=1)
    stacked = problem.q.T[:, inverse].transpose(1, 0, 2).reshape(n_perm * n_cov, n_obs)
    if problem.has_constant:
        means = v.mean(axis=0)
        centred = v - means
        g = (stacked @ centred).reshape(n_perm, n_cov, n_cols)
        rss = (centred * centred).sum(axis=0) - (g * g).sum(axis=1)
        g += np.outer(problem.q.sum(axis=0), means)
    else:
        g = (stacked @ v).reshape(n_perm, n_cov, n_cols)
        rss = (v * v).sum(axis=0) - (g * g).sum(axis=1)
    return _statistics(problem, g, rss, statistic)


def _column_statistics(problem: LinearProblem, perms: np.ndarray, statistic: str) -> np.ndarray:
    n_perm = perms.shape[0]
    n_cov, n_cols = problem.q.shape[1], problem.z_map.shape[1]
    inverse = np.argsort(perms, axis=1)
    maps = problem.z_map[inverse].transpose(1, 0, 2).reshape(-1, n_perm * n_cols)
    v = problem.y @ maps
    g = problem.q.T @ v
    resid = v - problem.q @ g
    rss = (resid * resid).sum(axis=0).reshape(n_perm, n_cols)
    g = g.reshape(n_cov, n_perm, n_cols).transpose(1, 0, 2)
    return _statistics(problem, g, rss, statistic)


def _statistics(
    problem: LinearProblem, g: np.ndarray, rss: np.ndarray, statistic: str
) -> np.ndarray:
    n_perm, n_cov, n_cols = g.shape
    flat = g.transpose(1, 0, 2).reshape(n_cov, n_perm * n_cols)
    coef = np.linalg.solve(problem.r, flat).reshape(n_cov, n_perm, n_cols)
    coef = coef.transpose(1, 0, 2)
    if statistic == "coef":
        return coef
    scale = np.maximum(rss, np.finfo(float).tiny) / problem.divisor
    return coef / np.sqrt(problem.xtx_inv_diag[None, :, None] * scale[:, None, :])
