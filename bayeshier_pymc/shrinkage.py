"""``ShrinkageModel``: stage-1 estimates + annotation tree + priors → posterior draws."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from bayeshier_pymc._interrupt import stops_on_ctrl_c
from bayeshier_pymc.estimates import Estimates, shrunk_covariates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import problem_from_idata
from bayeshier_pymc.mlm import EffectScaleChoice, MLMFit, resolve_effect_scale
from bayeshier_pymc.model import Parameterization, build_model, scale_levels
from bayeshier_pymc.noise import TreeNoise, tree_noise
from bayeshier_pymc.prediction import predict_new
from bayeshier_pymc.predictive import prior_predictive
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.sampling import DEFAULT_NUTS_SAMPLER, NutsSampler, draw_given_scales, sample

__all__ = ["NOISE_CHOICES", "ShrinkageModel", "model_estimates", "with_noise"]

NoiseChoice = Literal["auto", "tree", "independent"] | TreeNoise
NOISE_CHOICES = ("auto", "tree", "independent")


def with_noise(
    estimates: Estimates, source: Any, hierarchy: Hierarchy | None, noise: NoiseChoice
) -> Estimates:
    """``estimates`` with the noise structure chosen by ``noise`` (see :class:`ShrinkageModel`).

    ``source`` is what the user passed (a stage-1 fit can give its residuals' noise).
    """
    if isinstance(noise, TreeNoise):
        return Estimates.from_any(estimates, noise=noise)
    if not isinstance(noise, str) or noise not in NOISE_CHOICES:
        raise ValueError(f"noise must be one of {NOISE_CHOICES!r} or a TreeNoise, got {noise!r}.")
    if noise == "independent":
        return replace(estimates, noise=None)
    if estimates.noise is not None:
        return estimates
    if isinstance(source, MLMFit) and source.Z is None:
        # without a tree the noise shared by all features still aliases with θ0
        tree = hierarchy if hierarchy is not None else Hierarchy.flat(source.Y.columns)
        return Estimates.from_any(estimates, noise=tree_noise(source, tree))
    if noise == "tree":
        raise ValueError(
            "noise='tree' needs a noise structure: pass a stage-1 fit (MLMFit without a "
            "feature design) and a hierarchy, or estimates carrying one "
            "(Estimates.from_any(..., noise=tree_noise(fit, hierarchy)))."
        )
    return estimates


def model_estimates(
    estimates: Any,
    hierarchy: Hierarchy | None,
    *,
    covariates: list[Any] | Literal["all"] | None,
    noise: NoiseChoice,
    effect_scale: EffectScaleChoice,
) -> Estimates:
    """The estimates a model of the user's ``estimates`` runs on (see :class:`ShrinkageModel`).

    The covariates to shrink, in the units ``effect_scale`` chooses
    (:func:`~bayeshier_pymc.mlm.resolve_effect_scale`: a stage-1 fit's standardized fit in
    residual-SD units), with the noise ``noise`` chooses (:func:`with_noise`, estimated from the
    fit in those units). A given :class:`~bayeshier_pymc.noise.TreeNoise` is in the units of
    the estimates it came with, so ``"auto"`` then keeps those units.
    """
    scale = resolve_effect_scale(effect_scale, estimates)
    if isinstance(noise, TreeNoise) and scale == "residual_sd":
        if effect_scale != "auto":
            raise ValueError(
                "a TreeNoise is in the units of the fit it was estimated from, so it cannot be "
                "used with effect_scale='residual_sd'; estimate it from the standardized fit "
                "(tree_noise(fit.standardized(), hierarchy)) and pass that fit with "
                "effect_scale='raw', or drop the TreeNoise."
            )
        scale = "raw"  # the given noise describes the estimates in their own units
    source = estimates.standardized() if scale == "residual_sd" else estimates
    given = Estimates.from_any(source)
    if scale == "residual_sd":
        given = replace(given, residual_sd=estimates.residual_sd.sel(feature=given.features))
    chosen = Estimates.from_any(given, covariates=shrunk_covariates(given.covariates, covariates))
    return with_noise(chosen, source, hierarchy, noise)


class ShrinkageModel:
    """Hierarchical shrinkage of stage-1 estimates along an annotation tree.

    Parameters
    ----------
    estimates
        A stage-1 fit (:class:`~bayeshier_pymc.mlm.MLMFit`), a tidy frame (covariate,
        feature, estimate, se), a pair ``(b, se)`` of arrays, or
        :class:`~bayeshier_pymc.estimates.Estimates`.
    hierarchy
        The annotation tree. Annotated features that were not estimated are dropped;
        estimated features without an annotation are an error. ``None``: every θ_j shrinks
        to one global mean (depth 0).
    depth
        Number of annotation levels used, finest first (0 = one global mean); ``"none"``
        for no pooling (each θ_j has the fixed prior N(mu0, s0²)); default: all levels.
    priors
        θ0_k ~ N(mu0_k, s0_k²) and τ_kl ~ HalfCauchy(tau_scale_kl) for each covariate k and
        scale level l. Default (``None`` or ``"auto"``), invariant to the units of X and Y:
        with s̄_k covariate k's median standard error, mu0_k = 0, s0_k = 10 s̄_k and
        tau_scale_kl = s̄_k. ``"research"``: the research code's fixed mu0 = 0, s0 = 1,
        tau_scale = 1. A mapping overrides any of ``mu0``, ``s0``, ``tau_scale`` (in the
        units of ``effect_scale``) over the preset named by ``"preset"`` (default ``"auto"``); see
        :meth:`~bayeshier_pymc.priors.Priors.resolve` for the accepted forms, and
        :attr:`priors` for the resolved table.
    covariates
        The covariates to shrink. Default: every covariate but the intercept
        (``"(Intercept)"`` or ``"Intercept"``), as ``bayeshier fit`` does; ``"all"``: every
        covariate, the intercept included; or a list of labels (name the intercept to
        shrink it).
    noise
        The stage-1 errors' correlation. ``"auto"`` (default): the noise structure the
        estimates carry, or, for a stage-1 fit without a feature design, tree-structured noise
        estimated from its residuals (:func:`~bayeshier_pymc.noise.tree_noise`; without a
        ``hierarchy``, the noise shared by all features); otherwise independent errors (a
        tidy frame or arrays carry no correlation). ``"tree"``: like ``"auto"`` but an error
        where no noise structure can be had. ``"independent"``: b_j ~ N(θ_j, se_j²)
        independently, the research model (ignores any correlation). A
        :class:`~bayeshier_pymc.noise.TreeNoise`: that structure.
    effect_scale
        The units in which the effects are exchangeable within the tree. ``"auto"``
        (default): ``"residual_sd"`` for a stage-1 fit without a feature design (unless
        ``noise`` is a given :class:`~bayeshier_pymc.noise.TreeNoise`, which is in the fit's
        units), ``"raw"`` otherwise. ``"residual_sd"``: the standardized effects θ_kj / σ_j,
        with σ_j each feature's residual SD (the model of
        :meth:`MLMFit.standardized() <bayeshier_pymc.mlm.MLMFit.standardized>`; ashr's
        "exchangeable z-scores"), so that a metabolite with a larger residual variance may
        have a larger effect in Y's units; measured on real data, only these units give
        calibrated intervals and lfsr (``docs/calibration.md``, "Effects in units of each
        metabolite's residual SD"). The fit (the estimates, θ, group means, scales and priors)
        is then in residual-SD units, with σ_j in ``constant_data["residual_sd"]``; the
        results (:func:`~bayeshier_pymc.coefficient_table`,
        :func:`~bayeshier_pymc.coefficient_summary`, the figures of θ) are in Y's units.
        ``"raw"``: the effects are exchangeable in the units of the estimates given.

    Notes
    -----
    The m estimates of one covariate share their samples, so their errors are correlated
    (``Cov = c_kk Σ``); a model that treats them as independent reads shared noise as group
    effects and is overconfident (see ``docs/calibration.md``). Each covariate's estimates are
    modelled with their own marginal covariance; that is valid whatever the correlation
    between covariates.

    Examples
    --------
    >>> import bayeshier_pymc as bh
    >>> study = bh.demo_study()
    >>> fit = bh.mlm(study.Y, study.X)
    >>> tree = bh.Hierarchy.from_frame(study.annotations, ["SUB_PATHWAY", "SUPER_PATHWAY"])
    >>> model = bh.ShrinkageModel(fit, tree, covariates=["age", "bmi", "sex"])
    >>> model  # doctest: +NORMALIZE_WHITESPACE, +ELLIPSIS
    ShrinkageModel(3 covariates × 300 features; depth=2; Hierarchy(300 features;
    SUB_PATHWAY: 12, SUPER_PATHWAY: 4); correlated noise; residual-SD units)
    covariates: age, bmi, sex
    Priors: θ0 ~ N(mu0, s0²), τ ~ HalfCauchy(tau_scale) per covariate and level; ...
    >>> bh.ShrinkageModel(fit, tree, covariates=["age"], depth=1).depth
    1
    """

    def __init__(
        self,
        estimates: Any,
        hierarchy: Hierarchy | None = None,
        *,
        depth: int | Literal["none"] | None = None,
        priors: str | Mapping[str, Any] | Priors | None = None,
        covariates: list[Any] | Literal["all"] | None = None,
        noise: NoiseChoice = "auto",
        effect_scale: EffectScaleChoice = "auto",
    ) -> None:
        chosen = model_estimates(
            estimates, hierarchy, covariates=covariates, noise=noise, effect_scale=effect_scale
        )
        self.problem = ShrinkageProblem.build(chosen, hierarchy, depth, priors)

    @classmethod
    def from_problem(cls, problem: ShrinkageProblem) -> ShrinkageModel:
        """The model of an already built :class:`~bayeshier_pymc.problem.ShrinkageProblem`."""
        if not isinstance(problem, ShrinkageProblem):
            raise ValueError(f"problem must be a ShrinkageProblem, got {type(problem).__name__}.")
        model = cls.__new__(cls)
        model.problem = problem
        return model

    @classmethod
    def from_idata(cls, idata: az.InferenceData) -> ShrinkageModel:
        """The model a fit was sampled from, ready to sample again.

        Parameters
        ----------
        idata
            A result of :meth:`sample` (or one loaded by
            :func:`~bayeshier_pymc.persistence.load_results`).

        Returns
        -------
        ShrinkageModel
            With the fit's estimates, tree (truncated to its depth) and priors: sampling it
            with the same settings and seed gives the same draws as the fit.
        """
        return cls.from_problem(problem_from_idata(idata))

    @property
    def estimates(self) -> Estimates:
        """The stage-1 estimates."""
        return self.problem.estimates

    @property
    def tree(self) -> Hierarchy | None:
        """The annotation tree, truncated to the depth used; ``None`` for no pooling."""
        return self.problem.tree

    @property
    def depth(self) -> int | str:
        """The number of annotation levels used, or ``"none"``."""
        return self.problem.depth

    @property
    def priors(self) -> Priors:
        """The resolved priors; printed, a table (covariate × parameter), ``.to_frame()``."""
        return self.problem.priors

    @property
    def pooled(self) -> bool:
        """Whether the model pools features (False for ``depth="none"``)."""
        return self.problem.pooled

    @property
    def noise_description(self) -> str:
        """One line naming the likelihood of the estimates (independent or correlated)."""
        if not self.problem.correlated:
            return "independent (b_j ~ N(θ_j, se_j²))"
        tree = self.problem.noise_tree
        levels = ", ".join(tree.levels) if tree is not None and tree.levels else "all features"
        return f"correlated, tree-structured noise shared within {levels} and by all"

    def build(self, parameterization: Parameterization = "collapsed") -> pm.Model:
        """The PyMC model (see :func:`bayeshier_pymc.model.build_model`)."""
        return build_model(
            self.estimates, self.tree, self.priors, parameterization, self.problem.noise_model
        )

    @stops_on_ctrl_c
    def sample(
        self,
        sampler: str = "nuts",
        *,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        cores: int | None = None,
        random_seed: int | np.random.Generator | None = None,
        nuts_sampler: NutsSampler = DEFAULT_NUTS_SAMPLER,
        parameterization: Parameterization = "collapsed",
        target_accept: float = 0.9,
        progressbar: bool = True,
        **sampler_kwargs: Any,
    ) -> az.InferenceData:
        """Draw from the posterior.

        Parameters
        ----------
        sampler
            ``"nuts"`` or ``"gibbs"`` (:func:`bayeshier_pymc.sampling.sample_gibbs`: the
            vectorised Gibbs engine; ``nuts_sampler``, ``parameterization`` and
            ``target_accept`` do not apply, ``**sampler_kwargs`` go to ``sample_gibbs``);
            see :data:`bayeshier_pymc.sampling.SAMPLERS`.
        draws, tune, chains
            Kept draws and tuning steps per chain, and the number of chains.
        cores
            Processes for PyMC's own sampler (default: ``min(chains, CPUs)``; PyMC's own
            guess is half the CPUs, which ran chains one after another on 2 cores).
        random_seed
            An integer in [0, 2**63) or a :class:`numpy.random.Generator` (one seed is drawn
            from it); the same seed gives the same draws.
        nuts_sampler
            ``"nutpie"`` (default: fastest measured here, compilation included,
            ``benchmarks/bench_nuts.py``; its log density and gradient compiled by numba unless
            ``nuts_sampler_kwargs`` names nutpie's ``backend``), ``"numpyro"`` or ``"pymc"``.
        parameterization
            ``"collapsed"`` (default) or a full-model choice; see :mod:`bayeshier_pymc.model`.
        target_accept
            NUTS target acceptance rate.
        progressbar
            Show progress.
        **sampler_kwargs
            Passed to :func:`pymc.sample` (NUTS) or to ``sample_gibbs``.

        Returns
        -------
        arviz.InferenceData
            The layout of :func:`bayeshier_pymc.inference_data.build_inference_data`.

        Raises
        ------
        ValueError
            For a bad argument, before any compilation or tuning.
        KeyboardInterrupt
            On Ctrl-C, within about a second whatever the phase; nothing is left running.

        Examples
        --------
        >>> import bayeshier_pymc as bh
        >>> study = bh.demo_study()
        >>> tree = bh.Hierarchy.from_frame(study.annotations, ["SUB_PATHWAY", "SUPER_PATHWAY"])
        >>> model = bh.ShrinkageModel(bh.mlm(study.Y, study.X), tree, covariates=["age", "sex"])
        >>> idata = model.sample("gibbs", draws=500, chains=2, random_seed=1, progressbar=False)
        >>> dict(idata.posterior["theta"].sizes)
        {'chain': 2, 'draw': 500, 'covariate': 2, 'feature': 300}
        >>> idata.posterior["tau"].coords["level"].values.tolist()
        ['feature', 'SUB_PATHWAY', 'SUPER_PATHWAY']

        ``model.sample()`` runs NUTS with the defaults above (4 chains × 1000 draws).
        """
        options = dict(sampler_kwargs)
        if sampler == "nuts":
            options.update(
                nuts_sampler=nuts_sampler,
                parameterization=parameterization,
                target_accept=target_accept,
            )
        return sample(
            self.problem,
            sampler,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=cores,
            random_seed=random_seed,
            progressbar=progressbar,
            **options,
        )

    def sample_prior_predictive(
        self, draws: int = 500, *, random_seed: int | None = None
    ) -> az.InferenceData:
        """Parameters from the prior and replicated estimates given them.

        See :func:`bayeshier_pymc.predictive.prior_predictive`; ``az.plot_ppc(result,
        group="prior")`` compares them with the estimates.
        """
        return prior_predictive(self.problem, draws, np.random.default_rng(random_seed))

    def draw_given_scales(
        self,
        tau: np.ndarray,
        rng: np.random.Generator,
        local_scales: Sequence[np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Exact draws of θ0, the group means and θ given scale draws ``tau``.

        ``tau`` is (chain, draw, covariate, level) and, under a heavy-tailed group prior,
        ``local_scales`` the local scales λ of every annotation level (chain, draw,
        covariate, group); see :func:`bayeshier_pymc.sampling.draw_given_scales`.
        """
        return draw_given_scales(self.problem, tau, rng, local_scales)

    def predict_new(
        self,
        idata: az.InferenceData,
        annotations: pd.DataFrame,
        *,
        residual_sd: pd.Series | None = None,
        random_seed: int | None = None,
    ) -> az.InferenceData:
        """Posterior draws of θ for features this model did not estimate, from its fit ``idata``.

        See :func:`bayeshier_pymc.prediction.predict_new`.
        """
        fitted = problem_from_idata(idata)
        if not fitted.features.equals(self.problem.features) or fitted.depth != self.depth:
            raise ValueError("idata is not a fit of this model (other features or depth).")
        return predict_new(idata, annotations, residual_sd=residual_sd, random_seed=random_seed)

    @property
    def summary_line(self) -> str:
        """The model in one line: covariates × features, depth, tree and noise model."""
        p, m = self.estimates.estimate.shape
        tree = repr(self.tree) if self.pooled else "no pooling"
        noise = "correlated noise" if self.problem.correlated else "independent noise"
        units = "" if self.problem.residual_sd is None else "; residual-SD units"
        return (
            f"ShrinkageModel({p} covariates × {m} features; depth={self.depth}; {tree}; "
            f"{noise}{units})"
        )

    def __repr__(self) -> str:
        covariates = ", ".join(map(str, self.estimates.covariates))
        return f"{self.summary_line}\ncovariates: {covariates}\n{self.priors!r}"

    def describe(self) -> pd.DataFrame:
        """One row per scale level: number of units, units per parent group, and the prior."""
        if self.tree is None:
            n_features = self.estimates.estimate.sizes["feature"]
            return pd.DataFrame(
                {"n_units": [n_features], "prior": [_normal(self.priors.mu0, self.priors.s0)]},
                index=pd.Index(["feature"], name="level"),
            )
        per_parent = [
            np.bincount(self.tree.parents[level]) if level < self.tree.depth else None
            for level in range(self.tree.depth + 1)
        ]
        n_units = [self.tree.n_features, *self.tree.n_groups]
        return pd.DataFrame(
            {
                "n_units": n_units,
                "units_per_parent": [
                    f"{c.min()}–{c.max()}" if c is not None else str(n)
                    for c, n in zip(per_parent, n_units, strict=True)
                ],
                "tau_prior": [_half_cauchy(scales) for scales in self.priors.tau_scale.T],
            },
            index=pd.Index(scale_levels(self.tree), name="level"),
        )

    def _repr_html_(self) -> str:
        first = html.escape(repr(self).split("\n", 1)[0])
        return f"<div><p>{first}</p>{self.describe().to_html()}{self.priors._repr_html_()}</div>"


def _normal(mu0: np.ndarray, s0: np.ndarray) -> str:
    """Each θ_j's prior without pooling: one N(mu0, s0²), or one per covariate."""
    if np.all(mu0 == mu0[0]) and np.all(s0 == s0[0]):
        return f"N({mu0[0]:.3g}, {s0[0]:.3g}²)"
    return ", ".join(f"N({m:.3g}, {s:.3g}²)" for m, s in zip(mu0, s0, strict=True)) + (
        " by covariate"
    )


def _half_cauchy(scales: np.ndarray) -> str:
    """The τ prior of one level: one scale, or one per covariate."""
    if np.all(scales == scales[0]):
        return f"HalfCauchy({scales[0]:.3g})"
    return "HalfCauchy(" + ", ".join(f"{a:.3g}" for a in scales) + ") by covariate"
