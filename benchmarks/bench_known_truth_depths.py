"""Real noise, known truth at every true depth: each depth fitted to each truth.

Run ``python benchmarks/bench_known_truth_depths.py [--data ../shared/data] [--replicates 10]``.
For QMDiab plasma and the liver lipidome (skipped with a message when their CSVs are absent),
:func:`bayeshier_pymc.calibration.known_truth_check` simulates ``Y = X B + E`` with the data
set's design X and residual covariance (0.8 S + 0.2 diag S after stage 1), so the noise is
as correlated as the real data's, and a truth of known depth, in Y's units (feature
deviations sd 0.1 in every truth):

* **true depth 0**: one global mean, no group effects;
* **true depth 1**: class effects (the finest level) sd 0.3, the truth of ``calibration.md``;
* **true depth 2**: category effects (the coarsest level) sd 0.3, classes around them sd 0.1.

Each truth is fitted at depths 0, 1 and 2 by stage 2 with the package's defaults
(:class:`~bayeshier_pymc.calibration.StageTwo`: tree-structured noise, effects exchangeable in
residual-SD units; ``default``) and by the research model (the estimates independent,
effects in Y's units; ``independent``). Two more models are fitted at the true depth only, to
tell the causes of a miss apart: ``Y units`` (tree-structured noise, effects exchangeable in
Y's units, the truth's own units) and ``Y units, true tree`` (the same with the tree noise of
the true covariance instead of the one estimated from each replicate's residuals: the
:func:`~bayeshier_pymc.noise.tree_noise` of 20,000 residual rows drawn from it, without
pooling, so what remains is only what the tree's averages leave of the covariance). Two
more at the true depth hold the inference fixed and change only the noise covariance: the
exact Gaussian posterior of θ given empirical-Bayes scales (``tree_level_posterior`` of
``bench_low_rank.py`` with the prior of the true depth, dense algebra, its optimizer started
from the best of a grid), with c_kk times the true
covariance (``exact EB, true Σ``) and with c_kk times its tree noise (``exact EB, true
tree``). The Gibbs rows see the same replicates: 4 chains × 1000 draws after 1000 tuning
steps, seed 0. Per data set one table, one row per true depth, model and fitted depth: 95%
``coverage`` of the true θ and its range over the replicates, ``calls`` (lfsr < 0.05), their
``false_sign_rate`` against their mean lfsr ``claimed_lfsr`` and the coefficient ``mse_gain``
over stage 1. Issue 14's goal at the true depth: coverage 93–97%, false sign rate ≤ 5% and ≤
2× claimed; the column ``goal`` says whether a row meets it.

The output ends with the machine's load average and the run's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from bench_calibration import print_study, quiet_tables, real_data_parser
from bench_low_rank import tree_level_posterior

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    TRUTH_COLUMNS,
    PosteriorSummary,
    StageTwo,
    StageTwoFit,
    known_truth_check,
    normal_posterior,
    posterior_summary,
)
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.noise import NodeVariances, TreeNoise, tree_noise
from bayeshier_pymc.validation_data import (
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

DEPTHS = (0, 1, 2)
FEATURE_SD = 0.1
TRUE_GROUP_SDS = {0: (0.0,), 1: (0.3,), 2: (0.1, 0.3)}
"""The group-effect sd of each annotation level from the finest, per true depth."""
MODELS = {"default": {}, "independent": {"noise": "independent", "effect_scale": "raw"}}
"""Stage 2's settings beside the depth: the package's defaults and the research model."""
TRUE_TREE_ROWS = 20_000
"""Residual rows drawn from the true covariance to compute its tree noise."""


def main() -> None:
    """Fit every depth to every true depth on each data set found and print the tables."""
    parser = real_data_parser(__doc__.splitlines()[0], draws=1000, chains=4)
    parser.add_argument("--replicates", type=int, default=10)
    args = parser.parse_args()
    quiet_tables(width=200)
    start = time.perf_counter()
    print(
        f"stage 2: Gibbs engine, {args.chains} chains × {args.draws} draws after {args.draws} "
        f"tuning steps; seed {args.seed}, {args.replicates} known-truth replicates per true "
        f"depth; truths (group sd per level from the finest): {TRUE_GROUP_SDS}, feature sd "
        f"{FEATURE_SD}"
    )
    for name, study in available_studies(args.data, args.datasets):
        print_study(name, study)
        table = truth_by_depth(study, args)
        print(f"{name}, known truth at each true depth ({args.replicates} replicates, means):")
        print(table.round(4).to_string(), flush=True)
    print(f"\nload average (1, 5, 15 min) at the end: {' '.join(map(str, os.getloadavg()))}")
    print(f"{time.perf_counter() - start:.0f} s")


def truth_by_depth(study: ValidationStudy, args: argparse.Namespace) -> pd.DataFrame:
    """Every model against every true depth, with the goal's verdict."""
    covariance = real_residual_covariance(study)
    true_tree = true_tree_noise(covariance, study, args.seed)
    rows = {}
    for truth, group_sd in TRUE_GROUP_SDS.items():
        fits: dict[tuple[str, int], StageTwoFit] = {
            (model, depth): StageTwo(depth=depth, **gibbs(args), **settings)
            for model, settings in MODELS.items()
            for depth in DEPTHS
        }
        fits[("Y units", truth)] = StageTwo(depth=truth, effect_scale="raw", **gibbs(args))
        fits[("Y units, true tree", truth)] = TrueTreeNoise(
            truth, true_tree.residual, args.draws, args.chains
        )
        fits[("exact EB, true Σ", truth)] = ExactEmpiricalBayes(truth, covariance)
        fits[("exact EB, true tree", truth)] = ExactEmpiricalBayes(truth, true_tree.covariance())
        for (model, depth), stage_two in fits.items():
            result = known_truth_check(
                study.X,
                study.hierarchy,
                covariance,
                stage_two=stage_two,
                group_sd=group_sd,
                feature_sd=FEATURE_SD,
                n_replicates=args.replicates,
                random_seed=args.seed,
            )
            replicates = result.drop(index="mean")["coverage"]
            row = result.loc["mean", TRUTH_COLUMNS].copy()
            row["coverage_min"] = replicates.min()
            row["coverage_max"] = replicates.max()
            rows[(truth, model, depth)] = row
    table = pd.DataFrame(rows).T
    table.index = table.index.set_names(["true depth", "model", "depth"])
    table["goal"] = table.apply(meets_goal, axis=1)
    return table


