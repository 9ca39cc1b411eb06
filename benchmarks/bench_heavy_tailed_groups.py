"""A heavy-tailed prior of the group effects: does it close the split-half coverage gap?

A research prototype, outside the package, whose default model it does not change. The
structured (tree-noise) model of the package puts a normal prior on every group effect,
u_g ~ N(parent, τ_d²), with one scale τ_d per annotation level learned from all its groups.
``docs/calibration.md`` ("Why split-half coverage falls short") found that a few groups with
large, coherent effects are pulled towards their parent because τ_d is small. Here every
group effect of the levels used gets its own local scale λ_g,

    u_g ~ N(parent, τ_d² λ_g²),

with three priors of λ_g (the features' deviations around their group stay normal):

* ``normal``: λ_g ≡ 1, the package's model;
* ``t3``: λ_g² ~ InvGamma(3/2, 3/2), so that u_g is Student-t with 3 df around its parent;
* ``horseshoe``: λ_g ~ HalfCauchy(0, 1), as the inverse-gamma mixture λ_g² | ξ_g ~
  InvGamma(1/2, 1/ξ_g), ξ_g ~ InvGamma(1/2, 1) (Makalic & Schmidt 2016).

τ_d keeps the package's HalfCauchy prior (``priors="auto"``), θ0 its normal one.

The sampler (:func:`sample_group_prior`) is a Gibbs sampler on the package's reference tree
algebra (:mod:`bayeshier_pymc.gaussian_tree`). Given λ, the model is the package's Gaussian
tree with per-unit prior variances τ_d² λ_g² at the group nodes (the algebra's ``local``
variances; the package's Gibbs engine samples the same model with ``priors={"group_prior":
...}``, with its own τ update). One sweep: (1) each log τ_d in turn by two random-walk
Metropolis steps on its collapsed conditional p(τ_d | b, λ, other τ) (θ, the group effects and
θ0 integrated out by the upward pass; the package's ``log_scale_prior``), the proposal sd
tuned towards 44% acceptance while tuning and fixed afterwards (the package's engine
slice-samples, then uses an independence proposal; one upward pass per step is what the
NumPy reference can afford); (2) θ0, the group effects and θ drawn exactly given τ and λ
(the totals top-down, then each node's increment split into its effect and its shared noise:
``draw_tree`` and ``split_totals``); (3) λ (and ξ) from their conjugate inverse-gamma
conditionals given the effects (the package's,
:func:`~bayeshier_pymc.gibbs.local_scales.draw_conditional_local_variance`). With λ ≡ 1
this samples the package's posterior; the script checks it against the package's Gibbs
engine on one split (``engine check``).

Output, per data set found in ``--data`` (QMDiab plasma and the liver lipidome; skipped with a
message when their CSVs are absent), on the split halves of
:func:`bayeshier_pymc.calibration.split_half_cells` (seed 0, 6 splits as in
``bench_calibration.py``):

* **engine check**: θ's posterior mean and sd under ``normal`` against the package's Gibbs
  engine on the first split (depth 2): the largest |z| over the cells of the difference of
  means and of sds, each over its Monte Carlo standard error (from the ESS of both runs),
  against the Bonferroni 5% bound; and the scales' posterior medians side by side;
* **split halves**: per depth (1, 2) and prior, ``coverage`` of half B's estimates by half
  A's 95% predictive intervals (goal 93–97%) with its cluster-robust ``coverage_se``;
  ``calls`` (lfsr < 0.05) and ``checked_calls`` (half B's |z| > 3), their
  ``sign_error_rate`` against ``claimed_lfsr`` (mean lfsr); ``mse_gain`` over stage 1 (means
  over the splits, as :func:`~bayeshier_pymc.calibration.split_half_summary`); the
  differences from the normal prior on the same cells, ``coverage_minus_normal`` with its
  cluster-robust ``se_coverage_diff`` and ``mse_minus_normal`` (coefficient MSE, truth-free)
  with ``se_mse_diff`` over the splits; ``max_rhat``,
  the largest rank r̂ of θ and τ over the splits' fits; and ``stage 1`` for reference;
* **worst clusters**: the clusters (covariate × finest group) that make most of the normal
  prior's shortfall from 95% at depth 2 (as in ``bench_calibration_diagnosis.py``), each
  prior's coverage of them, the mean z = b / se of their estimates in half A and half B, and
  the posterior median of their λ_g (mean over splits);
* **scales**: the posterior median of the finest group level's τ per covariate and prior,
  at depth 2 (mean over splits);
* **simulation**: the research simulation (:func:`bayeshier_pymc.simulate`, normal group
  effects, independent residuals) at depth 2: coverage of the true θ by the 95% intervals,
  false sign rate of the lfsr < 0.05 calls against their mean lfsr, and the MSE gain over
  stage 1 (:func:`~bayeshier_pymc.calibration.known_truth_scores`), means over replicates.

Run ``python benchmarks/bench_heavy_tailed_groups.py [--data ../shared/data]``; ``--quick``
runs one data set, two splits, depth 2 and fewer draws (a smoke test, minutes less).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import arviz as az
import numpy as np
import pandas as pd
from scipy import stats

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm, simulate
from bayeshier_pymc.calibration import (
    SPLIT_COLUMNS,
    PosteriorSummary,
    clustered_coverage_se,
    known_truth_scores,
    posterior_summary,
    split_half_cells,
    split_half_summary,
    stage_one_posterior,
)
from bayeshier_pymc.convergence import ess, rank_rhat, split_chains
from bayeshier_pymc.gaussian_tree import (
    Messages,
    NodeNoise,
    TreeIndex,
    draw_tree,
    pad_scales,
    upward_pass,
)
from bayeshier_pymc.gibbs.local_scales import draw_conditional_local_variance
from bayeshier_pymc.gibbs.scale_kernels import log_scale_prior
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.validation_data import VALIDATION_SETS, ValidationStudy, available_studies

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GOAL = 0.95
N_WORST = 4
METROPOLIS_STEPS = 2
"""Random-walk Metropolis steps per scale τ_d and sweep."""
INITIAL_STEP = 0.5
"""The proposal sd on the log-τ scale at the start of tuning."""
TARGET_ACCEPTANCE = 0.44
"""The acceptance rate the proposal sd is tuned towards while tuning (a 1-d random walk)."""
START_SPREAD = 0.5
"""Sd of the chains' starting log τ around log of the prior scale (dispersed starts)."""


