"""The joint likelihood over covariates (C ⊗ Σ̂) against each covariate's own: what it gains.

Run ``python benchmarks/bench_joint_covariates.py [--data ../shared/data] [--splits 10]
[--replicates 6]`` (``--quick``: 2 splits and 1 replicate). For QMDiab plasma and the liver
lipidome (each skipped with a message when its CSVs are absent) it prints:

* the correlation of the estimates across covariates, ``c_kl / √(c_kk c_ll)`` with
  ``c = (X'X)⁻¹`` on the whole data set: the joint likelihood can only gain through these
  (with orthogonal covariates it is the per-covariate one);
* split halves (:func:`bayeshier_pymc.calibration.split_half_cells`): 95% predictive coverage
  of the other half's estimates with its standard error over clusters, sign errors among
  lfsr < 0.05 calls against their mean lfsr, the truth-free coefficient-MSE gain over stage 1,
  and the MSE change against the per-covariate posterior (paired over splits), overall and by
  covariate;
* real noise, known truth (:func:`bayeshier_pymc.calibration.known_truth_check`): the data
  set's design and residual covariance 0.8 S + 0.2 diag S, true effects = class effects
  (sd 0.3) + feature deviations (sd 0.1), independent across covariates as the priors say;
  coverage of the true θ, false sign rate against mean lfsr, MSE gain, MSE change;
* the cost of the dense computations, per-covariate against joint: the time of one evaluation
  of the marginal likelihood and its gradient (best of 5, on the whole data set) and how many
  evaluations each fit's scales took.

Stage 2 here is an exact dense Gaussian posterior given empirical-Bayes scales, at the full
depth of the tree, with the package's default (``"auto"``) priors and tree-structured noise Σ̂
(:func:`bayeshier_pymc.noise.tree_noise` of the half's or the simulated fit). Given the scales
τ every model is Gaussian: θ_k ~ N(0, P_k(τ_k)), P_k = τ_w² I + τ_v² [same class] +
τ_u² [same category] + s0_k² 11', independent across covariates. The three posteriors:

* ``per-covariate``: b_k ~ N(θ_k, c_kk Σ̂) alone (what the package fits), τ̂_k maximising
  p(b_k | τ_k) (times the HalfCauchy prior of log τ, as
  :func:`bayeshier_pymc.model.empirical_bayes_scales`, which keeps a scale off zero);
* ``joint, same τ̂``: vec(b) ~ N(vec(θ), C ⊗ Σ̂) over the shrunk covariates, with the
  per-covariate τ̂ (the likelihood's gain alone);
* ``joint, joint τ̂``: the same likelihood with every covariate's τ re-maximised jointly on
  p(b | τ) p(log τ) (started from the per-covariate τ̂).

The intercept is left out of b: its θ has no prior, so its estimate carries no information
about the others' errors and dropping it is exact (the rows and columns of the shrunk
covariates of C are the marginal covariance of their estimates). Everything is m × m or
pm × pm dense with Cholesky factors (p·m ≈ 1,500 here); a first line per data set checks the
dense per-covariate log p(b_k | τ̂_k) against the package's tree pass. The output ends with
the machine's load average. The output in the docs was written with
``OPENBLAS_NUM_THREADS=1``: on a shared machine one BLAS thread per call runs faster and times
more steadily than threads that wait for each other.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from scipy import linalg, optimize, stats

from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    TRUTH_COLUMNS,
    PosteriorSummary,
    known_truth_check,
    normal_posterior,
    split_half_cells,
    split_half_summary,
)
from bayeshier_pymc.gaussian_tree import NodeNoise, TreeIndex, upward_pass
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.noise import TreeNoise, tree_noise
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.validation_data import (
    VALIDATION_SETS,
    ValidationStudy,
    available_studies,
    real_residual_covariance,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Likelihood = Literal["per-covariate", "joint"]
METHODS: dict[str, tuple[Likelihood, Likelihood]] = {
    "per-covariate": ("per-covariate", "per-covariate"),
    "joint, same τ̂": ("joint", "per-covariate"),
    "joint, joint τ̂": ("joint", "joint"),
}
"""Each posterior by name: (its likelihood, the likelihood its scales maximise)."""
REFERENCE = "per-covariate"


@dataclass(frozen=True)
class DenseProblem:
    """The estimates of some covariates with their joint noise and the tree's prior structures.

    Attributes
    ----------
    b
        Estimates, covariate × feature.
    c
        ``(X'X)⁻¹`` restricted to these covariates.
    sigma
        The residual covariance Σ̂ (m × m, tree-structured).
    same_group
        For each scale level (features first), the m × m matrix of the prior's structure:
        the identity for the features, ``[j and j' share a group]`` for each annotation level.
    s0, tau_scale
        The priors: sd of θ0 per covariate, HalfCauchy scale per covariate and level.
    """

    b: np.ndarray
    c: np.ndarray
    sigma: np.ndarray
    same_group: tuple[np.ndarray, ...]
    s0: np.ndarray
    tau_scale: np.ndarray

    @property
    def n_covariates(self) -> int:
        """Number of covariates p."""
        return self.b.shape[0]

    def covariate(self, k: int) -> DenseProblem:
        """The problem of covariate ``k`` alone (its marginal likelihood)."""
        return DenseProblem(
            self.b[k : k + 1],
            self.c[k : k + 1, k : k + 1],
            self.sigma,
            self.same_group,
            self.s0[k : k + 1],
            self.tau_scale[k : k + 1],
        )

    def prior_covariance(self, tau: np.ndarray) -> np.ndarray:
        """The block-diagonal prior covariance of vec(θ) given ``tau`` (covariate × level)."""
        m = self.b.shape[1]
        prior = np.zeros((self.n_covariates * m,) * 2)
        for k in range(self.n_covariates):
            block = np.full((m, m), self.s0[k] ** 2)
            for level, structure in enumerate(self.same_group):
                block += tau[k, level] ** 2 * structure
            prior[k * m : (k + 1) * m, k * m : (k + 1) * m] = block
        return prior

    def marginal_factor(self, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The prior covariance P and the Cholesky factor of P + C ⊗ Σ̂, Cov(vec b) given τ."""
        prior = self.prior_covariance(tau)
        return prior, linalg.cholesky(prior + np.kron(self.c, self.sigma), lower=True)


def dense_problem(fit: MLMFit, noise: TreeNoise, covariates: Sequence[Any]) -> DenseProblem:
    """The dense problem of ``covariates`` of a stage-1 fit with its tree-structured noise."""
    features = noise.features
    se = fit.se.sel(covariate=list(covariates), feature=features).to_numpy()
    tree = noise.hierarchy
    priors = Priors.resolve(None, ("feature", *tree.levels), covariates, se)
    rows = fit.X.columns.get_indexer(list(covariates))
    design = fit.X.to_numpy()
    c = np.linalg.inv(design.T @ design)[np.ix_(rows, rows)]
    memberships = [tree.membership(level) for level in range(tree.depth)]
    same_group = (
        np.eye(tree.n_features),
        *((codes[:, None] == codes[None, :]).astype(float) for codes in memberships),
    )
    return DenseProblem(
        b=fit.coef.sel(covariate=list(covariates), feature=features).to_numpy(),
        c=c,
        sigma=noise.covariance(),
        same_group=same_group,
        s0=priors.s0,
        tau_scale=priors.tau_scale,
    )


def negative_log_posterior(log_tau: np.ndarray, problem: DenseProblem) -> tuple[float, np.ndarray]:
    """−log p(b | τ) − log p(log τ) and its gradient in log τ (covariate × level, flattened).

    The gradient of log N(b; 0, K) in log τ_kl is τ_kl² Σ (αα' − K⁻¹) ∘ S_l over covariate
    k's block (α = K⁻¹ b, S_l the level's structure); the prior is HalfCauchy on τ with the
    Jacobian of the log.
    """
    tau = np.exp(log_tau.reshape(problem.n_covariates, len(problem.same_group)))
    _, factor = problem.marginal_factor(tau)
    b = problem.b.ravel()
    alpha = linalg.cho_solve((factor, True), b)
    log_marginal = -0.5 * (
        b @ alpha + 2.0 * np.log(np.diag(factor)).sum() + b.size * np.log(2.0 * np.pi)
    )
    lower_inverse, info = linalg.lapack.dpotri(factor, lower=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"the inverse of Cov(vec b) failed (LAPACK info {info}).")
    m = problem.b.shape[1]
    gradient = np.empty_like(tau)
    for k in range(problem.n_covariates):
        rows = slice(k * m, (k + 1) * m)
        triangle = np.tril(lower_inverse[rows, rows])
        block = np.outer(alpha[rows], alpha[rows]) - triangle - np.tril(triangle, -1).T
        for level, structure in enumerate(problem.same_group):
            gradient[k, level] = tau[k, level] ** 2 * np.sum(block * structure)
    ratio = (tau / problem.tau_scale) ** 2
    log_prior = np.sum(np.log(tau) - np.log1p(ratio))
    gradient_prior = 1.0 - 2.0 * ratio / (1.0 + ratio)
    return -(log_marginal + log_prior), -(gradient + gradient_prior).ravel()


def empirical_bayes_scales(
    problem: DenseProblem, start: np.ndarray | None = None
) -> tuple[np.ndarray, int]:
    """The scales τ̂ (covariate × level) maximising p(b | τ) p(log τ), and the evaluations."""
    if start is None:
        start = 0.5 * problem.tau_scale
    result = optimize.minimize(
        negative_log_posterior,
        np.log(start).ravel(),
        args=(problem,),
        jac=True,
        method="L-BFGS-B",
    )
    return np.exp(result.x.reshape(start.shape)), int(result.nfev)


def posterior_moments(problem: DenseProblem, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of θ (covariate × feature) given ``tau``: P K⁻¹ b, P − P K⁻¹ P."""
    prior, factor = problem.marginal_factor(tau)
    mean = prior @ linalg.cho_solve((factor, True), problem.b.ravel())
    whitened = linalg.solve_triangular(factor, prior, lower=True)
    variance = np.diag(prior) - np.sum(whitened * whitened, axis=0)
    shape = problem.b.shape
    return mean.reshape(shape), np.sqrt(variance).reshape(shape)


@dataclass
class DenseEmpiricalBayes:
    """A stage-2 fit for the calibration checks: the exact posterior given τ̂ (module docstring).

    Attributes
    ----------
    likelihood
        ``"per-covariate"`` (b_k alone) or ``"joint"`` (C ⊗ Σ̂ over the covariates).
    scales
        The likelihood whose maximum gives τ̂.
    evaluations
        For every fit, the evaluations of log p(b | τ) and its gradient its scales took, by
        size of the problem (``"per-covariate"``: m × m, ``"joint"``: pm × pm).
    """

    likelihood: Likelihood
    scales: Likelihood
    evaluations: list[dict[str, int]] = field(default_factory=list)

    def __call__(
        self,
        fit: MLMFit,
        hierarchy: Hierarchy,
        covariates: Sequence[Any],
        random_seed: int,
    ) -> PosteriorSummary:
        """The posterior summary of ``covariates``; ``random_seed`` is unused (exact)."""
        noise = tree_noise(fit, hierarchy)
        problem = dense_problem(fit, noise, covariates)
        single = [problem.covariate(k) for k in range(problem.n_covariates)]
        scales, counts = zip(*(empirical_bayes_scales(alone) for alone in single), strict=True)
        tau = np.vstack(scales)
        evaluations = {"per-covariate": sum(counts), "joint": 0}
        if self.scales == "joint":
            tau, evaluations["joint"] = empirical_bayes_scales(problem, start=tau)
        self.evaluations.append(evaluations)
        if self.likelihood == "joint":
            mean, sd = posterior_moments(problem, tau)
        else:
            moments = [posterior_moments(alone, tau[k : k + 1]) for k, alone in enumerate(single)]
            mean, sd = (np.vstack(parts) for parts in zip(*moments, strict=True))
        coords = {"covariate": list(covariates), "feature": noise.features.to_numpy()}
        dims = ("covariate", "feature")
        return normal_posterior(
            xr.DataArray(mean, coords=coords, dims=dims),
            xr.DataArray(sd, coords=coords, dims=dims),
        )


def estimate_correlation(fit: MLMFit, covariates: Sequence[Any]) -> pd.DataFrame:
    """``c_kl / √(c_kk c_ll)``: the correlation of the estimates of two covariates."""
    design = fit.X.to_numpy()
    rows = fit.X.columns.get_indexer(list(covariates))
    c = np.linalg.inv(design.T @ design)[np.ix_(rows, rows)]
    scale = np.sqrt(np.diag(c))
    return pd.DataFrame(c / np.outer(scale, scale), index=covariates, columns=covariates)


def tree_pass_check(
    problem: DenseProblem, noise: TreeNoise, tau: np.ndarray, covariates: Sequence[Any]
) -> float:
    """Largest |dense − tree pass| of log p(b_k | τ_k) over the ``covariates`` of ``problem``."""
    tree = TreeIndex.from_hierarchy(noise.hierarchy)
    worst = 0.0
    for k, covariate in enumerate(covariates):
        alone = problem.covariate(k)
        _, factor = alone.marginal_factor(tau[k : k + 1])
        dense = stats.multivariate_normal.logpdf(alone.b.ravel(), cov=factor @ factor.T)
        variances = noise.for_covariate(covariate)
        passed = upward_pass(
            alone.b[0],
            variances.own,
            tau[k],
            tree,
            0.0,
            float(alone.s0[0]),
            noise=NodeNoise(variances.groups, variances.top),
        ).log_marginal
        worst = max(worst, abs(float(dense) - float(passed)))
    return worst


def paired_change(mse: pd.Series, reference: pd.Series) -> dict[str, float]:
    """MSE change against the reference, in % of its mean MSE, with the paired standard error.

    ``mse`` and ``reference`` hold one MSE per split or replicate (the same ones):
    ``100 (mean mse / mean reference − 1)``, and the standard error of the mean paired
    difference in the same unit.
    """
    difference = mse - reference
    scale = 100.0 / reference.mean()
    se = difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else np.nan
    return {"mse_change_%": scale * difference.mean(), "change_se_%": scale * se}


def split_half_report(name: str, cells: dict[str, pd.DataFrame]) -> None:
    """Print the split-half scores of every method and its MSE change, overall and by covariate."""
    summaries = {method: split_half_summary(frame) for method, frame in cells.items()}
    reference = summaries[REFERENCE]["mse"].drop("mean")
    rows = {
        method: {
            **summary.loc["mean", SPLIT_COLUMNS].to_dict(),
            **paired_change(summary["mse"].drop("mean"), reference),
        }
        for method, summary in summaries.items()
    }
    print(f"{name}, split halves ({reference.size} splits, means; MSE change against")
    print("per-covariate in % of its MSE, with the standard error of the paired difference):")
    print(pd.DataFrame.from_dict(rows, orient="index").to_string(float_format="{:.4f}".format))
    by_covariate = {method: _mse_by_covariate(frame) for method, frame in cells.items()}
    base = by_covariate[REFERENCE]
    table = {"per-covariate MSE": base.groupby(level="covariate", sort=False).mean()}
    for method, mse in by_covariate.items():
        if method == REFERENCE:
            continue
        difference = (mse - base).groupby(level="covariate", sort=False)
        table[f"{method}: Δ"] = difference.mean()
        table[f"{method}: se"] = difference.std(ddof=1) / np.sqrt(difference.size())
    coverage = pd.DataFrame(
        {
            method: frame.groupby("covariate", sort=False)["covered"].mean()
            for method, frame in cells.items()
        }
    )
    print(f"{name}, split halves by covariate: truth-free MSE of per-covariate and the paired")
    print(
        "difference of each joint posterior (Δ < 0: the joint is better), with its standard error:"
    )
    print(pd.DataFrame(table).to_string(float_format="{:+.5f}".format))
    print(f"{name}, split halves by covariate: coverage")
    print(coverage.to_string(float_format="{:.4f}".format))


def _mse_by_covariate(frame: pd.DataFrame) -> pd.Series:
    """Truth-free coefficient MSE by split and covariate: mean((b_B − μ)²) − mean(s_B²)."""
    squared = (frame["b_b"] - frame["mean"]) ** 2 - frame["s_b"] ** 2
    return squared.groupby([frame["split"], frame["covariate"]], sort=False).mean()


def known_truth_report(name: str, rows: dict[str, pd.DataFrame]) -> None:
    """Print the known-truth scores of every method and its MSE change against per-covariate."""
    reference = rows[REFERENCE]["mse"].drop("mean")
    table = {
        method: {
            **frame.loc["mean", TRUTH_COLUMNS].to_dict(),
            **paired_change(frame["mse"].drop("mean"), reference),
        }
        for method, frame in rows.items()
    }
    print(f"{name}, real noise, known truth ({reference.size} replicates, means; MSE change")
    print("as for the split halves):")
    print(pd.DataFrame.from_dict(table, orient="index").to_string(float_format="{:.4f}".format))


def best_seconds(work: Callable[[], object], repeats: int = 5) -> float:
    """The fastest of ``repeats`` wall-clock runs of ``work`` (the least disturbed by load)."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def cost_report(
    name: str, problem: DenseProblem, tau: np.ndarray, fits: dict[str, DenseEmpiricalBayes]
) -> None:
    """Print each method's dense cost per fit: evaluations of its scales × their time."""
    single = [problem.covariate(k) for k in range(problem.n_covariates)]
    log_tau = np.log(tau)
    per_covariate = best_seconds(
        lambda: [negative_log_posterior(log_tau[k], alone) for k, alone in enumerate(single)]
    )
    joint = best_seconds(lambda: negative_log_posterior(log_tau.ravel(), problem))
    posterior = {
        "per-covariate": best_seconds(
            lambda: [posterior_moments(alone, tau[k : k + 1]) for k, alone in enumerate(single)]
        ),
        "joint": best_seconds(lambda: posterior_moments(problem, tau)),
    }
    p, m = problem.b.shape
    print(
        f"{name}, cost (dense, on the whole data set; wall seconds, best of 5): one evaluation "
        f"of log p(b | τ) and its gradient {per_covariate / p:.4f} s per covariate "
        f"(m × m, m = {m}), {joint:.4f} s joint (pm × pm, pm = {p * m}): "
        f"{joint / per_covariate:.1f}× all {p} covariates'"
    )
    rows = {}
    for method, stage in fits.items():
        counts = pd.DataFrame(stage.evaluations).median()
        scales = counts["per-covariate"] * per_covariate / p + counts["joint"] * joint
        rows[method] = {
            "evaluations m×m": counts["per-covariate"],
            "evaluations pm×pm": counts["joint"],
            "scales_s": scales,
            "posterior_s": posterior[METHODS[method][0]],
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame["total_s"] = frame["scales_s"] + frame["posterior_s"]
    frame["× per-covariate"] = frame["total_s"] / frame.loc[REFERENCE, "total_s"]
    print("  per fit (median evaluations over the fits above, times the evaluation's time):")
    print(frame.to_string(float_format="{:.3f}".format))


def run_data_set(
    name: str, study: ValidationStudy, splits: int, replicates: int, seed: int
) -> None:
    """Every check of one data set."""
    covariates = list(study.X.columns)
    whole = mlm(study.Y, study.X)
    print(
        f"\n{name}: {study.Y.shape[0]} samples × {study.Y.shape[1]} features, "
        f"covariates {covariates}, {study.hierarchy}"
    )
    correlation = estimate_correlation(whole, covariates)
    off_diagonal = np.abs(correlation.to_numpy()[~np.eye(len(covariates), dtype=bool)])
    print(f"{name}: correlation of the estimates across covariates, c_kl / √(c_kk c_ll):")
    print(correlation.to_string(float_format="{:+.2f}".format))
    print(
        f"  largest |off-diagonal| {off_diagonal.max():.2f}, "
        f"mean |off-diagonal| {off_diagonal.mean():.2f}"
    )
    noise = tree_noise(whole, study.hierarchy)
    problem = dense_problem(whole, noise, covariates)
    tau = np.vstack(
        [empirical_bayes_scales(problem.covariate(k))[0] for k in range(len(covariates))]
    )
    check = tree_pass_check(problem, noise, tau, covariates)
    print(f"  dense per-covariate log p(b_k | τ̂_k) against the tree pass: max |Δ| = {check:.1e}")

    fits = {method: DenseEmpiricalBayes(*choice) for method, choice in METHODS.items()}
    cells = {
        method: split_half_cells(
            study.Y,
            study.X,
            study.hierarchy,
            stage_two=stage,
            n_splits=splits,
            random_seed=seed,
        )
        for method, stage in fits.items()
    }
    split_half_report(name, cells)
    if replicates > 0:
        covariance = real_residual_covariance(study)
        truth = {
            method: known_truth_check(
                study.X,
                study.hierarchy,
                covariance,
                stage_two=stage,
                n_replicates=replicates,
                random_seed=seed,
            )
            for method, stage in fits.items()
        }
        known_truth_report(name, truth)
    cost_report(name, problem, tau, fits)


def main() -> None:
    """Run the comparison on every data set present."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the CSVs")
    parser.add_argument("--splits", type=int, default=10, help="split-half splits")
    parser.add_argument("--replicates", type=int, default=6, help="known-truth replicates")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and data sets")
    parser.add_argument(
        "--quick", action="store_true", help="2 splits and 1 replicate (a smoke run)"
    )
    args = parser.parse_args()
    splits, replicates = (2, 1) if args.quick else (args.splits, args.replicates)
    print(
        f"exact dense posterior given empirical-Bayes τ̂, full depth, priors 'auto', "
        f"tree-structured noise; seed {args.seed}, {splits} splits, {replicates} known-truth "
        f"replicates; {os.cpu_count()} CPUs, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    )
    for name, study in available_studies(args.data, VALIDATION_SETS):
        run_data_set(name, study, splits, replicates, args.seed)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


if __name__ == "__main__":
    main()
