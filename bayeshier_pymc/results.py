"""Shrunken coefficients, local false sign rates, scales per level and group effects.

Every function takes the InferenceData returned by :meth:`ShrinkageModel.sample` (or loaded
back from netCDF) and returns labelled pandas / xarray objects. Intervals are highest-density
intervals at ``hdi_prob``, by default ArviZ's ``az.rcParams["stats.ci_prob"]`` (0.94 unless
set), as in ``az.summary``.

Signs and multiple testing (Stephens 2017, ashr): ``prob_positive`` and ``prob_negative``
are P(θ > 0 | b) and P(θ < 0 | b); the local false sign rate ``lfsr`` = min(P(θ ≥ 0),
P(θ ≤ 0)) is the probability that the sign of the posterior mean is wrong; the q-value of an
effect (ashr's *s-value*) is the mean lfsr of all effects of its covariate with an lfsr at most
as large, the expected share of wrong signs if every such effect is called. Calling the
effects with ``qvalue <= alpha`` keeps the expected false sign rate of the list at most alpha.

Units: a fit whose effects are exchangeable in units of each feature's residual SD
(``attrs["effect_scale"] == "residual_sd"``, the default for a stage-1 fit) holds θ in those
units; the coefficient summaries, tables and matrices here (and the figures of θ) multiply θ and
the stage-1 estimates by each feature's residual SD, so that they are in Y's units. The sign
probabilities, lfsr and q-values do not depend on the units. The scales and group effects
describe the standardized effects, and stay in residual-SD units.

Resolution: from S draws a rate is a multiple of 1/S, so an lfsr of 0 only says that no draw
had the other sign, i.e. the rate lies below 1/S. The tables keep the numbers (0 included, for
sorting and thresholds) and record S in ``attrs["n_draws"]``; :func:`display_table` (used by
the report) writes such rates as ``"<1/S"``, e.g. ``"<2.5e-04"`` for 4,000 draws, never 0.
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats as scipy_stats

from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import (
    THETA_SUMMARY,
    is_summary,
    problem_from_idata,
    residual_sd,
)
from bayeshier_pymc.mlm import MLMFit, missingness_patterns
from bayeshier_pymc.model import group_mean_name, local_scale_name

__all__ = [
    "DEFAULT_ALPHA",
    "coefficient_matrix",
    "coefficient_summary",
    "coefficient_table",
    "display_table",
    "format_rate",
    "group_effects",
    "lfsr",
    "qvalue",
    "resolve_hdi_prob",
    "scale_summary",
    "stage1_estimates",
    "theta_moments",
]

SAMPLE_DIMS = ("chain", "draw")
DEFAULT_ALPHA = 0.05
"""Default target false sign rate of the list of called effects (``coefficient_table``)."""
RATE_COLUMNS = ("lfsr", "qvalue")
"""Columns of rates estimated from draws, resolved only down to 1/S (:func:`display_table`)."""


def lfsr(draws: xr.DataArray) -> xr.DataArray:
    """Local false sign rate, min(P(x ≥ 0), P(x ≤ 0)), over the chain and draw dims.

    Stephens (2017): the probability of getting the sign of the effect wrong when reporting
    the sign of its posterior mean. Small values mean a confidently signed effect.
    """
    positive = (draws >= 0).mean(SAMPLE_DIMS)
    negative = (draws <= 0).mean(SAMPLE_DIMS)
    return np.minimum(positive, negative).rename("lfsr")


def qvalue(local_rates: xr.DataArray, dim: str = "feature") -> xr.DataArray:
    """q-values of local false sign rates: the running mean of the sorted rates along ``dim``.

    ashr's s-values (Stephens 2017): calling every effect whose q-value is at most alpha
    calls a list whose expected false sign rate is at most alpha. Each slice along the other
    dims (each covariate) is its own list.
    """

    def running_mean(values: np.ndarray) -> np.ndarray:
        order = np.argsort(values, axis=-1, kind="stable")
        ordered = np.take_along_axis(values, order, axis=-1)
        means = np.cumsum(ordered, axis=-1) / np.arange(1, values.shape[-1] + 1)
        # tied rates get the mean over every effect at most as uncertain: the running mean
        # at the end of their tie (draws make ties common: rates are multiples of 1 / S)
        last_of_tie = np.empty_like(order)
        flat_ordered = ordered.reshape(-1, ordered.shape[-1])
        flat_last = last_of_tie.reshape(flat_ordered.shape)
        for row, rates in enumerate(flat_ordered):
            ends = np.flatnonzero(np.r_[rates[1:] != rates[:-1], True])
            flat_last[row] = ends[np.searchsorted(ends, np.arange(rates.size))]
        means = np.take_along_axis(means, last_of_tie, axis=-1)
        out = np.empty_like(means)
        np.put_along_axis(out, order, means, axis=-1)
        return out

    return xr.apply_ufunc(
        running_mean, local_rates, input_core_dims=[[dim]], output_core_dims=[[dim]]
    ).rename("qvalue")


def format_rate(value: float, n_draws: int) -> str:
    """A rate estimated from ``n_draws`` draws as text: ``"<1/S"`` below 1/S, never ``"0"``.

    Parameters
    ----------
    value
        An lfsr or q-value.
    n_draws
        S, the number of draws it was estimated from (chains × draws).

    Returns
    -------
    str
        ``"<2.5e-04"`` for a rate below 1/S = 1/4000, otherwise two significant digits
        (``"0.031"``); ``"nan"`` for NaN.

    Examples
    --------
    >>> format_rate(0.0, 4000), format_rate(0.0312, 4000)
    ('<2.5e-04', '0.031')
    """
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
    if np.isnan(value):
        return "nan"
    if value < 1.0 / n_draws:
        return f"<{1.0 / n_draws:.1e}"
    return f"{value:.2g}"


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy of a results table for reading: rates below 1/S as ``"<1/S"``, numbers rounded.

    Parameters
    ----------
    table
        A :func:`coefficient_table` or :func:`group_effects` frame (or a subset of its rows
        and columns that keeps its ``attrs``).
    digits
        Significant digits of the other floats; values of 10^(digits − 1) or more are
        written with every digit before the point and one after it, so that large numbers
        such as elpds stay comparable (``"1823.4"``, not ``"1.82e+03"``).

    Returns
    -------
    pandas.DataFrame
        The same rows and columns as text: ``lfsr`` and ``qvalue`` through
        :func:`format_rate` when ``table.attrs["n_draws"]`` is known.

    Examples
    --------
    The most confidently signed effects, as text:

    >>> top = coefficient_table(idata).sort_values("lfsr").head()  # doctest: +SKIP
    >>> print(display_table(top).to_string(index=False))  # doctest: +SKIP
    """
    shown = table.copy()
    n_draws = table.attrs.get("n_draws")
    for column in shown.columns:
        if column in RATE_COLUMNS and n_draws is not None:
            shown[column] = [format_rate(float(v), int(n_draws)) for v in shown[column]]
        elif pd.api.types.is_float_dtype(shown[column]):
            shown[column] = [_format_number(float(v), digits) for v in shown[column]]
    return shown


