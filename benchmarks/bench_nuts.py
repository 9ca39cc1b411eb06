"""NUTS on the research simulation: backends and parameterisations, beside the Gibbs engine.

n=60, m=770, p=10, 4 subclasses (.55/.25/.15/.05), tau_v=0.12, tau_w=0.08; stage-1 OLS
without intercept; the default model (correlated noise, estimated from the residuals); 4 chains
x 1000 draws after 1000 tuning steps. Each configuration runs in a fresh Python process, so
that none profits from another's warm state in the process. Prints, per configuration: wall
time of the whole ``model.sample`` call (compilation included), the sampler's own time, the
part of it nutpie took to compile the model and whether its numba entry points were read from
the disk cache (``bayeshier_pymc._nutpie_cache``), divergences, max r-hat and min bulk ESS over
tau, mu, subclass means and theta, ESS/s of the slowest parameter, and the bulk ESS and ESS/s
of the slowest tau (smallest over covariates and levels). The default NUTS runs twice, in a
fresh PyTensor compilation folder: first with it empty (``empty cache``: the model compiled
from scratch, as on a new machine), then with what that run left there (a later fit of the
model). Then ratios against the default NUTS, and the default NUTS's ESS/s of the slowest tau
over the Gibbs engine's, in the same run: of the samplers' own times (``attrs["sampling_time"]``:
NUTS's compilation, tuning, sampling and exact draws of the rest; the engine's sweeps), against
the goal of a fifth, and of the whole calls (both add the same work after sampling: the
leave-one-out log-likelihood and the replicated estimates); and the first of these for the
empty-cache run.

    python benchmarks/bench_nuts.py                    # every configuration
    python benchmarks/bench_nuts.py --quick            # backends on the collapsed model only
    python benchmarks/bench_nuts.py --profile          # where the default NUTS spends its time
    python benchmarks/bench_nuts.py --phases           # one default fit, phase by phase
    python benchmarks/bench_nuts.py --noise-cost       # tree noise against independent noise

``--profile`` splits the default NUTS (nutpie, compiled by numba) on the same model into its
compilation (through the disk cache, saying whether it was read from it) and its run, counts
its gradient evaluations in tuning and sampling (leapfrog steps per draw), times one evaluation
of the log density and its gradient in each compiled form (numba for nutpie's default backend:
the collapsed model's Op, one compiled pass; JAX for nutpie's JAX backend and numpyro: the Op's
graph; PyTensor's C for PyMC: the Op's kernel called from Python) against a floor (a compiled
pass over the p·m estimates computing Σ log N(b; 0, s² + τ²) and its gradient, the least any
evaluation must do, compiled by numba and by JAX), and prints the time the gradients account
for.

``--phases`` times one default NUTS fit (``model.sample()``) of the research simulation, its
compilation read from the disk cache (the first fit in the process, as the default row of the
comparison), phase by phase: the PyMC
model, ``pm.sample`` (nutpie's compilation, its tuning and sampling with its trace, the rest),
the exact draws (their normals, drawn in a thread during ``pm.sample``, and the passes given
them), the sampler's own time, then the leave-one-out log-likelihood with the replicates, the
InferenceData and the convergence checks.

``--noise-cost`` times the default NUTS (collapsed) at the COPDGene shape of
``bench_gibbs.py`` (p=10, m=999, 106 subclasses in 9 superclasses, shared residual noise),
with the tree-structured likelihood and with ``noise="independent"``, the two alternating
over ``--runs`` runs, and prints the ratio of the median sampling times (goal ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import warnings
from dataclasses import replace
from pathlib import Path

import arviz as az
import numpy as np
from bench_gibbs import SHARED_RESIDUALS, make_model

import bayeshier_pymc as bh
from bayeshier_pymc.convergence import bulk_ess
from bayeshier_pymc.model import build_model
from bayeshier_pymc.sampling import DEFAULT_NUTS_SAMPLER, NUTPIE_COMPILATION

BACKENDS = ("numpyro", "nutpie", "pymc")
FULL_MODEL = ("auto", "noncentered", "centered")
GOAL = 0.2
"""The default NUTS's ESS/s of the slowest τ over the Gibbs engine's: at least a fifth."""


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes, and its CPU count."""
    averages = " ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"load average {averages} on {os.cpu_count()} CPUs"


