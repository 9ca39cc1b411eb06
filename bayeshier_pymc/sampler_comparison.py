"""Do two samplers draw from the same posterior? Means, sds, MCSE z-scores, ESS/s and joint r̂.

:func:`compare_samplers` takes two InferenceData objects of the same model (e.g. NUTS and the
Gibbs engine) and, per scalar parameter, reports both samplers' means and sds, the z-scores
of their differences (difference over the root sum of squared Monte Carlo standard errors),
bulk ESS per second of sampling time and r̂ computed over the chains of both samplers
together. The samplers agree when every :math:`|z|` stays below a Bonferroni-aware threshold,
``max(4, Φ⁻¹(1 - α / (2 K)))`` for K tests, and the joint r̂ is at most the r̂ limit of
:class:`~bayeshier_pymc.convergence.Thresholds` (1.01).

r̂ and ESS are those of :mod:`bayeshier_pymc.convergence` (ArviZ's definitions, computed for
all parameters at once); the MCSE of the mean comes from the split-chain ESS and that of the
sd is ArviZ's. θ is compared on a subset of features by default (``theta_features``), to keep
the check cheap.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from bayeshier_pymc.convergence import (
    MIN_DRAWS,
    Thresholds,
    ess,
    rank_diagnostics,
    rank_rhat,
    split_chains,
)

__all__ = ["SamplerComparison", "compare_samplers"]

SAMPLE_DIMS = ("chain", "draw")
MIN_Z = 4.0
"""Smallest :math:`|z|` threshold, whatever the number of tests."""
ALPHA = 0.05
"""Family-wise error rate of the Bonferroni threshold."""
DEFAULT_THETA_FEATURES = 50
"""Features of θ compared by default (evenly spread); ``None`` compares all."""


@dataclass(frozen=True)
class SamplerComparison:
    """The result of :func:`compare_samplers`.

    Attributes
    ----------
    table
        One row per scalar parameter (index ``"var[coord, ...]"``) with columns
        ``variable``, ``mean_a``, ``mean_b``, ``sd_a``, ``sd_b``, ``mcse_mean_a``,
        ``mcse_mean_b``, ``mcse_sd_a``, ``mcse_sd_b``, ``z_mean``, ``z_sd``, ``ess_bulk_a``,
        ``ess_bulk_b``, ``ess_per_s_a``, ``ess_per_s_b``, ``rhat_a``, ``rhat_b`` and
        ``rhat_joint`` (suffix ``_a``: the first sampler).
    names
        Names of the two samplers.
    threshold
        The :math:`|z|` threshold used.
    max_rhat
        The largest acceptable joint r̂.
    sampling_time
        Seconds of sampling of each sampler (NaN when not recorded).
    posteriors
        The two posterior groups compared (kept for plotting).
    theta_features
        The ``theta_features`` setting used.
    """

    table: pd.DataFrame
    names: tuple[str, str]
    threshold: float
    max_rhat: float
    sampling_time: tuple[float, float]
    posteriors: tuple[xr.Dataset, xr.Dataset]
    theta_features: int | None

    def draws(self, parameters: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All draws of ``parameters`` (labels of :attr:`table`), (draw, parameter), a and b."""
        unknown = [p for p in parameters if p not in self.table.index]
        if unknown:
            raise ValueError(f"unknown parameters {unknown!r}; see the comparison's table.")
        variables = list(dict.fromkeys(self.table.loc[list(parameters), "variable"]))
        result = []
        for posterior in self.posteriors:
            stacked, labels = _stack(posterior, variables, self.theta_features)
            columns = [labels.index(p) for p in parameters]
            result.append(stacked.reshape(-1, stacked.shape[-1])[:, columns])
        return result[0], result[1]

    @property
    def ok(self) -> bool:
        """Whether every :math:`|z|` is below the threshold and every joint r̂ ≤ ``max_rhat``."""
        return not self.problems

    @property
    def problems(self) -> list[str]:
        """One sentence per failed check."""
        problems = []
        for column in ("z_mean", "z_sd"):
            bad = self.table[column].abs() >= self.threshold
            if bad.any():
                worst = self.table[column].abs().idxmax()
                problems.append(
                    f"{int(bad.sum())} parameter(s) with |{column}| >= {self.threshold:.2f}, "
                    f"worst {worst} ({self.table.loc[worst, column]:+.2f})"
                )
        rhat = self.table["rhat_joint"]
        if (rhat > self.max_rhat).any() or rhat.isna().any():
            problems.append(
                f"joint r̂ up to {rhat.max():.3f} (> {self.max_rhat}) at {rhat.idxmax()}"
            )
        return problems

    def summary(self) -> str:
        """A few lines: verdict, worst z-scores and r̂, ESS per second by variable."""
        name_a, name_b = self.names
        z = self.table[["z_mean", "z_sd"]].abs().max()
        lines = [
            f"Sampler comparison: a = {name_a}, b = {name_b}; {len(self.table)} parameters",
            f"  agree: {self.ok} (|z| < {self.threshold:.2f}, joint r̂ <= {self.max_rhat})",
            f"  max |z_mean| = {z['z_mean']:.2f}, max |z_sd| = {z['z_sd']:.2f}, "
            f"max joint r̂ = {self.table['rhat_joint'].max():.4f}",
            f"  sampling time: a {self.sampling_time[0]:.2f} s, b {self.sampling_time[1]:.2f} s",
        ]
        per_variable = self.table.groupby("variable", sort=False)[
            ["ess_per_s_a", "ess_per_s_b"]
        ].median()
        for variable, row in per_variable.iterrows():
            lines.append(
                f"  median bulk ESS/s of {variable}: a {row['ess_per_s_a']:.1f}, "
                f"b {row['ess_per_s_b']:.1f} (b/a {row['ess_per_s_b'] / row['ess_per_s_a']:.2f})"
            )
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_html_(self) -> str:
        worst = self.table.reindex(
            self.table[["z_mean", "z_sd"]].abs().max(axis=1).sort_values(ascending=False).index
        ).head(10)
        return (
            f"<pre>{html.escape(self.summary())}</pre>"
            f"<p>Largest |z|:</p>{worst.to_html(float_format='{:.4g}'.format)}"
        )