# ----------------------------------------------------------------------------- the prior
class LocalScales(NamedTuple):
    """The local scales of one group level, squared, and the horseshoe's auxiliary ξ."""

    lam2: np.ndarray
    xi: np.ndarray


@dataclass(frozen=True)
class GroupPrior:
    """The prior of the group effects' local scales λ_g (module docstring).

    Attributes
    ----------
    kind
        ``"normal"`` (λ ≡ 1), ``"student_t"`` (λ² ~ InvGamma(df/2, df/2)) or ``"horseshoe"``
        (λ ~ HalfCauchy(0, 1)).
    df
        Degrees of freedom of the Student-t prior.
    """

    kind: Literal["normal", "student_t", "horseshoe"]
    df: float = 3.0

    def start(self, shape: tuple[int, ...]) -> LocalScales:
        """Every λ² and ξ at 1."""
        return LocalScales(np.ones(shape), np.ones(shape))

    def update(
        self, local: LocalScales, standardised: np.ndarray, rng: np.random.Generator
    ) -> LocalScales:
        """λ² (and ξ) from their conditional given the squared effects δ_g² / τ_d².

        The package's conditionals
        (:func:`bayeshier_pymc.gibbs.local_scales.draw_conditional_local_variance`).
        """
        if self.kind == "normal":
            return local
        return LocalScales(
            *draw_conditional_local_variance(self.kind, self.df, standardised, local.xi, rng)
        )


PRIORS = {
    "normal": GroupPrior("normal"),
    "t3": GroupPrior("student_t", 3.0),
    "horseshoe": GroupPrior("horseshoe"),
}


# --------------------------------------------------------------------------- the sampler
@dataclass(frozen=True)
class Draws:
    """Kept draws of one fit: θ, τ and each effect level's local scales λ.

    Attributes
    ----------
    theta
        (chain, draw, covariate, feature).
    tau
        (chain, draw, covariate, level), the levels of ``problem.scale_levels``.
    local_scale
        For each group level used, finest first, λ (chain, draw, covariate, group).
    """

    theta: np.ndarray
    tau: np.ndarray
    local_scale: list[np.ndarray]


