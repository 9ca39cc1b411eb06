"""Memory of one parallel worker: the libraries it imports and the draws of one fit.

Run ``python benchmarks/bench_worker_memory.py [--m 770 --p 10 --chains 4 --draws 1000]``.
Each step runs in a fresh process, as a worker does: Python alone, after
``import bayeshier_pymc``, and after a small fit with each sampler (which imports PyMC,
PyTensor, JAX and nutpie); it prints each one's peak resident memory (``ru_maxrss``, in MiB
on Linux, where it counts KiB). It then
measures the bytes that a fit's draws take per (chain, draw, covariate, feature) cell, for the
Gibbs engine and for NUTS, on a small simulated problem (the cells of θ, the pointwise
log-likelihood and the replicated estimates; the size per cell does not depend on the shape),
and projects them to the fit given by the options. ``docs/parallel.md`` includes the output
of the default run from ``docs/benchmarks/worker_memory.txt``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

FIT = """
import resource, warnings
import bayeshier_pymc as bh
warnings.simplefilter("ignore")
study = bh.simulate(60, 100, 2, random_seed=1)
fit = bh.mlm(study.Y, study.X, x_intercept=False)
tree = bh.Hierarchy.from_frame(study.annotations, "subclass")
model = bh.ShrinkageModel(fit, tree)
options = dict(draws=100, tune=100, chains=2, random_seed=1, progressbar=False)
"""
STEPS = {
    "Python alone": "import resource",
    "import bayeshier_pymc": "import resource\nimport bayeshier_pymc",
    "a small Gibbs fit": FIT + "idata = model.sample('gibbs', **options)",
    "a small NUTS fit (nutpie)": FIT + "idata = model.sample('nuts', **options)",
}
PEAK = "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
COUNT_CELLS = """
import json
cells = {}
for sampler in ("gibbs", "nuts"):
    idata = model.sample(sampler, **options)
    theta = idata.posterior["theta"]
    arrays = [theta, *idata.log_likelihood.data_vars.values(),
              *idata.posterior_predictive.data_vars.values()]
    cells[sampler] = sum(array.nbytes for array in arrays) / theta.size
print(json.dumps(cells))
"""
PER_CELL = FIT + COUNT_CELLS


def run(code: str) -> str:
    """The last line that ``code`` prints, run in a fresh Python process."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    """Print the peak memory of each step and the draws' bytes per cell, projected."""
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=770)
    parser.add_argument("--p", type=int, default=10)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    print("peak resident memory of a fresh process, after")
    for name, code in STEPS.items():
        print(f"  {name:<28} {float(run(code + PEAK)):7.0f} MiB")
    per_cell = json.loads(run(PER_CELL))
    cells = args.m * args.p * args.chains * args.draws
    print(
        f"draws (θ, pointwise log-likelihood, replicated estimates) per cell, and for "
        f"m = {args.m}, p = {args.p}, {args.chains} chains × {args.draws} draws:"
    )
    for sampler, size in per_cell.items():
        print(f"  {sampler:<6} {size:5.1f} bytes per cell   {size * cells / 1e6:7.0f} MB")


if __name__ == "__main__":
    main()
