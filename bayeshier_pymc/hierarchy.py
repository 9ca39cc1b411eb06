"""Feature annotation trees: validated nesting, integer index maps inside, labels outside."""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from bayeshier_pymc._validation import annotated_at_no_level, check_unique_labels, missing_labels

__all__ = ["Hierarchy"]

logger = logging.getLogger(__name__)

MissingPolicy = Literal["raise", "unassigned"]


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A strictly nested tree: features → level-1 groups → level-2 groups → ….

    Build it with :meth:`from_frame`; the constructor takes the integer form directly.

    Parameters
    ----------
    features
        Feature labels, in the order used by every array.
    levels
        Names of the annotation levels, finest first (e.g. ``("SUB_PATHWAY", "SUPER_PATHWAY")``).
    groups
        For each level, the labels of its groups.
    parents
        ``parents[0][j]`` is the level-1 group of feature ``j``; ``parents[l][h]`` is the
        level-(l+1) group of level-l group ``h``.
    """

    features: pd.Index
    levels: tuple[str, ...]
    groups: tuple[pd.Index, ...]
    parents: tuple[np.ndarray, ...]

    def __post_init__(self) -> None:
        if not (len(self.levels) == len(self.groups) == len(self.parents)):
            raise ValueError("levels, groups and parents must have one entry per level.")
        _check_level_names(self.levels)
        child_sizes = [len(self.features), *(len(g) for g in self.groups)][: len(self.levels)]
        for level, parent, n_children, group_labels in zip(
            self.levels, self.parents, child_sizes, self.groups, strict=True
        ):
            if parent.shape != (n_children,):
                raise ValueError(
                    f"the index map of level {level!r} has shape {parent.shape}, "
                    f"expected ({n_children},)."
                )
            if n_children and (parent.min() < 0 or parent.max() >= len(group_labels)):
                raise ValueError(f"the index map of level {level!r} points outside its groups.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def flat(cls, features: Sequence[object] | pd.Index) -> Hierarchy:
        """The tree without annotation levels: every feature hangs from θ0."""
        labels = check_unique_labels(features, "features")
        return cls(pd.Index(labels, name="feature"), (), (), ())

    @classmethod
    def from_frame(
        cls,
        annotations: pd.DataFrame,
        levels: Sequence[str] | str,
        *,
        missing: MissingPolicy = "raise",
        unassigned_label: str = "unassigned",
        drop_unannotated: bool = False,
    ) -> Hierarchy:
        """Build a hierarchy from a feature annotation table.

        Parameters
        ----------
        annotations
            DataFrame indexed by feature label with one column per level.
        levels
            Column names, finest level first (a single name for a one-level tree; an empty
            list for a tree with no annotation levels).
        missing
            ``"raise"`` (default): a missing annotation is an error naming the features.
            ``"unassigned"``: missing labels form an explicit group called
            ``unassigned_label``; below an annotated parent it is named
            ``"<unassigned_label> (<parent>)"`` so the tree stays strictly nested.
        unassigned_label
            Label of the group that collects features without an annotation.
        drop_unannotated
            Leave out the features whose annotation is missing (empty) at every level, e.g.
            the unnamed ``X - …`` features of Metabolon data, before ``missing`` applies to
            the rest; how many and the first few are logged (INFO, ``bayeshier_pymc`` logger).
            The same check as ``bayeshier fit --drop-unannotated``. The tree then covers
            fewer features than the data: keep ``responses[tree.features]`` for stage 1.

        Returns
        -------
        Hierarchy

        Raises
        ------
        ValueError
            On duplicated feature labels, unknown columns, missing annotations (with
            ``missing="raise"``), or a group that sits in more than one parent group.
        """
        if not isinstance(annotations, pd.DataFrame):
            raise ValueError(
                f"annotations must be a pandas DataFrame, got {type(annotations).__name__}."
            )
        levels = [levels] if isinstance(levels, str) else list(levels)
        if missing not in ("raise", "unassigned"):
            raise ValueError(f"missing must be 'raise' or 'unassigned', got {missing!r}.")
        if annotations.shape[0] == 0:
            raise ValueError("annotations has no rows.")
        features = check_unique_labels(annotations.index, "annotations index (feature labels)")
        unknown = [level for level in levels if level not in annotations.columns]
        if unknown:
            raise ValueError(
                f"annotation levels {unknown!r} are not columns of annotations "
                f"(columns: {list(annotations.columns)!r})."
            )
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels are repeated: {levels!r}.")
        if drop_unannotated and levels:
            annotations = _drop_unannotated(annotations, levels)
            features = annotations.index

        labels = _clean_labels(annotations, levels, missing, unassigned_label)
        groups: list[pd.Index] = []
        parents: list[np.ndarray] = []
        child_codes = np.arange(len(features))
        for depth, level in enumerate(levels):
            codes, uniques = pd.factorize(labels[level], sort=True)
            if depth > 0:
                _check_nesting(child_codes, codes, groups[-1], uniques, levels[depth - 1], level)
            parent = np.empty(child_codes.max() + 1, dtype=np.intp)
            parent[child_codes] = codes
            parents.append(parent)
            groups.append(pd.Index(uniques, name=level))
            child_codes = codes
        return cls(
            features=pd.Index(features, name="feature"),
            levels=tuple(levels),
            groups=tuple(groups),
            parents=tuple(parents),
        )

    # ------------------------------------------------------------------ queries
    @property
    def depth(self) -> int:
        """Number of annotation levels."""
        return len(self.levels)

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.features)

    @property
    def n_groups(self) -> tuple[int, ...]:
        """Number of groups at each level, finest first."""
        return tuple(len(g) for g in self.groups)

    def membership(self, level: int | str) -> np.ndarray:
        """Group index of every feature at ``level`` (an integer depth from 0, or a name)."""
        depth = self._level_position(level)
        codes = self.parents[0]
        for parent in self.parents[1 : depth + 1]:
            codes = parent[codes]
        return codes

    def group_sizes(self, level: int | str) -> pd.Series:
        """Number of features in each group of ``level``."""
        depth = self._level_position(level)
        counts = np.bincount(self.membership(depth), minlength=len(self.groups[depth]))
        return pd.Series(counts, index=self.groups[depth], name="n_features")

    def to_frame(self) -> pd.DataFrame:
        """The annotation table: one row per feature, one column per level."""
        return pd.DataFrame(
            {level: self.groups[d][self.membership(d)] for d, level in enumerate(self.levels)},
            index=self.features,
        )

    # ------------------------------------------------------------------ derived trees
    def truncate(self, depth: int) -> Hierarchy:
        """The tree that keeps only the ``depth`` finest levels."""
        if not 0 <= depth <= self.depth:
            raise ValueError(
                f"depth {depth} is outside 0..{self.depth}: the hierarchy has levels "
                f"{list(self.levels)!r}."
            )
        return Hierarchy(
            self.features, self.levels[:depth], self.groups[:depth], self.parents[:depth]
        )

    def align(self, features: Sequence[object] | pd.Index) -> Hierarchy:
        """Restrict the tree to ``features``, in that order, dropping groups left empty.

        Annotated features that are not requested are dropped silently (annotation files
        usually cover more features than a data set); requested features that the tree
        lacks raise a ValueError naming them.
        """
        wanted = check_unique_labels(features, "features")
        positions = self.features.get_indexer(wanted)
        absent = wanted[positions < 0]
        if len(absent):
            raise ValueError(
                f"{len(absent)} feature(s) have no annotation in the hierarchy: "
                f"{absent[:10].tolist()!r}{' …' if len(absent) > 10 else ''}."
            )
        groups: list[pd.Index] = []
        parents: list[np.ndarray] = []
        child = positions
        for depth in range(self.depth):
            codes_full = self.parents[depth][child]
            used, codes = np.unique(codes_full, return_inverse=True)
            parents.append(codes.astype(np.intp))
            groups.append(self.groups[depth][used])
            child = used
        return Hierarchy(
            pd.Index(wanted, name="feature"), self.levels, tuple(groups), tuple(parents)
        )

    def _level_position(self, level: int | str) -> int:
        if isinstance(level, str):
            if level not in self.levels:
                raise ValueError(f"unknown level {level!r}; levels are {list(self.levels)!r}.")
            return self.levels.index(level)
        if not 0 <= level < self.depth:
            raise ValueError(f"level {level} is outside 0..{self.depth - 1}.")
        return level

    def __repr__(self) -> str:
        sizes = ", ".join(f"{lv}: {n}" for lv, n in zip(self.levels, self.n_groups, strict=True))
        return f"Hierarchy({self.n_features} features; {sizes or 'no levels'})"

    def describe(self, largest: int = 3) -> pd.DataFrame:
        """One row per level: groups, features per group (min, median, max), largest groups.

        Parameters
        ----------
        largest
            How many of the largest groups to name per level.
        """
        rows = []
        for level in self.levels:
            sizes = self.group_sizes(level)
            top = sizes.sort_values(ascending=False, kind="stable").head(largest)
            rows.append(
                {
                    "level": level,
                    "groups": len(sizes),
                    "min_size": int(sizes.min()),
                    "median_size": float(sizes.median()),
                    "max_size": int(sizes.max()),
                    "largest_groups": ", ".join(f"{name} ({n})" for name, n in top.items()),
                }
            )
        columns = ["groups", "min_size", "median_size", "max_size", "largest_groups"]
        return pd.DataFrame(rows, columns=["level", *columns]).set_index("level")

    def _repr_html_(self) -> str:
        """A notebook summary: the repr and :meth:`describe`'s table."""
        head = f"<p>{html.escape(repr(self))}, finest level first</p>"
        return f"<div>{head}{self.describe().to_html()}</div>"