@dataclass(frozen=True)
class RowData:
    """One fit's data, one row per (chain, covariate), chains leading; the tree algebra's."""

    b: np.ndarray
    var_b: np.ndarray
    shared: tuple[np.ndarray, ...]
    top: np.ndarray
    mu0: np.ndarray
    s0: np.ndarray
    tau_scale: np.ndarray

    @property
    def noise(self) -> NodeNoise:
        """The shared noise at the groups and the top, as the package's algebra takes it."""
        return NodeNoise(self.shared, self.top)

    @classmethod
    def from_problem(cls, problem: ShrinkageProblem, chains: int) -> RowData:
        """The problem's data repeated for every chain (zero shared noise if independent)."""
        n_covariates = len(problem.covariates)
        noise = problem.noise
        if noise is None:
            noise = NodeNoise(
                tuple(np.zeros((n_covariates, n)) for n in problem.index.n_groups),
                np.zeros(n_covariates),
            )

        def rows(values: np.ndarray) -> np.ndarray:
            values = np.asarray(values, dtype=float)
            return np.tile(values, (chains,) + (1,) * (values.ndim - 1))

        return cls(
            b=rows(problem.algebra_b),
            var_b=rows(problem.var_b),
            shared=tuple(rows(g) for g in noise.groups),
            top=rows(noise.top),
            mu0=rows(problem.priors.mu0),
            s0=rows(problem.priors.s0),
            tau_scale=rows(problem.priors.tau_scale),
        )


def local_variances(local: Sequence[LocalScales]) -> tuple[np.ndarray, ...]:
    """λ² of the groups of every level used, finest first, as the package's algebra takes them."""
    return tuple(scales.lam2 for scales in local)


def algebra_scales(log_tau: np.ndarray, index: TreeIndex) -> np.ndarray:
    """τ of every level of the algebra's tree (zero above the depth used)."""
    return pad_scales(np.exp(log_tau), index.depth)


def collapsed_pass(
    data: RowData, log_tau: np.ndarray, local: Sequence[LocalScales], index: TreeIndex
) -> Messages:
    """The package's reference upward pass given τ and λ (θ, groups and θ0 integrated out)."""
    return upward_pass(
        data.b,
        data.var_b,
        algebra_scales(log_tau, index),
        index,
        data.mu0,
        data.s0,
        noise=data.noise,
        local=local_variances(local),
    )


def sample_group_prior(
    problem: ShrinkageProblem,
    prior: GroupPrior,
    *,
    draws: int,
    tune: int,
    chains: int,
    rng: np.random.Generator,
) -> Draws:
    """Gibbs sampler of the structured model with local scales on the group effects.

    Parameters
    ----------
    problem
        A pooled problem with at least one annotation level (depth ≥ 1).
    prior
        The local scales' prior.
    draws, tune, chains
        Kept sweeps per chain, sweeps discarded before them, and chains.
    rng
        Random generator.

    Returns
    -------
    Draws
    """
    if not isinstance(problem.depth, int) or problem.depth < 1:
        raise ValueError(f"the group prior needs depth 1 or more, got {problem.depth!r}.")
    index, depth = problem.index, problem.depth
    data = RowData.from_problem(problem, chains)
    n_rows, n_covariates = data.b.shape[0], len(problem.covariates)
    log_tau = np.log(data.tau_scale) + START_SPREAD * rng.standard_normal(data.tau_scale.shape)
    local = [prior.start((n_rows, index.n_groups[level])) for level in range(depth)]
    kept_theta = np.empty((draws, n_rows, data.b.shape[1]))
    kept_tau = np.empty((draws, *log_tau.shape))
    kept_local = [np.empty((draws, n_rows, index.n_groups[level])) for level in range(depth)]

    def log_density(values: np.ndarray) -> np.ndarray:
        """log p(b | τ, λ) + log p(τ) of every row (log τ's Jacobian included)."""
        prior_terms = log_scale_prior(values, data.tau_scale).sum(axis=1)
        return collapsed_pass(data, values, local, index).log_marginal + prior_terms

    step = np.full(log_tau.shape, INITIAL_STEP)
    for sweep in range(tune + draws):
        current = log_density(log_tau)  # λ has changed since the last sweep
        for level in range(depth + 1):
            for _ in range(METROPOLIS_STEPS):
                proposal = log_tau.copy()
                proposal[:, level] += step[:, level] * rng.standard_normal(n_rows)
                candidate = log_density(proposal)
                accept = np.log(rng.random(n_rows)) < candidate - current
                log_tau[accept] = proposal[accept]
                current = np.where(accept, candidate, current)
                if sweep < tune:
                    step[:, level] *= np.exp((accept - TARGET_ACCEPTANCE) / np.sqrt(sweep + 1.0))
        messages = collapsed_pass(data, log_tau, local, index)
        theta0, groups, theta = draw_tree(
            messages,
            algebra_scales(log_tau, index),
            index,
            data.mu0,
            data.s0,
            rng,
            noise=data.noise,
            local=local_variances(local),
        )
        effects = [theta, *groups, theta0[:, None]]
        for level in range(1, depth + 1):
            increment = effects[level] - effects[level + 1][:, index.parent_of(level)]
            standardised = increment**2 / np.exp(2.0 * log_tau[:, level])[:, None]
            local[level - 1] = prior.update(local[level - 1], standardised, rng)
        if sweep >= tune:
            kept = sweep - tune
            kept_theta[kept] = effects[0]
            kept_tau[kept] = np.exp(log_tau)
            for level in range(depth):
                kept_local[level][kept] = np.sqrt(local[level].lam2)

    def by_chain(values: np.ndarray) -> np.ndarray:
        """(draw, chain × covariate, …) as (chain, draw, covariate, …)."""
        shaped = values.reshape(draws, chains, n_covariates, *values.shape[2:])
        return np.swapaxes(shaped, 0, 1)

    return Draws(by_chain(kept_theta), by_chain(kept_tau), [by_chain(x) for x in kept_local])


