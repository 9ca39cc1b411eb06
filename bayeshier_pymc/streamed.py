"""θ draws and LOO of a fit in summary storage, computed on demand a chunk at a time.

A Gibbs fit with ``storage="summary"`` (:func:`~bayeshier_pymc.sampling.sample_gibbs`) keeps
τ, θ0 and the group means, θ's per-cell summaries (the
:data:`~bayeshier_pymc.inference_data.THETA_SUMMARY` group) and the seed, not θ's draws nor
the pointwise log-likelihood (:mod:`bayeshier_pymc.gibbs.theta_summary` for the design):

* :func:`theta_draws` regenerates the θ draws of chosen features, bitwise the draws the
  stored mode keeps for the same seed, by one replay of θ's noise stream (its time is that
  of drawing every θ once, whatever the number of features kept);
* :func:`loo` computes the marginal pointwise log-likelihood ``b_marginal`` (it needs τ and
  the parents' means only) a chunk of :data:`LOO_CHUNK_FEATURES` features at a time, runs
  PSIS-LOO (``arviz.loo``) on each chunk and combines them: the pointwise values are those of
  ``arviz.loo`` on the stored mode's fit for the same seed and relative efficiency ``reff``.
  By default ``reff`` is ArviZ's, the mean relative ESS of the posterior's variables, here
  without θ (which the stored fit's mean includes), so the Pareto smoothing, and the values,
  may differ slightly from the stored mode's default.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from arviz.stats.stats import ELPDData

from bayeshier_pymc import log_likelihood as pointwise
from bayeshier_pymc.gibbs.theta_summary import ThetaStream, noise_seed, regenerate
from bayeshier_pymc.inference_data import (
    LOG_LIKELIHOOD_NAMES,
    THETA_SUMMARY,
    cell_dataset,
    pointwise_draws,
    problem_from_idata,
    theta_parent_draws,
)

__all__ = ["LOO_CHUNK_FEATURES", "is_summary", "loo", "theta_draws"]

LOO_CHUNK_FEATURES = 2000
"""Features per chunk of :func:`loo`: at p = 10 and 4 × 1000 draws, 80 million values of the
log-likelihood (320 MB in float32) and ArviZ's temporaries of that size."""
_MARGINAL = LOG_LIKELIHOOD_NAMES["marginal"]


def is_summary(idata: az.InferenceData) -> bool:
    """Whether ``idata`` is a fit in summary storage (θ summarised, not stored)."""
    return THETA_SUMMARY in idata.groups()


def _stream(idata: az.InferenceData) -> ThetaStream:
    """The replay of θ's draws of a fit in summary storage."""
    problem = problem_from_idata(idata)
    posterior = pointwise_draws(idata.posterior, problem, with_theta=False)
    dtype = np.dtype(idata.attrs["theta_dtype"])
    return ThetaStream(problem, noise_seed(int(idata.attrs["random_seed"])), posterior, dtype)


def theta_draws(
    idata: az.InferenceData, features: Sequence[Any] | pd.Index | None = None
) -> xr.DataArray:
    """The θ draws of ``features``, (chain, draw, covariate, feature).

    Parameters
    ----------
    idata
        A fit; in summary storage the draws are regenerated (the stored mode's, bitwise, for
        the same seed), else they are read from ``idata.posterior``.
    features
        Labels of the features to keep (default: all, which in summary storage needs the
        memory of the stored draws).

    Raises
    ------
    ValueError
        If a label is not a feature of the fit.
    """
    all_features = pd.Index(idata.observed_data.coords["feature"].to_numpy()).unique()
    labels = all_features if features is None else pd.Index(features)
    positions = all_features.get_indexer(labels)
    if (positions < 0).any():
        raise ValueError(f"not features of the fit: {labels[positions < 0].tolist()!r}.")
    if not is_summary(idata):
        return idata.posterior["theta"].isel(feature=positions)
    stream = _stream(idata)
    values = regenerate(stream, positions)
    posterior = idata.posterior
    return xr.DataArray(
        values,
        dims=("chain", "draw", "covariate", "feature"),
        coords={
            "chain": posterior.coords["chain"].to_numpy(),
            "draw": posterior.coords["draw"].to_numpy(),
            "covariate": posterior.coords["covariate"].to_numpy(),
            "feature": labels.to_numpy(),
        },
        name="theta",
    )


