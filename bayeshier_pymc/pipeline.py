"""The whole analysis in one call: stage 1 → stage 2 → results written to a folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import arviz as az
import pandas as pd

from bayeshier_pymc.hierarchy import Hierarchy, MissingPolicy
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.results import coefficient_table, scale_summary
from bayeshier_pymc.shrinkage import ShrinkageModel

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass
class PipelineResult:
    """Everything the pipeline produced, and the files it wrote."""

    fit: MLMFit
    model: ShrinkageModel
    idata: az.InferenceData
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
    missing: MissingPolicy = "raise",
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    random_seed: int = 2026,
    log: Callable[[str], None] = print,
) -> PipelineResult:
    """Fit stage 1 and stage 2 and write the results.

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
        Folder for the outputs (created if needed).
    data
        Sample table for a formula ``X``.
    covariates
        Covariates to shrink (default: every covariate except the intercept).
    missing
        What a missing annotation means (see :meth:`Hierarchy.from_frame`).
    draws, tune, chains, random_seed
        Sampler settings.
    log
        Receives one line per step (progress).

    Returns
    -------
    PipelineResult
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log("stage 1: matrix linear model")
    fit = mlm(Y, X, data=data)
    hierarchy = Hierarchy.from_frame(annotations, list(levels), missing=missing)
    chosen = covariates or [c for c in fit.coef.indexes["covariate"] if c != "(Intercept)"]
    log(f"stage 2: shrinkage of {len(chosen)} covariate(s) along {hierarchy!r}")
    model = ShrinkageModel(fit, hierarchy, covariates=chosen)
    idata = model.sample(
        draws=draws, tune=tune, chains=chains, random_seed=random_seed, progressbar=False
    )
    coefficients = coefficient_table(idata)
    scales = scale_summary(idata)
    files = [
        _write_csv(fit.to_frame(), out / "stage1_estimates.csv"),
        _write_csv(coefficients, out / "shrunken_effects.csv"),
        _write_csv(scales, out / "scales.csv"),
    ]
    posterior_path = out / "posterior.nc"
    idata.to_netcdf(str(posterior_path))
    files.append(posterior_path)
    for path in files:
        log(f"wrote {path}")
    return PipelineResult(fit, model, idata, coefficients, scales, files)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path