RESERVED_LEVEL_NAMES = frozenset(
    {"feature", "covariate", "level", "chain", "draw", "theta", "mu", "tau"}
)
"""Names that would collide with the dims and variables of the model and its InferenceData."""


def _check_level_names(levels: tuple[str, ...]) -> None:
    """Raise for level names that are not strings or collide with the model's names."""
    not_text = [level for level in levels if not isinstance(level, str) or not level]
    if not_text:
        raise ValueError(
            f"level names must be non-empty strings, got {not_text!r}; rename the columns."
        )
    derived = {f"{level}{suffix}" for level in levels for suffix in ("_mean", "_index")}
    reserved = [level for level in levels if level in RESERVED_LEVEL_NAMES or level in derived]
    if reserved:
        raise ValueError(
            f"level name(s) {reserved!r} collide with the model's dims or variables "
            f"({sorted(RESERVED_LEVEL_NAMES)!r} and '<level>_mean' / '<level>_index'); "
            "rename the columns."
        )


def _drop_unannotated(annotations: pd.DataFrame, levels: list[str]) -> pd.DataFrame:
    """The rows annotated at one level at least; the others are logged and left out."""
    unannotated = annotated_at_no_level(annotations, levels)
    if unannotated.all():
        raise ValueError(f"no feature has an annotation at any of the levels {levels!r}.")
    if unannotated.any():
        left_out = annotations.index[unannotated]
        logger.info(
            "left out %d of %d feature(s) without annotation: %r%s",
            len(left_out),
            len(annotations),
            left_out[:5].tolist(),
            "…" if len(left_out) > 5 else "",
        )
    return annotations.loc[~unannotated]


