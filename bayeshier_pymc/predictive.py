"""Replicated estimates: posterior and prior predictive draws of b under the model's noise.

Every fit carries a ``posterior_predictive`` group (:func:`add_posterior_predictive`, called
once by :func:`~bayeshier_pymc.sampling.finish` for every sampler), drawn after sampling (so
the collapsed model's ``pm.Potential`` plays no role): for each posterior draw of the scales τ,
each estimate b_j is replicated from its leave-one-out predictive p(b_j | b_−j, τ)
(:func:`~bayeshier_pymc.gaussian_tree.leave_one_out_normal`), with the estimates' noise,
independent or tree-structured. With correlated estimates (and without pooling) that is the
very predictive the default pointwise log-likelihood scores; for independent pooled fits the
log-likelihood scores b_j given the parent's draw, whose importance weights give the same
leave-one-out posterior of τ. Either way ``az.loo_pit(idata)`` checks each estimate against
its leave-one-out predictive, and ``az.plot_ppc(idata)`` compares the estimates with what the
model predicts for them when each is held out. Replicates θ_j + e drawn around
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

from bayeshier_pymc.gaussian_tree import draw_noise, leave_one_out_normal
from bayeshier_pymc.model import group_mean_name, model_coords
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "PREDICTIVE_SEED_KEY",
    "add_posterior_predictive",
    "posterior_predictive",
    "predictive_generator",
    "prior_predictive",
]

PREDICTIVE_SEED_KEY = 7
"""Spawn key of the predictive draws' generator under a run's seed: they use their own stream,
so adding them changes no posterior draw."""
DIMS = ("chain", "draw", "covariate", "feature")
CHUNK_DRAWS = 256
"""Draws whose leave-one-out moments are computed at once (bounds the temporaries)."""


def predictive_generator(random_seed: Any) -> np.random.Generator:
    """The predictive draws' generator for a run seeded with ``random_seed`` (None: fresh)."""
    seed = None if random_seed is None or random_seed == "None" else int(random_seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(PREDICTIVE_SEED_KEY,)))


def posterior_predictive(
    problem: ShrinkageProblem,
    tau: np.ndarray | None,
    lead: tuple[int, int],
    rng: np.random.Generator,
    dtype: Any = np.float64,
) -> np.ndarray:
    """Replicates of every estimate from p(b_j | b_−j, τ), one per posterior draw.

    Parameters
    ----------
    problem
        The model.
    tau
        Scale draws (chain, draw, covariate, level); ``None`` without pooling.
    lead
        (chains, draws).
    rng
        Random generator.
    dtype
        Floating type of the result (θ's).

    Returns
    -------
    numpy.ndarray
        (chain, draw, covariate, feature).
    """
    n_covariates, n_features = problem.b.shape
    out = np.empty((lead[0] * lead[1], n_covariates, n_features), dtype=dtype)
    for k in range(n_covariates):
        fixed = None if problem.pooled else _unpooled_moments(problem, k)
        for start in range(0, out.shape[0], CHUNK_DRAWS):
            stop = min(start + CHUNK_DRAWS, out.shape[0])
            if fixed is None:
                assert tau is not None
                scales = problem.algebra_scales(tau[:, :, k].reshape(-1, tau.shape[-1]))
                mean, variance = _leave_one_out(problem, k, scales[start:stop], problem.priors.s0)
            else:
                mean, variance = fixed
            out[start:stop, k] = mean + np.sqrt(variance) * rng.standard_normal(
                (stop - start, n_features)
            )
    return out.reshape(*lead, n_covariates, n_features)


def _leave_one_out(
    problem: ShrinkageProblem, k: int, scales: np.ndarray, top_sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of p(b_j | b_−j, τ) for covariate ``k`` and the given scales."""
    noise = problem.noise.row(k) if problem.noise is not None else None
    return leave_one_out_normal(
        problem.b[k], problem.var_b[k], scales, problem.index, problem.priors.mu0, top_sd, noise
    )


def _unpooled_moments(problem: ShrinkageProblem, k: int) -> tuple[np.ndarray, np.ndarray]:
    """p(b_j | b_−j) without pooling, the same in every draw."""
    if not problem.correlated:
        # independent estimates: b_j ~ N(mu0, s0² + se_j²)
        var_b = problem.var_b[k]
        return np.full_like(var_b, problem.priors.mu0), var_b + problem.priors.s0**2
    scales, top_sd = problem.unpooled_algebra()
    return _leave_one_out(problem, k, scales, top_sd)


def add_posterior_predictive(
    idata: az.InferenceData, problem: ShrinkageProblem, rng: np.random.Generator
) -> az.InferenceData:
    """Add the ``posterior_predictive`` group (``b``, in θ's floating type) to a new fit."""
    theta = idata.posterior["theta"].transpose(*DIMS)
    tau = (
        idata.posterior["tau"].transpose(*DIMS[:3], "level").to_numpy() if problem.pooled else None
    )
    replicated = posterior_predictive(problem, tau, theta.shape[:2], rng, theta.dtype)
    dataset = xr.Dataset({"b": (DIMS, replicated)}, coords=theta.coords)
    dataset.attrs.update(idata.posterior.attrs)
    idata.add_groups({"posterior_predictive": dataset})
    return idata


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
        Groups ``prior`` (``tau``, ``mu``, the group means and ``theta``, as in the posterior),
        ``prior_predictive`` (``b``) and ``observed_data``.
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
        theta = priors.mu0 + priors.s0 * rng.standard_normal((*lead, n_features))
    else:
        tree = problem.tree
        coords.update(model_coords(problem.estimates, tree))
        scales = np.asarray(priors.tau_scale, dtype=float)
        tau = scales * np.abs(rng.standard_cauchy((*lead, tree.depth + 1)))
        mu = priors.mu0 + priors.s0 * rng.standard_normal(lead)
        prior["tau"] = (("chain", "draw", "covariate", "level"), tau)
        prior["mu"] = (("chain", "draw", "covariate"), mu)
        values = mu[..., None]
        for level in range(tree.depth, -1, -1):
            n_units = n_features if level == 0 else tree.n_groups[level - 1]
            index = tree.parents[level] if level < tree.depth else np.zeros(n_units, np.intp)
            values = values[..., index] + tau[..., level][..., None] * rng.standard_normal(
                (*lead, n_units)
            )
            if level:
                name = tree.levels[level - 1]
                prior[group_mean_name(name)] = (("chain", "draw", "covariate", name), values)
        theta = values
    prior["theta"] = (DIMS, theta)
    noise_tree = problem.index if problem.correlated else None
    b = theta + draw_noise(problem.var_b, noise_tree, problem.noise, rng, lead=lead[:2])
    observed = xr.Dataset(
        {"b": (("covariate", "feature"), problem.b)},
        coords={"covariate": coords["covariate"], "feature": coords["feature"]},
    )
    return az.InferenceData(
        prior=xr.Dataset(prior, coords=coords),
        prior_predictive=xr.Dataset({"b": (DIMS, b)}, coords=coords),
        observed_data=observed,
    )
