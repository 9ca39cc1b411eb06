"""Does a low-rank remainder on top of tree-structured noise improve stage 2? Measured first.

Run ``python benchmarks/bench_low_rank.py [--data ../shared/data]``. Stage 2 here is the exact
Gaussian posterior of θ given empirical-Bayes scales (dense linear algebra, fine for m of a few
hundred): per covariate, at the class level (θ_j ~ N(u_g(j), τ_0²), u_g ~ N(θ0, τ_1²), θ0 ~
N(0, s0²) with s0 wide), b ~ N(θ, N) with the noise covariance N of each noise model; τ
maximises the marginal likelihood N(b; 0, P(τ) + N) and θ | b is Gaussian. The noise models:

* ``independent``: N = diag(se²), the research model;
* ``tree``: :func:`~bayeshier_pymc.noise.tree_noise` (``TreeNoise.covariance``);
* ``tree + remainder``: ``noise_remainder`` (``noise_remainder.py`` beside this script), the tree
  noise plus a factor model of what it leaves, rank by cross-validated likelihood (3 folds,
  ranks 0–10; ``NoiseRemainder.covariance``), and with the rank fixed at 1 and at 3;
* ``true Σ`` (simulation only): c_kk times the covariance that generated the residuals.

It prints the scores of :mod:`bayeshier_pymc.calibration` for (a) the liver-Σ simulation of
issue 14 (:func:`~bayeshier_pymc.calibration.known_truth_check`: the liver lipidome's design
and its residual covariance 0.8·S + 0.2·diag S, class effects sd 0.3 and deviations sd 0.1;
coverage of the true θ by 95% intervals, false sign rate among lfsr < 0.05 calls against their
mean lfsr, coefficient-MSE gain over stage 1) and (b) real split halves of QMDiab and the
liver lipidome (:func:`~bayeshier_pymc.calibration.split_half_check`: coverage of the other
half's estimates, sign errors among calls, truth-free MSE gain), with the mean rank chosen.
Data sets whose CSVs are absent are skipped with a message.

``--cost`` prints instead what a rank-10 remainder would cost at the COPDGene shape (p = 10,
m = 999 in 106 subclasses within 9 superclasses, n = 60, the residuals of
``bench_gibbs.py --noise-only`` plus 10 factors), where no sampler takes a remainder yet:

* collapsed NUTS: the time of one evaluation of log p(b | τ) for all covariates, the tree pass
  alone (:func:`~bayeshier_pymc.gaussian_tree.upward_pass`) against the tree pass plus the
  Woodbury correction (``low_rank_marginal`` of ``low_rank_algebra.py`` beside this script,
  r + 1 right-hand sides of one batched up-and-down pass), and against the alternative of
  sampling f with τ (the tree pass on b − L f), all in the NumPy reference;
* Gibbs engine: its measured time per sweep with tree-structured noise (4 chains, the second
  of two runs, so without compiling) against
  that time plus the latent-factor block the remainder adds to each sweep, timed in NumPy:
  per chain and covariate, f | θ, b ~ N(M⁻¹ Lᵀ N⁻¹ (b − θ), M⁻¹) (N the tree noise, fixed
  per covariate, so that N⁻¹ L, by r noise-only tree solves, and M = I + Lᵀ N⁻¹ L are
  computed once) and b − L f for the tree updates: two m × r products per chain and
  covariate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from low_rank_algebra import low_rank_marginal, tree_solve
from noise_remainder import NoiseRemainder, noise_remainder
from scipy import linalg, optimize

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    PosteriorSummary,
    known_truth_check,
    normal_posterior,
    split_half_check,
)
from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, upward_pass
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.noise import tree_noise
from bayeshier_pymc.simulate import ResidualNoise, simulate
from bayeshier_pymc.validation_data import (
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CV_FOLDS = 3
MAX_RANK = 10
GRID_POINTS = 25
"""Common log-scales tried for the empirical-Bayes start (``start_from_grid``)."""
FIXED_RANKS = {"tree + rank 1": 1, "tree + rank 3": 3}
NOISE_MODELS = ("independent", "tree", "tree + remainder", *FIXED_RANKS)
NoiseCovariance = Callable[[MLMFit, Hierarchy, object], np.ndarray]
"""(fit, hierarchy, covariate) → the m × m noise covariance of that covariate's estimates."""


def independent(fit: MLMFit, hierarchy: Hierarchy, covariate: object) -> np.ndarray:
    return np.diag(fit.se.sel(covariate=covariate).to_numpy() ** 2)


