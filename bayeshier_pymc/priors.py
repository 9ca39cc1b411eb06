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
            For unknown keys, non-finite values, non-positive scales, or a ``tau_scale`` that
            does not match the levels.
        """
        merged = {**DEFAULT_PRIORS, **(priors or {})}
        unknown = sorted(set(merged) - set(DEFAULT_PRIORS))
        if unknown:
            raise ValueError(
                f"unknown prior setting(s) {unknown!r}; known: {sorted(DEFAULT_PRIORS)!r}."
            )
        mu0, s0 = float(merged["mu0"]), float(merged["s0"])
        if not np.isfinite(mu0):
            raise ValueError(f"priors['mu0'] must be finite, got {mu0!r}.")
        if not (np.isfinite(s0) and s0 > 0):
            raise ValueError(f"priors['s0'] must be a positive finite number, got {s0!r}.")
        levels = tuple(scale_levels)
        scale = merged["tau_scale"]
        if isinstance(scale, Mapping):
            absent = sorted(set(scale) - set(levels))
            if absent:
                raise ValueError(
                    f"priors['tau_scale'] names unknown level(s) {absent!r}; levels: {levels!r}."
                )
            default = float(DEFAULT_PRIORS["tau_scale"])
            scales = np.array([float(scale.get(level, default)) for level in levels])
        else:
            scales = np.atleast_1d(np.asarray(scale, dtype=float))
            if np.ndim(scale) == 0:
                scales = np.full(len(levels), scales[0])
            if scales.shape != (len(levels),):
                raise ValueError(
                    f"priors['tau_scale'] has {scales.size} entries but the model has "
                    f"{len(levels)} scale level(s) {levels!r}."
                )
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise ValueError(f"priors['tau_scale'] must be positive and finite, got {scales!r}.")
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
