"""The local scales λ of the group effects under a heavy-tailed group prior, in the sweeps.

With ``Priors.group_prior`` ``"student_t"`` or ``"horseshoe"`` every group effect of every
annotation level used (not the features, not θ0) has its own scale λ_g per covariate:
u_g ~ N(parent, τ_l² λ_g²). Given λ the model is the package's Gaussian tree with one prior
variance per group node, τ_l² λ_g² (plus its shared noise under tree noise), which the
compiled passes take as per-unit multipliers λ² (``unit_local`` / ``local_var`` of
:mod:`bayeshier_pymc.gaussian_tree.kernels`). Given the group effects and τ, λ² (and the
horseshoe's auxiliary ξ) have conjugate inverse-gamma conditionals, with δ_g = u_g − parent:

* ``"student_t"`` (ν = ``group_df``): λ² ~ IG(ν/2, ν/2) a priori, so that u_g is Student-t
  with ν df around its parent; λ² | δ, τ ~ IG((ν + 1)/2, (ν + δ²/τ²)/2);
* ``"horseshoe"``: λ ~ HalfCauchy(0, 1), written as λ² | ξ ~ IG(1/2, 1/ξ), ξ ~ IG(1/2, 1)
  (Makalic & Schmidt 2016); λ² | ξ, δ, τ ~ IG(1, 1/ξ + δ²/(2τ²)) and ξ | λ² ~ IG(1, 1 + 1/λ²).

IG(a, b) has density ∝ x^(−a−1) exp(−b/x) and is drawn as b / Gamma(a, 1)
(:func:`draw_inverse_gamma`). ξ is sampler state only; the posterior keeps λ
(``<level>_local_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bayeshier_pymc.gibbs.layout import TreeData
from bayeshier_pymc.priors import Priors

__all__ = [
    "LocalScales",
    "draw_conditional_local_variance",
    "draw_inverse_gamma",
]


def draw_inverse_gamma(
    shape: float | np.ndarray, rate: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One draw of IG(shape, rate) (density ∝ x^(-shape-1) exp(-rate / x)), elementwise."""
    return rate / rng.standard_gamma(shape, size=np.shape(rate))


def draw_conditional_local_variance(
    group_prior: str,
    group_df: float,
    standardised: np.ndarray,
    auxiliary: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """λ² (and the horseshoe's ξ) drawn from their conditionals (module docstring).

    Parameters
    ----------
    group_prior, group_df
        ``"student_t"`` (with ν = ``group_df``) or ``"horseshoe"``
        (:attr:`~bayeshier_pymc.priors.Priors.group_prior`).
    standardised
        δ² / τ² of every group: its squared effect around its parent over its level variance.
    auxiliary
        The current ξ (read by the horseshoe only).
    rng
        Random generator.

    Returns
    -------
    variances, auxiliary : numpy.ndarray
        The new λ² and ξ (``auxiliary`` itself under the Student-t prior).
    """
    if group_prior == "student_t":
        rate = 0.5 * (group_df + standardised)
        return draw_inverse_gamma(0.5 * (group_df + 1.0), rate, rng), auxiliary
    if group_prior != "horseshoe":
        raise ValueError(f"group_prior={group_prior!r} has no local scales.")
    variances = draw_inverse_gamma(1.0, 1.0 / auxiliary + 0.5 * standardised, rng)
    return variances, draw_inverse_gamma(1.0, 1.0 + 1.0 / variances, rng)


@dataclass
class LocalScales:
    """λ² (and the horseshoe's ξ) of every group of every level used, for every row.

    Attributes
    ----------
    priors
        The priors (their ``group_prior`` and ``group_df``).
    variances
        For each annotation level used, l = 1..L in turn, λ² (rows × groups, sorted as the
        state's units, :class:`~bayeshier_pymc.gibbs.layout.TreeState`).
    auxiliary
        The horseshoe's ξ, as ``variances`` (ones and unused under the Student-t prior).
    """

    priors: Priors
    variances: list[np.ndarray]
    auxiliary: list[np.ndarray]

    @classmethod
    def start(cls, data: TreeData, priors: Priors) -> LocalScales:
        """Every λ² and ξ at 1 (the model's normal prior), on the levels with a scale."""
        levels = range(1, data.n_scales)
        return cls(
            priors,
            [np.ones((data.n_rows, data.n_units[level])) for level in levels],
            [np.ones((data.n_rows, data.n_units[level])) for level in levels],
        )

    @property
    def n_levels(self) -> int:
        """Number of annotation levels with local scales (L)."""
        return len(self.variances)

    def unit(self, level: int) -> np.ndarray:
        """λ² of the level-``level`` units (rows × units), or no columns where they have none."""
        if 1 <= level <= self.n_levels:
            return self.variances[level - 1]
        return np.empty((self.variances[0].shape[0], 0))

    def lane(self, data: TreeData) -> np.ndarray:
        """λ² of every unit of levels 1..D + 1 in lane layout (units × rows), ones elsewhere.

        The units at their places in a :class:`~bayeshier_pymc.gaussian_tree.kernels.LaneMessages`
        array (:attr:`TreeData.message_offsets`); the transpose is the numbering of
        :attr:`TreeData.split_tree`.
        """
        offsets = data.message_offsets
        lane = np.ones((offsets[-1], data.n_rows))
        for level, variances in enumerate(self.variances, start=1):
            lane[offsets[level] : offsets[level + 1]] = variances.T
        return lane

    def update(
        self,
        data: TreeData,
        effects: list[np.ndarray],
        tau: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        """Draw λ² (and ξ) of every level from their conditionals given the effects, in place.

        ``effects`` are the group effects of levels 1..D, then θ0 (rows × 1), sorted as the
        state's units (index l − 1 for level l); ``tau`` the rows' scales (rows × levels).
        """
        for level in range(1, self.n_levels + 1):
            parent = effects[level][:, data.parent_index[level]]
            deviation = effects[level - 1] - parent
            standardised = np.square(deviation / tau[:, level, None])
            self.variances[level - 1], self.auxiliary[level - 1] = draw_conditional_local_variance(
                self.priors.group_prior,
                self.priors.group_df,
                standardised,
                self.auxiliary[level - 1],
                rng,
            )
