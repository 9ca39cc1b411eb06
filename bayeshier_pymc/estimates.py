"""Stage-1 output in one labelled form: estimates and standard errors per covariate × feature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc._validation import as_numeric_matrix, check_positive, check_unique_labels
from bayeshier_pymc.design import INTERCEPT_NAMES
from bayeshier_pymc.noise import TreeNoise

__all__ = [
    "MISSING_VARIANCE_FACTOR",
    "Estimates",
    "check_residual_sd",
    "fill_missing",
    "missing_cells",
    "shrunk_covariates",
]

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
    A missing cell (see :func:`missing_cells`) holds NaN in both ``estimate`` and ``se``.
    ``residual_sd`` (dim ``feature``) is set when the estimates are in units of each feature's
    residual SD (a :meth:`~bayeshier_pymc.mlm.MLMFit.standardized` fit): multiplied by it they
    are in Y's units (:meth:`in_y_units`); ``None``: they are in Y's units.
    """

    estimate: xr.DataArray
    se: xr.DataArray
    noise: TreeNoise | None = None
    residual_sd: xr.DataArray | None = None

    def __post_init__(self) -> None:
        if self.residual_sd is None:
            return
        sd = self.residual_sd
        if sd.dims != ("feature",) or not sd.indexes["feature"].equals(self.features):
            raise ValueError("residual_sd must be one value per feature, in the estimates' order.")
        check_residual_sd(sd.to_numpy(), ~self.missing.to_numpy())

    @property
    def covariates(self) -> pd.Index:
        """Covariate labels."""
        return self.estimate.indexes["covariate"]

    @property
    def features(self) -> pd.Index:
        """Feature labels."""
        return self.estimate.indexes["feature"]

    @property
    def missing(self) -> xr.DataArray:
        """Whether each (covariate, feature) cell is missing (NaN estimate and se)."""
        return self.estimate.isnull().rename("missing")

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
            values that are neither finite nor a missing cell (:func:`missing_cells`),
            standard errors that are not strictly positive, a covariate whose every cell is
            missing, or a noise structure whose features or covariates do not match.
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
            result = replace(
                result,
                estimate=result.estimate.sel(covariate=covariates),
                se=result.se.sel(covariate=covariates),
            )
        if noise is not None:
            _check_noise(noise, result)
            result = replace(result, noise=noise)
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
        # an absent (covariate, feature) row pivots to NaN: a missing cell
        return cls._from_arrays(wide["estimate"], wide["se"])

    @classmethod
    def _from_arrays(cls, estimate: Any, se: Any) -> Estimates:
        covariates, features = _labels_of(estimate)
        _refuse_booleans(estimate, "estimates")
        _refuse_booleans(se, "standard errors (se)")
        b = as_numeric_matrix(np.atleast_2d(np.asarray(estimate, dtype=float)), "estimates")
        s = as_numeric_matrix(np.atleast_2d(np.asarray(se, dtype=float)), "standard errors (se)")
        if b.shape != s.shape:
            raise ValueError(
                f"estimates have shape {b.shape} but standard errors have shape {s.shape}."
            )
        missing = missing_cells(b, s)
        b, s = np.where(missing, np.nan, b), np.where(missing, np.nan, s)
        check_positive(np.where(missing, 1.0, s), "standard errors (se)")
        check_stage2_range(np.where(missing, 0.0, b), np.where(missing, 1.0, s))
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
        empty = missing.all(axis=1)
        if empty.any():
            raise ValueError(
                f"covariate(s) {covariates[empty].tolist()!r} have no estimate at all (every "
                "cell missing); drop them (Estimates.from_any(..., covariates=[...]))."
            )
        coords = {
            "covariate": covariates.rename("covariate"),
            "feature": features.rename("feature"),
        }
        return cls(
            xr.DataArray(b, dims=DIMS, coords=coords, name="estimate"),
            xr.DataArray(s, dims=DIMS, coords=coords, name="se"),
        )

    def in_y_units(self) -> Estimates:
        """The estimates and standard errors in Y's units (these, if already in them).

        Estimates in units of each feature's residual SD are multiplied by it; the noise
        structure, which describes them in those units, is not kept.
        """
        if self.residual_sd is None:
            return self
        sd = self.residual_sd
        return Estimates((self.estimate * sd).rename("estimate"), (self.se * sd).rename("se"))

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame with columns ``covariate, feature, estimate, se``."""
        frame = xr.Dataset({"estimate": self.estimate, "se": self.se}).to_dataframe()
        return frame.reset_index()[list(TIDY_COLUMNS)]


def missing_cells(b: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Which cells are missing: NaN estimate, NaN standard error or an infinite one.

    The one rule of the package (``docs/missing_values.md``): a cell is missing when its
    estimate is NaN, its standard error is NaN, or its standard error is +inf (no
    information, as in mashr). A missing cell leaves the likelihood and its θ gets its
    posterior from the tree.

    Raises
    ------
    ValueError
        For an infinite estimate, a standard error of -inf, or a NaN estimate with a finite
        standard error (a value said to be measured but absent: a misaligned column?).
    """
    nan_b, nan_s, inf_s = np.isnan(b), np.isnan(s), s == np.inf
    for bad, what in (
        (np.isinf(b), "infinite estimate(s)"),
        (s == -np.inf, "standard error(s) of -inf"),
        (nan_b & ~nan_s & ~inf_s, "NaN estimate(s) with a finite standard error"),
    ):
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"the estimates hold non-finite values (NaN or inf) that are no missing cell: "
                f"{int(bad.sum())} {what}, the first at position {first}; a missing cell has a "
                "NaN estimate and a NaN (or infinite) standard error."
            )
    return nan_b | nan_s | inf_s


