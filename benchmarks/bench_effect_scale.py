"""Effects exchangeable in Y's units or in each metabolite's residual SD, on real data.

Run ``python benchmarks/bench_effect_scale.py [--data ../shared/data] [--splits 24]``. Stage 2
is :class:`bayeshier_pymc.calibration.StageTwo` with the package's tree-structured noise and
default priors, in two units (``effect_scale``): ``raw``, the stage-1 fit as given (the
effects θ_kj exchangeable within the tree in Y's units), and ``residual_sd``, the fit of
:meth:`~bayeshier_pymc.mlm.MLMFit.standardized` (θ_kj / σ_j exchangeable, σ_j feature j's
residual SD: ashr's exchangeable z-scores, ``alpha = 1``), whose posterior is multiplied back
by σ_j so that both are scored in Y's units. Depths 0, 1 and 2; the Gibbs engine, 4 chains ×
1000 draws after 1000 tuning steps, seed 0, 24 splits (the first six are those of
``bench_calibration.py``'s six, so its ``structured`` rows are this run's ``raw`` rows on
them) and 3 known-truth replicates.

For QMDiab plasma and the liver lipidome (skipped with a message when their CSVs are absent)
it prints:

* **split halves**, per depth and unit: 95% predictive ``coverage`` of the other half's
  estimates (goal 93–97%) with its cluster-robust ``coverage_se``, ``calls`` (lfsr < 0.05),
  ``checked_calls`` (of those, the other half's |z| > 3), their ``sign_error_rate`` against
  their mean lfsr ``claimed_lfsr`` (goal ≤ 2×), the truth-free coefficient ``mse_gain`` over
  stage 1, and the paired differences from ``raw`` at the same depth on the same cells
  (``coverage_minus_raw``, ``mse_minus_raw`` with their standard errors over clusters of
  covariate × finest group, ``se_coverage_diff`` and ``se_mse_diff``); ``stage 1`` scores the
  unshrunk estimates;
* the split-half coverage by covariate, by band of half A's |b / se| and by fifth of half A's
  standard error relative to its covariate's median (``se_fifth``: 0 the smallest; a model
  whose feature scale is too small for features with large residual variance covers those
  least), then the clusters that make most of ``raw``'s shortfall at depth 2;
* **real noise, known truth** (:func:`~bayeshier_pymc.calibration.known_truth_check`): the
  data set's design and residual covariance, true effects = class effects (sd 0.3) + feature
  deviations (sd 0.1) in Y's units, so the ``raw`` model is the true one: coverage of the
  true θ, ``false_sign_rate`` against ``claimed_lfsr``, MSE gain over stage 1;
* **the depth recommended** for ``residual_sd`` on the whole data set by
  :func:`~bayeshier_pymc.compare_fits` (the fresh replicate, the default, and PSIS-LOO),
  with that depth's split-half MSE gain;
* **PSIS-LOO across units**: the elpd of both models on the whole data set at each depth, per
  covariate and in all, both in Y's units (the ``residual_sd`` model's pointwise
  log-likelihood of b_kj / σ̂_j minus log σ̂_j, the Jacobian), with ``residual_sd_minus_raw``
  and its standard error over the estimates; the split-half ``mse_gain`` of each covariate in
  each unit beside it (depth 2), to read whether the elpd ranks the units as their accuracy
  does.

The output ends with the machine's load average.
"""

from __future__ import annotations

import os
import time

import arviz as az
import numpy as np
import pandas as pd
from bench_calibration import (
    print_coverage_breakdown,
    print_recommendations,
    print_study,
    quiet_tables,
    real_data_parser,
    study_split_cells,
    whole_data_sampling,
)
from bench_calibration_diagnosis import print_worst_clusters
from bench_heavy_tailed_groups import known_truth_rows, paired_differences

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    StageTwo,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.mlm import EFFECT_SCALES, MLMFit
from bayeshier_pymc.validation_data import ValidationStudy, available_studies

DEPTHS = (0, 1, 2)
REFERENCE_SCALE = "raw"
STAGE_ONE = "stage 1"
SE_FIFTHS = 5


