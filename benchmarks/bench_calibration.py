"""Calibration on real data, independent against tree-structured noise of the estimates.

Run ``python benchmarks/bench_calibration.py [--data ../shared/data] [--splits 6]``. For QMDiab
plasma and the liver lipidome (skipped with a message when their CSVs are absent), each noise
model of stage 2 (``independent``: the research model, the m estimates of a covariate
independent; ``structured``: the package default, tree-structured noise estimated from the
stage-1 fit's residuals) and each depth 0, 1, 2 it prints (a last row, ``stage 1``, scores the
unshrunk estimates, θ ~ N(b, se²), as a reference):

* split halves (:func:`bayeshier_pymc.calibration.split_half_check`): 95% predictive coverage
  of the other half's estimates (goal 93–97%; Student-t quantile for the other half's
  estimated standard errors) with its standard error over clusters of covariate × finest
  annotation group, sign errors among lfsr < 0.05 calls where the other half has |z| > 3
  against their mean lfsr (goal ≤ 2×), and the truth-free coefficient-MSE gain over stage 1,
  with the paired MSE difference to the independent model at depth 0 over splits; then the
  coverage of every model by covariate and by band of half A's |b / se|;
* real noise, known truth (:func:`bayeshier_pymc.calibration.known_truth_check`, with
  ``--replicates`` > 0): the data set's design and residual covariance 0.8 S + 0.2 diag S,
  true effects = class effects (sd 0.3) + feature deviations (sd 0.1); coverage of the true θ,
  false sign rate vs mean lfsr (goal ≤ 5% and ≤ 2×), MSE gain;
* with ``--compare``: for each noise model, on the whole data set, the depth
  :func:`bayeshier_pymc.compare_fits` recommends by default (the elpd of a fresh replicate),
  with every depth's ``elpd_rep`` and ``relative_mse``, and the depth the PSIS-LOO rule
  (``RecommendationRule(criterion="loo")``, marginal LOO) recommends, with every depth's
  ``elpd_loo``; each with that depth's split-half MSE gain.

Stage 2 has the package's default priors (``--priors research``: the research code's fixed
priors). It is NUTS on the collapsed model by default (``--nuts-sampler pymc``, one process
per fit, so that it runs beside other jobs); ``--sampler gibbs`` uses the Gibbs engine. The
output ends with the machine's load average. ``bench_calibration_diagnosis.py`` breaks the
split-half coverage down further (``docs/calibration.md``, "Why split-half coverage falls
short").
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    TRUTH_COLUMNS,
    StageTwo,
    StageTwoFit,
    known_truth_check,
    split_half_cells,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.depth_comparison import DepthComparison, RecommendationRule, compare_fits
from bayeshier_pymc.priors import PRESETS
from bayeshier_pymc.validation_data import (
    VALIDATION_SETS,
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEPTHS = (0, 1, 2)
NOISE_MODELS = {"independent": "independent", "structured": "auto"}
REFERENCE = ("independent", 0)
Z_BANDS = [0.0, 1.0, 2.0, 3.0, 5.0, np.inf]
"""Bands of half A's |b / se| for the coverage by band."""


def real_data_parser(description: str, *, draws: int, chains: int) -> argparse.ArgumentParser:
    """The options of every real-data calibration script: the data, the splits, the draws, the seed.

    ``--data`` (the folder of the CSVs), ``--datasets``, ``--splits`` (6), ``--draws`` and
    ``--chains`` (the script's defaults) and ``--seed`` (0); a script adds its own.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--datasets", nargs="+", choices=list(VALIDATION_SETS), default=list(VALIDATION_SETS)
    )
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--draws", type=int, default=draws)
    parser.add_argument("--chains", type=int, default=chains)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def print_study(name: str, study: ValidationStudy) -> None:
    """The line that opens a data set's part of the output: its size, covariates and tree."""
    print(
        f"\n{name}: {study.Y.shape[0]} samples × {study.Y.shape[1]} features, "
        f"covariates {list(study.X.columns)}, {study.hierarchy}",
        flush=True,
    )


def study_split_cells(
    study: ValidationStudy, stage_two: StageTwoFit, args: argparse.Namespace
) -> pd.DataFrame:
    """:func:`~bayeshier_pymc.calibration.split_half_cells` of ``study`` with the script's
    ``--splits`` and ``--seed`` (:func:`real_data_parser`)."""
    return split_half_cells(
        study.Y,
        study.X,
        study.hierarchy,
        stage_two=stage_two,
        n_splits=args.splits,
        random_seed=args.seed,
    )


def whole_data_sampling(args: argparse.Namespace) -> dict[str, object]:
    """:meth:`~bayeshier_pymc.ShrinkageModel.sample`'s settings for the fits of a whole data
    set: the script's ``--draws`` (as many tuning steps), ``--chains`` and ``--seed``, quiet."""
    return {
        "draws": args.draws,
        "tune": args.draws,
        "chains": args.chains,
        "random_seed": args.seed,
        "progressbar": False,
    }


def quiet_tables(width: int = 200) -> None:
    """Tables ``width`` characters wide, no warnings, PyMC's errors only: a script's output."""
    pd.set_option("display.width", width)
    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)