def _format_number(value: float, digits: int) -> str:
    """``digits`` significant digits, or one decimal where that would round before the point."""
    if np.isfinite(value) and abs(value) >= 10 ** (digits - 1):
        return f"{value:.1f}"
    return f"{value:.{digits}g}"


def check_alpha(alpha: float) -> None:
    """Refuse a call threshold ``alpha`` outside (0, 1), naming it.

    Raises
    ------
    ValueError
        When ``alpha`` does not lie in (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")


def resolve_hdi_prob(hdi_prob: float | None) -> float:
    """``hdi_prob``, or ArviZ's ``rcParams["stats.ci_prob"]`` for ``None``, checked."""
    prob = az.rcParams["stats.ci_prob"] if hdi_prob is None else hdi_prob
    if not 0.0 < prob < 1.0:
        raise ValueError(f"hdi_prob must lie in (0, 1), got {prob}.")
    return float(prob)


def _interval(draws: xr.DataArray, hdi_prob: float) -> tuple[xr.DataArray, xr.DataArray]:
    hdi = az.hdi(draws, hdi_prob=hdi_prob)[draws.name]
    return hdi.sel(hdi="lower", drop=True), hdi.sel(hdi="higher", drop=True)


def _summarise(draws: xr.DataArray, hdi_prob: float | None) -> xr.Dataset:
    prob = resolve_hdi_prob(hdi_prob)
    lower, upper = _interval(draws, prob)
    summary = xr.Dataset(
        {
            "mean": draws.mean(SAMPLE_DIMS),
            "sd": draws.std(SAMPLE_DIMS, ddof=1),
            "hdi_lower": lower,
            "hdi_upper": upper,
            "prob_positive": (draws > 0).mean(SAMPLE_DIMS),
            "prob_negative": (draws < 0).mean(SAMPLE_DIMS),
            "lfsr": lfsr(draws),
        }
    )
    summary.attrs["hdi_prob"] = prob
    return summary


def stage1_estimates(idata: az.InferenceData) -> Estimates:
    """The stage-1 estimates and standard errors of a fit, in Y's units (see the module)."""
    return problem_from_idata(idata).estimates.in_y_units()


