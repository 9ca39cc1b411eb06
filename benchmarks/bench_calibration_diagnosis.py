"""Why split-half coverage falls short: the figures of the analysis in ``docs/calibration.md``.

Run ``python benchmarks/bench_calibration_diagnosis.py [--data ../shared/data]``. For QMDiab
plasma and the liver lipidome (skipped with a message when their CSVs are absent), on the
split halves of :func:`bayeshier_pymc.calibration.split_half_cells` (by default the 6 splits,
seed, Gibbs engine and 4 chains × 1000 draws of the run of ``bench_calibration.py`` that
``docs/calibration.md`` includes, so the split-half cells, and the coverages, are that run's),
it prints:

* **coverage by quantile**: each model's split-half coverage with the check's Student-t
  quantile (``coverage``) and with the normal 1.96 (``coverage_normal``), its cluster-robust
  standard error over covariate × finest annotation group (``coverage_se``,
  :func:`~bayeshier_pymc.calibration.clustered_coverage_se`) and the binomial one over
  estimates (``binomial_se``);
* **worst clusters**: the covariate × finest-group clusters that make most of the structured
  model's shortfall from 95% at the deepest depth, with each model's coverage of them,
  their ``shortfall_share`` (their part of that model's shortfall), half A's and half B's mean
  ``z_a`` and ``z_b`` (b / se over the cluster's estimates and the splits) and the posterior
  mean's pull from half A's estimate towards 0 at that depth (``pull_to_0``, mean of
  sign(b_A) (b_A − μ) / s_A) and half B's mean estimate ``b_b`` (in the data's units); then for
  every model its shortfall, the part those clusters make and its coverage without them;
* **scales**: the posterior median of each covariate's scale τ by level at that depth on
  half A (the same fits), mean over splits;
* **coverage by group size**: each model's coverage by the size of the estimate's finest
  annotation group (depth 0 under tree noise against the deeper models);
* **noise check**: for each covariate and each finest group with at least 3 members, the
  difference of the group's mean estimate between the halves standardised by its standard
  deviation under the two halves' estimated tree noise (``tree``) and under independent
  noise (``independent``); root mean square by covariate and by group size (1 when the noise
  model is right);
* **moderated variances**: limma's prior degrees of freedom d₀ of the halves' residual
  variances (Smyth 2004, moments of the log variances), against a half's residual df, and
  how far moderation would move the standard errors (quantiles of moderated / raw se);
* **coverage by covariate**: each model's split-half coverage by covariate;
* **standard errors against the between-half spread**: b_B − b_A = e_B − e_A holds no θ, so
  z = (b_B − b_A) / √(s_A² + s_B²) measures whether stage 1's standard errors describe how
  its estimates really vary between independent halves. Per covariate, the root mean square
  of z over features and splits (``rms_z_``; 1 when they do, a little above with estimated
  standard errors: about √(ν / (ν − 2)) with ν the Welch degrees of freedom of s_A² + s_B²,
  1.003 on QMDiab's halves and 1.01 on the liver's) and stage 1's split-half coverage
  (``stage1_``: :func:`~bayeshier_pymc.calibration.predictive_coverage` of b_B by
  b_A ± t √(s_A² + s_B²) with half B's residual df, as the check's ``stage 1`` model), each
  with the plain standard errors of :func:`~bayeshier_pymc.mlm` (``plain``: the check's and
  the model's) and with heteroscedasticity-consistent ones (``HC2``, ``HC3``:
  :func:`heteroscedasticity_consistent_se`) in both halves. ``rms_z_se`` and ``stage1_se``
  are the standard errors of ``rms_z_plain`` and ``stage1_plain`` over the splits (sd of the
  per-split values / √splits): the features' errors are correlated, so the RMS of one split
  moves with the noise they share, which a standard error over features or groups would
  miss (b_B − b_A is a contrast of the samples' errors, and two random splits' contrasts are
  nearly orthogonal, so the splits are nearly independent draws of it). ``rms_z_centred`` is
  the RMS of the plain z less its mean over the features of each split and covariate
  (without the shift that a split's noise gives all features alike; below 1 by the share of
  the noise that all features share);
* **residual variance by sample group**: on stage 1 of the whole data set, the mean over
  features and the group's samples of the squared studentised residual
  e_ij² / (σ̂_j² (1 − h_ii)) (h the leverages; 1 when every group has the same residual
  variance), for each level of every binary covariate, the samples at 0 in every one of a
  categorical's 0/1 indicators (the liver's diagnoses: no steatosis, NASH or cirrhosis) and
  each third of every other covariate, with its standard error over the group's samples.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from bench_calibration import quiet_tables, real_data_parser, study_split_cells
from scipy import special

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    StageTwo,
    predictive_coverage,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.noise import tree_noise
from bayeshier_pymc.validation_data import (
    ValidationStudy,
    available_studies,
)

MODELS = [("structured", 0), ("structured", 1), ("structured", 2), ("independent", 0)]
NOISE_MODELS = {"structured": "auto", "independent": "independent"}
REFERENCE = ("structured", 2)
"""The model whose shortfall the worst clusters are ranked by (the default, full depth)."""
N_WORST = 5
GOAL = 0.95
SIZE_BANDS = [0, 1, 5, 10, 20, np.inf]
SIZE_LABELS = ["1", "2-5", "6-10", "11-20", "over 20"]
"""Bands of finest-group size."""
Halves = tuple[MLMFit, MLMFit, int]
"""Stage 1 on half A and on half B of a split, and the seed of stage 2 on half A."""
HCKind = Literal["HC2", "HC3"]
STANDARD_ERRORS: tuple[str, ...] = ("plain", "HC2", "HC3")
"""The standard errors compared: mlm's plain ones and the heteroscedasticity-consistent ones."""
N_THIRDS = 3