def main() -> None:
    """Run the checks in both units on every data set found."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=1000, chains=4)
    parser.set_defaults(splits=24)
    parser.add_argument("--replicates", type=int, default=3)
    args = parser.parse_args()
    quiet_tables(width=250)
    print(
        f"stage 2: Gibbs engine, tree-structured noise, default priors, {args.chains} chains × "
        f"{args.draws} draws after {args.draws} tuning steps, effects exchangeable in "
        f"{list(EFFECT_SCALES)} units; seed {args.seed}, {args.splits} splits, "
        f"{args.replicates} known-truth replicates"
    )
    for name, study in available_studies(args.data, args.datasets):
        print_study(name, study)
        stage_twos = {
            (scale, depth): StageTwo(
                depth=depth,
                sampler="gibbs",
                effect_scale=scale,
                draws=args.draws,
                tune=args.draws,
                chains=args.chains,
            )
            for depth in DEPTHS
            for scale in EFFECT_SCALES
        }
        cells = {}
        for key, stage_two in [*stage_twos.items(), ((STAGE_ONE, ""), stage_one_posterior)]:
            start = time.perf_counter()
            cells[key] = study_split_cells(study, stage_two, args)
            print(f"  {key[0]} {key[1]}: split halves {time.perf_counter() - start:.0f} s")
        split_table = print_split_halves(name, cells, args.splits)
        labelled = {_label(key): frame for key, frame in cells.items()}
        print_coverage_breakdown(name, labelled)
        print_coverage_by_se(name, labelled)
        print_worst_clusters(name, labelled, _label((REFERENCE_SCALE, DEPTHS[-1])))
        if args.replicates > 0:
            print_known_truth(name, study, stage_twos, args.replicates, args.seed)
        fit = mlm(study.Y, study.X)
        fits = {
            (scale, depth): ShrinkageModel(
                fit, study.hierarchy, depth=depth, effect_scale=scale
            ).sample("gibbs", **whole_data_sampling(args))
            for scale in EFFECT_SCALES
            for depth in DEPTHS
        }
        print_recommendations(
            f"{name}, residual_sd",
            compare_fits({depth: fits[("residual_sd", depth)] for depth in DEPTHS}),
            split_table.loc["residual_sd"],
        )
        print_loo_by_unit(name, fits, fit, cells)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


def _label(key: tuple[str, object]) -> str:
    return STAGE_ONE if key[0] == STAGE_ONE else f"{key[0]} {key[1]}"


def print_split_halves(
    name: str, cells: dict[tuple[str, object], pd.DataFrame], n_splits: int
) -> pd.DataFrame:
    """The split-half table with each unit's paired differences from ``raw``; returned."""
    table = pd.DataFrame(
        {key: split_half_summary(frame).loc["mean", SPLIT_COLUMNS] for key, frame in cells.items()}
    ).T
    for (scale, depth), frame in cells.items():
        if scale != STAGE_ONE:
            reference = cells[(REFERENCE_SCALE, depth)]
            differences = paired_differences(frame, reference, REFERENCE_SCALE)
            for column, value in differences.items():
                table.loc[(scale, depth), column] = value
    table.index = table.index.set_names(["effect_scale", "depth"])
    print(
        f"{name}, split halves ({n_splits} splits, means; differences from raw at the same "
        "depth on the same cells, standard errors over clusters):"
    )
    print(table.round(4).to_string(), flush=True)
    return table


def print_coverage_by_se(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Split-half coverage by fifth of s_A relative to its covariate's median in the split."""
    columns = {}
    for label, frame in cells.items():
        relative = frame["s_a"] / frame.groupby(["split", "covariate"])["s_a"].transform("median")
        fifth = pd.qcut(relative, SE_FIFTHS, labels=False)
        columns[label] = frame["covered"].groupby(fifth.rename("se_fifth")).mean()
    table = pd.DataFrame(columns)
    print(
        f"{name}, split-half coverage by fifth of s_A / its covariate's median "
        "(0: the smallest standard errors):"
    )
    print(table.round(3).to_string(), flush=True)


def print_loo_by_unit(
    name: str,
    fits: dict[tuple[str, int], az.InferenceData],
    fit: MLMFit,
    cells: dict[tuple[str, object], pd.DataFrame],
) -> None:
    """PSIS-LOO elpd of both units in Y's units, per covariate, beside their split-half gain."""
    log_sd = np.log(fit.residual_sd)
    rows = {}
    for (scale, depth), idata in fits.items():
        pointwise = idata.log_likelihood["b_marginal"]
        if scale == "residual_sd":
            pointwise = pointwise - log_sd  # the Jacobian of b ↦ b / σ̂
        in_y_units = az.InferenceData(
            posterior=idata.posterior, log_likelihood=pointwise.to_dataset(name="b")
        )
        loo = az.loo(in_y_units, pointwise=True)
        rows[(scale, depth)] = loo.loo_i
    table = {}
    for depth in DEPTHS:
        raw, standardized = rows[("raw", depth)], rows[("residual_sd", depth)]
        difference = (standardized - raw).stack(cell=["covariate", "feature"])
        by_covariate = difference.groupby("covariate")
        table[depth] = pd.DataFrame(
            {
                "raw": raw.sum("feature").to_series(),
                "residual_sd": standardized.sum("feature").to_series(),
                "residual_sd_minus_raw": by_covariate.sum().to_series(),
                "se": (by_covariate.var(ddof=1) * by_covariate.count()).to_series() ** 0.5,
            }
        )
        table[depth].loc["all"] = [
            float(raw.sum()),
            float(standardized.sum()),
            float(difference.sum()),
            float(difference.var(ddof=1) * difference.size) ** 0.5,
        ]
    frame = pd.concat(table, names=["depth", "covariate"])
    gains = {}
    for scale in EFFECT_SCALES:
        cell = cells[(scale, DEPTHS[-1])]
        noise = (cell["s_b"] ** 2).groupby(cell["covariate"]).mean()
        squared = ((cell["b_b"] - cell["mean"]) ** 2).groupby(cell["covariate"]).mean()
        unshrunk = ((cell["b_b"] - cell["b_a"]) ** 2).groupby(cell["covariate"]).mean()
        gains[f"mse_gain_{scale}"] = (unshrunk - noise) / (squared - noise)
    print(
        f"{name}, PSIS-LOO elpd on the whole data set in Y's units (residual_sd: with the "
        f"Jacobian), and each covariate's split-half MSE gain at depth {DEPTHS[-1]}:"
    )
    print(frame.round(1).to_string(), flush=True)
    print(pd.DataFrame(gains).round(3).to_string(), flush=True)


def print_known_truth(
    name: str,
    study: ValidationStudy,
    stage_twos: dict[tuple[str, int], StageTwo],
    n_replicates: int,
    seed: int,
) -> None:
    """The known-truth check of every model on the data set's design and residual covariance."""
    table = known_truth_rows(
        study, {_label(key): fit for key, fit in stage_twos.items()}, n_replicates, seed
    )
    table.index = pd.MultiIndex.from_tuples(list(stage_twos), names=["effect_scale", "depth"])
    print(f"{name}, real noise with a known truth in Y's units ({n_replicates} replicates, means):")
    print(table.round(4).to_string(), flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
