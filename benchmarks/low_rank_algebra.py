"""The tree algebra with a low-rank remainder of the noise: Woodbury on top of the tree pass.

With a remainder (``noise_remainder.py`` beside it) the estimates of one covariate are

    b = T + L f + ε,   f ~ N(0, I_r),

with ``T + ε`` the tree model of :mod:`bayeshier_pymc.gaussian_tree` (effects, shared noise at
the nodes and each feature's own noise ``ε``, covariance ``C`` given τ, mean ``mu0``) and ``L``
the covariate's loadings (``√c_kk`` times the residual loadings). Given τ, ``b ~ N(mu0, C +
L Lᵀ)`` and, by Woodbury and the matrix determinant lemma,

    log p(b | τ) = log N(b; mu0, C) − ½ log det M + ½ uᵀ M⁻¹ u,
    M = I + Lᵀ C⁻¹ L,   u = Lᵀ C⁻¹ (b − mu0),

while ``f | b, τ ~ N(M⁻¹ u, M⁻¹)``; given f, the tree's exact draws run on ``b − L f``. Both
need ``C⁻¹ x`` only, which the tree gives in O(m) without forming C: with ``K`` the
covariance of the totals T, ``C = K + diag(own)`` and ``E[T | x] = K C⁻¹ x``, so
``C⁻¹ x = (x − E[T | x]) / own``, the posterior mean of the totals from one upward and one
downward pass of ``x`` (prior mean 0). ``b − mu0`` and the r columns of L are r + 1 such
passes: O(m r) per row.

Research code of ``bench_low_rank.py`` (NumPy); no sampler uses it (see
``docs/benchmarks/low_rank.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayeshier_pymc.gaussian_tree import (
    Messages,
    NodeNoise,
    TreeIndex,
    level_variance,
    posterior_normal,
    top_variance,
    upward_pass,
)

__all__ = ["LowRankMarginal", "leaf_total_means", "low_rank_marginal", "tree_solve"]


def leaf_total_means(
    messages: Messages,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    noise: NodeNoise | None = None,
) -> np.ndarray:
    """E[T_j | b, τ] for every feature: the posterior mean of its total, top-down.

    T_j is θ_j plus the shared noise on its path (θ_j itself without ``noise``); ``messages``
    is :func:`~bayeshier_pymc.gaussian_tree.upward_pass` of the same arguments. Returns
    shape ``(..., m)``.
    """
    mean, _ = posterior_normal(mu0, top_variance(s0, noise), messages.y[-1], messages.v[-1])
    parent = mean[..., None]
    for level in range(tree.depth, -1, -1):
        prior_var = level_variance(tau, level, noise)
        parent, _ = posterior_normal(
            parent[..., tree.parent_of(level)], prior_var, messages.y[level], messages.v[level]
        )
    return parent


def tree_solve(
    x: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    tree: TreeIndex,
    s0: float,
    noise: NodeNoise | None = None,
) -> np.ndarray:
    """``C⁻¹ x`` for the tree model's marginal covariance C of b given τ, in O(m).

    ``x`` has shape ``(..., m)``; the other arguments broadcast against its leading axes as
    in :func:`~bayeshier_pymc.gaussian_tree.upward_pass`.
    """
    messages = upward_pass(x, var_b, tau, tree, 0.0, s0, noise=noise)
    return (x - leaf_total_means(messages, tau, tree, 0.0, s0, noise)) / var_b


@dataclass(frozen=True)
class LowRankMarginal:
    """log p(b | τ) with a low-rank remainder, and the factors' posterior given τ.

    Attributes
    ----------
    log_marginal
        Shape ``(...,)``.
    factor_mean, factor_covariance
        ``f | b, τ ~ N(mean, covariance)``, shapes ``(..., r)`` and ``(..., r, r)``.
    """

    log_marginal: np.ndarray
    factor_mean: np.ndarray
    factor_covariance: np.ndarray


def low_rank_marginal(
    b: np.ndarray,
    var_b: np.ndarray,
    tau: np.ndarray,
    tree: TreeIndex,
    mu0: float,
    s0: float,
    loadings: np.ndarray,
    noise: NodeNoise | None = None,
) -> LowRankMarginal:
    """The tree pass plus the Woodbury correction of a remainder ``L f`` (module docstring).

    Parameters
    ----------
    b, var_b, tau, tree, mu0, s0, noise
        As in :func:`~bayeshier_pymc.gaussian_tree.upward_pass`, ``b`` of shape ``(..., m)``.
    loadings
        ``L`` of each row, shape ``(..., m, r)``.

    Returns
    -------
    LowRankMarginal
    """
    rank = loadings.shape[-1]
    # b − mu0 and the columns of L as r + 1 right-hand sides of one batched tree solve
    rhs = np.concatenate([(b - mu0)[..., None, :], np.swapaxes(loadings, -1, -2)], axis=-2)
    lead_noise = None
    if noise is not None:
        lead_noise = NodeNoise(
            tuple(np.asarray(g)[..., None, :] for g in noise.groups),
            np.asarray(noise.top)[..., None],
        )
    solved = tree_solve(
        rhs, np.asarray(var_b)[..., None, :], tau[..., None, :], tree, s0, lead_noise
    )
    # Lᵀ C⁻¹ (b − mu0) and Lᵀ C⁻¹ L
    u = (solved[..., :1, :] @ loadings)[..., 0, :]
    gram = solved[..., 1:, :] @ loadings
    gram = 0.5 * (gram + np.swapaxes(gram, -1, -2))
    factor = np.linalg.cholesky(np.eye(rank) + gram)
    whitened = np.linalg.solve(factor, u[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
    tree_part = upward_pass(b, var_b, tau, tree, mu0, s0, noise=noise).log_marginal
    covariance = np.linalg.inv(np.eye(rank) + gram)
    mean = np.einsum("...rs,...s->...r", covariance, u)
    return LowRankMarginal(
        tree_part - 0.5 * log_det + 0.5 * np.sum(whitened * whitened, axis=-1),
        mean,
        covariance,
    )