def _in_y_units(summary: xr.Dataset, idata: az.InferenceData, names: tuple[str, ...]) -> xr.Dataset:
    """``summary`` with its variables ``names`` (θ's location and spread) in Y's units."""
    sd = residual_sd(idata)
    if sd is None:
        return summary
    return summary.assign({name: summary[name] * sd for name in names})


def theta_moments(
    idata: az.InferenceData, covariate: object | None = None, *, in_y_units: bool = True
) -> xr.Dataset:
    """Posterior ``mean``, ``sd`` (ddof 1) and ``lfsr`` of θ, per (covariate,) feature.

    From the draws, or from the ``theta_summary`` group of a fit in summary storage (the same
    numbers but for rounding). ``covariate``: one covariate's (default: every covariate's).
    ``in_y_units``: in Y's units (default; see the module), else in the fit's own units (those
    of its estimates, group means and scales).
    """
    selection = {} if covariate is None else {"covariate": covariate}
    if is_summary(idata):
        cells = idata[THETA_SUMMARY].sel(selection)
        rates = _sign_rates(cells, n_draws(idata))
        moments = xr.Dataset({"mean": cells["mean"], "sd": cells["sd"], "lfsr": rates["lfsr"]})
    else:
        theta = idata.posterior["theta"].sel(selection)
        moments = xr.Dataset(
            {
                "mean": theta.mean(SAMPLE_DIMS),
                "sd": theta.std(SAMPLE_DIMS, ddof=1),
                "lfsr": lfsr(theta),
            }
        )
    return _in_y_units(moments, idata, ("mean", "sd")) if in_y_units else moments


def _sign_rates(moments: xr.Dataset, draws: int) -> xr.Dataset:
    """P(θ > 0), P(θ < 0) and the lfsr from the counts of θ's summaries over ``draws``."""
    positive = moments["n_positive"] / draws
    negative = moments["n_negative"] / draws
    return xr.Dataset(
        {
            "prob_positive": positive,
            "prob_negative": negative,
            # (draws ≥ 0).mean() and (draws ≤ 0).mean() as from the draws, to the last bit
            "lfsr": np.minimum(draws - moments["n_negative"], draws - moments["n_positive"])
            / draws,
        }
    )


def _summary_from_moments(moments: xr.Dataset, draws: int, hdi_prob: float | None) -> xr.Dataset:
    """:func:`_summarise`'s variables from θ's per-cell summaries (see coefficient_summary)."""
    prob = resolve_hdi_prob(hdi_prob)
    half_width = float(scipy_stats.norm.ppf(0.5 + prob / 2)) * moments["sd"]
    summary = xr.Dataset(
        {
            "mean": moments["mean"],
            "sd": moments["sd"],
            "hdi_lower": moments["mean"] - half_width,
            "hdi_upper": moments["mean"] + half_width,
            **_sign_rates(moments, draws).data_vars,
        }
    )
    summary.attrs.update(hdi_prob=prob, interval="normal")
    return summary


def coefficient_summary(idata: az.InferenceData, hdi_prob: float | None = None) -> xr.Dataset:
    """Posterior mean, sd, HDI, sign probabilities, lfsr and q-value of every θ.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    hdi_prob
        Probability mass of the highest-density interval (default: ArviZ's
        ``rcParams["stats.ci_prob"]``).

    Returns
    -------
    xarray.Dataset
        Variables ``mean``, ``sd``, ``hdi_lower``, ``hdi_upper``, ``prob_positive``,
        ``prob_negative``, ``lfsr`` and ``qvalue`` (per covariate), each with dims
        ``("covariate", "feature")``; ``attrs["hdi_prob"]`` is the level used. The mean, sd
        and interval are in Y's units (see the module).

    Notes
    -----
    A fit in summary storage (``attrs["storage"] == "summary"``) has no θ draws: mean, sd and
    the sign rates come from its ``theta_summary`` group (the same numbers as from the draws,
    but for rounding), and the interval is the normal one, mean ± z sd with z the normal
    quantile of (1 + hdi_prob) / 2 (``attrs["interval"] == "normal"``), not the HDI of the
    draws. Given τ and its parents θ is normal, so the two differ by the non-normality of
    the mixture over τ draws, within Monte Carlo error where τ is well determined (many
    features).
    """
    if is_summary(idata):
        summary = _summary_from_moments(idata[THETA_SUMMARY], n_draws(idata), hdi_prob)
    else:
        summary = _summarise(idata.posterior["theta"], hdi_prob)
    summary["qvalue"] = qvalue(summary["lfsr"])
    return _in_y_units(summary, idata, ("mean", "sd", "hdi_lower", "hdi_upper"))