MISSING_VARIANCE_FACTOR = 1e30
"""A missing cell's variance in the tree algebra, relative to the largest variance it meets."""


def fill_missing(
    b: np.ndarray, variance: np.ndarray, missing: np.ndarray, prior_variance: float
) -> tuple[np.ndarray, np.ndarray]:
    """The estimates and variances the tree algebra runs on, with missing cells filled.

    A missing cell is an estimate of infinite variance: it leaves the likelihood, and the
    observed cells' marginal is that of the observed subset. The algebra (variance form,
    O(m) on the tree, in every sampler) takes it as the estimate 0 with the variance
    ``MISSING_VARIANCE_FACTOR`` (1e30) times the largest of ``prior_variance`` and the
    covariate's observed b² + variance: its weight in any posterior is then below 1e-30 of
    an observed estimate's (for scales τ within 1e15 of the data's scale), far below
    float64's resolution, so the posteriors are those of the observed subset to rounding
    (checked against dense Gaussian conditioning in ``tests/test_missing.py``). The log
    density gains a constant per missing cell, which no sampler sees.

    Parameters
    ----------
    b, variance
        Estimates and their variances (covariate, feature), anything in missing cells.
    missing
        Boolean mask of the missing cells, same shape.
    prior_variance
        The largest squared prior scale (θ0's prior mean and sd, the τ prior scales).

    Returns
    -------
    b, variance : numpy.ndarray
        Copies with the missing cells filled.
    """
    if not missing.any():
        return b, variance
    observed = np.where(missing, 0.0, b * b + variance)
    scale = np.maximum(observed.max(axis=-1, keepdims=True), prior_variance)
    return (
        np.where(missing, 0.0, b),
        np.where(missing, MISSING_VARIANCE_FACTOR * scale, variance),
    )


def check_residual_sd(residual_sd: np.ndarray, observed: np.ndarray) -> None:
    """Refuse residual SDs that are not finite and positive for every estimated feature.

    ``residual_sd`` has one value per feature, ``observed`` marks the observed (covariate,
    feature) cells; a feature without an observed cell (stage 1 could not estimate it) may
    have none (NaN).
    """
    estimated = np.asarray(observed).any(axis=0)
    sd = np.asarray(residual_sd, dtype=float)
    if sd.shape != estimated.shape or not (
        np.isfinite(sd[estimated]).all() and (sd[estimated] > 0).all()
    ):
        raise ValueError(
            f"residual_sd must have one value per feature ({estimated.size}), finite and "
            "positive for every estimated feature."
        )


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
