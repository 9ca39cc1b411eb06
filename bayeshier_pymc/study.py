"""The research simulation study: how much does shrinkage beat stage 1.

Each replicate simulates the research design, splits the samples 70/30, fits stage 1 on the
training rows (no intercept), shrinks the estimates along the true tree, and reports

- the coefficient-MSE ratio, mean((B̂ − B)²) / mean((θ̂ − B)²), stage 1 over shrunken, and
- the held-out prediction-MSE ratio, mean((Y_test − X_test B̂)²) / mean((Y_test − X_test θ̂)²),

where θ̂ is the posterior mean. Ratios above 1 favour shrinkage.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.results import coefficient_matrix
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.simulate import simulate, train_test_split

__all__ = [
    "HETEROGENEITY",
    "RESEARCH_GRID",
    "StudyResult",
    "StudySetting",
    "research_settings",
    "run_replicate",
    "simulation_study",
]

HETEROGENEITY: dict[str, dict[str, float]] = {
    "moderate": {"tau_v": 0.12, "tau_w": 0.08},
    "large": {"tau_v": 0.30, "tau_w": 0.12},
}
"""The research table's heterogeneity settings (τ_u = τ_v for the superclass rows)."""

RESEARCH_GRID: tuple[tuple[int, int], ...] = (
    (60, 300),
    (60, 770),
    (200, 300),
    (200, 770),
    (400, 770),
)
"""The research table's (n, m) rows."""


@dataclass(frozen=True)
class StudySetting:
    """One row of the study table."""

    n: int
    m: int
    heterogeneity: str
    superclasses: int | None = None

    @property
    def levels(self) -> list[str]:
        """Annotation levels the shrinkage model uses."""
        return ["subclass"] if self.superclasses is None else ["subclass", "superclass"]


def research_settings(superclass_rows: bool = True) -> list[StudySetting]:
    """The research grid, plus rows with two superclasses at m = 770 when asked."""
    settings = [
        StudySetting(n, m, heterogeneity)
        for heterogeneity in HETEROGENEITY
        for n, m in RESEARCH_GRID
    ]
    if superclass_rows:
        settings += [
            StudySetting(n, 770, heterogeneity, superclasses=2)
            for heterogeneity in HETEROGENEITY
            for n in (60, 200)
        ]
    return settings


def run_replicate(
    setting: StudySetting, seed: int, *, p: int = 10, **sample_kwargs: Any
) -> dict[str, float]:
    """One replicate of ``setting``: simulate, split 70/30, fit both stages, score.

    Parameters
    ----------
    setting
        The row of the study.
    seed
        Seeds the simulation, the split and the sampler.
    p
        Number of covariates.
    **sample_kwargs
        Passed to :meth:`ShrinkageModel.sample`.

    Returns
    -------
    dict
        ``coef_mse_ratio`` and ``prediction_mse_ratio`` (stage 1 over shrunken).
    """
    scales = HETEROGENEITY[setting.heterogeneity]
    study = simulate(
        setting.n,
        setting.m,
        p,
        tau_v=scales["tau_v"],
        tau_w=scales["tau_w"],
        tau_u=scales["tau_v"],
        n_superclasses=setting.superclasses,
        random_seed=seed,
    )
    train, test = train_test_split(study, 0.7, random_seed=seed)
    fit = mlm(train.Y, train.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, setting.levels)
    idata = ShrinkageModel(fit, tree).sample(random_seed=seed, **sample_kwargs)
    shrunk = coefficient_matrix(idata)
    y_test = test.Y.to_numpy()
    stage1_error = np.mean((y_test - fit.predict(test.X).to_numpy()) ** 2)
    shrunk_error = np.mean((y_test - fit.predict(test.X, coef=shrunk).to_numpy()) ** 2)
    return {
        "coef_mse_ratio": float(
            ((fit.coef - study.B) ** 2).mean() / ((shrunk - study.B) ** 2).mean()
        ),
        "prediction_mse_ratio": float(stage1_error / shrunk_error),
    }


@dataclass
class StudyResult:
    """The study table (one row per setting) and every replicate."""

    table: pd.DataFrame
    replicates: pd.DataFrame

    def __repr__(self) -> str:
        return f"StudyResult: mean ratios over replicates (stage 1 / shrunken)\n{self.table}"

    def _repr_html_(self) -> str:
        title = html.escape(
            "Mean ratios over replicates (stage 1 / shrunken); above 1 favours shrinkage"
        )
        return f"<div><p>{title}</p>{self.table.to_html(float_format='{:.2f}'.format)}</div>"


def simulation_study(
    settings: Iterable[StudySetting] | None = None,
    *,
    replicates: int = 10,
    p: int = 10,
    sampler: str = "gibbs",
    draws: int = 1000,
    tune: int = 500,
    chains: int = 2,
    random_seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run the research simulation study.

    Parameters
    ----------
    settings
        Rows of the table (default: :func:`research_settings`, the research grid of (n, m)
        × heterogeneity plus rows with a superclass level).
    replicates
        Replicates per row (the research code used 10).
    p
        Number of covariates (the research code used 10).
    sampler
        ``"gibbs"`` (default: the fast engine) or ``"nuts"``.
    draws, tune, chains
        Sampler settings per replicate.
    random_seed
        Seeds of replicate r of every row are ``random_seed + r``.
    log
        Receives a line per finished row.

    Returns
    -------
    StudyResult
        ``table`` has one row per setting with the mean and standard error over replicates of
        both ratios; ``replicates`` has every replicate.
    """
    rows = []
    for setting in settings if settings is not None else research_settings():
        for replicate in range(replicates):
            scores = run_replicate(
                setting,
                random_seed + replicate,
                p=p,
                sampler=sampler,
                draws=draws,
                tune=tune,
                chains=chains,
                progressbar=False,
            )
            rows.append(
                {
                    "n": setting.n,
                    "m": setting.m,
                    "heterogeneity": setting.heterogeneity,
                    "levels": "+".join(setting.levels),
                    "replicate": replicate,
                    **scores,
                }
            )
        if log is not None:
            last = pd.DataFrame(rows[-replicates:])
            log(
                f"n={setting.n} m={setting.m} {setting.heterogeneity} {'+'.join(setting.levels)}: "
                f"coef MSE ratio {last.coef_mse_ratio.mean():.2f}, "
                f"prediction MSE ratio {last.prediction_mse_ratio.mean():.3f}"
            )
    replicates_frame = pd.DataFrame(rows)
    keys = ["heterogeneity", "levels", "n", "m"]
    grouped = replicates_frame.groupby(keys, sort=False)[["coef_mse_ratio", "prediction_mse_ratio"]]
    table = grouped.mean().join(grouped.sem(), rsuffix="_se").reset_index()
    return StudyResult(table=table, replicates=replicates_frame)
