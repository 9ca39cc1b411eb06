"""The research simulation study: how much does shrinkage beat stage 1.

Each replicate simulates the research design, splits the samples 70/30, fits stage 1 on the
training rows (no intercept), shrinks the estimates along the true tree, and reports

- the coefficient-MSE ratio, mean((B̂ − B)²) / mean((θ̂ − B)²), stage 1 over shrunken, and
- the held-out prediction-MSE ratio, mean((Y_test − X_test B̂)²) / mean((Y_test − X_test θ̂)²),

where θ̂ is the posterior mean. Ratios above 1 favour shrinkage. It also scores the posterior
against the true B: the coverage of the true θ by the 95% intervals, and the false sign rate
of the lfsr < 0.05 calls against their mean lfsr (as
:func:`~bayeshier_pymc.calibration.known_truth_scores`), and, with ``compare_depths=True``,
the depth :func:`~bayeshier_pymc.depth_comparison.compare_fits` recommends among 0, 1, …

Correlated residuals (issue 14): a setting may draw the residuals with tree-structured shared
noise, factor structure or a real data set's covariance (:class:`StudySetting` ``residuals``,
:func:`correlated_settings`, :func:`real_noise_setting`), and every replicate can be fitted
with several noise models of stage 2 (``noise_models``): ``"independent"`` (the research
model) and ``"auto"`` (the package default, tree-structured noise estimated from the stage-1
residuals), side by side on the same data.

Units: the simulation draws its true effects exchangeable in Y's units (the research design),
so stage 2 is fitted with ``effect_scale="raw"``, the model that matches that truth; the
package's default units for a stage-1 fit, each feature's residual SD, are measured on real
data and on real noise (:mod:`~bayeshier_pymc.calibration`, ``docs/calibration.md``).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bayeshier_pymc.calibration import known_truth_scores, posterior_summary
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import mlm
from bayeshier_pymc.parallel import dispatch, inner_fit_options
from bayeshier_pymc.results import coefficient_matrix
from bayeshier_pymc.sampling import check_sampler_name
from bayeshier_pymc.shrinkage import NOISE_CHOICES, ShrinkageModel
from bayeshier_pymc.simulate import ResidualNoise, SimulatedStudy, simulate, train_test_split
from bayeshier_pymc.validation_data import ValidationStudy, real_residual_covariance

__all__ = [
    "DEFAULT_PROPORTIONS",
    "HETEROGENEITY",
    "RESEARCH_GRID",
    "StudyResult",
    "StudySetting",
    "correlated_settings",
    "real_noise_setting",
    "research_settings",
    "run_replicate",
    "simulate_setting",
    "simulation_study",
]

DEFAULT_PROPORTIONS: tuple[float, ...] = (0.55, 0.25, 0.15, 0.05)
"""The research design's shares of the metabolites in its four subclasses."""

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
    """One row of the study table.

    Attributes
    ----------
    n, m
        Samples and metabolites.
    heterogeneity
        A key of :data:`HETEROGENEITY`.
    superclasses
        Superclasses over the subclasses (``n_superclasses`` of :func:`simulate`), or
        ``None`` for one level.
    residuals
        Correlated residuals (:class:`~bayeshier_pymc.simulate.ResidualNoise`); ``None``:
        independent ``N(0, 1)`` ones, as in the research code.
    residual_name
        How the table names the residuals.
    proportions
        Shares of the metabolites in each subclass.
    """

    n: int
    m: int
    heterogeneity: str
    superclasses: int | tuple[int, ...] | None = None
    residuals: ResidualNoise | None = field(default=None, compare=False)
    residual_name: str = "independent"
    proportions: tuple[float, ...] = DEFAULT_PROPORTIONS

    @property
    def levels(self) -> list[str]:
        """Annotation levels the shrinkage model uses."""
        return ["subclass"] if self.superclasses is None else ["subclass", "superclass"]


TREE_RESIDUALS = ResidualNoise(subclass_sd=0.8, superclass_sd=0.4, global_sd=0.3)
"""Tree-structured residuals: 45% of each residual variance shared (0.64 + 0.16 + 0.09 of
1.89), in the range of real data (median share 64% on the liver lipidome, 28% on QMDiab)."""
FACTOR_RESIDUALS = ResidualNoise(n_factors=3, factor_sd=0.5)
"""Factor residuals: three factors with N(0, 0.5²) loadings, unrelated to the tree."""


