"""Issue 14's accuracy goal: the default model at its recommended depth against the research model.

Run ``python benchmarks/bench_accuracy_goal.py [--data ../shared/data] [--splits 24]``. The goal:
on real split halves, the coefficient-MSE gain of the package's default model (tree-structured
noise, effects exchangeable in units of each metabolite's residual SD) at the depth it
recommends is at least that of the research model (the m estimates of a covariate independent,
effects exchangeable in Y's units) at its best depth. For QMDiab plasma and the liver lipidome
(skipped with a message when their CSVs are absent) it prints:

* the depth :func:`~bayeshier_pymc.compare_fits` recommends for the default model on the whole
  data set (the fresh replicate, its default), with every depth's ``elpd_rep`` and
  ``relative_mse``;
* the split-half table (:func:`~bayeshier_pymc.calibration.split_half_check`'s columns, means
  over the splits) of the default at that depth, the research model at depths 0, 1 and 2, and
  stage 1 (the unshrunk estimates), all on the same splits and cells;
* the paired differences of the default at its recommended depth from the research model at
  its best depth (the largest ``mse_gain``): ``mse_minus_independent`` (negative: the default
  is more accurate) and ``coverage_minus_independent``, with their standard errors over
  clusters of covariate × finest group.

Stage 2 is :class:`~bayeshier_pymc.calibration.StageTwo` with the Gibbs engine, 4 chains × 1000
draws after 1000 tuning steps and the default priors; seed 0 and 24 splits, the splits of
``bench_effect_scale.py`` (whose ``residual_sd`` rows are this run's default rows). The output
ends with the machine's load average.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
from bench_calibration import (
    print_study,
    quiet_tables,
    real_data_parser,
    study_split_cells,
    whole_data_sampling,
)
from bench_heavy_tailed_groups import paired_differences

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    StageTwo,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.validation_data import available_studies

DEPTHS = (0, 1, 2)
RESEARCH = "independent"
DEFAULT = "default"


def main() -> None:
    """Run the comparison on every data set found."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=1000, chains=4)
    parser.set_defaults(splits=24)
    args = parser.parse_args()
    quiet_tables(width=200)
    print(
        f"stage 2: Gibbs engine, default priors, {args.chains} chains × {args.draws} draws after "
        f"{args.draws} tuning steps; {DEFAULT}: tree-structured noise, effects exchangeable in "
        f"residual-SD units; {RESEARCH}: independent estimates, effects exchangeable in Y's "
        f"units; seed {args.seed}, {args.splits} splits"
    )
    settings = {"sampler": "gibbs", "draws": args.draws, "tune": args.draws, "chains": args.chains}
    for name, study in available_studies(args.data, args.datasets):
        print_study(name, study)
        fit = mlm(study.Y, study.X)
        fits = {
            depth: ShrinkageModel(fit, study.hierarchy, depth=depth).sample(
                "gibbs", **whole_data_sampling(args)
            )
            for depth in DEPTHS
        }
        comparison = compare_fits(fits)
        recommended = comparison.recommended
        scores = ", ".join(
            f"{depth}: {row['elpd_rep']:.1f} / {row['relative_mse']:.2f}"
            for depth, row in comparison.replicate.iterrows()
        )
        print(
            f"{name}, {DEFAULT}: compare_fits recommends depth {recommended} "
            f"(elpd_rep / relative_mse {scores})",
            flush=True,
        )
        stage_twos = {
            (DEFAULT, recommended): StageTwo(depth=recommended, **settings),
            **{
                (RESEARCH, depth): StageTwo(
                    depth=depth, noise="independent", effect_scale="raw", **settings
                )
                for depth in DEPTHS
            },
            ("stage 1", ""): stage_one_posterior,
        }
        cells = {}
        for key, stage_two in stage_twos.items():
            start = time.perf_counter()
            cells[key] = study_split_cells(study, stage_two, args)
            print(f"  {key[0]} {key[1]}: split halves {time.perf_counter() - start:.0f} s")
        table = pd.DataFrame(
            {
                key: split_half_summary(frame).loc["mean", SPLIT_COLUMNS]
                for key, frame in cells.items()
            }
        ).T.rename_axis(["model", "depth"])
        print(f"{name}, split halves ({args.splits} splits, means):")
        print(table.round(4).to_string(), flush=True)
        best = max(DEPTHS, key=lambda depth: table.loc[(RESEARCH, depth), "mse_gain"])
        differences = paired_differences(
            cells[(DEFAULT, recommended)], cells[(RESEARCH, best)], RESEARCH
        )
        print(
            f"{name}: {DEFAULT} at its recommended depth {recommended} (MSE gain "
            f"{table.loc[(DEFAULT, recommended), 'mse_gain']:.3f}) against {RESEARCH} at its best "
            f"depth {best} (MSE gain {table.loc[(RESEARCH, best), 'mse_gain']:.3f}), paired on the "
            "same cells: " + ", ".join(f"{key} {value:.4f}" for key, value in differences.items()),
            flush=True,
        )
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
