"""Input checks shared by every stage: each raises a ValueError that names the problem."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def as_finite_matrix(values: object, name: str, *, ndim: int = 2) -> np.ndarray:
    """Return ``values`` as a float64 array after checking its shape and finiteness.

    Parameters
    ----------
    values
        Array-like input.
    name
        The argument's name, used in error messages.
    ndim
        Required number of dimensions.

    Returns
    -------
    numpy.ndarray
        A float64 array with ``ndim`` dimensions and only finite entries.

    Raises
    ------
    ValueError
        If the input is empty, has the wrong number of dimensions, is not numeric, or holds
        NaN or infinite values (their count and first position are named).
    """
    try:
        if np.iscomplexobj(values):
            raise TypeError("complex values are not supported")
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{name} must be numeric; could not convert it to floats ({err})."
        ) from err
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}).")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        kind = "NaN" if np.isnan(array[first]) else "infinite"
        raise ValueError(
            f"{name} holds {len(bad)} non-finite value(s) (NaN or inf); the first is {kind} at "
            f"position {first}. Impute or drop them first (see bayeshier_pymc.preprocess)."
        )
    return array


def check_unique_labels(labels: Sequence[object] | pd.Index, name: str) -> pd.Index:
    """Return ``labels`` as an Index, raising if any label occurs more than once."""
    index = pd.Index(labels)
    if index.has_duplicates:
        duplicated = index[index.duplicated()].unique().tolist()
        raise ValueError(f"{name} has duplicated labels: {duplicated[:10]!r}.")
    return index


def check_positive(values: np.ndarray, name: str) -> None:
    """Raise if any entry of ``values`` is not strictly positive."""
    if not (values > 0).all():
        bad = np.argwhere(~(values > 0))
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} must be strictly positive; {len(bad)} value(s) are not, the first "
            f"({values[first]!r}) at position {first}."
        )
