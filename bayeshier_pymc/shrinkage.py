"""``ShrinkageModel``: stage-1 estimates + annotation tree + priors → posterior draws."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping
from typing import Any, Literal

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm

from bayeshier_pymc._convergence import warn_if_not_converged
from bayeshier_pymc._interrupt import numpyro_steps_from_python, stops_on_ctrl_c
from bayeshier_pymc._validation import check_sampler_arguments
from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.gaussian_tree import TreeIndex, draw_tree, upward_pass
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import build_inference_data, posterior_dims
from bayeshier_pymc.model import Parameterization, build_model, group_mean_name, scale_levels
from bayeshier_pymc.priors import Priors

__all__ = ["DEFAULT_NUTS_SAMPLER", "ShrinkageModel"]

NutsSampler = Literal["pymc", "nutpie", "numpyro"]
DEFAULT_NUTS_SAMPLER: NutsSampler = "numpyro"
"""Fastest NUTS backend measured on the research simulation (``benchmarks/bench_nuts.py``)."""


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
        ``{"mu0": 0.0, "s0": 1.0, "tau_scale": 1.0}`` by default; ``tau_scale`` may be one
        number, one per scale level, or a mapping from level name to scale.
    covariates
        Shrink only these covariates (default: all).
    """

    def __init__(
        self,
        estimates: Any,
        hierarchy: Hierarchy | None = None,
        *,
        depth: int | Literal["none"] | None = None,
        priors: Mapping[str, Any] | None = None,
        covariates: list[Any] | None = None,
    ) -> None:
        self.estimates = Estimates.from_any(estimates, covariates=covariates)
        if hierarchy is not None and not isinstance(hierarchy, Hierarchy):
            raise ValueError(
                "hierarchy must be a Hierarchy (see Hierarchy.from_frame), got "
                f"{type(hierarchy).__name__}."
            )
        self.depth: int | str = _resolve_depth(depth, hierarchy)
        self.tree: Hierarchy | None
        if self.depth == "none":
            self.tree = None
            levels: tuple[str, ...] = ("feature",)
        else:
            full = hierarchy if hierarchy is not None else _flat(self.estimates.features)
            self.tree = full.align(self.estimates.features).truncate(int(self.depth))
            levels = scale_levels(self.tree)
        self.priors = Priors.resolve(priors, levels)

    @property
    def pooled(self) -> bool:
        """Whether the model pools features (False for ``depth="none"``)."""
        return self.tree is not None

    def build(self, parameterization: Parameterization = "collapsed") -> pm.Model:
        """The PyMC model (see :func:`bayeshier_pymc.model.build_model`)."""
        return build_model(self.estimates, self.tree, self.priors, parameterization)

    @stops_on_ctrl_c
    def sample(
        self,
        sampler: Literal["nuts", "gibbs"] = "nuts",
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
            ``"nuts"`` or ``"gibbs"`` (:func:`bayeshier_pymc.gibbs.sample_gibbs`: the
            vectorised Gibbs engine; ``nuts_sampler``, ``parameterization`` and
            ``target_accept`` do not apply, ``**sampler_kwargs`` go to ``sample_gibbs``).
        draws, tune, chains
            Kept draws and tuning steps per chain, and the number of chains.
        cores
            Processes for PyMC's own sampler (default: ``min(chains, CPUs)``; PyMC's own
            guess is half the CPUs, which ran chains one after another on 2 cores).
        random_seed
            An integer in [0, 2**63) or a :class:`numpy.random.Generator` (one seed is drawn
            from it); the same seed gives the same draws.
        nuts_sampler
            ``"numpyro"`` (default: fastest measured here, ``benchmarks/bench_nuts.py``),
            ``"nutpie"`` or ``"pymc"``.
        parameterization
            ``"collapsed"`` (default) or a full-model choice; see :mod:`bayeshier_pymc.model`.
        target_accept
            NUTS target acceptance rate.
        progressbar
            Show progress.
        **sampler_kwargs
            Passed to :func:`pymc.sample`.

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
        """
        draws, tune, chains, cores, random_seed = check_sampler_arguments(
            draws=draws, tune=tune, chains=chains, cores=cores, random_seed=random_seed
        )
        if sampler == "gibbs":
            from bayeshier_pymc.gibbs import sample_gibbs

            idata = sample_gibbs(
                self,
                draws=draws,
                tune=tune,
                chains=chains,
                cores=cores,
                random_seed=random_seed,
                progressbar=progressbar,
                **sampler_kwargs,
            )
            warn_if_not_converged(idata)
            return idata
        if sampler != "nuts":
            raise ValueError(f"unknown sampler {sampler!r}; use 'nuts' or 'gibbs'.")
        if nuts_sampler not in ("pymc", "nutpie", "numpyro"):
            raise ValueError(
                f"unknown nuts_sampler {nuts_sampler!r}; use 'pymc', 'nutpie' or 'numpyro'."
            )
        if nuts_sampler == "numpyro":
            # one JAX CPU device runs "parallel" chains one after another; vectorised chains
            # were 1.6x faster on the research simulation (2 cores)
            numpyro_options = {"chain_method": "vectorized"}
            numpyro_options.update(sampler_kwargs.pop("nuts_sampler_kwargs", {}))
            sampler_kwargs["nuts_sampler_kwargs"] = numpyro_options
        collapsed = self.pooled and parameterization == "collapsed"
        model = self.build(parameterization if self.pooled else "collapsed")
        seed_sequence = np.random.SeedSequence(random_seed)
        nuts_seed = int(seed_sequence.generate_state(1)[0] % (2**31))
        start = time.perf_counter()
        with numpyro_steps_from_python(nuts_sampler, progressbar):
            raw = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                cores=cores or min(chains, os.cpu_count() or 1),
                random_seed=nuts_seed,
                nuts_sampler=nuts_sampler,
                target_accept=target_accept,
                progressbar=progressbar,
                model=model,
                compute_convergence_checks=False,
                **sampler_kwargs,
            )
        if collapsed:
            tau = raw.posterior["tau"].to_numpy()
            posterior = self.draw_given_scales(
                tau, np.random.default_rng(seed_sequence.spawn(1)[0])
            )
        else:
            posterior = {name: raw.posterior[name].to_numpy() for name in posterior_dims(self.tree)}
        elapsed = time.perf_counter() - start
        idata = build_inference_data(
            posterior,
            self.estimates,
            self.tree,
            self.priors,
            sampler=f"nuts ({nuts_sampler})",
            depth=self.depth,
            sample_stats=raw.sample_stats,
            attrs={
                "parameterization": parameterization
                if isinstance(parameterization, str)
                else repr(dict(parameterization)),
                "sampling_time": elapsed,
                "random_seed": "None" if random_seed is None else int(random_seed),
            },
        )
        warn_if_not_converged(idata)
        return idata

    def draw_given_scales(self, tau: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Exact draws of θ0, the group means and θ given scale draws ``tau``.

        Parameters
        ----------
        tau
            Array (chain, draw, covariate, level).
        rng
            Random generator.

        Returns
        -------
        dict
            ``mu``, ``tau``, ``<level>_mean`` and ``theta``, each with leading (chain, draw).
        """
        if self.tree is None:
            raise ValueError("a model without pooling has no scales to condition on.")
        index = TreeIndex.from_hierarchy(self.tree)
        b = self.estimates.estimate.to_numpy()
        var_b = self.estimates.se.to_numpy() ** 2
        per_chain = []
        for chain_tau in tau:
            messages = upward_pass(b, var_b, chain_tau, index, self.priors.mu0, self.priors.s0)
            per_chain.append(
                draw_tree(messages, chain_tau, index, self.priors.mu0, self.priors.s0, rng)
            )
        posterior = {
            "mu": np.stack([theta0 for theta0, _, _ in per_chain]),
            "tau": tau,
            "theta": np.stack([theta for _, _, theta in per_chain]),
        }
        for level_index, level in enumerate(self.tree.levels):
            posterior[group_mean_name(level)] = np.stack(
                [groups[level_index] for _, groups, _ in per_chain]
            )
        return posterior

    def __repr__(self) -> str:
        p, m = self.estimates.estimate.shape
        tree = "no pooling" if self.tree is None else repr(self.tree)
        return f"ShrinkageModel({p} covariates × {m} features; depth={self.depth}; {tree})"

    def describe(self) -> pd.DataFrame:
        """One row per scale level: number of units, units per parent group, and the prior."""
        if self.tree is None:
            n_features = self.estimates.estimate.sizes["feature"]
            return pd.DataFrame(
                {
                    "n_units": [n_features],
                    "prior": [f"N({self.priors.mu0:g}, {self.priors.s0:g}²)"],
                },
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
                "tau_prior": [f"HalfCauchy({a:g})" for a in self.priors.tau_scale],
            },
            index=pd.Index(scale_levels(self.tree), name="level"),
        )

    def _repr_html_(self) -> str:
        return f"<div><p>{html.escape(repr(self))}</p>{self.describe().to_html()}</div>"


def _flat(features: pd.Index) -> Hierarchy:
    return Hierarchy(pd.Index(features, name="feature"), (), (), ())


def _resolve_depth(depth: int | str | None, hierarchy: Hierarchy | None) -> int | str:
    available = hierarchy.depth if hierarchy is not None else 0
    if depth is None:
        return available
    if isinstance(depth, str):
        if depth != "none":
            raise ValueError(f"depth must be an integer or 'none', got {depth!r}.")
        return depth
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer):
        raise ValueError(f"depth must be an integer or 'none', got {depth!r}.")
    if not 0 <= depth <= available:
        levels = list(hierarchy.levels) if hierarchy is not None else []
        raise ValueError(
            f"depth {depth} is beyond the annotation levels given ({available}: {levels!r})."
        )
    return int(depth)
