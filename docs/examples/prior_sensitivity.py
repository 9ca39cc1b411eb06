"""Prior sensitivity of τ on the built-in demo study: the figure and table of docs/model.md.

Fits the demo study (``bh.demo_study()``, 300 metabolites in 12 sub-pathways in 4
super-pathways) with the Gibbs engine under three HalfCauchy scales of every τ: the default
(A = the covariate's median standard error s̄) and 0.1 × and 10 × that, and writes

- ``prior_sensitivity.png``: for one covariate, each setting's posterior of τ per level with
  its prior overlaid, and the variance shares
  (:func:`bayeshier_pymc.plots.plot_tau_prior_posterior`);
- ``prior_sensitivity.md``: the posterior mean and 90% interval of τ per covariate, level and
  setting, as a Markdown table.

Run from the repository root: ``python docs/examples/prior_sensitivity.py [out_dir]`` (default
``docs/_static``); the committed files were written so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd

import bayeshier_pymc as bh
from bayeshier_pymc.plots import plot_tau_prior_posterior

FACTORS = (0.1, 1.0, 10.0)
"""The τ prior scales tried, as multiples of the default (the median standard error)."""
COVARIATE = "age"
"""The covariate of the figure (the table has every covariate)."""


def prior_sensitivity(
    out_dir: Path, *, draws: int = 1000, tune: int = 1000, random_seed: int = 1
) -> pd.DataFrame:
    """Fit under every scale of :data:`FACTORS`; write the figure and table to ``out_dir``."""
    study = bh.demo_study()
    fit = bh.mlm(study.Y, study.X)
    tree = bh.Hierarchy.from_frame(study.annotations, ["SUB_PATHWAY", "SUPER_PATHWAY"])
    default = bh.ShrinkageModel(fit, tree).priors
    levels = list(default.scale_levels)
    shape = (len(FACTORS), len(levels) + 1)
    figure, axes = plt.subplots(*shape, figsize=(11, 2.4 * shape[0] + 0.4), layout="constrained")
    rows = []
    for factor, panels in zip(FACTORS, axes, strict=True):
        model = bh.ShrinkageModel(fit, tree, priors={"tau_scale": factor * default.tau_scale})
        idata = model.sample(
            "gibbs", draws=draws, tune=tune, chains=2, random_seed=random_seed, progressbar=False
        )
        plot_tau_prior_posterior(idata, covariates=[COVARIATE], ax=panels)
        panels[0].set_ylabel(f"A = {factor:g} s̄", fontsize="medium")
        tau = idata.posterior["tau"]
        low, high = tau.quantile([0.05, 0.95], dim=("chain", "draw"))
        mean = tau.mean(("chain", "draw"))
        for covariate in model.priors.covariates:
            for level in levels:
                at = {"covariate": covariate, "level": level}
                rows.append(
                    {
                        "covariate": covariate,
                        "level": level,
                        "prior scale A": f"{factor:g} s̄",
                        "posterior mean of τ": f"{float(mean.sel(at)):.3f}",
                        "90% interval": f"{float(low.sel(at)):.3f} – {float(high.sel(at)):.3f}",
                    }
                )
    figure.suptitle(f"demo study, {COVARIATE}: posterior of τ (bars) and its prior (dashed)")
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_dir / "prior_sensitivity.png", dpi=90)
    plt.close(figure)
    table = pd.DataFrame(rows)
    typical = ", ".join(
        f"{c} {s:.3f}" for c, s in zip(default.covariates, default.typical_se, strict=True)
    )
    header = (
        "<!-- written by docs/examples/prior_sensitivity.py; do not edit -->\n\n"
        f"Median standard errors s̄: {typical}. Gibbs engine, 2 chains × {draws} draws, "
        f"seed {random_seed}.\n\n"
    )
    (out_dir / "prior_sensitivity.md").write_text(header + _markdown(table), encoding="utf-8")
    return table


def _markdown(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table."""
    lines = [" | ".join(table.columns), " | ".join("---" for _ in table.columns)]
    lines += [" | ".join(map(str, row)) for row in table.itertuples(index=False)]
    return "".join(f"| {line} |\n" for line in lines)


if __name__ == "__main__":
    prior_sensitivity(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/_static"))