def compare_samplers(
    idata_a: az.InferenceData,
    idata_b: az.InferenceData,
    *,
    var_names: Sequence[str] | None = None,
    theta_features: int | None = DEFAULT_THETA_FEATURES,
    names: tuple[str, str] | None = None,
    alpha: float = ALPHA,
    min_z: float = MIN_Z,
    max_rhat: float = Thresholds.r_hat,
) -> SamplerComparison:
    """Compare the posteriors drawn by two samplers, parameter by parameter.

    Parameters
    ----------
    idata_a, idata_b
        Results of :meth:`ShrinkageModel.sample` for the same model (same coordinates).
    var_names
        Posterior variables to compare (default: all that both have).
    theta_features
        Compare θ on this many evenly spread features (``None``: all of them).
    names
        Labels of the samplers (default: their ``attrs["sampler"]``).
    alpha, min_z
        The :math:`|z|` threshold is ``max(min_z, Φ⁻¹(1 - alpha / (2 K)))`` for K tests (two per
        parameter: mean and sd).
    max_rhat
        Largest acceptable r̂ over the chains of both samplers together.

    Returns
    -------
    SamplerComparison

    Raises
    ------
    ValueError
        For a variable that one sampler lacks, different coordinates, or fewer than 4 draws.
    """
    post_a, post_b = idata_a.posterior, idata_b.posterior
    chosen = _variables(post_a, post_b, var_names)
    draws_a, labels = _stack(post_a, chosen, theta_features)
    draws_b, labels_b = _stack(post_b, chosen, theta_features)
    if labels != labels_b:
        raise ValueError("the two posteriors differ in the coordinates of the compared variables.")
    times = (_sampling_time(idata_a), _sampling_time(idata_b))
    columns = {"variable": [label.split("[")[0] for label in labels]}
    for suffix, draws, seconds in (("a", draws_a, times[0]), ("b", draws_b, times[1])):
        for key, values in _summaries(draws).items():
            columns[f"{key}_{suffix}"] = values
        columns[f"ess_per_s_{suffix}"] = columns[f"ess_bulk_{suffix}"] / seconds
    columns["z_mean"] = _z(columns, "mean")
    columns["z_sd"] = _z(columns, "sd")
    columns["rhat_joint"] = rank_rhat(_joint_chains(draws_a, draws_b))
    table = pd.DataFrame(columns, index=pd.Index(labels, name="parameter"))
    n_tests = 2 * len(table)
    default_names = (str(idata_a.attrs.get("sampler", "a")), str(idata_b.attrs.get("sampler", "b")))
    return SamplerComparison(
        table=table[_column_order()],
        names=names or default_names,
        threshold=max(min_z, float(stats.norm.isf(alpha / (2 * n_tests)))),
        max_rhat=max_rhat,
        sampling_time=times,
        posteriors=(post_a, post_b),
        theta_features=theta_features,
    )


