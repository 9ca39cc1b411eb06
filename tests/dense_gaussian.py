"""Dense reference for the tree model given τ, with an arbitrary noise covariance (small m).

The model, every τ fixed:

    b ~ N(θ, N)  (N: any m × m noise covariance; diag(s²) is today's independent case),
    θ_j ~ N(u¹_h(j), τ_0²), u¹_h ~ N(u²_g(h), τ_1²), …, u^D ~ N(θ0, τ_D²), θ0 ~ N(mu0, s0²).

Every unit is θ0 plus the deviations along its path, so the units z = (θ0, level-D groups, …,
level-1 groups, θ) are ``z = mu0 + L w`` with independent ``w`` and ``L`` the 0/1 ancestry
matrix. Gaussian conditioning on ``b = S z + e`` (S picks θ) gives the exact posterior of every
unit and the exact log marginal p(b | τ), by dense linear algebra, O(m³). Tests of the O(m)
tree algebra with shared-noise variances (issue 14) compare against this; it is itself tested
against the independent-noise tree algebra in ``test_dense_gaussian.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from bayeshier_pymc.gaussian_tree import NodeNoise
from bayeshier_pymc.hierarchy import Hierarchy


@dataclass(frozen=True)
class DensePosterior:
    """Exact posterior of the units given b and τ, and the log marginal likelihood.

    ``mean`` and ``covariance`` run over the units in the order θ0, the groups of the coarsest
    level, …, the groups of the finest level, θ; :meth:`part` picks one block.
    """

    mean: np.ndarray
    covariance: np.ndarray
    log_marginal: float
    blocks: dict[str, slice]

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of ``"mu"`` (θ0), ``"theta"`` or a level's group means."""
        block = self.blocks[name]
        return self.mean[block], self.covariance[block, block]


def prior_units(tree: Hierarchy, tau: np.ndarray, s0: float) -> tuple[np.ndarray, dict[str, slice]]:
    """Prior covariance of the units (θ0, coarsest groups, …, finest groups, θ) and the blocks.

    Parameters
    ----------
    tree
        The tree (depth D).
    tau
        Scales, length D + 1: ``tau[0]`` of θ around its group, ``tau[d]`` of level-d groups.
    s0
        Prior sd of θ0.
    """
    tau = np.asarray(tau, dtype=float)
    if tau.shape != (tree.depth + 1,):
        raise ValueError(f"tau must have {tree.depth + 1} entries, got {tau.shape}.")
    # ancestry of each unit at each level: column block per level of w, top first
    sizes = [1, *tree.n_groups[::-1], tree.n_features]
    names = ["mu", *tree.levels[::-1], "theta"]
    variances = np.concatenate(
        [[s0**2], *(np.full(n, t**2) for n, t in zip(sizes[1:], tau[::-1], strict=True))]
    )
    offsets = np.cumsum([0, *sizes])
    blocks = {name: slice(offsets[i], offsets[i + 1]) for i, name in enumerate(names)}
    # parent (in unit numbering) of every unit below θ0
    parent = np.zeros(offsets[-1], dtype=np.intp)
    for level_from_top in range(2, len(sizes)):
        # these units are the groups of annotation index D - level_from_top (features: -1),
        # mapped up by parents[D - level_from_top + 1]; the units one level up hang from θ0
        up = tree.parents[tree.depth - level_from_top + 1]
        start, stop = offsets[level_from_top], offsets[level_from_top + 1]
        parent[start:stop] = offsets[level_from_top - 1] + up
    ancestry = np.eye(offsets[-1])
    for unit in range(1, offsets[-1]):
        ancestry[unit] += ancestry[parent[unit]]
    return (ancestry * variances) @ ancestry.T, blocks


def dense_posterior(
    b: np.ndarray,
    noise_covariance: np.ndarray,
    tau: np.ndarray,
    tree: Hierarchy,
    mu0: float,
    s0: float,
    observed: np.ndarray | None = None,
) -> DensePosterior:
    """Exact posterior of (θ0, group means, θ) and log p(b | τ) for any noise covariance.

    Parameters
    ----------
    b
        Estimates, length m.
    noise_covariance
        Their m × m noise covariance N.
    tau, tree, s0
        As in :func:`prior_units`.
    mu0
        Prior mean of θ0.
    observed
        Boolean mask of the estimates conditioned on (default: all); the others (missing
        cells) are left out of the data, and ``log_marginal`` is that of the observed ones.
    """
    prior, blocks = prior_units(tree, tau, s0)
    theta = np.arange(prior.shape[0])[blocks["theta"]]
    if observed is not None:
        theta, b = theta[observed], b[observed]
        noise_covariance = noise_covariance[np.ix_(observed, observed)]
    cov_units_b = prior[:, theta]
    cov_b = prior[np.ix_(theta, theta)] + noise_covariance
    gain = np.linalg.solve(cov_b, cov_units_b.T).T
    residual = b - mu0
    mean = mu0 + gain @ residual
    covariance = prior - gain @ cov_units_b.T
    log_marginal = stats.multivariate_normal(np.full(b.size, mu0), cov_b).logpdf(b)
    return DensePosterior(mean, covariance, float(log_marginal), blocks)


def tree_noise_covariance(hierarchy: Hierarchy, own: np.ndarray, noise: NodeNoise) -> np.ndarray:
    """The dense m × m tree-structured noise covariance of one row of ``noise``.

    Every pair shares the top's variance and that of every group they are both in; ``own``
    (length m) is added on the diagonal.
    """
    matrix = np.full((hierarchy.n_features,) * 2, float(noise.top))
    for level, variances in enumerate(noise.groups):
        codes = hierarchy.membership(level)
        matrix += (codes[:, None] == codes[None, :]) * variances[codes][:, None]
    return matrix + np.diag(own)


def marginal_covariance(
    noise_covariance: np.ndarray, tau: np.ndarray, tree: Hierarchy, s0: float
) -> np.ndarray:
    """Cov(b | τ) = Cov(θ | τ) + N."""
    prior, blocks = prior_units(tree, tau, s0)
    return prior[blocks["theta"], blocks["theta"]] + noise_covariance


def leave_one_out_log_predictive(
    b: np.ndarray,
    noise_covariance: np.ndarray,
    tau: np.ndarray,
    tree: Hierarchy,
    mu0: float,
    s0: float,
) -> np.ndarray:
    """log p(b_j | b_−j, τ) for every j, from the precision of the joint normal of b.

    With ``P = Cov(b)⁻¹``, ``b_j | b_−j ~ N(b_j − (P (b − mu0))_j / P_jj, 1 / P_jj)``
    (Bürkner, Gabry & Vehtari 2021, non-factorised normal models).
    """
    precision = np.linalg.inv(marginal_covariance(noise_covariance, tau, tree, s0))
    diagonal = np.diag(precision)
    mean = b - precision @ (b - mu0) / diagonal
    return stats.norm.logpdf(b, mean, 1.0 / np.sqrt(diagonal))