def main() -> None:
    """Print the diagnosis tables for every data set found."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=1000, chains=4)
    args = parser.parse_args()
    quiet_tables()
    print(
        f"stage 2: Gibbs engine, {args.chains} chains × {args.draws} draws after {args.draws} "
        f"tuning steps, package default priors; seed {args.seed}, {args.splits} splits (with "
        "the defaults, the cells of bench_calibration.py --sampler gibbs --draws 1000 --chains 4)"
    )
    for name, study in available_studies(args.data, args.datasets):
        print(
            f"\n{name}: {study.Y.shape[0]} samples × {study.Y.shape[1]} features, {study.hierarchy}"
        )
        start = time.perf_counter()
        stage_twos = {
            f"{noise[:5]}. {depth}": StageTwo(
                depth=depth,
                sampler="gibbs",
                noise=NOISE_MODELS[noise],
                draws=args.draws,
                tune=args.draws,
                chains=args.chains,
                effect_scale="raw",
            )
            for noise, depth in MODELS
        }
        stage_twos["stage 1"] = stage_one_posterior
        cells = {
            model: study_split_cells(study, stage_two, args)
            for model, stage_two in stage_twos.items()
        }
        print(f"  split halves of {len(cells)} models: {time.perf_counter() - start:.0f} s")
        reference = f"{REFERENCE[0][:5]}. {REFERENCE[1]}"
        print_coverage_by_quantile(name, cells)
        print_worst_clusters(name, cells, reference)
        print_coverage_by_group_size(name, cells)
        halves = list(half_fits(study, args.splits, args.seed))
        print_scales(name, study, halves, args.draws, args.chains)
        check_same_halves(halves, cells["stage 1"])
        print_noise_check(name, study, halves)
        print_moderated_variances(name, halves)
        print_coverage_by_covariate(name, cells)
        print_standard_error_spread(name, halves, list(study.X.columns))
        print_residual_variance_by_group(name, study)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


def print_coverage_by_quantile(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Coverage with the check's Student-t quantile and with 1.96, and both standard errors."""
    rows = {}
    for model, frame in cells.items():
        normal = predictive_coverage(*(frame[c].to_numpy() for c in ("b_b", "s_b", "mean", "sd")))
        coverage = frame["covered"].mean()
        estimates = frame.groupby(["covariate", "feature"]).ngroups
        rows[model] = {
            "coverage": coverage,
            "coverage_normal": normal.mean(),
            "coverage_se": split_half_summary(frame).loc["mean", "coverage_se"],
            "binomial_se": np.sqrt(coverage * (1 - coverage) / estimates),
        }
    print(f"{name}, split-half coverage (means over splits) by quantile, and its standard errors:")
    print(pd.DataFrame(rows).T.rename_axis("model").round(4).to_string(), flush=True)


