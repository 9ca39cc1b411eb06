"""The one InferenceData layout every sampler returns (see ARCHITECTURE.md)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from arviz.stats.stats import ELPDData

from bayeshier_pymc import log_likelihood as pointwise
from bayeshier_pymc import psis
from bayeshier_pymc._threads import ahead
from bayeshier_pymc.convergence import SAMPLE_DIMS, relative_efficiency
from bayeshier_pymc.gaussian_tree import NodeNoise
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import EFFECT_SCALES
from bayeshier_pymc.model import group_mean_name, local_scale_name, model_coords
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = [
    "DEFAULT_LOG_LIKELIHOOD",
    "LOG_LIKELIHOOD_NAMES",
    "LOO_CHUNK_FEATURES",
    "NOISE_KINDS",
    "OBSERVATION",
    "OWN_VARIANCE",
    "RESIDUAL_SD",
    "SHARED_VARIANCE",
    "THETA_PARENT",
    "THETA_PARENT_STORES",
    "THETA_SUMMARY",
    "add_log_likelihood",
    "build_inference_data",
    "cell_dataset",
    "is_summary",
    "local_scale_draws",
    "local_scale_name",
    "local_variance_draws",
    "log_likelihood_dataset",
    "loo",
    "loo_in_chunks",
    "marginal_chunks",
    "pointwise_draws",
    "posterior_dims",
    "problem_from_idata",
    "residual_sd",
    "shared_variance_name",
    "theta_parent_draws",
    "with_log_likelihood",
]

NOISE_KINDS = ("tree", "independent")
"""Values of ``attrs["noise"]``: the likelihood of b the fit used."""
OWN_VARIANCE = "own_variance"
"""Each estimate's own noise variance (covariate, feature), for correlated estimates."""
SHARED_VARIANCE = "shared_variance"
"""The noise variance shared by all features (covariate), for correlated estimates."""
RESIDUAL_SD = "residual_sd"
"""Each feature's residual SD (feature) in ``constant_data`` of a fit whose effects are
exchangeable in residual-SD units (``attrs["effect_scale"] == "residual_sd"``): the fit's
estimates, θ, group means and scales are in those units, and θ times it is in Y's units."""

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

With correlated estimates (``attrs["noise"] == "tree"``: tree-structured noise shared by the
metabolites of a group) the b_j are not independent given the parameters, and the pointwise
terms are the leave-one-out predictives of the non-factorised normal model (Bürkner, Gabry &
Vehtari 2021). ``b_marginal`` is log p(b_j | b_−j, τ): θ0, every group mean and θ integrated
out exactly given each draw of τ, so PSIS reweights only τ. Feature LOO then answers: how well
is one metabolite's estimate predicted from all the others, *including its correlated
neighbours*, whose errors it shares (a metabolite whose whole class moved together is no
surprise). Without pooling it is exact (no τ: the same in every draw). ``b_conditional`` is
log p(b_j | b_−j, θ) under the noise covariance: meaningful (it is what the paper reweights),
but it has the conditional form's PSIS failure as θ_j rests on b_j. Leave-one-group-out
(:func:`~bayeshier_pymc.depth_comparison.group_log_likelihood`) is log p(b_G | b_−G, τ) on the
same joint normal. Independent estimates keep the formulas above, number for number.

