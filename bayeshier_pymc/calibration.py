"""Calibration checks on data the model did not generate.

* :func:`split_half_check` (real data, truth unknown): the samples are split at random into
  halves A and B and stage 1 is fitted on each. B's estimates are independent of A's and
  unbiased for the truth, so with A's posterior mean μ and sd σ:

  - the 95% predictive interval ``|b_B − μ| ≤ q √(σ² + s_B²)`` should cover ≈ 95%, with
    ``q`` the 97.5% quantile of Student's t with the Welch–Satterthwaite degrees of freedom
    ``(σ² + s_B²)² / (s_B⁴ / ν_B)`` (``ν_B`` half B's residual degrees of freedom): ``s_B²``
    is an estimate, so even a perfect posterior covers less than 95% with the normal 1.96
    (38 residual df and ``σ ≪ s_B``: 94.3%). Misses cluster where the noise is shared, so
    the coverage's standard error is computed over clusters (covariate × finest annotation
    group, :func:`clustered_coverage_se`), not over cells;
  - among A's calls (lfsr < 0.05) where B is strongly significant (``|b_B / s_B| > 3``), the
    share whose sign disagrees with B should be about the calls' mean lfsr;
  - ``mean((b_B − μ)²) − mean(s_B²)`` is A's coefficient MSE without knowing the truth;
    the same with raw ``b_A`` in place of μ gives stage 1's, and their ratio the MSE gain.

* :func:`known_truth_check` (real noise, known truth): ``Y = X B + E`` with a real design, E's
  rows drawn from a given (e.g. a real data set's) residual covariance, and true effects with
  group structure; it reports the coverage of the true θ, the false sign rate among
  lfsr < 0.05 calls against their mean lfsr, and the MSE gain over stage 1.

Stage 2 is any callable ``stage_two(fit, hierarchy, covariates, random_seed)`` returning a
:class:`PosteriorSummary`; :class:`StageTwo` runs :class:`~bayeshier_pymc.ShrinkageModel` with
given settings. It is given the stage-1 fit itself, so with the default ``noise="auto"`` the
estimates' tree-structured noise is estimated from that fit's residuals (half A's in the
split-half check), exactly as a user's ``ShrinkageModel(fit, hierarchy)`` does;
``StageTwo(noise="independent")`` runs the research model that treats the m estimates of a
covariate as independent, for the comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from bayeshier_pymc._validation import covariance_factor
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import (
    EffectScaleChoice,
    MLMFit,
    check_effect_scale,
    mlm,
)
from bayeshier_pymc.results import coefficient_summary
from bayeshier_pymc.shrinkage import ShrinkageModel

__all__ = [
    "PosteriorSummary",
    "StageTwo",
    "clustered_coverage_se",
    "known_truth_check",
    "known_truth_scores",
    "normal_posterior",
    "posterior_summary",
    "predictive_coverage",
    "split_half_cells",
    "split_half_check",
    "split_half_scores",
    "split_half_summary",
    "stage_one_posterior",
]

Z_95 = 1.959963984540054
LFSR_LEVEL = 0.05
STRONG_Z = 3.0
NOISE_SETTINGS = ("auto", "independent")
"""The noise models :class:`StageTwo` compares: the package default and the research model."""
SPLIT_COLUMNS = [
    "coverage",
    "coverage_se",
    "calls",
    "checked_calls",
    "sign_error_rate",
    "claimed_lfsr",
    "mse_gain",
]
"""The columns of :func:`split_half_summary` that the studies report (a list, for ``.loc``)."""
TRUTH_COLUMNS = ["coverage", "calls", "false_sign_rate", "claimed_lfsr", "mse_gain"]
"""The columns of :func:`known_truth_check` that the studies report (a list, for ``.loc``)."""


@dataclass(frozen=True)
class PosteriorSummary:
    """Posterior mean, sd, 95% interval and lfsr of θ, each (covariate, feature)."""

    mean: xr.DataArray
    sd: xr.DataArray
    lower: xr.DataArray
    upper: xr.DataArray
    lfsr: xr.DataArray


@dataclass(frozen=True)
class StageTwo:
    """Fit :class:`~bayeshier_pymc.ShrinkageModel` to a stage-1 fit with these settings.

    Attributes
    ----------
    depth
        Annotation levels used (``None``: all; 0: one global mean).
    sampler
        ``"nuts"`` (default, as :meth:`ShrinkageModel.sample`) or ``"gibbs"``.
    noise
        The estimates' noise model, as :class:`~bayeshier_pymc.ShrinkageModel`'s ``noise``:
        ``"auto"`` (default, the package's: tree-structured noise estimated from the stage-1
        fit's residuals) or ``"independent"`` (the research model).
    effect_scale
        The units in which the effects are exchangeable, as
        :class:`~bayeshier_pymc.ShrinkageModel`'s ``effect_scale``: ``"auto"`` (default, the
        package's: each feature's residual SD for a stage-1 fit), ``"residual_sd"`` or
        ``"raw"`` (the units of Y). The posterior is scored in Y's units whatever the choice
        (:func:`~bayeshier_pymc.coefficient_summary`).
    draws, tune, chains
        Passed to :meth:`ShrinkageModel.sample`.
    priors
        Prior settings, as :class:`~bayeshier_pymc.ShrinkageModel`'s (default: ``"auto"``,
        scaled to each covariate's standard errors).
    sample_options
        Further keyword arguments of :meth:`ShrinkageModel.sample` (e.g.
        ``{"nuts_sampler": "pymc", "cores": 1}``).
    """

    depth: int | None = None
    sampler: Literal["gibbs", "nuts"] = "nuts"
    noise: Literal["auto", "independent"] = "auto"
    effect_scale: EffectScaleChoice = "auto"
    draws: int = 1000
    tune: int = 500
    chains: int = 4
    priors: str | Mapping[str, Any] | None = None
    sample_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.noise not in NOISE_SETTINGS:
            raise ValueError(f"noise must be one of {NOISE_SETTINGS!r}, got {self.noise!r}.")
        check_effect_scale(self.effect_scale)

    def __call__(
        self,
        fit: MLMFit,
        hierarchy: Hierarchy,
        covariates: Sequence[Any],
        random_seed: int,
    ) -> PosteriorSummary:
        """Shrink ``covariates`` of ``fit`` along ``hierarchy`` and summarise θ (Y's units)."""
        model = ShrinkageModel(
            fit,
            hierarchy,
            depth=self.depth,
            priors=self.priors,
            covariates=list(covariates),
            noise=self.noise,
            effect_scale=self.effect_scale,
        )
        idata = model.sample(
            self.sampler,
            draws=self.draws,
            tune=self.tune,
            chains=self.chains,
            random_seed=random_seed,
            progressbar=False,
            **self.sample_options,
        )
        return posterior_summary(idata)


def posterior_summary(idata: az.InferenceData) -> PosteriorSummary:
    """The :class:`PosteriorSummary` of a shrinkage fit: mean, sd, 95% HDI and lfsr of θ."""
    summary = coefficient_summary(idata, hdi_prob=0.95)
    return PosteriorSummary(
        mean=summary["mean"],
        sd=summary["sd"],
        lower=summary["hdi_lower"],
        upper=summary["hdi_upper"],
        lfsr=summary["lfsr"],
    )


StageTwoFit = Callable[[MLMFit, Hierarchy, Sequence[Any], int], PosteriorSummary]


def stage_one_posterior(
    fit: MLMFit,
    hierarchy: Hierarchy,
    covariates: Sequence[Any],
    random_seed: int,
) -> PosteriorSummary:
    """The unshrunk reference: θ ~ N(b, se²) from stage 1 alone (a stage-2 stand-in).

    Its intervals and lfsr are those of the stage-1 estimates (normal, not t), so the checks
    run with it measure how far stage 1's own assumptions hold on the data. ``hierarchy`` and
    ``random_seed`` are unused (the signature of a stage-2 fit).
    """
    return normal_posterior(
        fit.coef.sel(covariate=list(covariates)), fit.se.sel(covariate=list(covariates))
    )


def normal_posterior(mean: xr.DataArray, sd: xr.DataArray) -> PosteriorSummary:
    """The :class:`PosteriorSummary` of a normal posterior θ ~ N(mean, sd²).

    The interval is ``mean ± 1.96 sd`` and the lfsr ``Φ(−|mean| / sd)``.
    """
    return PosteriorSummary(
        mean=mean,
        sd=sd,
        lower=mean - Z_95 * sd,
        upper=mean + Z_95 * sd,
        lfsr=xr.apply_ufunc(stats.norm.sf, np.abs(mean / sd)),
    )


def predictive_coverage(
    b_b: np.ndarray,
    s_b: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    df_b: float | np.ndarray | None = None,
) -> np.ndarray:
    """Whether each of half B's estimates lies in half A's 95% predictive interval.

    The interval is ``mean ± q √(sd² + s_B²)``. Half B's standard error is itself estimated
    from ``ν_B = df_b`` residual degrees of freedom (``s_B² ~ σ_B² χ²_ν / ν``), so ``q`` is
    the 97.5% quantile of Student's t with the Welch–Satterthwaite degrees of freedom
    ``(sd² + s_B²)² / (s_B⁴ / ν_B)``; the posterior's ``sd`` is the model's own claim and is
    taken as exact. ``df_b=None`` uses the normal quantile 1.96 (``s_B`` known).

    Parameters
    ----------
    b_b, s_b
        Half B's estimates and standard errors.
    mean, sd
        Half A's posterior mean and sd of θ (arrays of one shape with ``b_b``).
    df_b
        Half B's residual degrees of freedom (a number, or an array broadcasting to
        ``b_b``), or ``None``.

    Returns
    -------
    numpy.ndarray
        Boolean, ``b_b``'s shape.
    """
    variance = sd * sd + s_b * s_b
    if df_b is None:
        quantile: float | np.ndarray = Z_95
    else:
        df_b = np.asarray(df_b, dtype=float)
        if np.any(df_b <= 0):
            raise ValueError("df_b, half B's residual degrees of freedom, must be positive.")
        quantile = stats.t.ppf(0.975, variance * variance / (s_b**4 / df_b))
    return np.abs(b_b - mean) <= quantile * np.sqrt(variance)


def clustered_coverage_se(covered: np.ndarray, clusters: np.ndarray) -> float:
    """Standard error of a coverage whose misses are correlated within clusters.

    Cluster-robust (ratio-estimator) standard error of the mean of ``covered``:
    ``√(G / (G − 1) Σ_g (S_g − c̄ n_g)²) / N``, with ``S_g`` the sum and ``n_g`` the number
    of cells of cluster g, ``c̄`` the overall mean, G clusters and N cells. With
    tree-structured noise a covariate's estimates in one annotation group share their
    errors, so their misses come together and the binomial standard error understates the
    uncertainty (``benchmarks/bench_calibration_diagnosis.py`` prints both). Correlation
    across clusters (noise shared by a whole category or all features) is not counted, so it
    is still a lower bound there.

    Parameters
    ----------
    covered
        Each cell's coverage (0/1, or a share over splits).
    clusters
        Each cell's cluster label, ``covered``'s shape.

    Returns
    -------
    float
        NaN with fewer than two clusters.
    """
    covered = np.asarray(covered, dtype=float).ravel()
    labels = np.asarray(clusters).ravel()
    if labels.size != covered.size:
        raise ValueError("covered and clusters must have the same number of cells.")
    codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)[1:]
    n_clusters = sizes.size
    if n_clusters < 2:
        return float("nan")
    sums = np.bincount(codes, weights=covered, minlength=n_clusters)
    residual = sums - covered.mean() * sizes
    return float(np.sqrt(n_clusters / (n_clusters - 1) * np.sum(residual**2)) / covered.size)


