"""The one InferenceData layout every sampler returns (see ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version
from typing import Any, Literal

import arviz as az
import numpy as np
import xarray as xr

from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.model import group_mean_name, model_coords
from bayeshier_pymc.priors import Priors

__all__ = [
    "DEFAULT_LOG_LIKELIHOOD",
    "LOG_LIKELIHOOD_NAMES",
    "build_inference_data",
    "loo",
    "posterior_dims",
]

LogLikelihoodKind = Literal["marginal", "conditional"]
LOG_LIKELIHOOD_NAMES: dict[str, str] = {
    "marginal": "b_marginal",
    "conditional": "b_conditional",
}
DEFAULT_LOG_LIKELIHOOD: LogLikelihoodKind = "marginal"
"""Pointwise log-likelihood used by default for LOO.

``b_marginal`` is log N(b_j; parent mean, s_j² + τ_w²), θ_j integrated out analytically;
``b_conditional`` is log N(b_j; θ_j, s_j²). With one estimate per metabolite, θ_j has no data
but b_j, so the exact leave-one-out predictive of b_j is the same for both: the predictive
of a new metabolite of its group. They differ in how well PSIS-LOO approximates it. Removing
b_j moves θ_j's posterior a lot, so importance sampling on the conditional form fails (large
Pareto k) wherever pooling is weak; on the marginal form PSIS only reweights the scales and
group means, and is reliable. The conditional form is kept for users with replicate
measurements per metabolite and for comparison (see ``docs/model_comparison.md``).
"""
_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def posterior_dims(hierarchy: Hierarchy | None) -> dict[str, tuple[str, ...]]:
    """Dims (after chain and draw) of every posterior variable."""
    dims: dict[str, tuple[str, ...]] = {"theta": ("covariate", "feature")}
    if hierarchy is None:
        return dims
    dims["mu"] = ("covariate",)
    dims["tau"] = ("covariate", "level")
    for level in hierarchy.levels:
        dims[group_mean_name(level)] = ("covariate", level)
    return dims


def _normal_logpdf(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (x - mean) / sd
    return -0.5 * z * z - np.log(sd) - _HALF_LOG_2PI


def build_inference_data(
    posterior: Mapping[str, np.ndarray],
    estimates: Estimates,
    hierarchy: Hierarchy | None,
    priors: Priors,
    *,
    sampler: str,
    depth: int | str,
    sample_stats: xr.Dataset | Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData contract from posterior draws.

    Parameters
    ----------
    posterior
        Arrays with leading dims (chain, draw) for ``theta`` and, with pooling, ``mu``,
        ``tau`` and ``<level>_mean``.
    estimates, hierarchy, priors
        What the model was built from (``hierarchy`` truncated to the depth used, or ``None``
        for no pooling).
    sampler
        Name stored in ``attrs["sampler"]``.
    depth
        Stored in ``attrs["depth"]``.
    sample_stats
        Sampler statistics with leading dims (chain, draw).
    attrs
        Extra attributes.

    Returns
    -------
    arviz.InferenceData
        With groups ``posterior``, ``log_likelihood``, ``sample_stats``, ``observed_data`` and
        ``constant_data``.
    """
    dims = posterior_dims(hierarchy)
    missing = sorted(set(dims) - set(posterior))
    if missing:
        raise ValueError(f"posterior draws lack {missing!r}.")
    coords = (
        model_coords(estimates, hierarchy)
        if hierarchy is not None
        else {
            "covariate": estimates.covariates.tolist(),
            "feature": estimates.features.tolist(),
        }
    )
    posterior_ds = _dataset({name: posterior[name] for name in dims}, dims, coords)
    b = estimates.estimate.to_numpy()
    se = estimates.se.to_numpy()
    log_likelihood = _pointwise_log_likelihoods(posterior, b, se, hierarchy, priors)
    obs_dims = {name: ("covariate", "feature") for name in log_likelihood}
    groups: dict[str, xr.Dataset] = {
        "posterior": posterior_ds,
        "log_likelihood": _dataset(log_likelihood, obs_dims, coords),
        "observed_data": xr.Dataset(
            {"b": (("covariate", "feature"), b)},
            coords={"covariate": coords["covariate"], "feature": coords["feature"]},
        ),
        "constant_data": _constant_data(se, hierarchy, coords),
    }
    if sample_stats is not None:
        groups["sample_stats"] = (
            sample_stats
            if isinstance(sample_stats, xr.Dataset)
            else _dataset(dict(sample_stats), {k: () for k in sample_stats}, {})
        )
    idata = az.InferenceData(**groups)
    idata.attrs.update(
        {
            "bayeshier_pymc_version": version("bayeshier_pymc"),
            "sampler": sampler,
            "depth": str(depth),
            "levels": list(hierarchy.levels) if hierarchy is not None else [],
            "priors": priors.to_json(),
            "default_log_likelihood": LOG_LIKELIHOOD_NAMES[DEFAULT_LOG_LIKELIHOOD],
            **(attrs or {}),
        }
    )
    for group in idata.groups():
        idata[group].attrs.update(idata.attrs)
    return idata