def print_worst_clusters(name: str, cells: dict[str, pd.DataFrame], reference: str) -> None:
    """The clusters that make most of ``reference``'s shortfall, and coverage without them."""
    keys = ["covariate", "group"]
    n_cells = len(cells[reference])
    shortfall = {
        model: (GOAL - frame["covered"]).groupby([frame[k] for k in keys]).sum() / len(frame)
        for model, frame in cells.items()
    }
    worst = shortfall[reference].sort_values(ascending=False).index[:N_WORST]
    frame = cells[reference]
    sign = np.sign(frame["b_a"])
    described = frame.assign(
        z_a=frame["b_a"] / frame["s_a"],
        z_b=frame["b_b"] / frame["s_b"],
        pull_to_0=sign * (frame["b_a"] - frame["mean"]) / frame["s_a"],
    ).groupby(keys)
    table = pd.DataFrame(
        {
            "features": described.size() / frame["split"].nunique(),
            **{model: f.groupby(keys)["covered"].mean() for model, f in cells.items()},
            "shortfall_share": shortfall[reference] / (GOAL - frame["covered"].mean()),
            "z_a": described["z_a"].mean(),
            "z_b": described["z_b"].mean(),
            "b_b": described["b_b"].mean(),
            "pull_to_0": described["pull_to_0"].mean(),
        }
    ).loc[worst]
    print(
        f"{name}, the {N_WORST} clusters (covariate × finest group) that make most of the "
        f"shortfall of {reference} from {GOAL:.0%} ({n_cells} cells): coverage by model, "
        f"their share of {reference}'s shortfall, mean z in halves A and B, pull of the "
        f"posterior mean from b_A towards 0 at {reference} (in s_A):"
    )
    print(table.round(3).to_string())
    rows = {}
    for model, frame in cells.items():
        inside = pd.MultiIndex.from_frame(frame[keys]).isin(worst)
        rows[model] = {
            "coverage": frame["covered"].mean(),
            "shortfall": GOAL - frame["covered"].mean(),
            "worst_clusters_part": shortfall[model].loc[worst].sum(),
            "share_of_cells": inside.mean(),
            "coverage_without": frame.loc[~inside, "covered"].mean(),
        }
    print(f"{name}, each model's shortfall from {GOAL:.0%}, the part those clusters make:")
    print(pd.DataFrame(rows).T.rename_axis("model").round(4).to_string(), flush=True)