def split_half_scores(
    b_a: np.ndarray,
    b_b: np.ndarray,
    s_b: np.ndarray,
    mean: np.ndarray,
    sd: np.ndarray,
    lfsr: np.ndarray,
    df_b: float | np.ndarray | None = None,
) -> dict[str, float]:
    """Scores of half A's posterior against half B's independent estimates.

    Parameters
    ----------
    b_a
        Half A's stage-1 estimates.
    b_b, s_b
        Half B's estimates and standard errors.
    mean, sd, lfsr
        Half A's posterior mean, sd and lfsr of θ. All arrays have one shape.
    df_b
        Half B's residual degrees of freedom, for the predictive intervals' quantile
        (:func:`predictive_coverage`; ``None``: the normal 1.96).

    Returns
    -------
    dict
        ``coverage`` of the 95% predictive intervals; ``calls`` (lfsr < 0.05),
        ``checked_calls`` (of those, ``|b_B / s_B| > 3``), their ``sign_error_rate`` against B
        and ``claimed_lfsr`` (their mean lfsr; NaN without checked calls); ``mse`` and
        ``mse_raw`` (A's posterior mean and raw estimates, truth-free) and ``mse_gain``
        (``mse_raw / mse``).
    """
    shape = np.shape(b_b)
    arrays = [np.asarray(a, dtype=float).ravel() for a in (b_a, b_b, s_b, mean, sd, lfsr)]
    if len({a.size for a in arrays}) != 1:
        raise ValueError("the split-half arrays must all have the same number of values.")
    b_a, b_b, s_b, mean, sd, lfsr = arrays
    if df_b is not None:
        df_b = np.broadcast_to(np.asarray(df_b, dtype=float), shape).ravel()
    covered = predictive_coverage(b_b, s_b, mean, sd, df_b)
    calls = lfsr < LFSR_LEVEL
    checked = calls & (np.abs(b_b / s_b) > STRONG_Z)
    wrong = np.sign(mean[checked]) != np.sign(b_b[checked])
    noise = float(np.mean(s_b * s_b))
    mse = float(np.mean((b_b - mean) ** 2)) - noise
    mse_raw = float(np.mean((b_b - b_a) ** 2)) - noise
    return {
        "coverage": float(covered.mean()),
        "calls": int(calls.sum()),
        "checked_calls": int(checked.sum()),
        "sign_error_rate": float(wrong.mean()) if checked.any() else float("nan"),
        "claimed_lfsr": float(lfsr[checked].mean()) if checked.any() else float("nan"),
        "mse": mse,
        "mse_raw": mse_raw,
        "mse_gain": mse_raw / mse,
    }