def coefficient_table(
    idata: az.InferenceData, hdi_prob: float | None = None, alpha: float = DEFAULT_ALPHA
) -> pd.DataFrame:
    """Tidy table of the shrunken coefficients beside the stage-1 estimates.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    hdi_prob
        Interval level (default: ArviZ's ``rcParams["stats.ci_prob"]``).
    alpha
        Target false sign rate of the called effects: ``called`` marks the effects with
        ``qvalue <= alpha`` (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        Columns ``covariate, feature, estimate, se`` (stage 1) and ``mean, sd, hdi_lower,
        hdi_upper, prob_positive, prob_negative, lfsr, qvalue, called`` (posterior), one row
        per covariate × feature, estimates and θ in Y's units (see the module);
        ``attrs["hdi_prob"]`` and ``attrs["alpha"]`` hold the levels,
        ``attrs["n_draws"]`` the number of draws S (an lfsr of 0 means below 1/S; print the
        table through :func:`display_table` to show it so).

    Examples
    --------
    >>> import bayeshier_pymc as bh
    >>> study = bh.demo_study()
    >>> tree = bh.Hierarchy.from_frame(study.annotations, ["SUB_PATHWAY", "SUPER_PATHWAY"])
    >>> model = bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, covariates=["age"])
    >>> idata = model.sample("gibbs", draws=500, chains=2, random_seed=1, progressbar=False)
    >>> table = bh.coefficient_table(idata)
    >>> table.columns.tolist()  # doctest: +NORMALIZE_WHITESPACE
    ['covariate', 'feature', 'estimate', 'se', 'mean', 'sd', 'hdi_lower', 'hdi_upper',
     'prob_positive', 'prob_negative', 'lfsr', 'qvalue', 'called']
    >>> hits = table[table["called"]].sort_values("lfsr")  # expected false sign rate <= 5%
    >>> bool(hits["lfsr"].mean() <= table.attrs["alpha"])
    True
    """
    check_alpha(alpha)
    summary = coefficient_summary(idata, hdi_prob)
    estimates = stage1_estimates(idata)
    summary["estimate"] = estimates.estimate
    summary["se"] = estimates.se
    summary["called"] = summary["qvalue"] <= alpha
    columns = [
        "estimate",
        "se",
        "mean",
        "sd",
        "hdi_lower",
        "hdi_upper",
        "prob_positive",
        "prob_negative",
        "lfsr",
        "qvalue",
        "called",
    ]
    table = summary[columns].to_dataframe().reset_index()
    table.attrs.update(hdi_prob=summary.attrs["hdi_prob"], alpha=alpha, n_draws=n_draws(idata))
    return table


def coefficient_matrix(idata: az.InferenceData, fit: MLMFit | None = None) -> xr.DataArray:
    """Posterior-mean coefficients as a (covariate, feature) matrix in stage-1 layout.

    Pass it to :meth:`MLMFit.predict` as ``coef=`` to predict with the shrunken effects.

    Parameters
    ----------
    idata
        A result of :meth:`ShrinkageModel.sample`.
    fit
        The stage-1 fit the estimates came from. When given, the matrix covers every
        covariate of the fit: the shrunken rows are the posterior means, and the covariates
        that were not shrunk (typically the intercept) are refitted by least squares with
        the shrunken effects held fixed, so that an intercept re-centres on
        ``mean(y) - mean(x) · θ`` instead of keeping its stage-1 value. With missing
        responses (``mlm(..., missing="per-feature")``) each feature is refitted on its
        observed samples; a feature with none keeps NaN there.

    Returns
    -------
    xarray.DataArray
        Dims ``("covariate", "feature")``, in Y's units (see the module).
    """
    mean = (
        idata[THETA_SUMMARY]["mean"]
        if is_summary(idata)
        else idata.posterior["theta"].mean(SAMPLE_DIMS)
    )
    shrunk = _in_y_units(xr.Dataset({"coef": mean}), idata, ("coef",))["coef"]
    if fit is None:
        return shrunk
    if fit.Z is not None:
        raise ValueError("refitting unshrunk covariates needs a stage-1 fit with Z=None.")
    covariates = fit.coef.indexes["covariate"]
    features = fit.coef.indexes["feature"]
    shrunk_names = shrunk.indexes["covariate"]
    if not (shrunk_names.isin(covariates).all() and shrunk.indexes["feature"].equals(features)):
        raise ValueError(
            "the fit does not match the shrinkage result: its covariates must include "
            f"{shrunk_names.tolist()!r} and its features must be the same, in the same order."
        )
    rest = covariates.difference(shrunk_names, sort=False)
    coef = fit.coef.copy(data=np.zeros(fit.coef.shape)).rename("coef")
    coef.loc[{"covariate": shrunk_names}] = shrunk.to_numpy()
    if len(rest):
        x = fit.X
        residual = fit.Y.to_numpy() - x[shrunk_names].to_numpy() @ shrunk.to_numpy()
        x_rest = x[rest].to_numpy()
        refit = np.full((len(rest), residual.shape[1]), np.nan)
        for rows, columns in missingness_patterns(residual):
            if rows.any():
                refit[:, columns] = np.linalg.lstsq(
                    x_rest[rows], residual[np.ix_(rows, columns)], rcond=None
                )[0]
        coef.loc[{"covariate": rest}] = refit
    return coef


