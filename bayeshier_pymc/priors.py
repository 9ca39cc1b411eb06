"""Prior configuration of the shrinkage model: per covariate and level, from a named preset.

The model's priors are θ0_k ~ N(mu0_k, s0_k²) for the global mean of covariate k and
τ_kl ~ HalfCauchy(A_kl) for the scale of every level l (``"feature"`` first, then each
annotation level used). Every number is in the units of covariate k's coefficients, so a
fixed number means very different things for age per year and for sex; the default preset
therefore sets them from each covariate's own standard errors:

``"auto"`` (the default)
    With ``s̄_k`` the median standard error of covariate k over the features,
    ``mu0_k = 0``, ``s0_k = 10 s̄_k`` and ``A_kl = s̄_k`` at every level. Rescaling a
    covariate (or the response) by c rescales its estimates, their standard errors and these
    priors by c, so the posterior of θ is rescaled by c and its lfsr unchanged: the default is
    invariant to the units of X and Y. The standard errors are conditioning quantities of the
    model (b_j ~ N(θ_j, s_j²)), not data it predicts, so a prior set from them is a proper
    prior; ``docs/model.md`` gives the reasons for the choice.
``"research"``
    The research code's fixed priors, ``mu0 = 0``, ``s0 = 1`` and ``A = 1`` for every
    covariate and level (:data:`RESEARCH_PRIORS`).

A mapping overrides any of ``mu0``, ``s0``, ``tau_scale`` over a preset (``"preset"``, default
``"auto"``); numbers given are in the units of the model's estimates: residual-SD units when
the model takes the effects as exchangeable in them (``ShrinkageModel``'s ``effect_scale``, by
default for a stage-1 fit), Y's units otherwise.

The prior of the group effects
------------------------------
``group_prior`` chooses how each group effect (a unit of an annotation level used, not a
feature, not θ0) varies around its parent: u_g ~ N(parent, τ_l² λ_g²), with

``"normal"`` (the default)
    λ_g ≡ 1: one scale τ_l per level, the package's model.
``"student_t"``
    λ_g² ~ InvGamma(ν/2, ν/2) with ν = ``group_df`` (default 3, at least 0.1: below, prior
    draws of λ_g² overflow float64): the group effects are Student-t with ν degrees of
    freedom around their parent.
``"horseshoe"``
    λ_g ~ HalfCauchy(0, 1): the horseshoe's local scales, as the inverse-gamma mixture
    λ_g² | ξ_g ~ InvGamma(1/2, 1/ξ_g), ξ_g ~ InvGamma(1/2, 1) (Makalic & Schmidt 2016).

Each covariate has its own λ_g. A heavy-tailed prior lets a group with a large, coherent
effect escape a small τ_l (``docs/calibration.md``, "A heavy-tailed group prior"); the features'
deviations around their group stay normal.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "AUTO_S0_MULTIPLE",
    "AUTO_TAU_MULTIPLE",
    "DEFAULT_GROUP_DF",
    "DEFAULT_GROUP_PRIOR",
    "DEFAULT_PRESET",
    "GROUP_PRIORS",
    "MIN_GROUP_DF",
    "PRESETS",
    "RESEARCH_PRIORS",
    "Priors",
]

RESEARCH_PRIORS: dict[str, float] = {"mu0": 0.0, "s0": 1.0, "tau_scale": 1.0}
"""The research model's priors: θ0 ~ N(mu0, s0²), every τ ~ HalfCauchy(tau_scale)."""

AUTO_S0_MULTIPLE = 10.0
"""The ``"auto"`` preset's sd of θ0, in median standard errors of the covariate."""

AUTO_TAU_MULTIPLE = 1.0
"""The ``"auto"`` preset's HalfCauchy scale of every τ, in median standard errors."""

PRESETS = ("auto", "research")
"""The named presets (see the module docstring)."""

DEFAULT_PRESET = "auto"

GROUP_PRIORS = ("normal", "student_t", "horseshoe")
"""The priors of the group effects around their parent (see the module docstring)."""

DEFAULT_GROUP_PRIOR = "normal"