def gibbs(args: argparse.Namespace) -> dict[str, object]:
    """The Gibbs engine with the script's draws and chains (as many tuning steps as draws)."""
    return {"sampler": "gibbs", "draws": args.draws, "tune": args.draws, "chains": args.chains}


def true_tree_noise(covariance: np.ndarray, study: ValidationStudy, seed: int) -> TreeNoise:
    """The tree noise of ``covariance`` itself: :func:`tree_noise` of many residual rows drawn
    from it (without pooling; its residual variances are covariate-free)."""
    rng = np.random.default_rng(seed)
    n_features = covariance.shape[0]
    x = pd.DataFrame(rng.standard_normal((TRUE_TREE_ROWS, 1)), columns=["x"])
    rows = rng.standard_normal((TRUE_TREE_ROWS, n_features)) @ np.linalg.cholesky(covariance).T
    fit = mlm(pd.DataFrame(rows, columns=study.hierarchy.features), x)
    return tree_noise(fit, study.hierarchy, pooling="none")


@dataclasses.dataclass(frozen=True)
class TrueTreeNoise:
    """Stage 2 in Y's units with the true covariance's tree noise, scaled by each replicate's
    own c_kk (a :data:`~bayeshier_pymc.calibration.StageTwoFit`)."""

    depth: int
    residual: NodeVariances
    draws: int
    chains: int

    def __call__(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[str], random_seed: int
    ) -> PosteriorSummary:
        noise = dataclasses.replace(tree_noise(fit, hierarchy), residual=self.residual)
        model = ShrinkageModel(
            fit,
            hierarchy,
            depth=self.depth,
            covariates=list(covariates),
            noise=noise,
            effect_scale="raw",
        )
        idata = model.sample(
            "gibbs",
            draws=self.draws,
            tune=self.draws,
            chains=self.chains,
            random_seed=random_seed,
            progressbar=False,
        )
        return posterior_summary(idata)


@dataclasses.dataclass(frozen=True)
class ExactEmpiricalBayes:
    """The exact posterior of θ given empirical-Bayes scales at ``depth``, the noise of
    covariate k's estimates c_kk times ``residual`` (a
    :data:`~bayeshier_pymc.calibration.StageTwoFit`; intervals mean ± 1.96 sd)."""

    depth: int
    residual: np.ndarray

    def __call__(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[str], random_seed: int
    ) -> PosteriorSummary:
        scale = fit.coef_variance_factor.to_series()
        memberships = [hierarchy.membership(level) for level in range(self.depth)]
        b = fit.coef.sel(covariate=list(covariates), feature=hierarchy.features)
        moments = [
            tree_level_posterior(
                b.sel(covariate=c).to_numpy(),
                scale[c] * self.residual,
                memberships,
                start_from_grid=True,
            )
            for c in covariates
        ]
        means, sds = zip(*moments, strict=True)
        return normal_posterior(b.copy(data=np.array(means)), b.copy(data=np.array(sds)))


def meets_goal(row: pd.Series) -> bool:
    """Issue 14's simulation goal: coverage 93–97%, false sign rate ≤ 5% and ≤ 2× claimed."""
    return bool(
        0.93 <= row["coverage"] <= 0.97
        and row["false_sign_rate"] <= 0.05
        and row["false_sign_rate"] <= 2.0 * row["claimed_lfsr"]
    )


if __name__ == "__main__":
    main()
