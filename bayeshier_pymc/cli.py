"""The ``bayeshier`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from bayeshier_pymc.datasets import demo_study
    from bayeshier_pymc.pipeline import run_pipeline

    study = demo_study()
    print(
        f"demo study: {study.Y.shape[0]} samples × {study.Y.shape[1]} metabolites, "
        f"covariates {list(study.X.columns)}, levels {study.levels}",
        flush=True,
    )
    run_pipeline(
        study.Y,
        study.X,
        study.annotations,
        study.levels,
        args.out,
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        random_seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayeshier",
        description="Bayesian hierarchical shrinkage of metabolite effects.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on the built-in simulated study",
        description="Simulate the built-in study (deterministic), fit stage 1 and stage 2, "
        "and write the results to a folder.",
    )
    demo.add_argument("--out", type=Path, default=Path("bayeshier_results"), help="output folder")
    demo.add_argument("--draws", type=int, default=1000, help="posterior draws per chain")
    demo.add_argument("--tune", type=int, default=1000, help="tuning steps per chain")
    demo.add_argument("--chains", type=int, default=4, help="number of chains")
    demo.add_argument("--seed", type=int, default=2026, help="random seed")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ValueError as err:
        print(f"bayeshier: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
