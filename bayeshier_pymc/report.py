"""A short Markdown report of a pipeline run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bayeshier_pymc.depth_comparison import DepthComparison
from bayeshier_pymc.diagnostics import Diagnosis
from bayeshier_pymc.mlm import MLMFit
from bayeshier_pymc.results import DEFAULT_ALPHA, display_table
from bayeshier_pymc.sampler_comparison import SamplerComparison
from bayeshier_pymc.shrinkage import ShrinkageModel

__all__ = ["write_report"]

TOP_EFFECTS = 15
UNIT_NOTES = {
    "raw": "",
    "residual_sd": (
        " Effects exchangeable in units of each metabolite's residual SD (the standardized "
        "stage-1 fit): the effect tables and the figures of the effects are in Y's units; "
        "the scales, the group effects and the shrinkage figure in residual-SD units."
    ),
}
"""The report's sentence on the units of the effects, by the model's ``effect_scale``."""


def _table(frame: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency) of ``frame`` as :func:`display_table` shows it."""
    shown = display_table(frame)
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "---|" * len(shown.columns)
    rows = ["| " + " | ".join(map(str, row)) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _diagnosis_status(diagnosis: Diagnosis) -> str:
    if not diagnosis.ok:
        return "problems"
    return "ok, with warnings" if (diagnosis.table["status"] == "warn").any() else "ok"


def write_report(
    path: Path,
    *,
    title: str,
    fit: MLMFit,
    model: ShrinkageModel,
    coefficients: pd.DataFrame,
    scales: pd.DataFrame | None,
    samplers: SamplerComparison | None,
    depths: DepthComparison | None,
    diagnosis: Diagnosis,
    figures: Sequence[Path],
    sampler: str = "NUTS",
) -> Path:
    """Write ``report.md``: data, stage 1, shrinkage, checks, depth choice and figures.

    ``scales``, ``samplers`` and ``depths`` are left out where ``None`` (no pooling, no
    comparisons); ``sampler`` names the sampler of the reported draws. For a model whose
    effects are exchangeable in residual-SD units the report says which of its numbers are in
    those units.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    stage1 = fit.to_frame()
    significant = (
        stage1.assign(significant=stage1["p_adj"] < 0.05)
        .groupby("covariate", sort=False)["significant"]
        .sum()
        .reset_index(name="BH 5% significant")
    )
    alpha = coefficients.attrs.get("alpha", DEFAULT_ALPHA)
    confident = (
        coefficients.groupby("covariate", sort=False)["called"]
        .sum()
        .reset_index(name=f"called (q-value ≤ {alpha:g})")
    )
    top = coefficients.sort_values("lfsr").head(TOP_EFFECTS)
    top = top[
        ["covariate", "feature", "estimate", "mean", "hdi_lower", "hdi_upper", "lfsr", "qvalue"]
    ]
    sections = [
        f"# {title}",
        f"{fit.n_obs} samples × {fit.Y.shape[1]} features; {model.summary_line}. "
        f"Stage-1 errors: {model.noise_description}.{UNIT_NOTES[model.problem.effect_scale]}",
        f"Priors: {model.priors.describe()}.\n\n{_table(model.priors.to_frame().reset_index())}",
        "## Stage 1: matrix linear model",
        _table(significant),
        f"## Stage 2: shrinkage along the annotation tree ({sampler})",
        _table(confident),
        "An effect is called when its q-value (the mean local false sign rate of every effect "
        "at least as confidently signed) is at most the level: the expected share of wrong "
        "signs among the called effects is then at most that level.",
    ]
    if scales is not None:
        sections.append(
            "Scales per level (posterior mean, HDI, share of the between-feature variance):"
            f"\n\n{_table(scales)}"
        )
    sections += [
        "Most confidently signed effects (smallest local false sign rate; with "
        f"{coefficients.attrs.get('n_draws', 'S')} draws a rate below 1/S shows as "
        f'"<1/S"):\n\n{_table(top)}',
        "## Checks",
        f"**Diagnostics** ({_diagnosis_status(diagnosis)}):\n\n"
        + "\n".join(f"- {line}" for line in diagnosis.verdict.splitlines()),
    ]
    if samplers is not None:
        sections.append(
            f"**NUTS vs Gibbs**: {'the samplers agree' if samplers.ok else 'the samplers disagree'}"
            + ("" if samplers.ok else ": " + "; ".join(samplers.problems))
        )
    if depths is not None:
        sections += [
            "## Which depth of the tree?",
            _table(depths.summary.reset_index(names="depth")),
            "\n".join(f"- {line}" for line in depths.verdict.splitlines()),
        ]
    sections += ["## Figures", *(f"![{figure.stem}]({figure.name})" for figure in figures)]
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path
