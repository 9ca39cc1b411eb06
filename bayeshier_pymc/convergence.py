"""Convergence of MCMC draws: the thresholds, r̂ and ESS, and the warning after sampling.

One set of limits, :class:`Thresholds`, serves :func:`bayeshier_pymc.diagnostics.diagnose`,
the warning that :meth:`ShrinkageModel.sample` emits (:func:`warn_if_not_converged`) and
:func:`bayeshier_pymc.sampler_comparison.compare_samplers`. They follow Vehtari, Gelman,
Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and localization: an
improved R̂", and ArviZ's and Stan's defaults: rank-normalised split r̂ ≤ 1.01 and bulk and
tail ESS ≥ 100 per chain (400 with 4 chains).

r̂ and ESS have ArviZ's definitions (``az.rhat(method="rank")``, ``az.ess(method="bulk")``
and ``az.ess(method="tail")``: split chains, Blom rank normalisation, folding for the tail
r̂, Geyer's initial monotone sequence, type-7 quantiles for the tail ESS, NaN when not
computable) and are tested against ArviZ's to 1e-10. They are computed for many parameters
at once, in blocks of parameters that keep each temporary near 2 MB whatever the posterior's
size, and sort and transform each parameter's draws as one contiguous row. Blocks of 32 MB,
sorted down columns, took 3.3 CPU seconds on 4 chains × 1,000 draws of 900 parameters (the
demo's θ) where these take 1.0 s (measured side by side in one process, 2 shared cores):
large temporaries leave the cache and cost a page fault per 4 kB when first written.
``compare_samplers`` needs ESS of transformed draws for hundreds of parameters, where
ArviZ's loop over parameters costs most.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import arviz as az
import numpy as np
import xarray as xr
from scipy import special
from scipy.fft import next_fast_len

__all__ = [
    "ConvergenceReport",
    "ConvergenceWarning",
    "RankDiagnostics",
    "Thresholds",
    "bulk_ess",
    "check_convergence",
    "ess",
    "posterior_rank_diagnostics",
    "rank_diagnostics",
    "rank_rhat",
    "relative_efficiency",
    "split_chains",
    "tail_ess",
    "warn_if_not_converged",
]

SAMPLE_DIMS = ("chain", "draw")
CHECKED_VARIABLES = ("tau", "mu")
"""Variables that the warning after sampling checks: one per covariate and level, cheap."""
MIN_DRAWS = 4
"""Fewest draws per chain for which r̂ and ESS are computed (NaN below, as in ArviZ)."""
TAIL_PROBABILITIES = (0.05, 0.95)
"""Quantiles whose indicator functions give the tail ESS (the smaller of the two)."""
BLOCK_VALUES = 250_000
"""Values (chain × draw × parameter) handled at once: the temporaries stay near 2 MB each."""
_PACKAGE = Path(__file__).resolve().parent
"""The package's folder: frames of files under it are the package's own."""


@dataclass(frozen=True)
class Thresholds:
    """Limits of every convergence check (Vehtari et al. 2021 conventions).

    Attributes
    ----------
    r_hat
        Largest acceptable rank-normalised split r̂.
    ess_per_chain
        Smallest acceptable bulk and tail ESS per chain (:meth:`min_ess` over all chains).
    divergences
        Largest acceptable number of divergent transitions.
    e_bfmi
        Smallest acceptable E-BFMI of a chain.
    max_treedepth
        The sampler's maximum tree depth, used when only the depths are recorded.
    """

    r_hat: float = 1.01
    ess_per_chain: float = 100.0
    divergences: int = 0
    e_bfmi: float = 0.3
    max_treedepth: int = 10

    def min_ess(self, n_chains: int) -> float:
        """Smallest acceptable ESS over ``n_chains`` chains."""
        return self.ess_per_chain * n_chains


class RankDiagnostics(NamedTuple):
    """r̂ and ESS of each parameter, as :func:`rank_diagnostics` returns them."""

    r_hat: np.ndarray
    """Rank-normalised split r̂ (the larger of the bulk and the folded one)."""
    ess_bulk: np.ndarray
    """ESS of the rank-normalised split chains."""
    ess_tail: np.ndarray
    """The smaller ESS of the 5% and 95% quantile indicators."""


# ------------------------------------------------------------------------- r̂ and ESS
def rank_diagnostics(draws: np.ndarray) -> RankDiagnostics:
    """r̂, bulk ESS and tail ESS of every parameter of (chain, draw, parameter) draws.

    Parameters
    ----------
    draws
        Array (chain, draw, parameter), any real floating type.

    Returns
    -------
    RankDiagnostics
        Arrays (parameter,); NaN where ArviZ gives NaN (fewer than 4 draws, a NaN draw, r̂
        of one chain).
    """
    r_hat, ess_bulk, ess_tail = _by_blocks(draws, _block_diagnostics, n_results=3)
    if draws.shape[0] < 2:
        r_hat[:] = np.nan
    return RankDiagnostics(r_hat, ess_bulk, ess_tail)


def rank_rhat(draws: np.ndarray) -> np.ndarray:
    """Rank-normalised split r̂ per parameter of (chain, draw, parameter) draws.

    As ``arviz.rhat(method="rank")``: NaN with one chain, fewer than 4 draws or a NaN draw.
    """
    (r_hat,) = _by_blocks(draws, lambda block: (_rank_rhat(split_chains(block)),))
    if draws.shape[0] < 2:
        r_hat[:] = np.nan
    return r_hat


def bulk_ess(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS per parameter of (chain, draw, parameter) draws, as ``arviz.ess(method="bulk")``.

    :func:`ess` of the rank-normalised split chains (Vehtari et al. 2021).
    """
    (result,) = _by_blocks(draws, lambda block: (_ess(_z_scale(split_chains(block))),))
    return result


