"""Residual covariance of the matrix linear model and its shrinkage.

The empirical covariance of the residuals ``E`` (n × m) is ``S = E'E / d`` with ``d = n - p``
(``dof="n-p"``, unbiased) or ``d = n - 1`` (``dof="n-1"``, MatrixLM.jl's choice). The residuals
are *not* re-centred: the model's mean structure has already been removed (with an intercept in
``X`` and ``Z=None`` they have mean zero anyway).

Linear shrinkage, targets "A"–"D" (Schäfer & Strimmer 2005, Table 2)
---------------------------------------------------------------------
``Σ̂ = λ T + (1 - λ) S`` with

* "A": ``T = I``;
* "B": ``T = v I``, ``v`` the mean of the variances ``s_ii``;
* "C": ``T_ii = v``, ``T_ij = c``, ``c`` the mean of the covariances ``s_ij`` (i ≠ j);
* "D": ``T = diag(s_ii)``.

The optimal intensity is ``λ* = Σ Var̂(s_ij) / Σ (s_ij - t_ij)²`` over all entries for A–C and
over the off-diagonal entries for D, truncated to [0, 1] (Schäfer & Strimmer; when the
denominator is zero, ``S`` already equals the target and λ = 1). With
``w_kij = e_ki e_kj`` and ``s_ij = (n / d) w̄_ij``, the variance of each estimate is
``Var̂(s_ij) = n / (d² (n - 1)) Σ_k (w_kij - w̄_ij)²``, which is Schäfer & Strimmer's
``n / (n - 1)³ Σ_k (w_kij - w̄_ij)²`` for ``d = n - 1``.

Differences from MatrixLM.jl's ``shrink_sigma``: λ is truncated to [0, 1]; the common covariance
of target C is averaged over the ``m (m - 1)`` off-diagonal entries (MatrixLM.jl divides by
``n (n - 1)``); the divisor ``d`` follows ``dof``; unknown targets raise instead of being ignored.

Target "R": log-variances and Fisher-z correlations
----------------------------------------------------
Variances and correlations are shrunk separately, each toward its mean, with a
Schäfer–Strimmer-style intensity (expected sampling variance / observed dispersion, truncated
to [0, 1]):

* ``l_i = log s_ii`` is shrunk toward ``l̄``: ``l_i* = (1 - λ_v) l_i + λ_v l̄`` with
  ``λ_v = Σ_i Var̂(l_i) / Σ_i (l_i - l̄)²`` and the delta-method ``Var̂(l_i) = Var̂(s_ii) / s_ii²``;
* ``z_ij = atanh(r_ij)`` (i ≠ j; ``r`` clipped to ±(1 - 1e-12)) is shrunk toward its mean ``z̄``:
  ``z_ij* = (1 - λ_r) z_ij + λ_r z̄`` with ``λ_r = Σ_{i<j} Var(z_ij) / Σ_{i<j} (z_ij - z̄)²`` and
  Fisher's ``Var(z_ij) = 1 / (n - p - 2)`` for residual (partial) correlations.

``Σ̂ = D R* D`` with ``D = diag(exp(l*/2))`` and ``R*_ij = tanh(z_ij*)``, ``R*_ii = 1``. An
elementwise transform need not keep ``R*`` positive semi-definite; when a Cholesky
factorisation fails, the eigenvalues of ``R*`` are raised to 1e-10 and the result is rescaled to a
unit diagonal. The intensity is reported as ``{"variance": λ_v, "correlation": λ_r}``.

References
----------
Schäfer, J. & Strimmer, K. (2005). A shrinkage approach to large-scale covariance matrix
estimation and implications for functional genomics. Stat. Appl. Genet. Mol. Biol. 4(1), 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGETS = ("A", "B", "C", "D", "R")
DOF_CHOICES = ("n-p", "n-1")
_MAX_CORRELATION = 1.0 - 1e-12
_EIGENVALUE_FLOOR = 1e-10


@dataclass(frozen=True)
class ShrunkCovariance:
    """A shrunk covariance matrix and its estimated shrinkage intensity.

    Attributes
    ----------
    matrix
        The m × m shrunk covariance.
    shrinkage_lambda
        λ in [0, 1] for targets A–D; ``{"variance": λ_v, "correlation": λ_r}`` for target R.
    """

    matrix: np.ndarray
    shrinkage_lambda: float | dict[str, float]


def validate_target(target: object) -> str | None:
    """Return ``target`` if it is ``None`` or one of ``TARGETS``; raise otherwise."""
    if target is None or (isinstance(target, str) and target in TARGETS):
        return target
    raise ValueError(f"unknown shrinkage target {target!r}; use None or one of {TARGETS}.")


def validate_dof(dof: object) -> str:
    """Return ``dof`` if it is one of ``DOF_CHOICES``; raise otherwise."""
    if isinstance(dof, str) and dof in DOF_CHOICES:
        return dof
    raise ValueError(f"unknown dof {dof!r}; use one of {DOF_CHOICES}.")


def residual_divisor(n_obs: int, n_covariates: int, dof: str) -> int:
    """Return the divisor ``d`` of ``E'E``: ``n - p`` or ``n - 1``.

    Parameters
    ----------
    n_obs
        Number of samples ``n``.
    n_covariates
        Number of columns ``p`` of ``X``.
    dof
        ``"n-p"`` or ``"n-1"``.

    Returns
    -------
    int
        The divisor.
    """
    return n_obs - n_covariates if validate_dof(dof) == "n-p" else n_obs - 1


def covariance_and_variance(resid: np.ndarray, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``S = E'E / d`` and the estimated variance of each entry of ``S``.

    Parameters
    ----------
    resid
        Residuals ``E``, n × m.
    divisor
        ``d``.

    Returns
    -------
    tuple of numpy.ndarray
        ``S`` and ``Var̂(s_ij) = n / (d² (n - 1)) Σ_k (e_ki e_kj - w̄_ij)²``, both m × m.
    """
    n_obs = resid.shape[0]
    cross = resid.T @ resid
    squares = resid * resid
    spread = squares.T @ squares - cross * cross / n_obs
    np.maximum(spread, 0.0, out=spread)
    return cross / divisor, spread * (n_obs / (divisor**2 * (n_obs - 1)))