Only the default is stored by :func:`build_inference_data` (so ``az.loo(idata)`` and
``az.compare`` need no ``var_name``); :func:`add_log_likelihood` adds the other one, and
:func:`loo` computes it on demand.
"""


OBSERVATION = "observation"
"""The dim of the observed cells: with missing cells, the pointwise log-likelihood, the
observed and the replicated estimates run over the observed (covariate, feature) cells only,
with coordinates ``covariate`` and ``feature`` along it."""


THETA_SUMMARY = "theta_summary"
"""The group of a fit in summary storage (``attrs["storage"] == "summary"``) that replaces θ's
draws: per (covariate, feature) ``mean`` and ``sd`` (ddof 1) of θ over every draw and the
numbers of draws ``n_positive`` (θ > 0) and ``n_negative`` (θ < 0); with correlated
estimates also :data:`THETA_PARENT_STORES`; see :mod:`bayeshier_pymc.streamed`."""

THETA_PARENT = "theta_parent"
"""The dim of θ's parents in the noise tree: its first level's groups (their labels), or θ0
alone (``"theta0"``) on a noise tree without levels."""

THETA_PARENT_STORES = ("parent_total", "parent_noise")
"""What a fit in summary storage with correlated estimates keeps, besides θ's summaries, to
regenerate θ: per (chain, draw, covariate, :data:`THETA_PARENT`) the total of each of θ's
parents in the noise tree (effect plus the shared noise on its path) and that path noise, as
the Gibbs engine drew them (:class:`~bayeshier_pymc.gibbs.theta_writer.ThetaParents`)."""


LOO_CHUNK_FEATURES = 2000
"""Features per chunk of :func:`loo_in_chunks`: at p = 10 and 4 × 1000 draws, 80 million values
of the log-likelihood (320 MB in float32); PSIS adds no temporary of that size."""


def is_summary(idata: az.InferenceData) -> bool:
    """Whether ``idata`` is a fit in summary storage (θ summarised, not stored)."""
    return THETA_SUMMARY in idata.groups()


def cell_dataset(
    arrays: Mapping[str, np.ndarray],
    problem: ShrinkageProblem,
    lead_coords: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Per-cell values ``(*lead, covariate, feature)`` as a Dataset of the contract.

    Without missing cells, with dims ``(*lead, "covariate", "feature")``; with them, only the
    observed cells, along :data:`OBSERVATION` (covariate-major order, coordinates
    ``covariate`` and ``feature``), so that ``az.loo``, ``az.compare``, ``az.loo_pit`` and
    ``az.plot_ppc`` see the observed estimates only.

    Parameters
    ----------
    arrays
        Name → array whose last two axes are (covariate, feature).
    problem
        What was sampled (labels and missing cells).
    lead_coords
        Coordinates of the leading dims, in order (e.g. chain, draw); none for data.
    """
    lead = dict(lead_coords or {})
    coords: dict[str, Any] = dict(lead)
    if not problem.has_missing:
        coords.update({"covariate": problem.covariates, "feature": problem.features})
        dims = (*lead, "covariate", "feature")
        return xr.Dataset({k: (dims, np.asarray(v)) for k, v in arrays.items()}, coords=coords)
    observed = ~problem.missing
    rows, columns = np.nonzero(observed)
    coords["covariate"] = ((OBSERVATION,), problem.covariates.to_numpy()[rows])
    coords["feature"] = ((OBSERVATION,), problem.features.to_numpy()[columns])
    dims = (*lead, OBSERVATION)
    return xr.Dataset(
        {k: (dims, np.asarray(v)[..., observed]) for k, v in arrays.items()}, coords=coords
    )


def shared_variance_name(level: str) -> str:
    """Name of the noise variance shared within each group of ``level`` (covariate, level)."""
    return f"{level}_{SHARED_VARIANCE}"


def posterior_dims(
    hierarchy: Hierarchy | None, heavy_tailed: bool = False
) -> dict[str, tuple[str, ...]]:
    """Dims (after chain and draw) of every posterior variable.

    ``heavy_tailed``: the group effects have local scales (a heavy-tailed
    ``Priors.group_prior``), stored as ``<level>_local_scale`` for every level.
    """
    dims: dict[str, tuple[str, ...]] = {"theta": ("covariate", "feature")}
    if hierarchy is None:
        return dims
    dims["mu"] = ("covariate",)
    dims["tau"] = ("covariate", "level")
    for level in hierarchy.levels:
        dims[group_mean_name(level)] = ("covariate", level)
    if heavy_tailed:
        for level in hierarchy.levels:
            dims[local_scale_name(level)] = ("covariate", level)
    return dims


