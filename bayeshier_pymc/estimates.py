"""Stage-1 output in one labelled form: estimates and standard errors per covariate × feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc._validation import as_finite_matrix, check_positive, check_unique_labels
from bayeshier_pymc.design import INTERCEPT_NAMES
from bayeshier_pymc.noise import TreeNoise

__all__ = ["Estimates", "shrunk_covariates"]

DIMS = ("covariate", "feature")
TIDY_COLUMNS = ("covariate", "feature", "estimate", "se")


def shrunk_covariates(
    labels: pd.Index, covariates: Sequence[Any] | Literal["all"] | None
) -> list[Any]:
    """The covariates stage 2 shrinks, among the estimates' ``labels``.

    Parameters
    ----------
    labels
        The estimates' covariates.
    covariates
        ``None`` (the default of :class:`~bayeshier_pymc.ShrinkageModel`, ``compare_depths``
        and ``bayeshier fit``): every covariate but the intercept, named ``"(Intercept)"``
        (this package's stage 1, R) or ``"Intercept"`` (formulaic, statsmodels); ``"all"``:
        every covariate, the intercept included; a list: these covariates, in this order
        (name the intercept to shrink it with others).

    Raises
    ------
    ValueError
        For text other than ``"all"``, or when nothing but the intercept is left.
    """
    if isinstance(covariates, str):
        if covariates != "all":
            raise ValueError(
                f"covariates must be a list of covariate labels, 'all' or None; got {covariates!r}."
            )
        return list(labels)
    if covariates is not None:
        return list(covariates)
    chosen = [label for label in labels if label not in INTERCEPT_NAMES]
    if not chosen:
        raise ValueError(
            f"the estimates hold only the intercept ({list(labels)!r}), which is not shrunk "
            "by default; pass covariates='all' to shrink it."
        )
    return chosen


@dataclass(frozen=True, eq=False)
class Estimates:
    """Estimates ``b`` and standard errors ``s`` with dims ``("covariate", "feature")``.

    Build it with :meth:`from_any`, which accepts a stage-1 fit, a tidy frame or arrays.
    ``noise`` is the estimates' correlated-noise structure
    (:func:`~bayeshier_pymc.noise.tree_noise`), or ``None`` for independent errors (``se²``).
    """

    estimate: xr.DataArray
    se: xr.DataArray
    noise: TreeNoise | None = None

    @property
    def covariates(self) -> pd.Index:
        """Covariate labels."""
        return self.estimate.indexes["covariate"]

    @property
    def features(self) -> pd.Index:
        """Feature labels."""
        return self.estimate.indexes["feature"]

    @classmethod
    def from_any(
        cls,
        estimates: Any,
        *,
        covariates: list[Any] | None = None,
        noise: TreeNoise | None = None,
    ) -> Estimates:
        """Normalise any supported stage-1 output.

        Parameters
        ----------
        estimates
            One of: an object with ``coef`` and ``se`` DataArrays (an :class:`MLMFit`); an
            :class:`Estimates`; a tidy DataFrame with columns ``covariate, feature, estimate,
            se``; a pair ``(b, se)`` or a mapping ``{"estimate": b, "se": se}`` of arrays
            (1-D for one covariate, or covariate × feature) or of labelled DataArrays /
            DataFrames (covariates as rows, features as columns).
        covariates
            Keep only these covariates, in this order.
        noise
            The estimates' noise structure (its features in the estimates' order, every
            covariate among its covariates); default: the one ``estimates`` carries, if any
            (an :class:`Estimates`), else none.

        Returns
        -------
        Estimates

        Raises
        ------
        ValueError
            For an unknown input type, mismatched shapes or labels, duplicated labels,
            non-finite values, standard errors that are not strictly positive, or a noise
            structure whose features or covariates do not match.
        """
        if isinstance(estimates, Estimates):
            result = estimates
        elif hasattr(estimates, "coef") and hasattr(estimates, "se"):
            result = cls._from_arrays(estimates.coef, estimates.se)
        elif isinstance(estimates, pd.DataFrame):
            result = cls._from_tidy(estimates)
        elif isinstance(estimates, Mapping):
            missing = {"estimate", "se"} - set(estimates)
            if missing:
                raise ValueError(f"the estimates mapping lacks the key(s) {sorted(missing)!r}.")
            result = cls._from_arrays(estimates["estimate"], estimates["se"])
        elif isinstance(estimates, tuple) and len(estimates) == 2:
            result = cls._from_arrays(*estimates)
        else:
            raise ValueError(
                "estimates must be a stage-1 fit, a tidy DataFrame (covariate, feature, "
                "estimate, se), a pair (b, se) or a mapping {'estimate': b, 'se': se}; got "
                f"{type(estimates).__name__}."
            )
        if covariates is not None:
            absent = [c for c in covariates if c not in result.covariates]
            if absent:
                raise ValueError(
                    f"covariates {absent!r} are not among the estimates' covariates "
                    f"{result.covariates.tolist()!r}."
                )
            result = Estimates(
                result.estimate.sel(covariate=covariates),
                result.se.sel(covariate=covariates),
                result.noise,
            )
        if noise is not None:
            _check_noise(noise, result)
            result = Estimates(result.estimate, result.se, noise)
        return result

    @classmethod
    def _from_tidy(cls, frame: pd.DataFrame) -> Estimates:
        absent = [c for c in TIDY_COLUMNS if c not in frame.columns]
        if absent:
            raise ValueError(
                f"the tidy estimates frame lacks column(s) {absent!r}; it needs {TIDY_COLUMNS!r}."
            )
        if frame.duplicated(["covariate", "feature"]).any():
            dup = frame.loc[frame.duplicated(["covariate", "feature"]), ["covariate", "feature"]]
            raise ValueError(
                "the tidy estimates frame has duplicated (covariate, feature) rows, e.g. "
                f"{tuple(dup.iloc[0])!r}."
            )
        covariates = pd.Index(pd.unique(frame["covariate"]))
        features = pd.Index(pd.unique(frame["feature"]))
        wide = {
            column: frame.pivot(index="covariate", columns="feature", values=column).reindex(
                index=covariates, columns=features
            )
            for column in ("estimate", "se")
        }
        if wide["estimate"].isna().to_numpy().any():
            raise ValueError(
                "the tidy estimates frame is incomplete: every covariate needs a row for every "
                "feature (or it holds NaN estimates)."
            )
        return cls._from_arrays(wide["estimate"], wide["se"])

    @classmethod
    def _from_arrays(cls, estimate: Any, se: Any) -> Estimates:
        covariates, features = _labels_of(estimate)
        _refuse_booleans(estimate, "estimates")
        _refuse_booleans(se, "standard errors (se)")
        b = as_finite_matrix(np.atleast_2d(np.asarray(estimate, dtype=float)), "estimates")
        s = as_finite_matrix(np.atleast_2d(np.asarray(se, dtype=float)), "standard errors (se)")
        if b.shape != s.shape:
            raise ValueError(
                f"estimates have shape {b.shape} but standard errors have shape {s.shape}."
            )
        check_positive(s, "standard errors (se)")
        check_stage2_range(b, s)
        se_covariates, se_features = _labels_of(se)
        if covariates is None:
            covariates = se_covariates
        if features is None:
            features = se_features
        covariates = check_unique_labels(
            covariates if covariates is not None else [f"x{k}" for k in range(b.shape[0])],
            "covariate labels",
        )
        features = check_unique_labels(
            features if features is not None else [f"feature_{j}" for j in range(b.shape[1])],
            "feature labels",
        )
        for name, own, other in (
            ("covariate", covariates, se_covariates),
            ("feature", features, se_features),
        ):
            if other is not None and not pd.Index(other).equals(own):
                raise ValueError(f"estimates and standard errors have different {name} labels.")
        coords = {
            "covariate": covariates.rename("covariate"),
            "feature": features.rename("feature"),
        }
        return cls(
            xr.DataArray(b, dims=DIMS, coords=coords, name="estimate"),
            xr.DataArray(s, dims=DIMS, coords=coords, name="se"),
        )

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame with columns ``covariate, feature, estimate, se``."""
        frame = xr.Dataset({"estimate": self.estimate, "se": self.se}).to_dataframe()
        return frame.reset_index()[list(TIDY_COLUMNS)]


