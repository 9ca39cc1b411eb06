"""The research simulation with correlated residuals: independent against structured noise.

Run ``python benchmarks/bench_correlated_study.py [--replicates 4] [--compare]``. The rows are
:func:`bayeshier_pymc.study.correlated_settings` (p = 10 covariates, n = 60, m = 300,
moderate heterogeneity, four subclasses in two superclasses; residuals independent,
tree-structured, factor, and, when ``../shared/data`` holds them, the covariance and tree of
the liver lipidome and of QMDiab plasma). Every replicate is fitted with the research model
(``noise="independent"``) and the package default (``noise="auto"``: tree-structured noise
estimated from the stage-1 residuals); it prints one Markdown table: coefficient- and
prediction-MSE ratios (stage 1 / shrunken), coverage of the true θ by the 95% intervals, the
lfsr < 0.05 calls, their false sign rate and mean lfsr, and with ``--compare`` the share of
replicates where compare_fits recommends the true depth (2). Stage 2 has the package's default
priors; ``--priors research`` fits the research code's fixed priors (the package's default
before the priors scaled to the standard errors). ``docs/simulation_study.md`` includes the
output of the default run from ``docs/benchmarks/correlated_study.txt``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

from bayeshier_pymc.priors import PRESETS
from bayeshier_pymc.study import correlated_settings, simulation_study
from bayeshier_pymc.validation_data import available_studies

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    """Run the correlated rows and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--m", type=int, default=300)
    parser.add_argument("--sampler", choices=["nuts", "gibbs"], default="nuts")
    parser.add_argument("--nuts-sampler", default="pymc")
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--priors",
        choices=list(PRESETS),
        default="auto",
        help="stage 2's prior preset: 'auto' (the package default) or 'research'",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    real = [study for _, study in available_studies(args.data, ("liver_lipidome", "qmdiab"))]
    options = {"nuts_sampler": args.nuts_sampler, "cores": 1} if args.sampler == "nuts" else {}
    start = time.perf_counter()
    result = simulation_study(
        correlated_settings(args.n, args.m, real=real),
        replicates=args.replicates,
        sampler=args.sampler,
        draws=args.draws,
        tune=args.draws,
        noise_models=("independent", "auto"),
        compare_depths=args.compare,
        random_seed=args.seed,
        priors=args.priors,
        log=lambda line: print(line, flush=True),
        **options,
    )
    print(f"{time.perf_counter() - start:.0f} s")
    print(result.table.round(3).to_markdown(index=False))
    print(result.replicates.round(4).to_string())


if __name__ == "__main__":
    main()
