"""Stage 1: the matrix linear model ``Y = X B Z' + E`` (a port of MatrixLM.jl).

``Y`` is n × m (samples × features), ``X`` n × p (sample covariates), ``Z`` m × q (feature
design). The estimates follow MatrixLM.jl's ``mlm``:

* ``B̂ = (X'X)⁻¹ X' Y W Z (Z'WZ)⁻¹``, computed from a thin QR decomposition of ``X`` and a
  Cholesky solve with ``Z'WZ`` (no explicit inverses). ``W = diag(weights)`` weights the columns
  (features) of ``Y``, as in MatrixLM.jl. With ``Z=None`` (one coefficient per feature; no m × m
  identity is built) the weights cancel exactly, as they do in MatrixLM.jl with ``Z = I``.
* residuals ``E = Y - X B̂ Z'`` (unweighted) and ``Σ̂ = E'E / d`` with ``d = n - p`` (``dof="n-p"``,
  default, unbiased) or ``d = n - 1`` (``dof="n-1"``, MatrixLM.jl's choice), optionally shrunk
  (see :mod:`bayeshier_pymc.covariance`);
* ``Var(B̂) = diag((X'X)⁻¹ ⊗ A Σ̂ A')`` with ``A = (Z'WZ)⁻¹ Z'W``. With ``Z=None`` and no shrinkage
  only the per-feature residual variances are computed, never the m × m ``Σ̂``.

t statistics are ``B̂ / se`` and two-sided p-values use the t distribution with ``n - p`` degrees
of freedom whatever ``dof`` is. Unlike MatrixLM.jl, intercept coefficients are reported too
(select them away with ``fit.coef.drop_sel(covariate="(Intercept)")``).
"""

from __future__ import annotations

import html
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Literal

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats
import xarray as xr

from bayeshier_pymc import covariance, design, permutation
from bayeshier_pymc._validation import as_finite_matrix, check_positive
from bayeshier_pymc.design import INTERCEPT, Design

COVARIATE = "covariate"
FEATURE = "feature"
SAMPLE = "sample"
_PERFECT_FIT = 1e-20
_FDR_LEVEL = 0.05
_MAX_EXPONENT = 100
_MAX_MAGNITUDE = 10.0**_MAX_EXPONENT


@dataclass(frozen=True)
class _Core:
    """The decomposed designs that every estimate (and each permutation) is computed from."""

    x: np.ndarray
    q: np.ndarray
    r: np.ndarray
    xtx_inv_diag: np.ndarray
    z: np.ndarray | None
    z_map: np.ndarray | None
    divisor: int
    df_resid: int
    shrinkage: str | None


@dataclass(frozen=True)
class _Estimate:
    """Coefficients, their variances and the residual quantities of one response matrix."""

    coef: np.ndarray
    variance: np.ndarray
    resid: np.ndarray | None
    covariance: np.ndarray | None
    shrinkage_lambda: float | dict[str, float] | None