def loo(
    idata: az.InferenceData,
    *,
    reff: float | None = None,
    chunk_features: int = LOO_CHUNK_FEATURES,
) -> az.ELPDData:
    """PSIS-LOO with ``b_marginal`` of a fit in summary storage, chunk by chunk of features.

    Parameters
    ----------
    idata
        A fit in summary storage.
    reff
        Relative efficiency of the draws (default: ArviZ's, from the posterior's variables).
    chunk_features
        Features per chunk.

    Returns
    -------
    arviz.ELPDData
        As ``arviz.loo(..., pointwise=True)``: ``loo_i`` and ``pareto_k`` over the
        (covariate, feature) cells, or the observed cells (``observation``) with missing ones.
    """
    if not is_summary(idata):
        raise ValueError("streamed.loo is for fits in summary storage; use bayeshier_pymc.loo.")
    if chunk_features < 1:
        raise ValueError(f"chunk_features must be at least 1, got {chunk_features}.")
    problem = problem_from_idata(idata)
    posterior = idata.posterior
    if reff is None:
        reff = _reff(posterior)
    draws = pointwise_draws(posterior, problem, with_theta=False)
    parent_mean, parent_index = theta_parent_draws(draws, problem)
    dtype = np.dtype(idata.attrs["theta_dtype"])
    # the stored mode's data (inference_data._pointwise): se itself unless cells are missing
    b = problem.algebra_b
    se = np.sqrt(problem.var_b) if problem.has_missing else problem.se
    observed = ~problem.missing
    n_samples = int(np.prod(posterior["tau"].shape[:2]))
    loo_i, pareto_k = np.full(b.shape, np.nan), np.full(b.shape, np.nan)
    lppd, warning, good_k = 0.0, False, 1.0
    for start in range(0, b.shape[1], chunk_features):
        chunk = slice(start, min(start + chunk_features, b.shape[1]))
        values = pointwise.marginal(
            b[:, chunk],
            se[:, chunk],
            parent_mean=parent_mean,
            parent_index=parent_index[chunk],
            tau_w=draws["tau"][..., 0],
            dtype=dtype,
        )
        cells = observed[:, chunk]
        dataset = xr.Dataset({_MARGINAL: (("chain", "draw", "cell"), values[..., cells])})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one warning for all chunks, below
            elpd = az.loo(
                az.InferenceData(log_likelihood=dataset),
                var_name=_MARGINAL,
                reff=reff,
                pointwise=True,
            )
        loo_i[:, chunk][cells] = elpd["loo_i"].to_numpy()
        pareto_k[:, chunk][cells] = elpd["pareto_k"].to_numpy()
        lppd += float(elpd["p_loo"]) + float(elpd["elpd_loo"])
        warning = warning or bool(elpd["warning"])
        good_k = float(elpd["good_k"])
    if warning:
        warnings.warn(
            f"Estimated shape parameter of Pareto distribution is greater than {good_k:.2f} "
            "for one or more samples.",
            UserWarning,
            stacklevel=2,
        )
    pointwise_values = cell_dataset({"loo_i": loo_i, "pareto_k": pareto_k}, problem)
    elpd_loo = float(np.sum(loo_i[observed]))
    n_points = int(observed.sum())
    return ELPDData(
        data=[
            elpd_loo,
            (n_points * np.var(loo_i[observed])) ** 0.5,
            lppd - elpd_loo,
            n_samples,
            n_points,
            warning,
            pointwise_values["loo_i"],
            pointwise_values["pareto_k"],
            "log",
            good_k,
        ],
        index=[
            "elpd_loo",
            "se",
            "p_loo",
            "n_samples",
            "n_data_points",
            "warning",
            "loo_i",
            "pareto_k",
            "scale",
            "good_k",
        ],
    )


def _reff(posterior: xr.Dataset) -> float:
    """ArviZ's default relative efficiency: the mean relative ESS of the posterior's values."""
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    if n_chains == 1:
        return 1.0
    ess = az.ess(posterior, method="mean")
    values = np.hstack([ess[name].to_numpy().ravel() for name in ess.data_vars])
    return float(values.mean() / (n_chains * n_draws))
