"""The heavy-tailed group prior against the normal one, measured with the package itself.

Run ``python benchmarks/bench_heavy_tailed_groups.py [--data ../shared/data]``. Stage 2 is
:class:`bayeshier_pymc.calibration.StageTwo` with the package's tree-structured noise
(``noise="auto"``) and default priors except ``priors={"group_prior": prior}``, each of
``normal`` (the default), ``student_t`` (3 degrees of freedom) and ``horseshoe``
(``docs/model.md``, "Heavy-tailed group effects"), at depths 1 and 2 (depth 0 has no group
effects, so the group prior changes nothing there). By default the Gibbs engine, 4 chains ×
1000 draws after 1000 tuning steps, seed 0, 6 splits and 3 replicates: the settings of the
run of ``bench_calibration.py`` in ``docs/benchmarks/calibration_compare.txt``, so the
``normal`` rows repeat that run's ``structured`` rows at depths 1 and 2.

For QMDiab plasma and the liver lipidome (skipped with a message when their CSVs are absent)
it prints:

* **split halves** (:func:`~bayeshier_pymc.calibration.split_half_cells` and
  :func:`~bayeshier_pymc.calibration.split_half_summary`), per depth and prior: 95%
  predictive ``coverage`` of the other half's estimates (goal 93–97%) with its cluster-robust
  ``coverage_se``, ``calls`` (lfsr < 0.05), ``checked_calls`` (of those, the other half's
  |z| > 3), their ``sign_error_rate`` against their mean lfsr ``claimed_lfsr`` (goal ≤ 2×),
  the truth-free coefficient ``mse_gain`` over stage 1; and the paired differences from the
  normal prior at the same depth on the same splits, ``coverage_minus_normal`` and
  ``mse_minus_normal`` (coefficient MSE), each with its standard error over clusters of
  covariate × finest annotation group (``se_coverage_diff``, ``se_mse_diff``: the estimates'
  differences averaged over the splits, :func:`paired_differences`); a last row,
  ``stage 1``, scores the unshrunk estimates;
* the coverage of every model by covariate and by band of half A's |b / se|
  (``bench_calibration.py``'s breakdown), then the clusters (covariate × finest group) that
  make most of the normal prior's shortfall from 95% at depth 2, with every model's coverage
  of them (``bench_calibration_diagnosis.py``'s table);
* **real noise, known truth** (:func:`~bayeshier_pymc.calibration.known_truth_check`): the
  data set's design and residual covariance 0.8 S + 0.2 diag S, true effects = class effects
  (sd 0.3) + feature deviations (sd 0.1), so normal group effects; coverage of the true θ
  (goal 93–97%), ``false_sign_rate`` of the lfsr < 0.05 calls against their
  ``claimed_lfsr`` (goal ≤ 2×) and the MSE gain over stage 1, means over replicates;
* **convergence of the default sampler**: :meth:`~bayeshier_pymc.ShrinkageModel.sample`
  with its defaults (NUTS) on the whole data set at depth 2 under each heavy-tailed prior:
  divergent transitions, the largest rank r̂ and the smallest bulk ESS of the scales τ and of
  the groups' local scales λ (every level), the largest r̂ of θ, and the wall time (``--no-nuts``
  leaves it out).

The output ends with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import time

import arviz as az
import pandas as pd
from bench_calibration import (
    print_coverage_breakdown,
    print_study,
    quiet_tables,
    real_data_parser,
    study_split_cells,
)
from bench_calibration_diagnosis import print_worst_clusters

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    TRUTH_COLUMNS,
    StageTwo,
    StageTwoFit,
    clustered_coverage_se,
    known_truth_check,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.model import local_scale_name
from bayeshier_pymc.priors import GROUP_PRIORS
from bayeshier_pymc.validation_data import (
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

DEPTHS = (1, 2)
REFERENCE_PRIOR = "normal"
STAGE_ONE = "stage 1"
NUTS_DEPTH = 2


def main() -> None:
    """Run the checks on every data set found, then the default sampler's convergence."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=1000, chains=4)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--nuts", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    quiet_tables(width=250)
    print(
        f"stage 2: Gibbs engine, tree-structured noise, {args.chains} chains × {args.draws} "
        f"draws after {args.draws} tuning steps, default priors with group_prior one of "
        f"{list(GROUP_PRIORS)} (student_t: 3 df); seed {args.seed}, {args.splits} splits, "
        f"{args.replicates} known-truth replicates"
    )
    print(
        "depth 0 (one global mean) has no group effects, so the group prior changes nothing "
        "there: not fitted"
    )
    studies = list(available_studies(args.data, args.datasets))
    for name, study in studies:
        print_study(name, study)
        stage_twos = {
            f"{prior} {depth}": StageTwo(
                depth=depth,
                sampler="gibbs",
                noise="auto",
                effect_scale="raw",
                draws=args.draws,
                tune=args.draws,
                chains=args.chains,
                priors={"group_prior": prior},
            )
            for depth in DEPTHS
            for prior in GROUP_PRIORS
        }
        stage_twos[STAGE_ONE] = stage_one_posterior
        cells = {}
        for label, stage_two in stage_twos.items():
            start = time.perf_counter()
            cells[label] = study_split_cells(study, stage_two, args)
            print(f"  {label}: split halves {time.perf_counter() - start:.0f} s", flush=True)
        print_split_halves(name, cells, args.splits)
        print_coverage_breakdown(name, cells)
        print_worst_clusters(name, cells, f"{REFERENCE_PRIOR} {DEPTHS[-1]}")
        if args.replicates > 0:
            print_known_truth(name, study, stage_twos, args.replicates, args.seed)
    if args.nuts and studies:
        print_nuts_convergence(studies, args.seed)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