def mlm(
    Y: object,
    X: object,
    Z: object = None,
    *,
    x_intercept: bool = True,
    z_intercept: bool = True,
    weights: object = None,
    shrinkage: str | None = None,
    dof: str = "n-p",
    data: pd.DataFrame | None = None,
    feature_data: pd.DataFrame | None = None,
    missing: MissingValues = "raise",
) -> MLMFit:
    """Fit the matrix linear model ``Y = X B Z' + E`` by least squares.

    Parameters
    ----------
    Y
        Response, samples × features: a 2-D array or a DataFrame (index: samples, columns:
        features).
    X
        Sample covariates: a 2-D array, a DataFrame, or a formulaic formula string evaluated on
        ``data`` (e.g. ``"age + bmi + C(sex, contr.treatment('F'))"``). A DataFrame's (or
        ``data``'s) index must hold the same labels as ``Y``'s index; rows are reordered to Y.
    Z
        Feature design, features × feature covariates (array, DataFrame, or a formula evaluated
        on ``feature_data``), or ``None`` for one coefficient per feature.
    x_intercept, z_intercept
        Prepend a column of ones named ``"(Intercept)"`` to an array or DataFrame ``X`` / ``Z``.
        With a formula the formula decides (``1 +`` is implicit, ``0 + ...`` removes it); passing
        ``False`` with a formula that has an intercept raises. ``z_intercept`` is ignored when
        ``Z`` is None.
    weights
        Positive column (feature) weights, length m (array, or a Series indexed by feature):
        ``Z'WZ`` replaces ``Z'Z`` as in MatrixLM.jl. They have no effect when ``Z`` is None.
    shrinkage
        ``None`` or a covariance shrinkage target ``"A"``, ``"B"``, ``"C"``, ``"D"`` (Schäfer &
        Strimmer 2005) or ``"R"`` (log-variances and Fisher-z correlations); see
        :mod:`bayeshier_pymc.covariance`.
    dof
        Divisor of ``Σ̂ = E'E / d``: ``"n-p"`` (default) or ``"n-1"`` (MatrixLM.jl).
    data
        Sample data frame for a formula ``X``.
    feature_data
        Feature annotation frame (index: features) for a formula ``Z``.
    missing
        What a NaN in ``Y`` means. ``"raise"`` (default): an error. ``"per-feature"``: each
        feature is fitted by least squares on its own complete rows, with its own residual
        variance, degrees of freedom ``n_j - p`` and standard errors from its own
        ``(X_j'X_j)⁻¹`` (limma's ``lmFit`` with missing values); a feature whose complete
        rows leave no residual degree of freedom or a rank-deficient ``X_j`` gets NaN
        estimates (missing cells for stage 2) and a warning. Only with ``Z=None``, no
        ``shrinkage`` and no ``weights``; ``permutation_test`` and ``residual_covariance``
        are refused on such a fit, and its ``df_resid`` is per feature.

    Returns
    -------
    MLMFit
        The fitted model with labelled results.

    Raises
    ------
    ValueError
        For non-finite or empty inputs, mismatched shapes or labels, rank-deficient ``X`` or
        ``Z``, ``n <= p``, non-positive weights, an unknown shrinkage target or ``dof``, or
        features whose residual variance is zero.

    Examples
    --------
    >>> import bayeshier_pymc as bh
    >>> study = bh.demo_study()  # 150 samples × 300 metabolites, covariates age, bmi, sex
    >>> fit = bh.mlm(study.Y, study.X)  # X a DataFrame: an intercept is added
    >>> dict(fit.coef.sizes)
    {'covariate': 4, 'feature': 300}
    >>> fit.to_frame().columns.tolist()
    ['covariate', 'feature', 'estimate', 'se', 't', 'p', 'p_adj']

    A formula on a sample table names the covariates as it expands them:

    >>> bh.mlm(study.Y, "age + bmi", data=study.X).coef.indexes["covariate"].tolist()
    ['(Intercept)', 'age', 'bmi']
    """
    shrinkage = covariance.validate_target(shrinkage)
    dof = covariance.validate_dof(dof)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES!r}, got {missing!r}.")
    try:
        response = design.response_matrix(Y, allow_nan=missing == "per-feature")
    except ValueError as err:
        if missing == "raise" and "non-finite" in str(err):
            raise ValueError(
                f"{err} Where they are NaN (missing values), missing='per-feature' fits each "
                "feature on its complete rows."
            ) from None
        raise
    has_nan = bool(np.isnan(response.values).any())
    per_feature = missing == "per-feature" and has_nan
    if per_feature and (Z is not None or shrinkage is not None or weights is not None):
        raise ValueError(
            "missing='per-feature' fits each feature on its own rows: it needs Z=None, no "
            "shrinkage and no weights (a feature design or a shared covariance mixes features "
            "fitted on different rows)."
        )
    n_obs, n_features = response.values.shape
    x_design = design.build_design(
        X,
        name="X",
        frame=data,
        frame_arg="data",
        intercept=x_intercept,
        labels=response.samples,
        row_kind="sample",
        n_rows=n_obs,
    )
    z_design = _z_design(Z, feature_data, z_intercept, response.features, n_features)
    features = _feature_labels(response, z_design, n_features)
    _check_dimensions(x_design)
    _check_magnitude(np.nan_to_num(response.values), features, "Y", "features")
    _check_magnitude(x_design.matrix, x_design.columns, "X", "columns")
    if z_design is not None:
        _check_magnitude(z_design.matrix, z_design.columns, "Z", "columns")
    design.check_full_rank(x_design.matrix, x_design.columns, "X")
    if z_design is not None:
        design.check_full_rank(z_design.matrix, z_design.columns, "Z")
    weight_values = _validate_weights(weights, features, z_design is None)
    core = _make_core(x_design, z_design, weight_values, dof, shrinkage)
    coef_labels = features if z_design is None else z_design.columns
    rows = None
    if per_feature:
        estimate, rows = _estimate_per_feature(core, response.values, dof, coef_labels)
    else:
        estimate = _estimate(core, response.values, labels=coef_labels)
    return MLMFit(
        core=core,
        estimate=estimate,
        y=response.values,
        x_design=x_design,
        z_design=z_design,
        features=features,
        weights=weight_values,
        dof=dof,
        rows=rows,
    )


EffectScale = Literal["raw", "residual_sd"]
"""The units in which stage 2 takes the effects as exchangeable: Y's, or each feature's residual
SD (:meth:`MLMFit.standardized`)."""
EFFECT_SCALES: tuple[str, ...] = ("raw", "residual_sd")
EffectScaleChoice = Literal["auto", "raw", "residual_sd"]
"""What a user may ask for (:data:`EFFECT_SCALE_CHOICES`)."""
EFFECT_SCALE_CHOICES: tuple[str, ...] = ("auto", *EFFECT_SCALES)
"""What a user may ask for: one of :data:`EFFECT_SCALES`, or ``"auto"`` (see
:func:`resolve_effect_scale`)."""


def check_effect_scale(effect_scale: object) -> None:
    """Refuse a choice of units that is not one of :data:`EFFECT_SCALE_CHOICES`, naming them.

    Raises
    ------
    ValueError
        For another ``effect_scale``.
    """
    if effect_scale not in EFFECT_SCALE_CHOICES:
        raise ValueError(
            f"effect_scale must be one of {EFFECT_SCALE_CHOICES!r}, got {effect_scale!r}."
        )


