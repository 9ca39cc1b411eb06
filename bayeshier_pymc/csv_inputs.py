"""Read a study from CSV files, with errors that name the file, column or identifier at fault."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bayeshier_pymc._validation import annotated_at_no_level

__all__ = ["CsvStudy", "read_study"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CsvStudy:
    """Responses, sample table and feature annotations, aligned on their identifiers."""

    responses: pd.DataFrame
    samples: pd.DataFrame
    annotations: pd.DataFrame


def _read(path: Path | str, what: str, id_column: str | None) -> pd.DataFrame:
    """One table, its identifiers as text exactly as written, checked by name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the {what} file {str(path)!r} does not exist.")
    header = _header(path, what)
    column = id_column or header[0]
    if column not in header:
        raise ValueError(
            f"the {what} file {str(path)!r} has no column {column!r} (columns: {header[:10]!r}…)."
        )
    frame = pd.read_csv(path, dtype={column: str})
    if frame.empty:
        raise ValueError(f"the {what} file {str(path)!r} has no rows.")
    ids = frame[column]
    if ids.isna().any():
        raise ValueError(
            f"the {what} file {str(path)!r} has {int(ids.isna().sum())} row(s) without an "
            f"identifier in {column!r}."
        )
    if ids.duplicated().any():
        raise ValueError(
            f"the {what} file {str(path)!r} repeats identifiers in {column!r}, e.g. "
            f"{ids[ids.duplicated()].iloc[0]!r}."
        )
    return frame.drop(columns=column).set_axis(pd.Index(ids, name=column), axis=0)


def _header(path: Path, what: str) -> list[str]:
    """The column names as written (pandas renames a repeated one ``x.1``)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"the {what} file {str(path)!r} is empty.")
    if len(header) == 1:
        raise ValueError(
            f"the {what} file {str(path)!r} has one column only ({header[0][:60]!r}); "
            "wrong separator? The files must be comma-separated."
        )
    counts = Counter(header)
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        raise ValueError(
            f"the {what} file {str(path)!r} repeats the column header(s) {repeated[:5]!r}."
        )
    return header


def _match_as_numbers(ids: pd.Index, others: pd.Index) -> bool:
    """Whether every id of ``ids`` would match one of ``others`` if both were read as numbers."""
    as_numbers = pd.to_numeric(ids, errors="coerce")
    other_numbers = pd.to_numeric(others, errors="coerce")
    return bool(as_numbers.notna().all() and pd.Index(as_numbers).isin(other_numbers).all())


def read_study(
    responses: Path | str,
    samples: Path | str,
    annotations: Path | str,
    levels: Sequence[str],
    *,
    sample_id: str | None = None,
    feature_id: str | None = None,
    drop_unannotated: bool = False,
) -> CsvStudy:
    """Read and align the three tables of a study.

    Parameters
    ----------
    responses
        CSV of samples × features: an identifier column, then one numeric column per feature.
    samples
        CSV of sample covariates with the same identifiers.
    annotations
        CSV with one row per feature: an identifier column and the annotation ``levels``.
    levels
        Annotation columns, finest first.
    sample_id, feature_id
        Identifier columns (default: the first column of each file).
    drop_unannotated
        Drop response features that have no row in the annotation file, or whose
        annotation is missing (empty) at every level (e.g. unnamed Metabolon features; the
        check of ``Hierarchy.from_frame(..., drop_unannotated=True)``), instead of
        raising; how many and the first few are logged (INFO, ``bayeshier_pymc`` logger).

    Notes
    -----
    Identifiers are read and matched exactly as text: ``001`` in one file is not ``1`` in
    another.

    Returns
    -------
    CsvStudy

    Raises
    ------
    ValueError
        For a missing or empty file, a file with one column only (wrong separator), repeated
        column headers or identifiers, a missing column, a non-numeric response column, or
        sample / feature identifiers that do not match; each message names the file.
    """
    y = _read(responses, "responses", sample_id)
    x = _read(samples, "samples", sample_id)
    tree = _read(annotations, "annotations", feature_id)
    non_numeric = [c for c in y.columns if not pd.api.types.is_numeric_dtype(y[c])]
    if non_numeric:
        raise ValueError(
            f"{len(non_numeric)} response column(s) are not numeric, e.g. {non_numeric[:5]!r}."
        )
    absent_levels = [level for level in levels if level not in tree.columns]
    if absent_levels:
        raise ValueError(
            f"the annotations file has no column(s) {absent_levels!r} "
            f"(columns: {list(tree.columns)!r})."
        )
    missing_samples = y.index.difference(x.index)
    if len(missing_samples):
        raise ValueError(
            f"{len(missing_samples)} response sample(s) have no row in the samples file, e.g. "
            f"{missing_samples[:5].tolist()!r}; identifiers are matched exactly as text"
            + (" ('001' is not '1')." if _match_as_numbers(y.index, x.index) else ".")
        )
    features = pd.Index(y.columns.astype(str))
    y = y.set_axis(features, axis=1)
    annotated = ~annotated_at_no_level(tree, levels)
    usable = features.intersection(tree.index[annotated], sort=False)
    unannotated = features.difference(usable, sort=False)
    if len(unannotated) and not drop_unannotated:
        raise ValueError(
            f"{len(unannotated)} response feature(s) have no annotation, e.g. "
            f"{unannotated[:5].tolist()!r}; pass drop_unannotated (--drop-unannotated) to "
            "leave them out."
        )
    if len(unannotated):
        logger.info(
            "left out %d response feature(s) without annotation: %r%s",
            len(unannotated),
            unannotated[:5].tolist(),
            "…" if len(unannotated) > 5 else "",
        )
    return CsvStudy(
        responses=y[usable],
        samples=x.loc[y.index],
        annotations=tree.loc[usable, list(levels)],
    )