def _column_order() -> list[str]:
    paired = ["mean", "sd", "mcse_mean", "mcse_sd"]
    tail = ["ess_bulk", "ess_per_s", "rhat"]
    return [
        "variable",
        *(f"{key}_{s}" for key in paired for s in "ab"),
        "z_mean",
        "z_sd",
        *(f"{key}_{s}" for key in tail for s in "ab"),
        "rhat_joint",
    ]


def _variables(
    post_a: xr.Dataset, post_b: xr.Dataset, var_names: Sequence[str] | None
) -> list[str]:
    if var_names is None:
        return [name for name in post_a.data_vars if name in post_b.data_vars]
    missing = [n for n in var_names if n not in post_a.data_vars or n not in post_b.data_vars]
    if missing:
        raise ValueError(f"variables {missing!r} are not in both posteriors.")
    return list(var_names)


def _stack(
    posterior: xr.Dataset, var_names: list[str], theta_features: int | None
) -> tuple[np.ndarray, list[str]]:
    """Draws as a (chain, draw, parameter) array and one label per parameter."""
    arrays, labels = [], []
    for name in var_names:
        values = posterior[name]
        if name == "theta" and theta_features is not None:
            values = values.isel(feature=_spread(values.sizes["feature"], theta_features))
        extra = [d for d in values.dims if d not in SAMPLE_DIMS]
        values = values.transpose(*SAMPLE_DIMS, *extra)
        flat = values.to_numpy().reshape(values.sizes["chain"], values.sizes["draw"], -1)
        arrays.append(flat.astype(float))
        labels += _labels(name, values, extra)
    if arrays[0].shape[1] < MIN_DRAWS:
        raise ValueError(f"need at least {MIN_DRAWS} draws per chain to compare samplers.")
    return np.concatenate(arrays, axis=-1), labels


def _spread(n: int, k: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))


def _labels(name: str, values: xr.DataArray, extra: list[str]) -> list[str]:
    if not extra:
        return [name]
    grids = np.meshgrid(*(values[d].to_numpy() for d in extra), indexing="ij")
    flat = [g.ravel() for g in grids]
    return [f"{name}[{', '.join(str(f[i]) for f in flat)}]" for i in range(flat[0].size)]


def _sampling_time(idata: az.InferenceData) -> float:
    return float(idata.attrs.get("sampling_time", np.nan))


def _z(columns: dict[str, np.ndarray], key: str) -> np.ndarray:
    difference = columns[f"{key}_a"] - columns[f"{key}_b"]
    return difference / np.sqrt(columns[f"mcse_{key}_a"] ** 2 + columns[f"mcse_{key}_b"] ** 2)


def _joint_chains(draws_a: np.ndarray, draws_b: np.ndarray) -> np.ndarray:
    """The chains of both samplers together, each cut to the last common number of draws."""
    n = min(draws_a.shape[1], draws_b.shape[1])
    return np.concatenate([draws_a[:, -n:], draws_b[:, -n:]], axis=0)


# ------------------------------------------------------------------ summaries
def _summaries(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, sd, their MCSEs, bulk ESS and rank r̂ of (chain, draw, parameter) draws."""
    flat = draws.reshape(-1, draws.shape[-1])
    sd = flat.std(axis=0, ddof=1)
    centred_sq = (draws - flat.mean(axis=0)) ** 2
    mean_sq = centred_sq.reshape(flat.shape).mean(axis=0)
    var_of_sq = ((centred_sq**2).reshape(flat.shape).mean(axis=0) - mean_sq**2) / ess(
        split_chains(centred_sq)
    )
    diagnostics = rank_diagnostics(draws)
    return {
        "mean": flat.mean(axis=0),
        "sd": sd,
        "mcse_mean": sd / np.sqrt(ess(split_chains(draws))),
        "mcse_sd": np.sqrt(var_of_sq / mean_sq / 4.0),
        "ess_bulk": diagnostics.ess_bulk,
        "rhat": diagnostics.r_hat,
    }