def tail_ess(draws: np.ndarray) -> np.ndarray:
    """Tail ESS per parameter of (chain, draw, parameter) draws, as ``arviz.ess(method="tail")``."""
    (result,) = _by_blocks(draws, lambda block: (_tail_ess(block, split_chains(block)),))
    return result


def ess(draws: np.ndarray) -> np.ndarray:
    """ESS per parameter of (chain, draw, parameter) draws, chains as given (Geyer, as ArviZ).

    ``ess(split_chains(draws))`` is ``arviz.ess(method="mean")``.
    """
    (result,) = _by_blocks(draws, lambda block: (_ess(block),))
    return result


def split_chains(draws: np.ndarray) -> np.ndarray:
    """Every chain cut in two halves (the middle draw of an odd count is dropped)."""
    half = draws.shape[1] // 2
    return np.concatenate([draws[:, :half], draws[:, draws.shape[1] - half :]], axis=0)


def posterior_rank_diagnostics(posterior: xr.Dataset) -> dict[str, xr.Dataset]:
    """:func:`rank_diagnostics` of every variable of a posterior, labelled.

    Parameters
    ----------
    posterior
        Variables with dims ``chain``, ``draw`` and any others.

    Returns
    -------
    dict of xarray.Dataset
        Keys ``"r_hat"``, ``"ess_bulk"`` and ``"ess_tail"``; each Dataset has the posterior's
        variables with their dims other than ``chain`` and ``draw``, like ``arviz.rhat``'s.
    """
    results: dict[str, dict[str, xr.DataArray]] = {key: {} for key in RankDiagnostics._fields}
    for name, values in posterior.data_vars.items():
        extra = [d for d in values.dims if d not in SAMPLE_DIMS]
        coords = {d: values[d] for d in extra if d in values.coords}
        shape = tuple(values.sizes[d] for d in extra)
        for key, measure in zip(
            RankDiagnostics._fields, rank_diagnostics(_draws_by_value(values)), strict=True
        ):
            results[key][str(name)] = xr.DataArray(
                measure.reshape(shape), dims=extra, coords=coords
            )
    return {key: xr.Dataset(arrays) for key, arrays in results.items()}


def relative_efficiency(posterior: xr.Dataset) -> float:
    """ArviZ's default ``reff`` of ``az.loo``: the mean ESS per draw of every posterior value.

    The ESS is ``arviz.ess(method="mean")`` (:func:`ess` of the split chains), computed in
    float64 and in blocks rather than by ArviZ's loop over the parameters; 1 with one chain,
    as in ArviZ.

    Parameters
    ----------
    posterior
        Variables with dims ``chain``, ``draw`` and any others.

    Returns
    -------
    float
    """
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    if n_chains == 1:
        return 1.0
    values = [
        ess(split_chains(_draws_by_value(variable))) for variable in posterior.data_vars.values()
    ]
    return float(np.concatenate(values).mean() / (n_chains * n_draws))


def _draws_by_value(variable: xr.DataArray) -> np.ndarray:
    """A posterior variable's draws as (chain, draw, value), its other dims flattened."""
    extra = [d for d in variable.dims if d not in SAMPLE_DIMS]
    values = variable.transpose(*SAMPLE_DIMS, *extra).to_numpy()
    return values.reshape(variable.sizes["chain"], variable.sizes["draw"], -1)