def split_half_cells(
    Y: pd.DataFrame,
    X: pd.DataFrame,
    hierarchy: Hierarchy,
    *,
    stage_two: StageTwoFit | None = None,
    covariates: Sequence[Any] | None = None,
    n_splits: int = 6,
    random_seed: int = 0,
) -> pd.DataFrame:
    """Every estimate of every split of the split-half check (see the module docstring).

    Parameters are those of :func:`split_half_check`.

    Returns
    -------
    pandas.DataFrame
        One row per split, covariate and feature: ``split``, ``covariate``, ``feature``,
        ``group`` (the feature's finest annotation group; the feature itself where the tree
        places it in none), half A's ``b_a`` and ``s_a``, half B's ``b_b``, ``s_b`` and
        residual degrees of freedom ``df_b``, half A's posterior ``mean``, ``sd`` and
        ``lfsr``, and ``covered`` (:func:`predictive_coverage` with ``df_b``).
    """
    stage_two = StageTwo() if stage_two is None else stage_two
    covariates = list(X.columns) if covariates is None else list(covariates)
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits}.")
    n_obs = Y.shape[0]
    if X.shape[0] != n_obs:
        raise ValueError(f"Y has {n_obs} samples but X has {X.shape[0]}.")
    seeds = np.random.SeedSequence(random_seed).spawn(n_splits)
    frames = []
    for split, seed in enumerate(seeds):
        order = np.random.default_rng(seed).permutation(n_obs)
        half_a, half_b = np.sort(order[: n_obs // 2]), np.sort(order[n_obs // 2 :])
        fit_a = mlm(Y.iloc[half_a], X.iloc[half_a])
        fit_b = mlm(Y.iloc[half_b], X.iloc[half_b])
        posterior = stage_two(fit_a, hierarchy, covariates, int(seed.generate_state(1)[0]))

        features = posterior.mean["feature"].to_numpy()
        columns = {
            name: values.sel(covariate=covariates, feature=features).to_numpy()
            for name, values in (
                ("b_a", fit_a.coef),
                ("s_a", fit_a.se),
                ("b_b", fit_b.coef),
                ("s_b", fit_b.se),
                ("mean", posterior.mean),
                ("sd", posterior.sd),
                ("lfsr", posterior.lfsr),
            )
        }
        shape = columns["b_b"].shape
        columns["df_b"] = np.broadcast_to(_residual_df(fit_b, features), shape)
        columns["covered"] = predictive_coverage(
            columns["b_b"], columns["s_b"], columns["mean"], columns["sd"], columns["df_b"]
        )
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "covariate": np.repeat(np.asarray(covariates, dtype=object), shape[1]),
                    "feature": np.tile(features, shape[0]),
                    "group": np.tile(_finest_groups(hierarchy, features), shape[0]),
                    **{name: values.ravel() for name, values in columns.items()},
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def split_half_check(
    Y: pd.DataFrame,
    X: pd.DataFrame,
    hierarchy: Hierarchy,
    *,
    stage_two: StageTwoFit | None = None,
    covariates: Sequence[Any] | None = None,
    n_splits: int = 6,
    random_seed: int = 0,
) -> pd.DataFrame:
    """Split-half calibration check on real data (see the module docstring).

    Parameters
    ----------
    Y
        Responses, samples × features (cleaned, e.g. log-transformed).
    X
        Sample covariates, samples × covariates, without an intercept (one is added).
    hierarchy
        The features' annotation tree.
    stage_two
        The stage-2 fit (default: :class:`StageTwo` with its defaults).
    covariates
        Covariates checked (default: every column of X).
    n_splits
        Number of random splits.
    random_seed
        Seed of the splits and of the stage-2 fits.

    Returns
    -------
    pandas.DataFrame
        :func:`split_half_summary` of :func:`split_half_cells`.
    """
    return split_half_summary(
        split_half_cells(
            Y,
            X,
            hierarchy,
            stage_two=stage_two,
            covariates=covariates,
            n_splits=n_splits,
            random_seed=random_seed,
        )
    )


def split_half_summary(cells: pd.DataFrame) -> pd.DataFrame:
    """Scores of each split and their mean, from :func:`split_half_cells`.

    Parameters
    ----------
    cells
        The frame :func:`split_half_cells` returns.

    Returns
    -------
    pandas.DataFrame
        One row per split (index ``split`` 0, 1, …) and a ``"mean"`` row, columns as
        :func:`split_half_scores` returns (the ``mean`` row averages the rates and MSEs over
        splits, ``mse_gain`` is the ratio of the averaged MSEs), with half B's residual
        degrees of freedom in the intervals' quantile (:func:`predictive_coverage`), and
        ``coverage_se``: the coverage's standard error over clusters of covariate × finest
        annotation group (:func:`clustered_coverage_se`; in the ``mean`` row, of each
        estimate's coverage averaged over the splits).
    """
    rows = {}
    for split, frame in cells.groupby("split"):
        rows[split] = split_half_scores(
            *(frame[name].to_numpy() for name in ("b_a", "b_b", "s_b", "mean", "sd", "lfsr")),
            df_b=frame["df_b"].to_numpy(),
        )
        rows[split]["coverage_se"] = clustered_coverage_se(
            frame["covered"].to_numpy(), _clusters(frame)
        )
    result = _with_mean_row(pd.DataFrame.from_dict(rows, orient="index").rename_axis("split"))
    by_estimate = cells.groupby(["covariate", "feature"], sort=False)
    pooled = by_estimate.agg(covered=("covered", "mean"), group=("group", "first")).reset_index()
    result.loc["mean", "coverage_se"] = clustered_coverage_se(
        pooled["covered"].to_numpy(), _clusters(pooled)
    )
    return result


def _residual_df(fit: MLMFit, features: np.ndarray) -> np.ndarray:
    """The fit's residual degrees of freedom for ``features`` (per feature with missing rows)."""
    df = np.asarray(fit.df_resid, dtype=float)
    if df.ndim == 0:
        return np.full(features.size, float(df))
    return pd.Series(df, index=fit.coef.indexes["feature"]).loc[features].to_numpy()


def _finest_groups(hierarchy: Hierarchy, features: np.ndarray) -> np.ndarray:
    """Each feature's finest annotation group; the feature's own label where there is none."""
    position = hierarchy.features.get_indexer(features)
    groups = np.asarray(features, dtype=object).copy()
    if hierarchy.depth >= 1:
        placed = position >= 0
        labels = np.asarray(hierarchy.groups[0], dtype=object)
        groups[placed] = labels[hierarchy.membership(0)[position[placed]]]
    return groups


def _clusters(cells: pd.DataFrame) -> np.ndarray:
    """Cluster code of each row: its covariate × finest annotation group."""
    return cells.groupby(["covariate", "group"], sort=False).ngroup().to_numpy()


def known_truth_scores(
    truth: np.ndarray, b: np.ndarray, posterior: PosteriorSummary
) -> dict[str, float]:
    """Scores of a posterior against the true θ.

    Parameters
    ----------
    truth
        True θ, (covariate, feature) in the posterior's order.
    b
        Stage-1 estimates, same shape.
    posterior
        The posterior summary.

    Returns
    -------
    dict
        ``coverage`` of the true θ by the 95% intervals; ``calls`` (lfsr < 0.05), their
        ``false_sign_rate`` (posterior mean's sign differs from the truth's) and
        ``claimed_lfsr``; ``mse``, ``mse_raw`` and ``mse_gain``.
    """
    lower, upper = posterior.lower.to_numpy(), posterior.upper.to_numpy()
    mean, lfsr = posterior.mean.to_numpy(), posterior.lfsr.to_numpy()
    calls = lfsr < LFSR_LEVEL
    mse = float(np.mean((mean - truth) ** 2))
    mse_raw = float(np.mean((b - truth) ** 2))
    return {
        "coverage": float(np.mean((lower <= truth) & (truth <= upper))),
        "calls": int(calls.sum()),
        "false_sign_rate": float(np.mean(np.sign(mean[calls]) != np.sign(truth[calls])))
        if calls.any()
        else float("nan"),
        "claimed_lfsr": float(lfsr[calls].mean()) if calls.any() else float("nan"),
        "mse": mse,
        "mse_raw": mse_raw,
        "mse_gain": mse_raw / mse,
    }


def known_truth_check(
    X: pd.DataFrame,
    hierarchy: Hierarchy,
    covariance: np.ndarray,
    *,
    stage_two: StageTwoFit | None = None,
    group_sd: float | Sequence[float] = 0.3,
    feature_sd: float = 0.1,
    n_replicates: int = 3,
    random_seed: int = 0,
) -> pd.DataFrame:
    """Real noise, known truth: simulate ``Y = X B + E`` and score stage 2 against B.

    True effects of every covariate are the sum of group effects down the tree (at annotation
    level l, one ``N(0, group_sd[l]²)`` per group; level 0 is the finest) plus feature
    deviations (``N(0, feature_sd²)``); the intercept is 0. The true depth is therefore the
    number of levels up to the coarsest with a positive sd: ``group_sd=0`` is one global mean
    (depth 0), the default 0.3 class effects (depth 1), ``(0.1, 0.3)`` categories whose
    classes deviate from them (depth 2). E's rows are ``N(0, covariance)``. Stage 1 is fitted
    with an intercept.

    Parameters
    ----------
    X
        Real sample covariates, samples × covariates, without an intercept.
    hierarchy
        The features' tree (at least one level); its features are Y's.
    covariance
        Residual covariance, m × m, positive definite (e.g.
        :func:`bayeshier_pymc.validation_data.blended_residual_covariance`).
    stage_two
        The stage-2 fit (default: :class:`StageTwo`).
    group_sd
        Standard deviation of the group effects: one number for the finest level alone, or
        one per level from the finest (at most the tree's depth; zeros allowed).
    feature_sd
        Standard deviation of the features around their finest group's effect.
    n_replicates
        Number of simulated data sets.
    random_seed
        Seed of the simulation and of the stage-2 fits.

    Returns
    -------
    pandas.DataFrame
        One row per replicate and a ``"mean"`` row, columns as :func:`known_truth_scores`.
    """
    stage_two = StageTwo() if stage_two is None else stage_two
    m = hierarchy.n_features
    if hierarchy.depth < 1:
        raise ValueError("the known-truth check needs a hierarchy with at least one level.")
    level_sds = _level_sds(group_sd, hierarchy)
    if not (np.isfinite(feature_sd) and feature_sd >= 0):
        raise ValueError(f"feature_sd must be finite and non-negative; got {feature_sd}.")
    factor = covariance_factor(
        np.asarray(covariance, dtype=float), m, "covariance (one row per feature of the tree)"
    )
    covariates = list(X.columns)
    seeds = np.random.SeedSequence(random_seed).spawn(n_replicates)
    rows = {}
    for replicate, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        truth = sum(
            rng.normal(0.0, sd, size=(len(covariates), hierarchy.n_groups[level]))[
                :, hierarchy.membership(level)
            ]
            for level, sd in enumerate(level_sds)
        ) + rng.normal(0.0, feature_sd, (len(covariates), m))
        noise = rng.standard_normal((X.shape[0], m)) @ factor.T
        y = pd.DataFrame(X.to_numpy() @ truth + noise, index=X.index, columns=hierarchy.features)
        fit = mlm(y, X)
        posterior = stage_two(fit, hierarchy, covariates, int(seed.generate_state(1)[0]))
        order = hierarchy.features.get_indexer(posterior.mean["feature"].to_numpy())
        b = fit.coef.sel(covariate=covariates, feature=posterior.mean["feature"]).to_numpy()
        rows[replicate] = known_truth_scores(truth[:, order], b, posterior)
    return _with_mean_row(pd.DataFrame.from_dict(rows, orient="index").rename_axis("replicate"))


def _level_sds(group_sd: float | Sequence[float], hierarchy: Hierarchy) -> np.ndarray:
    """The known truth's group-effect sd at each level from the finest, checked."""
    level_sds = np.atleast_1d(np.asarray(group_sd, dtype=float))
    if level_sds.ndim != 1 or not 1 <= level_sds.size <= hierarchy.depth:
        raise ValueError(
            f"group_sd must be one number or one per annotation level from the finest (1 to "
            f"{hierarchy.depth} values for levels {list(hierarchy.levels)}); got {group_sd!r}."
        )
    if not (np.isfinite(level_sds).all() and (level_sds >= 0).all()):
        raise ValueError(f"group_sd must be finite and non-negative; got {group_sd!r}.")
    return level_sds


def _with_mean_row(frame: pd.DataFrame) -> pd.DataFrame:
    """Append the mean over rows; the gain of the mean row is the ratio of the mean MSEs."""
    mean = frame.mean(numeric_only=True)
    mean["mse_gain"] = mean["mse_raw"] / mean["mse"]
    result = pd.concat([frame.astype(float), mean.to_frame("mean").T])
    result.index.name = frame.index.name
    return result