def shrink_covariance(
    resid: np.ndarray, target: str, *, divisor: int, df_resid: int
) -> ShrunkCovariance:
    """Shrink the residual covariance toward ``target`` with the estimated optimal intensity.

    Parameters
    ----------
    resid
        Residuals ``E``, n × m.
    target
        One of ``TARGETS`` (see the module docstring).
    divisor
        ``d`` of ``S = E'E / d``.
    df_resid
        Residual degrees of freedom ``n - p`` (used by target R).

    Returns
    -------
    ShrunkCovariance
        The shrunk matrix and λ.
    """
    cov, variance = covariance_and_variance(resid, divisor)
    if validate_target(target) == "R":
        return _shrink_log_fisher(cov, variance, df_resid)
    if target == "D":
        numerator = variance.sum() - np.trace(variance)
        denominator = (cov * cov).sum() - (np.diag(cov) ** 2).sum()
        lam = _intensity(numerator, denominator)
        shrunk = (1.0 - lam) * cov
        np.fill_diagonal(shrunk, np.diag(cov))
        return ShrunkCovariance(shrunk, lam)
    goal = _target_matrix(cov, target)
    lam = _intensity(variance.sum(), ((cov - goal) ** 2).sum())
    return ShrunkCovariance(lam * goal + (1.0 - lam) * cov, lam)


def _target_matrix(cov: np.ndarray, target: str) -> np.ndarray:
    size = cov.shape[0]
    if target == "A":
        return np.eye(size)
    mean_variance = np.trace(cov) / size
    if target == "B":
        return mean_variance * np.eye(size)
    mean_covariance = (cov.sum() - np.trace(cov)) / (size * (size - 1)) if size > 1 else 0.0
    goal = np.full((size, size), mean_covariance)
    np.fill_diagonal(goal, mean_variance)
    return goal


def _intensity(numerator: float, denominator: float) -> float:
    if denominator <= 0:
        return 1.0
    return float(np.clip(numerator / denominator, 0.0, 1.0))


def _shrink_log_fisher(cov: np.ndarray, variance: np.ndarray, df_resid: int) -> ShrunkCovariance:
    variances = np.diag(cov).copy()
    if not (variances > 0).all():
        bad = np.flatnonzero(~(variances > 0))
        raise ValueError(
            f"shrinkage target 'R' needs positive residual variances; {len(bad)} feature(s) "
            f"have none (positions {bad[:10].tolist()})."
        )
    if df_resid <= 2:
        raise ValueError(
            f"shrinkage target 'R' needs more than 2 residual degrees of freedom, got {df_resid}."
        )
    log_var = np.log(variances)
    lam_variance = _intensity(
        (np.diag(variance) / variances**2).sum(), ((log_var - log_var.mean()) ** 2).sum()
    )
    shrunk_log = (1.0 - lam_variance) * log_var + lam_variance * log_var.mean()
    corr, lam_correlation = _shrink_fisher_z(
        cov / np.outer(np.sqrt(variances), np.sqrt(variances)), df_resid
    )
    scale = np.exp(shrunk_log / 2.0)
    return ShrunkCovariance(
        corr * np.outer(scale, scale),
        {"variance": lam_variance, "correlation": lam_correlation},
    )


def _shrink_fisher_z(corr: np.ndarray, df_resid: int) -> tuple[np.ndarray, float]:
    size = corr.shape[0]
    if size < 2:
        return np.ones((1, 1)), 0.0
    z = np.arctanh(np.clip(corr, -_MAX_CORRELATION, _MAX_CORRELATION))
    np.fill_diagonal(z, 0.0)
    n_off = size * (size - 1)
    mean_z = z.sum() / n_off
    dispersion = ((z - mean_z) ** 2).sum() - size * mean_z**2
    lam = _intensity(n_off / (df_resid - 2), dispersion)
    shrunk = np.tanh((1.0 - lam) * z + lam * mean_z)
    np.fill_diagonal(shrunk, 1.0)
    return _positive_definite_correlation(shrunk), lam


def _positive_definite_correlation(corr: np.ndarray) -> np.ndarray:
    try:
        np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        eigenvalues, vectors = np.linalg.eigh(corr)
        repaired = (vectors * np.maximum(eigenvalues, _EIGENVALUE_FLOOR)) @ vectors.T
        scale = np.sqrt(np.diag(repaired))
        repaired /= np.outer(scale, scale)
        np.fill_diagonal(repaired, 1.0)
        return repaired
    return corr
