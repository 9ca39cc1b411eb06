"""Replicated estimates: posterior and prior predictive draws of b under the model's noise.

Every fit carries a ``posterior_predictive`` group (:func:`add_posterior_predictive`, called
once by :func:`~bayeshier_pymc.sampling.finish` for every sampler), drawn after sampling (so
the collapsed model's ``pm.Potential`` plays no role): for each posterior draw, each estimate
b_j is replicated from the predictive its default pointwise log-likelihood scores, so that
``az.loo_pit(idata)`` checks each estimate against its leave-one-out predictive and
``az.plot_ppc(idata)`` compares the estimates with what the model predicts for them when each
is held out:

* independent estimates, pooled: N(parent, τ_w² + se_j²) given the draw of θ_j's parent and
  of τ_w (θ_j drawn afresh around its parent; ``b_marginal``), O(m) per draw;
* correlated estimates, or no pooling: p(b_j | b_−j, τ) given the draw of τ, the tree-noise
  leave-one-out predictive (:func:`~bayeshier_pymc.log_likelihood.leave_one_out`, which for
  a new fit draws them with the log-likelihood, from the same moments).
 Replicates θ_j + e drawn around
each θ_j's own posterior would reuse b_j twice: a metabolite's θ follows its estimate, and an
outlier or a heavy-tailed error would hide in its own replicate. :func:`prior_predictive`
draws every parameter from the prior and b from the noise
(:func:`~bayeshier_pymc.gaussian_tree.draw_noise`).
"""

from __future__ import annotations

from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from bayeshier_pymc._memory import store_array
from bayeshier_pymc._numba import compiled_kernel
from bayeshier_pymc.gaussian_tree import draw_noise
from bayeshier_pymc.inference_data import (
    cell_dataset,
    local_scale_draws,
    local_variance_draws,
    pointwise_draws,
    theta_parent_draws,
)
from bayeshier_pymc.log_likelihood import chunks, leave_one_out
from bayeshier_pymc.model import group_mean_name, local_scale_name, model_coords
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "PREDICTIVE_SEED_KEY",
    "add_posterior_predictive",
    "predictive_generator",
    "prior_predictive",
]

PREDICTIVE_SEED_KEY = 7
"""Spawn key of the predictive draws' generator under a run's seed: they use their own stream,
so adding them changes no posterior draw."""
DIMS = ("chain", "draw", "covariate", "feature")


def predictive_generator(random_seed: Any) -> np.random.Generator:
    """The predictive draws' generator for a run seeded with ``random_seed`` (None: fresh)."""
    seed = None if random_seed is None or random_seed == "None" else int(random_seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(PREDICTIVE_SEED_KEY,)))


def add_posterior_predictive(
    idata: az.InferenceData,
    problem: ShrinkageProblem,
    rng: np.random.Generator,
    replicates: np.ndarray | None = None,
) -> az.InferenceData:
    """Add the ``posterior_predictive`` group (``b``, in θ's floating type) to a new fit.

    ``replicates`` (chain, draw, covariate, feature) are used when given (drawn with the
    leave-one-out log-likelihood, :func:`~bayeshier_pymc.log_likelihood.leave_one_out`);
    otherwise they are drawn here with ``rng`` (leave-one-out replicates without their log
    density, which needs no store then).
    """
    theta = idata.posterior["theta"].transpose(*DIMS)
    if replicates is None:
        if problem.pooled and not problem.correlated:
            replicates = _around_parents(idata.posterior, problem, rng, theta.dtype)
        else:
            tau = (
                idata.posterior["tau"].transpose(*DIMS[:3], "level").to_numpy()
                if problem.pooled
                else None
            )
            local = local_variance_draws(local_scale_draws(idata.posterior, problem), problem)
            replicates = leave_one_out(
                problem,
                tau,
                lead=theta.shape[:2],
                dtype=theta.dtype,
                rng=rng,
                log_density=False,
                local=local,
            )[1]
    draw_coords = {name: theta.coords[name].to_numpy() for name in DIMS[:2]}
    dataset = cell_dataset({"b": replicates}, problem, draw_coords)
    dataset.attrs.update(idata.posterior.attrs)
    idata.add_groups({"posterior_predictive": dataset})
    return idata


