"""Prior configuration of the shrinkage model, merged over documented defaults."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_PRIORS", "Priors"]

DEFAULT_PRIORS: dict[str, Any] = {"mu0": 0.0, "s0": 1.0, "tau_scale": 1.0}
"""The research model's priors: θ0 ~ N(mu0, s0²), every τ ~ HalfCauchy(tau_scale)."""


PRIOR_LIMIT = 1e100
"""Prior means and scales are bounded like the stage-2 inputs (see ``estimates.STAGE2_LIMIT``)."""


def _number(value: Any, name: str) -> float:
    """``value`` as a float, refusing booleans, text and anything else by ``name``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Priors:
    """Resolved priors for a tree with the given scale levels.

    Attributes
    ----------
    mu0, s0
        Mean and standard deviation of the normal prior on the global mean θ0.
    tau_scale
        HalfCauchy scale of each τ, one per scale level (``"feature"`` first, then each
        annotation level used).
    scale_levels
        The names of the scale levels, matching ``tau_scale``.
    """

    mu0: float
    s0: float
    tau_scale: np.ndarray
    scale_levels: tuple[str, ...]

    @classmethod
    def resolve(cls, priors: Mapping[str, Any] | None, scale_levels: Sequence[str]) -> Priors:
        """Merge ``priors`` over :data:`DEFAULT_PRIORS` and check them.

        Parameters
        ----------
        priors
            Any of ``mu0``, ``s0``, ``tau_scale``; ``tau_scale`` is one number, a sequence with
            one entry per scale level, or a mapping from level name to scale (levels not named
            keep the default).
        scale_levels
            ``("feature", <annotation levels used>...)``.

        Raises
        ------
        ValueError
            For a ``priors`` that is not a mapping, unknown keys, values that are not numbers
            (booleans and text included), values beyond 1e100 (scales below 1e-100 too), or a
            ``tau_scale`` that does not match the levels; each message names the prior.
        """
        if priors is not None and not isinstance(priors, Mapping):
            raise ValueError(
                f"priors must be a mapping such as {{'s0': 2.0}}, got {type(priors).__name__}."
            )
        merged = {**DEFAULT_PRIORS, **(priors or {})}
        unknown = sorted(set(merged) - set(DEFAULT_PRIORS))
        if unknown:
            raise ValueError(
                f"unknown prior setting(s) {unknown!r}; known: {sorted(DEFAULT_PRIORS)!r}."
            )
        mu0 = _number(merged["mu0"], "priors['mu0']")
        s0 = _number(merged["s0"], "priors['s0']")
        if not abs(mu0) <= PRIOR_LIMIT:
            raise ValueError(f"priors['mu0'] must be finite with |mu0| <= 1e100, got {mu0!r}.")
        if not 1 / PRIOR_LIMIT <= s0 <= PRIOR_LIMIT:
            raise ValueError(
                f"priors['s0'] must be a positive number in [1e-100, 1e100], got {s0!r}."
            )
        levels = tuple(scale_levels)
        scale = merged["tau_scale"]
        if isinstance(scale, Mapping):
            absent = sorted(set(scale) - set(levels))
            if absent:
                raise ValueError(
                    f"priors['tau_scale'] names unknown level(s) {absent!r}; levels: {levels!r}."
                )
            default = float(DEFAULT_PRIORS["tau_scale"])
            scales = np.array(
                [
                    _number(scale.get(level, default), f"priors['tau_scale'][{level!r}]")
                    for level in levels
                ]
            )
        else:
            listed = np.asarray([scale] if isinstance(scale, str) else scale, dtype=object)
            scales = np.array(
                [_number(entry, "priors['tau_scale']") for entry in listed.ravel()]
            ).reshape(listed.shape)
            if np.ndim(scale) == 0:
                scales = np.full(len(levels), float(scales))
            if scales.shape != (len(levels),):
                raise ValueError(
                    f"priors['tau_scale'] has {scales.size} entries but the model has "
                    f"{len(levels)} scale level(s) {levels!r}."
                )
        if not ((scales >= 1 / PRIOR_LIMIT) & (scales <= PRIOR_LIMIT)).all():
            raise ValueError(
                f"priors['tau_scale'] must be positive and finite, in [1e-100, 1e100], got "
                f"{scales!r}."
            )
        return cls(mu0=mu0, s0=s0, tau_scale=scales, scale_levels=levels)

    def to_json(self) -> str:
        """The priors as a JSON string (stored in InferenceData attrs)."""
        return json.dumps(
            {
                "mu0": self.mu0,
                "s0": self.s0,
                "tau_scale": dict(zip(self.scale_levels, self.tau_scale.tolist(), strict=True)),
            }
        )

    @classmethod
    def from_json(cls, text: str, scale_levels: Sequence[str]) -> Priors:
        """The priors stored by :meth:`to_json`, resolved for ``scale_levels``.

        Parameters
        ----------
        text
            A JSON object with any of ``mu0``, ``s0``, ``tau_scale`` (settings it lacks take
            their defaults, as in :meth:`resolve`).
        scale_levels
            ``("feature", <annotation levels used>...)``.

        Raises
        ------
        ValueError
            If ``text`` is not a JSON object, or for any reason :meth:`resolve` gives.
        """
        try:
            settings = json.loads(text)
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"the stored priors are not JSON: {text!r}.") from err
        if not isinstance(settings, dict):
            raise ValueError(f"the stored priors must be a JSON object, got {text!r}.")
        return cls.resolve(settings, scale_levels)