def build_inference_data(
    posterior: Mapping[str, np.ndarray],
    problem: ShrinkageProblem,
    *,
    sampler: str,
    sample_stats: xr.Dataset | Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
    log_likelihood: np.ndarray | None = None,
    theta_summary: Mapping[str, np.ndarray] | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData contract from posterior draws.

    Parameters
    ----------
    posterior
        Arrays with leading dims (chain, draw) for ``theta`` and, with pooling, ``mu``,
        ``tau`` and ``<level>_mean``.
    problem
        What was sampled; its depth, levels and priors are stored in ``attrs``.
    sampler
        Name stored in ``attrs["sampler"]``.
    sample_stats
        Sampler statistics with leading dims (chain, draw).
    attrs
        Extra attributes.
    log_likelihood
        The default pointwise log-likelihood (:data:`DEFAULT_LOG_LIKELIHOOD`), (chain, draw,
        covariate, feature), if the sampler already computed it; else it is computed here.
    theta_summary
        In summary storage, θ's per-cell summaries (:data:`THETA_SUMMARY`), given instead of
        θ's draws; the fit then has no ``log_likelihood`` group (computed on demand).

    Returns
    -------
    arviz.InferenceData
        With groups ``posterior``, ``log_likelihood``, ``sample_stats``, ``observed_data`` and
        ``constant_data`` (in summary storage :data:`THETA_SUMMARY` replaces
        ``log_likelihood``).
    """
    estimates, hierarchy = problem.estimates, problem.tree
    dims = posterior_dims(hierarchy, problem.priors.heavy_tailed)
    if theta_summary is not None:
        del dims["theta"]
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
    groups: dict[str, xr.Dataset] = {
        "posterior": posterior_ds,
        "observed_data": cell_dataset({"b": problem.b}, problem),
        "constant_data": _constant_data(problem, coords),
    }
    if theta_summary is None:
        if log_likelihood is None:
            log_likelihood = _pointwise(DEFAULT_LOG_LIKELIHOOD, posterior, problem)
        draw_coords = {name: posterior_ds.coords[name].to_numpy() for name in ("chain", "draw")}
        groups["log_likelihood"] = cell_dataset(
            {LOG_LIKELIHOOD_NAMES[DEFAULT_LOG_LIKELIHOOD]: log_likelihood}, problem, draw_coords
        )
    else:
        groups[THETA_SUMMARY] = _theta_summary_dataset(theta_summary, problem, coords, posterior_ds)
    if sample_stats is not None:
        groups["sample_stats"] = (
            sample_stats
            if isinstance(sample_stats, xr.Dataset)
            else _dataset(dict(sample_stats), {k: () for k in sample_stats}, {})
        )
    with warnings.catch_warnings():
        # THETA_SUMMARY is this package's group, not one of ArviZ's scheme
        warnings.filterwarnings("ignore", f"{THETA_SUMMARY} group", UserWarning)
        idata = az.InferenceData(**groups)
    idata.attrs.update(
        {
            "bayeshier_pymc_version": version("bayeshier_pymc"),
            "sampler": sampler,
            "depth": str(problem.depth),
            "levels": list(problem.levels),
            "priors": problem.priors.to_json(),
            "default_log_likelihood": LOG_LIKELIHOOD_NAMES[DEFAULT_LOG_LIKELIHOOD],
            "effect_scale": problem.effect_scale,
            **_noise_attrs(problem),
            **(attrs or {}),
        }
    )
    for group in idata.groups():
        idata[group].attrs.update(idata.attrs)
    return idata


def _theta_summary_dataset(
    theta_summary: Mapping[str, np.ndarray],
    problem: ShrinkageProblem,
    labels: Mapping[str, list[object]],
    posterior: xr.Dataset,
) -> xr.Dataset:
    """The :data:`THETA_SUMMARY` group: per-cell summaries and θ's parents' stores."""
    coords: dict[str, Any] = {name: labels[name] for name in ("covariate", "feature")}
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for name, values in theta_summary.items():
        if name in THETA_PARENT_STORES:
            data[name] = (("chain", "draw", "covariate", THETA_PARENT), np.asarray(values))
        else:
            data[name] = (("covariate", "feature"), np.asarray(values))
    if any(name in data for name in THETA_PARENT_STORES):
        tree = problem.noise_tree
        assert tree is not None  # only correlated estimates keep θ's parents
        coords[THETA_PARENT] = tree.groups[0].tolist() if tree.depth else ["theta0"]
        coords.update({name: posterior.coords[name].to_numpy() for name in ("chain", "draw")})
    return xr.Dataset(data, coords=coords)


def _noise_attrs(problem: ShrinkageProblem) -> dict[str, Any]:
    """``noise`` ("tree" or "independent") and, for tree noise, the noise tree's levels."""
    if problem.noise_tree is None:
        return {"noise": "independent"}
    return {"noise": "tree", "noise_levels": list(problem.noise_tree.levels)}


def _check_kind(kind: str) -> LogLikelihoodKind:
    if kind not in LOG_LIKELIHOOD_NAMES:
        raise ValueError(f"kind must be 'marginal' or 'conditional', got {kind!r}.")
    return kind  # type: ignore[return-value]


def _pointwise(kind: str, draws: Mapping[str, np.ndarray], problem: ShrinkageProblem) -> np.ndarray:
    """The pointwise log-likelihood ``kind`` (chain, draw, covariate, feature), θ's type.

    Independent estimates: θ's parents are the means of the first annotation level, θ0 at
    depth 0; without pooling b_j is predicted from θ_j's fixed prior. Correlated estimates:
    the leave-one-out predictives log p(b_j | b_−j, τ) (exact and the same in every draw
    without pooling) and log p(b_j | b_−j, θ).
    """
    theta = draws["theta"]
    # the algebra's data: missing cells (dropped by cell_dataset) are filled
    b, se, priors = problem.algebra_b, np.sqrt(problem.var_b), problem.priors
    if not problem.has_missing:
        se = problem.se  # the same numbers as se² → √ → ² would not always give
    if problem.correlated:
        if kind == "conditional":
            return pointwise.conditional_leave_one_out(theta, problem)
        tau = draws["tau"] if problem.pooled else None
        return pointwise.leave_one_out(
            problem,
            tau,
            lead=theta.shape[:2],
            dtype=theta.dtype,
            local=local_variance_draws(draws, problem),
        )[0]
    if kind == "conditional":
        return pointwise.conditional(theta, b, se)
    if not problem.pooled:
        return pointwise.prior_predictive(
            b, se, mu0=priors.mu0, s0=priors.s0, lead=theta.shape[:2], dtype=theta.dtype
        )
    parent_mean, parent_index = theta_parent_draws(draws, problem)
    return pointwise.marginal(
        b,
        se,
        parent_mean=parent_mean,
        parent_index=parent_index,
        tau_w=draws["tau"][..., 0],
        dtype=theta.dtype,
    )


def pointwise_draws(
    posterior: xr.Dataset, problem: ShrinkageProblem, *, with_theta: bool = True
) -> dict[str, np.ndarray]:
    """The draws the pointwise quantities use, as (chain, draw, covariate, ...) arrays.

    ``theta`` (unless ``with_theta`` is False) and, with pooling, ``mu``, ``tau``, the
    group means of the first annotation level (θ's parents) and, under a heavy-tailed group
    prior, the local scales of every level (:func:`local_variance_draws`).
    """
    lead = ("chain", "draw", "covariate")
    draws: dict[str, np.ndarray] = {}
    if with_theta:
        draws["theta"] = posterior["theta"].transpose(*lead, "feature").to_numpy()
    if problem.pooled:
        draws["mu"] = posterior["mu"].transpose(*lead).to_numpy()
        draws["tau"] = posterior["tau"].transpose(*lead, "level").to_numpy()
        for level in problem.levels[:1]:
            name = group_mean_name(level)
            draws[name] = posterior[name].transpose(*lead, level).to_numpy()
        draws.update(local_scale_draws(posterior, problem))
    return draws


def local_scale_draws(posterior: xr.Dataset, problem: ShrinkageProblem) -> dict[str, np.ndarray]:
    """``<level>_local_scale`` of every level as (chain, draw, covariate, group) arrays.

    Empty unless ``problem`` pools under a heavy-tailed group prior.
    """
    if not (problem.priors.heavy_tailed and problem.pooled):
        return {}
    lead = ("chain", "draw", "covariate")
    return {
        local_scale_name(level): posterior[local_scale_name(level)]
        .transpose(*lead, level)
        .to_numpy()
        for level in problem.levels
    }


def local_variance_draws(
    draws: Mapping[str, np.ndarray], problem: ShrinkageProblem
) -> tuple[np.ndarray, ...] | None:
    """Draws of the local variances λ² of every annotation level used, or ``None``.

    ``draws`` hold ``<level>_local_scale`` as (chain, draw, covariate, group) arrays (as
    :func:`pointwise_draws` returns them, or a sampler's posterior arrays); the result has
    one array of that shape per level, finest first, as the tree algebra's ``local``
    (:mod:`bayeshier_pymc.gaussian_tree`). ``None`` under the normal group prior, where
    every λ = 1.
    """
    if not (problem.priors.heavy_tailed and problem.pooled and problem.levels):
        return None
    return tuple(np.square(draws[local_scale_name(level)]) for level in problem.levels)


def theta_parent_draws(
    draws: Mapping[str, np.ndarray], problem: ShrinkageProblem
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of the means of θ's parents (first-level groups, θ0 at depth 0), each feature's parent.

    ``draws`` as :func:`pointwise_draws` returns them, for a pooled ``problem``.
    """
    tree = problem.tree
    if tree is None:
        raise ValueError("a problem without pooling has no parents of θ.")
    first_level = tree.levels[0] if tree.levels else None
    return pointwise.theta_parents(
        draws,
        first_level,
        tree.parents[0] if first_level is not None else None,
        tree.n_features,
    )


def problem_from_idata(idata: az.InferenceData) -> ShrinkageProblem:
    """The problem a fit was sampled from, read back from its InferenceData.

    The one reader of the contract: the estimates from ``observed_data["b"]`` and
    ``constant_data["se"]``, the depth and levels from ``attrs``, the tree from the
    ``<level>_index`` maps of ``constant_data`` (group labels from the coordinate of each
    level, or ``0 … n − 1`` where the InferenceData has none), the priors through
    :meth:`~bayeshier_pymc.priors.Priors.from_json` and, where ``attrs["noise"]`` is
    ``"tree"``, the noise: its tree (the maps of ``attrs["noise_levels"]``), own variances
    and shared variances. A fit without ``attrs["noise"]`` has independent estimates; where
    ``attrs["effect_scale"]`` is ``"residual_sd"``, the features' :data:`RESIDUAL_SD`.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`, or one loaded by
        :func:`~bayeshier_pymc.persistence.load_results`.

    Returns
    -------
    ShrinkageProblem

    Raises
    ------
    ValueError
        If ``idata`` lacks a part of the contract.
    """
    groups = set(idata.groups())
    attrs = idata.attrs
    absent = [key for key in ("depth", "levels", "priors") if key not in attrs]
    absent += [
        f"{group}[{name!r}]"
        for group, name in (("observed_data", "b"), ("constant_data", "se"))
        if group not in groups or name not in idata[group]
    ]
    if absent:
        raise ValueError(
            f"the InferenceData lacks {', '.join(absent)}: it is not a result of "
            "ShrinkageModel.sample (see ARCHITECTURE.md, 'The InferenceData contract')."
        )
    se = idata.constant_data["se"].transpose("covariate", "feature")
    b = _observed_estimates(idata.observed_data["b"], se)
    levels = tuple(attrs["levels"])
    depth_attr = str(attrs["depth"])
    depth: int | str = depth_attr if depth_attr == "none" else int(depth_attr)
    tree = None
    if depth != "none":
        if len(levels) != depth:
            raise ValueError(f"the fit's depth is {depth} but it names levels {list(levels)!r}.")
        tree = _tree_from_idata(idata, b.indexes["feature"], levels)
    scale_levels = ("feature", *levels) if tree is not None else ("feature",)
    sd = residual_sd(idata)
    return ShrinkageProblem(
        b=b.to_numpy(),
        se=se.to_numpy(),
        covariates=b.indexes["covariate"],
        features=b.indexes["feature"],
        tree=tree,
        priors=Priors.from_json(
            attrs["priors"], scale_levels, b.indexes["covariate"], se.to_numpy()
        ),
        depth=depth,  # type: ignore[arg-type]
        **_noise_from_idata(idata, b.indexes["feature"]),
        residual_sd=None if sd is None else sd.to_numpy(),
    )


def residual_sd(idata: az.InferenceData) -> xr.DataArray | None:
    """The features' :data:`RESIDUAL_SD` (dim ``feature``) of a fit in residual-SD units.

    ``None`` for a fit in Y's units: ``attrs["effect_scale"] == "raw"``, or no such attribute
    (a fit written before the choice existed).
    """
    scale = idata.attrs.get("effect_scale", "raw")
    if scale not in EFFECT_SCALES:
        raise ValueError(f"attrs['effect_scale'] must be one of {EFFECT_SCALES!r}, got {scale!r}.")
    if scale == "raw":
        return None
    if RESIDUAL_SD not in idata.constant_data:
        raise ValueError(
            f"the fit is in residual-SD units but its constant_data lacks {RESIDUAL_SD!r}."
        )
    return idata.constant_data[RESIDUAL_SD]


def _observed_estimates(observed: xr.DataArray, se: xr.DataArray) -> xr.DataArray:
    """``observed_data["b"]`` as (covariate, feature), NaN in the missing cells."""
    if OBSERVATION not in observed.dims:
        return observed.transpose("covariate", "feature")
    full = xr.full_like(se, np.nan)
    rows = se.indexes["covariate"].get_indexer(observed["covariate"].to_numpy())
    columns = se.indexes["feature"].get_indexer(observed["feature"].to_numpy())
    full.values[rows, columns] = observed.to_numpy()
    return full


def _noise_from_idata(idata: az.InferenceData, features: pd.Index) -> dict[str, Any]:
    """The problem's ``noise_tree``, ``noise`` and ``own_variance`` (none if independent).

    A fit without ``attrs["noise"]`` (written before correlated estimates) is independent.
    """
    kind = idata.attrs.get("noise", "independent")
    if kind not in NOISE_KINDS:
        raise ValueError(f"attrs['noise'] must be one of {NOISE_KINDS!r}, got {kind!r}.")
    if kind == "independent":
        return {}
    levels = tuple(idata.attrs.get("noise_levels", ()))
    constant = idata.constant_data
    names = [OWN_VARIANCE, SHARED_VARIANCE, *map(shared_variance_name, levels)]
    absent = [name for name in names if name not in constant]
    if absent:
        raise ValueError(
            f"the fit has tree-structured noise but its constant_data lacks {absent!r}."
        )

    def values(name: str, *dims: str) -> np.ndarray:
        return constant[name].transpose("covariate", *dims).to_numpy()

    return {
        "noise_tree": _tree_from_idata(idata, features, levels),
        "noise": NodeNoise(
            tuple(values(shared_variance_name(level), level) for level in levels),
            values(SHARED_VARIANCE),
        ),
        "own_variance": values(OWN_VARIANCE, "feature"),
    }


def _tree_from_idata(
    idata: az.InferenceData, features: pd.Index, levels: tuple[str, ...]
) -> Hierarchy:
    parents = []
    for level in levels:
        name = f"{level}_index"
        if name not in idata.constant_data:
            raise ValueError(f"the InferenceData lacks constant_data[{name!r}] of level {level!r}.")
        parents.append(idata.constant_data[name].to_numpy().astype(np.intp))
    groups = []
    for level, parent in zip(levels, parents, strict=True):
        labels = next(
            (
                idata[group][level].to_numpy()
                for group in idata.groups()
                if level in idata[group].coords
            ),
            None,
        )
        n_groups = int(parent.max()) + 1 if parent.size else 0
        groups.append(pd.Index(labels if labels is not None else np.arange(n_groups), name=level))
    return Hierarchy(pd.Index(features, name="feature"), levels, tuple(groups), tuple(parents))


def log_likelihood_dataset(idata: az.InferenceData, kind: LogLikelihoodKind) -> xr.Dataset:
    """The pointwise log-likelihood ``kind`` of a fit, computed from its draws and data.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample` (or one loaded by
        :func:`~bayeshier_pymc.persistence.load_results`).
    kind
        ``"marginal"`` or ``"conditional"``.

    Returns
    -------
    xarray.Dataset
        One variable, ``b_marginal`` or ``b_conditional`` (chain, draw, covariate, feature;
        with missing cells (chain, draw, observation), :func:`cell_dataset`).
    """
    _check_kind(kind)
    problem = problem_from_idata(idata)
    values = _pointwise(kind, pointwise_draws(idata.posterior, problem), problem)
    posterior = idata.posterior
    draw_coords = {name: posterior.coords[name].to_numpy() for name in ("chain", "draw")}
    return cell_dataset({LOG_LIKELIHOOD_NAMES[kind]: values}, problem, draw_coords)


def add_log_likelihood(
    idata: az.InferenceData, kind: LogLikelihoodKind = "conditional"
) -> az.InferenceData:
    """Store the pointwise log-likelihood ``kind`` in ``idata.log_likelihood``, in place.

    The one function of the package that changes the InferenceData it is given: adding a
    group to the caller's fit is its job (use :func:`with_log_likelihood` for a light copy
    instead). After ``add_log_likelihood(idata, "conditional")`` the fit holds both forms; give
    ``az.loo`` / ``az.compare`` the ``var_name`` to use.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    kind
        ``"marginal"`` or ``"conditional"`` (default: the one not stored by default).

    Returns
    -------
    arviz.InferenceData
        ``idata`` itself.
    """
    dataset = log_likelihood_dataset(idata, kind)
    if "log_likelihood" in idata.groups():
        idata.log_likelihood[LOG_LIKELIHOOD_NAMES[kind]] = dataset[LOG_LIKELIHOOD_NAMES[kind]]
    else:
        dataset.attrs.update(idata.attrs)
        idata.add_groups(log_likelihood=dataset)
    return idata


def with_log_likelihood(idata: az.InferenceData, kind: LogLikelihoodKind) -> az.InferenceData:
    """``idata`` if it holds the log-likelihood ``kind``; else a light copy that does.

    The copy shares ``idata``'s posterior and adds the computed ``log_likelihood`` group;
    ``idata`` is left unchanged.
    """
    name = LOG_LIKELIHOOD_NAMES[_check_kind(kind)]
    if "log_likelihood" in idata.groups() and name in idata.log_likelihood:
        return idata
    return az.InferenceData(
        posterior=idata.posterior, log_likelihood=log_likelihood_dataset(idata, kind)
    )


def _constant_data(problem: ShrinkageProblem, coords: Mapping[str, list[object]]) -> xr.Dataset:
    """``se``, the trees' maps, any noise, and in residual-SD units :data:`RESIDUAL_SD`.

    The maps cover the noise tree's levels beyond the effect tree's too (the effect tree's
    levels are its finest ones, with the same maps); their group labels become coordinates.
    """
    dims = ("covariate", "feature")
    data: dict[str, tuple[tuple[str, ...], np.ndarray]] = {"se": (dims, problem.se)}
    if problem.residual_sd is not None:
        data[RESIDUAL_SD] = (("feature",), problem.residual_sd)
    all_coords = dict(coords)
    tree = problem.noise_tree if problem.noise_tree is not None else problem.tree
    if tree is not None:
        child_dims = ("feature", *tree.levels)[: tree.depth]
        for level, child_dim, parent, labels in zip(
            tree.levels, child_dims, tree.parents, tree.groups, strict=True
        ):
            data[f"{level}_index"] = ((child_dim,), parent.astype(np.int64))
            all_coords.setdefault(level, labels.tolist())
    if problem.noise is not None and problem.noise_tree is not None:
        data[OWN_VARIANCE] = (dims, np.asarray(problem.own_variance))
        data[SHARED_VARIANCE] = (("covariate",), np.asarray(problem.noise.top, dtype=float))
        for level, variances in zip(problem.noise_tree.levels, problem.noise.groups, strict=True):
            data[shared_variance_name(level)] = (("covariate", level), np.asarray(variances))
    used = {d for dims_, _ in data.values() for d in dims_}
    return xr.Dataset(data, coords={k: v for k, v in all_coords.items() if k in used})


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
        One that ``idata`` does not hold is computed from the draws.
    **kwargs
        Passed to :func:`arviz.loo`. A fit in summary storage (:func:`loo_in_chunks`) takes
        ``reff``, ``pointwise`` (its result is pointwise whatever the value) and
        ``scale="log"``; it refuses ``var_name`` and the other scales.
    """
    kind = _check_kind(kind or DEFAULT_LOG_LIKELIHOOD)
    if is_summary(idata):
        if kind != "marginal":
            raise ValueError(
                "a fit in summary storage has LOO with the marginal log-likelihood only "
                "(the conditional one needs every θ draw)."
            )
        return loo_in_chunks(idata, reff=_summary_loo_reff(kwargs))
    source = with_log_likelihood(idata, kind)
    return az.loo(source, var_name=LOG_LIKELIHOOD_NAMES[kind], **kwargs)


def _summary_loo_reff(arguments: Mapping[str, Any]) -> float | None:
    """``reff`` of :func:`loo`'s ``arviz.loo`` arguments for a fit in summary storage.

    ``pointwise`` is accepted (the result always is) and ``scale`` if it is ``"log"``; any
    other argument is refused, ``var_name`` among them (the log-likelihood is ``b_marginal``).
    """
    unknown = sorted(set(arguments) - {"pointwise", "reff", "scale"})
    if unknown:
        raise ValueError(
            f"LOO of a fit in summary storage takes reff, pointwise and scale='log' only, "
            f"got {', '.join(unknown)} (its log-likelihood is always "
            f"{LOG_LIKELIHOOD_NAMES['marginal']!r}, computed chunk by chunk)."
        )
    scale = arguments.get("scale")
    if scale not in (None, "log"):
        raise ValueError(
            f"LOO of a fit in summary storage is on the log scale, got scale={scale!r}."
        )
    return arguments.get("reff")


def loo_in_chunks(
    idata: az.InferenceData,
    *,
    reff: float | None = None,
    chunk_features: int = LOO_CHUNK_FEATURES,
) -> az.ELPDData:
    """PSIS-LOO with ``b_marginal`` of a fit in summary storage, chunk by chunk of features.

    ``b_marginal`` needs τ and the parents' means only (no θ; with correlated estimates, the
    leave-one-out predictive, τ alone): it is computed for a chunk of features at a time
    (:func:`marginal_chunks`), the compiled PSIS
    (:func:`bayeshier_pymc.psis.psis_loo`, ArviZ's algorithm) runs on each chunk (PSIS is
    per observation) and the chunks are combined. A thread computes the next chunk's values
    while PSIS runs on the current one's (:func:`~bayeshier_pymc._threads.ahead`): two chunks
    are held at once.
    The pointwise values are those of ``arviz.loo`` on the stored mode's fit for the same
    seed and ``reff``, computed in float64: to about 1e-12 with a float64 log-likelihood,
    to float32 rounding (about 1e-6) with the default float32 one, which ArviZ keeps in
    float32 through its sums. ArviZ's default ``reff`` is the mean relative ESS of the
    posterior's variables, here without θ (which the stored fit's includes), so by default
    the Pareto smoothing, and the values, may differ slightly from the stored mode's.

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
        raise ValueError("loo_in_chunks is for fits in summary storage; use loo.")
    problem = problem_from_idata(idata)
    if reff is None:
        reff = relative_efficiency(idata.posterior)
    observed = ~problem.missing
    n_samples = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    loo_i, pareto_k, lppd_i = (np.full(observed.shape, np.nan) for _ in range(3))
    # the next chunk's log-likelihood is computed while PSIS runs on this one's
    for chunk, cells, values in ahead(marginal_chunks(idata, chunk_features)):
        terms = psis.psis_loo(values, reff)
        loo_i[:, chunk][cells] = terms.loo_i
        pareto_k[:, chunk][cells] = terms.pareto_k
        lppd_i[:, chunk][cells] = terms.lppd_i
    pointwise_values = cell_dataset({"loo_i": loo_i, "pareto_k": pareto_k}, problem)
    return elpd_data(
        pointwise_values["loo_i"],
        pointwise_values["pareto_k"],
        float(np.sum(lppd_i[observed])),
        n_samples,
    )


def psis_elpd(log_likelihood: xr.DataArray, reff: float) -> ELPDData:
    """``arviz.loo(..., pointwise=True)`` of one stored pointwise log-likelihood, compiled.

    The compiled PSIS (:func:`bayeshier_pymc.psis.psis_loo`, ArviZ's algorithm without its
    Python loop over the observations) in float64: the values are ArviZ's to about 1e-12
    with a float64 log-likelihood and to float32 rounding with a float32 one (ArviZ sums in
    float32).

    Parameters
    ----------
    log_likelihood
        Dims ``chain``, ``draw`` and the observations' dims, in any order.
    reff
        Relative efficiency of the draws.

    Returns
    -------
    arviz.ELPDData
        As :func:`arviz.loo` with ``pointwise=True``, ``loo_i`` and ``pareto_k`` over the
        observations' dims with their coordinates.
    """
    points = log_likelihood.stack(sample=SAMPLE_DIMS).transpose("sample", ...)
    shape = points.shape[1:]
    values = points.to_numpy().reshape(points.shape[0], -1)
    terms = psis.psis_loo(values, reff)
    template = points.isel(sample=0, drop=True)
    return elpd_data(
        template.copy(data=terms.loo_i.reshape(shape)),
        template.copy(data=terms.pareto_k.reshape(shape)),
        float(np.sum(terms.lppd_i)),
        values.shape[0],
    )


def elpd_data(loo_i: xr.DataArray, pareto_k: xr.DataArray, lppd: float, n_samples: int) -> ELPDData:
    """ArviZ's pointwise PSIS-LOO result from the terms of the observed points.

    Parameters
    ----------
    loo_i, pareto_k
        Per point, NaN where a cell is not observed (left out of every sum).
    lppd
        The log pointwise predictive density summed over the observed points.
    n_samples
        Draws behind each term.

    Returns
    -------
    arviz.ELPDData
        ``elpd_loo``, ``se``, ``p_loo``, ``warning`` (any k̂ above
        :func:`~bayeshier_pymc.psis.good_k`, also warned as ``arviz.loo`` does) and the
        pointwise values, on the log scale.
    """
    observed = np.isfinite(loo_i.to_numpy())
    loo_values, k_values = loo_i.to_numpy()[observed], pareto_k.to_numpy()[observed]
    threshold = psis.good_k(n_samples)
    warning = bool(np.any(k_values > threshold))
    if warning:
        warnings.warn(
            f"Estimated shape parameter of Pareto distribution is greater than {threshold:.2f} "
            "for one or more samples.",
            UserWarning,
            stacklevel=2,
        )
    elpd_loo = float(np.sum(loo_values))
    n_points = int(observed.sum())
    return ELPDData(
        data=[
            elpd_loo,
            (n_points * np.var(loo_values)) ** 0.5,
            lppd - elpd_loo,
            n_samples,
            n_points,
            warning,
            loo_i,
            pareto_k,
            "log",
            threshold,
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


def marginal_chunks(
    idata: az.InferenceData, chunk_features: int = LOO_CHUNK_FEATURES
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """``b_marginal`` of a fit in summary storage, computed a chunk of features at a time.

    The values are those the stored mode's fit holds for the same seed, in θ's floating
    type. Independent estimates: ``b_marginal`` needs τ and the parents' means only (no θ),
    every covariate of a chunk of features at once. Correlated estimates: it is the
    leave-one-out predictive log p(b_j | b_−j, τ), whose O(m) tree passes run once per
    covariate and draw (:class:`~bayeshier_pymc.log_likelihood.HeldOutFeatures`); then each
    chunk of that covariate's features, O(1) a value, with ``cells`` true in its row only.

    Parameters
    ----------
    idata
        A fit in summary storage.
    chunk_features
        Features per chunk.

    Yields
    ------
    features : slice
        The chunk's features.
    cells : numpy.ndarray
        Which of the chunk's (covariate, feature) cells the values are of: the observed ones
        (of one covariate with correlated estimates); never none.
    values : numpy.ndarray
        (draws, cells): draws chain-major, cells covariate-major.
    """
    if not is_summary(idata):
        raise ValueError("marginal_chunks is for fits in summary storage.")
    if chunk_features < 1:
        raise ValueError(f"chunk_features must be at least 1, got {chunk_features}.")
    problem = problem_from_idata(idata)
    draws = pointwise_draws(idata.posterior, problem, with_theta=False)
    dtype = np.dtype(idata.attrs["theta_dtype"])
    observed = ~problem.missing
    n_covariates, n_features = problem.b.shape
    n_samples = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    chunks = [
        slice(start, min(start + chunk_features, n_features))
        for start in range(0, n_features, chunk_features)
    ]
    if problem.correlated:
        local = local_variance_draws(draws, problem)
        for covariate in range(n_covariates):
            held_out = pointwise.HeldOutFeatures(problem, draws["tau"], covariate, local)
            for chunk in chunks:
                cells = np.zeros((n_covariates, chunk.stop - chunk.start), dtype=bool)
                cells[covariate] = observed[covariate, chunk]
                if cells.any():  # a covariate's chunk may be all missing
                    values = held_out.chunk(chunk, dtype).reshape(n_samples, -1)
                    yield chunk, cells, values[:, cells[covariate]]
        return
    parent_mean, parent_index = theta_parent_draws(draws, problem)
    # the stored mode's data (inference_data._pointwise): se itself unless cells are missing
    b = problem.algebra_b
    se = np.sqrt(problem.var_b) if problem.has_missing else problem.se
    for chunk in chunks:
        values = pointwise.marginal(
            b[:, chunk],
            se[:, chunk],
            parent_mean=parent_mean,
            parent_index=parent_index[chunk],
            tau_w=draws["tau"][..., 0],
            dtype=dtype,
        ).reshape(n_samples, -1)
        cells = observed[:, chunk]
        if cells.any():
            yield chunk, cells, values if cells.all() else values[:, cells.ravel()]