def _index(labels: list[str]) -> pd.MultiIndex:
    """(depth, prior) of each model label ``"<prior> <depth>"``; stage 1 as ``("", "stage 1")``."""
    pairs = [
        ("", label) if label == STAGE_ONE else (label.split()[1], label.split()[0])
        for label in labels
    ]
    return pd.MultiIndex.from_tuples(pairs, names=["depth", "prior"])


def print_split_halves(name: str, cells: dict[str, pd.DataFrame], n_splits: int) -> None:
    """The split-half table, with each prior's paired differences from the normal prior."""
    table = pd.DataFrame(
        {
            label: split_half_summary(frame).loc["mean", SPLIT_COLUMNS]
            for label, frame in cells.items()
        }
    ).T
    for label, frame in cells.items():
        if label != STAGE_ONE:
            reference = cells[f"{REFERENCE_PRIOR} {label.split()[1]}"]
            for column, value in paired_differences(frame, reference).items():
                table.loc[label, column] = value
    table.index = _index(list(table.index))
    print(
        f"{name}, split halves ({n_splits} splits, means; differences from the normal prior "
        "at the same depth on the same cells, standard errors over clusters):"
    )
    print(table.round(4).to_string(), flush=True)


def paired_differences(
    cells: pd.DataFrame, reference: pd.DataFrame, reference_name: str = REFERENCE_PRIOR
) -> dict[str, float]:
    """Coverage and coefficient MSE of ``cells`` minus ``reference``'s, on the same cells.

    Each estimate's difference (of ``covered``, and of the squared error ``(b_B − mean)²``,
    whose ``s_B²`` cancels) is averaged over the splits; the means of those are the differences
    of the ``mean`` rows of :func:`~bayeshier_pymc.calibration.split_half_summary`, and their
    standard errors are over clusters of covariate × finest annotation group
    (:func:`~bayeshier_pymc.calibration.clustered_coverage_se`), like ``coverage_se``. The
    keys are ``<score>_minus_<reference_name>`` and ``se_<score>_diff``.
    """
    keys = ["split", "covariate", "feature"]
    if not cells[keys].equals(reference[keys]):
        raise RuntimeError("the two models' split-half cells are not the same cells")
    squared_error = [(frame["b_b"] - frame["mean"]) ** 2 for frame in (cells, reference)]
    difference = cells[["covariate", "feature", "group"]].assign(
        coverage=cells["covered"].astype(float) - reference["covered"].astype(float),
        mse=squared_error[0] - squared_error[1],
    )
    per_estimate = difference.groupby(["covariate", "feature"], sort=False).agg(
        coverage=("coverage", "mean"), mse=("mse", "mean"), group=("group", "first")
    )
    clusters = (
        per_estimate.index.get_level_values("covariate").astype(str)
        + " | "
        + per_estimate["group"].astype(str)
    ).to_numpy()
    result = {}
    for score in ("coverage", "mse"):
        values = per_estimate[score].to_numpy()
        result[f"{score}_minus_{reference_name}"] = float(values.mean())
        result[f"se_{score}_diff"] = clustered_coverage_se(values, clusters)
    return result