DEFAULT_GROUP_DF = 3.0
"""The degrees of freedom ν of ``group_prior="student_t"`` unless ``group_df`` is given."""

MIN_GROUP_DF = 0.1
"""The smallest ``group_df`` accepted. A prior draw of λ² ~ IG(ν/2, ν/2), (ν/2) / Gamma(ν/2, 1),
is infinite when the gamma draw is below about (ν/2) 5e-324, of probability about
exp(-744 ν/2): 70% of draws at ν = 1e-3 and 3% at ν = 0.01 (measured, 1e7 draws), but
7e-17 at ν = 0.1, where λ² stays below 1e300 in all of 1e7 draws."""

SETTINGS = ("mu0", "s0", "tau_scale", "group_prior", "group_df")

PRIOR_LIMIT = 1e100
"""Prior means and scales are bounded like the stage-2 inputs (see ``estimates.STAGE2_LIMIT``)."""


def _number(value: Any, name: str) -> float:
    """``value`` as a float, refusing booleans, text and anything else by ``name``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


def _numbers(value: Any, name: str) -> np.ndarray:
    """A number or a (nested) sequence of numbers as a float array, each checked by ``name``."""
    listed = np.asarray([value] if isinstance(value, str) else value, dtype=object)
    return np.array([_number(entry, name) for entry in listed.ravel()]).reshape(listed.shape)


def _preset_values(
    preset: str, n_covariates: int, n_levels: int, typical_se: np.ndarray
) -> dict[str, np.ndarray]:
    """``mu0``, ``s0`` (covariate,) and ``tau_scale`` (covariate, level) of ``preset``."""
    if preset == "research":
        return {
            "mu0": np.full(n_covariates, RESEARCH_PRIORS["mu0"]),
            "s0": np.full(n_covariates, RESEARCH_PRIORS["s0"]),
            "tau_scale": np.full((n_covariates, n_levels), RESEARCH_PRIORS["tau_scale"]),
        }
    return {
        "mu0": np.zeros(n_covariates),
        "s0": AUTO_S0_MULTIPLE * typical_se,
        "tau_scale": np.repeat(AUTO_TAU_MULTIPLE * typical_se[:, None], n_levels, axis=1),
    }


def _per_covariate(
    value: Any, preset: np.ndarray, covariates: tuple[Any, ...], name: str
) -> np.ndarray:
    """``mu0`` or ``s0`` given as one number, one per covariate, or a mapping by covariate."""
    if isinstance(value, Mapping):
        absent = [c for c in value if c not in covariates]
        if absent:
            raise ValueError(
                f"{name} names unknown covariate(s) {absent!r}; covariates: {list(covariates)!r}."
            )
        return np.array(
            [
                _number(value[c], f"{name}[{c!r}]") if c in value else preset[k]
                for k, c in enumerate(covariates)
            ]
        )
    values = _numbers(value, name)
    if values.ndim == 0:
        return np.full(len(covariates), float(values))
    if values.shape != (len(covariates),):
        raise ValueError(
            f"{name} has {values.size} entries but the model has {len(covariates)} "
            f"covariate(s) {list(covariates)!r}."
        )
    return values


def _tau_scales(
    value: Any, preset: np.ndarray, covariates: tuple[Any, ...], levels: tuple[str, ...]
) -> np.ndarray:
    """``tau_scale`` as (covariate, level) from any of the accepted forms."""
    name = "priors['tau_scale']"
    shape = (len(covariates), len(levels))
    if isinstance(value, Mapping):
        absent = sorted(set(value) - set(levels))
        if absent:
            raise ValueError(f"{name} names unknown level(s) {absent!r}; levels: {levels!r}.")
        scales = preset.copy()
        for column, level in enumerate(levels):
            if level in value:
                scales[:, column] = _number(value[level], f"{name}[{level!r}]")
        return scales
    values = _numbers(value, name)
    if values.ndim == 0:
        return np.full(shape, float(values))
    if values.ndim == 1 and values.shape == (len(levels),):
        return np.broadcast_to(values, shape).copy()
    if values.shape != shape:
        raise ValueError(
            f"{name} has {values.size} entries but the model has {len(levels)} scale "
            f"level(s) {levels!r} (one number, one per level, or {shape} per covariate and "
            "level)."
        )
    return values


@dataclass(frozen=True, eq=False)
class Priors:
    """Resolved priors, per covariate (and per scale level for τ).

    Attributes
    ----------
    mu0, s0
        Mean and standard deviation of the normal prior on each covariate's global mean θ0,
        shape (covariate,).
    tau_scale
        HalfCauchy scale of each τ, shape (covariate, level): one per covariate and scale
        level (``"feature"`` first, then each annotation level used).
    covariates
        The covariate labels, matching the rows.
    scale_levels
        The names of the scale levels, matching the columns of ``tau_scale``.
    typical_se
        Each covariate's median standard error over the observed features (what the ``"auto"``
        preset scales by), shape (covariate,).
    preset
        The preset the settings not given came from (``"auto"`` or ``"research"``).
    group_prior
        The prior of the group effects around their parent, one of :data:`GROUP_PRIORS`.
    group_df
        Its degrees of freedom ν for ``"student_t"`` (ignored otherwise).
    """

    mu0: np.ndarray
    s0: np.ndarray
    tau_scale: np.ndarray
    covariates: tuple[Any, ...]
    scale_levels: tuple[str, ...]
    typical_se: np.ndarray
    preset: str = DEFAULT_PRESET
    group_prior: str = DEFAULT_GROUP_PRIOR
    group_df: float = DEFAULT_GROUP_DF

    @property
    def heavy_tailed(self) -> bool:
        """Whether the group effects have local scales λ_g (any ``group_prior`` but normal)."""
        return self.group_prior != "normal"

    def draw_local_variances(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Local variances λ² of groups drawn from their prior (ones under the normal prior).

        ``"student_t"``: IG(ν/2, ν/2), drawn as (ν/2) / Gamma(ν/2, 1); ``"horseshoe"``: the
        square of a HalfCauchy(0, 1).
        """
        if self.group_prior == "student_t":
            half_df = 0.5 * self.group_df
            return np.full(shape, half_df) / rng.standard_gamma(half_df, size=shape)
        if self.group_prior == "horseshoe":
            return np.square(rng.standard_cauchy(shape))
        return np.ones(shape)

    @classmethod
    def resolve(
        cls,
        priors: str | Mapping[str, Any] | Priors | None,
        scale_levels: Sequence[str],
        covariates: Sequence[Any],
        se: np.ndarray,
    ) -> Priors:
        """The priors of a fit with these covariates, levels and standard errors.

        Parameters
        ----------
        priors
            ``None`` or ``"auto"``: the unit-invariant default (module docstring);
            ``"research"``: the research code's fixed priors; a mapping with any of
            ``preset`` (``"auto"`` or ``"research"``, default ``"auto"``), ``mu0``, ``s0``
            and ``tau_scale`` overriding the preset: ``mu0`` and ``s0`` one number, one per
            covariate, or a mapping from covariate to number (others keep the preset);
            ``tau_scale`` one number, one per scale level, a mapping from level name to
            number (others keep the preset), or an array (covariate, level);
            ``group_prior`` (one of :data:`GROUP_PRIORS`, default ``"normal"``) and
            ``group_df`` (ν of ``"student_t"``, at least :data:`MIN_GROUP_DF`, default 3). A
            :class:`Priors` (e.g. another model's ``.priors``): its values for these
            covariates and levels, with its ``typical_se`` (what its values were scaled by).
        scale_levels
            ``("feature", <annotation levels used>...)``.
        covariates
            The covariate labels.
        se
            Standard errors (covariate, feature).

        Raises
        ------
        ValueError
            For an unknown preset, key or group prior, values that are not numbers (booleans
            and text included), values beyond 1e100 (scales below 1e-100 too), a ``group_df``
            below :data:`MIN_GROUP_DF` (0.1), or shapes that do not match the covariates and levels;
            each message names the prior.
        """
        levels, labels = tuple(scale_levels), tuple(covariates)
        if isinstance(priors, Priors):
            return priors._restricted(labels, levels)
        typical_se = np.nanmedian(np.asarray(se, dtype=float), axis=1)
        if priors is None or isinstance(priors, str):
            settings: Mapping[str, Any] = {"preset": priors or DEFAULT_PRESET}
        elif isinstance(priors, Mapping):
            settings = priors
        else:
            raise ValueError(
                "priors must be a mapping such as {'s0': 2.0}, a preset name ('auto', "
                f"'research') or a Priors; got {type(priors).__name__}."
            )
        unknown = sorted(set(settings) - {"preset", *SETTINGS}, key=str)
        if unknown:
            raise ValueError(
                f"unknown prior setting(s) {unknown!r}; known: {['preset', *SETTINGS]!r}."
            )
        preset = settings.get("preset", DEFAULT_PRESET)
        if preset not in PRESETS:
            raise ValueError(f"the prior preset must be one of {PRESETS!r}, got {preset!r}.")
        values = _preset_values(preset, len(labels), len(levels), typical_se)
        for name in ("mu0", "s0"):
            if name in settings:
                values[name] = _per_covariate(
                    settings[name], values[name], labels, f"priors[{name!r}]"
                )
        if "tau_scale" in settings:
            values["tau_scale"] = _tau_scales(
                settings["tau_scale"], values["tau_scale"], labels, levels
            )
        group_prior = settings.get("group_prior", DEFAULT_GROUP_PRIOR)
        if group_prior not in GROUP_PRIORS:
            raise ValueError(
                f"priors['group_prior'] must be one of {GROUP_PRIORS!r}, got {group_prior!r}."
            )
        group_df = _number(settings.get("group_df", DEFAULT_GROUP_DF), "priors['group_df']")
        return cls(
            covariates=labels,
            scale_levels=levels,
            typical_se=typical_se,
            preset=preset,
            group_prior=group_prior,
            group_df=group_df,
            **values,
        )._checked()

    def _checked(self) -> Priors:
        """The priors themselves, after checking every value's range."""
        if not np.all(np.abs(self.mu0) <= PRIOR_LIMIT):
            raise ValueError(
                f"priors['mu0'] must be finite with |mu0| <= 1e100, got {self.mu0.tolist()!r}."
            )
        if not np.all((self.s0 >= 1 / PRIOR_LIMIT) & (self.s0 <= PRIOR_LIMIT)):
            raise ValueError(
                "priors['s0'] must be a positive number in [1e-100, 1e100], got "
                f"{self.s0.tolist()!r}."
            )
        scales = self.tau_scale
        if not np.all((scales >= 1 / PRIOR_LIMIT) & (scales <= PRIOR_LIMIT)):
            raise ValueError(
                "priors['tau_scale'] must be positive and finite, in [1e-100, 1e100], got "
                f"{scales.tolist()!r}."
            )
        if not MIN_GROUP_DF <= self.group_df <= PRIOR_LIMIT:
            raise ValueError(
                f"priors['group_df'] must be a positive number in [{MIN_GROUP_DF:g}, 1e100] "
                "(below, the prior's local variances overflow float64), got "
                f"{self.group_df!r}."
            )
        return self

    def _restricted(self, covariates: tuple[Any, ...], levels: tuple[str, ...]) -> Priors:
        """These priors for ``covariates`` and ``levels`` (each among this one's).

        The ``typical_se`` stays the source's, so that the values and the preset's rule
        (``s0 = 10 s̄`` …) still agree in the table and in ``describe()``.
        """
        absent = [c for c in covariates if c not in self.covariates]
        absent += [level for level in levels if level not in self.scale_levels]
        if absent:
            raise ValueError(
                f"the priors given have no values for {absent!r}; they cover covariates "
                f"{list(self.covariates)!r} and levels {list(self.scale_levels)!r}."
            )
        rows = [self.covariates.index(c) for c in covariates]
        columns = [self.scale_levels.index(level) for level in levels]
        return Priors(
            mu0=self.mu0[rows],
            s0=self.s0[rows],
            tau_scale=self.tau_scale[np.ix_(rows, columns)],
            covariates=covariates,
            scale_levels=levels,
            typical_se=self.typical_se[rows],
            preset=self.preset,
            group_prior=self.group_prior,
            group_df=self.group_df,
        )

    def to_frame(self) -> pd.DataFrame:
        """The priors as a table: one row per covariate, one column per parameter.

        Columns ``typical_se`` (the median standard error), ``mu0``, ``s0`` and
        ``tau_scale[<level>]`` for every scale level.
        """
        columns = {"typical_se": self.typical_se, "mu0": self.mu0, "s0": self.s0}
        for column, level in enumerate(self.scale_levels):
            columns[f"tau_scale[{level}]"] = self.tau_scale[:, column]
        return pd.DataFrame(columns, index=pd.Index(list(self.covariates), name="covariate"))

    def describe(self) -> str:
        """One line naming the prior family and where its numbers come from.

        The group prior is named where there are group effects (annotation levels used).
        """
        origin = {
            "auto": (
                f"preset 'auto' where not given: mu0 = 0, s0 = {AUTO_S0_MULTIPLE:g} s̄, "
                f"tau_scale = {AUTO_TAU_MULTIPLE:g} s̄, s̄ = the covariate's median standard "
                "error (typical_se)"
            ),
            "research": "preset 'research' where not given: mu0 = 0, s0 = 1, tau_scale = 1",
        }[self.preset]
        has_groups = len(self.scale_levels) > 1  # levels beyond the features' (depth > 0)
        groups = {
            "normal": "",
            "student_t": (
                f"; group effects Student-t with {self.group_df:g} df around their parent "
                "(λ² ~ InvGamma(ν/2, ν/2))"
            ),
            "horseshoe": "; group effects horseshoe around their parent (λ ~ HalfCauchy(1))",
        }[self.group_prior if has_groups else "normal"]
        return (
            f"θ0 ~ N(mu0, s0²), τ ~ HalfCauchy(tau_scale) per covariate and level{groups}; {origin}"
        )

    def __repr__(self) -> str:
        table = self.to_frame().to_string(float_format="{:.4g}".format)
        return f"Priors: {self.describe()}\n{table}"

    def _repr_html_(self) -> str:
        table = self.to_frame().to_html(float_format="{:.4g}".format)
        return f"<div><p>Priors: {html.escape(self.describe())}</p>{table}</div>"

    def to_json(self) -> str:
        """The priors as a JSON string (stored in InferenceData attrs)."""
        return json.dumps(
            {
                "preset": self.preset,
                "covariates": [str(c) for c in self.covariates],
                "levels": list(self.scale_levels),
                "mu0": self.mu0.tolist(),
                "s0": self.s0.tolist(),
                "tau_scale": self.tau_scale.tolist(),
                "group_prior": self.group_prior,
                "group_df": self.group_df,
            }
        )

    @classmethod
    def from_json(
        cls, text: str, scale_levels: Sequence[str], covariates: Sequence[Any], se: np.ndarray
    ) -> Priors:
        """The priors stored by :meth:`to_json`, for these levels, covariates and SEs.

        Parameters
        ----------
        text
            A JSON object written by :meth:`to_json`. An object without ``preset`` (written
            before the per-covariate priors) holds settings over the ``"research"`` preset,
            the default of that time, as :meth:`resolve` reads them.
        scale_levels, covariates, se
            As in :meth:`resolve`.

        Raises
        ------
        ValueError
            If ``text`` is not a JSON object, if its covariates or levels differ from those
            given, or for any reason :meth:`resolve` gives.
        """
        try:
            settings = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"the stored priors are not JSON: {text!r}.") from err
        if not isinstance(settings, dict):
            raise ValueError(f"the stored priors must be a JSON object, got {text!r}.")
        if "preset" not in settings:
            return cls.resolve({"preset": "research", **settings}, scale_levels, covariates, se)
        stored = (settings.pop("covariates", None), settings.pop("levels", None))
        expected = ([str(c) for c in covariates], list(scale_levels))
        if stored != expected:
            raise ValueError(
                f"the stored priors are for covariates and levels {stored!r}, the fit has "
                f"{expected!r}."
            )
        return cls.resolve(settings, scale_levels, covariates, se)