def _check_noise(noise: object, estimates: Estimates) -> None:
    if not isinstance(noise, TreeNoise):
        raise ValueError(f"noise must be a TreeNoise, got {type(noise).__name__}.")
    if not noise.features.equals(estimates.features):
        raise ValueError("the noise structure's features differ from the estimates' (or order).")
    absent = estimates.covariates.difference(noise.covariate_scale.index)
    if len(absent):
        raise ValueError(f"the noise structure lacks covariate(s) {absent.tolist()!r}.")


STAGE2_LIMIT = 1e100
"""|estimate| ≤ STAGE2_LIMIT and se in [1/STAGE2_LIMIT, STAGE2_LIMIT]: squares and sums of
squares (s² + τ², (b - θ)²) then stay far from float64's overflow and underflow, as in stage 1."""


def check_stage2_range(b: np.ndarray, s: np.ndarray) -> None:
    """Raise if an estimate or a standard error lies where the stage-2 algebra is not exact.

    Parameters
    ----------
    b, s
        Finite estimates and positive standard errors, covariate × feature.
    """
    for values, name, low in (
        (np.abs(b), "estimates", 0.0),
        (s, "standard errors (se)", 1.0 / STAGE2_LIMIT),
    ):
        outside = (values > STAGE2_LIMIT) | (values < low)
        if outside.any():
            first = tuple(int(i) for i in np.argwhere(outside)[0])
            bound = "|value| <= 1e100" if low == 0 else "[1e-100, 1e100]"
            raise ValueError(
                f"{name} hold {int(outside.sum())} value(s) outside {bound}, the first "
                f"({values[first]!r}) at position {first}; rescale the responses or covariates."
            )


def _refuse_booleans(values: Any, name: str) -> None:
    dtypes = values.dtypes if isinstance(values, pd.DataFrame) else [np.asarray(values).dtype]
    if any(pd.api.types.is_bool_dtype(dtype) for dtype in dtypes):
        raise ValueError(f"{name} must be numbers, got booleans.")


def _labels_of(values: Any) -> tuple[pd.Index | None, pd.Index | None]:
    """Covariate and feature labels carried by a DataArray, DataFrame or Series, if any."""
    if isinstance(values, xr.DataArray):
        if values.dims != DIMS:
            raise ValueError(f"labelled estimates must have dims {DIMS}, got {values.dims}.")
        return values.indexes["covariate"], values.indexes["feature"]
    if isinstance(values, pd.DataFrame):
        return values.index, values.columns
    if isinstance(values, pd.Series):
        return None, values.index
    return None, None
