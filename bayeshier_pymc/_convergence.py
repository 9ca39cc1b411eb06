"""A cheap post-sampling convergence check that warns instead of staying silent.

Only the low-dimensional quantities are checked (``tau`` and ``mu``, one per covariate and
level): r̂ and bulk ESS over every θ draw can cost more than the sampling itself. They are
computed all at once by the vectorised diagnostics of
:mod:`~bayeshier_pymc.sampler_comparison` (tested against ArviZ's), which take a tenth of
the time of ArviZ's variable-by-variable loop here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import arviz as az
import numpy as np
import xarray as xr

from bayeshier_pymc.sampler_comparison import rhat_and_bulk_ess

__all__ = ["ConvergenceReport", "ConvergenceWarning", "check_convergence", "warn_if_not_converged"]

MAX_RHAT = 1.01
"""Largest acceptable rank-normalised split r̂ (Vehtari et al. 2021)."""
MIN_ESS_BULK = 400
"""Smallest acceptable bulk effective sample size over all chains."""
CHECKED_VARIABLES = ("tau", "mu")


class ConvergenceWarning(UserWarning):
    """Emitted when a fit's diagnostics fail (divergences, large r̂ or small ESS)."""


@dataclass(frozen=True)
class ConvergenceReport:
    """Diagnostics of the checked variables.

    Attributes
    ----------
    divergences
        Number of divergent transitions (0 when the sampler records none).
    max_rhat
        Largest r̂ over the checked variables (NaN with one chain or none checked).
    min_ess_bulk
        Smallest bulk ESS over the checked variables (NaN when none checked).
    problems
        One sentence per failed check; empty when every check passed.
    """

    divergences: int
    max_rhat: float
    min_ess_bulk: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.problems


def _extreme(values: np.ndarray, reducer: str) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan")
    return float(finite.max() if reducer == "max" else finite.min())


def _draws(posterior: xr.Dataset, names: list[str]) -> np.ndarray:
    """The draws of ``names`` as one (chain, draw, parameter) array."""
    columns = [posterior[name].transpose("chain", "draw", ...).to_numpy() for name in names]
    return np.concatenate([c.reshape(*c.shape[:2], -1) for c in columns], axis=-1)


def check_convergence(
    idata: az.InferenceData,
    *,
    var_names: Sequence[str] = CHECKED_VARIABLES,
    max_rhat: float = MAX_RHAT,
    min_ess_bulk: float = MIN_ESS_BULK,
) -> ConvergenceReport:
    """Check divergences, r̂ and bulk ESS of the low-dimensional variables.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    var_names
        Posterior variables to check (those absent, e.g. without pooling, are skipped).
    max_rhat, min_ess_bulk
        Thresholds.

    Returns
    -------
    ConvergenceReport
    """
    problems: list[str] = []
    divergences = 0
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        divergences = int(np.asarray(stats["diverging"]).sum())
    if divergences:
        problems.append(f"{divergences} divergent transition(s)")
    posterior = idata.posterior
    names = [name for name in var_names if name in posterior]
    rhat_value = ess_value = float("nan")
    if names:
        draws = _draws(posterior, names)
        n_chains, n_draws = draws.shape[:2]
        if n_draws >= 4:
            rhat, ess_bulk = rhat_and_bulk_ess(draws)
            if n_chains > 1:
                rhat_value = _extreme(rhat, "max")
                if not rhat_value <= max_rhat:
                    problems.append(f"max r̂ of {names} is {rhat_value:.3f} > {max_rhat}")
            ess_value = _extreme(ess_bulk, "min")
            if not ess_value >= min_ess_bulk:
                problems.append(f"min bulk ESS of {names} is {ess_value:.0f} < {min_ess_bulk}")
    return ConvergenceReport(divergences, rhat_value, ess_value, tuple(problems))


def warn_if_not_converged(idata: az.InferenceData, *, stacklevel: int = 4) -> ConvergenceReport:
    """Run :func:`check_convergence` and emit a :class:`ConvergenceWarning` if it fails.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    stacklevel
        Passed to :func:`warnings.warn` (the default points at the caller of ``sample``,
        past its Ctrl-C wrapper, :func:`~bayeshier_pymc._interrupt.stops_on_ctrl_c`).

    Returns
    -------
    ConvergenceReport
    """
    report = check_convergence(idata)
    if report.problems:
        warnings.warn(
            "the sampler's diagnostics failed: "
            + "; ".join(report.problems)
            + ". Draw longer chains (more tune/draws), raise target_accept, or try another "
            "parameterization before trusting these results.",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    return report