def main() -> None:
    """Run both checks on every data set found and print one table per check."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=500, chains=2)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--sampler", choices=["nuts", "gibbs"], default="nuts")
    parser.add_argument("--nuts-sampler", default="pymc")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument(
        "--priors",
        choices=list(PRESETS),
        default="auto",
        help="stage 2's prior preset: 'auto' (the package default) or 'research'",
    )
    args = parser.parse_args()
    quiet_tables()
    options = {"nuts_sampler": args.nuts_sampler, "cores": 1} if args.sampler == "nuts" else {}
    engine = f"NUTS ({args.nuts_sampler})" if args.sampler == "nuts" else "Gibbs engine"
    print(
        f"stage 2: {engine}, {args.chains} chains × {args.draws} draws after {args.draws} "
        f"tuning steps, priors {args.priors!r}; seed {args.seed}, {args.splits} splits, "
        f"{args.replicates} known-truth replicates"
    )
    for name, study in available_studies(args.data, args.datasets):
        print_study(name, study)
        covariance = real_residual_covariance(study) if args.replicates > 0 else None
        split_rows, truth_rows, mse, cells = {}, {}, {}, {}
        models = [(noise, depth) for noise in NOISE_MODELS for depth in DEPTHS]
        for key in [*models, ("stage 1", "")]:
            noise, depth = key
            stage_two = (
                stage_one_posterior
                if noise == "stage 1"
                else StageTwo(
                    depth=depth,
                    sampler=args.sampler,
                    noise=NOISE_MODELS[noise],
                    draws=args.draws,
                    tune=args.draws,
                    chains=args.chains,
                    priors=args.priors,
                    sample_options=options,
                    effect_scale="raw",
                )
            )
            start = time.perf_counter()
            cells[key] = study_split_cells(study, stage_two, args)
            halves = split_half_summary(cells[key])
            split_rows[key] = halves.loc["mean", SPLIT_COLUMNS]
            mse[key] = halves.drop(index="mean")["mse"].to_numpy()
            if args.replicates > 0:
                truth = known_truth_check(
                    study.X,
                    study.hierarchy,
                    covariance,
                    stage_two=stage_two,
                    n_replicates=args.replicates,
                    random_seed=args.seed,
                )
                truth_rows[key] = truth.loc["mean", TRUTH_COLUMNS]
            print(f"  {noise} {depth}: {time.perf_counter() - start:.0f} s", flush=True)
        table = pd.DataFrame(split_rows).T.rename_axis(["noise", "depth"])
        differences = {key: mse[key] - mse[REFERENCE] for key in mse}
        table["mse_minus_indep0"] = [d.mean() for d in differences.values()]
        table["se_of_difference"] = [
            d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else np.nan for d in differences.values()
        ]
        print(f"{name}, split halves ({args.splits} splits, means; MSE differences paired):")
        print(table.round(4).to_string(), flush=True)
        print_coverage_breakdown(
            name,
            {"stage 1" if n == "stage 1" else f"{n[:5]}. {d}": c for (n, d), c in cells.items()},
        )
        if truth_rows:
            print(f"{name}, real noise with a known truth ({args.replicates} replicates, means):")
            frame = pd.DataFrame(truth_rows).T.rename_axis(["noise", "depth"])
            print(frame.round(4).to_string(), flush=True)
        if args.compare:
            fit = mlm(study.Y, study.X)
            for noise, setting in NOISE_MODELS.items():
                fits = {
                    depth: ShrinkageModel(
                        fit,
                        study.hierarchy,
                        depth=depth,
                        noise=setting,
                        priors=args.priors,
                        effect_scale="raw",
                    ).sample(args.sampler, **whole_data_sampling(args), **options)
                    for depth in DEPTHS
                }
                print_recommendations(f"{name}, {noise}", compare_fits(fits), table.loc[noise])
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


def print_recommendations(
    label: str, comparison: DepthComparison, split_table: pd.DataFrame
) -> None:
    """The depth each criterion recommends, its scores by depth and that depth's MSE gain."""
    replicate = comparison.replicate
    loo = comparison.table
    lines = (
        (
            "the fresh replicate (default)",
            comparison.recommended,
            "elpd_rep / relative_mse "
            + ", ".join(
                f"{depth}: {row['elpd_rep']:.1f} / {row['relative_mse']:.2f}"
                for depth, row in replicate.iterrows()
            ),
        ),
        (
            "PSIS-LOO",
            RecommendationRule(criterion="loo").choose(loo),
            "elpd_loo "
            + ", ".join(f"{depth}: {value:.1f}" for depth, value in loo["elpd_loo"].items()),
        ),
    )
    for criterion, best, scores in lines:
        print(
            f"{label}: by {criterion} depth {best} ({scores}); "
            f"its split-half MSE gain {split_table.loc[best, 'mse_gain']:.2f}",
            flush=True,
        )


def print_coverage_breakdown(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Split-half coverage of every model (labelled by the keys) by covariate and |b_A / s_A|."""
    frame = pd.concat(
        [
            cell.assign(
                model=label,
                band=pd.cut(np.abs(cell["b_a"] / cell["s_a"]), Z_BANDS, right=False),
            )
            for label, cell in cells.items()
        ]
    )
    order = list(cells)
    for by, title in (("covariate", "covariate"), ("band", "|b_A / s_A|")):
        table = frame.pivot_table(
            index=by, columns="model", values="covered", aggfunc="mean", observed=True
        )[order]
        table["estimates"] = frame[frame["model"] == order[0]].groupby(by, observed=True).size()
        print(f"{name}, split-half coverage by {title} (estimates: per split × splits):")
        print(table.round(3).to_string(), flush=True)


if __name__ == "__main__":
    main()
