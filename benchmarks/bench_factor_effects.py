"""Why the low-rank remainder hurt on real data: effects along its loadings, measured.

Run ``python benchmarks/bench_factor_effects.py [--data ../shared/data] [--part truth|halves]
[--ranks 6 ...] [--true-depths 0 1 2] [--population] [--bootstrap 10]``.

``bench_low_rank.py`` found that a low-rank remainder of the noise (``noise_remainder.py``: r
factors of what the tree leaves, ``Σ = A Aᵀ + L Lᵀ + Ψ``) lowers QMDiab's split-half coverage
and accuracy, and ``docs/model.md`` gave the likely reason: the factor model reads every
pattern of the estimates along the loadings ``L`` as noise, while the tree prior gives the
effects no such pattern, so real effects that follow the residual factors (metabolites that
co-vary also respond together) are removed as noise. The depth-0 model meets the same
misspecification with the tree's groups ("Depth 0 under tree-structured noise" in
``docs/calibration.md``), and the deeper models avoid it by giving the effects a term at every
node where the noise has one. This script tests the reason by doing the same for the factors:
the prior of θ gains effects along the loadings, ``L γ`` with γ ~ N(0, τ_f² I_r) and a scale
τ_f of their own (``tree_level_posterior(..., directions=L)`` of ``bench_low_rank.py``), so
that a shift along ``L`` can be effect or noise, in the proportion their variances say.

Stage 2 is the exact Gaussian posterior of θ given empirical-Bayes scales (dense algebra, the
optimiser started from the best of a grid), per covariate, for three noise models:

* ``tree``: :func:`~bayeshier_pymc.noise.tree_noise`, the package's noise structure;
* ``tree + rank r``: ``noise_remainder`` with the rank fixed at each of ``--ranks`` (6 by
  default, the rank of issue 14's prototype), its noise ``c_kk (A Aᵀ + L Lᵀ + Ψ)``;
* ``tree + rank r + factor effects``: the same noise, and the effects along ``L`` in the prior.

With ``--population`` the known truth also has each rank fitted to the true covariance instead
of each replicate's residuals (``population tree + rank r``, with and without factor effects):
the remainder fitted once to ``POPULATION_SAMPLES`` residual rows drawn from the truth's
covariance, its noise per replicate ``c_kk`` of the replicate's design times that fit. It tells
a rank too small for what the tree leaves from a remainder estimated badly from the data set's
samples. With ``--bootstrap B`` every estimated rank also has rows ``..., bootstrap-rescaled``:
its covariance rescaled per feature so that its conditional variances carry the shortfall of
factors estimated from the data set's samples, measured by ``B`` parametric-bootstrap refits
(``noise_remainder.conditional_variance_inflation``).

It prints (``--part``, both by default):

* ``truth``: the liver lipidome's known-truth simulation at ``--true-depths`` (the truths
  of ``bench_known_truth_depths.py``: the data set's design and residual covariance 0.8 S + 0.2
  diag S, group effects per level from the finest ``TRUE_GROUP_SDS``, feature deviations sd
  0.1, in Y's units), each fitted at its true depth in Y's units: coverage of the true θ,
  lfsr < 0.05 calls, their false sign rate against their mean lfsr, MSE gain over stage 1,
  the goal's verdict (coverage 93–97%, false sign rate ≤ 5% and ≤ 2× claimed); there the
  noise follows the model and the effects do not follow the factors;
* ``halves``: real split halves of QMDiab and the liver lipidome at the class level (depth 1),
  with the effects exchangeable in Y's units (``raw``, the units of ``bench_low_rank.py``) and
  in units of each metabolite's residual SD (``residual-sd``, the package's default for a
  stage-1 fit): coverage of the other half's estimates and its cluster-robust standard error,
  lfsr < 0.05 calls, the checked ones and their sign errors against their mean lfsr, the
  truth-free MSE gain.

Data sets whose CSVs are absent are skipped with a message. The output ends with the run's
wall time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr
from bench_calibration import DEFAULT_DATA, print_study, quiet_tables
from bench_known_truth_depths import FEATURE_SD, TRUE_GROUP_SDS, meets_goal
from bench_low_rank import tree_level_posterior
from noise_remainder import NoiseRemainder, conditional_variance_inflation, noise_remainder

from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    TRUTH_COLUMNS,
    PosteriorSummary,
    known_truth_check,
    normal_posterior,
    split_half_check,
)
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.noise import tree_noise
from bayeshier_pymc.validation_data import (
    VALIDATION_SETS,
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

Units = Literal["raw", "residual-sd"]
HALVES_DEPTH = 1
POPULATION_SAMPLES = 5000


@dataclass(frozen=True)
class RemainderEmpiricalBayes:
    """A stage-2 fit for the calibration checks (a
    :data:`~bayeshier_pymc.calibration.StageTwoFit`): the exact posterior of θ given
    empirical-Bayes scales at ``depth``, the noise the tree's (``rank`` 0) or the tree's plus a
    rank-``rank`` remainder, with ``factor_effects`` effects along the remainder's loadings in
    the prior, and the effects exchangeable in ``units``. With ``population`` (a remainder
    fitted to the true covariance) the noise is each covariate's ``c_kk`` times it, not a
    remainder of the fit's residuals. With ``bootstrap`` refits, a remainder estimated from the
    fit is rescaled per feature by ``noise_remainder.conditional_variance_inflation`` (the
    loadings of the factor effects with it)."""

    depth: int
    rank: int
    factor_effects: bool
    units: Units
    population: NoiseRemainder | None = None
    bootstrap: int = 0

    def __call__(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[str], random_seed: int
    ) -> PosteriorSummary:
        tree = hierarchy.align(fit.Y.columns)
        memberships = [tree.membership(level) for level in range(self.depth)]
        if self.population is not None:
            if not self.population.features.equals(tree.features):
                raise ValueError("the population remainder's features are not the fit's.")
            scale = tree_noise(fit, hierarchy).covariate_scale
            residual_covariance = self.population.covariance()

            def covariance(covariate: str) -> np.ndarray:
                return float(scale[covariate]) * residual_covariance

            loadings = self.population.loadings if self.factor_effects else None
        elif self.rank == 0:
            noise = tree_noise(fit, hierarchy)
            covariance, loadings = noise.covariance, None
        else:
            remainder = noise_remainder(fit, hierarchy, rank=self.rank)
            covariance = remainder.covariance
            loadings = remainder.loadings if self.factor_effects else None
            if self.bootstrap:
                inflation = conditional_variance_inflation(
                    fit, hierarchy, remainder, n_bootstrap=self.bootstrap, random_seed=random_seed
                )
                rescale = np.sqrt(inflation)

                def covariance(covariate: str) -> np.ndarray:
                    return np.outer(rescale, rescale) * remainder.covariance(covariate)

                loadings = None if loadings is None else rescale[:, None] * loadings
        unit = np.ones(tree.n_features)
        if self.units == "residual-sd":
            unit = np.sqrt(fit.sigma.to_numpy())
        directions = None if loadings is None else loadings / unit[:, None]
        means, sds = [], []
        for covariate in covariates:
            b = fit.coef.sel(covariate=covariate).to_numpy() / unit
            noise_of_b = covariance(covariate) / np.outer(unit, unit)
            mean, sd = tree_level_posterior(
                b, noise_of_b, memberships, start_from_grid=True, directions=directions
            )
            means.append(mean * unit)
            sds.append(sd * unit)
        coords = {"covariate": list(covariates), "feature": tree.features.tolist()}
        dims = ("covariate", "feature")
        return normal_posterior(
            xr.DataArray(np.array(means), coords=coords, dims=dims),
            xr.DataArray(np.array(sds), coords=coords, dims=dims),
        )


def noise_models(ranks: Sequence[int], bootstrap: int) -> dict[str, tuple[int, bool, int]]:
    """Each row's label and its (rank, factor effects, bootstrap refits): the tree, then each
    rank without and with the factor effects, then, with ``bootstrap`` refits, the same
    rescaled by the bootstrap."""
    models = {"tree": (0, False, 0)}
    for rank in ranks:
        models[f"tree + rank {rank}"] = (rank, False, 0)
        models[f"tree + rank {rank} + factor effects"] = (rank, True, 0)
    if bootstrap:
        for rank in ranks:
            models[f"tree + rank {rank}, bootstrap-rescaled"] = (rank, False, bootstrap)
            label = f"tree + rank {rank} + factor effects, bootstrap-rescaled"
            models[label] = (rank, True, bootstrap)
    return models


def population_remainder(
    covariance: np.ndarray, hierarchy: Hierarchy, rank: int, random_seed: int
) -> NoiseRemainder:
    """The tree noise and a rank-``rank`` remainder fitted to ``POPULATION_SAMPLES`` rows
    drawn from ``covariance`` (one covariate of noise beside the intercept)."""
    rng = np.random.default_rng(random_seed)
    factor = np.linalg.cholesky(covariance)
    rows = rng.standard_normal((POPULATION_SAMPLES, hierarchy.n_features)) @ factor.T
    y = pd.DataFrame(rows, columns=hierarchy.features)
    x = pd.DataFrame({"noise": rng.standard_normal(POPULATION_SAMPLES)})
    return noise_remainder(mlm(y, x), hierarchy, rank=rank)


def known_truth(study: ValidationStudy, args: argparse.Namespace) -> pd.DataFrame:
    """Each noise model at each true depth (fitted there, in Y's units)."""
    covariance = real_residual_covariance(study)
    models = {
        label: RemainderEmpiricalBayes(0, rank, factor_effects, "raw", bootstrap=bootstrap)
        for label, (rank, factor_effects, bootstrap) in noise_models(
            args.ranks, args.bootstrap
        ).items()
    }
    if args.population:
        for rank in args.ranks:
            population = population_remainder(covariance, study.hierarchy, rank, args.seed)
            for factor_effects in (False, True):
                label = f"population tree + rank {rank}" + " + factor effects" * factor_effects
                models[label] = RemainderEmpiricalBayes(0, rank, factor_effects, "raw", population)
    rows = {}
    for truth in args.true_depths:
        group_sd = TRUE_GROUP_SDS[truth]
        for label, model in models.items():
            result = known_truth_check(
                study.X,
                study.hierarchy,
                covariance,
                stage_two=replace(model, depth=truth),
                group_sd=group_sd,
                feature_sd=FEATURE_SD,
                n_replicates=args.replicates,
                random_seed=args.seed,
            )
            row = result.loc["mean", TRUTH_COLUMNS].copy()
            row["goal"] = meets_goal(row)
            rows[(truth, label)] = row
    table = pd.DataFrame(rows).T
    table.index = table.index.set_names(["true depth", "noise model"])
    return table


def split_halves(study: ValidationStudy, args: argparse.Namespace) -> pd.DataFrame:
    """Each noise model in each unit on the same splits, at the class level."""
    rows = {}
    for units in ("raw", "residual-sd"):
        for label, (rank, factor_effects, bootstrap) in noise_models(
            args.ranks, args.bootstrap
        ).items():
            model = RemainderEmpiricalBayes(
                HALVES_DEPTH, rank, factor_effects, units, bootstrap=bootstrap
            )
            result = split_half_check(
                study.Y,
                study.X,
                study.hierarchy,
                stage_two=model,
                n_splits=args.splits,
                random_seed=args.seed,
            )
            rows[(units, label)] = result.loc["mean", SPLIT_COLUMNS]
    table = pd.DataFrame(rows).T
    table.index = table.index.set_names(["units", "noise model"])
    return table


def main() -> None:
    """Print the known-truth table of the liver lipidome and the split-half table of each
    data set found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--datasets", nargs="+", choices=list(VALIDATION_SETS), default=list(VALIDATION_SETS)
    )
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--ranks", type=int, nargs="+", default=[6])
    parser.add_argument(
        "--true-depths",
        type=int,
        nargs="+",
        choices=list(TRUE_GROUP_SDS),
        default=list(TRUE_GROUP_SDS),
    )
    parser.add_argument("--part", choices=["truth", "halves", "both"], default="both")
    parser.add_argument("--population", action="store_true")
    parser.add_argument("--bootstrap", type=int, default=0)
    args = parser.parse_args()
    quiet_tables(width=200)
    start = time.perf_counter()
    print(
        f"exact posterior given empirical-Bayes scales; remainder ranks {args.ranks}; "
        f"{args.bootstrap} bootstrap refits; seed {args.seed}; {args.replicates} known-truth "
        f"replicates, {args.splits} splits"
    )
    studies = dict(available_studies(args.data, args.datasets))
    if args.part != "halves" and "liver_lipidome" in studies:
        study = studies["liver_lipidome"]
        print_study("liver_lipidome", study)
        print("known truth, fitted at the true depth in Y's units (means over the replicates):")
        print(known_truth(study, args).round(4).to_string(), flush=True)
    if args.part != "truth":
        for name, study in studies.items():
            print_study(name, study)
            print(f"real split halves at depth {HALVES_DEPTH} (means over the splits):")
            print(split_halves(study, args).round(4).to_string(), flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