def research_model() -> bh.ShrinkageModel:
    """The research simulation with ShrinkageModel's defaults (seed 1, one subclass level)."""
    study = bh.simulate(60, 770, 10, random_seed=1)
    fit = bh.mlm(study.Y, study.X, x_intercept=False)
    return bh.ShrinkageModel(fit, bh.Hierarchy.from_frame(study.annotations, ["subclass"]))


def slowest_tau_ess(idata: az.InferenceData) -> float:
    """Bulk ESS of the slowest τ: the smallest over covariates and levels."""
    tau = idata.posterior["tau"].transpose("chain", "draw", ...).to_numpy()
    return float(bulk_ess(tau.reshape(*tau.shape[:2], -1)).min())


CONFIGURATIONS: dict[str, tuple[str, dict[str, object]]] = {
    "Gibbs engine": ("gibbs", {}),
    **{
        f"collapsed {backend}": ("nuts", {"nuts_sampler": backend, "parameterization": "collapsed"})
        for backend in BACKENDS
    },
    "collapsed nutpie-jax": (
        "nuts",
        {
            "nuts_sampler": "nutpie",
            "nuts_sampler_kwargs": {"backend": "jax", "gradient_backend": "jax"},
        },
    ),
    **{
        f"{parameterization} nutpie": (
            "nuts",
            {"nuts_sampler": "nutpie", "parameterization": parameterization},
        )
        for parameterization in FULL_MODEL
    },
}
"""Every configuration by name: the sampler and its options."""
DEFAULT = f"collapsed {DEFAULT_NUTS_SAMPLER}"
EMPTY_CACHE = f"{DEFAULT}, empty cache"
"""The default NUTS in a fresh PyTensor compilation folder (``base_compiledir``), where it
compiles the model from scratch, as a new machine's first fit does; the default row then
runs with the same folder, as every later fit of the model does."""


def run(name: str) -> dict[str, float]:
    """One ``model.sample`` call of the configuration ``name``, timed whole, and its diagnostics.

    The time nutpie takes to compile the model (``compile_s``) is timed apart, with whether its
    numba entry points came from the disk cache (``cached``: 1 or 0; -1 for a backend nutpie
    does not compile or that it compiles uncached).
    """
    from bayeshier_pymc import _nutpie_cache

    model = research_model()
    sampler, options = CONFIGURATIONS[name.removesuffix(", empty cache")]
    compiled = []
    compile_model = _nutpie_cache.compile_pymc_model

    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        result = compile_model(*args, **kwargs)
        hits = getattr(getattr(result, "compiled_logp_func", None), "cache_hits", -1)
        compiled.append((time.perf_counter() - start, hits))
        return result

    _nutpie_cache.compile_pymc_model = timed
    start = time.perf_counter()
    idata = model.sample(sampler, random_seed=1, progressbar=False, **options)
    wall = time.perf_counter() - start
    summary = az.summary(
        idata, var_names=["tau", "mu", "subclass_mean", "theta"], kind="diagnostics"
    )
    stats = idata.sample_stats
    tau_ess = slowest_tau_ess(idata)
    return {
        "wall_s": wall,
        "sampler_s": float(idata.attrs["sampling_time"]),
        "compile_s": compiled[0][0] if compiled else float("nan"),
        "cached": int(compiled[0][1]) if compiled else -1,
        "divergences": int(stats["diverging"].sum()) if "diverging" in stats else 0,
        "rhat_max": float(summary["r_hat"].max()),
        "ess_bulk_min": float(summary["ess_bulk"].min()),
        "ess_per_s_min": float(summary["ess_bulk"].min()) / wall,
        "tau_ess": tau_ess,
        "tau_ess_per_s": tau_ess / wall,
        "tau_ess_per_sampler_s": tau_ess / float(idata.attrs["sampling_time"]),
    }


