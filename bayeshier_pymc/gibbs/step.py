"""A PyMC step method running the Gibbs sweep on the centred model of ``ShrinkageModel``.

:class:`TreeGibbs` updates every free variable of ``ShrinkageModel.build("centered")`` (``tau``,
``mu``, each ``<level>_mean`` and ``theta``) in one block, with the sweeps of
:mod:`bayeshier_pymc.gibbs.sweeps`; the rows of those sweeps are the covariates. The estimates,
their standard errors, the tree and the priors come from the
:class:`~bayeshier_pymc.problem.ShrinkageProblem` the model was built from; only the names of
the variables are read from the model. The HalfCauchy mixing variables ω of τ in the
conjugate scheme are not model variables: each sweep draws them afresh from ω | τ right before
τ² | ω uses them, so the step carries no hidden state for them. The collapsed scheme's proposal
tuning is per-chain state of the step (reset for every chain by PyMC's sampling state).

Under a heavy-tailed group prior (``Priors.group_prior``) the step also owns the local scales
of the group effects: the horseshoe's free ``<level>_local_scale`` λ, or the Student-t's free
``<level>_local_variance`` λ² (:mod:`bayeshier_pymc.gibbs.local_scales`). The horseshoe's
auxiliary ξ is not a model variable: like the conjugate scheme's ω of τ, each sweep draws it
afresh from ξ | λ² before λ² | ξ, effects uses it.

With correlated estimates (tree-structured noise; the centred model's observed ``b`` then has
the tree-noise density) only the collapsed scheme applies: it samples the
totals of the noise tree and splits them into effects
(:func:`~bayeshier_pymc.gibbs.sweeps.split_effects`); without pooling θ is drawn by
:func:`~bayeshier_pymc.gibbs.sweeps.draw_unpooled`.

The step is only a step: it builds no InferenceData. PyMC does not jitter the start when a
custom step is given: pass :meth:`TreeGibbs.initial_points` as ``initvals`` so that chains start
apart, as :func:`bayeshier_pymc.sampling.sample` does with ``sampler="gibbs",
backend="pymc"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pymc as pm
from pymc.logprob.transforms import LogTransform
from pymc.step_methods.compound import BlockedStep, StepMethodState
from pymc.step_methods.state import dataclass_state
from pymc.util import get_random_generator
from pytensor.graph.basic import Variable

from bayeshier_pymc.gaussian_tree import TreeIndex, posterior_normal
from bayeshier_pymc.gibbs.layout import LocalScales, TreeData, TreeState
from bayeshier_pymc.gibbs.local_scales import draw_horseshoe_auxiliary
from bayeshier_pymc.gibbs.scale_kernels import DEFAULT_SCALE_STEPS, ScaleKernel
from bayeshier_pymc.gibbs.sweeps import (
    check_scheme,
    collapsed_sweep,
    conjugate_sweep,
    draw_normal,
    draw_unpooled,
    initial_state,
    split_effects,
)
from bayeshier_pymc.model import group_mean_name, local_scale_name, local_variance_name
from bayeshier_pymc.problem import ShrinkageProblem

__all__ = ["TreeGibbs"]


@dataclass_state
class TreeGibbsState(StepMethodState):
    """Sampling state of :class:`TreeGibbs`: the rng, tuning flag and τ-kernel tuning."""

    kernel: ScaleKernel
    tune: bool


@dataclass(frozen=True)
class _Names:
    """Names of the model variables the step reads and writes.

    ``local_values``: the value variables of the local scales (log λ for the horseshoe, log λ²
    for the Student-t prior, ``local_variance``), one per level; ``local_variables`` their
    random variables' names.
    """

    tau_value: str
    group_means: tuple[str, ...]
    local_values: tuple[str, ...] = ()
    local_variables: tuple[str, ...] = ()
    local_variance: bool = False


class TreeGibbs(BlockedStep):
    """Gibbs sweep over every variable of the centred tree model, as one PyMC step.

    Parameters
    ----------
    vars
        The model's value variables (default: all of them; the step must own all).
    problem
        The problem the model was built from (``ShrinkageModel.problem``): estimates, tree
        and priors. Without pooling the θ_j are drawn exactly from their posterior.
    scheme
        ``"conjugate"`` (default): the centred sweep, θ, the group means and θ0 from their
        normal conditionals and ω, τ² from inverse gammas; ``"collapsed"``: τ from its
        collapsed conditional, then everything else exactly (see
        :mod:`bayeshier_pymc.gibbs.sweeps`). Estimates with shared noise need
        ``"collapsed"``.
    scale_steps
        Metropolis–Hastings steps per τ and sweep in the collapsed scheme.
    model
        The PyMC model (default: the one in context).
    blocked
        Passed by PyMC; the step is always blocked.
    rng
        Random generator; PyMC replaces it for each chain through :meth:`set_rng`.
    """

    name = "tree_gibbs"
    default_blocked = True
    stats_dtypes_shapes: ClassVar[dict] = {"scale_acceptance": (np.float64, [])}
    _state_class = TreeGibbsState

    def __init__(
        self,
        vars: list[Variable] | None = None,
        *,
        problem: ShrinkageProblem,
        scheme: str = "conjugate",
        scale_steps: int = DEFAULT_SCALE_STEPS,
        model: pm.Model | None = None,
        blocked: bool = True,
        rng: Any = None,
    ) -> None:
        model = pm.modelcontext(model)
        if scheme not in ("conjugate", "collapsed"):
            raise ValueError(f"unknown scheme {scheme!r}; use 'conjugate' or 'collapsed'.")
        check_scheme(problem, scheme)
        self.vars = list(model.value_vars) if vars is None else list(vars)
        self.scheme = scheme
        self.pooled = problem.pooled
        self.problem = problem
        self.data, self.names = _sweep_data(model, problem)
        self.kernel = ScaleKernel(steps=scale_steps)
        self.tune = True
        self.rng = get_random_generator(rng)
        owned = {v.name for v in model.value_vars}
        if {v.name for v in self.vars} != owned:
            raise ValueError(
                f"TreeGibbs updates every free variable of the tree model {sorted(owned)!r} "
                f"together; it was given {sorted(v.name for v in self.vars)!r}."
            )

    def stop_tuning(self) -> None:
        """End tuning: freeze the collapsed scheme's proposal."""
        super().stop_tuning()
        self.kernel.stop_tuning()

    def step(self, point: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict]]:
        """One sweep from ``point``; returns the new point and the step's statistics."""
        new_point = dict(point)
        if not self.pooled:
            if self.problem.correlated:
                new_point["theta"] = draw_unpooled(self.problem, 1, self.rng)[0]
            else:
                mean, var = posterior_normal(
                    self.data.mu0[:, None], self.data.s0[:, None] ** 2, *self._no_pooling()
                )
                new_point["theta"] = draw_normal(mean, var, self.rng)
            return new_point, [{"scale_acceptance": np.nan}]
        state = self._state_from_point(point)
        acceptance = np.nan
        if self.scheme == "conjugate":
            conjugate_sweep(self.data, state, self.rng)
        else:
            acceptance = float(np.mean(collapsed_sweep(self.data, state, self.kernel, self.rng)))
        new_point.update(self._values_from_state(state, self.rng))
        return new_point, [{"scale_acceptance": acceptance}]

    def initial_points(self, chains: int, rng: Any = None) -> list[dict[str, np.ndarray]]:
        """Dispersed, internally consistent starting values, one dict per chain.

        Pass them as ``initvals`` to :func:`pymc.sample`. Each chain gets its own scales
        (log-uniform between A/20 and A), and θ0, group means and θ drawn given them.
        """
        generator = np.random.default_rng(rng)
        if not self.pooled:
            b, var_b = self._no_pooling()
            return [{"theta": draw_normal(b, var_b, generator)} for _ in range(chains)]
        points = []
        for _ in range(chains):
            start = initial_state(self.data, generator, self.problem.priors)
            values = self._values_from_state(start, generator)
            values["tau"] = np.exp(values.pop(self.names.tau_value))
            for value, variable in zip(
                self.names.local_values, self.names.local_variables, strict=True
            ):
                values[variable] = np.exp(values.pop(value))
            points.append(values)
        return points

    def _no_pooling(self) -> tuple[np.ndarray, np.ndarray]:
        return self.data.from_sorted(self.data.b), self.data.from_sorted(self.data.var_b)

    def _state_from_point(self, point: dict[str, np.ndarray]) -> TreeState:
        """The state of ``point``; the noise tree's levels the model lacks get zeros.

        The collapsed sweep, the only one with shared noise, reads only τ (and λ) of the
        state. The horseshoe's ξ is drawn from ξ | λ² (see the module docstring).
        """
        means = [
            self.data.to_sorted(np.asarray(point[name], dtype=float), level)
            for level, name in enumerate(self.names.group_means, start=1)
        ]
        means += [np.zeros((self.data.n_rows, n)) for n in self.data.n_units[len(means) + 1 : -1]]
        state = TreeState(
            tau=np.exp(np.asarray(point[self.names.tau_value], dtype=float)),
            units=[
                self.data.to_sorted(np.asarray(point["theta"], dtype=float)),
                *means,
                np.asarray(point["mu"], dtype=float)[:, None],
            ],
        )
        if self.names.local_values:
            power = 1.0 if self.names.local_variance else 2.0
            variances = [
                self.data.to_sorted(np.exp(power * np.asarray(point[name], dtype=float)), level)
                for level, name in enumerate(self.names.local_values, start=1)
            ]
            auxiliary = [
                draw_horseshoe_auxiliary(v, self.rng)
                if self.problem.priors.group_prior == "horseshoe"
                else np.ones_like(v)
                for v in variances
            ]
            state.local = LocalScales(self.problem.priors, variances, auxiliary)
        return state

    def _values_from_state(
        self, state: TreeState, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """The model's values of ``state``: with shared noise, effects split from the totals.

        Under local scales with shared noise the sweep's own split (``state.split``, which λ
        was drawn from) is used.
        """
        units, theta = state.units[1:], state.units[0]
        if self.data.correlated:
            split = state.split if state.split is not None else split_effects(self.data, state, rng)
            units, parent_noise = split
            theta = theta - parent_noise[:, self.data.parent_index[0]]
        values = {
            self.names.tau_value: np.log(state.tau),
            "mu": units[-1][:, 0].copy(),
            "theta": self.data.from_sorted(theta),
        }
        for level, name in enumerate(self.names.group_means, start=1):
            values[name] = self.data.from_sorted(units[level - 1], level)
        if state.local is not None:
            power = 1.0 if self.names.local_variance else 0.5
            for level, name in enumerate(self.names.local_values, start=1):
                local = state.local.unit(level)
                values[name] = self.data.from_sorted(power * np.log(local), level)
        return values


def _sweep_data(model: pm.Model, problem: ShrinkageProblem) -> tuple[TreeData, _Names]:
    """Sweep data from ``problem`` and variable names from ``model``, checked against each other."""
    b = model["b"]  # observed: independently normal, or with the tree-noise density
    n_features = model.rvs_to_values[b].type.shape[-1]
    if n_features is not None and n_features != problem.b.shape[1]:
        raise ValueError(
            f"the model has {n_features} features but the problem {problem.b.shape[1]}."
        )
    priors = problem.priors
    if problem.tree is None and "tau" in model.named_vars:
        raise ValueError(
            "the model pools features but the problem has no hierarchy (depth='none'); give "
            "the problem the model was built from (ShrinkageModel.problem)."
        )
    if problem.tree is None:
        flat = TreeIndex(problem.b.shape[1], (), ())
        data = TreeData.build(
            problem.algebra_b, problem.var_b, flat, np.ones(1), priors.mu0, priors.s0
        )
        return data, _Names("", ())
    levels = problem.tree.levels
    local_variance = priors.group_prior == "student_t"
    local_name = local_variance_name if local_variance else local_scale_name
    local_variables = tuple(local_name(level) for level in levels) if priors.heavy_tailed else ()
    missing_local = [name for name in local_variables if name not in model.named_vars]
    if missing_local:
        raise ValueError(
            f"group_prior={priors.group_prior!r}: TreeGibbs needs the centred model built with "
            f"it, with free variables {missing_local!r} (ShrinkageModel.build('centered'))."
        )
    for name in local_variables:
        if not isinstance(model.rvs_to_transforms[model[name]], LogTransform):
            raise ValueError(f"TreeGibbs expects {name} with PyMC's default log transform.")
    names = _Names(
        tau_value=model.rvs_to_values[model["tau"]].name,
        group_means=tuple(group_mean_name(level) for level in levels),
        local_values=tuple(model.rvs_to_values[model[name]].name for name in local_variables),
        local_variables=local_variables,
        local_variance=local_variance,
    )
    expected = {"tau", "mu", "theta", *names.group_means}
    if not expected <= set(model.named_vars) or model["theta"] not in model.free_RVs:
        raise ValueError(
            f"TreeGibbs needs the centred model (ShrinkageModel.build('centered')) with free "
            f"variables {sorted(expected)!r}."
        )
    if not isinstance(model.rvs_to_transforms[model["tau"]], LogTransform):
        raise ValueError("TreeGibbs expects tau with PyMC's default log transform.")
    return TreeData.from_problem(problem), names