def _by_blocks(
    draws: np.ndarray,
    compute: Callable[[np.ndarray], tuple[np.ndarray, ...]],
    n_results: int = 1,
) -> tuple[np.ndarray, ...]:
    """Apply ``compute`` to float64 blocks of parameters; NaN where ArviZ gives NaN."""
    if np.ndim(draws) != 3:
        raise ValueError(f"draws must be an array (chain, draw, parameter), got {np.shape(draws)}.")
    n_chains, n_draws, n_parameters = draws.shape
    results = tuple(np.full(n_parameters, np.nan) for _ in range(n_results))
    if n_draws < MIN_DRAWS or n_parameters == 0:
        return results
    width = max(1, BLOCK_VALUES // (n_chains * n_draws))
    for start in range(0, n_parameters, width):
        block = np.asarray(draws[:, :, start : start + width], dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            computed = compute(block)
        has_nan = np.isnan(block).any(axis=(0, 1))
        for result, values in zip(results, computed, strict=True):
            result[start : start + block.shape[2]] = np.where(has_nan, np.nan, values)
    return results


def _block_diagnostics(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r̂, bulk ESS and tail ESS of one float64 block, ranking the split chains once."""
    split = split_chains(block)
    z = _z_scale(split)
    return _rank_rhat(split, z), _ess(z), _tail_ess(block, split)


def _average_ranks(flat: np.ndarray) -> np.ndarray:
    """Ranks 1..n down each column of (n, parameter) values, ties given their average rank.

    Each parameter's values are sorted as one contiguous row, and every run of equal values
    gets its first and last positions' mean: several times faster than sorting down columns.
    """
    rows = np.ascontiguousarray(flat.T)
    n = rows.shape[1]
    order = np.argsort(rows, axis=1)
    ordered = np.take_along_axis(rows, order, axis=1)
    starts = np.ones(ordered.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run_starts = np.flatnonzero(starts)  # every row starts a run
    run_lengths = np.diff(run_starts, append=starts.size)
    run_ranks = run_starts % n + (run_lengths - 1) / 2.0 + 1.0
    ranks = np.empty_like(ordered)
    np.put_along_axis(
        ranks, order, np.repeat(run_ranks, run_lengths).reshape(ordered.shape), axis=1
    )
    return ranks.T


def _z_scale(draws: np.ndarray) -> np.ndarray:
    """Rank-normalise each parameter over all its draws (Blom offset 3/8)."""
    flat = draws.reshape(-1, draws.shape[-1])
    z = special.ndtri((_average_ranks(flat) - 0.375) / (flat.shape[0] + 0.25))
    return z.reshape(draws.shape)


def _rhat(draws: np.ndarray) -> np.ndarray:
    """Classic r̂ of (chain, draw, parameter) draws."""
    n = draws.shape[1]
    between = n * draws.mean(axis=1).var(axis=0, ddof=1)
    within = draws.var(axis=1, ddof=1).mean(axis=0)
    return np.sqrt((between / within + n - 1) / n)


def _rank_rhat(split: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
    """Rank r̂ of split chains ``split`` (``z``: their rank-normalised values, if known)."""
    z = _z_scale(split) if z is None else z
    median = np.median(split.reshape(-1, split.shape[-1]), axis=0)
    return np.maximum(_rhat(z), _rhat(_z_scale(np.abs(split - median))))


def _tail_ess(draws: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Tail ESS of ``draws`` whose split chains are ``split``."""
    flat = draws.reshape(-1, draws.shape[-1])
    low, high = (_type7_quantile(flat, p) for p in TAIL_PROBABILITIES)
    return np.minimum(_ess((split <= low).astype(float)), _ess((split <= high).astype(float)))


def _type7_quantile(flat: np.ndarray, probability: float) -> np.ndarray:
    """Quantile of each column as ArviZ computes it (``mquantiles``, R's type 7), same rounding."""
    n = flat.shape[0]
    aleph = n * probability + 1.0 - probability
    k = int(np.clip(np.floor(aleph), 1, n - 1))
    gamma = float(np.clip(aleph - k, 0.0, 1.0))
    below, above = np.partition(flat, (k - 1, k), axis=0)[[k - 1, k]]
    return (1.0 - gamma) * below + gamma * above


def _autocov(draws: np.ndarray) -> np.ndarray:
    """Autocovariance at every lag of (chain, draw, parameter) draws, by FFT along the draws.

    The transforms run over contiguous rows (parameter, chain, draw): several times faster
    than along the middle axis.
    """
    n = draws.shape[1]
    rows = np.ascontiguousarray(draws.transpose(2, 0, 1))
    centred = rows - rows.mean(axis=2, keepdims=True)
    size = next_fast_len(2 * n)
    spectrum = np.fft.rfft(centred, n=size, axis=2)
    autocov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=2)[:, :, :n] / n
    return autocov.transpose(1, 2, 0)


def _ess(draws: np.ndarray) -> np.ndarray:
    """ESS per parameter of float64 (chain, draw, parameter) draws, ArviZ's ``_ess`` at once.

    Geyer's initial positive sequence of autocorrelation pairs, stopped at the first pair that
    is not positive or at ArviZ's cap on the lag, made monotone, plus ArviZ's last even lag.
    """
    n_chain, n_draw, n_parameters = draws.shape
    acov = _autocov(draws)
    mean_var = acov[:, 0].mean(axis=0) * n_draw / (n_draw - 1.0)
    var_plus = mean_var * (n_draw - 1.0) / n_draw
    if n_chain > 1:
        var_plus = var_plus + draws.mean(axis=1).var(axis=0, ddof=1)
    rho = 1.0 - (mean_var - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    max_pairs = max(0, (n_draw - 1) // 2 - 1)
    pairs = rho[0 : 2 * max_pairs + 2 : 2] + rho[1 : 2 * max_pairs + 2 : 2]
    not_positive = pairs <= 0.0
    first_stop = np.where(not_positive.any(axis=0), not_positive.argmax(axis=0), max_pairs + 1)
    n_kept = np.minimum(first_stop, max_pairs)
    kept = np.arange(max_pairs + 1)[:, None] < n_kept
    monotone = np.minimum.accumulate(pairs, axis=0)
    columns = np.arange(n_parameters)
    last_even, last_pair = rho[2 * n_kept, columns], pairs[n_kept, columns]
    tau = -1.0 + 2.0 * np.where(kept, monotone, 0.0).sum(axis=0)
    tau += np.where((last_even > 0.0) | (last_pair >= 0.0), last_even, 0.0)
    total = n_chain * n_draw
    result = total / np.maximum(tau, 1.0 / np.log10(total))
    constant = np.ptp(draws.reshape(-1, n_parameters), axis=0) < np.finfo(float).resolution
    return np.where(constant, float(total), result)


# --------------------------------------------------------------- warning after sampling
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


def _extreme(values: xr.Dataset, reducer: str) -> float:
    flat = np.concatenate([v.to_numpy().ravel() for v in values.data_vars.values()])
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return float("nan")
    return float(finite.max() if reducer == "max" else finite.min())


def check_convergence(
    idata: az.InferenceData,
    *,
    var_names: Sequence[str] = CHECKED_VARIABLES,
    thresholds: Thresholds | None = None,
) -> ConvergenceReport:
    """Check divergences, r̂ and bulk ESS of the low-dimensional variables.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    var_names
        Posterior variables to check (those absent, e.g. without pooling, are skipped).
    thresholds
        The limits (default :class:`Thresholds`); bulk ESS is compared with
        :meth:`Thresholds.min_ess` of the fit's number of chains.

    Returns
    -------
    ConvergenceReport
    """
    limits = thresholds or Thresholds()
    problems: list[str] = []
    divergences = 0
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        divergences = int(np.asarray(stats["diverging"]).sum())
    if divergences > limits.divergences:
        problems.append(f"{divergences} divergent transition(s)")
    posterior = idata.posterior
    names = [name for name in var_names if name in posterior]
    rhat_value = ess_value = float("nan")
    n_chains, n_draws = posterior.sizes["chain"], posterior.sizes["draw"]
    if names and n_draws >= MIN_DRAWS:
        measures = posterior_rank_diagnostics(posterior[names])
        if n_chains > 1:
            rhat_value = _extreme(measures["r_hat"], "max")
            if not rhat_value <= limits.r_hat:
                problems.append(f"max r̂ of {names} is {rhat_value:.3f} > {limits.r_hat}")
        ess_value = _extreme(measures["ess_bulk"], "min")
        min_ess = limits.min_ess(n_chains)
        if not ess_value >= min_ess:
            problems.append(
                f"min bulk ESS of {names} is {ess_value:.0f} < {min_ess:g} "
                f"({limits.ess_per_chain:g} per chain)"
            )
    return ConvergenceReport(divergences, rhat_value, ess_value, tuple(problems))


def warn_if_not_converged(idata: az.InferenceData) -> ConvergenceReport:
    """Run :func:`check_convergence` and emit a :class:`ConvergenceWarning` if it fails.

    The warning points at the first line outside this package that led here (the user's
    call of :meth:`ShrinkageModel.sample` or :func:`bayeshier_pymc.sampling.sample`).

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.

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
            stacklevel=_caller_outside_package(),
        )
    return report


def _caller_outside_package() -> int:
    """``stacklevel`` naming the first frame outside the package, seen from this one's caller."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(
        _PACKAGE
    ):
        frame = frame.f_back
        level += 1
    return level