def _around_parents(
    posterior: xr.Dataset, problem: ShrinkageProblem, rng: np.random.Generator, dtype: Any
) -> np.ndarray:
    """Independent pooled fits: b_j ~ N(parent, τ_w² + se_j²) for every draw.

    The standard normals are drawn chain by chain in chunks of draws (the same stream as one
    call per chain) and a compiled kernel turns each chunk into replicates in place of the
    result (a store on ordinary pages, :func:`~bayeshier_pymc._memory.store_array`), so that
    no temporary is larger than a chunk.
    """
    draws = pointwise_draws(posterior, problem)
    parent_mean, parent_index = theta_parent_draws(draws, problem)
    parent_mean = np.ascontiguousarray(parent_mean, dtype=float)
    tau_w = np.ascontiguousarray(draws["tau"][..., 0])
    var_b = np.ascontiguousarray(problem.var_b, dtype=float)
    out = store_array(draws["theta"].shape, dtype)
    for chain, chunk in chunks(out.shape[:2], var_b.size):
        normals = rng.standard_normal(out[chain, chunk].shape)
        _replicates_around_parents(
            parent_mean[chain, chunk],
            parent_index,
            tau_w[chain, chunk],
            var_b,
            normals,
            out[chain, chunk],
        )
    return out


@compiled_kernel
def _replicates_around_parents(
    parent_mean: np.ndarray,
    parent_index: np.ndarray,
    tau_w: np.ndarray,
    var_b: np.ndarray,
    normals: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """out[s, k, j] = parent_mean[s, k, parent(j)] + sqrt(τ_w[s, k]² + s_kj²) · normals[s, k, j]."""
    n_draws, n_covariates, n_features = out.shape
    for s in range(n_draws):
        for k in range(n_covariates):
            tau_sq = tau_w[s, k] ** 2
            means = parent_mean[s, k]
            for j in range(n_features):
                sd = np.sqrt(tau_sq + var_b[k, j])
                out[s, k, j] = means[parent_index[j]] + sd * normals[s, k, j]


def prior_predictive(
    problem: ShrinkageProblem, draws: int, rng: np.random.Generator
) -> az.InferenceData:
    """Parameters drawn from the prior and replicated estimates drawn given them.

    Parameters
    ----------
    problem
        The model (estimates only give the shapes, labels and the noise).
    draws
        Number of prior draws (one chain).
    rng
        Random generator.

    Returns
    -------
    arviz.InferenceData
        Groups ``prior`` (``tau``, ``mu``, the group means, under a heavy-tailed group prior
        the local scales, and ``theta``, as in the posterior), ``prior_predictive`` (``b``)
        and ``observed_data``.
    """
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}.")
    priors = problem.priors
    n_covariates, n_features = problem.b.shape
    lead = (1, int(draws), n_covariates)
    coords: dict[str, Any] = {
        "chain": [0],
        "draw": np.arange(draws),
        "covariate": problem.covariates.to_numpy(),
        "feature": problem.features.to_numpy(),
    }
    prior: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    if problem.tree is None:
        theta = priors.mu0[:, None] + priors.s0[:, None] * rng.standard_normal((*lead, n_features))
    else:
        tree = problem.tree
        coords.update(model_coords(problem.estimates, tree))
        tau = priors.tau_scale * np.abs(rng.standard_cauchy((*lead, tree.depth + 1)))
        mu = priors.mu0 + priors.s0 * rng.standard_normal(lead)
        prior["tau"] = (("chain", "draw", "covariate", "level"), tau)
        prior["mu"] = (("chain", "draw", "covariate"), mu)
        values = mu[..., None]
        for level in range(tree.depth, -1, -1):
            n_units = n_features if level == 0 else tree.n_groups[level - 1]
            index = tree.parents[level] if level < tree.depth else np.zeros(n_units, np.intp)
            scale = tau[..., level][..., None]
            if level and priors.heavy_tailed:
                local_scale = np.sqrt(priors.draw_local_variances((*lead, n_units), rng))
                name = local_scale_name(tree.levels[level - 1])
                prior[name] = (("chain", "draw", "covariate", tree.levels[level - 1]), local_scale)
                scale = scale * local_scale
            values = values[..., index] + scale * rng.standard_normal((*lead, n_units))
            if level:
                name = tree.levels[level - 1]
                prior[group_mean_name(name)] = (("chain", "draw", "covariate", name), values)
        theta = values
    prior["theta"] = (DIMS, theta)
    noise_tree = problem.index if problem.correlated else None
    b = theta + draw_noise(problem.var_b, noise_tree, problem.noise, rng, lead=lead[:2])
    draw_coords = {name: coords[name] for name in DIMS[:2]}
    return az.InferenceData(
        prior=xr.Dataset(prior, coords=coords),
        prior_predictive=cell_dataset({"b": b}, problem, draw_coords),
        observed_data=cell_dataset({"b": problem.b}, problem),
    )
