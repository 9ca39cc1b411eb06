"""NUTS on the research simulation: backends and parameterisations, in one run.

n=60, m=770, p=10, 4 subclasses (.55/.25/.15/.05), tau_v=0.12, tau_w=0.08; stage-1 OLS
without intercept; 4 chains x 1000 draws after 1000 tuning steps. Prints, per configuration:
wall time (compilation included), divergences, max r-hat and min bulk ESS over tau, mu,
subclass means and theta, and ESS/s of the slowest parameter; then ratios against the
default (collapsed, numpyro).

    python benchmarks/bench_nuts.py                    # every configuration
    python benchmarks/bench_nuts.py --quick            # backends on the collapsed model only
    python benchmarks/bench_nuts.py --noise-cost       # tree noise against independent noise

``--noise-cost`` times the default NUTS (collapsed, numpyro) at the COPDGene shape of
``bench_gibbs.py`` (p=10, m=999, 106 subclasses in 9 superclasses, shared residual noise),
with the tree-structured likelihood and with ``noise="independent"``, the two alternating
over ``--runs`` runs, and prints the ratio of the median sampling times (goal ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import arviz as az
from bench_gibbs import SHARED_RESIDUALS, make_model

import bayeshier_pymc as bh

CONFIGURATIONS = [
    ("collapsed", "numpyro"),
    ("collapsed", "nutpie"),
    ("collapsed", "pymc"),
    ("auto", "nutpie"),
    ("noncentered", "nutpie"),
    ("centered", "nutpie"),
]


def run(parameterization: str, backend: str, model: bh.ShrinkageModel) -> dict[str, float]:
    start = time.perf_counter()
    idata = model.sample(
        nuts_sampler=backend,
        parameterization=parameterization,
        random_seed=1,
        progressbar=False,
    )
    wall = time.perf_counter() - start
    summary = az.summary(
        idata, var_names=["tau", "mu", "subclass_mean", "theta"], kind="diagnostics"
    )
    return {
        "wall_s": wall,
        "divergences": int(idata.sample_stats["diverging"].sum()),
        "rhat_max": float(summary["r_hat"].max()),
        "ess_bulk_min": float(summary["ess_bulk"].min()),
        "ess_per_s_min": float(summary["ess_bulk"].min()) / wall,
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="collapsed model, every backend")
    parser.add_argument(
        "--noise-cost", action="store_true", help="tree noise against independent noise"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per noise model")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.noise_cost:
        noise_cost(args.runs)
        return
    study = bh.simulate(60, 770, 10, random_seed=1)
    fit = bh.mlm(study.Y, study.X, x_intercept=False)
    model = bh.ShrinkageModel(fit, bh.Hierarchy.from_frame(study.annotations, ["subclass"]))
    configurations = [c for c in CONFIGURATIONS if not args.quick or c[0] == "collapsed"]
    results = {}
    print(
        f"{'parameterization':<14}{'backend':<9}{'wall s':>8}{'div':>6}{'rhat':>7}"
        f"{'ESS min':>9}{'ESS/s':>8}"
    )
    for parameterization, backend in configurations:
        r = run(parameterization, backend, model)
        results[(parameterization, backend)] = r
        print(
            f"{parameterization:<14}{backend:<9}{r['wall_s']:>8.1f}{r['divergences']:>6d}"
            f"{r['rhat_max']:>7.3f}{r['ess_bulk_min']:>9.0f}{r['ess_per_s_min']:>8.1f}",
            flush=True,
        )
    base = results[("collapsed", "numpyro")]
    for key, r in results.items():
        if key != ("collapsed", "numpyro"):
            print(
                f"ESS/s of the slowest parameter, default / {key[0]} {key[1]}: "
                f"{base['ess_per_s_min'] / max(r['ess_per_s_min'], 1e-9):.1f}x"
            )


if __name__ == "__main__":
    main()