def draws_idata(problem: ShrinkageProblem, result: Draws) -> az.InferenceData:
    """θ and τ of a prototype fit as InferenceData (for the package's summaries)."""
    return az.from_dict(
        posterior={"theta": result.theta, "tau": result.tau},
        coords={
            "covariate": problem.covariates,
            "feature": problem.features,
            "level": list(problem.scale_levels),
        },
        dims={"theta": ["covariate", "feature"], "tau": ["covariate", "level"]},
    )


def max_rhat(result: Draws) -> float:
    """The largest rank r̂ of θ and τ."""
    flat = [x.reshape(*x.shape[:2], -1) for x in (result.theta, result.tau)]
    return float(max(np.nanmax(rank_rhat(x)) for x in flat))


@dataclass(frozen=True)
class FitRecord:
    """What the split-half table reports of one prototype fit besides θ's summary."""

    max_rhat: float
    tau_median: pd.DataFrame
    local_median: pd.DataFrame


@dataclass
class PrototypeStageTwo:
    """A stage-2 fit for :func:`split_half_cells`: the prototype with one prior and depth.

    The problem is the package's (``ShrinkageModel(fit, hierarchy, depth=...)``: tree noise
    estimated from the fit, ``"auto"`` priors); ``records`` collects each fit's
    :class:`FitRecord`.
    """

    prior: GroupPrior
    depth: int
    draws: int
    tune: int
    chains: int
    records: list[FitRecord] = field(default_factory=list)

    def __call__(
        self, fit: MLMFit, hierarchy: Hierarchy, covariates: Sequence[Any], random_seed: int
    ) -> PosteriorSummary:
        """Fit half A and summarise θ as the package does."""
        problem = ShrinkageModel(
            fit, hierarchy, depth=self.depth, covariates=list(covariates)
        ).problem
        result = sample_group_prior(
            problem,
            self.prior,
            draws=self.draws,
            tune=self.tune,
            chains=self.chains,
            rng=np.random.default_rng(random_seed),
        )
        finest = problem.tree.groups[0] if problem.tree is not None else pd.Index([])
        self.records.append(
            FitRecord(
                max_rhat=max_rhat(result),
                tau_median=pd.DataFrame(
                    np.median(result.tau, axis=(0, 1)),
                    index=problem.covariates,
                    columns=list(problem.scale_levels),
                ),
                local_median=pd.DataFrame(
                    np.median(result.local_scale[0], axis=(0, 1)),
                    index=problem.covariates,
                    columns=finest,
                ),
            )
        )
        return posterior_summary(draws_idata(problem, result))


