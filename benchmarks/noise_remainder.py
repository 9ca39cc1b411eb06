"""A low-rank remainder of the residual covariance on top of tree-structured noise (research).

Research code of ``bench_low_rank.py``, kept beside it: measured there, the remainder does not
improve stage 2 on real data (``docs/model.md``), so the package's samplers do not take it.

Tree-structured noise (:mod:`bayeshier_pymc.noise`) models the part of the residual covariance
``Σ`` that aliases with the annotation tree. What it leaves — correlations across groups that
no node of the tree carries (a batch effect, a pathway that cuts across the annotation) — is
modelled here as r common factors:

    e_i = A η_i + L f_i + ε_i,   η_i ~ N(0, I) (the tree's nodes),   f_i ~ N(0, I_r),
    ε_i ~ N(0, Ψ),   so   Σ = A Aᵀ + L Lᵀ + Ψ,

with ``A`` the tree's shared noise (one column per node of positive variance: its features'
indicator times the node's sd, held fixed at :func:`~bayeshier_pymc.noise.tree_noise`'s
estimate), ``L`` the m × r loadings and ``Ψ`` each feature's own variance (diagonal). Per
covariate the noise of the estimates is ``c_kk`` times this, i.e. ``b = T + L f + ε`` with
``f ~ N(0, c_kk I_r)``: the likelihood is the tree's O(m) pass plus a Woodbury correction,
O(m·r).

Estimation is factor analysis of what the tree leaves, by maximum likelihood: the EM algorithm
of factor analysis (Rubin & Thayer 1982) with the tree's columns of ``A`` as further latent
factors whose loadings stay fixed. Every EM step is exact: the E-step is the Gaussian posterior
of (η, f) per sample (a (K + r)-dimensional solve, K the tree's nodes), the M-step regresses
each feature's residuals on the expected factors (``L``; identical regressors for all features,
so it is the same for any ``Ψ``) and sets ``Ψ`` to the expected squared remainder, floored at
``min_own_share`` of the feature's residual variance (the constrained maximiser, as the
expected log-likelihood of one ψ_j is unimodal). The log-likelihood therefore never decreases.
Off-the-shelf factor analysis (e.g. scikit-learn's ``FactorAnalysis``) fits ``L Lᵀ + Ψ`` to the
whole ``Σ``: its factors would first re-learn the tree's blocks, which the tree noise already
estimates node by node with partial pooling, and leave nothing to say which part is the
remainder. Holding the tree's part fixed makes the factors exactly "what the tree blocks
leave". Each EM iteration costs O(n m (K + r)), never an m × m matrix.

The rank is given, or chosen by K-fold cross-validation over the samples: for each candidate
rank the model is fitted on the other folds and scored by the Gaussian log-likelihood of the
held-out samples' residuals; the rank with the highest total held-out log-likelihood is kept.
The tree's shared part is estimated once on all samples (it is common to every rank compared);
only the remainder (``L``, ``Ψ``) is refitted per fold. Rank 0 is the tree noise with its own
variances refitted by maximum likelihood.

The total model stays positive definite: ``A Aᵀ`` and ``L Lᵀ`` are positive semi-definite and
every ψ_j is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from bayeshier_pymc.covariance import residual_divisor
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.noise import NodeVariances, Pooling, TreeNoise, tree_noise

__all__ = ["NoiseRemainder", "conditional_variance_inflation", "noise_remainder"]

LOG_2PI = float(np.log(2.0 * np.pi))
DEFAULT_MAX_RANK = 10
DEFAULT_FOLDS = 5


@dataclass(frozen=True, eq=False)
class NoiseRemainder:
    """Tree-structured noise plus a low-rank remainder: ``Σ = A Aᵀ + L Lᵀ + Ψ``.

    Build it with :func:`noise_remainder`.

    Attributes
    ----------
    tree
        The tree-structured part; its ``residual.own`` is ``Ψ``, the own variances refitted
        with the factors (not :func:`~bayeshier_pymc.noise.tree_noise`'s).
    loadings
        ``L``, m × r, on the residual scale (covariate-free), features in ``tree``'s order.
    cross_validation
        With the rank chosen by cross-validation, one row per candidate rank: the held-out
        log-likelihood per sample (mean over folds) and its standard error over folds;
        ``None`` for a given rank.
    """

    tree: TreeNoise
    loadings: np.ndarray
    cross_validation: pd.DataFrame | None = None

    @property
    def rank(self) -> int:
        """The number of factors r."""
        return int(self.loadings.shape[1])

    @property
    def features(self) -> pd.Index:
        """Feature labels, in the order of every array."""
        return self.tree.features

    def loadings_for_covariate(self, covariate: object) -> np.ndarray:
        """The loadings of the estimates of ``covariate``: ``√c_kk L`` (m × r)."""
        if covariate not in self.tree.covariate_scale.index:
            raise ValueError(
                f"covariate {covariate!r} is not among the noise structure's covariates "
                f"{self.tree.covariate_scale.index.tolist()!r}."
            )
        return np.sqrt(float(self.tree.covariate_scale[covariate])) * self.loadings

    def covariance(self, covariate: object | None = None) -> np.ndarray:
        """The dense m × m covariance (residual, or of ``covariate``'s estimates); small m only.

        Parameters
        ----------
        covariate
            ``None`` for the residual covariance ``Σ``; a covariate label for ``c_kk Σ``.

        Returns
        -------
        numpy.ndarray
        """
        loadings = self.loadings if covariate is None else self.loadings_for_covariate(covariate)
        return self.tree.covariance(covariate) + loadings @ loadings.T


def noise_remainder(
    fit: MLMFit,
    hierarchy: Hierarchy,
    *,
    rank: int | Literal["cv"] = "cv",
    max_rank: int = DEFAULT_MAX_RANK,
    n_folds: int = DEFAULT_FOLDS,
    pooling: Pooling = "partial",
    min_own_share: float = 0.05,
    max_iter: int = 1000,
    tol: float = 1e-7,
    random_seed: int = 0,
) -> NoiseRemainder:
    """Estimate tree-structured noise and a rank-r factor model of what it leaves.

    Parameters
    ----------
    fit
        A stage-1 fit with ``Z=None`` and no missing values.
    hierarchy
        The features' annotation tree.
    rank
        The number of factors r (0 or more), or ``"cv"`` (default) to choose it among
        0, …, ``max_rank`` by cross-validated likelihood (see the module docstring).
    max_rank
        Largest rank tried by cross-validation.
    n_folds
        Folds of samples in the cross-validation.
    pooling, min_own_share
        As :func:`~bayeshier_pymc.noise.tree_noise` (``min_own_share`` also floors ``Ψ``).
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the log-likelihood per sample rises by
        less than ``tol`` times the number of features.
    random_seed
        Seed of the folds.

    Returns
    -------
    NoiseRemainder

    Raises
    ------
    ValueError
        For a fit with missing values (``missing="per-feature"``: the factors need complete
        residuals), a rank that is not a non-negative integer or too large for the data (the
        number of factors must leave the model identified, ``(m − r)² ≥ m + r``, and be below
        the number of residual degrees of freedom; with cross-validation, those of the
        training folds), ``n_folds`` outside [2, n], and the errors of
        :func:`~bayeshier_pymc.noise.tree_noise`.
    """
    tree = tree_noise(fit, hierarchy, pooling=pooling, min_own_share=min_own_share)
    if tree.own_by_covariate is not None:
        raise ValueError(
            "a low-rank noise remainder needs complete residuals; this stage-1 fit has missing "
            "values (missing='per-feature'). Use tree_noise alone."
        )
    n_obs, n_features = fit.residuals.shape
    divisor = residual_divisor(fit.n_obs, fit.X.shape[1], fit.dof)
    # rows scaled so that Y'Y / n estimates Σ (a residual row has covariance (1 - h_ii) Σ)
    residuals = fit.residuals.to_numpy() * np.sqrt(n_obs / divisor)
    shared = _tree_columns(tree)
    floor = min_own_share * fit.sigma.to_numpy()
    em = _EMSettings(max_iter, tol)
    if rank == "cv":
        rank, table = _cross_validated_rank(
            residuals, shared, floor, max_rank, n_folds, divisor, em, random_seed
        )
    else:
        _check_rank(rank, n_features, divisor, "rank")
        table = None
    loadings, own = _fit_factors(residuals, shared, floor, rank, em)
    residual = NodeVariances(tree.residual.top, tree.residual.groups, own)
    return NoiseRemainder(replace(tree, residual=residual), loadings, table)


def conditional_variance_inflation(
    fit: MLMFit,
    hierarchy: Hierarchy,
    remainder: NoiseRemainder,
    *,
    n_bootstrap: int = 10,
    random_seed: int = 0,
) -> np.ndarray:
    """Per feature, how far a remainder estimated from these samples understates its noise.

    Stage 2 uses ``Σ̂`` to tell each feature's noise from the others': the conditional
    variance ``1 / (Σ̂⁻¹)_jj`` is what remains of feature j's noise once the other features'
    estimates are seen. Factors estimated from tens of samples predict that noise worse than
    they claim, so the conditional variances are too small and the intervals too short even
    where r factors would describe ``Σ`` well (``bench_factor_effects.py --population``).
    This estimates the shortfall by parametric bootstrap: residuals drawn from ``N(0, Σ̂)``
    with the fit's design and sample size are refitted at the same rank (``Σ̂*``, precision
    ``P*``); the error of feature j's conditional prediction from ``P*`` has variance
    ``(P* Σ̂ P*)_jj / P*_jj²`` under ``Σ̂``, against the claimed ``1 / P*_jj``, and their ratio
    averaged over the refits is feature j's inflation ``k_j``. ``diag(√k) Σ̂ diag(√k)`` has
    conditional variances ``k_j / (Σ̂⁻¹)_jj`` and the same form (tree plus factors, each
    feature rescaled). Dense m × m algebra: small m only.

    Parameters
    ----------
    fit
        The stage-1 fit the remainder was estimated from (its design ``X`` is reused).
    hierarchy
        The features' annotation tree.
    remainder
        :func:`noise_remainder`'s estimate from ``fit``; its rank is refitted (with
        :func:`noise_remainder`'s default settings).
    n_bootstrap
        Number of parametric-bootstrap refits.
    random_seed
        Seed of the bootstrap residuals.

    Returns
    -------
    numpy.ndarray
        ``k``, one inflation per feature in ``remainder.features``' order.

    Raises
    ------
    ValueError
        For ``n_bootstrap`` below 1.
    """
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be a positive integer, got {n_bootstrap!r}.")
    rng = np.random.default_rng(random_seed)
    covariance = remainder.covariance()
    factor = np.linalg.cholesky(covariance)
    ratios = np.empty((n_bootstrap, covariance.shape[0]))
    for draw in range(n_bootstrap):
        errors = rng.standard_normal((fit.n_obs, covariance.shape[0])) @ factor.T
        response = pd.DataFrame(errors, index=fit.Y.index, columns=remainder.features)
        refit = mlm(response, fit.X, x_intercept=False, dof=fit.dof)
        precision = np.linalg.inv(
            noise_remainder(refit, hierarchy, rank=remainder.rank).covariance()
        )
        diagonal = np.diag(precision)
        ratios[draw] = np.einsum("ij,jk,ki->i", precision, covariance, precision) / diagonal
    return ratios.mean(axis=0)


@dataclass(frozen=True)
class _EMSettings:
    max_iter: int
    tol: float


def _check_rank(rank: object, n_features: int, n_samples: int, name: str) -> None:
    """A clear error unless ``rank`` is an identified number of factors for these data."""
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
        raise ValueError(f"{name} must be a non-negative integer or 'cv', got {rank!r}.")
    if rank < 0:
        raise ValueError(f"{name} must be non-negative, got {rank}.")
    largest = _largest_rank(n_features, n_samples)
    if rank > largest:
        raise ValueError(
            f"{name} {rank} is too large: with {n_features} features and {n_samples} residual "
            f"degrees of freedom at most {largest} factors are identified "
            "((m - r)² ≥ m + r and r < the degrees of freedom)."
        )


def _largest_rank(n_features: int, n_samples: int) -> int:
    """The largest r with (m − r)² ≥ m + r and r < n_samples."""
    rank = 0
    while rank + 1 < n_samples and (n_features - rank - 1) ** 2 >= n_features + rank + 1:
        rank += 1
    return rank


def _tree_columns(tree: TreeNoise) -> np.ndarray:
    """``A``: per node of positive shared variance, its features' indicator times its sd."""
    hierarchy = tree.hierarchy
    columns = []
    if tree.residual.top > 0:
        columns.append(np.full((hierarchy.n_features, 1), np.sqrt(tree.residual.top)))
    for level, variances in enumerate(tree.residual.groups):
        codes = hierarchy.membership(level)
        kept = np.flatnonzero(variances > 0)
        indicator = codes[:, None] == kept[None, :]
        columns.append(indicator * np.sqrt(variances[kept])[None, :])
    return np.hstack(columns) if columns else np.zeros((hierarchy.n_features, 0))


@dataclass(frozen=True)
class _Posterior:
    """Per-sample posterior of the latent factors z = (η, f): mean (n × K) and covariance."""

    mean: np.ndarray
    covariance: np.ndarray
    log_likelihood: float


def _latent_posterior(residuals: np.ndarray, columns: np.ndarray, own: np.ndarray) -> _Posterior:
    """E-step: z | e ~ N(V Bᵀ Ψ⁻¹ e, V), V = (I + Bᵀ Ψ⁻¹ B)⁻¹, and the mean log-likelihood.

    ``log det Σ = Σ log ψ − log det V`` and ``eᵀ Σ⁻¹ e = eᵀ Ψ⁻¹ e − eᵀ Ψ⁻¹ B V Bᵀ Ψ⁻¹ e``
    (Woodbury), so nothing m × m is formed.
    """
    weighted = columns / own[:, None]
    precision = np.eye(columns.shape[1]) + columns.T @ weighted
    factor = np.linalg.cholesky(precision)
    projected = residuals @ weighted
    solved = np.linalg.solve(factor, projected.T)
    mean = np.linalg.solve(factor.T, solved).T
    identity = np.eye(columns.shape[1])
    covariance = np.linalg.solve(factor.T, np.linalg.solve(factor, identity))
    quadratic = np.sum(residuals**2 / own, axis=1) - np.sum(solved**2, axis=0)
    log_det = np.sum(np.log(own)) + 2.0 * np.sum(np.log(np.diag(factor)))
    n_features = residuals.shape[1]
    log_likelihood = -0.5 * float(np.mean(quadratic) + log_det + n_features * LOG_2PI)
    return _Posterior(mean, covariance, log_likelihood)


def _fit_factors(
    residuals: np.ndarray, shared: np.ndarray, floor: np.ndarray, rank: int, em: _EMSettings
) -> tuple[np.ndarray, np.ndarray]:
    """EM for ``L`` (m × rank) and ``Ψ`` with the tree's columns ``shared`` held fixed."""
    n_obs, n_features = residuals.shape
    n_shared = shared.shape[1]
    variance = np.mean(residuals**2, axis=0)
    own = np.maximum(variance - np.sum(shared**2, axis=1), floor)
    loadings = _initial_loadings(residuals, shared, own, rank)
    previous = -np.inf
    for _ in range(em.max_iter):
        columns = np.hstack([shared, loadings])
        posterior = _latent_posterior(residuals, columns, own)
        if posterior.log_likelihood - previous < em.tol * n_features:
            break
        previous = posterior.log_likelihood
        second = posterior.covariance + posterior.mean.T @ posterior.mean / n_obs
        cross = residuals.T @ posterior.mean / n_obs
        if rank:
            factors = slice(n_shared, None)
            target = cross[:, factors] - shared @ second[:n_shared, factors]
            loadings = np.linalg.solve(second[factors, factors], target.T).T
            columns = np.hstack([shared, loadings])
        fitted = np.sum((columns @ second) * columns, axis=1)
        own = np.maximum(variance - 2.0 * np.sum(columns * cross, axis=1) + fitted, floor)
    return loadings, own


def _initial_loadings(
    residuals: np.ndarray, shared: np.ndarray, own: np.ndarray, rank: int
) -> np.ndarray:
    """Starting ``L``: the leading right singular vectors of what the tree's posterior leaves."""
    if rank == 0:
        return np.zeros((residuals.shape[1], 0))
    tree_part = _latent_posterior(residuals, shared, own).mean @ shared.T
    remainder = (residuals - tree_part) / np.sqrt(own)
    _, values, vectors = np.linalg.svd(remainder, full_matrices=False)
    scale = np.sqrt(np.maximum(values[:rank] ** 2 / residuals.shape[0] - 1.0, 1e-2))
    return np.sqrt(own)[:, None] * vectors[:rank].T * scale[None, :]


def _cross_validated_rank(
    residuals: np.ndarray,
    shared: np.ndarray,
    floor: np.ndarray,
    max_rank: int,
    n_folds: int,
    divisor: int,
    em: _EMSettings,
    random_seed: int,
) -> tuple[int, pd.DataFrame]:
    """The rank with the highest held-out log-likelihood, and the table of every rank's."""
    n_obs, n_features = residuals.shape
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer):
        raise ValueError(f"n_folds must be an integer, got {n_folds!r}.")
    if not 2 <= n_folds <= n_obs:
        raise ValueError(f"n_folds must lie in [2, {n_obs}] (the samples), got {n_folds}.")
    training = divisor - int(np.ceil(n_obs / n_folds))
    _check_rank(max_rank, n_features, training, "max_rank")
    folds = np.random.default_rng(random_seed).permutation(n_obs) % n_folds
    scores = np.empty((max_rank + 1, n_folds))
    for fold in range(n_folds):
        train, test = residuals[folds != fold], residuals[folds == fold]
        for rank in range(max_rank + 1):
            loadings, own = _fit_factors(train, shared, floor, rank, em)
            columns = np.hstack([shared, loadings])
            scores[rank, fold] = _latent_posterior(test, columns, own).log_likelihood
    table = pd.DataFrame(
        {
            "held_out_loglik": scores.mean(axis=1),
            "se": scores.std(axis=1, ddof=1) / np.sqrt(n_folds),
        },
        index=pd.RangeIndex(max_rank + 1, name="rank"),
    )
    return int(np.argmax(scores.mean(axis=1))), table
