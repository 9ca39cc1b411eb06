"""Readers for the public validation data sets (QMDiab plasma, liver lipidome) kept as CSVs.

The package ships no data: each reader takes the folder that holds the CSVs (in this project
``../shared/data``, see its README) and returns the cleaned responses, the covariates and the
annotation tree, prepared the same way everywhere they are used (calibration checks,
benchmarks, tests): the preprocessing of :func:`bayeshier_pymc.preprocess.preprocess`
(features with more than 20% missing dropped, half-minimum imputation, log2), continuous
covariates standardised, categorical ones dummy-coded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bayeshier_pymc.covariance import residual_divisor
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.preprocess import preprocess

__all__ = [
    "VALIDATION_SETS",
    "ValidationStudy",
    "available_studies",
    "blended_residual_covariance",
    "read_liver_lipidome",
    "read_qmdiab",
    "real_residual_covariance",
]

QMDIAB_FILES = ("qmdiab_plasma_data.csv", "qmdiab_plasma_samples.csv", "qmdiab_plasma_features.csv")
LIVER_FILES = ("liverlipidome_data.csv", "liverlipidome_samples.csv", "liverlipidome_lipids.csv")


@dataclass(frozen=True)
class ValidationStudy:
    """A real study ready for stage 1.

    Attributes
    ----------
    name
        Short name of the data set.
    Y
        Cleaned responses, samples × features (log2).
    X
        Covariates, samples × covariates, without an intercept (``mlm`` adds one).
    hierarchy
        The features' annotation tree, finest level first.
    """

    name: str
    Y: pd.DataFrame
    X: pd.DataFrame
    hierarchy: Hierarchy


def has_files(folder: Path | str, files: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds every one of ``files``."""
    return all((Path(folder) / name).is_file() for name in files)


def _require(folder: Path | str, files: tuple[str, ...]) -> Path:
    folder = Path(folder)
    absent = [name for name in files if not (folder / name).is_file()]
    if absent:
        raise ValueError(f"the data folder {folder} lacks {absent!r}.")
    return folder


def _standardised(frame: pd.DataFrame) -> pd.DataFrame:
    return (frame - frame.mean()) / frame.std()


def read_qmdiab(folder: Path | str) -> ValidationStudy:
    """QMDiab plasma: the named metabolites, sub-pathway within super-pathway.

    Covariates: AGE, BMI, GENDER and T2D, each standardised (as in the sampler comparison).

    Parameters
    ----------
    folder
        Folder holding ``qmdiab_plasma_{data,samples,features}.csv``.

    Returns
    -------
    ValidationStudy
    """
    folder = _require(folder, QMDIAB_FILES)
    features = pd.read_csv(folder / QMDIAB_FILES[2], index_col="featureID")
    named = features[features["SUB_PATHWAY"].fillna("").str.strip() != ""]
    data = pd.read_csv(folder / QMDIAB_FILES[0], index_col="sample_id")[named.index]
    samples = pd.read_csv(folder / QMDIAB_FILES[1], index_col="sample_id")
    y = preprocess(data, max_missing=0.2, impute="half_min", log=True)
    x = _standardised(samples.loc[y.index, ["AGE", "BMI", "GENDER", "T2D"]].astype(float))
    tree = Hierarchy.from_frame(named.loc[y.columns], ["SUB_PATHWAY", "SUPER_PATHWAY"])
    return ValidationStudy("qmdiab", y, x, tree)


def read_liver_lipidome(folder: Path | str) -> ValidationStudy:
    """Liver lipidome (NAFLD spectrum): lipids, lipid class within lipid category.

    Covariates: the diagnosis (Steatosis, NASH, Cirrhosis against Normal, as 0/1 columns), sex
    (1 = male) and standardised age; these have no missing values.

    Parameters
    ----------
    folder
        Folder holding ``liverlipidome_{data,samples,lipids}.csv``.

    Returns
    -------
    ValidationStudy
    """
    folder = _require(folder, LIVER_FILES)
    lipids = pd.read_csv(folder / LIVER_FILES[2], index_col="lipid")
    data = pd.read_csv(folder / LIVER_FILES[0], index_col="sample_id")
    samples = pd.read_csv(folder / LIVER_FILES[1], index_col="sample_id").loc[data.index]
    y = preprocess(data, max_missing=0.2, impute="half_min", log=True)
    diagnosis = samples["Diagnosis"]
    x = pd.DataFrame(
        {
            **{
                level: (diagnosis == level).astype(float)
                for level in ("Steatosis", "NASH", "Cirrhosis")
            },
            "male": (samples["GENDER"] == "M").astype(float),
            "age": _standardised(samples[["AGE"]].astype(float))["AGE"],
        },
        index=y.index,
    )
    tree = Hierarchy.from_frame(lipids.loc[y.columns], ["lipid_class", "lipid_category"])
    return ValidationStudy("liver_lipidome", y, x, tree)


VALIDATION_SETS: dict[str, tuple[tuple[str, ...], Callable[[Path | str], ValidationStudy]]] = {
    "qmdiab": (QMDIAB_FILES, read_qmdiab),
    "liver_lipidome": (LIVER_FILES, read_liver_lipidome),
}
"""Each real data set by name: the CSV files it needs (:func:`has_files`) and its reader."""


def available_studies(
    folder: Path | str, names: Iterable[str]
) -> Iterator[tuple[str, ValidationStudy]]:
    """Each study of ``names`` (keys of :data:`VALIDATION_SETS`) whose files ``folder`` holds.

    A study whose files are absent is skipped with one printed line naming them, as a
    benchmark script reports it.
    """
    for name in names:
        files, reader = VALIDATION_SETS[name]
        if not has_files(folder, files):
            print(f"{name}: skipped, {folder} lacks {files}")
            continue
        yield name, reader(folder)


def blended_residual_covariance(
    residuals: np.ndarray, divisor: int, diagonal_share: float = 0.2
) -> np.ndarray:
    """``(1 - w) S + w diag(S)`` with ``S = E'E / divisor``: a real covariance kept well-posed.

    Parameters
    ----------
    residuals
        Stage-1 residuals, samples × features.
    divisor
        Degrees of freedom dividing ``E'E`` (``n - p``).
    diagonal_share
        Weight ``w`` in [0, 1] of the diagonal.

    Returns
    -------
    numpy.ndarray
        The m × m covariance.
    """
    if not 0.0 <= diagonal_share <= 1.0:
        raise ValueError(f"diagonal_share must lie in [0, 1], got {diagonal_share}.")
    cov = residuals.T @ residuals / divisor
    blended = (1.0 - diagonal_share) * cov
    blended[np.diag_indices_from(blended)] = np.diag(cov)
    return blended


def real_residual_covariance(study: ValidationStudy, diagonal_share: float = 0.2) -> np.ndarray:
    """The residual covariance of ``study`` after stage 1, blended towards its diagonal.

    Parameters
    ----------
    study
        A study from :func:`read_qmdiab` or :func:`read_liver_lipidome`.
    diagonal_share
        Weight of the diagonal (see :func:`blended_residual_covariance`).

    Returns
    -------
    numpy.ndarray
        m × m, in the order of ``study.Y``'s features.
    """
    fit = mlm(study.Y, study.X)
    divisor = residual_divisor(fit.n_obs, fit.X.shape[1], fit.dof)
    return blended_residual_covariance(fit.residuals.to_numpy(), divisor, diagonal_share)