def _clean_labels(
    annotations: pd.DataFrame,
    levels: list[str],
    missing: MissingPolicy,
    unassigned_label: str,
) -> dict[str, np.ndarray]:
    """Labels per level as strings, with missing values handled by ``missing``."""
    labels: dict[str, np.ndarray] = {}
    parent_labels: np.ndarray | None = None
    for level in reversed(levels):
        column = annotations[level]
        absent = missing_labels(column)
        text = column.astype("string").fillna("").str.strip().to_numpy(dtype=object)
        if absent.any():
            if missing == "raise":
                names = annotations.index[absent][:10].tolist()
                raise ValueError(
                    f"{int(absent.sum())} feature(s) have no {level!r} annotation, e.g. "
                    f"{names!r}; pass missing='unassigned' to group them explicitly (or "
                    "drop_unannotated=True to leave out features annotated at no level)."
                )
            if parent_labels is None:
                text[absent] = unassigned_label
            else:
                text[absent] = [
                    unassigned_label if p == unassigned_label else f"{unassigned_label} ({p})"
                    for p in parent_labels[absent]
                ]
        labels[level] = text.astype(str)
        parent_labels = labels[level]
    return labels


def _check_nesting(
    child_codes: np.ndarray,
    parent_codes: np.ndarray,
    child_labels: pd.Index,
    parent_labels: pd.Index,
    child_level: str,
    parent_level: str,
) -> None:
    """Raise if any child group has features in more than one parent group."""
    pairs = pd.DataFrame({"child": child_codes, "parent": parent_codes}).drop_duplicates()
    n_parents = pairs.groupby("child")["parent"].nunique()
    broken = n_parents[n_parents > 1].index
    if len(broken):
        details = "; ".join(
            f"{child_labels[c]!r} in "
            f"{sorted(parent_labels[pairs.loc[pairs.child == c, 'parent']].tolist())!r}"
            for c in broken[:5]
        )
        raise ValueError(
            f"the annotation is not nested: {len(broken)} {child_level!r} group(s) sit in more "
            f"than one {parent_level!r} group: {details}."
        )
