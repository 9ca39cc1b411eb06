"""Gibbs engine speed and mixing at the COPDGene shape, against a per-covariate loop and NUTS.

Run ``python benchmarks/bench_gibbs.py`` (``--help`` for options). The data follow the research
simulation design (n=60 samples, τ_w=0.08, τ_v=τ_u=0.12) at the COPDGene shape: p=10
covariates, m=999 metabolites in 106 subclasses within 9 superclasses. Every sampler runs 4
chains × 2000 kept draws after 1000 tuning sweeps. Printed, measured in this run:

* wall time of each sampler (sampling only, and the whole job including the InferenceData);
  the engine runs ``--engine-runs`` times (same seed, same draws) and its median times are
  used, as single timings on a shared virtual machine vary by ±30%;
* bulk ESS per second of τ at every level (the smallest over covariates), of θ0 and of θ
  (median over covariates and 200 evenly spread metabolites);
* the same for a straightforward per-covariate loop of the research algorithm (the centred
  conjugate sweep, one chain and one covariate at a time) and for PyMC's default NUTS;
* the ratios against the goals: engine ≥ 20× the loop and ≥ 100× NUTS in τ_w ESS/s, the
  whole engine job ≤ 3 s;
* the cost of correlated estimates: on a study whose residuals share noise within subclasses,
  superclasses and overall, the engine's median sampling time with tree-structured noise
  (``noise="tree"``) against the independent model (``noise="independent"``), 4 chains ×
  ``--noise-draws`` kept draws after 1000 tuning sweeps (goal ≤ 1.3×).

The model of the speed and mixing comparison is ``ShrinkageModel``'s default for a stage-1 fit
with a hierarchy: tree-structured noise estimated from the residuals.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from bayeshier_pymc import Hierarchy, ShrinkageModel, simulate
from bayeshier_pymc.convergence import bulk_ess
from bayeshier_pymc.gaussian_tree import TreeIndex
from bayeshier_pymc.gibbs.layout import TreeData
from bayeshier_pymc.gibbs.scale_kernels import DEFAULT_SCALE_STEPS
from bayeshier_pymc.gibbs.sweeps import conjugate_sweep, initial_state
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.simulate import ResidualNoise

N_SAMPLES, N_FEATURES, N_COVARIATES = 60, 999, 10
N_SUBCLASSES, N_SUPERCLASSES = 106, 9
CHAINS, DRAWS, TUNE = 4, 2000, 1000
THETA_FEATURES = 200
ENGINE_RUNS = 3
LOOP_GOAL, NUTS_GOAL, JOB_GOAL = 20.0, 100.0, 3.0
NOISE_DRAWS, NOISE_GOAL = 1000, 1.3
NOISE_MODELS = ("independent", "tree")
SHARED_RESIDUALS = ResidualNoise(subclass_sd=0.6, superclass_sd=0.4, global_sd=0.3)
"""Residual noise shared within subclasses, superclasses and by all metabolites (per sample)."""


@dataclass
class Run:
    """Draws and timings of one sampler."""

    name: str
    tau: np.ndarray  # chain, draw, covariate, level
    mu: np.ndarray  # chain, draw, covariate
    theta: np.ndarray  # chain, draw, covariate, feature (a spread subset)
    sampling_time: float
    job_time: float


def make_model(
    seed: int, residuals: ResidualNoise | None = None, noise: str = "auto"
) -> ShrinkageModel:
    """The research design at the COPDGene shape, depth 2 (``noise`` as in ShrinkageModel)."""
    shares = np.random.default_rng(seed).dirichlet(np.full(N_SUBCLASSES, 2.0))
    study = simulate(
        n=N_SAMPLES,
        m=N_FEATURES,
        p=N_COVARIATES,
        proportions=shares,
        n_superclasses=N_SUPERCLASSES,
        residuals=residuals,
        random_seed=seed,
    )
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    return ShrinkageModel(fit, tree, noise=noise)


def _features(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, THETA_FEATURES).round().astype(int))


def from_idata(name: str, idata, job_time: float) -> Run:
    """The benchmark's view of an InferenceData."""
    post = idata.posterior
    theta = post["theta"].isel(feature=_features(post.sizes["feature"]))
    return Run(
        name,
        post["tau"].transpose("chain", "draw", "covariate", "level").to_numpy(),
        post["mu"].transpose("chain", "draw", "covariate").to_numpy(),
        theta.transpose("chain", "draw", "covariate", "feature").to_numpy().astype(float),
        float(idata.attrs["sampling_time"]),
        job_time,
    )