def scale_summary(idata: az.InferenceData, hdi_prob: float | None = None) -> pd.DataFrame:
    """τ per covariate and level with intervals, and each level's share of the variance.

    The share of level L is its variance over the sum of all levels', averaged over draws
    (:func:`variance_shares`): how much of the between-feature variation of the true effects
    sits at that level of the tree. Under the normal group prior a level's variance is τ_L²;
    under a heavy-tailed one, τ_L² times the mean of its groups' λ_g².

    Returns
    -------
    pandas.DataFrame
        Columns ``covariate, level, mean, sd, hdi_lower, hdi_upper, variance_share``.
    """
    if not problem_from_idata(idata).pooled:
        raise ValueError("this fit has no scales (a model without pooling).")
    tau = idata.posterior["tau"]
    summary = _summarise(tau, hdi_prob).drop_vars(["lfsr", "prob_positive", "prob_negative"])
    summary["variance_share"] = variance_shares(idata.posterior).mean(SAMPLE_DIMS)
    return summary.to_dataframe().reset_index()


def variance_shares(posterior: xr.Dataset) -> xr.DataArray:
    """Each level's share of the between-feature variance in every draw (dim ``level``).

    A level's variance is τ_L² (the features' level, and every level under the normal group
    prior); under a heavy-tailed group prior a group g's effects vary around their parent with
    variance τ_L² λ_g², so the level's is τ_L² times the mean of λ_g² over its groups (read from
    the posterior's ``<level>_local_scale``). The share is each level's variance over their sum
    in the draw: τ_L² / Σ τ² under the normal prior.

    Parameters
    ----------
    posterior
        A fit's posterior, with ``tau`` (chain, draw, covariate, level) and, under a
        heavy-tailed group prior, the local scales of each annotation level.
    """
    squared = posterior["tau"] ** 2
    variances = [
        squared.sel(level=level) * (posterior[local_scale_name(level)] ** 2).mean(level)
        if local_scale_name(level) in posterior
        else squared.sel(level=level)
        for level in squared.indexes["level"]
    ]
    combined = xr.concat(variances, dim="level").transpose(*squared.dims)
    return combined / combined.sum("level")


def group_level(idata: az.InferenceData, level: str | None) -> tuple[Hierarchy, str]:
    """The fit's annotation tree and ``level`` checked against it (default: the finest level).

    Raises
    ------
    ValueError
        When the fit has no annotation levels or does not use ``level``.
    """
    tree = problem_from_idata(idata).tree
    if tree is None or not tree.levels:
        raise ValueError("this fit has no annotation levels, so no group effects.")
    level = tree.levels[0] if level is None else level
    if level not in tree.levels:
        raise ValueError(f"unknown level {level!r}; the fit used {list(tree.levels)!r}.")
    return tree, level


def group_effects(
    idata: az.InferenceData, level: str | None = None, hdi_prob: float | None = None
) -> pd.DataFrame:
    """Posterior summaries of the group means at one annotation level (default: the finest).

    Returns
    -------
    pandas.DataFrame
        Columns ``covariate, <level>, mean, sd, hdi_lower, hdi_upper, prob_positive,
        prob_negative, lfsr, n_features``; ``attrs["n_draws"]`` is the number of draws S
        (see :func:`display_table`).
    """
    tree, level = group_level(idata, level)
    summary = _summarise(idata.posterior[group_mean_name(level)], hdi_prob)
    frame = summary.to_dataframe().reset_index()
    frame["n_features"] = frame[level].map(tree.group_sizes(level))
    frame.attrs["n_draws"] = n_draws(idata)
    return frame


def n_draws(idata: az.InferenceData) -> int:
    """S, the number of posterior draws over every chain (rates resolve down to 1/S)."""
    return int(idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"])
