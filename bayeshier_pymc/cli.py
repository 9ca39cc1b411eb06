"""The ``bayeshier`` command: ``demo``, ``fit``, ``simulate`` and ``study``.

Results go to files; progress (one line per step, and a bar per sampling step) goes to stderr,
``--quiet`` silences both. Every problem with the inputs or the file system is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["main"]


def _log(line: str) -> None:
    """One progress line, on stderr."""
    print(line, file=sys.stderr, flush=True)


def _silent(line: str) -> None:
    """``--quiet``: progress lines are dropped."""


def _depth(value: str) -> int | str:
    """``--depth``: a number of annotation levels or ``none``."""
    if value == "none":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--depth must be a number of levels or 'none', got {value!r}"
        ) from None


def _sampler_options(args: argparse.Namespace) -> dict[str, object]:
    """The sampler settings, checked (with the output folder) before any work starts."""
    from bayeshier_pymc._validation import check_sampler_arguments
    from bayeshier_pymc.pipeline import prepare_output_folder
    from bayeshier_pymc.sampler_comparison import MIN_DRAWS

    checked = check_sampler_arguments(
        draws=args.draws,
        tune=args.tune,
        chains=args.chains,
        cores=args.cores,
        random_seed=args.seed,
    )
    if args.compare and checked.draws < MIN_DRAWS:
        raise ValueError(
            f"--draws must be at least {MIN_DRAWS} (the samplers are compared; or --no-compare)."
        )
    prepare_output_folder(args.out)
    chosen_alpha = {} if args.alpha is None else {"alpha": args.alpha}
    return {
        "draws": checked.draws,
        "tune": checked.tune,
        "chains": checked.chains,
        "cores": checked.cores,
        "random_seed": args.seed,
        "noise": args.noise,
        "sampler": args.sampler,
        "depth": args.depth,
        "compare": args.compare,
        "progressbar": not args.quiet,
        **chosen_alpha,
    }


def _demo(args: argparse.Namespace) -> int:
    from bayeshier_pymc.datasets import demo_study
    from bayeshier_pymc.pipeline import run_pipeline

    options = _sampler_options(args)
    study = demo_study()
    args.log(
        f"demo study: {study.Y.shape[0]} samples × {study.Y.shape[1]} metabolites, "
        f"covariates {list(study.X.columns)}, levels {study.levels}"
    )
    run_pipeline(
        study.Y,
        study.X,
        study.annotations,
        study.levels,
        args.out,
        log=args.log,
        **options,
    )
    return 0


def _fit(args: argparse.Namespace) -> int:
    from bayeshier_pymc import preprocess
    from bayeshier_pymc.csv_inputs import read_study
    from bayeshier_pymc.pipeline import run_pipeline

    impute = _imputation(args)
    options = _sampler_options(args)
    study = read_study(
        args.responses,
        args.samples,
        args.annotations,
        args.levels,
        sample_id=args.sample_id,
        feature_id=args.feature_id,
        drop_unannotated=args.drop_unannotated,
    )
    responses = preprocess.preprocess(
        study.responses,
        max_missing=args.max_missing,
        impute=impute,
        log=args.log_transform,
        base=args.log_base,
        standardize=args.standardize,
    )
    args.log(f"read {responses.shape[0]} samples × {responses.shape[1]} features")
    run_pipeline(
        responses,
        args.formula,
        study.annotations.loc[responses.columns],
        args.levels,
        args.out,
        data=study.samples,
        covariates=args.covariates,
        priors=args.priors,
        missing=args.missing,
        missing_values=args.missing_values,
        effect_scale=args.effect_scale,
        log=args.log,
        **options,
    )
    return 0


class _StoreGiven(argparse.Action):
    """Store the value and record that it was given on the command line (``<dest>_given``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def _imputation(args: argparse.Namespace) -> str | None:
    """``--impute``, whose default follows ``--missing-values``.

    ``half_min`` by default; ``none`` by default with ``--missing-values per-feature``, which
    fits each feature on its observed values rather than filling the gaps first.
    """
    if args.missing_values == "per-feature" and not args.impute_given:
        return None
    if args.impute != "none" and args.missing_values == "per-feature":
        raise ValueError(
            f"--impute {args.impute} fills the gaps that --missing-values per-feature fits "
            "around; give one of them (or --impute none)."
        )
    return None if args.impute == "none" else args.impute


def _simulate(args: argparse.Namespace) -> int:
    from bayeshier_pymc.simulate import simulate

    study = simulate(
        args.n, args.m, args.p, n_superclasses=args.superclasses, random_seed=args.seed
    )
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    study.Y.to_csv(out / "responses.csv")
    study.X.to_csv(out / "samples.csv")
    study.annotations.to_csv(out / "annotations.csv")
    study.B.to_pandas().to_csv(out / "true_effects.csv")
    covariates = " + ".join(study.X.columns)
    args.log(f"wrote responses.csv, samples.csv, annotations.csv, true_effects.csv to {out}")
    args.log(
        f"try: bayeshier fit --responses {out}/responses.csv --samples {out}/samples.csv "
        f"--annotations {out}/annotations.csv --formula '0 + {covariates}' "
        f"--levels {' '.join(study.levels)} --no-log  # not intensities: no log transform"
    )
    return 0


def _study(args: argparse.Namespace) -> int:
    from bayeshier_pymc.study import StudySetting, research_settings, simulation_study

    settings = [
        setting
        for setting in research_settings(superclass_rows=args.superclass_rows)
        if setting.heterogeneity in args.heterogeneity
        and (args.rows is None or f"{setting.n}x{setting.m}" in args.rows)
    ]
    if not settings:
        raise ValueError("no study rows match --rows and --heterogeneity.")
    args.log(f"simulation study: {len(settings)} row(s) × {args.replicates} replicate(s)")
    result = simulation_study(
        [StudySetting(s.n, s.m, s.heterogeneity, s.superclasses) for s in settings],
        replicates=args.replicates,
        sampler=args.sampler,
        random_seed=args.seed,
        priors=args.priors,
        log=args.log,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(args.out / "study.csv", index=False)
    result.replicates.to_csv(args.out / "study_replicates.csv", index=False)
    print(result.table.round(3).to_string(index=False), flush=True)
    args.log(f"wrote {args.out / 'study.csv'} and {args.out / 'study_replicates.csv'}")
    return 0


def _add_sampler_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    parser.add_argument("--draws", type=int, default=1000, help="posterior draws per chain")
    parser.add_argument("--tune", type=int, default=1000, help="tuning steps per chain")
    parser.add_argument("--chains", type=int, default=4, help="number of chains")
    parser.add_argument("--seed", type=int, default=2026, help="random seed")
    parser.add_argument(
        "--alpha",
        type=float,
        help="target false sign rate of the called effects, q-value <= alpha (default: the "
        "package's, 0.05)",
    )
    parser.add_argument(
        "--sampler",
        choices=["nuts", "gibbs"],
        default="nuts",
        help="sampler of the reported draws (default: nuts; gibbs is much faster)",
    )
    parser.add_argument(
        "--depth",
        type=_depth,
        help="annotation levels used, finest first (default: all; 'none': no pooling)",
    )
    parser.add_argument(
        "--no-compare",
        dest="compare",
        action="store_false",
        help="skip the second sampler and the depth comparison",
    )
    parser.add_argument("--cores", type=int, help="CPUs for the samplers (default: all)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines or bars (errors still show)"
    )
    parser.add_argument(
        "--noise",
        choices=["auto", "independent"],
        default="auto",
        help="stage-1 errors: 'auto' (default) models their correlation along the tree, "
        "estimated from the residuals; 'independent' treats them as independent (the "
        "research model, overconfident on correlated data)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bayeshier", description="Bayesian hierarchical shrinkage of metabolite effects."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="run the whole pipeline on the built-in simulated study",
        description="Simulate the built-in study (deterministic), fit stage 1 and stage 2, "
        "and write the results to a folder.",
    )
    _add_sampler_arguments(demo, "bayeshier_results")
    demo.set_defaults(handler=_demo)

    fit = commands.add_parser(
        "fit",
        help="run the pipeline on your CSV files",
        description="Read responses, sample covariates and feature annotations from CSV, "
        "fit stage 1 with a formula and stage 2 along the annotation levels, and write the "
        "results to a folder.",
    )
    fit.add_argument(
        "--responses", required=True, help="CSV: sample id, then one column per feature"
    )
    fit.add_argument("--samples", required=True, help="CSV: sample id and covariates")
    fit.add_argument("--annotations", required=True, help="CSV: feature id and annotation levels")
    fit.add_argument("--formula", required=True, help="sample formula, e.g. 'age + bmi + C(sex)'")
    fit.add_argument("--levels", nargs="+", required=True, help="annotation columns, finest first")
    fit.add_argument("--sample-id", help="sample id column (default: first column)")
    fit.add_argument("--feature-id", help="feature id column (default: first column)")
    fit.add_argument(
        "--covariates",
        nargs="+",
        help="covariates to shrink (default: all but the intercept; name '(Intercept)' to "
        "shrink it)",
    )
    fit.add_argument(
        "--priors",
        choices=["auto", "research"],
        default="auto",
        help="stage 2's priors: 'auto' scales them to each covariate's median standard error "
        "(invariant to units), 'research' uses the research code's N(0, 1) and HalfCauchy(1) "
        "(default: auto)",
    )
    fit.add_argument(
        "--effect-scale",
        choices=["auto", "raw", "residual_sd"],  # mlm.EFFECT_SCALE_CHOICES, without importing it
        default="auto",
        help="units in which the effects are alike: 'auto' and 'residual_sd' (default: each "
        "metabolite's residual SD, calibrated on real data) or 'raw' (those of the "
        "responses); the CSV tables of effects are in the responses' units either way",
    )
    fit.add_argument(
        "--drop-unannotated",
        action="store_true",
        help="leave out features annotated at no level (Python: "
        "Hierarchy.from_frame(..., drop_unannotated=True))",
    )
    fit.add_argument(
        "--missing",
        choices=["raise", "unassigned"],
        default="raise",
        help="a feature missing some annotation level: error, or an explicit 'unassigned' group",
    )
    fit.add_argument(
        "--missing-values",
        choices=["raise", "per-feature"],
        default="raise",
        help="a missing response value left after preprocessing: error, or fit each feature "
        "on its complete rows (stage-2 cells of features with too few rows are missing; "
        "--impute then defaults to none)",
    )
    fit.add_argument(
        "--max-missing",
        type=float,
        default=0.2,
        help="drop features missing in more than this share of the samples (default: 0.2; "
        "1 keeps every feature)",
    )
    fit.add_argument(
        "--impute",
        choices=["none", "half_min", "min", "median"],
        default="half_min",
        action=_StoreGiven,
        help="per-feature imputation of missing values, on the raw scale (default: half_min, "
        "half of the feature's observed minimum; none with --missing-values per-feature, "
        "which refuses any other)",
    )
    fit.add_argument(
        "--log-base", type=float, default=2.0, help="base of the log transform (default: 2)"
    )
    fit.add_argument(
        "--no-log",
        dest="log_transform",
        action="store_false",
        help="keep the responses as they are (data already on a log scale)",
    )
    fit.add_argument(
        "--standardize", action="store_true", help="standardise each feature (default: off)"
    )
    _add_sampler_arguments(fit, "bayeshier_results")
    fit.set_defaults(handler=_fit, impute_given=False)

    simulate = commands.add_parser(
        "simulate",
        help="write a simulated study as CSV files",
        description="Simulate the research design and write responses, samples, annotations "
        "and the true effects as CSV files (input for 'bayeshier fit').",
    )
    simulate.add_argument("--n", type=int, default=60, help="samples")
    simulate.add_argument("--m", type=int, default=770, help="metabolites")
    simulate.add_argument("--p", type=int, default=10, help="covariates")
    simulate.add_argument("--superclasses", type=int, help="number of superclasses (default: none)")
    simulate.add_argument("--seed", type=int, default=2026, help="random seed")
    simulate.add_argument("--out", type=Path, default=Path("simulated_study"), help="output folder")
    simulate.set_defaults(handler=_simulate)

    study = commands.add_parser(
        "study",
        help="reproduce the research simulation table",
        description="Coefficient-MSE and held-out prediction-MSE ratios (stage 1 / shrunken) "
        "over replicates of the research design: (n, m) in {60, 200, 400} × {300, 770}, "
        "moderate and large heterogeneity, plus rows with a superclass level.",
    )
    study.add_argument("--replicates", type=int, default=10, help="replicates per row")
    study.add_argument("--rows", nargs="+", help="only these rows, as NxM (e.g. 60x770)")
    study.add_argument(
        "--heterogeneity",
        nargs="+",
        choices=["moderate", "large"],
        default=["moderate", "large"],
        help="heterogeneity settings",
    )
    study.add_argument(
        "--no-superclass-rows",
        dest="superclass_rows",
        action="store_false",
        help="leave out the rows with a superclass level",
    )
    study.add_argument("--sampler", choices=["gibbs", "nuts"], default="gibbs", help="sampler")
    study.add_argument(
        "--priors",
        choices=["research", "auto"],
        default="research",
        help="stage 2's priors: 'research' (default) reproduces the research table with its "
        "N(0, 1) and HalfCauchy(1); 'auto' scales them to each covariate's median standard "
        "error, as 'bayeshier fit' does by default",
    )
    study.add_argument("--seed", type=int, default=0, help="seed of the first replicate")
    study.add_argument("--out", type=Path, default=Path("study_results"), help="output folder")
    study.set_defaults(handler=_study)
    return parser


def _version() -> str:
    from bayeshier_pymc import __version__

    return __version__


@contextmanager
def _package_log_on_stderr() -> Iterator[None]:
    """Print what the package logs at INFO (e.g. what each filter removed) while it runs."""
    package = logging.getLogger("bayeshier_pymc")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    quiet = bool(getattr(args, "quiet", False))
    args.log = _silent if quiet else _log
    try:
        if quiet:
            return int(args.handler(args))
        with _package_log_on_stderr():
            return int(args.handler(args))
    except (ValueError, OSError) as err:
        print(f"bayeshier: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    """The error as one line; a file-system error names the file and the reason."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
