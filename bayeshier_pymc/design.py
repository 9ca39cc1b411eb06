"""Design matrices for the matrix linear model from arrays, DataFrames or formulaic formulas.

``X`` (samples × covariates) and ``Z`` (features × feature covariates) are built the same way:

* an array gets default labels (``x0, x1, ...`` / ``z0, z1, ...``) and, if requested, a leading
  column of ones named ``"(Intercept)"``;
* a DataFrame keeps its column names; its index is matched to the response's sample (``X``) or
  feature (``Z``) labels and reordered to them when the label sets agree;
* a formula string is materialised by formulaic on a data frame (``data=`` for ``X``,
  ``feature_data=`` for ``Z``) with ``na_action="raise"`` so that no row is silently dropped.
  The intercept comes from the formula and is renamed ``"(Intercept)"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from formulaic import ModelSpec, model_matrix
from formulaic.errors import FormulaicError

from bayeshier_pymc._validation import as_finite_matrix, as_numeric_matrix, check_unique_labels

INTERCEPT = "(Intercept)"
_FORMULAIC_INTERCEPT = "Intercept"
INTERCEPT_NAMES = (INTERCEPT, _FORMULAIC_INTERCEPT)
"""The intercept's names: this package's and R's ``"(Intercept)"``, formulaic's and
statsmodels' ``"Intercept"``."""


@dataclass(frozen=True)
class Response:
    """The response matrix ``Y`` (samples × features) with its labels.

    Attributes
    ----------
    values
        Float64 array of shape (n, m), all finite.
    samples, features
        Row and column labels, or ``None`` when ``Y`` was an unlabelled array.
    """

    values: np.ndarray
    samples: pd.Index | None
    features: pd.Index | None


@dataclass(frozen=True)
class Design:
    """A validated design matrix with labels and what is needed to rebuild it for new data.

    Attributes
    ----------
    name
        ``"X"`` or ``"Z"``, used in error messages.
    matrix
        Float64 array, rows × columns.
    rows
        Row labels (samples for ``X``, features for ``Z``).
    columns
        Column labels; the intercept is named ``"(Intercept)"``.
    intercept_added
        Whether the intercept column was prepended here (array or DataFrame input).
    input_columns
        The columns of the DataFrame input, or ``None``.
    spec
        The formulaic model spec when built from a formula, else ``None``.
    """

    name: str
    matrix: np.ndarray
    rows: pd.Index
    columns: pd.Index
    intercept_added: bool
    input_columns: pd.Index | None
    spec: ModelSpec | None

    def frame(self) -> pd.DataFrame:
        """Return the design as a labelled DataFrame."""
        return pd.DataFrame(self.matrix, index=self.rows, columns=self.columns)

    def transform(self, new: object, row_kind: str) -> tuple[np.ndarray, pd.Index]:
        """Build the design for new rows the same way as for the fitted data.

        Parameters
        ----------
        new
            A data frame for a formula design; otherwise an array or DataFrame with either the
            original input columns (the intercept is added again) or all design columns.
        row_kind
            Prefix of default row labels for unlabelled arrays (e.g. ``"sample"``).

        Returns
        -------
        tuple of numpy.ndarray and pandas.Index
            The design matrix for ``new`` and its row labels.
        """
        if self.spec is not None:
            if not isinstance(new, pd.DataFrame):
                raise ValueError(
                    f"{self.name} was built from a formula; pass a DataFrame with the variables "
                    f"it uses, got {type(new).__name__}."
                )
            frame = _materialize(self.spec, new, self.name)
            return _finite_values(frame, self.name), pd.Index(new.index)
        if isinstance(new, pd.DataFrame):
            return self._transform_frame(new), pd.Index(new.index)
        matrix = _as_2d(new, f"new {self.name}")
        return self._complete_columns(matrix), _default_labels(row_kind, matrix.shape[0])

    def _transform_frame(self, new: pd.DataFrame) -> np.ndarray:
        if set(self.columns) <= set(new.columns):
            return _finite_values(new[list(self.columns)], f"new {self.name}")
        wanted = self.input_columns if self.input_columns is not None else self.columns
        missing = [c for c in wanted if c not in new.columns]
        if missing:
            raise ValueError(f"new {self.name} lacks the column(s) {missing[:10]!r}.")
        return self._complete_columns(_finite_values(new[list(wanted)], f"new {self.name}"))

    def _complete_columns(self, matrix: np.ndarray) -> np.ndarray:
        width = len(self.columns)
        if matrix.shape[1] == width:
            return matrix
        if self.intercept_added and matrix.shape[1] == width - 1:
            return _prepend_ones(matrix)
        raise ValueError(
            f"new {self.name} has {matrix.shape[1]} columns; expected {width} (the design "
            f"columns)"
            + (f" or {width - 1} (without the intercept)." if self.intercept_added else ".")
        )


