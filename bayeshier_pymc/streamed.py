"""θ draws of a fit in summary storage, regenerated on demand.

A Gibbs fit with ``storage="summary"`` (:func:`~bayeshier_pymc.sampling.sample_gibbs`) keeps
τ, θ0 and the group means, θ's per-cell summaries (the
:data:`~bayeshier_pymc.inference_data.THETA_SUMMARY` group; with correlated estimates also the
totals and path noise of θ's parents) and the seed, not θ's draws nor the pointwise
log-likelihood (:mod:`bayeshier_pymc.gibbs.theta_summary` for the design):

* :func:`theta_draws` regenerates the θ draws of chosen features, bitwise the draws the
  stored mode keeps for the same seed, by one replay of θ's noise stream (the noise of every
  feature is drawn, its order fixing each draw's, but θ is computed for the chosen ones
  only: for a few features the time is that of drawing the noise);
* LOO (:func:`~bayeshier_pymc.inference_data.loo`) needs no θ: it computes ``b_marginal`` a
  chunk of features at a time (:func:`~bayeshier_pymc.inference_data.loo_in_chunks`; with
  correlated estimates the leave-one-out predictive, from per-draw terms of θ's parents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc.gibbs.theta_summary import ThetaStream, noise_seed, regenerate
from bayeshier_pymc.gibbs.theta_writer import ThetaParents
from bayeshier_pymc.inference_data import (
    THETA_PARENT,
    THETA_PARENT_STORES,
    THETA_SUMMARY,
    is_summary,
    pointwise_draws,
    problem_from_idata,
)

__all__ = ["theta_draws"]


def _stream(idata: az.InferenceData, features: np.ndarray | None = None) -> ThetaStream:
    """The replay of θ's draws of a fit in summary storage (of the features at ``features``)."""
    problem = problem_from_idata(idata)
    posterior = pointwise_draws(idata.posterior, problem, with_theta=False)
    dtype = np.dtype(idata.attrs["theta_dtype"])
    parents = None
    if problem.correlated:
        kept = idata[THETA_SUMMARY]
        order = ("chain", "draw", "covariate", THETA_PARENT)
        parents = ThetaParents(
            *(
                np.ascontiguousarray(kept[name].transpose(*order).to_numpy(), dtype=float)
                for name in THETA_PARENT_STORES
            )
        )
    seed = noise_seed(int(idata.attrs["random_seed"]))
    return ThetaStream(problem, seed, posterior, dtype, parents, features)


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
    # every feature of the fit (observed_data leaves out features whose cells are all missing)
    all_features = pd.Index(idata.constant_data["feature"].to_numpy())
    labels = all_features if features is None else pd.Index(features)
    positions = all_features.get_indexer(labels)
    if (positions < 0).any():
        raise ValueError(f"not features of the fit: {labels[positions < 0].tolist()!r}.")
    if not is_summary(idata):
        return idata.posterior["theta"].isel(feature=positions)
    values = regenerate(_stream(idata, positions))
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
