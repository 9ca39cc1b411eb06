"""The whole analysis in one call: stage 1 → stage 2 (NUTS and Gibbs) → comparisons → files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd

from bayeshier_pymc._validation import check_sampler_arguments
from bayeshier_pymc.depth_comparison import DepthComparison, compare_depths
from bayeshier_pymc.diagnostics import Diagnosis, diagnose
from bayeshier_pymc.hierarchy import Hierarchy, MissingPolicy
from bayeshier_pymc.inference_data import OBSERVATION
from bayeshier_pymc.mlm import (
    EffectScaleChoice,
    MissingValues,
    MLMFit,
    check_effect_scale,
    mlm,
)
from bayeshier_pymc.persistence import check_output_file, save_results
from bayeshier_pymc.problem import Depth
from bayeshier_pymc.report import write_report
from bayeshier_pymc.results import DEFAULT_ALPHA, check_alpha, coefficient_table, scale_summary
from bayeshier_pymc.sampler_comparison import MIN_DRAWS, SamplerComparison, compare_samplers
from bayeshier_pymc.shrinkage import NoiseChoice, ShrinkageModel

__all__ = ["PipelineResult", "prepare_output_folder", "run_pipeline"]


@dataclass
class PipelineResult:
    """Everything the pipeline produced, and the files it wrote."""

    fit: MLMFit
    hierarchy: Hierarchy
    model: ShrinkageModel
    idata: az.InferenceData
    second: az.InferenceData | None
    samplers: SamplerComparison | None
    depths: DepthComparison | None
    diagnosis: Diagnosis
    coefficients: pd.DataFrame
    scales: pd.DataFrame
    files: list[Path] = field(default_factory=list)


def run_pipeline(
    Y: pd.DataFrame,
    X: pd.DataFrame | str,
    annotations: pd.DataFrame,
    levels: Sequence[str],
    out_dir: Path | str,
    *,
    data: pd.DataFrame | None = None,
    covariates: list[str] | None = None,
    priors: str | Mapping[str, Any] | None = None,
    missing: MissingPolicy = "raise",
    missing_values: MissingValues = "raise",
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int = 2026,
    noise: NoiseChoice = "auto",
    effect_scale: EffectScaleChoice = "auto",
    sampler: Literal["nuts", "gibbs"] = "nuts",
    depth: Depth | None = None,
    compare: bool = True,
    cores: int | None = None,
    progressbar: bool = False,
    alpha: float = DEFAULT_ALPHA,
    title: str = "bayeshier_pymc analysis",
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Fit both stages, check them, compare depths, and write the results.

    Steps: stage-1 matrix linear model; stage-2 shrinkage with ``sampler`` (the result that
    is reported); with ``compare``, the other sampler on the same posterior and the agreement
    of the two, and the comparison of the depths ("none", 0, …, all levels) with the
    Gibbs engine; diagnostics; then ``stage1_estimates.csv``, ``shrunken_effects.csv``,
    ``scales.csv``, (with ``compare``) ``depths.csv`` and ``sampler_agreement.csv``,
    ``results.nc`` (InferenceData, hierarchy and stage-1 summary, see
    :func:`~bayeshier_pymc.persistence.load_results`), PNG figures and ``report.md``.

    Parameters
    ----------
    Y
        Responses, samples × features.
    X
        Sample covariates (a DataFrame), or a formula evaluated on ``data``.
    annotations
        Feature annotation table indexed by feature label.
    levels
        Annotation columns, finest first.
    out_dir
        Folder for the outputs (created if needed; see :func:`prepare_output_folder`).
    data
        Sample table for a formula ``X``.
    covariates
        Covariates to shrink (default: every covariate except the intercept, the rule of
        :class:`~bayeshier_pymc.ShrinkageModel`).
    priors
        Stage 2's priors, as :class:`~bayeshier_pymc.ShrinkageModel`'s (default ``"auto"``:
        scaled to each covariate's standard errors; ``"research"``: the research code's).
    missing
        What a missing annotation means (see :meth:`Hierarchy.from_frame`).
    missing_values
        What a NaN in ``Y`` means: ``"raise"`` or ``"per-feature"`` (each feature fitted on
        its complete rows, see :func:`~bayeshier_pymc.mlm.mlm` and ``docs/missing_values.md``).
    draws, tune, chains, random_seed
        Sampler settings.
    noise
        The stage-1 errors' correlation (see :class:`~bayeshier_pymc.ShrinkageModel`):
        ``"auto"`` (default) models it along the tree; ``"independent"`` ignores it.
    effect_scale
        The units in which the effects are exchangeable, as
        :class:`~bayeshier_pymc.ShrinkageModel`'s: ``"auto"`` (default) and
        ``"residual_sd"`` take each feature's residual SD, ``"raw"`` Y's units. The CSV
        tables of effects and the figures of θ are in Y's units either way; in residual-SD
        units the posterior in ``results.nc``, ``scales.csv``, the group effects and the
        shrinkage figure are in those units, and the report says so.
    sampler
        The sampler whose draws are reported: ``"nuts"`` (default) or ``"gibbs"``.
    depth
        Annotation levels used (default: all; ``"none"``: no pooling).
    compare
        Also run the other sampler (agreement check) and compare the depths by LOO.
    cores
        CPUs for the samplers (default: all).
    progressbar
        Show a progress bar (on stderr) for every sampling step.
    alpha
        Target false sign rate of the called effects (``called`` in ``shrunken_effects.csv``
        and the report: q-value ≤ ``alpha``; see :func:`~bayeshier_pymc.coefficient_table`).
    title
        Title of the report.
    log
        Receives one line per step (progress).

    Returns
    -------
    PipelineResult

    Raises
    ------
    ValueError
        For bad sampler arguments or output folder, before any work.

    Examples
    --------
    >>> import tempfile
    >>> import bayeshier_pymc as bh
    >>> from bayeshier_pymc.pipeline import run_pipeline
    >>> study = bh.demo_study()
    >>> with tempfile.TemporaryDirectory() as out:
    ...     result = run_pipeline(
    ...         study.Y, study.X, study.annotations, study.levels, out, sampler="gibbs",
    ...         compare=False, draws=500, chains=2, log=lambda line: None,
    ...     )
    ...     written = sorted(path.name for path in result.files)
    >>> written  # doctest: +NORMALIZE_WHITESPACE
    ['forest_by_group.png', 'group_effects.png', 'posterior_predictive.png', 'report.md',
     'results.nc', 'scales.csv', 'shrinkage.png', 'shrunken_effects.csv', 'stage1_estimates.csv',
     'stage1_vs_shrunken.png', 'tau.png', 'volcano.png']
    """
    check_sampler_arguments(
        draws=draws, tune=tune, chains=chains, cores=cores, random_seed=random_seed
    )
    if sampler not in ("nuts", "gibbs"):
        raise ValueError(f"sampler must be 'nuts' or 'gibbs', got {sampler!r}.")
    check_effect_scale(effect_scale)
    if compare and draws < MIN_DRAWS:
        raise ValueError(
            f"the pipeline compares the samplers, which needs draws >= {MIN_DRAWS} per chain; "
            f"got draws={draws} (or turn the comparisons off)."
        )
    check_alpha(alpha)
    out = prepare_output_folder(out_dir)
    log("stage 1: matrix linear model")
    fit = mlm(Y, X, data=data, missing=missing_values)
    hierarchy = Hierarchy.from_frame(annotations, list(levels), missing=missing)
    settings = {
        "draws": draws,
        "tune": tune,
        "chains": chains,
        "cores": cores,
        "random_seed": random_seed,
        "progressbar": progressbar,
    }
    model = ShrinkageModel(
        fit,
        hierarchy,
        depth=depth,
        covariates=covariates,
        noise=noise,
        priors=priors,
        effect_scale=effect_scale,
    )
    chosen = model.estimates.covariates.tolist()
    names = {"nuts": "NUTS", "gibbs": "the Gibbs engine"}
    log(
        f"stage 2: {names[sampler]}, {len(chosen)} covariate(s) along {hierarchy!r}, "
        f"depth {model.depth}; errors {model.noise_description}; priors: "
        f"{model.priors.describe()}"
    )
    idata = model.sample(sampler, **settings)
    second = samplers = depths = None
    if compare:
        other = "gibbs" if sampler == "nuts" else "nuts"
        log(f"stage 2: {names[other]} on the same posterior")
        second = model.sample(other, **settings)
        samplers = compare_samplers(idata, second)
        log(f"sampler agreement: {'ok' if samplers.ok else 'NOT ok'}")
    diagnosis = diagnose(idata)
    log(f"diagnostics: {'ok' if diagnosis.ok else 'problems found'}")
    if compare:
        log("depth comparison (fresh replicate and PSIS-LOO, Gibbs engine)")
        depths = compare_depths(
            fit,
            hierarchy,
            covariates=chosen,
            priors=priors,
            sampler="gibbs",
            noise=noise,
            effect_scale=effect_scale,
            **settings,
        )
        log(f"recommended depth: {depths.recommended}")
    coefficients = coefficient_table(idata, alpha=alpha)
    scales = scale_summary(idata) if model.pooled else None
    tables = {"stage1_estimates.csv": fit.to_frame(), "shrunken_effects.csv": coefficients}
    if scales is not None:
        tables["scales.csv"] = scales
    if depths is not None and samplers is not None:
        tables["depths.csv"] = depths.summary.reset_index(names="depth")
        tables["sampler_agreement.csv"] = samplers.table.reset_index()

    def wrote(path: Path) -> Path:
        """Log a file as soon as it is written (the gaps between the lines time each one)."""
        log(f"wrote {path}")
        return path

    files = [wrote(_write_csv(frame, out / name)) for name, frame in tables.items()]
    files.append(wrote(save_results(out / "results.nc", idata, hierarchy=hierarchy, fit=fit)))
    figures = _write_figures(idata, fit, samplers, depths, out, wrote)
    report = wrote(
        write_report(
            out / "report.md",
            title=title,
            fit=fit,
            model=model,
            coefficients=coefficients,
            scales=scales,
            samplers=samplers,
            depths=depths,
            diagnosis=diagnosis,
            figures=figures,
            sampler=str(idata.attrs["sampler"]),
        )
    )
    return PipelineResult(
        fit,
        hierarchy,
        model,
        idata,
        second,
        samplers,
        depths,
        diagnosis,
        coefficients,
        scales,
        [*files, *figures, report],
    )