def response_matrix(Y: object, *, allow_nan: bool = False) -> Response:
    """Validate the response ``Y`` (samples × features) and extract its labels.

    Parameters
    ----------
    Y
        A 2-D array or a DataFrame (index: samples, columns: features).
    allow_nan
        Accept NaN (missing values; ``mlm(..., missing="per-feature")``), never ±inf.

    Returns
    -------
    Response
        Finite float64 values (NaN too with ``allow_nan``) with labels (``None`` for arrays).
    """
    samples = features = None
    if isinstance(Y, pd.DataFrame):
        samples = check_unique_labels(Y.index, "Y's index (samples)")
        features = check_unique_labels(Y.columns, "Y's columns (features)")
    if not allow_nan:
        values = _finite_values(Y, "Y") if isinstance(Y, pd.DataFrame) else as_finite_matrix(Y, "Y")
        return Response(values, samples, features)
    array = as_numeric_matrix(Y.to_numpy(dtype=object) if isinstance(Y, pd.DataFrame) else Y, "Y")
    infinite = np.isinf(array)
    if infinite.any():
        first = tuple(int(i) for i in np.argwhere(infinite)[0])
        raise ValueError(
            f"Y holds {int(infinite.sum())} infinite value(s), the first at position {first}; "
            "only NaN marks a missing value."
        )
    return Response(array, samples, features)


def build_design(
    source: object,
    *,
    name: str,
    frame: pd.DataFrame | None,
    frame_arg: str,
    intercept: bool,
    labels: pd.Index | None,
    row_kind: str,
    n_rows: int,
) -> Design:
    """Build ``X`` or ``Z`` from an array, a DataFrame or a formula.

    Parameters
    ----------
    source
        Array, DataFrame or formula string.
    name
        ``"X"`` or ``"Z"``.
    frame
        The data frame a formula is evaluated on (``data``/``feature_data``), else ``None``.
    frame_arg
        The keyword that passes ``frame`` (for messages).
    intercept
        Whether to prepend an intercept (arrays and DataFrames). For a formula the formula
        decides; ``intercept=False`` with a formula that has an intercept raises.
    labels
        Labels the rows must match (the response's samples or features), or ``None``.
    row_kind
        ``"sample"`` or ``"feature"``: prefix of default row labels.
    n_rows
        Number of rows required (samples or features of ``Y``).

    Returns
    -------
    Design
        The validated design; rows are in the order of ``labels``.
    """
    if isinstance(source, str):
        design = _formula_design(source, name, frame, frame_arg, intercept, labels)
    elif frame is not None:
        raise ValueError(f"{frame_arg}= is only used when {name} is a formula string.")
    elif isinstance(source, pd.DataFrame):
        design = _frame_design(source, name, intercept, labels)
    else:
        design = _array_design(source, name, intercept, labels, row_kind)
    if design.matrix.shape[0] != n_rows:
        raise ValueError(
            f"{name} has {design.matrix.shape[0]} rows but Y has {n_rows} "
            f"{row_kind}s; they must match."
        )
    check_unique_labels(design.columns, f"{name}'s columns")
    return design


def check_full_rank(matrix: np.ndarray, columns: pd.Index, name: str) -> None:
    """Raise if ``matrix`` does not have full column rank, naming the collinear columns.

    Columns are scaled to unit norm first so that the rank decision does not depend on their
    units. The rank is the number of singular values above ``s_max · max(shape) · eps``; the
    columns named are those that take part in a linear dependency (non-zero entries of the
    right singular vectors of the null space).

    Parameters
    ----------
    matrix
        Finite array, rows × columns.
    columns
        Column labels for the message.
    name
        ``"X"`` or ``"Z"``.
    """
    n_rows, n_cols = matrix.shape
    peaks = np.abs(matrix).max(axis=0)
    if (peaks == 0).any():
        zero = list(columns[peaks == 0])
        raise ValueError(
            f"{name} is rank-deficient: column(s) {zero[:10]!r} are all zero; drop them."
        )
    # divide by the largest entry first so that the norm neither overflows nor underflows
    scaled = matrix / peaks
    scaled = scaled / np.linalg.norm(scaled, axis=0)
    if n_rows < n_cols:
        scaled = np.vstack([scaled, np.zeros((n_cols - n_rows, n_cols))])
    _, singular, right = np.linalg.svd(scaled, full_matrices=False)
    rank = int((singular > singular[0] * max(n_rows, n_cols) * np.finfo(float).eps).sum())
    if rank < n_cols:
        involved = (np.abs(right[rank:]) > 1e-8).any(axis=0)
        raise ValueError(
            f"{name} is rank-deficient (rank {rank} < {n_cols} columns); columns "
            f"{list(columns[involved])[:10]!r} are collinear (some are linear combinations of "
            "the others)."
        )


def align_rows(
    frame: pd.DataFrame, labels: pd.Index | None, *, target: str, source: str
) -> pd.DataFrame:
    """Reorder ``frame``'s rows to ``labels`` when both hold the same set of labels.

    Parameters
    ----------
    frame
        The frame whose index should match.
    labels
        Target labels, or ``None`` (then ``frame`` is returned unchanged).
    target, source
        Names of the two label sets for messages, e.g. ``"Y's samples"`` and ``"X's index"``.

    Returns
    -------
    pandas.DataFrame
        ``frame`` in the order of ``labels``.
    """
    index = check_unique_labels(frame.index, source)
    if labels is None or index.equals(labels):
        return frame
    only_target = labels.difference(index)
    only_frame = index.difference(labels)
    if len(only_target) or len(only_frame):
        raise ValueError(
            f"{target} and {source} do not match: {len(only_target)} label(s) only in "
            f"{target} (e.g. {list(only_target[:5])!r}), {len(only_frame)} only in {source} "
            f"(e.g. {list(only_frame[:5])!r})."
        )
    return frame.loc[labels]


