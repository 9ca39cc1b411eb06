"""Many data sets or cohorts, one shrinkage fit each: :func:`fit_many`.

The fits are independent tasks of :func:`~bayeshier_pymc.parallel.dispatch`, so they run one
after another by default, in local processes under ``joblib.parallel_config(n_jobs=…)`` and
on a Dask cluster under ``joblib.parallel_config(backend="dask")`` (``docs/parallel.md``),
with the same numbers wherever they run.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import arviz as az
import numpy as np

from bayeshier_pymc._validation import integer_seed
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.mlm import EffectScaleChoice
from bayeshier_pymc.parallel import dispatch, inner_fit_options, task_seeds
from bayeshier_pymc.priors import Priors
from bayeshier_pymc.sampling import check_sampler_name
from bayeshier_pymc.shrinkage import NoiseChoice, ShrinkageModel

__all__ = ["fit_many"]


def fit_many(
    datasets: Mapping[Hashable, Any] | Sequence[Any],
    hierarchy: Hierarchy | None = None,
    *,
    sampler: Literal["nuts", "gibbs"] = "nuts",
    depth: int | str | None = None,
    priors: str | Mapping[str, Any] | Priors | None = None,
    covariates: list[Any] | Literal["all"] | None = None,
    noise: NoiseChoice = "auto",
    effect_scale: EffectScaleChoice = "auto",
    random_seed: int | np.random.Generator | None = None,
    n_jobs: int | None = None,
    progressbar: bool = True,
    **sample_kwargs: Any,
) -> dict[Hashable, az.InferenceData]:
    """Fit the shrinkage model to many data sets or cohorts, as independent tasks.

    Every data set gets its own :class:`~bayeshier_pymc.ShrinkageModel` (the same model
    settings for all) and its own :meth:`~bayeshier_pymc.ShrinkageModel.sample` run. The
    models are built here, first, so that bad input raises before any sampling; the runs are
    dispatched through joblib (:func:`~bayeshier_pymc.parallel.dispatch`).

    Parameters
    ----------
    datasets
        Name → data set, or a list of data sets (named by their positions 0, 1, …). A data
        set is stage-1 estimates in any form :class:`~bayeshier_pymc.ShrinkageModel` accepts
        (an :class:`~bayeshier_pymc.MLMFit`, :class:`~bayeshier_pymc.Estimates`, a tidy
        frame, a pair ``(b, se)``), fitted on ``hierarchy``, or a pair ``(estimates,
        hierarchy)`` with a tree of its own (cohorts measuring different metabolites).
    hierarchy
        The annotation tree of the data sets that bring none.
    sampler
        ``"nuts"`` (default) or ``"gibbs"``.
    depth, priors, covariates, noise, effect_scale
        As in :class:`~bayeshier_pymc.ShrinkageModel`, for every data set.
    random_seed
        Data set ``i`` (in the order of ``datasets``) is sampled with the ``i``-th seed of
        :func:`~bayeshier_pymc.parallel.task_seeds` (spawned from ``random_seed``; a
        generator gives one draw first), so its draws depend on ``random_seed`` and ``i``
        only: not on the backend, the number of workers or the order they finish in.
    n_jobs
        Fits run at once; ``None`` (default): the current ``joblib.parallel_config`` (one at
        a time unless it says otherwise; ``backend="dask"`` runs them on a Dask cluster). In
        parallel every fit gets one core (its chains run one after another in its worker)
        unless ``cores`` is given.
    progressbar
        Show one progress bar over the data sets (the fits show none of their own), as
        every function that runs many fits does (``docs/parallel.md``).
    **sample_kwargs
        Further keywords of :meth:`~bayeshier_pymc.ShrinkageModel.sample` (``draws``,
        ``tune``, ``chains``, ``nuts_sampler``, …).

    Returns
    -------
    dict
        Name → InferenceData (the contract of every fit), in the order of ``datasets``.

    Raises
    ------
    ValueError
        For bad input, naming the data set, before any sampling.
    bayeshier_pymc.parallel.TaskError
        When a fit fails, naming its data set.

    Examples
    --------
    One stage-1 fit per cohort on a shared tree, then the shrunken coefficients of each:

    >>> import bayeshier_pymc as bh
    >>> cohorts = {"discovery": fit_discovery, "replication": fit_replication}  # doctest: +SKIP
    >>> fits = bh.fit_many(cohorts, tree, sampler="gibbs", random_seed=1)  # doctest: +SKIP
    >>> {name: bh.coefficient_table(idata) for name, idata in fits.items()}  # doctest: +SKIP

    The same call on a Dask cluster (``docs/parallel.md``) gives the same numbers:

    >>> from dask.distributed import Client  # doctest: +SKIP
    >>> from joblib import parallel_config
    >>> with Client(cluster), parallel_config(backend="dask"):  # doctest: +SKIP
    ...     fits = bh.fit_many(cohorts, tree, sampler="gibbs", random_seed=1)
    """
    named = _named(datasets)
    models = {
        name: _model(name, data, hierarchy, depth, priors, covariates, noise, effect_scale)
        for name, data in named.items()
    }
    check_sampler_name(sampler)
    options = inner_fit_options({**sample_kwargs, "progressbar": False}, n_jobs)
    seeds = task_seeds(integer_seed(random_seed), len(models))
    tasks = [
        (f"the fit of data set {name!r}", (model, sampler, options, seed))
        for (name, model), seed in zip(models.items(), seeds, strict=True)
    ]
    fits = dispatch(_sample, tasks, n_jobs=n_jobs, progress=progressbar, total=len(tasks))
    return dict(zip(models, fits, strict=True))


def _named(datasets: Mapping[Hashable, Any] | Sequence[Any]) -> dict[Hashable, Any]:
    """The data sets by name (a list's positions for a list)."""
    if isinstance(datasets, Mapping):
        named = dict(datasets)
    elif isinstance(datasets, Sequence) and not isinstance(datasets, str):
        named = dict(enumerate(datasets))
    else:
        raise ValueError(
            "datasets must be a mapping name → data set or a list of data sets, got "
            f"{type(datasets).__name__}."
        )
    if not named:
        raise ValueError("datasets is empty: give at least one data set.")
    return named


def _model(
    name: Hashable,
    data: Any,
    hierarchy: Hierarchy | None,
    depth: int | str | None,
    priors: str | Mapping[str, Any] | Priors | None,
    covariates: list[Any] | Literal["all"] | None,
    noise: NoiseChoice,
    effect_scale: EffectScaleChoice,
) -> ShrinkageModel:
    """The model of one data set; a ValueError names the data set."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Hierarchy):
        data, hierarchy = data
    try:
        return ShrinkageModel(
            data,
            hierarchy,
            depth=depth,
            priors=priors,
            covariates=covariates,
            noise=noise,
            effect_scale=effect_scale,
        )
    except ValueError as error:
        raise ValueError(f"data set {name!r}: {error}") from error


def _sample(
    model: ShrinkageModel, sampler: str, options: Mapping[str, Any], random_seed: int
) -> az.InferenceData:
    """One task of :func:`fit_many`."""
    return model.sample(sampler, random_seed=random_seed, **options)
