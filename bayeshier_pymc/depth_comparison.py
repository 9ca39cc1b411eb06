"""Compare hierarchy depths: which levels of the annotation tree help estimate and predict.

Three leave-out questions are available (``loo=``), each a different prediction task:

``"marginal"`` (default) — leave one metabolite out
    ``log N(b_j; parent mean, s_j² + τ_w²)``: θ_j integrated out, so the held-out point is a
    *new metabolite* of a known group. One of the two likelihoods of the same joint model
    (the ``b_marginal`` log-likelihood of the InferenceData contract).
``"conditional"`` — leave one estimate out, θ_j kept
    ``log N(b_j; θ_j, s_j²)`` (``b_conditional``, computed from the draws). It is often read
    as "a new measurement of a known metabolite", but with one estimate per θ_j, leaving b_j
    out leaves θ_j nothing but its prior from the group, so the exact leave-one-out
    predictive is *the same number* as the marginal one. Only the PSIS approximation
    differs: the posterior of θ_j rests on the held-out b_j, the importance weights are
    heavy-tailed (Pareto k > 0.7 wherever pooling is weak) and the elpd is unreliable. It is
    offered to show exactly that.
``"group"`` — leave one group out
    ``log p(b_G | b_−G, τ)`` for every group G at one annotation level (default: the finest):
    a *new group of metabolites* (a new subclass). Given the scales τ every other quantity
    is Gaussian on the tree, so this predictive is computed exactly (θ0, the group means and
    the θ_j of the group integrated out) by Gaussian message passing — an upward pass for the
    messages and a downward pass for the "cavity" distribution of the group's parent without
    the group — and PSIS only has to reweight the draws of τ (:func:`group_log_likelihood`).

Every model in a comparison is scored on the same held-out units, so the elpds are comparable
across depths; ``"none"`` (no pooling) predicts every b_j from its fixed prior.

The depth is recommended by a fourth question, asked of every comparison whatever ``loo``
(:class:`RecommendationRule` ``criterion="replicate"``, the default): how well does the fit
predict a *fresh replicate* of the same estimates, ``b*_j ~ N(θ_j, Σ_jj)`` with noise of its
own — what a second study of the same metabolites (or the other half of the samples) would
measure, and what estimating θ is for. Its elpd (:func:`replicate_scores`) rests on Stein's
unbiased risk estimate: with Gaussian noise of known covariance Σ and *any* prior, Tweedie's
formula gives ``∂E[θ | b]/∂b · Σ = Cov(θ | b)``, so

    r_j = (E[θ_j | b] − b_j)² + 2 Var(θ_j | b) − Σ_jj

is an unbiased estimate of the posterior mean's squared error (E[θ_j | b] − θ_j)² (Stein
1981; Efron 2011), from the posterior mean and variance of θ alone. The expected log density
of the fresh replicate under the moment-matched predictive ``N(E[θ_j | b], Var(θ_j | b) + Σ_jj)``
is then estimated by putting ``Σ_jj + r_j`` in place of the unknown ``E(b*_j − E[θ_j | b])²``.
With correlated estimates this question and leaving one metabolite out differ:
``p(b_j | b_−j)`` predicts b_j from its group mates *through their
shared noise*, so a depth that reads a group's common offset as shared noise predicts b_j
about as well as one that reads it as a group effect, while a fresh replicate shares no noise
with b and only an effect carries over (``docs/model_comparison.md`` measures both).

Correlated estimates (tree-structured noise, the default for a stage-1 fit with a hierarchy)
are no longer independent given the parameters: each question is then asked of the joint
normal of b (Bürkner, Gabry & Vehtari 2021). ``"marginal"`` is log p(b_j | b_−j, τ), the
prediction of one estimate from all the others *including the correlated members of its
groups*; ``"conditional"`` is log p(b_j | b_−j, θ) under the noise covariance; ``"group"``
is log p(b_G | b_−G, τ). All run on the noise tree, whatever the depth, and
:func:`compare_depths` keeps the same noise structure at every depth (no pooling included),
so that every model has the same likelihood of b and the elpds stay comparable;
:func:`compare_fits` refuses fits whose noise differs.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

from bayeshier_pymc._validation import integer_seed
from bayeshier_pymc.diagnostics import (
    GROUP_LOG_LIKELIHOOD,
    LOO_QUESTIONS,
    VERY_BAD_K,
    Diagnosis,
    LooKind,
    check_loo_kind,
    diagnose,
    has_missing_cells,
    loo_elpd,
    pareto_k_advice,
)
from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.gaussian_tree import NUMPY_OPS, normal_log_density
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import (
    OBSERVATION,
    THETA_SUMMARY,
    is_summary,
    local_scale_draws,
    local_variance_draws,
    problem_from_idata,
)
from bayeshier_pymc.log_likelihood import held_out_predictive
from bayeshier_pymc.mlm import EffectScaleChoice
from bayeshier_pymc.model import scale_levels
from bayeshier_pymc.noise import path_variance
from bayeshier_pymc.parallel import dispatch, inner_fit_options
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem, resolve_depth
from bayeshier_pymc.sampling import check_sampler_name
from bayeshier_pymc.shrinkage import NoiseChoice, ShrinkageModel, model_estimates

__all__ = [
    "GROUP_LOG_LIKELIHOOD",
    "LOO_QUESTIONS",
    "REPLICATE_QUESTION",
    "DepthComparison",
    "RecommendationRule",
    "compare_depths",
    "compare_fits",
    "group_log_likelihood",
    "replicate_scores",
]

Depth = int | str
Criterion = Literal["replicate", "loo"]
REPLICATE_QUESTION = (
    "how well is a fresh replicate of every estimate predicted (the same metabolites, noise "
    "of its own: what estimating θ is for)"
)


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True)
class RecommendationRule:
    """Recommend the simplest (or the deepest) depth whose elpd is close enough to the best.

    ``criterion`` says which elpd: ``"replicate"`` (default), that of a fresh replicate of
    the estimates (:func:`replicate_scores`, the :attr:`DepthComparison.replicate` table), or
    ``"loo"``, the PSIS-LOO elpd of the comparison's leave-out question
    (:attr:`DepthComparison.table`). A depth is close enough when
    ``elpd_diff ≤ max(dse_factor × dse, negligible)``: within ``dse_factor`` standard errors
    of the difference, or below ``negligible`` elpd units, a difference too small to rank
    models by (Sivula, Magnusson & Vehtari 2022: below about 4 the normal approximation of the
    difference is unreliable and the models predict alike). Simplest means fewest levels,
    with no pooling simplest of all.

    ``prefer="deepest"`` recommends the deepest close-enough depth instead. With correlated
    estimates and ``criterion="loo"`` it is the cautious choice: a model shallower than the
    noise tree reads a real group shift as that group's shared noise, which LOO of b cannot
    tell apart, and is then confidently wrong about the group's members. The fresh replicate
    shares no noise with b, so the default criterion tells them apart without it
    (``docs/model_comparison.md`` measures both).
    """

    dse_factor: float = 2.0
    negligible: float = 4.0
    prefer: Literal["simplest", "deepest"] = "simplest"
    criterion: Criterion = "replicate"

    def __post_init__(self) -> None:
        if not (self.dse_factor > 0 and self.negligible >= 0):
            raise ValueError(
                f"dse_factor must be positive and negligible non-negative, got "
                f"{self.dse_factor!r} and {self.negligible!r}."
            )
        if self.prefer not in ("simplest", "deepest"):
            raise ValueError(f"prefer must be 'simplest' or 'deepest', got {self.prefer!r}.")
        if self.criterion not in ("replicate", "loo"):
            raise ValueError(f"criterion must be 'replicate' or 'loo', got {self.criterion!r}.")

    def close_enough(self, row: pd.Series) -> bool:
        """Whether a row of the :func:`arviz.compare` table is close enough to the best."""
        return bool(row["elpd_diff"] <= max(self.dse_factor * row["dse"], self.negligible))

    def choose(self, table: pd.DataFrame) -> Depth:
        """The simplest (or deepest) close-enough depth of a table with elpd_diff and dse.

        ``table`` is the one the ``criterion`` names (:func:`arviz.compare`'s, or the
        replicate table of :attr:`DepthComparison.replicate`).
        """
        close = [_key(i) for i in table.index if self.close_enough(table.loc[i])]
        return min(close, key=_rank) if self.prefer == "simplest" else max(close, key=_rank)

    def __str__(self) -> str:
        which = (
            "the simplest model (fewest levels; no pooling simplest)"
            if self.prefer == "simplest"
            else "the deepest model (most levels; correlated estimates)"
        )
        elpd = "elpd of a fresh replicate" if self.criterion == "replicate" else "PSIS-LOO elpd"
        return (
            f"{which} whose {elpd} is within max({self.dse_factor:g} × dse, "
            f"{self.negligible:g}) of the best"
        )


@dataclass
class DepthComparison:
    """The outcome of :func:`compare_depths` / :func:`compare_fits`.

    Attributes
    ----------
    table
        The :func:`arviz.compare` DataFrame, one row per depth (index ``"none"``, ``"0"``,
        ``"1"``, …), best first.
    fits
        Depth → InferenceData (with ``loo="group"`` its ``log_likelihood`` holds
        ``b_group``).
    elpd
        Depth → :class:`arviz.ELPDData` with pointwise values (for ``az.plot_khat``).
    loo
        The leave-out question used.
    pareto_k
        Per depth: number of held-out points, how many have exact LOO (a log-likelihood
        that is the same in every draw, or a refit), the good-k threshold
        ``min(1 − 1/log10(S), 0.7)`` for S draws, and the counts of good (k ≤ good_k), bad
        (good_k < k ≤ 1) and very bad (k > 1) points, and the largest k.
    recommended
        The depth chosen by ``rule`` (from ``replicate`` or ``table``, as its criterion says).
    rule
        The recommendation rule.
    diagnostics
        Depth → :class:`~bayeshier_pymc.diagnostics.Diagnosis` of the fit's hyperparameters
        (τ, θ0, group means; θ for no pooling), without Pareto k.
    descriptions
        Depth → what the model pools over.
    refits
        Depth → labels of the groups whose LOO was computed by an exact refit.
    replicate
        The fresh-replicate comparison (:func:`replicate_scores`), one row per depth, best
        first: ``elpd_rep`` (estimated expected log density of a fresh replicate of every
        estimate), its ``se``, ``p_rep`` (Σ Var(θ_j | b) / (Var(θ_j | b) + Σ_jj), the
        optimism removed from scoring b itself), ``elpd_diff`` and ``dse`` to the best (as in
        :func:`arviz.compare`) and ``relative_mse``, the estimated coefficient MSE relative to
        stage 1's, Σ r_j / Σ Σ_jj (unbiased for a correct noise model, so it can fall below
        zero where the true ratio is small and the cells few).
    """

    table: pd.DataFrame
    fits: dict[Depth, az.InferenceData]
    elpd: dict[Depth, Any]
    loo: LooKind
    pareto_k: pd.DataFrame
    recommended: Depth
    rule: RecommendationRule
    diagnostics: dict[Depth, Diagnosis] = field(default_factory=dict)
    descriptions: dict[Depth, str] = field(default_factory=dict)
    refits: dict[Depth, list[str]] = field(default_factory=dict)
    replicate: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def summary(self) -> pd.DataFrame:
        """The LOO table, the fresh-replicate elpd and MSE gain, and the Pareto-k counts."""
        columns = ["elpd_loo", "p_loo", "elpd_diff", "dse", "weight"]
        frame = self.table[columns].copy()
        frame.insert(0, "model", [self.descriptions.get(_key(i), "") for i in frame.index])
        replicate = self.replicate[["elpd_rep", "elpd_diff", "dse", "relative_mse"]]
        frame = frame.join(replicate.rename(columns={"elpd_diff": "rep_diff", "dse": "rep_dse"}))
        k_table = self.pareto_k[["n_bad", "n_very_bad", "max_k"]]
        frame = frame.join(k_table.set_axis(k_table.index.map(str)))
        frame["recommended"] = [_key(i) == self.recommended for i in frame.index]
        return frame

    @property
    def verdict(self) -> str:
        """The recommendation, the rule behind it and any reliability warning, in words."""
        best = _key(self.table.index[0])
        close = [_key(i) for i in self.table.index if self.rule.close_enough(self.table.loc[i])]
        best_rep = _key(self.replicate.index[0])
        close_rep = [
            _key(i) for i in self.replicate.index if self.rule.close_enough(self.replicate.loc[i])
        ]
        ratios = self.replicate["relative_mse"].sort_index(key=lambda i: i.map(_key).map(_rank))
        lines = [
            f"PSIS-LOO ({self.loo}): {LOO_QUESTIONS[self.loo]}.",
            f"Best elpd: depth {best} ({self.descriptions.get(best, '')}), "
            f"elpd_loo = {self.table['elpd_loo'].iloc[0]:.1f}; close to it: "
            + ", ".join(f"depth {d}" for d in close)
            + ".",
            f"Fresh replicate: {REPLICATE_QUESTION}. Best: depth {best_rep}, elpd_rep = "
            f"{self.replicate['elpd_rep'].iloc[0]:.1f}; close to it: "
            + ", ".join(f"depth {d}" for d in close_rep)
            + "; estimated coefficient MSE relative to stage 1: "
            + ", ".join(f"depth {i} {r:.2f}" for i, r in ratios.items())
            + ".",
            f"Recommended: depth {self.recommended} "
            f"({self.descriptions.get(self.recommended, '')}) — {self.rule}.",
        ]
        n_unreliable = self.pareto_k["n_bad"] + self.pareto_k["n_very_bad"]
        unreliable = self.pareto_k.index[n_unreliable > 0]
        if len(unreliable):
            details = "; ".join(
                f"depth {d}: {n_unreliable[d]} of {self.pareto_k.loc[d, 'n_points']}"
                for d in unreliable
            )
            missing_cells = has_missing_cells(next(iter(self.fits.values())))
            advice = pareto_k_advice(self.loo, missing_cells=missing_cells)
            lines.append(
                f"Warning: Pareto k above good_k for {details} held-out points, so those elpds "
                f"are unreliable ({advice})."
            )
        else:
            lines.append("Pareto k: every held-out point below good_k; the elpds are reliable.")
        refitted = {d: groups for d, groups in self.refits.items() if groups}
        if refitted:
            lines.append(
                "Exact refits replaced PSIS for "
                + "; ".join(f"depth {d}: {', '.join(g)}" for d, g in refitted.items())
                + "."
            )
        failed = [d for d, diagnosis in self.diagnostics.items() if not diagnosis.ok]
        if failed:
            lines.append(
                "Sampling problems (see .diagnostics[depth]) in "
                + ", ".join(f"depth {d}" for d in failed)
                + ": their elpds are not trustworthy until they are fixed."
            )
        elif self.diagnostics:
            lines.append("Sampling diagnostics (r̂, ESS, divergences): every fit passes.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        table = self.summary.round(2).to_string()
        return f"DepthComparison(loo={self.loo!r})\n{table}\n\n{self.verdict}"

    def _repr_html_(self) -> str:
        verdict = "<br>".join(html.escape(line) for line in self.verdict.splitlines())
        return (
            f"<p><b>DepthComparison</b> (loo={html.escape(self.loo)})</p>"
            f"{self.summary.round(2).to_html()}<p>{verdict}</p>"
        )


# ---------------------------------------------------------------------- entry points
def compare_depths(
    estimates: Any,
    hierarchy: Hierarchy,
    depths: Sequence[Depth] | None = None,
    *,
    loo: LooKind = "marginal",
    group_level: str | None = None,
    sampler: Literal["nuts", "gibbs"] = "nuts",
    priors: str | Mapping[str, Any] | Priors | None = None,
    covariates: list[Any] | Literal["all"] | None = None,
    rule: RecommendationRule | None = None,
    refit_bad_k: bool = False,
    noise: NoiseChoice = "auto",
    effect_scale: EffectScaleChoice = "auto",
    n_jobs: int | None = None,
    **sample_kwargs: Any,
) -> DepthComparison:
    """Fit the shrinkage model at several depths of the tree and compare them.

    Every depth is scored by PSIS-LOO (the question ``loo``) and by the elpd of a fresh
    replicate of the estimates (:func:`replicate_scores`); the ``rule`` recommends a depth
    from one of them (by default the fresh replicate: see the module docstring).

    Parameters
    ----------
    estimates
        Stage-1 estimates, in any form :class:`~bayeshier_pymc.ShrinkageModel` accepts.
    hierarchy
        The full annotation tree.
    depths
        Depths to fit: ``"none"`` (no pooling), 0 (one global mean), 1, … (annotation
        levels used, finest first). Default: ``("none", 0, 1, …, hierarchy.depth)``.
    loo
        ``"marginal"`` (leave one metabolite out), ``"conditional"`` (leave one measurement
        out) or ``"group"`` (leave one group out); see the module docstring.
    group_level
        For ``loo="group"``: the annotation level whose groups are left out (default: the
        finest).
    sampler
        Passed to :meth:`ShrinkageModel.sample`.
    priors, covariates
        As in :class:`ShrinkageModel` (default: the ``"auto"`` priors; every covariate but
        the intercept). The priors are resolved once, from every feature's standard errors
        at the full depth, so every depth and every refit without a group has the same
        priors.
    rule
        How the depth is recommended (default :class:`RecommendationRule`: the simplest depth
        whose elpd of a fresh replicate is close enough to the best;
        ``RecommendationRule(criterion="loo")`` ranks by the PSIS-LOO elpd of ``loo``
        instead).
    refit_bad_k
        With ``loo="group"``: refit the model without every group that has a Pareto k
        above good_k and replace its PSIS estimate by the exact
        ``log mean_s p(b_G | b_−G, τ_s)`` over the refit's draws (one fit per such group).
    noise
        The estimates' noise, as in :class:`ShrinkageModel` (default ``"auto"``: the
        tree-structured noise of a stage-1 fit). It is chosen once and kept at every depth
        (``"none"`` included), so that every model has the same likelihood of b and the
        elpds are comparable.
    effect_scale
        The units in which the effects are exchangeable, as in :class:`ShrinkageModel`
        (default ``"auto"``: residual-SD units for a stage-1 fit), the same at every depth.
    n_jobs
        Fits run at once, through joblib (:func:`~bayeshier_pymc.parallel.dispatch`): the
        fits at every depth, then the refits of ``refit_bad_k``. ``None`` (default): the
        current ``joblib.parallel_config`` (one at a time unless it says otherwise;
        ``backend="dask"`` runs them on a Dask cluster). In parallel every fit gets one core.
        The numbers are the same wherever the fits run.
    **sample_kwargs
        Passed to :meth:`ShrinkageModel.sample` (``draws``, ``tune``, ``chains``,
        ``random_seed``, ``nuts_sampler``, …). Every fit gets the same ``random_seed`` (a
        generator: one seed drawn per fit, in order). ``progressbar`` (default ``True``)
        shows one progress bar over the fits (they show none of their own), as every
        function that runs many fits does (``docs/parallel.md``).

    Returns
    -------
    DepthComparison

    Examples
    --------
    >>> import bayeshier_pymc as bh
    >>> study = bh.demo_study()
    >>> fit = bh.mlm(study.Y, study.X)
    >>> tree = bh.Hierarchy.from_frame(study.annotations, ["SUB_PATHWAY", "SUPER_PATHWAY"])
    >>> comparison = bh.compare_depths(
    ...     fit, tree, covariates=["age"], sampler="gibbs", draws=500, chains=2,
    ...     random_seed=1, progressbar=False,
    ... )
    >>> sorted(comparison.summary.index)  # every depth, best elpd first in the table
    ['0', '1', '2', 'none']
    >>> comparison.recommended in (0, 1, 2, "none")
    True

    ``print(comparison.verdict)`` explains the choice; ``loo="group"`` asks whether the tree
    predicts a whole unseen group.
    """
    check_loo_kind(loo)
    if refit_bad_k and loo != "group":
        raise ValueError("refit_bad_k needs loo='group'.")

    # the noise structure is chosen once, so that every depth has the same likelihood of b
    data = model_estimates(
        estimates, hierarchy, covariates=covariates, noise=noise, effect_scale=effect_scale
    )
    if refit_bad_k and data.missing.to_numpy().any():
        raise ValueError(
            "refit_bad_k is not available for estimates with missing cells; read the Pareto k "
            "of the group LOO instead."
        )
    resolved = Priors.resolve(priors, scale_levels(hierarchy), data.covariates, data.se.to_numpy())
    if refit_bad_k and resolved.heavy_tailed:
        raise ValueError(
            f"refit_bad_k is not available with group_prior={resolved.group_prior!r} (a refit "
            "keeps τ only, and the held-out group's local scales would need their own draws); "
            "read the Pareto k of the group LOO instead."
        )
    depths = _default_depths(hierarchy) if depths is None else list(depths)
    for depth in depths:  # every argument is checked before the first fit
        resolve_depth(depth, hierarchy)
    check_sampler_name(sampler)
    progress = sample_kwargs.get("progressbar", True)
    options = inner_fit_options({**sample_kwargs, "progressbar": False}, n_jobs)
    seed = sample_kwargs.get("random_seed")  # a generator gives one seed per fit, in order
    seeds = [integer_seed(seed) for _ in depths]
    tasks = [
        (f"the fit at depth {depth}", (data, hierarchy, depth, resolved, sampler, options, s))
        for depth, s in zip(depths, seeds, strict=True)
    ]
    fitted = dispatch(_fit, tasks, n_jobs=n_jobs, progress=progress, total=len(tasks))
    fits = {_key(depth): idata for depth, idata in zip(depths, fitted, strict=True)}
    _check_same_data(fits)
    replicate = _replicate_table(fits)  # before _elpds swaps in the copies for loo="group"
    elpds = _elpds(fits, hierarchy, loo, group_level)
    refits: dict[Depth, list[str]] = {}
    if refit_bad_k:
        bad = {
            depth: _bad_groups(elpds[depth], fits[depth], hierarchy, group_level) for depth in fits
        }
        refit_keys = [(depth, label) for depth, groups in bad.items() for label in groups]
        refit_tasks = [
            (
                f"the refit at depth {depth} without group {label!r}",
                (
                    _restricted(data, bad[depth][label]),
                    hierarchy,
                    depth,
                    resolved,
                    sampler,
                    options,
                    integer_seed(seed),
                ),
            )
            for depth, label in refit_keys
        ]
        refitted = dispatch(
            _fit_scales, refit_tasks, n_jobs=n_jobs, progress=progress, total=len(refit_tasks)
        )
        scales: dict[Depth, dict[str, xr.DataArray]] = {depth: {} for depth in bad}
        for (depth, label), tau in zip(refit_keys, refitted, strict=True):
            scales[depth][label] = tau
        for depth, refitted_tau in scales.items():
            elpds[depth], refits[depth] = _replace_by_refits(
                elpds[depth], fits[depth], hierarchy, group_level, refitted_tau
            )
    return _comparison(fits, elpds, replicate, loo, rule or RecommendationRule(), refits)


def _fit(
    data: Estimates,
    hierarchy: Hierarchy,
    depth: Depth,
    priors: Priors,
    sampler: str,
    options: Mapping[str, Any],
    random_seed: Any,
) -> az.InferenceData:
    """One fit of :func:`compare_depths` (a task of its dispatch), every covariate of ``data``."""
    model = ShrinkageModel(data, hierarchy, depth=depth, priors=priors, covariates="all")
    return model.sample(sampler, **{**options, "random_seed": random_seed})


def _fit_scales(*arguments: Any) -> xr.DataArray:
    """The τ draws of a refit without one group (all the exact refit needs of it)."""
    return _fit(*arguments).posterior["tau"]


def compare_fits(
    fits: Mapping[Depth, az.InferenceData] | Iterable[az.InferenceData],
    hierarchy: Hierarchy | None = None,
    *,
    loo: LooKind = "marginal",
    group_level: str | None = None,
    rule: RecommendationRule | None = None,
) -> DepthComparison:
    """Compare fits of the same estimates at different depths (see :func:`compare_depths`).

    Parameters
    ----------
    fits
        Depth → InferenceData, or InferenceData whose ``attrs["depth"]`` name their depth.
    hierarchy
        The full annotation tree; needed for ``loo="group"``.
    loo, group_level, rule
        As in :func:`compare_depths`.

    Returns
    -------
    DepthComparison
    """
    check_loo_kind(loo)
    fits = _as_mapping(fits)
    _check_same_data(fits)
    replicate = _replicate_table(fits)  # before _elpds swaps in the copies for loo="group"
    return _comparison(
        fits,
        _elpds(fits, hierarchy, loo, group_level),
        replicate,
        loo,
        rule or RecommendationRule(),
    )


def _elpds(
    fits: dict[Depth, az.InferenceData],
    hierarchy: Hierarchy | None,
    loo: LooKind,
    group_level: str | None,
) -> dict[Depth, Any]:
    """PSIS-LOO of every fit; for ``loo="group"`` the fits are replaced by light copies.

    The copies (see :func:`_with_group_log_likelihood`) hold the group log-likelihood; the
    fits given are left as they are.
    """
    if loo == "group":
        if hierarchy is None:
            raise ValueError("loo='group' needs the hierarchy whose groups are left out.")
        for depth, idata in fits.items():
            fits[depth] = _with_group_log_likelihood(idata, hierarchy, group_level)
    return {depth: loo_elpd(idata, loo) for depth, idata in fits.items()}


def _with_group_log_likelihood(
    idata: az.InferenceData, hierarchy: Hierarchy, level: str | None
) -> az.InferenceData:
    """A copy of ``idata`` whose ``log_likelihood`` also holds ``b_group``.

    The copy shares every other group (and the arrays of ``log_likelihood``) with ``idata``,
    which is left unchanged.
    """
    values = group_log_likelihood(idata, hierarchy, level)
    groups = {group: idata[group] for group in idata.groups()}
    log_likelihood = groups.get("log_likelihood", xr.Dataset())
    if OBSERVATION in values.dims:
        # the observed cells and the observed groups are two stackings: b_group alone
        log_likelihood = xr.Dataset()
    groups["log_likelihood"] = log_likelihood.assign({GROUP_LOG_LIKELIHOOD: values})
    return az.InferenceData(attrs=dict(idata.attrs), **groups)


def _comparison(
    fits: dict[Depth, az.InferenceData],
    elpds: dict[Depth, Any],
    replicate: pd.DataFrame,
    loo: LooKind,
    rule: RecommendationRule,
    refits: dict[Depth, list[str]] | None = None,
) -> DepthComparison:
    with warnings.catch_warnings():
        # Pareto k is reported by the comparison itself; ArviZ's own pandas deprecation
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("ignore", message="The inplace keyword")
        table = az.compare({str(depth): elpd for depth, elpd in elpds.items()}, ic="loo")
    return DepthComparison(
        table=table,
        fits=fits,
        elpd=elpds,
        loo=loo,
        pareto_k=pd.DataFrame.from_dict(
            {depth: _pareto_k_counts(elpd) for depth, elpd in elpds.items()}, orient="index"
        ).rename_axis("depth"),
        recommended=rule.choose(replicate if rule.criterion == "replicate" else table),
        rule=rule,
        diagnostics={depth: _diagnose_hyperparameters(idata) for depth, idata in fits.items()},
        descriptions={depth: _describe(depth, fits[depth]) for depth in fits},
        refits=refits or {},
        replicate=replicate,
    )


def _diagnose_hyperparameters(idata: az.InferenceData) -> Diagnosis:
    """Diagnose τ, θ0 and the group means (θ only without pooling; θ | τ is exact there)."""
    names = [name for name in idata.posterior.data_vars if name != "theta"] or ["theta"]
    return diagnose(idata, var_names=names, loo=None)


# ---------------------------------------------------------------------- fresh replicate
def replicate_scores(idata: az.InferenceData) -> xr.Dataset:
    """Per estimate: the elpd of a fresh replicate and the risk of the posterior mean.

    For every observed (covariate, feature) cell, with μ_j and V_j the posterior mean and
    variance of θ_j (from the draws, or a summary fit's ``theta_summary``) and Σ_jj the
    model's noise variance of b_j (s_j² for independent estimates; with tree-structured noise
    the own variance plus the shared ones on the feature's path):

    - ``risk``: r_j = (μ_j − b_j)² + 2 V_j − Σ_jj, Stein's unbiased estimate of (μ_j − θ_j)²
      (Tweedie's formula gives ∂μ/∂b · Σ = Cov(θ | b) for any prior, so the divergence term
      of SURE is the posterior variance);
    - ``elpd_rep``: −½ log 2π(V_j + Σ_jj) − ((μ_j − b_j)² + 2 V_j) / (2 (V_j + Σ_jj)), the
      expected log density of a fresh replicate b*_j ~ N(θ_j, Σ_jj) under the moment-matched
      predictive N(μ_j, V_j + Σ_jj), with Σ_jj + r_j in place of E(b*_j − μ_j)²;
    - ``p_rep``: V_j / (V_j + Σ_jj), what ``elpd_rep`` subtracts from the log density of b_j
      itself under that predictive;
    - ``noise_variance``: Σ_jj (the risk of stage 1's b_j).

    Parameters
    ----------
    idata
        A fit of :meth:`ShrinkageModel.sample` at any depth, with its draws of θ.

    Returns
    -------
    xarray.Dataset
        The four variables, dims ``("covariate", "feature")``, NaN in missing cells.
    """
    problem = problem_from_idata(idata)
    covariates = problem.covariates.to_numpy()
    if is_summary(idata):  # summary storage: θ's mean and sd kept per cell
        cells = (
            idata[THETA_SUMMARY][["mean", "sd"]]
            .sel(covariate=covariates)
            .transpose("covariate", "feature")
        )
        mean, variance = cells["mean"].to_numpy(), cells["sd"].to_numpy() ** 2
    elif "theta" not in idata.posterior:
        raise ValueError("the fresh-replicate scores need the fit's posterior draws of theta.")
    else:
        theta = idata.posterior["theta"].sel(covariate=covariates)
        draws = theta.transpose("chain", "draw", "covariate", "feature").to_numpy()
        draws = draws.reshape(-1, *draws.shape[2:]).astype(float)
        mean = draws.mean(axis=0)
        variance = draws.var(axis=0, ddof=1)
    noise = _noise_variance(problem)
    squared = (mean - problem.b) ** 2
    predictive = variance + noise
    values = {
        "elpd_rep": -0.5 * np.log(2.0 * np.pi * predictive)
        - (squared + 2.0 * variance) / (2.0 * predictive),
        "p_rep": variance / predictive,
        "risk": squared + 2.0 * variance - noise,
        "noise_variance": noise,
    }
    coords = {"covariate": problem.covariates.to_numpy(), "feature": problem.features.to_numpy()}
    return xr.Dataset(
        {
            name: (("covariate", "feature"), np.where(problem.missing, np.nan, value))
            for name, value in values.items()
        },
        coords=coords,
    )


def _noise_variance(problem: ShrinkageProblem) -> np.ndarray:
    """Σ_jj, the model's noise variance of every estimate, (covariate, feature)."""
    if problem.noise is None:
        return problem.se**2
    return path_variance(
        problem.algebra_tree, problem.noise.top, problem.noise.groups, problem.own_variance
    )


def _replicate_table(fits: Mapping[Depth, az.InferenceData]) -> pd.DataFrame:
    """The fresh-replicate comparison of ``fits``: one row per depth, best elpd_rep first.

    ``dse`` is the standard error of the paired difference to the best over the cells,
    ``sqrt(n Var(d_j))``, as :func:`arviz.compare` computes it for LOO.
    """
    scores = {depth: replicate_scores(idata) for depth, idata in fits.items()}
    observed = ~np.isnan(next(iter(scores.values()))["elpd_rep"].to_numpy())
    points = {depth: s["elpd_rep"].to_numpy()[observed] for depth, s in scores.items()}
    totals = {depth: float(values.sum()) for depth, values in points.items()}
    best = max(totals, key=lambda depth: totals[depth])
    rows = {}
    for depth, values in points.items():
        difference = points[best] - values
        ds = scores[depth]
        rows[str(depth)] = {
            "elpd_rep": totals[depth],
            "se": float(np.sqrt(values.size * values.var())),
            "p_rep": float(ds["p_rep"].sum()),
            "elpd_diff": float(difference.sum()),
            "dse": float(np.sqrt(difference.size * difference.var())),
            "relative_mse": float(ds["risk"].sum() / ds["noise_variance"].sum()),
        }
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("depth")
    return table.sort_values("elpd_rep", ascending=False)


# ---------------------------------------------------------------------- leave-one-group-out
def group_log_likelihood(
    idata: az.InferenceData, hierarchy: Hierarchy, level: str | None = None
) -> xr.DataArray:
    """``log p(b_G | b_−G, τ)`` per draw for every group G at ``level``, exactly.

    Given the scales τ the model is Gaussian on the tree. An upward pass collapses the data
    below every unit into a message N(y_u; u, v_u) (with a log normaliser), a downward pass
    gives every unit's "outside" distribution (its prior given all data outside its subtree),
    and the predictive of a held-out group is its message integrated against the
    distribution of its parent without the group. PSIS-LOO over the groups then reweights
    only the draws of τ. For a model that lacks ``level`` (shallower than it) the group is a
    set of units of the model's finest level, held out together; for no pooling it is
    ``Σ_j log N(b_j; mu0, s_j² + s0²)``, the same in every draw.

    Parameters
    ----------
    idata
        A fit of :meth:`ShrinkageModel.sample` at any depth.
    hierarchy
        The full annotation tree (it may annotate more features than the fit has).
    level
        The level whose groups are left out (default: the finest annotation level);
        ``"feature"`` leaves single metabolites out (a Rao–Blackwellised marginal LOO).

    Returns
    -------
    xarray.DataArray
        Dims ``("chain", "draw", "covariate", level)``; with missing cells ``("chain",
        "draw", "observation")`` over the (covariate, group) pairs with an observed estimate
        (coordinates ``covariate`` and ``level``), each the predictive of the group's observed
        estimates.
    """
    problem = problem_from_idata(idata)
    full, target = _group_target(problem, hierarchy, level)
    local = local_variance_draws(local_scale_draws(idata.posterior, problem), problem)
    values = _held_out_values(
        problem, full, target, idata.posterior.get("tau"), _n_draws(idata), local
    )
    level = "feature" if target == 0 else full.levels[target - 1]
    labels = np.asarray(full.features if target == 0 else full.groups[target - 1])
    draws = {
        "chain": idata.posterior["chain"].to_numpy(),
        "draw": idata.posterior["draw"].to_numpy(),
    }
    if not problem.has_missing:
        return xr.DataArray(
            values,
            dims=("chain", "draw", "covariate", level),
            coords={**draws, "covariate": problem.covariates.to_numpy(), level: labels},
            name=GROUP_LOG_LIKELIHOOD,
        )
    # a group with no observed estimate is no data point: only the others, along observation
    to_group = _unit_to_group(full, 0, target)
    observed = np.stack(
        [np.bincount(to_group, weights=row, minlength=len(labels)) for row in ~problem.missing]
    )
    rows, groups = np.nonzero(observed > 0)
    return xr.DataArray(
        values[..., rows, groups],
        dims=("chain", "draw", OBSERVATION),
        coords={
            **draws,
            "covariate": ((OBSERVATION,), problem.covariates.to_numpy()[rows]),
            level: ((OBSERVATION,), labels[groups]),
        },
        name=GROUP_LOG_LIKELIHOOD,
    )


def _n_draws(idata: az.InferenceData) -> tuple[int, int]:
    """Numbers of chains and draws of a fit."""
    return idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]


def _group_target(
    problem: ShrinkageProblem, hierarchy: Hierarchy, level: str | None
) -> tuple[Hierarchy, int]:
    """The tree aligned with the fit's features and the position of ``level`` (0 = feature)."""
    full = hierarchy.align(problem.features)
    level = full.levels[0] if level is None else level
    if level != "feature" and level not in full.levels:
        raise ValueError(f"unknown level {level!r}; the hierarchy has {list(full.levels)!r}.")
    _check_fit_matches(problem, full)
    return full, 0 if level == "feature" else full.levels.index(level) + 1


def _held_out_values(
    problem: ShrinkageProblem,
    full: Hierarchy,
    target: int,
    tau: xr.DataArray | None,
    n_draws: tuple[int, int],
    local: tuple[np.ndarray, ...] | None = None,
) -> np.ndarray:
    """Log p(b_G | b_−G, τ) as (chain, draw, covariate, group) for the draws ``tau``.

    Without pooling (or without ``tau``) the value is the same in each of the ``n_draws``
    (chains, draws). With correlated estimates the algebra runs on the noise tree, so the
    held-out groups' noise shared with the rest is accounted for. ``local``: under a
    heavy-tailed group prior, the draws of the groups' local variances λ² that go with
    ``tau`` (:func:`~bayeshier_pymc.inference_data.local_variance_draws`).
    """
    pooled = problem.pooled and tau is not None
    if not pooled and not problem.correlated:
        to_group = _unit_to_group(full, 0, target)
        per_group = _no_pooling_group_log_lik(
            problem.algebra_b, problem.var_b, problem.missing, to_group, problem.priors
        )
        return np.broadcast_to(per_group, (*n_draws, *per_group.shape)).copy()
    tau_values = None
    if pooled:
        tau_values = tau.sel(covariate=problem.covariates.to_numpy())  # type: ignore[union-attr]
        tau_values = tau_values.transpose("chain", "draw", "covariate", "level").to_numpy()
    unit_level = min(target, problem.index.depth)
    return held_out_predictive(
        problem,
        tau_values,
        unit_level,
        _unit_to_group(full, unit_level, target),
        lead=n_draws,
        local=local,
    )


def _no_pooling_group_log_lik(
    b: np.ndarray, var_b: np.ndarray, missing: np.ndarray, to_group: np.ndarray, priors: Priors
) -> np.ndarray:
    """Σ over each group's observed features of log N(b_j; mu0, s_j² + s0²), (covariate, group)."""
    per_feature = normal_log_density(b - priors.mu0[:, None], var_b + priors.s0[:, None] ** 2)
    if missing.any():
        per_feature = np.where(missing, 0.0, per_feature)
    return NUMPY_OPS.segment_sum(per_feature, to_group, int(to_group.max()) + 1)


def _bad_groups(
    elpd: Any, idata: az.InferenceData, hierarchy: Hierarchy, level: str | None
) -> dict[str, pd.Index]:
    """Every group with a Pareto k above good_k (any covariate) → the features without it."""
    problem = problem_from_idata(idata)
    full, target = _group_target(problem, hierarchy, level)
    k = np.array(elpd["pareto_k"])
    bad_groups = np.flatnonzero((k > elpd["good_k"]).any(axis=0))
    members = np.arange(full.n_features) if target == 0 else full.membership(target - 1)
    labels = full.features if target == 0 else full.groups[target - 1]
    return {str(labels[group]): full.features[members != group] for group in bad_groups}


def _replace_by_refits(
    elpd: Any,
    idata: az.InferenceData,
    hierarchy: Hierarchy,
    level: str | None,
    refitted_tau: Mapping[str, xr.DataArray],
) -> tuple[Any, list[str]]:
    """Replace the PSIS estimate of every refitted group by the exact one.

    For a group G, ``log p(b_G | b_−G) = log mean_s p(b_G | b_−G, τ_s)`` with τ_s drawn from
    the fit without G (``refitted_tau``, group label → τ draws); every covariate of G is
    replaced. Returns the new ELPDData and the labels of the refitted groups.
    """
    if not refitted_tau:
        return elpd, []
    problem = problem_from_idata(idata)
    full, target = _group_target(problem, hierarchy, level)
    labels = [str(label) for label in (full.features if target == 0 else full.groups[target - 1])]
    k = np.array(elpd["pareto_k"])
    loo_i = np.array(elpd["loo_i"])
    for label, tau in refitted_tau.items():
        group = labels.index(label)
        values = _held_out_values(problem, full, target, tau, _n_draws(idata))[..., group]
        draws = values.reshape(-1, values.shape[-1])
        loo_i[:, group] = logsumexp(draws, axis=0) - np.log(draws.shape[0])
        k[:, group] = np.nan
    return _with_points(elpd, loo_i, k), list(refitted_tau)


def _with_points(elpd: Any, loo_i: np.ndarray, k: np.ndarray) -> Any:
    """An ELPDData with new pointwise values, its totals and standard error recomputed."""
    updated = elpd.copy()
    lppd = elpd["elpd_loo"] + elpd["p_loo"]
    updated["loo_i"] = elpd["loo_i"].copy(data=loo_i)
    updated["pareto_k"] = elpd["pareto_k"].copy(data=k)
    updated["elpd_loo"] = float(loo_i.sum())
    updated["se"] = float(np.sqrt(loo_i.size * loo_i.var()))
    updated["p_loo"] = float(lppd - loo_i.sum())
    updated["warning"] = bool((k > elpd["good_k"]).any())
    return updated


def _restricted(estimates: Estimates, features: pd.Index) -> Estimates:
    """``estimates`` restricted to ``features``, with their noise structure."""
    noise = estimates.noise.align(features) if estimates.noise is not None else None
    sd = estimates.residual_sd
    return Estimates(
        estimates.estimate.sel(feature=features),
        estimates.se.sel(feature=features),
        noise,
        None if sd is None else sd.sel(feature=features),
    )


def _unit_to_group(full: Hierarchy, unit_level: int, target: int) -> np.ndarray:
    """Map the units of ``unit_level`` (0 = features) to their groups at level ``target``."""
    codes = np.arange(full.n_features if unit_level == 0 else full.n_groups[unit_level - 1])
    for parent in full.parents[unit_level:target]:
        codes = parent[codes]
    return codes


# ---------------------------------------------------------------------- helpers
def _default_depths(hierarchy: Hierarchy) -> list[Depth]:
    return ["none", *range(hierarchy.depth + 1)]


def _key(label: object) -> Depth:
    """The depth of a table index label (``"none"`` or an integer)."""
    return "none" if str(label) == "none" else int(str(label))


def _rank(depth: Depth) -> int:
    """Simplicity order: no pooling, then 0, 1, … levels."""
    return -1 if depth == "none" else int(depth)


def _as_mapping(
    fits: Mapping[Depth, az.InferenceData] | Iterable[az.InferenceData],
) -> dict[Depth, az.InferenceData]:
    pairs = (
        [(_key(depth), idata) for depth, idata in fits.items()]
        if isinstance(fits, Mapping)
        else [(_key(problem_from_idata(idata).depth), idata) for idata in fits]
    )
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise ValueError("two fits have the same depth.")
    if len(mapping) < 2:
        raise ValueError(f"a comparison needs at least two fits, got {len(mapping)}.")
    return mapping


def _check_same_data(fits: Mapping[Depth, az.InferenceData]) -> None:
    """LOO elpds are comparable only on the same estimates with the same noise."""
    reference = None
    for depth, idata in fits.items():
        b, kind, variances = _likelihood_data(problem_from_idata(idata))
        if reference is None:
            reference = b, kind, variances
            continue
        if not np.array_equal(b, reference[0], equal_nan=True):
            raise ValueError(f"the fit at depth {depth} was made on other estimates.")
        same_noise = (
            kind == reference[1]
            and len(variances) == len(reference[2])
            and all(
                np.array_equal(a, r, equal_nan=True)
                for a, r in zip(variances, reference[2], strict=True)
            )
        )
        if not same_noise:
            raise ValueError(
                f"the fit at depth {depth} has another noise model of the estimates ({kind} "
                f"noise, against {reference[1]}): its elpd is not comparable; fit every depth "
                "with the same noise= (compare_depths does)."
            )


def _likelihood_data(problem: ShrinkageProblem) -> tuple[np.ndarray, str, tuple[np.ndarray, ...]]:
    """The estimates, the kind of noise and its variances: what the likelihood of b uses."""
    own = np.where(problem.missing, np.nan, problem.var_b)  # filled cells: no data
    if problem.noise is None:
        return problem.b, "independent", (own,)
    variances = (own, np.asarray(problem.noise.top), *problem.noise.groups)
    return problem.b, "tree", tuple(np.asarray(v) for v in variances)


def _check_fit_matches(problem: ShrinkageProblem, full: Hierarchy) -> None:
    """The fit's tree (its noise tree, for correlated estimates) must be the hierarchy's top.

    For correlated estimates only the levels the hierarchy has are compared.
    """
    if not problem.pooled and not problem.correlated:
        return
    tree = problem.algebra_tree
    n_levels = min(tree.depth, full.depth) if problem.correlated else tree.depth
    levels = list(tree.levels[:n_levels])
    kind = "noise structure" if problem.correlated else "fit"
    if levels != list(full.levels[:n_levels]):
        raise ValueError(
            f"the {kind} uses levels {levels!r}, not the first {n_levels} of the hierarchy "
            f"{list(full.levels)!r}."
        )
    for index, level in enumerate(levels):
        if not np.array_equal(tree.parents[index], full.parents[index]):
            raise ValueError(f"the {kind}'s {level!r} groups differ from the hierarchy's.")


def _pareto_k_counts(elpd: Any) -> dict[str, float]:
    k = np.asarray(elpd["pareto_k"]).ravel()
    good_k = float(elpd["good_k"])
    estimated = k[~np.isnan(k)]
    return {
        "n_points": k.size,
        "n_exact": int(np.isnan(k).sum()),
        "good_k": round(good_k, 3),
        "n_good": int((estimated <= good_k).sum()),
        "n_bad": int(((estimated > good_k) & (estimated <= VERY_BAD_K)).sum()),
        "n_very_bad": int((estimated > VERY_BAD_K).sum()),
        "max_k": float(estimated.max()) if estimated.size else np.nan,
    }


def _describe(depth: Depth, idata: az.InferenceData) -> str:
    if depth == "none":
        return "no pooling"
    if depth == 0:
        return "global mean"
    return " within ".join(problem_from_idata(idata).levels)
