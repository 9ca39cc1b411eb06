"""``ShrinkageProblem``: what every sampler, log-likelihood and LOO function is given.

A problem is the data and the model choices of one shrinkage fit, frozen: the stage-1
estimates ``b`` and their standard errors as arrays with their labels, the annotation tree
aligned with the features and truncated to the depth used (``None`` for no pooling), and the
resolved priors. :class:`~bayeshier_pymc.shrinkage.ShrinkageModel` builds one from the user's
inputs (:meth:`ShrinkageProblem.build`) and
:func:`~bayeshier_pymc.inference_data.problem_from_idata` reads one back from a fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc.estimates import DIMS, Estimates
from bayeshier_pymc.gaussian_tree import TreeIndex
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.model import scale_levels
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
        Stage-1 estimates and their standard errors, (covariate, feature), float64.
    covariates, features
        Their labels.
    tree
        The annotation tree over ``features``, truncated to ``depth`` levels; ``None`` for no
        pooling.
    priors
        The resolved priors; ``priors.scale_levels`` are ``"feature"`` then the tree's levels.
    depth
        Number of annotation levels used, or ``"none"`` (no pooling).
    """

    b: np.ndarray
    se: np.ndarray
    covariates: pd.Index
    features: pd.Index
    tree: Hierarchy | None
    priors: Priors
    depth: Depth

    def __post_init__(self) -> None:
        for name in ("b", "se"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        shape = (len(self.covariates), len(self.features))
        if self.b.shape != shape or self.se.shape != shape:
            raise ValueError(
                f"b {self.b.shape} and se {self.se.shape} must both have shape {shape} "
                "(covariates × features)."
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

    @classmethod
    def build(
        cls,
        estimates: Estimates,
        hierarchy: Hierarchy | None,
        depth: int | Literal["none"] | None,
        priors: Mapping[str, Any] | None,
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
            Prior settings merged over :data:`~bayeshier_pymc.priors.DEFAULT_PRIORS`.
        """
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            raise ValueError(
                "hierarchy must be a Hierarchy (see Hierarchy.from_frame), got "
                f"{type(hierarchy).__name__}."
            )
        if estimates.noise is not None:
            # refused rather than ignored: the samplers' likelihood is still the independent one
            raise ValueError(
                "stage 2 cannot yet use a correlated-noise structure (Estimates.noise): its "
                "samplers and LOO treat the estimates as independent. Fit without noise= "
                "(the noise structure is for bayeshier_pymc.calibration and simulation until "
                "the structured likelihood lands)."
            )
        resolved = resolve_depth(depth, hierarchy)
        tree = None
        if resolved != "none":
            full = hierarchy if hierarchy is not None else _flat(estimates.features)
            tree = full.align(estimates.features).truncate(resolved)
        return cls(
            b=estimates.estimate.to_numpy(),
            se=estimates.se.to_numpy(),
            covariates=estimates.covariates,
            features=estimates.features,
            tree=tree,
            priors=Priors.resolve(priors, scale_levels(tree)),
            depth=resolved,
        )

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

    @cached_property
    def var_b(self) -> np.ndarray:
        """Squared standard errors, (covariate, feature)."""
        return self.se**2

    @cached_property
    def index(self) -> TreeIndex:
        """The integer structure of the tree (of a pooled problem)."""
        if self.tree is None:
            raise ValueError("a problem without pooling has no tree.")
        return TreeIndex.from_hierarchy(self.tree)

    @property
    def estimates(self) -> Estimates:
        """``b`` and ``se`` as labelled :class:`~bayeshier_pymc.estimates.Estimates`."""
        coords = {"covariate": self.covariates, "feature": self.features}
        return Estimates(
            xr.DataArray(self.b, dims=DIMS, coords=coords, name="estimate"),
            xr.DataArray(self.se, dims=DIMS, coords=coords, name="se"),
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
    if not 0 <= depth <= available:
        levels = list(hierarchy.levels) if hierarchy is not None else []
        raise ValueError(
            f"depth {depth} is beyond the annotation levels given ({available}: {levels!r})."
        )
    return int(depth)


def _flat(features: pd.Index) -> Hierarchy:
    return Hierarchy(pd.Index(features, name="feature"), (), (), ())
