"""Build the stage-2 PyMC model: a pure function of estimates, tree, priors and parameterisation.

Two forms of the same posterior are available. With correlated estimates (a
:class:`NoiseModel`: tree-structured noise, see :mod:`bayeshier_pymc.noise`) both use the same
likelihood: the collapsed model's tree pass carries the shared-noise variances, and the full
model's observed ``b`` has log density log N(b; θ, Σ), the same O(m) pass over b − θ (one
``pm.CustomDist`` over every covariate and feature, whose random draws give posterior
predictive draws of b with the correlated noise).

``"collapsed"`` (the default for NUTS)
    Given the scales τ, every other quantity is Gaussian on a tree, so θ0, the group means and
    θ are integrated out exactly (:mod:`bayeshier_pymc.gaussian_tree`) and NUTS samples only
    ``tau`` (one scale per covariate and level): log p(b | τ) and its gradient are one compiled
    pass (:mod:`bayeshier_pymc.gaussian_tree.log_marginal_op`). θ0, the group means and θ are
    then drawn exactly from their Gaussian conditional given each τ draw. No funnel remains,
    whatever the number of features per group.

``"centered"`` / ``"noncentered"`` / ``"auto"`` / a per-level mapping (the full model)
    Every quantity is a PyMC variable. ``"auto"`` chooses per level from the data: a level is
    centred when its units are strongly informed (the median over units of τ̂² × the data
    precision of the unit exceeds 1, with τ̂ the empirical-Bayes scales) and non-centred
    otherwise. The Gibbs step method samples the centred form.

Under a heavy-tailed group prior (``Priors.group_prior`` ``"horseshoe"`` or ``"student_t"``)
every group g of every annotation level has a local scale λ_g per covariate and the sd
τ_l λ_g around its parent (:func:`_local_scales`: ``<level>_local_scale``, and for Student-t
the free ``<level>_local_variance`` λ² whose square root it is). Both forms keep them as model
variables: the collapsed model's NUTS samples τ and λ, its density log p(b | τ, λ) given by
:func:`~bayeshier_pymc.gaussian_tree.log_marginal_op.log_marginal_with_local_scales`, and the
rest is drawn given both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from scipy import optimize

from bayeshier_pymc.estimates import Estimates, fill_missing
from bayeshier_pymc.gaussian_tree import (
    NodeNoise,
    TreeIndex,
    draw_noise,
    noise_log_density,
    upward_pass,
)
from bayeshier_pymc.gaussian_tree.log_marginal_op import (
    log_marginal,
    log_marginal_with_local_scales,
)
from bayeshier_pymc.gaussian_tree.pytensor_ops import PYTENSOR_OPS
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.priors import Priors

__all__ = [
    "FULL_PARAMETERIZATIONS",
    "NoiseModel",
    "build_model",
    "choose_centering",
    "empirical_bayes_scales",
    "group_mean_name",
    "largest_prior_variance",
    "local_scale_name",
    "local_variance_name",
    "model_coords",
    "scale_levels",
]

Centering = Literal["centered", "noncentered"]
Parameterization = str | Mapping[str, Centering]
FULL_PARAMETERIZATIONS = ("centered", "noncentered", "auto")


@dataclass(frozen=True, eq=False)
class NoiseModel:
    """Tree-structured noise of the estimates, in the form the likelihood uses.

    Attributes
    ----------
    tree
        The tree of the noise (at least as deep as the effect tree; its finest levels are the
        effect tree's).
    shared
        Shared-noise variances at its nodes, covariates leading.
    own
        Each estimate's own noise variance (covariate, feature).
    """

    tree: TreeIndex
    shared: NodeNoise
    own: np.ndarray

    def draw(
        self, mean: np.ndarray, rng: np.random.Generator, size: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """``mean`` (..., covariate, feature) plus one draw of the noise of the estimates.

        Each covariate's noise is its own variance per feature plus, shared by the features
        below them, one normal per node of the tree and one for the top.
        """
        shape = np.broadcast_shapes(mean.shape, tuple(size or ()))
        lead = shape[: len(shape) - self.own.ndim]
        return mean + draw_noise(self.own, self.tree, self.shared, rng, lead=lead)

    def pad(self, tau: pt.TensorVariable, n_levels: int) -> pt.TensorVariable:
        """Scales (covariate, ``n_levels``) with zero columns for the noise tree's unused levels."""
        missing = self.tree.depth + 1 - n_levels
        if missing == 0:
            return tau
        return pt.concatenate([tau, pt.zeros((self.own.shape[0], missing))], axis=1)


def largest_prior_variance(priors: Priors) -> float:
    """The largest squared prior location or scale: θ0's mean and sd, every τ's scale.

    What a missing cell's variance must dwarf (:func:`~bayeshier_pymc.estimates.fill_missing`).
    """
    values = [np.ravel(priors.mu0), np.ravel(priors.s0), np.ravel(priors.tau_scale)]
    return float(np.max(np.square(np.concatenate(values))))


def algebra_data(
    b: np.ndarray, variance: np.ndarray, priors: Priors
) -> tuple[np.ndarray, np.ndarray]:
    """Estimates and variances the tree algebra runs on: missing cells (NaN ``b``) filled.

    The one place the missing cells' stand-ins are chosen for these priors
    (:func:`~bayeshier_pymc.estimates.fill_missing`).
    """
    return fill_missing(b, variance, np.isnan(b), largest_prior_variance(priors))


def _independent_algebra_data(
    estimates: Estimates, priors: Priors
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`algebra_data` of independent estimates (variances se²)."""
    return algebra_data(estimates.estimate.to_numpy(), estimates.se.to_numpy() ** 2, priors)


def _given_se(estimates: Estimates) -> np.ndarray:
    """The standard errors for the model's ``se`` data: ``inf`` in a missing cell.

    Never the algebra's finite stand-in; ``inf`` because PyMC's data take no NaN.
    """
    return np.nan_to_num(estimates.se.to_numpy(), nan=np.inf)


def scale_levels(hierarchy: Hierarchy | None) -> tuple[str, ...]:
    """Coordinates of the ``level`` dim of ``tau``: ``"feature"`` then each annotation level.

    Without pooling (``hierarchy=None``) only ``"feature"``, the level of the priors' one scale.
    """
    return ("feature", *(hierarchy.levels if hierarchy is not None else ()))


def group_mean_name(level: str) -> str:
    """Name of the posterior variable holding the means of the groups at ``level``."""
    return f"{level}_mean"


def local_scale_name(level: str) -> str:
    """Name of the posterior variable holding the local scales λ of the groups at ``level``."""
    return f"{level}_local_scale"


def local_variance_name(level: str) -> str:
    """Name of the free variable λ² of the groups at ``level`` under a Student-t group prior."""
    return f"{level}_local_variance"


def model_coords(estimates: Estimates, hierarchy: Hierarchy) -> dict[str, list[object]]:
    """Coordinates shared by the model and the InferenceData."""
    coords: dict[str, list[object]] = {
        "covariate": estimates.covariates.tolist(),
        "feature": estimates.features.tolist(),
        "level": list(scale_levels(hierarchy)),
    }
    for level, labels in zip(hierarchy.levels, hierarchy.groups, strict=True):
        coords[level] = labels.tolist()
    return coords


def build_model(
    estimates: Estimates,
    hierarchy: Hierarchy | None,
    priors: Priors,
    parameterization: Parameterization = "collapsed",
    noise: NoiseModel | None = None,
) -> pm.Model:
    """Build the PyMC model of the shrinkage posterior.

    Parameters
    ----------
    estimates
        Stage-1 estimates and standard errors, aligned with ``hierarchy``.
    hierarchy
        The tree, truncated to the depth used; ``None`` means no pooling (each θ_j has the
        fixed prior N(mu0, s0²)).
    priors
        Resolved priors (``priors.scale_levels`` must match the tree).
    parameterization
        ``"collapsed"`` (default), ``"centered"``, ``"noncentered"``, ``"auto"``, or a mapping
        from scale level (``"feature"`` or an annotation level) to ``"centered"`` /
        ``"noncentered"``. See the module docstring.
    noise
        Tree-structured noise of the estimates; ``None``: independent, b ~ N(θ, se²).

    Returns
    -------
    pymc.Model
        With data containers ``b`` and ``se`` (the standard errors given; ``inf`` in a
        missing cell, an estimate of infinite variance) and dims ``covariate``,
        ``feature``, ``level`` and one per annotation level.
    """
    b, var_b = _independent_algebra_data(estimates, priors)
    se = np.sqrt(var_b)
    if hierarchy is None:
        return _no_pooling_model(estimates, priors, noise)
    coords = model_coords(estimates, hierarchy)
    with pm.Model(coords=coords) as model:
        pm.Data("se", _given_se(estimates), dims=("covariate", "feature"))
        tau = pm.HalfCauchy("tau", beta=priors.tau_scale, dims=("covariate", "level"))
        local_scales = _local_scales(hierarchy, priors)
        if parameterization == "collapsed":
            b_data = pm.Data("b", b, dims=("covariate", "feature"))
            log_density = _collapsed_log_density(
                b_data, tau, local_scales, var_b, hierarchy, priors, noise
            )
            pm.Potential("b_marginal_loglik", log_density.sum())
        else:
            centering = resolve_centering(parameterization, estimates, hierarchy, priors)
            theta = _full_tree(tau, local_scales, hierarchy, priors, centering)
            _likelihood(theta, b, se, noise)
    return model


def _collapsed_log_density(
    b: pt.TensorVariable,
    tau: pt.TensorVariable,
    local_scales: list[pt.TensorVariable] | None,
    var_b: np.ndarray,
    hierarchy: Hierarchy,
    priors: Priors,
    noise: NoiseModel | None,
) -> pt.TensorVariable:
    """Log p(b | τ) (or p(b | τ, λ) under a heavy-tailed group prior) of every covariate."""
    if noise is None:
        tree, scales, variances, shared = TreeIndex.from_hierarchy(hierarchy), tau, var_b, None
    else:
        tree, variances, shared = noise.tree, noise.own, noise.shared
        scales = noise.pad(tau, hierarchy.depth + 1)
    if local_scales is None:
        return log_marginal(b, scales, variances, tree, priors.mu0, priors.s0, shared)
    return log_marginal_with_local_scales(
        b, scales, local_scales, variances, tree, priors.mu0, priors.s0, shared
    )


def _likelihood(
    theta: pt.TensorVariable, b: np.ndarray, se: np.ndarray, noise: NoiseModel | None
) -> None:
    """Add the likelihood: b ~ N(θ, se²) independently, or N(θ, Σ) with tree-structured Σ."""
    if noise is None:
        pm.Normal("b", mu=theta, sigma=se, observed=b, dims=("covariate", "feature"))
        return

    def log_density(value: pt.TensorVariable, mean: pt.TensorVariable) -> pt.TensorVariable:
        # static shapes, which the JAX backend needs for the tree's segment sums
        residual = pt.specify_shape(value - mean, noise.own.shape)
        return noise_log_density(residual, noise.own, noise.tree, noise.shared, PYTENSOR_OPS).sum()

    # one multivariate variable over (covariate, feature): its noise parameters are per
    # covariate, so it has no batch dimension
    pm.CustomDist(
        "b",
        theta,
        logp=log_density,
        random=lambda mean, rng, size: noise.draw(mean, rng, size),
        signature="(c,m)->(c,m)",
        observed=b,
        dims=("covariate", "feature"),
    )


def _no_pooling_model(estimates: Estimates, priors: Priors, noise: NoiseModel | None) -> pm.Model:
    coords = {"covariate": estimates.covariates.tolist(), "feature": estimates.features.tolist()}
    b, var_b = _independent_algebra_data(estimates, priors)
    with pm.Model(coords=coords) as model:
        se = np.sqrt(var_b)
        pm.Data("se", _given_se(estimates), dims=("covariate", "feature"))
        theta = pm.Normal(
            "theta", priors.mu0[:, None], priors.s0[:, None], dims=("covariate", "feature")
        )
        _likelihood(theta, b, se, noise)
    return model


def _local_scales(hierarchy: Hierarchy, priors: Priors) -> list[pt.TensorVariable] | None:
    """Add the local scales λ (covariate, group) of every annotation level, finest first.

    ``None`` under the normal group prior (λ ≡ 1, no variable) or without annotation levels.
    Horseshoe: the free ``<level>_local_scale`` ~ HalfCauchy(1); Student-t: the free
    ``<level>_local_variance`` λ² ~ InvGamma(ν/2, ν/2) and ``<level>_local_scale`` its
    square root.
    """
    if not priors.heavy_tailed or not hierarchy.levels:
        return None
    scales = []
    for level in hierarchy.levels:
        dims = ("covariate", level)
        if priors.group_prior == "horseshoe":
            scale = pm.HalfCauchy(local_scale_name(level), beta=1.0, dims=dims)
        else:
            half_df = priors.group_df / 2.0
            variance = pm.InverseGamma(
                local_variance_name(level), alpha=half_df, beta=half_df, dims=dims
            )
            scale = pm.Deterministic(local_scale_name(level), pt.sqrt(variance), dims=dims)
        scales.append(scale)
    return scales


def _full_tree(
    tau: pt.TensorVariable,
    local_scales: list[pt.TensorVariable] | None,
    hierarchy: Hierarchy,
    priors: Priors,
    centering: Mapping[str, Centering],
) -> pt.TensorVariable:
    """Add θ0, the group means (coarsest first) and θ; return θ.

    A group's sd around its parent is τ_l, times its local scale λ_g under a heavy-tailed
    group prior (``local_scales``, finest level first).
    """
    parent = pm.Normal("mu", priors.mu0, priors.s0, dims="covariate")[:, None]
    names = scale_levels(hierarchy)
    for level in range(hierarchy.depth, -1, -1):
        name = "theta" if level == 0 else group_mean_name(hierarchy.levels[level - 1])
        dim = "feature" if level == 0 else hierarchy.levels[level - 1]
        loc = parent[:, hierarchy.parents[level]] if level < hierarchy.depth else parent
        scale = tau[:, level][:, None]
        if level > 0 and local_scales is not None:
            scale = scale * local_scales[level - 1]
        if centering[names[level]] == "centered":
            parent = pm.Normal(name, loc, scale, dims=("covariate", dim))
        else:
            offset = pm.Normal(f"{name}_offset", 0.0, 1.0, dims=("covariate", dim))
            parent = pm.Deterministic(name, loc + scale * offset, dims=("covariate", dim))
    return parent


def resolve_centering(
    parameterization: Parameterization,
    estimates: Estimates,
    hierarchy: Hierarchy,
    priors: Priors,
) -> dict[str, Centering]:
    """The centring of every scale level for a full-model ``parameterization``."""
    names = scale_levels(hierarchy)
    if isinstance(parameterization, Mapping):
        unknown = sorted(set(parameterization) - set(names))
        bad = sorted({v for v in parameterization.values() if v not in ("centered", "noncentered")})
        if unknown or bad:
            raise ValueError(
                f"a per-level parameterization maps levels {names!r} to 'centered' or "
                f"'noncentered'; got unknown levels {unknown!r} / values {bad!r}."
            )
        return {name: parameterization.get(name, "noncentered") for name in names}
    if parameterization in ("centered", "noncentered"):
        return dict.fromkeys(names, parameterization)
    if parameterization == "auto":
        return choose_centering(estimates, hierarchy, priors)
    raise ValueError(
        f"unknown parameterization {parameterization!r}; use 'collapsed', "
        f"{', '.join(repr(p) for p in FULL_PARAMETERIZATIONS)} or a per-level mapping."
    )


def empirical_bayes_scales(
    estimates: Estimates, hierarchy: Hierarchy, priors: Priors
) -> np.ndarray:
    """Posterior-mode scales τ̂ (covariate × level) of the collapsed model, on the log scale."""
    b, var_b = _independent_algebra_data(estimates, priors)
    tree = TreeIndex.from_hierarchy(hierarchy)
    shape = (b.shape[0], hierarchy.depth + 1)

    def negative_log_posterior(log_tau: np.ndarray) -> float:
        tau = np.exp(log_tau.reshape(shape))
        log_marginal = upward_pass(b, var_b, tau, tree, priors.mu0, priors.s0).log_marginal
        # HalfCauchy prior on τ plus the Jacobian of the log transform
        log_prior = np.log(tau) - np.log1p((tau / priors.tau_scale) ** 2)
        return -float(log_marginal.sum() + log_prior.sum())

    start = np.log(np.full(shape, 0.5 * np.sqrt(np.nanmean(estimates.se.to_numpy() ** 2))))
    result = optimize.minimize(negative_log_posterior, start.ravel(), method="L-BFGS-B")
    return np.exp(result.x.reshape(shape))


def choose_centering(
    estimates: Estimates, hierarchy: Hierarchy, priors: Priors
) -> dict[str, Centering]:
    """Centre a level when its units are strongly informed by the data below them.

    A unit (a θ_j or a group mean) is strongly informed when its prior variance τ̂² exceeds
    the variance ``v`` of the message from the data below it; the level is centred when the
    median over units and covariates of ``τ̂² / v`` exceeds 1.
    """
    tau_hat = empirical_bayes_scales(estimates, hierarchy, priors)
    b, var_b = _independent_algebra_data(estimates, priors)
    messages = upward_pass(
        b,
        var_b,
        tau_hat,
        TreeIndex.from_hierarchy(hierarchy),
        priors.mu0,
        priors.s0,
    )
    choice: dict[str, Centering] = {}
    for level, name in enumerate(scale_levels(hierarchy)):
        ratio = tau_hat[:, level][:, None] ** 2 / messages.v[level]
        if level == 0:  # a missing estimate informs nothing: only the observed count
            ratio = ratio[~estimates.missing.to_numpy()]
        choice[name] = "centered" if np.median(ratio) > 1.0 else "noncentered"
    return choice