def print_known_truth(
    name: str,
    study: ValidationStudy,
    stage_twos: dict[str, StageTwoFit],
    n_replicates: int,
    seed: int,
) -> None:
    """The known-truth check of every model on the data set's design and residual covariance."""
    table = known_truth_rows(study, stage_twos, n_replicates, seed)
    table.index = _index(list(table.index))
    print(f"{name}, real noise with a known truth ({n_replicates} replicates, means):")
    print(table.round(4).to_string(), flush=True)


def known_truth_rows(
    study: ValidationStudy,
    stage_twos: dict[str, StageTwoFit],
    n_replicates: int,
    seed: int,
) -> pd.DataFrame:
    """The known-truth check's means of every model (one row per label), each timed."""
    covariance = real_residual_covariance(study)
    rows = {}
    for label, stage_two in stage_twos.items():
        start = time.perf_counter()
        truth = known_truth_check(
            study.X,
            study.hierarchy,
            covariance,
            stage_two=stage_two,
            n_replicates=n_replicates,
            random_seed=seed,
        )
        rows[label] = truth.loc["mean", TRUTH_COLUMNS]
        print(f"  {label}: known truth {time.perf_counter() - start:.0f} s", flush=True)
    return pd.DataFrame(rows).T


def print_nuts_convergence(studies: list[tuple[str, ValidationStudy]], seed: int) -> None:
    """Divergences, r̂, bulk ESS and wall time of the default sampler under each heavy prior."""
    rows = {}
    for name, study in studies:
        fit = mlm(study.Y, study.X)
        for prior in GROUP_PRIORS:
            if prior == REFERENCE_PRIOR:
                continue
            model = ShrinkageModel(
                fit,
                study.hierarchy,
                depth=NUTS_DEPTH,
                priors={"group_prior": prior},
                effect_scale="raw",
            )
            start = time.perf_counter()
            idata = model.sample(random_seed=seed, progressbar=False)
            seconds = time.perf_counter() - start
            local = [local_scale_name(level) for level in model.problem.levels]
            rhat, bulk = az.rhat(idata), az.ess(idata, method="bulk")
            rows[(name, prior)] = {
                "divergences": int(idata.sample_stats["diverging"].sum()),
                "max_rhat_tau": float(rhat["tau"].max()),
                "max_rhat_local": max(float(rhat[v].max()) for v in local),
                "max_rhat_theta": float(rhat["theta"].max()),
                "min_ess_tau": float(bulk["tau"].min()),
                "min_ess_local": min(float(bulk[v].min()) for v in local),
                "seconds": seconds,
            }
            print(f"  {name} {prior}: NUTS {seconds:.0f} s", flush=True)
    print(
        f"\nthe default sampler (ShrinkageModel(...).sample() with its defaults: NUTS, "
        f"{idata.posterior.sizes['chain']} chains × {idata.posterior.sizes['draw']} draws) on "
        f"the whole data set at depth {NUTS_DEPTH}: divergences, largest rank r̂ and smallest "
        "bulk ESS of τ and of the local scales λ (every level), largest r̂ of θ, wall time:"
    )
    table = pd.DataFrame(rows).T.rename_axis(["data set", "prior"])
    table["divergences"] = table["divergences"].astype(int)
    print(table.round(3).to_string(), flush=True)


if __name__ == "__main__":
    main()