@dataclass
class DenseEmpiricalBayes:
    """A stage-2 fit for the calibration checks: exact Gaussian posterior given τ̂."""

    noise: str
    true_residual: np.ndarray | None = None
    ranks: list[int] | None = None

    def noise_covariances(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[object]
    ) -> list[np.ndarray]:
        if self.noise == "independent":
            return [independent(fit, hierarchy, c) for c in covariates]
        if self.noise == "tree":
            structure = tree_noise(fit, hierarchy)
            return [structure.covariance(c) for c in covariates]
        if self.noise == "tree + remainder":
            remainder = noise_remainder(fit, hierarchy, max_rank=MAX_RANK, n_folds=CV_FOLDS)
            assert self.ranks is not None
            self.ranks.append(remainder.rank)
            return [remainder.covariance(c) for c in covariates]
        if self.noise in FIXED_RANKS:
            remainder = noise_remainder(fit, hierarchy, rank=FIXED_RANKS[self.noise])
            return [remainder.covariance(c) for c in covariates]
        assert self.true_residual is not None
        c_kk = fit.coef_variance_factor.to_series()
        return [float(c_kk[c]) * self.true_residual for c in covariates]

    def __call__(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[object], random_seed: int
    ) -> PosteriorSummary:
        tree = hierarchy.align(fit.Y.columns)
        classes = tree.membership(0)
        means, sds = [], []
        for covariate, noise in zip(
            covariates, self.noise_covariances(fit, hierarchy, covariates), strict=True
        ):
            b = fit.coef.sel(covariate=covariate).to_numpy()
            mean, sd = tree_level_posterior(b, noise, [classes])
            means.append(mean)
            sds.append(sd)
        coords = {"covariate": list(covariates), "feature": tree.features.tolist()}

        dims = ("covariate", "feature")
        return normal_posterior(
            xr.DataArray(np.array(means), coords=coords, dims=dims),
            xr.DataArray(np.array(sds), coords=coords, dims=dims),
        )