def run_in_fresh_process(name: str, compiledir: str | None = None) -> dict[str, float]:
    """:func:`run` in a new Python process, so that no run profits from another's warm state.

    ``compiledir``: PyTensor's compilation folder for the run (default: the usual one).
    """
    environment = dict(os.environ)
    if compiledir is not None:
        flags = environment.get("PYTENSOR_FLAGS", "")
        environment["PYTENSOR_FLAGS"] = ",".join(
            filter(None, [flags, f"base_compiledir={compiledir}"])
        )
    done = subprocess.run(
        [sys.executable, __file__, "--run", name],
        capture_output=True,
        text=True,
        env=environment,
        cwd=Path(__file__).parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(quick: bool) -> None:
    """Every backend on the collapsed model (and the full model), beside the Gibbs engine.

    Each configuration runs in a fresh process; the default NUTS runs twice, first with an
    empty compilation cache, then with the cache that run filled.
    """
    names = ["Gibbs engine", EMPTY_CACHE, DEFAULT]
    names += [name for name in CONFIGURATIONS if name.startswith("collapsed") and name != DEFAULT]
    if not quick:
        names += [f"{p} nutpie" for p in FULL_MODEL]
    print(f"before the runs: {load()}")
    print(
        f"{'sampler':<32}{'wall s':>8}{'sampler s':>10}{'compile s':>10}{'cached':>7}{'div':>5}"
        f"{'rhat':>7}{'ESS min':>9}{'ESS/s':>8}{'tau ESS':>9}{'tau ESS/s':>10}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as compiledir:
        for name in names:
            nutpie_default = name in (EMPTY_CACHE, DEFAULT)
            r = run_in_fresh_process(name, compiledir if nutpie_default else None)
            results[name] = r
            compile_s = "-" if np.isnan(r["compile_s"]) else f"{r['compile_s']:.1f}"
            cached = {1: "yes", 0: "no"}.get(r["cached"], "-")
            print(
                f"{name:<32}{r['wall_s']:>8.1f}{r['sampler_s']:>10.1f}{compile_s:>10}{cached:>7}"
                f"{r['divergences']:>5d}{r['rhat_max']:>7.3f}{r['ess_bulk_min']:>9.0f}"
                f"{r['ess_per_s_min']:>8.1f}{r['tau_ess']:>9.0f}{r['tau_ess_per_s']:>10.1f}",
                flush=True,
            )
    print(f"after the runs: {load()}")
    default, gibbs = results[DEFAULT], results["Gibbs engine"]
    for name, r in results.items():
        if name not in (DEFAULT, EMPTY_CACHE, "Gibbs engine"):
            print(
                f"ESS/s of the slowest parameter, default ({DEFAULT}) / {name}: "
                f"{default['ess_per_s_min'] / max(r['ess_per_s_min'], 1e-9):.1f}x"
            )
    for label, key in (
        ("samplers' own times", "tau_ess_per_sampler_s"),
        ("whole calls", "tau_ess_per_s"),
    ):
        ratio = default[key] / gibbs[key]
        verdict = "met" if ratio >= GOAL else "NOT met"
        goal = f" (goal >= {GOAL}: {verdict})" if key == "tau_ess_per_sampler_s" else ""
        print(
            f"ESS/s of the slowest tau, default NUTS ({DEFAULT_NUTS_SAMPLER}) / Gibbs engine, "
            f"{label}: {default[key]:.1f} / {gibbs[key]:.1f} = {ratio:.3f}{goal}"
        )
    first = results[EMPTY_CACHE]["tau_ess_per_sampler_s"] / gibbs["tau_ess_per_sampler_s"]
    print(
        "the same with the compilation from scratch (a new machine's first fit of the model), "
        f"samplers' own times: {first:.3f}"
    )


def noise_cost(runs: int) -> None:
    """Median sampling time of the default NUTS with tree noise over independent noise."""
    models = {
        noise: make_model(0, SHARED_RESIDUALS, noise=noise) for noise in ("auto", "independent")
    }
    times: dict[str, list[float]] = {noise: [] for noise in models}
    for run_number in range(runs):
        for noise, model in models.items():
            idata = model.sample(random_seed=run_number, progressbar=False)
            times[noise].append(float(idata.attrs["sampling_time"]))
            print(f"run {run_number} {noise:<12} {times[noise][-1]:7.1f} s", flush=True)
    medians = {noise: statistics.median(values) for noise, values in times.items()}
    print(
        f"NUTS sampling time, tree noise / independent: {medians['auto']:.1f} s / "
        f"{medians['independent']:.1f} s = {medians['auto'] / medians['independent']:.2f}x "
        "(goal <= 1.3x)"
    )


def _microseconds(function, *args) -> float:
    """Best of three timings of ``function(*args)``, in microseconds per call."""
    function(*args)
    timer = timeit.Timer(lambda: function(*args))
    number, _ = timer.autorange()
    return min(timer.repeat(3, number)) / number * 1e6


def _floor_kernel():
    """Σ log N(b; 0, v + t) over (covariate, feature) and its gradient in t, compiled."""
    import numba

    @numba.njit(cache=True)
    def level_zero(b, v, t):  # pragma: no cover - compiled
        value, gradient = 0.0, np.zeros(b.shape[0])
        for row in range(b.shape[0]):
            for j in range(b.shape[1]):
                precision = 1.0 / (v[row, j] + t[row])
                value -= 0.5 * (np.log(v[row, j] + t[row]) + b[row, j] ** 2 * precision)
                gradient[row] -= 0.5 * (precision - (b[row, j] * precision) ** 2)
        return value, gradient

    return level_zero


def _jax_floor_kernel(b: np.ndarray, v: np.ndarray):
    """The floor's pass and gradient in t written in JAX and compiled by XLA, as the default runs.

    ``b`` and ``v`` are constants of the compiled function, as the data are in the model's.
    """
    import jax
    import jax.numpy as jnp

    def level_zero(t):
        total = v + t[:, None]
        return -0.5 * jnp.sum(jnp.log(total) + b * b / total)

    value_and_grad = jax.jit(jax.value_and_grad(level_zero))
    return lambda t: jax.block_until_ready(value_and_grad(t))


def _one_hot_segment_sum(values, index: np.ndarray, n: int):
    """Segment sums as a product with the (unit × group) one-hot matrix."""
    import pytensor.tensor as pt

    one_hot = np.zeros((len(index), n))
    one_hot[np.arange(len(index)), index] = 1.0
    return pt.dot(values, one_hot)


def _sorted_segment_sum(values, index: np.ndarray, n: int):
    """Segment sums as differences of a cumulative sum over the units sorted by group."""
    import pytensor.tensor as pt

    cumulative = pt.cumsum(values[..., np.argsort(index, kind="stable")], axis=-1)
    at_ends = cumulative[..., np.cumsum(np.bincount(index, minlength=n)) - 1]
    return pt.concatenate([at_ends[..., :1], at_ends[..., 1:] - at_ends[..., :-1]], axis=-1)


SEGMENT_SUMS = {
    "scatter-add (the model's)": None,
    "one-hot matrix product": _one_hot_segment_sum,
    "sorted cumulative sums": _sorted_segment_sum,
}
"""The segment sums of the tree pass written three ways; ``None``: the model's own."""


def _segment_sum_costs(problem, log_tau: np.ndarray) -> dict[str, float]:
    """Microseconds per log p(b | τ) and gradient in JAX, per way of writing the segment sums.

    The data are constants of the compiled functions, as in the model's (``get_jaxified_logp``).
    """
    import pytensor
    import pytensor.tensor as pt

    from bayeshier_pymc.gaussian_tree import upward_pass
    from bayeshier_pymc.gaussian_tree.pytensor_ops import PYTENSOR_OPS

    noise = problem.noise_model
    b = pt.constant(problem.algebra_b)
    log_tau_input = pt.dmatrix("log_tau")
    tau = noise.pad(pt.exp(log_tau_input), log_tau.shape[1])
    costs = {}
    for name, segment_sum in SEGMENT_SUMS.items():
        ops = (
            PYTENSOR_OPS if segment_sum is None else replace(PYTENSOR_OPS, segment_sum=segment_sum)
        )
        log_marginal = upward_pass(
            b, noise.own, tau, noise.tree, problem.priors.mu0, problem.priors.s0, ops, noise.shared
        ).log_marginal.sum()
        function = pytensor.function(
            [log_tau_input],
            [log_marginal, pytensor.grad(log_marginal, log_tau_input)],
            mode="JAX",
        )
        costs[name] = _microseconds(function, log_tau)
    return costs


def profile() -> None:
    """Where the default NUTS (nutpie, compiled by numba) spends its time."""
    import jax
    import nutpie
    from pymc.sampling.jax import get_jaxified_logp

    from bayeshier_pymc._nutpie_cache import compile_pymc_model

    model = research_model()
    problem = model.problem
    pm_model = build_model(
        problem.estimates, problem.tree, problem.priors, "collapsed", problem.noise_model
    )
    chains, cores = 4, min(4, os.cpu_count() or 1)
    print(f"before the runs: {load()}")
    compilation = ", ".join(f"{k}={v}" for k, v in NUTPIE_COMPILATION.items())
    print(
        f"research simulation, default model: p={problem.b.shape[0]}, m={problem.b.shape[1]}, "
        f"{pm_model.initial_point()['tau_log__'].size} parameters (log tau); "
        f"{chains} chains x 1000 draws after 1000 tuning steps, {cores} threads"
    )
    start = time.perf_counter()
    compiled = compile_pymc_model(pm_model, **NUTPIE_COMPILATION)
    compile_s = time.perf_counter() - start
    cached = "yes" if compiled.compiled_logp_func.cache_hits else "no"
    start = time.perf_counter()
    trace = nutpie.sample(
        compiled, draws=1000, tune=1000, chains=chains, cores=cores, seed=1, progress_bar=False
    )
    run_s = time.perf_counter() - start
    steps = {
        "tuning": trace.warmup_sample_stats["n_steps"].to_numpy(),
        "sampling": trace.sample_stats["n_steps"].to_numpy(),
    }
    evaluations = sum(int(s.sum()) for s in steps.values())
    print(
        f"nutpie ({compilation}): compilation {compile_s:.1f} s (read from the disk cache: "
        f"{cached}), tuning and sampling {run_s:.1f} s"
    )
    for phase, n in steps.items():
        print(
            f"  {phase}: {int(n.sum())} gradient evaluations, {n.mean():.1f} per draw "
            f"(max {int(n.max())})"
        )
    point = np.log(trace.posterior["tau"].mean(("chain", "draw")).to_numpy())
    costs = {}
    for name, mode in (("numba (nutpie)", "NUMBA"), ("C (pymc)", "FAST_RUN")):
        start = time.perf_counter()
        function = pm_model.logp_dlogp_function(ravel_inputs=True, mode=mode)
        function.set_extra_values({})
        flat = point.ravel()
        function(flat)
        compiled_s = time.perf_counter() - start
        costs[name] = (_microseconds(function, flat), compiled_s)
    start = time.perf_counter()
    log_density = get_jaxified_logp(pm_model, negative_logp=False)
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: log_density([x])))
    jax.block_until_ready(value_and_grad(point))
    compiled_s = time.perf_counter() - start
    costs["JAX (nutpie-jax, numpyro)"] = (
        _microseconds(lambda x: jax.block_until_ready(value_and_grad(x)), point),
        compiled_s,
    )
    noise = problem.noise_model
    own, b = np.ascontiguousarray(noise.own), np.ascontiguousarray(problem.algebra_b)
    tau_w2 = np.exp(point[:, 0]) ** 2
    floor = _floor_kernel()
    floor(b, own, tau_w2)
    floor_us = _microseconds(floor, b, own, tau_w2)
    jax_floor_us = _microseconds(_jax_floor_kernel(b, own), tau_w2)
    print("one log density and gradient (default model, posterior mean of tau):")
    for name, (cost, compiled_s) in costs.items():
        print(
            f"  {name:<22}{cost:8.0f} us = {cost / floor_us:5.1f}x the floor "
            f"(compiled in {compiled_s:.1f} s)"
        )
    print(f"  {'floor':<22}{floor_us:8.0f} us (one compiled pass over the p*m estimates)")
    print(
        f"  {'floor in JAX':<22}{jax_floor_us:8.0f} us = {jax_floor_us / floor_us:5.1f}x the floor "
        "(the same pass written in JAX and compiled by XLA)"
    )
    cost = costs["numba (nutpie)"][0]
    print("log p(b | tau) and gradient alone in JAX, by way of writing the tree's segment sums:")
    for name, segment_cost in _segment_sum_costs(problem, point).items():
        print(f"  {name:<26}{segment_cost:8.0f} us = {segment_cost / floor_us:5.1f}x the floor")
    print(f"after the runs: {load()}")
    print(
        f"nutpie's {evaluations} evaluations x {cost:.0f} us = {evaluations * cost * 1e-6:.1f} "
        f"s of computing (on {cores} threads) for its {run_s:.1f} s of tuning and sampling; "
        f"at the floor {evaluations * floor_us * 1e-6:.1f} s, at JAX's floor "
        f"{evaluations * jax_floor_us * 1e-6:.1f} s"
    )


