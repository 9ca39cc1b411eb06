"""Calibration on real data: split halves and real noise with a known truth.

Run ``python benchmarks/bench_calibration.py [--data ../shared/data] [--splits 6]``. For QMDiab
plasma and the liver lipidome (skipped with a message when their CSVs are absent) and each
depth 0, 1, 2 it prints, with the Gibbs engine (a last row, ``stage 1``, scores the unshrunk
estimates, θ ~ N(b, se²), as a reference):

* split halves (:func:`bayeshier_pymc.calibration.split_half_check`): 95% predictive coverage
  of the other half's estimates (goal 93–97%), sign errors among lfsr < 0.05 calls where the
  other half has |z| > 3 against their mean lfsr (goal ≤ 2×), and the truth-free
  coefficient-MSE gain over stage 1, with the paired MSE difference to depth 0 over splits;
* real noise, known truth (:func:`bayeshier_pymc.calibration.known_truth_check`, with
  ``--replicates`` > 0): the data set's design and residual covariance 0.8 S + 0.2 diag S,
  true effects = class effects (sd 0.3) + feature deviations (sd 0.1); coverage of the true θ,
  false sign rate vs mean lfsr, MSE gain.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayeshier_pymc.calibration import (
    StageTwo,
    known_truth_check,
    split_half_check,
    stage_one_posterior,
)
from bayeshier_pymc.validation_data import (
    LIVER_FILES,
    QMDIAB_FILES,
    has_files,
    read_liver_lipidome,
    read_qmdiab,
    real_residual_covariance,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
READERS = {
    "qmdiab": (QMDIAB_FILES, read_qmdiab),
    "liver_lipidome": (LIVER_FILES, read_liver_lipidome),
}
DEPTHS = (0, 1, 2)
COLUMNS = ["coverage", "calls", "checked_calls", "sign_error_rate", "claimed_lfsr", "mse_gain"]


def main() -> None:
    """Run both checks on every data set found and print one table per check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pd.set_option("display.width", 160)
    for name, (files, reader) in READERS.items():
        if not has_files(args.data, files):
            print(f"{name}: skipped, {args.data} lacks {files}")
            continue
        study = reader(args.data)
        print(
            f"\n{name}: {study.Y.shape[0]} samples × {study.Y.shape[1]} features, "
            f"covariates {list(study.X.columns)}, {study.hierarchy}"
        )
        split_rows, truth_rows, mse = {}, {}, {}
        covariance = real_residual_covariance(study) if args.replicates > 0 else None
        for depth in (*DEPTHS, "stage 1"):
            stage_two = (
                stage_one_posterior
                if depth == "stage 1"
                else StageTwo(depth=depth, draws=args.draws, tune=args.draws // 2)
            )
            start = time.perf_counter()
            halves = split_half_check(
                study.Y,
                study.X,
                study.hierarchy,
                stage_two=stage_two,
                n_splits=args.splits,
                random_seed=args.seed,
            )
            split_rows[depth] = halves.loc["mean", COLUMNS]
            mse[depth] = halves.drop(index="mean")["mse"].to_numpy()
            print(f"  depth {depth}: split halves in {time.perf_counter() - start:.0f} s")
            if args.replicates > 0:
                truth = known_truth_check(
                    study.X,
                    study.hierarchy,
                    covariance,
                    stage_two=stage_two,
                    n_replicates=args.replicates,
                    random_seed=args.seed,
                )
                truth_rows[depth] = truth.loc["mean"]
        table = pd.DataFrame(split_rows).T.rename_axis("depth")
        differences = {depth: mse[depth] - mse[0] for depth in mse}
        table["mse_minus_depth0"] = [d.mean() for d in differences.values()]
        table["se_of_difference"] = [
            d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else np.nan for d in differences.values()
        ]
        print(f"{name}, split halves ({args.splits} splits, means; MSE differences paired):")
        print(table.round(4).to_string())
        if truth_rows:
            print(f"{name}, real noise with a known truth ({args.replicates} replicates, means):")
            print(pd.DataFrame(truth_rows).T.rename_axis("depth").round(4).to_string())


if __name__ == "__main__":
    main()