def tree_level_posterior(
    b: np.ndarray,
    noise: np.ndarray,
    memberships: Sequence[np.ndarray],
    *,
    start_from_grid: bool = False,
    directions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of θ given the empirical-Bayes scales (dense).

    The prior of θ is θ0 (sd ``s0``, wide) plus one normal effect per group of every level
    in ``memberships`` (each feature's group index at that level; none for one global mean)
    plus the features' own deviations, each level with its own scale. With ``directions``
    (m × r, e.g. a noise remainder's loadings ``L``) the prior also has effects along them,
    ``L γ`` with γ ~ N(0, τ² I_r), ``L`` rescaled so that its rows' mean square is 1 (τ is
    then the RMS sd of these effects per feature), with a scale of their own. The scales
    maximise the marginal likelihood by L-BFGS-B from every scale at half the RMS standard
    error, or with ``start_from_grid`` from the best of a grid of common scales: the
    likelihood can be flat near the lower bound, where a first step from the fixed start may
    stop.
    """
    m = b.size
    same_group = [(codes[:, None] == codes[None, :]).astype(float) for codes in memberships]
    if directions is not None and directions.shape[1] > 0:
        outer = directions @ directions.T
        same_group.append(outer / np.mean(np.diag(outer)))
    rms_se = float(np.sqrt(np.mean(np.diag(noise))))
    s0 = 10.0 * (float(np.std(b)) + rms_se)

    def prior(log_tau: np.ndarray) -> np.ndarray:
        tau_feature, *tau_groups = np.exp(log_tau)
        groups = sum(tau**2 * same for tau, same in zip(tau_groups, same_group, strict=True))
        return s0**2 + groups + tau_feature**2 * np.eye(m)

    def negative_log_marginal(log_tau: np.ndarray) -> float:
        factor = linalg.cho_factor(prior(log_tau) + noise, lower=True)
        quadratic = b @ linalg.cho_solve(factor, b)
        return 0.5 * float(quadratic + 2.0 * np.sum(np.log(np.diag(factor[0]))))

    n_scales = 1 + len(same_group)
    bounds = [(np.log(1e-3 * rms_se), np.log(10.0 * s0))] * n_scales
    start = np.log([0.5 * rms_se] * n_scales)
    if start_from_grid:
        grid = np.linspace(*bounds[0], GRID_POINTS)
        start = np.full(
            n_scales, min(grid, key=lambda x: negative_log_marginal(np.full(n_scales, x)))
        )
    best = optimize.minimize(negative_log_marginal, start, method="L-BFGS-B", bounds=bounds)
    prior_cov = prior(best.x)
    factor = linalg.cho_factor(prior_cov + noise, lower=True)
    gain = linalg.cho_solve(factor, prior_cov).T  # P (P + N)⁻¹
    mean = gain @ b
    variance = np.diag(prior_cov) - np.sum(gain * prior_cov, axis=1)
    return mean, np.sqrt(variance)


def score_table(rows: dict[str, pd.Series], ranks: list[int]) -> pd.DataFrame:
    table = pd.DataFrame(rows).T
    table.index.name = "noise model"
    table["mean rank"] = np.nan
    if ranks:
        table.loc["tree + remainder", "mean rank"] = float(np.mean(ranks))
    return table


def simulation(study: ValidationStudy, n_replicates: int) -> None:
    covariance = real_residual_covariance(study)
    rows, ranks = {}, []
    for noise in (*NOISE_MODELS, "true Σ"):
        stage_two = DenseEmpiricalBayes(noise, covariance, ranks)
        result = known_truth_check(
            study.X,
            study.hierarchy.align(study.Y.columns),
            covariance,
            stage_two=stage_two,
            n_replicates=n_replicates,
            random_seed=0,
        )
        rows[noise] = result.loc["mean"]
    table = score_table(rows, ranks)
    columns = ["coverage", "calls", "false_sign_rate", "claimed_lfsr", "mse_gain", "mean rank"]
    print(f"(a) liver-Σ simulation, truth known ({n_replicates} data sets, class level)")
    print(table[columns].to_string(float_format=lambda v: f"{v:.3f}"))
    print()


def split_halves(name: str, study: ValidationStudy, n_splits: int) -> None:
    rows, ranks = {}, []
    for noise in NOISE_MODELS:
        result = split_half_check(
            study.Y,
            study.X,
            study.hierarchy,
            stage_two=DenseEmpiricalBayes(noise, ranks=ranks),
            n_splits=n_splits,
            random_seed=0,
        )
        rows[noise] = result.loc["mean"]
    table = score_table(rows, ranks)
    columns = [
        "coverage",
        "coverage_se",
        "checked_calls",
        "sign_error_rate",
        "claimed_lfsr",
        "mse_gain",
        "mean rank",
    ]
    print(f"(b) {name}: real split halves ({n_splits} splits, m = {study.Y.shape[1]})")
    print(table[columns].to_string(float_format=lambda v: f"{v:.3f}"))
    print()


COST_RANK = 10
COST_RESIDUALS = ResidualNoise(
    subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3, n_factors=COST_RANK, factor_sd=0.3
)


def cost_study(seed: int) -> tuple[MLMFit, Hierarchy]:
    """The COPDGene shape of ``bench_gibbs.py`` with shared and factor residuals."""
    shares = np.random.default_rng(seed).dirichlet(np.full(106, 2.0))
    study = simulate(
        n=60,
        m=999,
        p=10,
        proportions=shares,
        n_superclasses=9,
        residuals=COST_RESIDUALS,
        random_seed=seed,
    )
    fit = mlm(study.Y, study.X, x_intercept=False)
    return fit, Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])


def median_time(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def cost(seed: int, repeats: int, draws: int) -> None:
    fit, hierarchy = cost_study(seed)
    remainder = noise_remainder(fit, hierarchy, rank=COST_RANK)
    covariates = list(fit.X.columns)
    tree = TreeIndex.from_hierarchy(remainder.tree.hierarchy)
    scales = [remainder.tree.for_covariate(c) for c in covariates]
    own = np.array([v.own for v in scales])
    noise = NodeNoise(
        tuple(np.array([v.groups[level] for v in scales]) for level in range(tree.depth)),
        np.array([v.top for v in scales]),
    )
    loadings = np.array([remainder.loadings_for_covariate(c) for c in covariates])
    b = fit.coef.sel(covariate=covariates).to_numpy()
    tau = np.full((len(covariates), tree.depth + 1), 0.1)
    tree_only = median_time(lambda: upward_pass(b, own, tau, tree, 0.0, 1.0, noise=noise), repeats)
    woodbury = median_time(
        lambda: low_rank_marginal(b, own, tau, tree, 0.0, 1.0, loadings, noise), repeats
    )
    factors = np.random.default_rng(seed).standard_normal((len(covariates), COST_RANK))

    def latent_factors() -> np.ndarray:
        shifted = b - (loadings @ factors[..., None])[..., 0]
        return upward_pass(shifted, own, tau, tree, 0.0, 1.0, noise=noise).log_marginal

    latent = median_time(latent_factors, repeats)
    print(f"cost of a rank-{COST_RANK} remainder at the COPDGene shape (p = 10, m = 999, n = 60)")
    print(
        f"collapsed NUTS, one log p(b | τ) for all covariates (NumPy reference): tree pass "
        f"{1e3 * tree_only:.2f} ms, with the Woodbury correction {1e3 * woodbury:.2f} ms: "
        f"ratio {woodbury / tree_only:.1f}; with f as {COST_RANK} more NUTS parameters per "
        f"covariate instead (the tree pass on b − L f) {1e3 * latent:.2f} ms: "
        f"ratio {latent / tree_only:.1f} per evaluation"
    )
    gibbs_cost(fit, hierarchy, remainder, repeats, draws, seed)


def gibbs_cost(
    fit: MLMFit,
    hierarchy: Hierarchy,
    remainder: NoiseRemainder,
    repeats: int,
    draws: int,
    seed: int,
) -> None:
    chains = 4
    model = ShrinkageModel(fit, hierarchy, noise=remainder.tree)
    sweep_times = []
    for _ in range(2):  # the first run includes compiling the kernels
        idata = model.sample(
            "gibbs", draws=draws, tune=draws, chains=chains, random_seed=seed, progressbar=False
        )
        sweep_times.append(float(idata.attrs["sampling_time"]) / (2 * draws))
    per_sweep = sweep_times[-1]
    covariates = list(fit.X.columns)
    scales = [remainder.tree.for_covariate(c) for c in covariates]
    tree = TreeIndex.from_hierarchy(remainder.tree.hierarchy)
    # rows: chain × covariate
    own = np.tile(np.array([v.own for v in scales]), (chains, 1))
    noise = NodeNoise(
        tuple(
            np.tile(np.array([v.groups[level] for v in scales]), (chains, 1))
            for level in range(tree.depth)
        ),
        np.tile(np.array([v.top for v in scales]), chains),
    )
    loadings = np.tile(
        np.array([remainder.loadings_for_covariate(c) for c in covariates]), (chains, 1, 1)
    )
    zeros = np.zeros((own.shape[0], tree.depth + 1))
    rank = loadings.shape[-1]
    weighted = np.stack(
        [
            tree_solve(np.swapaxes(loadings, -1, -2)[:, r], own, zeros, tree, 0.0, noise)
            for r in range(rank)
        ],
        axis=-1,
    )
    precision = np.eye(rank) + np.swapaxes(loadings, -1, -2) @ weighted
    factor = np.linalg.cholesky(precision)
    b = np.tile(fit.coef.sel(covariate=covariates).to_numpy(), (chains, 1))
    theta = 0.9 * b
    rng = np.random.default_rng(seed)

    def factor_block() -> np.ndarray:
        # Lᵀ N⁻¹ (b − θ) = (N⁻¹ L)ᵀ (b − θ): N is fixed, so N⁻¹ L is computed once
        u = ((b - theta)[:, None, :] @ weighted)[:, 0, :]
        mean = np.linalg.solve(precision, u[..., None])[..., 0]
        white = rng.standard_normal(mean.shape)
        f = mean + np.linalg.solve(np.swapaxes(factor, -1, -2), white[..., None])[..., 0]
        return b - (loadings @ f[..., None])[..., 0]

    extra = median_time(factor_block, repeats)
    print(
        f"Gibbs engine ({chains} chains, tree-structured noise): {1e3 * per_sweep:.2f} ms per "
        f"sweep; the factor block adds {1e3 * extra:.2f} ms (NumPy): ratio "
        f"{(per_sweep + extra) / per_sweep:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--cost", action="store_true", help="only the cost at the COPDGene shape")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--draws", type=int, default=500)
    args = parser.parse_args()
    start = time.perf_counter()
    if args.cost:
        cost(0, args.repeats, args.draws)
        print(f"{time.perf_counter() - start:.0f} s")
        return
    studies = dict(available_studies(args.data, ("liver_lipidome", "qmdiab")))
    if "liver_lipidome" in studies:
        simulation(studies["liver_lipidome"], args.replicates)
    for name, study in studies.items():
        split_halves(name, study, args.splits)
    print(
        "exact Gaussian posterior given empirical-Bayes τ (class level); remainder rank by "
        f"{CV_FOLDS}-fold cross-validated likelihood over ranks 0–{MAX_RANK}; "
        f"{time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