def phases() -> None:
    """Where one default NUTS fit (``model.sample()``), its compilation cached, spends its time.

    A fit in a fresh process fills the disk caches; this process's first fit, as the default
    row of :func:`compare`, is then timed phase by phase, each phase the time of the function
    that does it (the exact draws' normals are drawn in a thread during ``pm.sample``, so
    their time overlaps it).
    """
    import nutpie
    import pymc as pm

    from bayeshier_pymc import _nutpie_cache, sampling

    times: dict[str, float] = {}

    def timed(owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[label] = times.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    for owner, name, label in (
        (sampling, "build_model", "PyMC model (build_model)"),
        (pm, "sample", "pm.sample"),
        (_nutpie_cache, "compile_pymc_model", "nutpie compilation"),
        (nutpie, "sample", "nutpie tuning and sampling"),
        (sampling, "_draw_normals", "normals"),
        (sampling, "_draw_given_normals", "passes"),
        (sampling, "leave_one_out", "leave-one-out"),
        (sampling, "build_inference_data", "InferenceData"),
        (sampling, "add_posterior_predictive", "InferenceData"),
        (sampling, "warn_if_not_converged", "convergence checks"),
    ):
        timed(owner, name, label)
    run_in_fresh_process(DEFAULT)
    print(f"before the runs: {load()}")
    start = time.perf_counter()
    model = research_model()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    idata = model.sample(random_seed=1, progressbar=False)
    whole = time.perf_counter() - start
    own = float(idata.attrs["sampling_time"])
    compiled = times["nutpie compilation"]
    nutpie_s = times["nutpie tuning and sampling"]
    rows = [
        ("the research simulation and its ShrinkageModel", build_s),
        ("model.sample(), the whole call", whole),
        ("  PyMC model (build_model)", times["PyMC model (build_model)"]),
        ("  pm.sample", times["pm.sample"]),
        ("    nutpie's compilation (its disk cache read)", compiled),
        ("    nutpie's tuning and sampling, and its trace", nutpie_s),
        ("    the rest of pm.sample", times["pm.sample"] - compiled - nutpie_s),
        ("    exact draws: the normals (a thread, during it)", times["normals"]),
        ("  exact draws: the passes given the normals", times["passes"]),
        ("  = the sampler's own time (attrs['sampling_time'])", own),
        ("  leave-one-out log-likelihood and replicates", times["leave-one-out"]),
        ("  InferenceData (build, replicates added)", times["InferenceData"]),
        ("  convergence checks", times["convergence checks"]),
    ]
    print(
        "one default NUTS fit of the research simulation, its compilation read from the disk "
        "cache (the first fit in the process), 4 chains x 1000 draws after 1000 tuning steps:"
    )
    for label, seconds in rows:
        print(f"{label:<56}{seconds:7.2f} s")
    print(f"after the runs: {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="collapsed model, every backend")
    parser.add_argument(
        "--profile", action="store_true", help="where the default NUTS spends its time"
    )
    parser.add_argument(
        "--noise-cost", action="store_true", help="tree noise against independent noise"
    )
    parser.add_argument(
        "--phases", action="store_true", help="one default NUTS fit, phase by phase"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per noise model")
    parser.add_argument("--run", help="one configuration, printed as JSON (in a fresh process)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.run:
        print(json.dumps(run(args.run)))
    elif args.noise_cost:
        noise_cost(args.runs)
    elif args.profile:
        profile()
    elif args.phases:
        phases()
    else:
        compare(args.quick)


if __name__ == "__main__":
    main()