def correlated_settings(
    n: int = 60,
    m: int = 300,
    heterogeneity: str = "moderate",
    real: Sequence[ValidationStudy] = (),
) -> list[StudySetting]:
    """The correlated-residual rows: independent (reference), tree-structured, factor, real.

    Every row has two superclasses over the four subclasses (true depth 2).

    Parameters
    ----------
    n, m, heterogeneity
        As in :class:`StudySetting` (the real rows have the real data set's features).
    real
        Real data sets whose residual covariance and tree give one row each
        (:func:`real_noise_setting`).

    Returns
    -------
    list of StudySetting
    """
    settings = [
        StudySetting(n, m, heterogeneity, superclasses=2),
        StudySetting(n, m, heterogeneity, 2, TREE_RESIDUALS, "tree-structured"),
        StudySetting(n, m, heterogeneity, 2, FACTOR_RESIDUALS, "factor"),
    ]
    return settings + [real_noise_setting(study, n, heterogeneity) for study in real]


def real_noise_setting(
    study: ValidationStudy,
    n: int = 60,
    heterogeneity: str = "moderate",
    diagonal_share: float = 0.2,
) -> StudySetting:
    """A row whose residuals have a real data set's covariance and whose tree is its tree.

    The real features are sorted by their two annotation levels, so that the simulated
    subclasses are the real finest groups (in the real sizes) and the superclasses the real
    coarser ones; the residual rows are ``N(0, Σ)`` with Σ the real residual covariance
    (:func:`~bayeshier_pymc.validation_data.real_residual_covariance`, in that order),
    scaled to a mean variance of 1 (the research design's σ_y), so that the true effects keep
    their research scale against the noise.

    Parameters
    ----------
    study
        A real data set with at least two annotation levels (only the first two are used).
    n, heterogeneity
        As in :class:`StudySetting`.
    diagonal_share
        Weight of the diagonal in the real covariance.

    Returns
    -------
    StudySetting
    """
    tree = study.hierarchy
    if tree.depth < 2:
        raise ValueError(f"{study.name}: a real-noise row needs two annotation levels.")
    classes, category_of_class = tree.membership(0), tree.parents[1]
    class_order = np.lexsort((np.arange(tree.n_groups[0]), category_of_class))
    class_rank = np.empty_like(class_order)
    class_rank[class_order] = np.arange(class_order.size)
    feature_order = np.argsort(class_rank[classes], kind="stable")
    covariance = real_residual_covariance(study, diagonal_share)
    covariance = covariance[np.ix_(feature_order, feature_order)]
    covariance /= np.mean(np.diag(covariance))
    sizes = np.bincount(classes, minlength=tree.n_groups[0])[class_order]
    per_category = np.bincount(category_of_class, minlength=tree.n_groups[1])
    return StudySetting(
        n,
        tree.n_features,
        heterogeneity,
        superclasses=tuple(int(k) for k in per_category if k > 0),
        residuals=ResidualNoise(covariance=covariance),
        residual_name=f"real ({study.name})",
        proportions=tuple(float(size) for size in sizes),
    )


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


def simulate_setting(setting: StudySetting, seed: int, *, p: int = 10) -> SimulatedStudy:
    """One data set of ``setting`` with ``p`` covariates, as :func:`run_replicate` simulates it.

    The heterogeneity's scales give τ_v and τ_w, and τ_u = τ_v (as in the research code).
    """
    scales = HETEROGENEITY[setting.heterogeneity]
    return simulate(
        setting.n,
        setting.m,
        p,
        proportions=setting.proportions,
        tau_v=scales["tau_v"],
        tau_w=scales["tau_w"],
        tau_u=scales["tau_v"],
        n_superclasses=setting.superclasses,
        residuals=setting.residuals,
        random_seed=seed,
    )


