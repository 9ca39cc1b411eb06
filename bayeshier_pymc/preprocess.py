"""Preprocessing of metabolomics matrices (samples × features DataFrames).

Every function takes and returns a DataFrame with samples as rows and features as columns,
keeps the labels, and raises a ValueError naming the offending features. Missing values are
NaN (or pandas NA).

The pipeline :func:`preprocess` runs, in this order: drop sparse features → impute (on the raw
scale, where half-minimum imputation of left-censored Metabolon intensities is defined) → log
transform → standardise. Its defaults are those of ``bayeshier fit``: drop features missing
in more than 20% of the samples, half-minimum imputation, log2, no standardisation (switched off
by ``max_missing=None`` / ``--max-missing 1``, ``impute=None`` / ``--impute none``,
``log=False`` / ``--no-log``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from bayeshier_pymc._validation import check_unique_labels

logger = logging.getLogger(__name__)

IMPUTE_METHODS = ("half_min", "min", "median")


def log_transform(df: pd.DataFrame, *, base: float = 2.0, pseudocount: float = 0.0) -> pd.DataFrame:
    """Return ``log_base(df + pseudocount)``; missing values stay missing.

    Parameters
    ----------
    df
        Samples × features, numeric.
    base
        Logarithm base (> 0 and != 1), e.g. 2, 10 or ``numpy.e``.
    pseudocount
        Non-negative constant added before the logarithm (e.g. 1 for counts with zeros).

    Returns
    -------
    pandas.DataFrame
        The transformed frame (float64).

    Raises
    ------
    ValueError
        If ``base`` or ``pseudocount`` is invalid, or any observed ``value + pseudocount`` is not
        strictly positive (the features are named).
    """
    values = _numeric_frame(df)
    if not np.isfinite(base) or base <= 0 or base == 1:
        raise ValueError(f"base must be positive and different from 1, got {base!r}.")
    if not np.isfinite(pseudocount) or pseudocount < 0:
        raise ValueError(f"pseudocount must be a non-negative number, got {pseudocount!r}.")
    shifted = values + pseudocount
    bad = (shifted <= 0).any(axis=0)
    if bad.any():
        raise ValueError(
            f"cannot take logarithms: {int(bad.sum())} feature(s) have values <= 0 after adding "
            f"pseudocount={pseudocount}: {list(bad.index[bad][:10])!r}; if the data are "
            "already on a log scale, skip the transform (preprocess(..., log=False), "
            "bayeshier fit --no-log)."
        )
    return np.log(shifted) / np.log(base)


def drop_sparse_features(df: pd.DataFrame, max_missing: float = 0.2) -> pd.DataFrame:
    """Drop the features whose fraction of missing values exceeds ``max_missing``.

    Parameters
    ----------
    df
        Samples × features, numeric.
    max_missing
        Largest missing fraction kept, in [0, 1].

    Returns
    -------
    pandas.DataFrame
        The frame restricted to features with missing fraction ``<= max_missing``; how many
        were dropped, and the first few, is logged (INFO, ``bayeshier_pymc`` logger).
    """
    values = _numeric_frame(df)
    if not 0.0 <= max_missing <= 1.0:
        raise ValueError(f"max_missing must lie in [0, 1], got {max_missing!r}.")
    keep = values.isna().mean(axis=0) <= max_missing
    if not keep.all():
        dropped = values.columns[~keep]
        logger.info(
            "dropped %d of %d feature(s) missing in more than %g of the samples: %r%s",
            len(dropped),
            len(keep),
            max_missing,
            dropped[:5].tolist(),
            "…" if len(dropped) > 5 else "",
        )
    return values.loc[:, keep]


def impute(df: pd.DataFrame, method: str = "half_min") -> pd.DataFrame:
    """Fill missing values feature by feature.

    Parameters
    ----------
    df
        Samples × features, numeric.
    method
        ``"half_min"``: half of the feature's observed minimum, the usual choice for
        left-censored (below detection) Metabolon intensities on the raw scale, which must then
        be positive; ``"min"``: the observed minimum; ``"median"``: the observed median.

    Returns
    -------
    pandas.DataFrame
        The frame without missing values.

    Raises
    ------
    ValueError
        For an unknown method, features with no observed value, or (``"half_min"``) features
        with missing values and a non-positive observed minimum.
    """
    values = _numeric_frame(df)
    if method not in IMPUTE_METHODS:
        raise ValueError(f"unknown imputation method {method!r}; use one of {IMPUTE_METHODS}.")
    empty = values.isna().all(axis=0)
    if empty.any():
        raise ValueError(
            f"cannot impute {int(empty.sum())} feature(s) with no observed value: "
            f"{list(empty.index[empty][:10])!r}; drop them (see drop_sparse_features)."
        )
    minimum = values.min(axis=0)
    if method == "half_min":
        non_positive = (minimum <= 0) & values.isna().any(axis=0)
        if non_positive.any():
            raise ValueError(
                "half_min imputation assumes positive raw intensities; feature(s) "
                f"{list(minimum.index[non_positive][:10])!r} have a minimum <= 0 and missing "
                "values (already on a log scale? impute before the log, or use "
                "impute='median' / --impute median)."
            )
        fill = minimum / 2.0
    else:
        fill = minimum if method == "min" else values.median(axis=0)
    return values.fillna(fill)


def standardize(df: pd.DataFrame, *, ddof: int = 1) -> pd.DataFrame:
    """Centre each feature at its mean and scale it to unit standard deviation.

    Missing values are ignored when computing the mean and standard deviation and stay missing.

    Parameters
    ----------
    df
        Samples × features, numeric.
    ddof
        Delta degrees of freedom of the standard deviation (1: sample standard deviation,
        pandas' default; 0: population standard deviation).

    Returns
    -------
    pandas.DataFrame
        The standardised frame.

    Raises
    ------
    ValueError
        If a feature has zero (or undefined) standard deviation.
    """
    values = _numeric_frame(df)
    scale = values.std(axis=0, ddof=ddof)
    bad = ~(scale > 0)
    if bad.any():
        raise ValueError(
            f"cannot standardise {int(bad.sum())} feature(s) with zero or undefined standard "
            f"deviation: {list(scale.index[bad][:10])!r}."
        )
    return (values - values.mean(axis=0)) / scale


def preprocess(
    df: pd.DataFrame,
    *,
    log: bool = True,
    base: float = 2.0,
    pseudocount: float = 0.0,
    max_missing: float | None = 0.2,
    impute: str | None = "half_min",
    standardize: bool = False,
) -> pd.DataFrame:
    """Run the usual cleaning steps and return the cleaned frame.

    The defaults are the usual ones for raw (untransformed) metabolomics intensities and the
    same as ``bayeshier fit``'s: features missing in more than 20% of the samples are dropped,
    the remaining gaps are filled with half the feature's observed minimum (values below the
    detection limit), then log2 is taken; no standardisation. The steps, each skipped when
    switched off: :func:`drop_sparse_features` (``max_missing``),
    :func:`impute` (``impute``, on the raw scale), :func:`log_transform` (``log``, ``base``,
    ``pseudocount``), :func:`standardize` (``standardize``, ``ddof=1``).

    Parameters
    ----------
    df
        Samples × features, numeric.
    log
        Log-transform (after imputation).
    base, pseudocount
        Passed to :func:`log_transform`.
    max_missing
        Largest missing fraction kept, or ``None`` to keep all features.
    impute
        Imputation method (see :func:`impute`), or ``None`` to keep missing values.
    standardize
        Centre and scale each feature.

    Returns
    -------
    pandas.DataFrame
        The cleaned samples × features frame.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> from bayeshier_pymc.preprocess import preprocess
    >>> raw = pd.DataFrame(
    ...     {"a": [4.0, np.nan, 16.0, 8.0, 2.0], "b": [np.nan, np.nan, np.nan, 2.0, 1.0]}
    ... )
    >>> preprocess(raw)  # b is missing in 60% of the samples; a's gap gets 2 / 2
         a
    0  2.0
    1  0.0
    2  4.0
    3  3.0
    4  1.0
    >>> preprocess(raw, max_missing=None, impute=None, log=False).shape
    (5, 2)
    """
    result = _numeric_frame(df)
    if max_missing is not None:
        result = drop_sparse_features(result, max_missing)
    if impute is not None:
        result = _impute(result, impute)
    if log:
        result = log_transform(result, base=base, pseudocount=pseudocount)
    if standardize:
        result = _standardize(result)
    return result


# ``preprocess`` takes keyword arguments named like these functions.
_impute = impute
_standardize = standardize


def _numeric_frame(df: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise ValueError(
            f"expected a pandas DataFrame (samples × features), got {type(df).__name__}."
        )
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(f"the frame is empty (shape {df.shape}).")
    check_unique_labels(df.columns, "the frame's columns (features)")
    non_numeric = [
        column
        for column, dtype in df.dtypes.items()
        if not pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ]
    if non_numeric:
        raise ValueError(
            f"non-numeric column(s) {non_numeric[:10]!r}; move sample identifiers to the index "
            "(e.g. read_csv(..., index_col='sample_id')) and drop other non-numeric columns."
        )
    values = df.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(values).any(axis=0)
    if infinite.any():
        raise ValueError(f"feature(s) {list(df.columns[infinite][:10])!r} hold infinite values.")
    return pd.DataFrame(values, index=df.index, columns=df.columns)
