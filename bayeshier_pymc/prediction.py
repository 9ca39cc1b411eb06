"""Posterior draws of θ for metabolites that were not estimated, placed by their annotation.

A new metabolite has no estimate, so its effect is predicted from the tree alone: for each
posterior draw, from the mean of its finest *known* group and the scales of the levels below
it. With the tree θ_j ~ N(β_h, τ_w²), β_h ~ N(α_g, τ_v²), α_g ~ N(θ0, τ_u²):

* in a known finest group h: θ_new ~ N(β_h, τ_w²);
* in a new group under a known parent g: the new group's mean β_new ~ N(α_g, τ_v²), shared by
  every new metabolite of that group, then θ_new ~ N(β_new, τ_w²);
* in no known group: new groups down from θ0 at every level;
* without pooling: θ_new ~ N(mu0, s0²), the prior;
* under a heavy-tailed group prior (``Priors.group_prior``) a new group's mean is drawn with
  its own local scale, β_new ~ N(α_g, τ_v² λ²) with λ from its prior in every draw (a known
  group's mean is its posterior draw, which already carries its λ).

These are bambi's rules for new groups (``sample_new_groups``): a new group's mean is drawn
from its level's distribution around its parent, once per group. A new metabolite with no
annotation at some level is alone in its own new group there. The groups of the levels a fit
did not use (beyond its depth) play no role.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.model import group_mean_name
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = ["predict_new"]

PLACEMENTS = ("in a known group", "new group under a known parent", "new at every level")
"""How a new feature is placed: its finest group is known, a new group has a known ancestor,
or nothing of its annotation is known (θ0 is its nearest known unit)."""


def predict_new(
    idata: az.InferenceData,
    annotations: pd.DataFrame,
    *,
    residual_sd: pd.Series | None = None,
    random_seed: int | None = None,
) -> az.InferenceData:
    """Posterior draws of θ for features absent from the fit.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    annotations
        One row per new feature (its label as the index), one column per annotation level of
        the fit (finest first; extra columns are ignored). A missing value puts the feature in
        a new group of its own at that level, unless a finer group of the feature is known to
        the fit, whose parent it then takes.
    residual_sd
        For a fit in residual-SD units (``attrs["effect_scale"] == "residual_sd"``): each new
        feature's residual SD (a Series indexed by feature, e.g. from a stage-1 fit of it),
        which puts its θ in Y's units. Without it the draws are the standardized effects
        θ_j / σ_j. A fit in Y's units takes none.
    random_seed
        Seed of the draws of new group means and of θ.

    Returns
    -------
    arviz.InferenceData
        A ``predictions`` group with ``theta`` (chain, draw, covariate, feature) and a
        ``predictions_constant_data`` group with ``known_level`` (feature): the finest
        annotation level whose group the fit knows (``"θ0"`` when none, ``"none"`` without
        pooling) and ``placement``. Its ``attrs["effect_scale"]`` names the units of θ:
        ``"raw"`` (Y's units) or ``"residual_sd"`` (standardized effects).

    Raises
    ------
    ValueError
        For features that were estimated, duplicated labels, a missing level column, an
        annotation that contradicts the fit's tree (a known group under another parent), or a
        ``residual_sd`` that a fit in Y's units does not take or that lacks a new feature or
        is not finite and positive.
    """
    problem = problem_from_idata(idata)
    new = _check_annotations(annotations, problem.features, problem.levels)
    in_sd_units = problem.effect_scale == "residual_sd"
    unit = _new_units(residual_sd, new.index, in_sd_units=in_sd_units)
    posterior = idata.posterior
    lead = ("chain", "draw", "covariate")
    rng = np.random.default_rng(random_seed)
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    n_covariates, n_new = len(problem.covariates), len(new)
    shape = (n_chains, n_draws, n_covariates)
    if not problem.pooled:
        priors = problem.priors
        theta = priors.mu0[:, None] + priors.s0[:, None] * rng.standard_normal((*shape, n_new))
        known = np.array(["none"] * n_new, dtype=object)
        placement = np.array(["prior (no pooling)"] * n_new, dtype=object)
    else:
        tau = posterior["tau"].transpose(*lead, "level").to_numpy()
        theta, known, placement = _draw_from_tree(problem, new, posterior, tau, rng)
    features = pd.Index(new.index, name="feature")
    scale = "residual_sd" if in_sd_units and unit is None else "raw"
    predictions = xr.Dataset(
        {
            "theta": (
                ("chain", "draw", "covariate", "feature"),
                theta * (1.0 if unit is None else unit),
            )
        },
        coords={
            "chain": posterior["chain"].to_numpy(),
            "draw": posterior["draw"].to_numpy(),
            "covariate": problem.covariates.to_numpy(),
            "feature": features.to_numpy(),
        },
    )
    constant = xr.Dataset(
        {"known_level": ("feature", known), "placement": ("feature", placement)},
        coords={"feature": features.to_numpy()},
    )
    predictions.attrs["effect_scale"] = scale
    return az.InferenceData(predictions=predictions, predictions_constant_data=constant)


def _new_units(
    residual_sd: pd.Series | None, features: pd.Index, *, in_sd_units: bool
) -> np.ndarray | None:
    """The new features' residual SDs (in the order of ``features``), checked; or ``None``."""
    if residual_sd is None:
        return None
    if not in_sd_units:
        raise ValueError(
            "residual_sd is for a fit in residual-SD units; this fit is in Y's units "
            "(attrs['effect_scale'] == 'raw'), so its θ needs no conversion."
        )
    if not isinstance(residual_sd, pd.Series):
        raise ValueError(
            f"residual_sd must be a Series indexed by feature, got {type(residual_sd).__name__}."
        )
    absent = features[~features.isin(residual_sd.index)]
    if len(absent):
        raise ValueError(f"residual_sd lacks new feature(s) {absent[:10].tolist()!r}.")
    values = pd.to_numeric(residual_sd.loc[features], errors="coerce").to_numpy(dtype=float)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError("residual_sd must be finite and positive for every new feature.")
    return values


def _check_annotations(
    annotations: pd.DataFrame, fitted: pd.Index, levels: tuple[str, ...]
) -> pd.DataFrame:
    if not isinstance(annotations, pd.DataFrame):
        raise ValueError(
            "annotations must be a DataFrame indexed by feature, with one column per level; "
            f"got {type(annotations).__name__}."
        )
    if annotations.index.has_duplicates:
        duplicated = annotations.index[annotations.index.duplicated()].unique().tolist()
        raise ValueError(f"duplicated new feature labels: {duplicated[:10]!r}.")
    if len(annotations) == 0:
        raise ValueError("annotations has no rows: there is no new feature to predict.")
    estimated = annotations.index[annotations.index.isin(fitted)]
    if len(estimated):
        raise ValueError(
            f"{len(estimated)} feature(s) were estimated in the fit, so their posterior is in "
            f"idata.posterior, not a prediction: {estimated[:10].tolist()!r}."
        )
    absent = [level for level in levels if level not in annotations.columns]
    if absent:
        raise ValueError(
            f"annotations lacks the fit's level column(s) {absent!r}; the fit uses "
            f"{list(levels)!r} (finest first)."
        )
    return annotations.loc[:, list(levels)]


def _with_known_ancestors(new: pd.DataFrame, tree: Hierarchy) -> pd.DataFrame:
    """Fill a missing coarser label from the fit's tree where a finer group is known to it."""
    filled = new.copy()
    for level in range(tree.depth - 1):
        name, parent_name = tree.levels[level], tree.levels[level + 1]
        code = tree.groups[level].get_indexer(filled[name].astype(object))
        fill = (code >= 0) & filled[parent_name].isna().to_numpy()
        if fill.any():
            parents = tree.parents[level + 1][code[fill]]
            filled.loc[fill, parent_name] = tree.groups[level + 1][parents].to_numpy()
    return filled


def _draw_from_tree(
    problem: ShrinkageProblem,
    new: pd.DataFrame,
    posterior: xr.Dataset,
    tau: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ draws (chain, draw, covariate, new feature), known level and placement per feature.

    Walks from θ0 down. At each level the values are the known groups' posterior means
    followed by the new groups' drawn means; ``column`` is each new feature's unit there.
    Under a heavy-tailed group prior a new group's mean is drawn around its parent with
    τ_l λ, λ drawn from its prior in every draw
    (:meth:`~bayeshier_pymc.priors.Priors.draw_local_variances`); a new feature
    in a known group needs no λ (the features have none, and the group's mean is its
    posterior draw).
    """
    tree = problem.tree
    assert tree is not None  # a pooled fit
    new = _with_known_ancestors(new, tree)
    lead = ("chain", "draw", "covariate")
    depth = tree.depth
    values = posterior["mu"].transpose(*lead).to_numpy()[..., None]
    n_known_above = 1  # θ0
    column = np.zeros(len(new), dtype=np.intp)
    known_depth = np.full(len(new), depth + 1)
    for level in range(depth, 0, -1):
        name = tree.levels[level - 1]
        groups = tree.groups[level - 1]
        labels = new[name]
        code = np.where(labels.notna(), groups.get_indexer(labels.astype(object)), -1)
        known = code >= 0
        parent = tree.parents[level] if level < depth else np.zeros(len(groups), np.intp)
        clash = known & ((column >= n_known_above) | (parent[np.maximum(code, 0)] != column))
        if clash.any():
            raise ValueError(
                f"the {name!r} group of {new.index[clash][:10].tolist()!r} is known to the fit "
                "under another parent than the annotation gives."
            )
        known_depth[known] = level
        keys = [
            (int(c), str(label) if pd.notna(label) else f"missing: {feature}")
            for c, label, feature in zip(column, labels, new.index, strict=True)
        ]
        new_keys = sorted({key for key, k in zip(keys, known, strict=True) if not k})
        slot = {key: len(groups) + i for i, key in enumerate(new_keys)}
        parents_of_new = np.array([c for c, _ in new_keys], dtype=np.intp)
        scale = tau[..., level][..., None]
        new_shape = (*values.shape[:-1], len(new_keys))
        if problem.priors.heavy_tailed:
            scale = scale * np.sqrt(problem.priors.draw_local_variances(new_shape, rng))
        new_means = values[..., parents_of_new] + scale * rng.standard_normal(new_shape)
        known_means = posterior[group_mean_name(name)].transpose(*lead, name).to_numpy()
        values = np.concatenate([known_means, new_means], axis=-1)
        column = np.array(
            [c if k else slot[key] for c, k, key in zip(code, known, keys, strict=True)],
            dtype=np.intp,
        )
        n_known_above = len(groups)
    theta = values[..., column] + tau[..., 0][..., None] * rng.standard_normal(
        (*values.shape[:-1], len(new))
    )
    known_level = np.array(
        ["θ0" if d == depth + 1 else tree.levels[d - 1] for d in known_depth], dtype=object
    )
    placement = np.array(
        [
            PLACEMENTS[0] if d == 1 else PLACEMENTS[2] if d == depth + 1 else PLACEMENTS[1]
            for d in known_depth
        ],
        dtype=object,
    )
    return theta, known_level, placement