def _formula_design(
    formula: str,
    name: str,
    frame: pd.DataFrame | None,
    frame_arg: str,
    intercept: bool,
    labels: pd.Index | None,
) -> Design:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} is a formula; pass the DataFrame it uses as {frame_arg}=.")
    frame = align_rows(frame, labels, target=_target_name(name), source=f"{frame_arg}'s index")
    try:
        materialized = model_matrix(formula, frame, na_action="raise")
    except (FormulaicError, ValueError) as err:
        raise ValueError(f"could not build {name} from the formula {formula!r}: {err}") from err
    empty_terms = [str(term) for term, at in materialized.model_spec.term_indices.items() if not at]
    if empty_terms:
        raise ValueError(
            f"the formula term(s) {empty_terms!r} of {name} yield no column (e.g. a categorical "
            "with one level in the data); drop them from the formula."
        )
    matrix_frame = materialized.rename(columns={_FORMULAIC_INTERCEPT: INTERCEPT})
    if not intercept and INTERCEPT in matrix_frame.columns:
        raise ValueError(
            f"the formula for {name} has an intercept but {name.lower()}_intercept=False; "
            "write '0 + ...' in the formula to remove it."
        )
    return Design(
        name=name,
        matrix=_finite_values(matrix_frame, name),
        rows=pd.Index(frame.index),
        columns=pd.Index(matrix_frame.columns),
        intercept_added=False,
        input_columns=None,
        spec=materialized.model_spec,
    )


def _frame_design(
    frame: pd.DataFrame, name: str, intercept: bool, labels: pd.Index | None
) -> Design:
    frame = align_rows(frame, labels, target=_target_name(name), source=f"{name}'s index")
    matrix = _finite_values(frame, name)
    columns = pd.Index(frame.columns)
    if intercept:
        if INTERCEPT in columns:
            raise ValueError(
                f"{name} already has a column named {INTERCEPT!r}; pass "
                f"{name.lower()}_intercept=False."
            )
        matrix = _prepend_ones(matrix)
        columns = pd.Index([INTERCEPT, *columns])
    return Design(name, matrix, pd.Index(frame.index), columns, intercept, frame.columns, None)


def _array_design(
    values: object, name: str, intercept: bool, labels: pd.Index | None, row_kind: str
) -> Design:
    matrix = _as_2d(values, name)
    columns = pd.Index([f"{name.lower()}{j}" for j in range(matrix.shape[1])])
    if intercept:
        matrix = _prepend_ones(matrix)
        columns = pd.Index([INTERCEPT, *columns])
    rows = labels if labels is not None else _default_labels(row_kind, matrix.shape[0])
    return Design(name, matrix, rows, columns, intercept, None, None)


def _target_name(name: str) -> str:
    return "Y's samples (index)" if name == "X" else "Y's features (columns)"


def _materialize(spec: ModelSpec, frame: pd.DataFrame, name: str) -> pd.DataFrame:
    try:
        matrix = spec.get_model_matrix(frame, na_action="raise")
    except (FormulaicError, ValueError) as err:
        raise ValueError(f"could not build new {name} from the fitted formula: {err}") from err
    return matrix.rename(columns={_FORMULAIC_INTERCEPT: INTERCEPT})


def _finite_values(frame: pd.DataFrame, name: str) -> np.ndarray:
    non_numeric = [
        column
        for column, dtype in frame.dtypes.items()
        if not pd.api.types.is_numeric_dtype(dtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_complex_dtype(dtype)
    ]
    if non_numeric:
        raise ValueError(
            f"{name} has non-numeric column(s) {non_numeric[:10]!r}; encode them (for a design, "
            "e.g. with a formula such as 'C(sex)') or drop them first."
        )
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {frame.shape}).")
    values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        columns = frame.columns[~finite.all(axis=0)]
        empty = frame.columns[~finite.any(axis=0)]
        raise ValueError(
            f"{name} holds {int((~finite).sum())} non-finite value(s) (NaN or inf) in "
            f"{len(columns)} column(s) {columns[:5].tolist()!r}; the first in column "
            f"{frame.columns[column]!r}, row {frame.index[row]!r} (position {(row, column)})"
            + (f"; column(s) {empty[:5].tolist()!r} hold no finite value" if len(empty) else "")
            + ". Impute or drop them first (see bayeshier_pymc.preprocess)."
        )
    return as_finite_matrix(values, name)


def _as_2d(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    return as_finite_matrix(array, name)


def _prepend_ones(matrix: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(matrix.shape[0]), matrix])


def _default_labels(kind: str, count: int) -> pd.Index:
    return pd.Index([f"{kind}_{i}" for i in range(count)])