def run_engine(model: ShrinkageModel, draws: int, seed: int, steps: int) -> Run:
    start = time.perf_counter()
    idata = model.sample(
        "gibbs",
        draws=draws,
        tune=TUNE,
        chains=CHAINS,
        random_seed=seed,
        progressbar=False,
        scale_steps=steps,
    )
    return from_idata(
        f"Gibbs engine (collapsed, {steps} MH step(s))", idata, time.perf_counter() - start
    )


def run_engine_repeatedly(
    model: ShrinkageModel, draws: int, seed: int, steps: int, runs: int
) -> tuple[Run, list[float]]:
    """Run the engine ``runs`` times with one seed (so with the same draws).

    Returns the run with the median whole-job time and every whole-job time.
    """
    results = [run_engine(model, draws, seed, steps) for _ in range(runs)]
    median = results[int(np.argsort([r.job_time for r in results])[runs // 2])]
    return median, [r.job_time for r in results]


def run_loop(model: ShrinkageModel, draws: int, seed: int) -> Run:
    """The research algorithm, one chain and one covariate at a time (centred conjugate sweep)."""
    rng = np.random.default_rng(seed)
    b = model.estimates.estimate.to_numpy()
    var_b = model.estimates.se.to_numpy() ** 2
    tree, priors = TreeIndex.from_hierarchy(model.tree), model.priors
    keep = _features(b.shape[1])
    tau = np.empty((CHAINS, draws, b.shape[0], tree.depth + 1))
    mu = np.empty((CHAINS, draws, b.shape[0]))
    theta = np.empty((CHAINS, draws, b.shape[0], keep.size))
    start = time.perf_counter()
    for k in range(b.shape[0]):
        data = TreeData.build(
            b[k : k + 1],
            var_b[k : k + 1],
            tree,
            priors.tau_scale[k : k + 1],
            priors.mu0[k : k + 1],
            priors.s0[k : k + 1],
        )
        for chain in range(CHAINS):
            state = initial_state(data, rng)
            for sweep in range(TUNE + draws):
                conjugate_sweep(data, state, rng)
                if sweep >= TUNE:
                    tau[chain, sweep - TUNE, k] = state.tau[0]
                    mu[chain, sweep - TUNE, k] = state.units[-1][0, 0]
                    theta[chain, sweep - TUNE, k] = data.from_sorted(state.units[0])[0, keep]
    elapsed = time.perf_counter() - start
    return Run("per-covariate loop (centred)", tau, mu, theta, elapsed, elapsed)


def run_nuts(model: ShrinkageModel, draws: int, seed: int, parameterization: str) -> Run:
    """PyMC's own NUTS (``nuts_sampler="pymc"``), chains in parallel processes.

    ``parameterization="collapsed"`` is the package's default model; ``"centered"`` is the
    model the Gibbs step sweeps, on which ``pm.sample`` would run NUTS by default.
    """
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata = model.sample(
            "nuts",
            nuts_sampler="pymc",
            parameterization=parameterization,
            draws=draws,
            tune=TUNE,
            chains=CHAINS,
            cores=min(CHAINS, os.cpu_count() or 1),
            random_seed=seed,
            progressbar=False,
        )
    name = f"PyMC NUTS ({parameterization} model)"
    return from_idata(name, idata, time.perf_counter() - start)


def noise_cost(seed: int, draws: int, steps: int, runs: int) -> None:
    """Print the engine's sampling time with tree-structured noise against independent noise.

    Both models are fitted to the same study with shared residual noise; each runs ``runs``
    times, alternately (after a warm-up run that compiles the kernels), and the median
    sampling times are compared. Independent noise writes its pointwise log-likelihood while
    sampling; with tree-structured noise it is computed when the InferenceData is built (in
    the whole job's time).
    """
    models = {noise: make_model(seed, SHARED_RESIDUALS, noise) for noise in NOISE_MODELS}
    results: dict[str, list[Run]] = {noise: [] for noise in NOISE_MODELS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in models.values():
            run_engine(model, 10, seed, steps)
        for _ in range(runs):  # alternated, so that a busy spell slows both
            for noise, model in models.items():
                results[noise].append(run_engine(model, draws, seed, steps))
    times = {
        noise: float(np.median([r.sampling_time for r in rs])) for noise, rs in results.items()
    }
    job_times = {noise: float(np.median([r.job_time for r in rs])) for noise, rs in results.items()}
    rates = {noise: bulk_ess_per_second(rs[0]) for noise, rs in results.items()}
    ratio = times["tree"] / times["independent"]
    verdict = "met" if ratio <= NOISE_GOAL else "NOT met"
    print(
        f"\ncorrelated estimates, {CHAINS} chains x {draws} draws after {TUNE}: engine sampling "
        f"time {times['tree']:.2f} s with tree-structured noise, {times['independent']:.2f} s "
        f"independent: {ratio:.2f}x (goal <= {NOISE_GOAL}x: {verdict}); τ_w bulk ESS/s "
        f"{rates['tree']['tau[0]']:.1f} vs {rates['independent']['tau[0]']:.1f}, per θ's "
        f"{rates['tree']['tau[0]'] / rates['tree']['theta']:.2f} vs "
        f"{rates['independent']['tau[0]'] / rates['independent']['theta']:.2f}; whole job "
        f"(with the default pointwise log-likelihood) {job_times['tree']:.2f} s vs "
        f"{job_times['independent']:.2f} s"
    )


def bulk_ess_per_second(run: Run) -> dict[str, float]:
    """Bulk ESS/s: τ per level and θ0 as the minimum over covariates, θ as the median."""

    def bulk(values: np.ndarray) -> np.ndarray:
        return bulk_ess(values.reshape(values.shape[0], values.shape[1], -1))

    rates = {
        f"tau[{level}]": bulk(run.tau[..., level]).min() / run.sampling_time
        for level in range(run.tau.shape[-1])
    }
    rates["theta0"] = bulk(run.mu).min() / run.sampling_time
    rates["theta"] = float(np.median(bulk(run.theta))) / run.sampling_time
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=DRAWS, help="kept draws per chain")
    parser.add_argument("--loop-draws", type=int, default=DRAWS)
    parser.add_argument("--nuts-draws", type=int, default=DRAWS)
    parser.add_argument("--scale-steps", type=int, default=DEFAULT_SCALE_STEPS)
    parser.add_argument("--engine-runs", type=int, default=ENGINE_RUNS)
    parser.add_argument("--noise-draws", type=int, default=NOISE_DRAWS)
    parser.add_argument("--noise-only", action="store_true", help="only the cost of noise")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-nuts", action="store_true")
    parser.add_argument(
        "--nuts-parameterization",
        default="collapsed",
        help="'collapsed' (default) or 'centered' (very slow: funnels, deep trees)",
    )
    args = parser.parse_args()

    noise_cost(args.seed, args.noise_draws, args.scale_steps, args.engine_runs)
    if args.noise_only:
        return
    model = make_model(args.seed)
    levels = ["feature", *model.tree.levels]
    print(
        f"{model!r}; {CHAINS} chains, {TUNE} tuning + kept draws per chain; {os.cpu_count()} CPUs"
    )
    with warnings.catch_warnings():  # compile the numba kernels (cached on disk)
        warnings.simplefilter("ignore")
        run_engine(model, 10, args.seed, args.scale_steps)
    engine_run, job_times = run_engine_repeatedly(
        model, args.draws, args.seed, args.scale_steps, args.engine_runs
    )
    runs = [engine_run]
    if not args.skip_loop:
        runs.append(run_loop(model, args.loop_draws, args.seed))
    if not args.skip_nuts:
        runs.append(run_nuts(model, args.nuts_draws, args.seed, args.nuts_parameterization))
    rates = {run.name: bulk_ess_per_second(run) for run in runs}
    names = ["tau[" + level + "]" for level in levels] + ["theta0", "theta"]
    header = f"{'sampler':44s} {'draws':>6s} {'sample s':>9s} {'job s':>7s} " + " ".join(
        f"{n:>15s}" for n in names
    )
    print("\nbulk ESS per second (τ, θ0: smallest over covariates; θ: median)")
    print(header)
    for run in runs:
        values = list(rates[run.name].values())
        print(
            f"{run.name:44s} {run.tau.shape[1]:6d} {run.sampling_time:9.2f} {run.job_time:7.2f} "
            + " ".join(f"{v:15.1f}" for v in values)
        )
    engine = rates[runs[0].name]["tau[0]"]
    print(
        f"\nengine whole job: {runs[0].job_time:.2f} s, median of "
        f"{', '.join(f'{t:.2f}' for t in job_times)} (goal <= {JOB_GOAL} s: "
        f"{'met' if runs[0].job_time <= JOB_GOAL else 'NOT met'}); "
        f"sampling alone {runs[0].sampling_time:.2f} s"
    )
    for run in runs[1:]:
        goal = LOOP_GOAL if run.name.startswith("per-covariate") else NUTS_GOAL
        ratio = engine / rates[run.name]["tau[0]"]
        verdict = "met" if ratio >= goal else "NOT met"
        print(f"τ_w ESS/s, engine / {run.name}: {ratio:.1f}× (goal >= {goal:.0f}×: {verdict})")


if __name__ == "__main__":
    main()
    # whether the machine was shared: absolute times depend on it, ratios within a run less
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) at the end: {load}")