def prepare_output_folder(out_dir: Path | str) -> Path:
    """Create the output folder, refusing a path that cannot be one, before any work.

    Parameters
    ----------
    out_dir
        The folder (created with its parents if needed).

    Returns
    -------
    pathlib.Path
        The folder.

    Raises
    ------
    ValueError
        If ``out_dir`` names an existing file, or cannot be created (the reason is named).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {str(out)!r} is an existing file; name a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {str(out)!r}: {err}") from err
    check_output_file(out / "results.nc")
    return out


def _plot_ppc(idata: az.InferenceData) -> Any:
    """The estimates against their leave-one-out replicates (first covariate), one panel."""
    first = idata.posterior["covariate"].to_numpy()[0]
    observed = idata.observed_data
    coords: dict[str, Any] = {"covariate": [first]}
    if OBSERVATION in observed.dims:  # missing cells: the observed ones of the covariate
        coords = {OBSERVATION: np.flatnonzero(observed["covariate"].to_numpy() == first)}
    axes = az.plot_ppc(idata, coords=coords, num_pp_samples=50)
    ax = np.ravel(axes)[0]
    ax.set_title(f"estimates of {first} and their held-out replicates", fontsize="medium")
    return ax


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def _write_figures(
    idata: az.InferenceData,
    fit: MLMFit,
    samplers: SamplerComparison | None,
    depths: DepthComparison | None,
    out: Path,
    wrote: Callable[[Path], Path],
) -> list[Path]:
    """One PNG per figure, each passed to ``wrote`` once saved.

    The first covariate is shown where a figure shows one.
    """
    import matplotlib.pyplot as plt

    from bayeshier_pymc import plots

    pooled = "tau" in idata.posterior
    drawers: dict[str, Callable[[Any], Any]] = {
        "volcano.png": lambda ax: plots.plot_volcano(idata, ax=ax),
        "stage1_vs_shrunken.png": lambda ax: plots.plot_stage1_vs_shrunken(idata, fit=fit, ax=ax),
        "posterior_predictive.png": lambda ax: _plot_ppc(idata),
    }
    if pooled:
        drawers["shrinkage.png"] = lambda ax: plots.plot_shrinkage(idata, ax=ax)
        drawers["tau.png"] = lambda ax: plots.plot_tau(idata, ax=ax)
        if idata.attrs.get("levels"):
            drawers["forest_by_group.png"] = lambda ax: plots.plot_forest_by_group(idata, ax=ax)
            drawers["group_effects.png"] = lambda ax: plots.plot_group_effects(idata, ax=ax)
    if depths is not None:
        drawers["depths.png"] = lambda ax: plots.plot_compare(depths, ax=ax)
    paths = []
    for name, draw in drawers.items():
        axes = draw(None)
        axes.figure.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        paths.append(wrote(out / name))
    if samplers is not None:
        panels = plots.plot_sampler_comparison(samplers)
        figure = panels.flat[0].figure
        figure.savefig(out / "sampler_comparison.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(wrote(out / "sampler_comparison.png"))
    return paths