def run_replicate(
    setting: StudySetting,
    seed: int,
    *,
    p: int = 10,
    noise: str = "auto",
    compare_depths: bool = False,
    priors: str | Mapping[str, Any] | None = None,
    **sample_kwargs: Any,
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
    noise
        Stage 2's noise model (:class:`~bayeshier_pymc.ShrinkageModel`'s ``noise``):
        ``"auto"`` (default) or ``"independent"``.
    compare_depths
        Also fit every shallower depth and record the depth
        :func:`~bayeshier_pymc.depth_comparison.compare_fits` recommends (its default rule).
    priors
        Stage 2's priors (:class:`~bayeshier_pymc.ShrinkageModel`'s ``priors``; ``"research"``
        for the research code's).
    **sample_kwargs
        Passed to :meth:`ShrinkageModel.sample`.

    Returns
    -------
    dict
        ``coef_mse_ratio`` and ``prediction_mse_ratio`` (stage 1 over shrunken) of the fit at
        the setting's full depth; its ``coverage`` of the true θ, lfsr ``calls``, their
        ``false_sign_rate`` and ``claimed_lfsr`` (NaN without calls); with
        ``compare_depths``, ``recommended_depth``.
    """
    if noise not in NOISE_CHOICES:
        raise ValueError(f"noise must be one of {NOISE_CHOICES!r}, got {noise!r}.")
    study = simulate_setting(setting, seed, p=p)
    train, test = train_test_split(study, 0.7, random_seed=seed)
    fit = mlm(train.Y, train.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, setting.levels)

    def fit_depth(depth: int) -> Any:
        model = ShrinkageModel(
            fit, tree, depth=depth, noise=noise, priors=priors, effect_scale="raw"
        )
        return model.sample(random_seed=seed, **sample_kwargs)

    fits = {tree.depth: fit_depth(tree.depth)}
    idata = fits[tree.depth]
    shrunk = coefficient_matrix(idata)
    y_test = test.Y.to_numpy()
    stage1_error = np.mean((y_test - fit.predict(test.X).to_numpy()) ** 2)
    shrunk_error = np.mean((y_test - fit.predict(test.X, coef=shrunk).to_numpy()) ** 2)
    posterior = posterior_summary(idata)
    truth = study.B.sel(covariate=posterior.mean["covariate"], feature=posterior.mean["feature"])
    b = fit.coef.sel(covariate=truth["covariate"], feature=truth["feature"])
    calibration = known_truth_scores(truth.to_numpy(), b.to_numpy(), posterior)
    scores = {
        "coef_mse_ratio": float(
            ((fit.coef - study.B) ** 2).mean() / ((shrunk - study.B) ** 2).mean()
        ),
        "prediction_mse_ratio": float(stage1_error / shrunk_error),
        **{key: calibration[key] for key in CALIBRATION_SCORES},
    }
    if compare_depths:
        fits.update({depth: fit_depth(depth) for depth in range(tree.depth)})
        scores["recommended_depth"] = int(compare_fits(fits).recommended)
    return scores


CALIBRATION_SCORES = ("coverage", "calls", "false_sign_rate", "claimed_lfsr")
"""The scores against the true θ that :func:`run_replicate` takes from the calibration check."""


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
    noise_models: Sequence[str] = ("auto",),
    compare_depths: bool = False,
    random_seed: int = 0,
    log: Callable[[str], None] | None = None,
    n_jobs: int | None = None,
    progressbar: bool = True,
    **sample_options: Any,
) -> StudyResult:
    """Run the research simulation study.

    Parameters
    ----------
    settings
        Rows of the table (default: :func:`research_settings`, the research grid of (n, m)
        × heterogeneity plus rows with a superclass level; :func:`correlated_settings` gives
        the correlated-residual rows).
    replicates
        Replicates per row (the research code used 10).
    p
        Number of covariates (the research code used 10).
    sampler
        ``"gibbs"`` (default: the fast engine) or ``"nuts"``.
    draws, tune, chains
        Sampler settings per replicate.
    noise_models
        Stage 2's noise models fitted to every replicate, side by side: ``"auto"`` (the
        package default, tree-structured noise estimated from the residuals) and/or
        ``"independent"`` (the research model).
    compare_depths
        Also record the depth :func:`~bayeshier_pymc.depth_comparison.compare_fits`
        recommends (see :func:`run_replicate`).
    random_seed
        Seeds of replicate r of every row are ``random_seed + r``.
    log
        Receives a line per finished row and noise model.
    n_jobs
        Replicates run at once, through joblib (:func:`~bayeshier_pymc.parallel.dispatch`);
        ``None`` (default): the current ``joblib.parallel_config`` (one at a time unless it
        says otherwise; ``backend="dask"`` runs them on a Dask cluster). Every replicate's
        numbers are the same wherever it runs; in parallel each fit gets one core.
    progressbar
        Show one progress bar over the replicates (the fits show none of their own), as
        every function that runs many fits does (``docs/parallel.md``).
    **sample_options
        Further keywords of :func:`run_replicate` (``priors``) and of
        :meth:`ShrinkageModel.sample` (e.g. ``nuts_sampler``).

    Returns
    -------
    StudyResult
        ``table`` has one row per setting and noise model with the means over replicates of
        both ratios (and their standard errors), of the coverage of the true θ, the number
        of lfsr < 0.05 calls, their false sign rate and mean lfsr, and with
        ``compare_depths`` the share of replicates whose recommended depth is the true one
        (``true_depth_share``); ``replicates`` has every replicate.
    """
    unknown = [noise for noise in noise_models if noise not in NOISE_CHOICES]
    if unknown or not noise_models:
        raise ValueError(
            f"noise_models must be a non-empty sequence of {NOISE_CHOICES!r}, got {noise_models!r}."
        )
    rows_of_table = [
        (setting, noise)
        for setting in (settings if settings is not None else research_settings())
        for noise in noise_models
    ]
    check_sampler_name(sampler)
    options = inner_fit_options(
        {
            "p": p,
            "compare_depths": compare_depths,
            "sampler": sampler,
            "draws": draws,
            "tune": tune,
            "chains": chains,
            "progressbar": False,
            **sample_options,
        },
        n_jobs,
    )
    keys = [
        (setting, noise, replicate)
        for setting, noise in rows_of_table
        for replicate in range(replicates)
    ]
    tasks = (
        (
            f"replicate {replicate} (seed {random_seed + replicate}) of the row "
            f"{_describe(setting, noise)}",
            (setting, random_seed + replicate, noise, options),
        )
        for setting, noise, replicate in keys
    )
    results = dispatch(
        _replicate_scores,
        tasks,
        n_jobs=n_jobs,
        progress=progressbar,
        total=len(keys),
        unit="replicate",
    )
    rows = []
    for (setting, noise, replicate), scores in zip(keys, results, strict=True):
        rows.append(
            {
                "residuals": setting.residual_name,
                "n": setting.n,
                "m": setting.m,
                "heterogeneity": setting.heterogeneity,
                "levels": "+".join(setting.levels),
                "noise": noise,
                "replicate": replicate,
                **scores,
            }
        )
        if log is not None and replicate == replicates - 1:
            last = pd.DataFrame(rows[-replicates:])
            log(
                f"{_describe(setting, noise)}: "
                f"coef MSE ratio {last.coef_mse_ratio.mean():.2f}, "
                f"prediction MSE ratio {last.prediction_mse_ratio.mean():.3f}, "
                f"coverage {last.coverage.mean():.3f}, "
                f"false sign rate {last.false_sign_rate.mean():.3f} "
                f"(claimed {last.claimed_lfsr.mean():.3f})"
            )
    replicates_frame = pd.DataFrame(rows)
    if compare_depths:
        depth = replicates_frame["levels"].str.count(r"\+") + 1
        replicates_frame["true_depth_share"] = (
            replicates_frame["recommended_depth"] == depth
        ).astype(float)
    keys = ["residuals", "heterogeneity", "levels", "n", "m", "noise"]
    ratios = ["coef_mse_ratio", "prediction_mse_ratio"]
    others = [*CALIBRATION_SCORES, *(["true_depth_share"] if compare_depths else [])]
    grouped = replicates_frame.groupby(keys, sort=False)
    table = grouped[ratios].mean().join(grouped[ratios].sem().add_suffix("_se"))
    table = table.join(grouped[others].mean()).reset_index()
    return StudyResult(table=table, replicates=replicates_frame)


def _describe(setting: StudySetting, noise: str) -> str:
    """A row of the table in words."""
    return (
        f"{setting.residual_name} residuals, n={setting.n} m={setting.m} "
        f"{setting.heterogeneity} {'+'.join(setting.levels)}, noise={noise}"
    )


def _replicate_scores(
    setting: StudySetting, seed: int, noise: str, options: dict[str, Any]
) -> dict[str, float]:
    """One task of :func:`simulation_study`: :func:`run_replicate` with ``noise``."""
    return run_replicate(setting, seed, noise=noise, **options)