# ----------------------------------------------------------------------- the engine check
def engine_check(study: ValidationStudy, draws: int, chains: int, seed: int) -> None:
    """θ's posterior mean and sd under λ ≡ 1 against the package's Gibbs engine, one split."""
    order = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]).permutation(
        study.Y.shape[0]
    )
    half = np.sort(order[: study.Y.shape[0] // 2])
    fit = mlm(study.Y.iloc[half], study.X.iloc[half])
    model = ShrinkageModel(fit, study.hierarchy, depth=2)
    start = time.perf_counter()
    engine = model.sample(
        "gibbs", draws=draws, tune=draws, chains=chains, random_seed=seed, progressbar=False
    )
    engine_time = time.perf_counter() - start
    start = time.perf_counter()
    prototype = sample_group_prior(
        model.problem,
        PRIORS["normal"],
        draws=draws,
        tune=draws,
        chains=chains,
        rng=np.random.default_rng(seed + 1),
    )
    prototype_time = time.perf_counter() - start
    runs = {
        "engine": engine.posterior["theta"].transpose("chain", "draw", "covariate", "feature"),
        "prototype": prototype.theta,
    }
    moments = {name: mean_and_sd_with_errors(np.asarray(x)) for name, x in runs.items()}
    (m1, s1, em1, es1), (m2, s2, em2, es2) = moments.values()
    z_mean = (m1 - m2) / np.hypot(em1, em2)
    z_sd = (s1 - s2) / np.hypot(es1, es2)
    bound = stats.norm.isf(0.025 / z_mean.size)
    worst = np.unravel_index(
        np.argmax(np.abs(z_mean)), (len(model.problem.covariates), len(model.problem.features))
    )
    cell = f"{model.problem.covariates[worst[0]]}, {model.problem.features[worst[1]]}"
    print(
        f"{study.name}, engine check (split 0, structured depth 2, {chains} chains × {draws} "
        f"draws after {draws} each; engine {engine_time:.0f} s, prototype "
        f"{prototype_time:.0f} s): over {z_mean.size} cells, largest |z| of the difference "
        f"of θ's means {np.max(np.abs(z_mean)):.2f} ({cell}), of its sds "
        f"{np.max(np.abs(z_sd)):.2f} "
        f"(Bonferroni 5% bound {bound:.2f}); share |z| > 1.96: means "
        f"{np.mean(np.abs(z_mean) > 1.96):.3f}, sds {np.mean(np.abs(z_sd) > 1.96):.3f}"
    )
    levels = list(model.problem.scale_levels)
    table = pd.concat(
        {
            "engine": engine.posterior["tau"].median(("chain", "draw")).to_pandas(),
            "prototype": pd.DataFrame(
                np.median(prototype.tau, axis=(0, 1)),
                index=model.problem.covariates,
                columns=levels,
            ),
        },
        axis=1,
    )
    print(f"{study.name}, engine check: posterior medians of τ")
    print(table.round(3).to_string(), flush=True)


def mean_and_sd_with_errors(
    draws: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and sd per cell of (chain, draw, …) draws, and their Monte Carlo errors.

    The mean's error is sd / √ESS; the sd's, by the delta method, that of the mean of the
    squared deviations (its own ESS) over 2 sd.
    """
    flat = draws.reshape(*draws.shape[:2], -1)
    mean = flat.mean(axis=(0, 1))
    deviation2 = (flat - mean) ** 2
    sd = np.sqrt(deviation2.mean(axis=(0, 1)))
    mean_error = sd / np.sqrt(ess(split_chains(flat)))
    square_error = deviation2.std(axis=(0, 1)) / np.sqrt(ess(split_chains(deviation2)))
    return mean, sd, mean_error, square_error / (2.0 * sd)


# ---------------------------------------------------------------------- split-half tables
def split_half_tables(study: ValidationStudy, args: argparse.Namespace) -> None:
    """The split-half table, the worst clusters and the scales of one data set."""
    cells: dict[tuple[str, str], pd.DataFrame] = {}
    stage_twos: dict[tuple[str, str], PrototypeStageTwo] = {}
    rows = {}
    for depth in args.depths:
        for name, prior in PRIORS.items():
            stage_two = PrototypeStageTwo(prior, depth, args.draws, args.tune, args.chains)
            start = time.perf_counter()
            frame = split_half_cells(
                study.Y,
                study.X,
                study.hierarchy,
                stage_two=stage_two,
                n_splits=args.splits,
                random_seed=args.seed,
            )
            seconds = time.perf_counter() - start
            key = (str(depth), name)
            cells[key], stage_twos[key] = frame, stage_two
            rows[key] = {
                **split_half_summary(frame).loc["mean", SPLIT_COLUMNS].to_dict(),
                **paired_with_normal(frame, cells[(str(depth), "normal")]),
                "max_rhat": max(r.max_rhat for r in stage_two.records),
                "seconds": seconds,
            }
    reference = split_half_cells(
        study.Y,
        study.X,
        study.hierarchy,
        stage_two=stage_one_posterior,
        n_splits=args.splits,
        random_seed=args.seed,
    )
    rows[("", "stage 1")] = split_half_summary(reference).loc["mean", SPLIT_COLUMNS].to_dict()
    table = pd.DataFrame(rows).T.rename_axis(["depth", "prior"])
    print(
        f"{study.name}, split halves ({args.splits} splits, means; structured noise, "
        f"{args.chains} chains × {args.draws} draws after {args.tune}):"
    )
    print(table.round(4).to_string(), flush=True)
    deepest = str(max(args.depths))
    print_worst_clusters(study.name, cells, stage_twos, deepest)
    print_scales(study.name, stage_twos, deepest)


def paired_with_normal(cells: pd.DataFrame, normal: pd.DataFrame) -> dict[str, float]:
    """Coverage and MSE minus the normal prior's on the same cells, with standard errors.

    The coverage difference's standard error is cluster-robust (covariate × finest group,
    each estimate's difference averaged over the splits, as ``coverage_se``); the MSE
    difference's is that of the mean of the per-split differences.
    """
    keys = ["split", "covariate", "feature"]
    if not cells[keys].equals(normal[keys]):
        raise ValueError("the cells of the two priors differ (splits, covariates, features).")
    difference = cells.assign(
        difference=cells["covered"].astype(float) - normal["covered"].astype(float)
    )
    pooled = (
        difference.groupby(["covariate", "feature"], sort=False)
        .agg(difference=("difference", "mean"), group=("group", "first"))
        .reset_index()
    )
    clusters = pooled.groupby(["covariate", "group"], sort=False).ngroup().to_numpy()
    mse = (split_half_summary(cells)["mse"] - split_half_summary(normal)["mse"]).drop("mean")
    return {
        "coverage_minus_normal": float(difference["difference"].mean()),
        "se_coverage_diff": clustered_coverage_se(pooled["difference"].to_numpy(), clusters),
        "mse_minus_normal": float(mse.mean()),
        "se_mse_diff": float(mse.std(ddof=1) / np.sqrt(mse.size)),
    }


def print_worst_clusters(
    name: str,
    cells: dict[tuple[str, str], pd.DataFrame],
    stage_twos: dict[tuple[str, str], PrototypeStageTwo],
    depth: str,
) -> None:
    """Each prior's coverage of the clusters of the normal prior's largest shortfall."""
    keys = ["covariate", "group"]
    normal = cells[(depth, "normal")]
    shortfall = (GOAL - normal["covered"]).groupby([normal[k] for k in keys]).sum() / len(normal)
    worst = shortfall.sort_values(ascending=False).index[:N_WORST]
    table = pd.DataFrame({"features": normal.groupby(keys).size() / normal["split"].nunique()}).loc[
        worst
    ]
    described = normal.assign(z_a=normal["b_a"] / normal["s_a"], z_b=normal["b_b"] / normal["s_b"])
    table[["z_a", "z_b"]] = described.groupby(keys)[["z_a", "z_b"]].mean().loc[worst]
    for (level, prior), frame in cells.items():
        if level == depth:
            table[f"coverage {prior}"] = frame.groupby(keys)["covered"].mean().loc[worst]
    for (level, prior), stage_two in stage_twos.items():
        if level == depth and prior != "normal":
            medians = sum(r.local_median for r in stage_two.records) / len(stage_two.records)
            table[f"λ {prior}"] = [medians.loc[c, g] for c, g in worst]
    print(
        f"{name}, the {N_WORST} clusters (covariate × finest group) that make most of the "
        f"normal prior's shortfall at depth {depth}: mean z = b / se of its estimates in "
        "halves A and B, coverage by prior, posterior median of the group's λ (mean over "
        "splits):"
    )
    print(table.round(3).to_string(), flush=True)


def print_scales(
    name: str, stage_twos: dict[tuple[str, str], PrototypeStageTwo], depth: str
) -> None:
    """Posterior median of the finest group level's τ per covariate and prior."""
    columns = {}
    for (level, prior), stage_two in stage_twos.items():
        if level == depth:
            medians = sum(r.tau_median for r in stage_two.records) / len(stage_two.records)
            columns[prior] = medians.iloc[:, 1]
    print(
        f"{name}, posterior median of the finest group level's τ at depth {depth} (mean over "
        "splits):"
    )
    print(pd.DataFrame(columns).round(3).to_string(), flush=True)


# ----------------------------------------------------------------------------- simulation
def simulation_check(args: argparse.Namespace) -> None:
    """Normal group effects, truth known: what the heavy-tailed priors lose against normal."""
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in PRIORS}
    seeds = np.random.SeedSequence(args.seed).spawn(args.replicates)
    for seed in seeds:
        study = simulate(
            n=SIMULATION["n"],
            m=SIMULATION["m"],
            p=SIMULATION["p"],
            proportions=np.ones(SIMULATION["subclasses"]),
            n_superclasses=SIMULATION["superclasses"],
            random_seed=int(seed.generate_state(1)[0]),
        )
        hierarchy = Hierarchy.from_frame(study.annotations, study.levels)
        fit = mlm(study.Y, study.X)
        covariates = list(study.X.columns)
        for name, prior in PRIORS.items():
            stage_two = PrototypeStageTwo(prior, 2, args.draws, args.tune, args.chains)
            posterior = stage_two(fit, hierarchy, covariates, int(seed.generate_state(2)[1]))
            cells = {"covariate": covariates, "feature": posterior.mean["feature"]}
            truth = study.B.sel(cells).to_numpy()
            rows[name].append(known_truth_scores(truth, fit.coef.sel(cells).to_numpy(), posterior))
    table = pd.DataFrame({name: pd.DataFrame(scores).mean() for name, scores in rows.items()}).T
    table["mse_gain"] = table["mse_raw"] / table["mse"]
    print(
        f"\nsimulation: simulate(n={SIMULATION['n']}, m={SIMULATION['m']}, "
        f"p={SIMULATION['p']}, {SIMULATION['subclasses']} equal subclasses in "
        f"{SIMULATION['superclasses']} superclasses, otherwise defaults: normal group "
        f"effects), depth 2, {args.replicates} replicates (means):"
    )
    columns = ["coverage", "calls", "false_sign_rate", "claimed_lfsr", "mse_gain"]
    print(table[columns].rename_axis("prior").round(4).to_string(), flush=True)


SIMULATION = {"n": 60, "m": 300, "p": 4, "subclasses": 30, "superclasses": 5}
"""The simulation's shape: about the liver lipidome's tree (30 classes in 5 categories)."""


# ----------------------------------------------------------------------------------- main
def main() -> None:
    """Print the engine check, the split-half tables and the simulation check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--datasets", nargs="+", choices=list(VALIDATION_SETS), default=list(VALIDATION_SETS)
    )
    parser.add_argument("--depths", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--tune", type=int, default=500)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--check-draws", type=int, default=1000)
    parser.add_argument("--check-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the liver lipidome only, 2 splits, depth 2, 200 draws after 200, 1 replicate",
    )
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.depths, args.splits = ["liver_lipidome"], [2], 2
        args.draws = args.tune = 200
        args.replicates, args.check_draws = 1, 300
    pd.set_option("display.width", 250)
    warnings.simplefilter("ignore")
    print(
        f"prototype Gibbs sampler, {args.chains} chains × {args.draws} draws after {args.tune} "
        f"per fit, package default priors for τ and θ0; seed {args.seed}, {args.splits} splits"
    )
    checked = False
    for name, study in available_studies(args.data, args.datasets):
        print(
            f"\n{name}: {study.Y.shape[0]} samples × {study.Y.shape[1]} features, {study.hierarchy}"
        )
        if not checked:
            engine_check(study, args.check_draws, args.check_chains, args.seed)
            checked = True
        split_half_tables(study, args)
    simulation_check(args)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nload average (1, 5, 15 min) at the end: {load}")


if __name__ == "__main__":
    main()
