"""``ShrinkageProblem``: what every sampler, log-likelihood and LOO function is given.

A problem is the data and the model choices of one shrinkage fit, frozen: the stage-1
estimates ``b`` and their standard errors as arrays with their labels, the annotation tree
aligned with the features and truncated to the depth used (``None`` for no pooling), the
resolved priors and, for correlated estimates, their tree-structured noise.

Noise and the algebra tree
--------------------------
Without a noise structure the estimates are independent, b_j ~ N(θ_j, se_j²), and the tree
algebra runs on the effect tree. With one (:class:`~bayeshier_pymc.noise.TreeNoise`), every
covariate's estimates carry noise shared at the nodes of the *noise tree* (all annotation
levels of the noise structure, whatever the depth used) plus each feature's own noise
(:attr:`ShrinkageProblem.var_b`). The algebra then runs on the noise tree
(:attr:`ShrinkageProblem.index`) with the scales of the levels the effects do not use fixed
at zero (:meth:`ShrinkageProblem.algebra_scales`): the likelihood of b is the same at every
depth, so fits at different depths (and without pooling) are comparable by LOO.

:class:`~bayeshier_pymc.shrinkage.ShrinkageModel` builds a problem from the user's inputs
(:meth:`ShrinkageProblem.build`) and :func:`~bayeshier_pymc.inference_data.problem_from_idata`
reads one back from a fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc.estimates import DIMS, Estimates, check_residual_sd
from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, pad_scales
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import EffectScale
from bayeshier_pymc.model import NoiseModel, algebra_data, scale_levels
from bayeshier_pymc.priors import Priors

__all__ = ["Depth", "ShrinkageProblem", "resolve_depth"]

Depth = int | Literal["none"]


@dataclass(frozen=True, eq=False)
class ShrinkageProblem:
    """The estimates, tree and priors of one shrinkage fit.

    Build it with :meth:`build` (or :func:`~bayeshier_pymc.inference_data.problem_from_idata`
    from a fit); the constructor checks that the parts agree.

    Attributes
    ----------
    b, se
        Stage-1 estimates and their standard errors, (covariate, feature), float64; NaN in
        both where a cell is missing (:attr:`missing`).
    covariates, features
        Their labels.
    tree
        The annotation tree over ``features``, truncated to ``depth`` levels; ``None`` for no
        pooling.
    priors
        The resolved priors; ``priors.scale_levels`` are ``"feature"`` then the tree's levels.
    depth
        Number of annotation levels used, or ``"none"`` (no pooling).
    noise_tree
        The tree of the estimates' shared noise, aligned with ``features`` (all its levels;
        the effect tree's levels are its finest ones); ``None`` for independent estimates.
    noise
        The shared-noise variances of every covariate's estimates at the nodes of
        ``noise_tree``, covariates leading; ``None`` for independent estimates.
    own_variance
        Each estimate's own noise variance (covariate, feature), with ``noise``.
    residual_sd
        Each feature's residual SD when ``b`` and ``se`` are in units of it (effects
        exchangeable in residual-SD units, :meth:`~bayeshier_pymc.mlm.MLMFit.standardized`):
        θ times it is in Y's units. ``None``: ``b`` is in Y's units.
    """

    b: np.ndarray
    se: np.ndarray
    covariates: pd.Index
    features: pd.Index
    tree: Hierarchy | None
    priors: Priors
    depth: Depth
    noise_tree: Hierarchy | None = None
    noise: NodeNoise | None = None
    own_variance: np.ndarray | None = None
    residual_sd: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("b", "se"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        shape = (len(self.covariates), len(self.features))
        if self.b.shape != shape or self.se.shape != shape:
            raise ValueError(
                f"b {self.b.shape} and se {self.se.shape} must both have shape {shape} "
                "(covariates × features)."
            )
        if not np.array_equal(np.isnan(self.b), np.isnan(self.se)):
            raise ValueError("a missing cell has NaN in both b and se; they differ.")
        observed = ~np.isnan(self.b)
        se = self.se[observed]
        if not (np.isfinite(self.b[observed]).all() and np.isfinite(se).all() and (se > 0).all()):
            raise ValueError(
                "observed estimates must be finite with finite positive standard errors (a "
                "missing cell has NaN in both; see Estimates.from_any)."
            )
        if (self.depth == "none") != (self.tree is None):
            raise ValueError(
                f"depth {self.depth!r} does not match the tree {self.tree!r}: no pooling "
                "(depth='none') and only no pooling has no tree."
            )
        if self.tree is not None:
            if self.tree.depth != self.depth:
                raise ValueError(f"the tree has {self.tree.depth} levels, not depth {self.depth}.")
            if not self.tree.features.equals(pd.Index(self.features)):
                raise ValueError("the tree's features differ from the estimates' features.")
        if self.priors.scale_levels != self.scale_levels:
            raise ValueError(
                f"the priors are for scale levels {self.priors.scale_levels!r}, the tree has "
                f"{self.scale_levels!r}."
            )
        if self.priors.covariates != tuple(self.covariates):
            raise ValueError(
                f"the priors are for covariates {list(self.priors.covariates)!r}, the estimates "
                f"have {self.covariates.tolist()!r}."
            )
        self._check_noise(shape)
        if self.residual_sd is not None:
            object.__setattr__(self, "residual_sd", np.asarray(self.residual_sd, dtype=float))
            check_residual_sd(self.residual_sd, observed)

    def _check_noise(self, shape: tuple[int, int]) -> None:
        parts = (self.noise_tree, self.noise, self.own_variance)
        if all(part is None for part in parts):
            return
        if any(part is None for part in parts):
            raise ValueError("noise_tree, noise and own_variance go together: give all or none.")
        tree, noise = self.noise_tree, self.noise
        assert tree is not None and noise is not None  # for the type checker
        if not tree.features.equals(pd.Index(self.features)):
            raise ValueError("the noise tree's features differ from the estimates' features.")
        if self.tree is not None:
            check_effect_levels(self.tree, tree)
        own = np.asarray(self.own_variance, dtype=float)
        object.__setattr__(self, "own_variance", own)
        expected = [(shape[0], n) for n in tree.n_groups]
        if own.shape != shape or [np.shape(g) for g in noise.groups] != expected:
            raise ValueError(
                f"the noise variances must be per covariate and node: own {shape}, groups "
                f"{expected}; got {own.shape} and {[np.shape(g) for g in noise.groups]}."
            )
        observed_own = own[~np.isnan(self.b)]  # a missing cell's own variance plays no role
        values = np.concatenate([observed_own, np.ravel(noise.top), *map(np.ravel, noise.groups)])
        if not np.all(np.isfinite(values)) or observed_own.min() <= 0 or values.min() < 0:
            raise ValueError(
                "noise variances must be finite, the own ones positive and the shared ones "
                "non-negative."
            )

    @classmethod
    def build(
        cls,
        estimates: Estimates,
        hierarchy: Hierarchy | None,
        depth: int | Literal["none"] | None,
        priors: str | Mapping[str, Any] | Priors | None,
    ) -> ShrinkageProblem:
        """The problem of ``estimates`` on ``hierarchy`` (aligned, truncated to ``depth``).

        Parameters
        ----------
        estimates
            Stage-1 estimates.
        hierarchy
            The annotation tree; ``None``: every θ_j shrinks to one global mean (depth 0).
        depth
            Annotation levels used, finest first; ``"none"`` for no pooling; ``None``: all.
        priors
            A preset name, settings over a preset, or resolved priors
            (:meth:`~bayeshier_pymc.priors.Priors.resolve`; ``None``: the ``"auto"`` preset,
            scaled to each covariate's standard errors).
        """
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            raise ValueError(
                "hierarchy must be a Hierarchy (see Hierarchy.from_frame), got "
                f"{type(hierarchy).__name__}."
            )
        resolved = resolve_depth(depth, hierarchy)
        tree = None
        if resolved != "none":
            full = hierarchy if hierarchy is not None else Hierarchy.flat(estimates.features)
            tree = full.align(estimates.features).truncate(resolved)
        noise_parts: dict[str, Any] = {}
        if estimates.noise is not None:
            structure = estimates.noise.align(estimates.features)
            per_covariate = [structure.for_covariate(c) for c in estimates.covariates]
            noise_parts = {
                "noise_tree": structure.hierarchy,
                "noise": NodeNoise(
                    tuple(
                        np.stack(level)
                        for level in zip(*(v.groups for v in per_covariate), strict=True)
                    ),
                    np.array([v.top for v in per_covariate]),
                ),
                "own_variance": np.stack([v.own for v in per_covariate]),
            }
        return cls(
            b=estimates.estimate.to_numpy(),
            se=estimates.se.to_numpy(),
            covariates=estimates.covariates,
            features=estimates.features,
            tree=tree,
            priors=Priors.resolve(
                priors, scale_levels(tree), estimates.covariates, estimates.se.to_numpy()
            ),
            depth=resolved,
            **noise_parts,
            residual_sd=None if estimates.residual_sd is None else estimates.residual_sd.to_numpy(),
        )

    @property
    def effect_scale(self) -> EffectScale:
        """The units of ``b``: ``"residual_sd"`` with :attr:`residual_sd`, else ``"raw"``."""
        return "raw" if self.residual_sd is None else "residual_sd"

    @property
    def pooled(self) -> bool:
        """Whether the features are pooled (False only for ``depth="none"``)."""
        return self.tree is not None

    @property
    def levels(self) -> tuple[str, ...]:
        """The annotation levels used, finest first (none at depth 0 or without pooling)."""
        return self.tree.levels if self.tree is not None else ()

    @property
    def scale_levels(self) -> tuple[str, ...]:
        """The levels of τ: ``"feature"`` then each annotation level used."""
        return scale_levels(self.tree)

    @property
    def correlated(self) -> bool:
        """Whether the estimates carry tree-structured (correlated) noise."""
        return self.noise is not None

    @cached_property
    def noise_model(self) -> NoiseModel | None:
        """The noise in the form :func:`~bayeshier_pymc.model.build_model` takes, or ``None``."""
        if self.noise is None:
            return None
        return NoiseModel(self.index, self.noise, self.var_b)

    @cached_property
    def missing(self) -> np.ndarray:
        """Whether each (covariate, feature) cell is missing (boolean)."""
        return np.isnan(self.b)

    @property
    def has_missing(self) -> bool:
        """Whether any cell is missing."""
        return bool(self.missing.any())

    @cached_property
    def _algebra_data(self) -> tuple[np.ndarray, np.ndarray]:
        variance = self.own_variance if self.own_variance is not None else self.se**2
        return algebra_data(self.b, variance, self.priors)

    @property
    def algebra_b(self) -> np.ndarray:
        """The estimates the tree algebra runs on: ``b`` with missing cells at 0.

        Missing cells carry an effectively infinite variance in :attr:`var_b`
        (:func:`~bayeshier_pymc.estimates.fill_missing`), so their value plays no role.
        """
        return self._algebra_data[0]

    @property
    def var_b(self) -> np.ndarray:
        """Each estimate's variance given its total, (covariate, feature).

        The squared standard errors for independent estimates; with correlated noise, each
        estimate's own noise variance (the shared parts are in :attr:`noise`). Missing cells
        hold an effectively infinite variance (:func:`~bayeshier_pymc.estimates.fill_missing`).
        """
        return self._algebra_data[1]

    @cached_property
    def algebra_tree(self) -> Hierarchy:
        """The tree the Gaussian algebra runs on: the noise tree, else the effect tree."""
        tree = self.noise_tree if self.noise_tree is not None else self.tree
        if tree is None:
            raise ValueError("a problem without pooling and without noise has no tree.")
        return tree

    @cached_property
    def index(self) -> TreeIndex:
        """The integer structure of :attr:`algebra_tree`."""
        return TreeIndex.from_hierarchy(self.algebra_tree)

    def unpooled_algebra(self) -> tuple[np.ndarray, float]:
        """Scales (covariate, depth + 1) and θ0's prior sd of the tree algebra without pooling.

        Each θ_j ~ N(mu0, s0²) independently: on the noise tree, the features' scale is each
        covariate's s0, every group's zero, and θ0 is fixed at mu0 (prior sd zero).
        """
        return self.algebra_scales(self.priors.s0[:, None]), 0.0

    def algebra_scales(self, tau: np.ndarray) -> np.ndarray:
        """Scales ``(..., depth + 1)`` padded with zeros to the levels of :attr:`index`.

        The levels of the noise tree that the effects do not use have no effect variation
        (scale zero); without noise this is ``tau`` itself. Without pooling see
        :meth:`unpooled_algebra`.
        """
        return pad_scales(np.asarray(tau, dtype=float), self.index.depth)

    @property
    def estimates(self) -> Estimates:
        """``b`` and ``se`` as labelled :class:`~bayeshier_pymc.estimates.Estimates`."""
        coords = {"covariate": self.covariates, "feature": self.features}
        sd = self.residual_sd
        return Estimates(
            xr.DataArray(self.b, dims=DIMS, coords=coords, name="estimate"),
            xr.DataArray(self.se, dims=DIMS, coords=coords, name="se"),
            residual_sd=None
            if sd is None
            else xr.DataArray(
                sd, dims=("feature",), coords={"feature": self.features}, name="residual_sd"
            ),
        )

    def __repr__(self) -> str:
        tree = "no pooling" if self.tree is None else repr(self.tree)
        return (
            f"ShrinkageProblem({len(self.covariates)} covariates × {len(self.features)} "
            f"features; depth={self.depth}; {tree})"
        )


def resolve_depth(depth: int | str | None, hierarchy: Hierarchy | None) -> Depth:
    """Check a requested depth against the levels of ``hierarchy``; ``None`` means all."""
    available = hierarchy.depth if hierarchy is not None else 0
    if depth is None:
        return available
    if isinstance(depth, str):
        if depth != "none":
            raise ValueError(f"depth must be an integer or 'none', got {depth!r}.")
        return "none"
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer):
        raise ValueError(f"depth must be an integer or 'none', got {depth!r}.")
    if depth < 0:
        raise ValueError(f"depth must be 0 or more (or 'none'), got {depth}.")
    if depth > available:
        levels = list(hierarchy.levels) if hierarchy is not None else []
        raise ValueError(
            f"depth {depth} is beyond the annotation levels given ({available}: {levels!r})."
        )
    return int(depth)


def check_effect_levels(effect_tree: Hierarchy, noise_tree: Hierarchy) -> None:
    """Check that the effect tree's levels are the noise tree's finest, in the same order.

    Raises
    ------
    ValueError
        Naming the first level that differs.
    """
    if effect_tree.depth > noise_tree.depth:
        raise ValueError(
            f"the model uses {effect_tree.depth} annotation levels {list(effect_tree.levels)!r} "
            f"but the noise structure has only {list(noise_tree.levels)!r}: estimate the noise "
            "on the same tree (bayeshier_pymc.tree_noise(fit, hierarchy))."
        )
    for level, name in enumerate(effect_tree.levels):
        # the same groups in the same order: the InferenceData stores one map per level
        same = (
            name == noise_tree.levels[level]
            and effect_tree.groups[level].equals(noise_tree.groups[level])
            and np.array_equal(effect_tree.parents[level], noise_tree.parents[level])
        )
        if not same:
            raise ValueError(
                f"annotation level {name!r} of the model differs from level "
                f"{noise_tree.levels[level]!r} of the noise structure: estimate the noise on "
                "the same tree (bayeshier_pymc.tree_noise(fit, hierarchy))."
            )
