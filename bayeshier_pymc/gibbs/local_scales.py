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
(``<level>_local_scale``). The sweeps' state of λ and ξ is
:class:`~bayeshier_pymc.gibbs.layout.LocalScales`, their update
:func:`~bayeshier_pymc.gibbs.sweeps.update_local_scales`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "draw_conditional_local_variance",
    "draw_horseshoe_auxiliary",
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
    return variances, draw_horseshoe_auxiliary(variances, rng)


def draw_horseshoe_auxiliary(variances: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The horseshoe's auxiliary ξ drawn from ξ | λ² ~ IG(1, 1 + 1/λ²), elementwise."""
    return draw_inverse_gamma(1.0, 1.0 + 1.0 / variances, rng)