def _pointwise_log_likelihoods(
    posterior: Mapping[str, np.ndarray],
    b: np.ndarray,
    se: np.ndarray,
    hierarchy: Hierarchy | None,
    priors: Priors,
) -> dict[str, np.ndarray]:
    """Both pointwise log-likelihoods, computed chain by chain into θ's storage type.

    Computing one chain at a time keeps the temporaries to one chain's size, and storing in
    θ's type (float32 from the Gibbs engine) halves the memory of large runs.
    """
    theta = posterior["theta"]
    result = {
        name: np.empty(theta.shape, dtype=theta.dtype) for name in LOG_LIKELIHOOD_NAMES.values()
    }
    for chain in range(theta.shape[0]):
        draws = {name: values[chain] for name, values in posterior.items()}
        result["b_conditional"][chain] = _normal_logpdf(b, draws["theta"], se)
        result["b_marginal"][chain] = _marginal_log_likelihood(draws, b, se, hierarchy, priors)
    return result


def _marginal_log_likelihood(
    posterior: Mapping[str, np.ndarray],
    b: np.ndarray,
    se: np.ndarray,
    hierarchy: Hierarchy | None,
    priors: Priors,
) -> np.ndarray:
    """Log N(b_j; parent mean, s_j² + τ_w²) per draw, or the fixed prior predictive."""
    if hierarchy is None:
        return _normal_logpdf(b, priors.mu0, np.sqrt(se**2 + priors.s0**2))
    if hierarchy.depth == 0:
        parent_mean = posterior["mu"][..., None]
    else:
        means = posterior[group_mean_name(hierarchy.levels[0])]
        parent_mean = means[..., hierarchy.parents[0]]
    tau_w = posterior["tau"][..., 0:1]
    return _normal_logpdf(b, parent_mean, np.sqrt(se**2 + tau_w**2))


def _constant_data(
    se: np.ndarray, hierarchy: Hierarchy | None, coords: Mapping[str, list[object]]
) -> xr.Dataset:
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {"se": (("covariate", "feature"), se)}
    if hierarchy is not None:
        child_dims = ("feature", *hierarchy.levels)[: hierarchy.depth]
        for level, child_dim, parent in zip(
            hierarchy.levels, child_dims, hierarchy.parents, strict=True
        ):
            data[f"{level}_index"] = ((child_dim,), parent.astype(np.int64))
    used = {d for dims, _ in data.values() for d in dims}
    return xr.Dataset(data, coords={k: v for k, v in coords.items() if k in used})


def _dataset(
    arrays: Mapping[str, np.ndarray],
    dims: Mapping[str, tuple[str, ...]],
    coords: Mapping[str, list[object]],
) -> xr.Dataset:
    data = {
        name: (("chain", "draw", *dims[name]), np.asarray(values))
        for name, values in arrays.items()
    }
    first = next(iter(data.values()))[1]
    n_chains, n_draws = first.shape[:2]
    used = {d for var_dims, _ in data.values() for d in var_dims}
    all_coords = {
        "chain": np.arange(n_chains),
        "draw": np.arange(n_draws),
        **{k: v for k, v in coords.items() if k in used},
    }
    return xr.Dataset(data, coords=all_coords)


def loo(idata: az.InferenceData, kind: LogLikelihoodKind | None = None, **kwargs: Any) -> Any:
    """PSIS-LOO with the chosen pointwise log-likelihood (``az.loo`` with ``var_name`` set).

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    kind
        ``"marginal"`` (default) or ``"conditional"``: which pointwise log-likelihood PSIS
        reweights; see :data:`DEFAULT_LOG_LIKELIHOOD` for why the marginal one is reliable.
    **kwargs
        Passed to :func:`arviz.loo`.
    """
    kind = kind or DEFAULT_LOG_LIKELIHOOD
    if kind not in LOG_LIKELIHOOD_NAMES:
        raise ValueError(f"kind must be 'marginal' or 'conditional', got {kind!r}.")
    return az.loo(idata, var_name=LOG_LIKELIHOOD_NAMES[kind], **kwargs)