def resolve_effect_scale(effect_scale: object, estimates: object) -> EffectScale:
    """The units a shrinkage model of ``estimates`` takes the effects as exchangeable in.

    ``"auto"`` is ``"residual_sd"`` for a stage-1 fit without a feature design (its residual
    SDs are known) and ``"raw"`` for anything else (a tidy frame or arrays carry no residual
    SD). ``"residual_sd"`` asks for a stage-1 fit without a feature design.

    Raises
    ------
    ValueError
        For a choice not in :data:`EFFECT_SCALE_CHOICES`, or ``"residual_sd"`` for estimates
        that are not such a fit.
    """
    check_effect_scale(effect_scale)
    standardizable = isinstance(estimates, MLMFit) and estimates.Z is None
    if effect_scale == "auto":
        return "residual_sd" if standardizable else "raw"
    if effect_scale == "residual_sd" and not standardizable:
        raise ValueError(
            "effect_scale='residual_sd' needs a stage-1 fit (MLMFit) without a feature design "
            "Z: only it knows each feature's residual SD. Pass effect_scale='raw' for "
            f"estimates given as {type(estimates).__name__}."
        )
    return effect_scale  # type: ignore[return-value]


MissingValues = Literal["raise", "per-feature"]
"""What :func:`mlm` does with a NaN in ``Y``: refuse it, or fit each feature on its rows."""
MISSING_POLICIES: tuple[str, ...] = ("raise", "per-feature")


@dataclass(frozen=True)
class _FeatureRows:
    """Per-feature fits (``missing="per-feature"``): each feature's dimensions."""

    xtx_inv_diag: np.ndarray
    df_resid: np.ndarray
    divisor: np.ndarray