def print_coverage_by_group_size(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Each model's coverage by the size of the estimate's finest annotation group."""
    first = next(iter(cells.values()))
    one = first[(first["split"] == 0) & (first["covariate"] == first["covariate"].iloc[0])]
    sizes = one.groupby("group").size()
    table = pd.DataFrame(
        {
            model: frame["covered"]
            .groupby(
                pd.cut(frame["group"].map(sizes), SIZE_BANDS, labels=SIZE_LABELS), observed=True
            )
            .mean()
            for model, frame in cells.items()
        }
    )
    table["estimates"] = (
        first.groupby(
            pd.cut(first["group"].map(sizes), SIZE_BANDS, labels=SIZE_LABELS), observed=True
        ).size()
        / first["split"].nunique()
    )
    print(f"{name}, split-half coverage by size of the finest group (estimates: per split):")
    print(table.rename_axis("group size").round(3).to_string(), flush=True)


def print_scales(
    name: str, study: ValidationStudy, halves: list[Halves], draws: int, chains: int
) -> None:
    """Posterior median of each covariate's scale τ by level at the reference model, half A.

    The fits are those of the split-half cells of the reference model (the same half, settings
    and seed), mean over splits.
    """
    noise, depth = REFERENCE
    medians = []
    for fit_a, _, fit_seed in halves:
        idata = ShrinkageModel(
            fit_a, study.hierarchy, depth=depth, noise=NOISE_MODELS[noise], effect_scale="raw"
        ).sample(
            "gibbs", draws=draws, tune=draws, chains=chains, random_seed=fit_seed, progressbar=False
        )
        medians.append(idata.posterior["tau"].median(("chain", "draw")).to_pandas())
    table = sum(medians) / len(medians)
    print(
        f"{name}, posterior median of the scales τ at {noise} {depth} on half A (mean over "
        "splits; columns: level, finest first):"
    )
    print(table.round(3).to_string(), flush=True)


def print_noise_check(name: str, study: ValidationStudy, halves: list[Halves]) -> None:
    """RMS of standardised group-mean differences between halves, tree vs independent noise."""
    rows = []
    for fit_a, fit_b, _ in halves:
        features = fit_a.coef.indexes["feature"]
        noise_a = tree_noise(fit_a, study.hierarchy).align(features)
        noise_b = tree_noise(fit_b, study.hierarchy).align(features)
        codes = noise_a.hierarchy.membership(0)
        for covariate in study.X.columns:
            difference = (fit_a.coef - fit_b.coef).sel(covariate=covariate).to_numpy()
            tree = noise_a.covariance(covariate) + noise_b.covariance(covariate)
            independent = (fit_a.se**2 + fit_b.se**2).sel(covariate=covariate).to_numpy()
            for code in np.unique(codes[codes >= 0]):
                size = np.sum(codes == code)
                if size < 3:
                    continue
                weights = (codes == code) / size
                mean_difference = weights @ difference
                rows.append(
                    {
                        "covariate": covariate,
                        "size": size,
                        "tree": mean_difference / np.sqrt(weights @ tree @ weights),
                        "independent": mean_difference / np.sqrt(weights**2 @ independent),
                    }
                )
    frame = pd.DataFrame(rows)
    frame["group size"] = pd.cut(frame["size"], SIZE_BANDS, labels=SIZE_LABELS)

    def rms(by: str) -> pd.DataFrame:
        grouped = frame.groupby(by, observed=True)
        table = grouped[["tree", "independent"]].agg(lambda z: np.sqrt(np.mean(z**2)))
        return table.assign(groups=grouped.size() / len(halves))

    print(
        f"{name}, noise check: RMS of the standardised difference of a finest group's mean "
        "estimate between halves (1 if the noise model is right; groups ≥ 3 members, "
        "groups: per split):"
    )
    overall = pd.DataFrame(
        {
            "tree": [np.sqrt(np.mean(frame["tree"] ** 2))],
            "independent": [np.sqrt(np.mean(frame["independent"] ** 2))],
            "groups": [len(frame) / len(halves)],
        },
        index=["all"],
    )
    print(pd.concat([rms("covariate"), rms("group size"), overall]).round(2).to_string())


def print_moderated_variances(name: str, halves: list[Halves]) -> None:
    """limma's prior df of the halves' residual variances and the se moderation would give."""
    rows = {}
    for split, (fit_a, fit_b, _) in enumerate(halves):
        for half, fit in zip("AB", (fit_a, fit_b), strict=True):
            variances = fit.sigma.to_numpy()
            df = float(fit.df_resid)
            prior_df, prior_variance = limma_prior(variances, df)
            moderated = (prior_df * prior_variance + df * variances) / (prior_df + df)
            ratio = np.sqrt(moderated / variances)
            rows[(split, half)] = {
                "residual_df": df,
                "prior_df": prior_df,
                "se_ratio_5%": np.quantile(ratio, 0.05),
                "se_ratio_50%": np.quantile(ratio, 0.5),
                "se_ratio_95%": np.quantile(ratio, 0.95),
            }
    table = pd.DataFrame(rows).T
    print(
        f"{name}, limma's prior df of the halves' residual variances (mean over "
        f"{len(table)} halves) and quantiles over features of moderated / raw se:"
    )
    print(table.mean().to_frame("mean").T.round(3).to_string(index=False), flush=True)


def heteroscedasticity_consistent_se(
    x: np.ndarray, residuals: np.ndarray, kind: HCKind
) -> np.ndarray:
    """HC2 or HC3 standard errors of every feature's least-squares coefficients.

    For b = (X'X)⁻¹X'y with a = X(X'X)⁻¹ (n × p) and leverages h_ii, the variance of b_kj is
    Σ_i a_ik² e_ij² / (1 − h_ii) (HC2, MacKinnon & White 1985) or / (1 − h_ii)² (HC3),
    computed for all features at once from X = QR: a = Q R⁻ᵀ and h_ii = Σ_k Q_ik².

    Parameters
    ----------
    x
        The design, n × p, with its intercept column (``fit.X`` of :func:`~bayeshier_pymc.mlm`).
    residuals
        The least-squares residuals, n × m (one column per feature).
    kind
        ``"HC2"`` or ``"HC3"``.

    Returns
    -------
    numpy.ndarray
        Standard errors, p × m (covariates × features, as ``fit.se``).
    """
    powers = {"HC2": 1, "HC3": 2}
    if kind not in powers:
        raise ValueError(f"kind must be one of {sorted(powers)}, got {kind!r}.")
    x = np.asarray(x, dtype=float)
    residuals = np.asarray(residuals, dtype=float)
    if x.ndim != 2 or residuals.ndim != 2 or x.shape[0] != residuals.shape[0]:
        raise ValueError(
            f"x (n × p) and residuals (n × m) must share their rows, got {x.shape} and "
            f"{residuals.shape}."
        )
    q, r = np.linalg.qr(x)
    weights = np.linalg.solve(r, q.T).T  # a = X (X'X)⁻¹ = Q R⁻ᵀ
    leverage = leverages(x)
    if np.any(leverage >= 1 - 1e-12):
        raise ValueError("a sample has leverage 1: its residual is 0 and HC2/HC3 are undefined.")
    scaled = residuals**2 / (1 - leverage[:, None]) ** powers[kind]
    return np.sqrt((weights**2).T @ scaled)


def leverages(x: np.ndarray) -> np.ndarray:
    """The diagonal h_ii of the hat matrix X(X'X)⁻¹X' (row sums of Q² for X = QR)."""
    q = np.linalg.qr(x)[0]
    return np.einsum("ik,ik->i", q, q)


def standard_errors(fit: MLMFit, kind: str) -> xr.DataArray:
    """``fit``'s plain standard errors, or its HC2 or HC3 ones, labelled as ``fit.se``."""
    if kind == "plain":
        return fit.se
    values = heteroscedasticity_consistent_se(
        fit.X.to_numpy(), fit.residuals.transpose("sample", "feature").to_numpy(), kind
    )
    return fit.se.copy(data=values)


def print_coverage_by_covariate(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Each model's split-half coverage by covariate."""
    table = pd.DataFrame(
        {model: frame.groupby("covariate")["covered"].mean() for model, frame in cells.items()}
    )
    print(f"{name}, split-half coverage by covariate:")
    print(table.round(3).to_string(), flush=True)


def print_standard_error_spread(name: str, halves: list[Halves], covariates: list[str]) -> None:
    """RMS of the standardised between-half difference, and stage 1's coverage, per se kind."""
    frames = []
    for split, (fit_a, fit_b, _) in enumerate(halves):
        columns = {}
        for kind in STANDARD_ERRORS:
            s_a, s_b = standard_errors(fit_a, kind), standard_errors(fit_b, kind)
            b_a, b_b = fit_a.coef, fit_b.coef
            columns[f"z_{kind}"] = ((b_b - b_a) / np.sqrt(s_a**2 + s_b**2)).to_series()
            covered = predictive_coverage(
                b_b.to_numpy(), s_b.to_numpy(), b_a.to_numpy(), s_a.to_numpy(), fit_b.df_resid
            )
            columns[f"stage1_{kind}"] = b_a.copy(data=covered).to_series()
        frames.append(pd.DataFrame(columns).assign(split=split))
    frame = pd.concat(frames).reset_index()
    frame["z_centred"] = frame["z_plain"] - frame.groupby(["split", "covariate"])[
        "z_plain"
    ].transform("mean")
    frame = frame[frame["covariate"].isin(covariates)]

    def summary(part: pd.DataFrame) -> pd.Series:
        by_split = part.groupby("split")
        return pd.Series(
            {
                **{
                    f"rms_z_{kind}": np.sqrt(np.mean(part[f"z_{kind}"] ** 2))
                    for kind in STANDARD_ERRORS
                },
                "rms_z_se": standard_error_over_splits(
                    by_split["z_plain"].agg(lambda z: np.sqrt(np.mean(z**2)))
                ),
                "rms_z_centred": np.sqrt(np.mean(part["z_centred"] ** 2)),
                **{f"stage1_{kind}": part[f"stage1_{kind}"].mean() for kind in STANDARD_ERRORS},
                "stage1_se": standard_error_over_splits(by_split["stage1_plain"].mean()),
            }
        )

    table = pd.DataFrame(
        {
            **{covariate: summary(part) for covariate, part in frame.groupby("covariate")},
            "all": summary(frame),
        }
    ).T
    print(
        f"{name}, standard errors against the between-half spread: RMS of z = (b_B − b_A) / "
        "√(s_A² + s_B²) (1 if the standard errors describe the spread) and stage 1's "
        "split-half coverage, with plain, HC2 and HC3 standard errors in both halves:"
    )
    print(table.round(4).to_string(), flush=True)


def standard_error_over_splits(per_split: pd.Series) -> float:
    """Standard error of a mean over splits from its per-split values (sd / √splits)."""
    return float(per_split.std(ddof=1) / np.sqrt(per_split.size))


def print_residual_variance_by_group(name: str, study: ValidationStudy) -> None:
    """Mean squared studentised residual by sample group, on stage 1 of the whole data set."""
    fit = mlm(study.Y, study.X)
    leverage = leverages(fit.X.to_numpy())
    residuals = fit.residuals.transpose("sample", "feature").to_numpy()
    variances = fit.sigma.to_numpy()
    studentised = residuals**2 / (variances[None, :] * (1 - leverage[:, None]))
    per_sample = pd.Series(studentised.mean(axis=1), index=study.X.index)
    rows = {}
    binary = [c for c in study.X.columns if study.X[c].nunique() == 2]
    for covariate in binary:
        for level, part in per_sample.groupby(study.X[covariate].round(3)):
            rows[f"{covariate} = {level:g}"] = part
    indicators = exclusive_indicators(study.X[binary])
    if indicators:
        reference = (study.X[indicators] == 0).all(axis=1)
        rows[f"{', '.join(indicators)} all 0"] = per_sample[reference]
    for covariate in (c for c in study.X.columns if c not in binary):
        thirds = pd.qcut(study.X[covariate], N_THIRDS, labels=["low", "middle", "high"])
        for label, part in per_sample.groupby(thirds, observed=True):
            rows[f"{covariate}, {label} third"] = part
    table = pd.DataFrame(
        {
            label: {
                "samples": part.size,
                "mean_sq": part.mean(),
                "se": part.std(ddof=1) / np.sqrt(part.size),
            }
            for label, part in rows.items()
        }
    ).T
    print(
        f"{name}, residual variance by sample group: mean squared studentised residual of "
        "stage 1 on the whole data set (1 if the residual variance is the same in every "
        "group; se over the group's samples):"
    )
    print(table.rename_axis("group").round(3).to_string(), flush=True)


def exclusive_indicators(binary: pd.DataFrame) -> list[str]:
    """The dummies of a categorical covariate: 0/1 columns no sample has two of at 1.

    The largest such set of two or more columns (the first in column order), or none.
    """
    zero_one = [c for c in binary.columns if set(binary[c].unique()) <= {0, 1}]
    together = binary[zero_one].T @ binary[zero_one]
    for size in range(len(zero_one), 1, -1):
        for columns in itertools.combinations(zero_one, size):
            if all(together.loc[a, b] == 0 for a, b in itertools.combinations(columns, 2)):
                return list(columns)
    return []


def limma_prior(variances: np.ndarray, df: float) -> tuple[float, float]:
    """limma's prior df and variance of residual variances (moments of the log variances).

    Smyth (2004), ``fitFDist``: with e = log s² − ψ(df/2) + log(df/2), the prior df d₀ solves
    ψ'(d₀/2) = Var(e) − ψ'(df/2) and the prior variance is exp(mean(e) + ψ(d₀/2) − log(d₀/2));
    d₀ is infinite when Var(e) ≤ ψ'(df/2) (the variances differ no more than sampling does).
    """
    e = np.log(variances) - special.digamma(df / 2) + np.log(df / 2)
    excess = np.var(e, ddof=1) - special.polygamma(1, df / 2)
    if excess <= 0:
        return np.inf, float(np.exp(e.mean()))
    prior_df = 2 * trigamma_inverse(excess)
    prior_variance = np.exp(e.mean() + special.digamma(prior_df / 2) - np.log(prior_df / 2))
    return float(prior_df), float(prior_variance)


def trigamma_inverse(x: float) -> float:
    """The y with ψ'(y) = x (Newton's iteration of limma's ``trigammaInverse``)."""
    y = 0.5 + 1 / x
    for _ in range(50):
        trigamma = special.polygamma(1, y)
        step = trigamma * (1 - trigamma / x) / special.polygamma(2, y)
        y += step
        if -step / y < 1e-8:
            break
    return float(y)


def half_fits(study: ValidationStudy, n_splits: int, seed: int) -> Iterator[Halves]:
    """Stage 1 on each split's halves and stage 2's seed, as :func:`split_half_cells` has them."""
    n_obs = study.Y.shape[0]
    for split_seed in np.random.SeedSequence(seed).spawn(n_splits):
        order = np.random.default_rng(split_seed).permutation(n_obs)
        half_a, half_b = np.sort(order[: n_obs // 2]), np.sort(order[n_obs // 2 :])
        yield (
            mlm(study.Y.iloc[half_a], study.X.iloc[half_a]),
            mlm(study.Y.iloc[half_b], study.X.iloc[half_b]),
            int(split_seed.generate_state(1)[0]),
        )


def check_same_halves(halves: list[Halves], cells: pd.DataFrame) -> None:
    """Refuse to go on if ``halves`` are not those of the :func:`split_half_cells` ``cells``."""
    for split, (fit_a, _, _) in enumerate(halves):
        frame = cells[cells["split"] == split]
        cell_index = pd.MultiIndex.from_frame(frame[["covariate", "feature"]])
        estimates = fit_a.coef.to_series().reindex(cell_index)
        if not np.allclose(estimates.to_numpy(), frame["b_a"].to_numpy()):
            raise RuntimeError(f"split {split}: these halves are not split_half_cells' halves")


if __name__ == "__main__":
    main()
