"""Can the draws be trusted? One verdict from r̂, ESS, divergences, E-BFMI, tree depth and Pareto k.

Thresholds (:class:`~bayeshier_pymc.convergence.Thresholds`, the same for the warning after
sampling and for :func:`~bayeshier_pymc.sampler_comparison.compare_samplers`) follow Vehtari,
Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding, and localization: an
improved R̂", and Stan's defaults:

* rank-normalised split r̂ ≤ 1.01 for every quantity;
* bulk and tail ESS ≥ 100 per chain (400 with 4 chains);
* no divergent transition after warm-up;
* E-BFMI ≥ 0.3 in every chain (Betancourt 2016);
* no iteration at the maximum tree depth (an efficiency warning, not a validity one);
* Pareto k ≤ min(1 − 1/log10(S), 0.7) for S draws (Vehtari et al. 2024, "Pareto smoothed
  importance sampling") for the chosen LOO.

r̂, ESS and divergences decide :attr:`Diagnosis.ok`; E-BFMI, tree depth and Pareto k give
warnings. NUTS-only checks are skipped for samplers that do not record them (Gibbs). r̂ and ESS
are those of :mod:`bayeshier_pymc.convergence` (ArviZ's definitions, computed faster).
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from bayeshier_pymc.convergence import (
    Thresholds,
    posterior_rank_diagnostics,
    relative_efficiency,
)
from bayeshier_pymc.inference_data import (
    LOG_LIKELIHOOD_NAMES,
    OBSERVATION,
    is_summary,
    loo,
    psis_elpd,
    with_log_likelihood,
)

__all__ = [
    "GROUP_LOG_LIKELIHOOD",
    "LOO_QUESTIONS",
    "Diagnosis",
    "Thresholds",
    "diagnose",
    "has_missing_cells",
    "loo_elpd",
    "pareto_k_advice",
]

LooKind = Literal["marginal", "conditional", "group"]
GROUP_LOG_LIKELIHOOD = "b_group"
"""Name of the leave-one-group-out log-likelihood (added by the depth comparison)."""
LOO_QUESTIONS: dict[str, str] = {
    "marginal": "leave one metabolite out: how well is its estimate predicted from all the "
    "others (a new metabolite of a known group; with correlated estimates its neighbours' "
    "shared noise helps too, so prefer the group LOO to ask whether a level carries effects)",
    "conditional": "leave one estimate out with the likelihood conditional on θ_j: with one "
    "estimate per metabolite its exact target is the marginal one, but PSIS on this form is "
    "unreliable because θ_j rests on that estimate alone",
    "group": "leave one group out: how well is a new group of metabolites predicted",
}
"""What each kind of LOO asks (see :mod:`bayeshier_pymc.depth_comparison`)."""
VERY_BAD_K = 1.0
"""Pareto k above which PSIS does not even give a consistent estimate (Vehtari et al. 2024)."""

Status = Literal["pass", "warn", "fail", "skipped"]
SAMPLE_DIMS = ("chain", "draw")
_SATURATION_FLAGS = ("reached_max_treedepth", "maxdepth_reached")
_TREE_DEPTHS = ("tree_depth", "depth")
_REMEDIES = {
    "r_hat": "run more or longer chains, or reparameterise",
    "ess_bulk": "draw more iterations",
    "ess_tail": "draw more iterations",
    "divergences": "raise target_accept or use the collapsed parameterisation",
    "e_bfmi": "the energy distribution is poorly explored; reparameterise",
    "tree_depth": "sampling is slow; raise max_treedepth or reparameterise",
}
_FAILING_CHECKS = {
    "r̂": ("r_hat",),
    "ESS": ("ess_bulk", "ess_tail"),
    "divergences": ("divergences",),
}
"""The checks that fail a fit, by the name the verdict gives them."""
_WARNING_SUBJECTS = {
    "e_bfmi": "the exploration of the tails",
    "tree_depth": "the sampling speed",
    "pareto_k": "the PSIS-LOO estimates (elpd, depth comparisons)",
}
"""What each warning-only check puts in doubt (never the posterior summaries themselves)."""


def pareto_k_advice(kind: LooKind, *, missing_cells: bool) -> str:
    """What to do about Pareto k above good_k in ``kind`` LOO: only options that apply to it.

    Exact refits (``refit_bad_k``) are offered only for estimates without missing cells
    (``missing_cells=False``), the only ones they are available for.
    """
    if kind == "conditional":
        return (
            "expected for conditional LOO with one estimate per θ_j; use loo='marginal' "
            "or loo='group'"
        )
    if missing_cells:
        return (
            "exact refits (refit_bad_k) are not available for estimates with missing cells, "
            "so read those elpds as approximate"
        )
    if kind == "group":
        return "compare_depths(..., loo='group', refit_bad_k=True) replaces them by exact refits"
    return (
        "the leave-one-group-out comparison can replace them by exact refits: "
        "compare_depths(..., loo='group', refit_bad_k=True)"
    )


@dataclass(frozen=True)
class Diagnosis:
    """The outcome of :func:`diagnose`.

    Attributes
    ----------
    table
        One row per check (and variable): ``check, variable, value, threshold, status,
        detail``; status is ``"pass"``, ``"warn"``, ``"fail"`` or ``"skipped"``.
    ok
        True when no check failed.
    verdict
        The same in plain language, with the thresholds and what to do.
    thresholds
        The limits used.
    """

    table: pd.DataFrame
    ok: bool
    verdict: str
    thresholds: Thresholds

    def __repr__(self) -> str:
        return f"Diagnosis(ok={self.ok})\n{self.table.to_string(index=False)}\n\n{self.verdict}"

    def _repr_html_(self) -> str:
        verdict = "<br>".join(html.escape(line) for line in self.verdict.splitlines())
        return (
            f"<p><b>Diagnosis</b>: ok={self.ok}</p>{self.table.to_html(index=False)}"
            f"<p>{verdict}</p>"
        )


def diagnose(
    idata: az.InferenceData,
    *,
    var_names: Sequence[str] | None = None,
    loo: LooKind | None = "marginal",
    thresholds: Thresholds | None = None,
) -> Diagnosis:
    """Check the draws of a fit against the thresholds and say in words whether to trust them.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample` (NUTS or Gibbs).
    var_names
        Posterior variables checked for r̂ and ESS (default: all; ``theta`` dominates the cost
        at thousands of features).
    loo
        Which LOO's Pareto k to check (``"marginal"``, ``"conditional"``, or ``"group"`` when
        the fit holds ``b_group``); ``None`` skips it.
    thresholds
        The limits (default :class:`Thresholds`).

    Returns
    -------
    Diagnosis
    """
    if loo is not None:
        check_loo_kind(loo)
    limits = thresholds or Thresholds()
    names = list(idata.posterior.data_vars) if var_names is None else list(var_names)
    unknown = sorted(set(names) - set(idata.posterior.data_vars))
    if unknown:
        raise ValueError(f"var_names {unknown!r} are not posterior variables.")
    n_chains = idata.posterior.sizes["chain"]
    stats = _kept_draws(idata.get("sample_stats"))
    rows = [
        *_convergence_rows(idata.posterior[names], limits, n_chains),
        _divergence_row(stats, limits),
        _bfmi_row(stats, limits),
        _tree_depth_row(stats, limits),
    ]
    if loo is not None:
        rows.append(_pareto_k_row(idata, loo))
    table = pd.DataFrame(
        rows, columns=["check", "variable", "value", "threshold", "status", "detail"]
    )
    ok = not (table["status"] == "fail").any()
    verdict = _verdict(table, ok, limits, n_chains, loo, has_missing_cells(idata))
    return Diagnosis(table=table, ok=ok, verdict=verdict, thresholds=limits)


# ---------------------------------------------------------------------- PSIS-LOO
def check_loo_kind(kind: str) -> None:
    """Raise a ValueError unless ``kind`` is one of :data:`LOO_QUESTIONS`."""
    if kind not in LOO_QUESTIONS:
        raise ValueError(f"loo must be one of {sorted(LOO_QUESTIONS)!r}, got {kind!r}.")


def loo_elpd(idata: az.InferenceData, kind: LooKind = "marginal") -> az.ELPDData:
    """PSIS-LOO of one fit with the log-likelihood of ``kind``, Pareto k made honest.

    Points whose log-likelihood is the same in every draw (no pooling predicts b_j from a
    fixed prior) have exact LOO; ArviZ reports k = inf for them, here they get k = NaN and
    do not raise the warning flag.

    Parameters
    ----------
    idata
        A fit; for ``kind="group"`` its ``log_likelihood`` must hold ``b_group``; a
        marginal or conditional one it lacks is computed from the draws.
    kind
        ``"marginal"``, ``"conditional"`` or ``"group"``.

    Returns
    -------
    arviz.ELPDData
        With pointwise values.
    """
    check_loo_kind(kind)
    if kind == "group":
        var_name = GROUP_LOG_LIKELIHOOD
        if "log_likelihood" not in idata.groups() or var_name not in idata.log_likelihood:
            raise ValueError(
                f"the fit has no {var_name!r} log-likelihood; for loo='group' build it with "
                "depth_comparison.group_log_likelihood() or use compare_depths / compare_fits."
            )
    elif is_summary(idata):
        # summary storage: b_marginal a chunk of features at a time (pooled: never constant)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return loo(idata, kind)
    else:
        var_name = LOG_LIKELIHOOD_NAMES[kind]
        idata = with_log_likelihood(idata, kind)
    log_lik = idata.log_likelihood[var_name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # ArviZ's default reff and PSIS, compiled (az.loo loops over parameters and points)
        elpd = psis_elpd(log_lik, relative_efficiency(idata.posterior))
    constant = (log_lik.max(SAMPLE_DIMS) == log_lik.min(SAMPLE_DIMS)).to_numpy()
    k = elpd["pareto_k"].copy()
    k.values[constant] = np.nan
    elpd["pareto_k"] = k
    elpd["warning"] = bool((k > elpd["good_k"]).any())
    return elpd


# ---------------------------------------------------------------------- checks
Row = tuple[str, str, float, float, Status, str]


def _convergence_rows(posterior: xr.Dataset, limits: Thresholds, n_chains: int) -> list[Row]:
    """Worst r̂, bulk ESS and tail ESS of every variable, with where it is worst."""
    ess_min = limits.min_ess(n_chains)
    computed = posterior_rank_diagnostics(posterior)
    measures = {
        "r_hat": (computed["r_hat"], "max", limits.r_hat),
        "ess_bulk": (computed["ess_bulk"], "min", ess_min),
        "ess_tail": (computed["ess_tail"], "min", ess_min),
    }
    rows: list[Row] = []
    for check, (values, worst, limit) in measures.items():
        for name in posterior.data_vars:
            value, where = _worst(values[name], worst)
            if np.isnan(value):
                rows.append((check, name, value, limit, "skipped", "not computable"))
                continue
            flat = values[name].to_numpy().ravel()
            n_bad = int((flat > limit).sum() if worst == "max" else (flat < limit).sum())
            detail = f"{n_bad} of {flat.size} beyond the limit; {where}"
            rows.append((check, name, value, limit, "fail" if n_bad else "pass", detail))
    return rows


def _worst(values: xr.DataArray, worst: str) -> tuple[float, str]:
    """The worst value of a diagnostic and the coordinates where it occurs."""
    flat = values.to_numpy().ravel()
    if flat.size == 0 or np.isnan(flat).all():
        return float("nan"), ""
    position = int(np.nanargmax(flat) if worst == "max" else np.nanargmin(flat))
    index = np.unravel_index(position, values.shape)
    where = ", ".join(
        f"{dim}={values[dim].to_numpy()[i]}" for dim, i in zip(values.dims, index, strict=True)
    )
    return float(flat[position]), f"worst at {where}" if where else "one value"


def _kept_draws(stats: xr.Dataset | None) -> xr.Dataset | None:
    """Sample stats without warm-up draws (nutpie marks them with ``tuning``)."""
    if stats is None or "tuning" not in stats:
        return stats
    return stats.where(~stats["tuning"].astype(bool), drop=True)


def _divergence_row(stats: xr.Dataset | None, limits: Thresholds) -> Row:
    if stats is None or "diverging" not in stats:
        return _skipped("divergences", limits.divergences)
    diverging = stats["diverging"].fillna(False).astype(bool)
    count, total = int(diverging.sum()), int(diverging.size)
    status: Status = "fail" if count > limits.divergences else "pass"
    return (
        "divergences", "", float(count), limits.divergences, status,
        f"{count} of {total} draws ({100 * count / max(total, 1):.1f}%)",
    )  # fmt: skip


def _bfmi_row(stats: xr.Dataset | None, limits: Thresholds) -> Row:
    if stats is None or "energy" not in stats:
        return _skipped("e_bfmi", limits.e_bfmi)
    energy = stats["energy"].transpose("chain", "draw").to_numpy()
    energy = energy[:, np.isfinite(energy).all(axis=0)]
    bfmi = az.bfmi(energy)
    value = float(np.min(bfmi))
    status: Status = "warn" if value < limits.e_bfmi else "pass"
    return ("e_bfmi", "", value, limits.e_bfmi, status, f"lowest of {len(bfmi)} chain(s)")


def _tree_depth_row(stats: xr.Dataset | None, limits: Thresholds) -> Row:
    flag = next((n for n in _SATURATION_FLAGS if stats is not None and n in stats), None)
    depth = next((n for n in _TREE_DEPTHS if stats is not None and n in stats), None)
    if stats is None or (flag is None and depth is None):
        return _skipped("tree_depth", 0.0)
    saturated = (
        stats[flag].fillna(False).astype(bool)
        if flag is not None
        else stats[depth] >= limits.max_treedepth
    )
    fraction = float(saturated.mean())
    status: Status = "warn" if fraction > 0 else "pass"
    return (
        "tree_depth", "", fraction, 0.0, status,
        f"share of draws at the maximum tree depth ({flag or f'{depth} ≥ {limits.max_treedepth}'})",
    )  # fmt: skip


def _pareto_k_row(idata: az.InferenceData, kind: LooKind) -> Row:
    elpd = loo_elpd(idata, kind)
    k = np.asarray(elpd["pareto_k"]).ravel()
    good_k = float(elpd["good_k"])
    estimated = k[~np.isnan(k)]
    n_bad = int((estimated > good_k).sum())
    value = float(estimated.max()) if estimated.size else float("nan")
    status: Status = "warn" if n_bad else "pass"
    detail = f"{kind} LOO: {n_bad} of {k.size} points above good_k"
    if estimated.size < k.size:
        detail += f"; {k.size - estimated.size} exact (constant log-likelihood)"
    return ("pareto_k", "", value, good_k, status, detail)


def has_missing_cells(idata: az.InferenceData) -> bool:
    """Whether the fit's estimates had missing cells.

    Its log-likelihood then runs along ``observation`` (the observed cells) instead of
    (covariate, feature).
    """
    log_likelihood = idata.get("log_likelihood")
    return log_likelihood is not None and OBSERVATION in log_likelihood.dims


def _skipped(check: str, threshold: float) -> Row:
    return (check, "", float("nan"), threshold, "skipped", "not recorded by this sampler")


# ---------------------------------------------------------------------- verdict
def _verdict(
    table: pd.DataFrame,
    ok: bool,
    limits: Thresholds,
    n_chains: int,
    loo: LooKind | None,
    missing_cells: bool,
) -> str:
    """The verdict: its first line accounts for every failure and warning listed below it."""
    failed = table[table["status"] == "fail"]
    warned = table[table["status"] == "warn"]
    skipped = sorted(set(table.loc[table["status"] == "skipped", "check"]))
    if not ok:
        lines = ["NOT OK: do not use these draws yet."]
    elif warned.empty:
        which = "every check that could run" if skipped else "every check"
        lines = [f"OK: {which} passed; the draws can be trusted."]
    else:
        doubts = " and ".join(dict.fromkeys(_WARNING_SUBJECTS[c] for c in warned["check"]))
        lines = [f"OK with warnings: {_passed(table)}; the warnings below put {doubts} in doubt."]
    lines += [f"Failed: {_describe(row)} — {_REMEDIES[row.check]}." for row in failed.itertuples()]
    lines += [
        f"Warning: {_describe(row)} — {_remedy(row.check, loo, missing_cells)}."
        for row in warned.itertuples()
    ]
    if skipped:
        lines.append(f"Skipped (not recorded or not computable): {', '.join(skipped)}.")
    rules = asdict(limits)
    lines.append(
        f"Thresholds (Vehtari et al. 2021): r̂ ≤ {rules['r_hat']}; bulk and tail ESS ≥ "
        f"{rules['ess_per_chain']:g} per chain (≥ {limits.min_ess(n_chains):g} here); "
        f"divergences ≤ {rules['divergences']}; E-BFMI ≥ {rules['e_bfmi']}; no draw at the "
        "maximum tree depth; Pareto k ≤ min(1 − 1/log10(S), 0.7)."
    )
    return "\n".join(lines)


def _passed(table: pd.DataFrame) -> str:
    """The checks that can fail a fit and ran (none failed), in words: "r̂ and ESS pass"."""
    ran = table.loc[table["status"] == "pass", "check"]
    names = [
        name
        for name, checks in _FAILING_CHECKS.items()
        if ran.isin(checks).any()  # ESS: bulk or tail
    ]
    if not names:
        return "no check failed"
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"{listed} pass"


def _remedy(check: str, loo: LooKind | None, missing_cells: bool) -> str:
    if check == "pareto_k" and loo is not None:
        advice = pareto_k_advice(loo, missing_cells=missing_cells)
        return f"PSIS-LOO is unreliable for those points; {advice}"
    return _REMEDIES[check]


def _describe(row: object) -> str:
    check, variable, value = row.check, row.variable, row.value  # type: ignore[attr-defined]
    subject = f"{check} of {variable}" if variable else check
    return f"{subject} = {value:.3g} (limit {row.threshold:.3g}; {row.detail})"  # type: ignore[attr-defined]