def missingness_patterns(y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The columns of ``y`` grouped by the rows they observe (not NaN).

    Yields
    ------
    rows : numpy.ndarray
        Boolean mask of the observed rows of one pattern.
    columns : numpy.ndarray
        Indices of the columns observed on exactly those rows.
    """
    patterns, which = np.unique(~np.isnan(y), axis=1, return_inverse=True)
    for pattern_index in range(patterns.shape[1]):
        yield patterns[:, pattern_index], np.flatnonzero(which.ravel() == pattern_index)


def _estimate_per_feature(
    core: _Core, y: np.ndarray, dof: str, labels: pd.Index
) -> tuple[_Estimate, _FeatureRows]:
    """Least squares of every feature on its complete rows, one QR per missingness pattern."""
    _n_obs, n_cov = core.x.shape
    n_features = y.shape[1]
    coef = np.full((n_cov, n_features), np.nan)
    variance = np.full((n_cov, n_features), np.nan)
    xtx_inv_diag = np.full((n_cov, n_features), np.nan)
    df_resid = np.zeros(n_features, dtype=int)
    divisor = np.zeros(n_features, dtype=int)
    resid = np.full(y.shape, np.nan)
    too_few: list[int] = []
    for rows, columns in missingness_patterns(y):
        x = core.x[rows]
        n_rows = int(rows.sum())
        if n_rows <= n_cov or np.linalg.matrix_rank(x) < n_cov:
            too_few.extend(columns.tolist())
            continue
        q, r = np.linalg.qr(x)
        r_inv = np.linalg.solve(r, np.eye(n_cov))
        g = q.T @ y[np.ix_(rows, columns)]
        fitted_coef = np.linalg.solve(r, g)
        fitted_resid = y[np.ix_(rows, columns)] - q @ g
        rss = _column_sum_of_squares(fitted_resid)
        _check_degenerate(
            rss <= _PERFECT_FIT * (rss + _column_sum_of_squares(g)), labels[columns], True
        )
        d = covariance.residual_divisor(n_rows, n_cov, dof)
        diag = (r_inv * r_inv).sum(axis=1)
        coef[:, columns] = fitted_coef
        variance[:, columns] = np.outer(diag, rss / d)
        xtx_inv_diag[:, columns] = diag[:, None]
        df_resid[columns], divisor[columns] = n_rows - n_cov, d
        resid[np.ix_(rows, columns)] = fitted_resid
    if too_few:
        warnings.warn(
            f"{len(too_few)} feature(s) {list(labels[too_few])[:10]!r} have too few complete "
            f"rows for the {n_cov} covariates (or a rank-deficient X on them): their estimates "
            "are missing (NaN), and stage 2 gives them their θ from the tree.",
            stacklevel=3,
        )
    fitted = ~np.isnan(coef[0])
    if fitted.any():
        _check_representable(coef[:, fitted], variance[:, fitted], labels[fitted])
    rows_info = _FeatureRows(xtx_inv_diag, df_resid, divisor)
    return _Estimate(coef, variance, resid, None, None), rows_info


class MLMFit:
    """A fitted matrix linear model with results labelled by the user's names.

    Coefficient-shaped results (``coef``, ``se``, ``tstat``, ``pvalue``) are
    :class:`xarray.DataArray` objects with dims ``("covariate", "feature")``; with a general
    ``Z`` the ``feature`` coordinate holds Z's column names. Sample × feature results
    (``fitted``, ``residuals``, ``predict``) have dims ``("sample", "feature")`` over Y's features.

    Attributes
    ----------
    X : pandas.DataFrame
        The design matrix used (with ``"(Intercept)"`` when present).
    Y : pandas.DataFrame
        The response (samples × features).
    Z : pandas.DataFrame or None
        The feature design used, or ``None``.
    n_obs : int
        Number of samples.
    df_resid : int
        Residual degrees of freedom ``n - p`` (used for t tests).
    dof : str
        Divisor choice of ``Σ̂`` (``"n-p"`` or ``"n-1"``).
    shrinkage : str or None
        Covariance shrinkage target.
    shrinkage_lambda : float, dict or None
        Estimated shrinkage intensity (``{"variance", "correlation"}`` for target R).
    weights : numpy.ndarray or None
        Column weights.
    """

    def __init__(
        self,
        *,
        core: _Core,
        estimate: _Estimate,
        y: np.ndarray,
        x_design: Design,
        z_design: Design | None,
        features: pd.Index,
        weights: np.ndarray | None,
        dof: str,
        rows: _FeatureRows | None = None,
    ) -> None:
        self._rows = rows
        self._core = core
        self._estimate = estimate
        self._y = y
        self._x_design = x_design
        self._z_design = z_design
        self._features = features
        self._coef_features = features if z_design is None else z_design.columns
        self.weights = weights
        self.dof = dof
        self.shrinkage = core.shrinkage
        self.shrinkage_lambda = estimate.shrinkage_lambda
        self.n_obs = int(y.shape[0])
        self.df_resid: int | np.ndarray = core.df_resid if rows is None else rows.df_resid

    @property
    def X(self) -> pd.DataFrame:
        """The design matrix used, samples × covariates."""
        return self._x_design.frame()

    @property
    def Y(self) -> pd.DataFrame:
        """The response, samples × features."""
        return pd.DataFrame(self._y, index=self._x_design.rows, columns=self._features)

    @property
    def Z(self) -> pd.DataFrame | None:
        """The feature design used, features × feature covariates, or ``None``."""
        return None if self._z_design is None else self._z_design.frame()

    @cached_property
    def coef(self) -> xr.DataArray:
        """Coefficient estimates ``B̂`` (covariate, feature)."""
        return self._coef_array(self._estimate.coef, "coef")

    @cached_property
    def se(self) -> xr.DataArray:
        """Standard errors of ``B̂`` (covariate, feature)."""
        return self._coef_array(np.sqrt(self._estimate.variance), "se")

    @cached_property
    def tstat(self) -> xr.DataArray:
        """The t statistics ``B̂ / se`` (covariate, feature)."""
        return self._coef_array(self._estimate.coef / self.se.values, "tstat")

    @cached_property
    def pvalue(self) -> xr.DataArray:
        """Two-sided p-values from the t distribution with ``df_resid`` degrees of freedom."""
        values = 2.0 * scipy.stats.t.sf(np.abs(self.tstat.values), self.df_resid)
        return self._coef_array(values, "pvalue")

    @cached_property
    def sigma(self) -> xr.DataArray:
        """Residual variance of each feature of Y (the diagonal of the, possibly shrunk, Σ̂)."""
        if self._estimate.covariance is not None:
            values = np.diag(self._estimate.covariance).copy()
        elif self._rows is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                values = np.nansum(self._residual_values**2, axis=0) / self._rows.divisor
            values[self._rows.divisor == 0] = np.nan
        else:
            values = (self._residual_values**2).sum(axis=0) / self._core.divisor
        return xr.DataArray(
            values, dims=(FEATURE,), coords={FEATURE: _coord(self._features)}, name="sigma"
        )

    @cached_property
    def coef_variance_factor(self) -> xr.DataArray:
        """``c_kk = [(X'X)⁻¹]_kk`` per covariate: ``Cov(B̂_k·) = c_kk A Σ A'``.

        ``A = (Z'WZ)⁻¹ Z'W``, or the identity for ``Z=None``. The standard errors are
        ``se_kj² = c_kk (A Σ̂ A')_jj``, the plain (not sandwich) ones. A fit with
        ``missing="per-feature"`` has one factor per feature, from its own rows:
        (covariate, feature).
        """
        if self._rows is not None:
            return self._coef_array(self._rows.xtx_inv_diag.copy(), "coef_variance_factor")
        return xr.DataArray(
            self._core.xtx_inv_diag.copy(),
            dims=(COVARIATE,),
            coords={COVARIATE: _coord(self._x_design.columns)},
            name="coef_variance_factor",
        )

    @cached_property
    def fitted(self) -> xr.DataArray:
        """Fitted values ``X B̂ Z'`` (sample, feature)."""
        return self._sample_array(self._y - self._residual_values, "fitted")

    @cached_property
    def residuals(self) -> xr.DataArray:
        """Residuals ``Y - X B̂ Z'`` (sample, feature)."""
        return self._sample_array(self._residual_values, "residuals")

    def residual_covariance(self) -> pd.DataFrame:
        """Return the m × m residual covariance ``Σ̂`` (shrunk when ``shrinkage`` is set).

        Returns
        -------
        pandas.DataFrame
            Features × features.
        """
        self._refuse_per_feature("residual_covariance")
        matrix = self._estimate.covariance
        if matrix is None:
            resid = self._residual_values
            matrix = resid.T @ resid / self._core.divisor
        return pd.DataFrame(matrix, index=self._features, columns=self._features)

    @property
    def residual_sd(self) -> xr.DataArray:
        """Residual standard deviation of each feature of Y, ``√σ̂_j`` (see :attr:`sigma`)."""
        return np.sqrt(self.sigma).rename("residual_sd")

    def standardized(self) -> MLMFit:
        """The same fit in units of each feature's residual standard deviation.

        Every feature of Y is divided by its :attr:`residual_sd` ``σ̂_j``: the coefficients
        become ``B̂_kj / σ̂_j``, the standard errors ``se_kj / σ̂_j = √c_kk`` (one per
        covariate), the residuals and ``Σ̂`` those of the scaled responses (``Σ̂`` becomes a
        correlation matrix). Least squares is equivariant to the scale of each response, so
        this is the fit of ``Y / σ̂`` on the same design, without fitting again.

        A shrinkage fit (:class:`~bayeshier_pymc.ShrinkageModel`) of the standardized fit
        treats the *standardized* effects ``θ_kj / σ_j`` as exchangeable within the
        annotation tree, the "exchangeable z-scores" model of ashr (``alpha = 1``, Stephens
        2017): a metabolite with a larger residual variance may have a larger effect in the
        units of Y. Its posterior is in residual-SD units; multiply θ's draws or summaries by
        :attr:`residual_sd` for the units of Y (``docs/calibration.md``, "Effects in units of
        each metabolite's residual SD").

        Returns
        -------
        MLMFit
            The standardized fit; its :attr:`residual_sd` is 1 for every feature with an
            estimate (a feature a per-feature fit could not estimate keeps its units and its
            NaN).

        Raises
        ------
        ValueError
            With a feature design ``Z`` (the coefficients belong to Z's columns, not to
            features).
        """
        if self._z_design is not None:
            raise ValueError(
                "standardized() divides each feature by its residual SD; with a feature design "
                "Z the coefficients belong to Z's columns, so there is no feature to scale by."
            )
        sd = self.residual_sd.to_numpy()
        # a feature without an estimate (per-feature fit, too few rows) keeps its units
        scale = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        estimate = self._estimate
        covariance = estimate.covariance
        return MLMFit(
            core=self._core,
            estimate=_Estimate(
                coef=estimate.coef / scale,
                variance=estimate.variance / scale**2,
                resid=None if estimate.resid is None else estimate.resid / scale,
                covariance=None if covariance is None else covariance / np.outer(scale, scale),
                shrinkage_lambda=estimate.shrinkage_lambda,
            ),
            y=self._y / scale,
            x_design=self._x_design,
            z_design=None,
            features=self._features,
            weights=self.weights,
            dof=self.dof,
            rows=self._rows,
        )

    def conf_int(self, alpha: float = 0.05) -> xr.DataArray:
        """Return two-sided ``1 - alpha`` confidence intervals ``B̂ ± t_{1-α/2, n-p} se``.

        Parameters
        ----------
        alpha
            Significance level in (0, 1).

        Returns
        -------
        xarray.DataArray
            Dims ``("covariate", "feature", "bound")`` with ``bound = ["lower", "upper"]``.
        """
        if not isinstance(alpha, numbers.Real) or not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}.")
        half = scipy.stats.t.ppf(1.0 - alpha / 2.0, self.df_resid) * self.se
        bounds = xr.concat([self.coef - half, self.coef + half], dim="bound")
        bounds = bounds.assign_coords(bound=["lower", "upper"]).transpose(
            COVARIATE, FEATURE, "bound"
        )
        return bounds.rename("conf_int").assign_attrs(alpha=float(alpha))

    def predict(self, X_new: object, Z_new: object = None, *, coef: object = None) -> xr.DataArray:
        """Predict responses ``X_new B Z_new'``.

        Parameters
        ----------
        X_new
            New samples: for a formula fit, a data frame with the formula's variables; otherwise
            an array or DataFrame with the original covariate columns (the intercept is added
            again) or with all design columns (as in ``fit.X``).
        Z_new
            New feature design (same conventions as ``X_new``; only for fits with a ``Z``).
            Defaults to the fitted ``Z`` (or to the fitted features when ``Z`` is None).
        coef
            Coefficients to use instead of ``B̂``: a (covariate, feature) DataArray with the
            fit's labels (e.g. shrunken stage-2 estimates) or a p × q array.

        Returns
        -------
        xarray.DataArray
            Predictions with dims ``("sample", "feature")``.
        """
        x_new, samples = self._x_design.transform(X_new, SAMPLE)
        b = self._coef_matrix(coef)
        if Z_new is None:
            values = x_new @ b if self._core.z is None else (x_new @ b) @ self._core.z.T
            features = self._features
        elif self._z_design is None:
            raise ValueError("Z_new needs a fit with a Z; this model was fitted with Z=None.")
        else:
            z_new, features = self._z_design.transform(Z_new, FEATURE)
            values = (x_new @ b) @ z_new.T
        return xr.DataArray(
            values,
            dims=(SAMPLE, FEATURE),
            coords={SAMPLE: _coord(samples), FEATURE: _coord(features)},
            name="prediction",
        )

    def to_frame(self) -> pd.DataFrame:
        """Return a tidy table of all coefficients.

        Returns
        -------
        pandas.DataFrame
            Columns ``covariate, feature, estimate, se, t, p, p_adj``; ``p_adj`` is the
            Benjamini–Hochberg adjustment within each covariate.
        """
        n_cov, n_cols = self._estimate.coef.shape
        return pd.DataFrame(
            {
                COVARIATE: np.repeat(np.asarray(self.coef[COVARIATE].values), n_cols),
                FEATURE: np.tile(np.asarray(self.coef[FEATURE].values), n_cov),
                "estimate": self.coef.values.ravel(),
                "se": self.se.values.ravel(),
                "t": self.tstat.values.ravel(),
                "p": self.pvalue.values.ravel(),
                "p_adj": self._p_adjusted.ravel(),
            }
        )

    def summary(self) -> pd.DataFrame:
        """Return one row of summaries per covariate.

        Returns
        -------
        pandas.DataFrame
            Indexed by covariate: ``n_features``, ``n_significant_bh05`` (features with
            Benjamini–Hochberg adjusted p < 0.05 within the covariate), ``min_p``, ``min_p_adj``,
            ``top_feature`` (smallest p) and its ``top_estimate``.
        """
        # features without an estimate (missing="per-feature") have NaN p-values: skipped
        p = np.where(np.isnan(self.pvalue.values), np.inf, self.pvalue.values)
        adjusted = np.where(np.isnan(self._p_adjusted), np.inf, self._p_adjusted)
        top = p.argmin(axis=1)
        rows = np.arange(p.shape[0])
        return pd.DataFrame(
            {
                "n_features": p.shape[1],
                "n_significant_bh05": (adjusted < _FDR_LEVEL).sum(axis=1),
                "min_p": p.min(axis=1),
                "min_p_adj": adjusted.min(axis=1),
                "top_feature": np.asarray(self._coef_features)[top],
                "top_estimate": self._estimate.coef[rows, top],
            },
            index=pd.Index(self._x_design.columns, name=COVARIATE),
        )

    def permutation_test(
        self,
        n_perms: int = 1000,
        random_seed: int | np.random.Generator | None = None,
        by: str = "rows",
        statistic: str = "t",
        *,
        progress: bool | None = None,
    ) -> xr.DataArray:
        """Return permutation p-values for every coefficient.

        Rows of Y (samples) are permuted (or, with ``by="columns"``, its features against Z) and
        the statistics recomputed for all covariates and features at once with batched matrix
        products (see :mod:`bayeshier_pymc.permutation`). Fits with covariance shrinkage
        re-estimate the covariance once per permutation, which is much slower.

        Parameters
        ----------
        n_perms
            Number of random permutations.
        random_seed
            Seed (or generator) for ``numpy.random.default_rng``; the same seed gives the same
            permutations and p-values.
        by
            ``"rows"`` (samples; MatrixLM.jl's default) or ``"columns"`` (features against ``Z``,
            only for fits with a ``Z``).
        statistic
            ``"t"`` or ``"coef"``, compared in absolute value.
        progress
            Progress bar: ``True`` always, ``False`` never, ``None`` after 2 seconds.

        Returns
        -------
        xarray.DataArray
            (covariate, feature) p-values ``(1 + #{|T*| >= |T|}) / (1 + n_perms)``.
        """
        self._refuse_per_feature("permutation_test")
        core = self._core
        problem = permutation.LinearProblem(
            q=core.q,
            r=core.r,
            xtx_inv_diag=core.xtx_inv_diag,
            y=self._y,
            z_map=core.z_map,
            divisor=core.divisor,
        )
        refit = None if core.shrinkage is None else partial(_refit_statistic, core, statistic)
        values = permutation.permutation_pvalues(
            problem,
            n_perms=n_perms,
            random_seed=random_seed,
            by=by,
            statistic=statistic,
            progress=progress,
            refit=refit,
        )
        return self._coef_array(values, "permutation_pvalue").assign_attrs(
            n_perms=n_perms, by=by, statistic=statistic
        )

    @property
    def per_feature(self) -> bool:
        """Whether each feature was fitted on its own complete rows (``missing="per-feature"``)."""
        return self._rows is not None

    def _refuse_per_feature(self, what: str) -> None:
        if self._rows is not None:
            raise ValueError(
                f"{what} is not available for a fit with missing='per-feature': its features "
                "were fitted on different rows."
            )

    def __repr__(self) -> str:
        return f"{self._header()}\n{self.summary().to_string()}"

    def _repr_html_(self) -> str:
        return f"<div><p>{html.escape(self._header())}</p>{self.summary().to_html()}</div>"

    def _header(self) -> str:
        z_text = (
            "Z=None" if self._z_design is None else f"Z with {len(self._coef_features)} columns"
        )
        return (
            f"MLMFit: {self.n_obs} samples × {len(self._features)} features, "
            f"{len(self._x_design.columns)} covariates, {z_text}; residual df "
            f"{self.df_resid if self._rows is None else 'per feature (missing values)'}, "
            f"Σ̂ divisor {self.dof}, shrinkage {self.shrinkage}"
            + ("" if self.shrinkage_lambda is None else f" (λ = {self.shrinkage_lambda})")
        )

    @cached_property
    def _residual_values(self) -> np.ndarray:
        if self._estimate.resid is not None:
            return self._estimate.resid
        core = self._core
        return self._y - (core.x @ self._estimate.coef) @ core.z.T

    @cached_property
    def _p_adjusted(self) -> np.ndarray:
        pvalues = self.pvalue.values
        if self._rows is None:
            return scipy.stats.false_discovery_control(pvalues, axis=1, method="bh")
        adjusted = np.full(pvalues.shape, np.nan)  # over each covariate's estimated features
        fitted = ~np.isnan(pvalues[0])
        if fitted.any():
            adjusted[:, fitted] = scipy.stats.false_discovery_control(
                pvalues[:, fitted], axis=1, method="bh"
            )
        return adjusted

    def _coef_array(self, values: np.ndarray, name: str) -> xr.DataArray:
        return xr.DataArray(
            values,
            dims=(COVARIATE, FEATURE),
            coords={
                COVARIATE: _coord(self._x_design.columns),
                FEATURE: _coord(self._coef_features),
            },
            name=name,
        )

    def _sample_array(self, values: np.ndarray, name: str) -> xr.DataArray:
        return xr.DataArray(
            values,
            dims=(SAMPLE, FEATURE),
            coords={SAMPLE: _coord(self._x_design.rows), FEATURE: _coord(self._features)},
            name=name,
        )

    def _coef_matrix(self, coef: object) -> np.ndarray:
        if coef is None:
            return self._estimate.coef
        expected = self._estimate.coef.shape
        if isinstance(coef, xr.DataArray):
            return _aligned_coef(coef, self._x_design.columns, self._coef_features)
        values = as_finite_matrix(coef, "coef")
        if values.shape != expected:
            raise ValueError(f"coef must have shape {expected}, got {values.shape}.")
        return values


def _coord(labels: pd.Index) -> pd.Index:
    """Return ``labels`` without a name (xarray would otherwise take the name as the dim)."""
    return labels.rename(None)


def _z_design(
    Z: object,
    feature_data: pd.DataFrame | None,
    z_intercept: bool,
    features: pd.Index | None,
    n_features: int,
) -> Design | None:
    if Z is None:
        if feature_data is not None:
            raise ValueError("feature_data= is only used when Z is a formula string.")
        return None
    return design.build_design(
        Z,
        name="Z",
        frame=feature_data,
        frame_arg="feature_data",
        intercept=z_intercept,
        labels=features,
        row_kind="feature",
        n_rows=n_features,
    )


def _feature_labels(response: design.Response, z_design: Design | None, count: int) -> pd.Index:
    if response.features is not None:
        return response.features
    if z_design is not None:
        return z_design.rows
    return pd.Index([f"feature_{j}" for j in range(count)])


def _check_dimensions(x_design: Design) -> None:
    n_obs, n_cov = x_design.matrix.shape
    if n_obs <= n_cov:
        counted = "; p counts the intercept" if INTERCEPT in x_design.columns else ""
        raise ValueError(
            f"X has n={n_obs} samples and p={n_cov} columns; the model needs n > p "
            f"(residual degrees of freedom n - p = {n_obs - n_cov}{counted})."
        )


def _check_magnitude(matrix: np.ndarray, labels: pd.Index, name: str, what: str) -> None:
    """Raise if a non-zero column is so large or so small that its squares leave float64."""
    peaks = np.abs(matrix).max(axis=0)
    bad = (peaks > _MAX_MAGNITUDE) | ((peaks > 0) & (peaks < 1.0 / _MAX_MAGNITUDE))
    if bad.any():
        raise ValueError(
            f"{name} has {int(bad.sum())} {what} {list(labels[bad])[:10]!r} whose largest "
            f"absolute value lies outside [1e-{_MAX_EXPONENT}, 1e{_MAX_EXPONENT}] "
            f"(e.g. {float(peaks[bad][0]):.3g}); their squares would overflow or underflow "
            f"float64. Rescale them (e.g. change units or standardise)."
        )


def _validate_weights(weights: object, features: pd.Index, z_is_none: bool) -> np.ndarray | None:
    if weights is None:
        return None
    if isinstance(weights, pd.Series):
        weights = design.align_rows(
            weights.to_frame(), features, target="Y's features", source="the weights' index"
        ).iloc[:, 0]
    values = as_finite_matrix(weights, "weights", ndim=1)
    if values.shape[0] != len(features):
        raise ValueError(
            f"weights has length {values.shape[0]} but Y has {len(features)} features."
        )
    check_positive(values, "weights")
    if z_is_none:
        warnings.warn(
            "weights have no effect when Z is None (each feature has its own coefficient), "
            "as in MatrixLM.jl with Z = I.",
            UserWarning,
            stacklevel=3,
        )
    return values


def _make_core(
    x_design: Design,
    z_design: Design | None,
    weights: np.ndarray | None,
    dof: str,
    shrinkage: str | None,
) -> _Core:
    x = x_design.matrix
    n_obs, n_cov = x.shape
    q, r = np.linalg.qr(x)
    r_inv = np.linalg.solve(r, np.eye(n_cov))
    z = None if z_design is None else z_design.matrix
    return _Core(
        x=x,
        q=q,
        r=r,
        xtx_inv_diag=(r_inv * r_inv).sum(axis=1),
        z=z,
        z_map=None if z is None else _z_map(z, weights),
        divisor=covariance.residual_divisor(n_obs, n_cov, dof),
        df_resid=n_obs - n_cov,
        shrinkage=shrinkage,
    )


def _z_map(z: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Return ``M = W Z (Z'WZ)⁻¹`` (m × q), so that ``B̂ = (X'X)⁻¹X'Y M`` and ``A = M'``."""
    weighted = z if weights is None else z * weights[:, None]
    gram = z.T @ weighted
    return scipy.linalg.solve(gram, weighted.T, assume_a="pos").T


def _estimate(core: _Core, y: np.ndarray, *, labels: pd.Index | None = None) -> _Estimate:
    """Estimate ``B̂`` and its variance for ``y``; with ``labels``, refuse zero residual variance."""
    v = y if core.z_map is None else y @ core.z_map
    g = core.q.T @ v
    coef = np.linalg.solve(core.r, g)
    v_resid = core.q @ g
    np.subtract(v, v_resid, out=v_resid)
    rss = _column_sum_of_squares(v_resid)
    if labels is not None:
        total = rss + _column_sum_of_squares(g)
        _check_degenerate(rss <= _PERFECT_FIT * total, labels, core.z is None)
    resid = v_resid if core.z is None else None
    if core.shrinkage is None:
        with np.errstate(over="ignore", under="ignore"):
            variance = np.outer(core.xtx_inv_diag, rss / core.divisor)
        if labels is not None:
            _check_representable(coef, variance, labels)
        return _Estimate(coef, variance, resid, None, None)
    if resid is None:
        resid = y - (core.x @ coef) @ core.z.T
    shrunk = covariance.shrink_covariance(
        resid, core.shrinkage, divisor=core.divisor, df_resid=core.df_resid
    )
    if core.z_map is None:
        scale = np.diag(shrunk.matrix).copy()
    else:
        scale = ((shrunk.matrix @ core.z_map) * core.z_map).sum(axis=0)
    with np.errstate(over="ignore", under="ignore"):
        variance = np.outer(core.xtx_inv_diag, scale)
    if labels is not None:
        _check_representable(coef, variance, labels)
    return _Estimate(coef, variance, resid, shrunk.matrix, shrunk.shrinkage_lambda)


def _check_representable(coef: np.ndarray, variance: np.ndarray, labels: pd.Index) -> None:
    """Raise if estimates or their variances overflowed or underflowed float64."""
    bad = ~(np.isfinite(coef) & np.isfinite(variance) & (variance > 0)).all(axis=0)
    if bad.any():
        raise ValueError(
            f"the estimates of {int(bad.sum())} column(s) {list(labels[bad])[:10]!r} or their "
            "variances overflow or underflow float64: the scales of X and Y differ by too many "
            "orders of magnitude. Rescale X or Y (e.g. standardise them)."
        )


def _column_sum_of_squares(matrix: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->j", matrix, matrix)


def _refit_statistic(core: _Core, statistic: str, y: np.ndarray) -> np.ndarray:
    """Re-estimate (with covariance shrinkage) for a permuted ``y`` and return the statistic."""
    estimate = _estimate(core, y)
    if statistic == "coef":
        return estimate.coef
    return estimate.coef / np.sqrt(estimate.variance)


def _check_degenerate(degenerate: np.ndarray, labels: pd.Index, z_is_none: bool) -> None:
    if degenerate.any():
        bad = list(labels[degenerate])
        what = "feature(s)" if z_is_none else "Z column(s) (responses projected on Z)"
        raise ValueError(
            f"{len(bad)} {what} {bad[:10]!r} have zero residual variance (constant, or fitted "
            "exactly by X); drop them."
        )


def _aligned_coef(coef: xr.DataArray, covariates: pd.Index, features: pd.Index) -> np.ndarray:
    if set(coef.dims) != {COVARIATE, FEATURE}:
        raise ValueError(f"coef must have dims ('covariate', 'feature'), got {coef.dims}.")
    for dim, labels in ((COVARIATE, covariates), (FEATURE, features)):
        given = pd.Index(coef[dim].values)
        if set(given) != set(labels) or len(given) != len(labels):
            missing = list(labels.difference(given))[:5]
            extra = list(given.difference(labels))[:5]
            raise ValueError(
                f"coef's {dim} labels do not match the fit's: missing {missing!r}, extra {extra!r}."
            )
    ordered = coef.transpose(COVARIATE, FEATURE).sel({COVARIATE: covariates, FEATURE: features})
    return as_finite_matrix(ordered.values, "coef")
