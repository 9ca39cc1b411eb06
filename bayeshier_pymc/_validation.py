"""Input checks shared by every stage: each raises a ValueError that names the problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd


def as_numeric_matrix(values: object, name: str, *, ndim: int = 2) -> np.ndarray:
    """Return ``values`` as a float64 array after checking its type and shape (NaN allowed).

    Raises
    ------
    ValueError
        If the input is empty, has the wrong number of dimensions or is not numeric.
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
    return array


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
    array = as_numeric_matrix(values, name, ndim=ndim)
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


def missing_labels(values: pd.Series) -> np.ndarray:
    """Which annotation labels are missing: NA, or text that is empty once stripped."""
    as_text = values.astype("string").str.strip()
    return (values.isna() | (as_text == "")).to_numpy(dtype=bool)


def annotated_at_no_level(annotations: pd.DataFrame, levels: Sequence[str]) -> np.ndarray:
    """Which rows of an annotation table miss their label at every one of ``levels``."""
    return np.logical_and.reduce([missing_labels(annotations[level]) for level in levels])


def check_positive(values: np.ndarray, name: str) -> None:
    """Raise if any entry of ``values`` is not strictly positive."""
    if not (values > 0).all():
        bad = np.argwhere(~(values > 0))
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{name} must be strictly positive; {len(bad)} value(s) are not, the first "
            f"({values[first]!r}) at position {first}."
        )


def covariance_factor(covariance: np.ndarray, size: int, name: str) -> np.ndarray:
    """The lower Cholesky factor of ``covariance``, which must be ``size`` × ``size``.

    Raises a ValueError naming ``name`` for another shape or a matrix that is not symmetric
    positive definite.
    """
    if covariance.shape != (size, size):
        raise ValueError(f"{name} must be {size} × {size}, got {covariance.shape}.")
    try:
        return np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"{name} must be symmetric positive definite.") from error


SEED_LIMIT = 2**63
"""Integer seeds lie in [0, SEED_LIMIT): they are stored as int64 with the results."""


class SamplerArguments(NamedTuple):
    """Sampler arguments after :func:`check_sampler_arguments`."""

    draws: int
    tune: int
    chains: int
    cores: int | None
    random_seed: int | None


def check_sampler_arguments(
    *,
    draws: object,
    tune: object,
    chains: object,
    cores: object = None,
    random_seed: object = None,
) -> SamplerArguments:
    """Check the sampler arguments before any work starts and return them normalised.

    Parameters
    ----------
    draws, tune, chains
        Kept draws per chain (at least 1), tuning steps per chain (at least 0) and chains
        (at least 1): integers (Python or NumPy, not booleans).
    cores
        ``None`` or an integer of at least 1.
    random_seed
        ``None``, an integer in [0, 2**63) or a :class:`numpy.random.Generator`, which is
        turned into an integer seed by drawing one from it (the same generator state gives
        the same seed, as in PyMC).

    Returns
    -------
    SamplerArguments
        Python integers (and ``None`` where given).

    Raises
    ------
    ValueError
        Naming the argument and what it must be.
    """
    checked = {
        name: _count(value, name, minimum)
        for name, value, minimum in (("draws", draws, 1), ("tune", tune, 0), ("chains", chains, 1))
    }
    return SamplerArguments(
        cores=None if cores is None else _count(cores, "cores", 1),
        random_seed=integer_seed(random_seed),
        **checked,
    )


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}.")
    return int(value)


def integer_seed(random_seed: object) -> int | None:
    """The integer seed of ``random_seed`` (``None`` stays ``None``).

    A :class:`numpy.random.Generator` gives one integer draw from [0, 2**63), as in PyMC:
    the same generator state gives the same seed, and seeds taken one after another from
    one generator (one per task, in order) are those runs one after another would take.

    Raises
    ------
    ValueError
        Unless ``random_seed`` is ``None``, an integer in [0, 2**63) or a generator.
    """
    if random_seed is None:
        return None
    if isinstance(random_seed, np.random.Generator):
        return int(random_seed.integers(SEED_LIMIT))
    if isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer):
        raise ValueError(
            "random_seed must be None, an integer in [0, 2**63) or a numpy.random.Generator, "
            f"got {random_seed!r}."
        )
    if not 0 <= random_seed < SEED_LIMIT:
        raise ValueError(f"random_seed must lie in [0, 2**63), got {random_seed}.")
    return int(random_seed)
