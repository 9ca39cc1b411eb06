"""Many fits through joblib: the same numbers serially, in local processes and on Dask."""

from __future__ import annotations

import warnings

import joblib
import numpy as np
import pandas as pd
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc import parallel
from bayeshier_pymc.depth_comparison import compare_depths
from bayeshier_pymc.parallel import TaskError, dispatch, inner_fit_options, task_seeds
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.study import StudySetting, simulation_study

GIBBS = {"sampler": "gibbs", "draws": 60, "tune": 30, "chains": 2, "progressbar": False}


@pytest.fixture(scope="module")
def cohorts():
    """Three small stage-1 fits on one tree, and a fit with two annotation levels."""
    fits = {}
    for seed in range(3):
        study = bh.simulate(40, 24, 2, proportions=[0.4, 0.3, 0.3], random_seed=seed)
        fits[f"cohort_{seed}"] = bh.mlm(study.Y, study.X, x_intercept=False)
    return fits, bh.Hierarchy.from_frame(study.annotations, ["subclass"])


@pytest.fixture(scope="module")
def two_levels():
    study = bh.simulate(40, 30, 2, proportions=[0.3, 0.3, 0.2, 0.1, 0.1], n_superclasses=2,
                        random_seed=2)  # fmt: skip
    fit = bh.mlm(study.Y, study.X, x_intercept=False)
    return fit, bh.Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])


@pytest.fixture(scope="module")
def dask_client():
    """A LocalCluster of two one-thread worker processes, closed after the module's tests."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _quietly(function, *args, **kwargs):
    """Run a short fit, whose convergence warning is expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _on_every_backend(run, caught=None):
    """``run()`` serially, with loky (2 processes) and on the Dask cluster (``dask_client``).

    The warnings given in this process by each run are put in ``caught`` (by backend).
    """
    results = {}
    for backend in ("serial", "loky", "dask"):
        config = {"backend": backend, "n_jobs": 2} if backend != "serial" else {}
        with joblib.parallel_config(**config), warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            results[backend] = run()
        if caught is not None:
            caught[backend] = [str(record.message) for record in records]
    return results


def test_fit_many_gives_the_same_draws_serially_with_loky_and_on_dask(cohorts, dask_client):
    fits, tree = cohorts
    caught = {}
    results = _on_every_backend(lambda: bh.fit_many(fits, tree, random_seed=11, **GIBBS), caught)
    serial = results["serial"]
    # the short runs' convergence warnings reach this process, naming their data set
    for backend, messages in caught.items():
        for name in fits:
            assert any(
                message.startswith("the sampler's diagnostics failed")
                and message.endswith(f"(the fit of data set {name!r})")
                for message in messages
            ), (backend, name, messages)
    assert list(serial) == list(fits)
    seeds = [serial[name].attrs["random_seed"] for name in fits]
    assert seeds == task_seeds(11, len(fits))
    for backend in ("loky", "dask"):
        assert list(results[backend]) == list(fits)
        for name in fits:
            for variable in ("theta", "tau", "mu"):
                np.testing.assert_array_equal(
                    results[backend][name].posterior[variable], serial[name].posterior[variable]
                )
    # each data set has its own seed, so the cohorts' draws differ from one another
    assert len({float(serial[name].posterior["tau"].mean()) for name in fits}) == len(fits)


def test_compare_depths_gives_the_same_comparison_on_every_backend(two_levels, dask_client):
    fit, tree = two_levels
    results = _on_every_backend(
        lambda: compare_depths(
            fit, tree, depths=("none", 0, 1), loo="group", refit_bad_k=True, random_seed=3, **GIBBS
        )
    )
    serial = results["serial"]
    assert any(serial.refits.values())  # the refits ran too
    for backend in ("loky", "dask"):
        comparison = results[backend]
        assert comparison.refits == serial.refits
        for depth, idata in serial.fits.items():
            np.testing.assert_array_equal(
                comparison.fits[depth].posterior["theta"], idata.posterior["theta"]
            )
        np.testing.assert_array_equal(comparison.table["elpd_loo"], serial.table["elpd_loo"])
        assert comparison.recommended == serial.recommended


def test_simulation_study_gives_the_same_replicates_in_parallel():
    settings = [StudySetting(30, 40, "moderate")]
    options = {"replicates": 2, "p": 2, "draws": 60, "tune": 30, "chains": 2, "random_seed": 5}
    serial = _quietly(simulation_study, settings, **options)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        pooled = _quietly(simulation_study, settings, **options)
    pd.testing.assert_frame_equal(pooled.replicates, serial.replicates)
    assert serial.replicates["coef_mse_ratio"].nunique() == 2


def test_permutation_refits_give_the_same_pvalues_in_parallel(rng):
    y, x = rng.normal(size=(30, 12)), rng.normal(size=(30, 2))
    fit = bh.mlm(y, x, shrinkage="A")  # one covariance refit per permutation
    serial = fit.permutation_test(24, random_seed=5, progress=False)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        pooled = fit.permutation_test(24, random_seed=5, progress=False)
    np.testing.assert_array_equal(pooled, serial)
    assert serial.min() < serial.max()


def test_task_seeds_depend_on_the_seed_and_the_position_only():
    seeds = task_seeds(5, 4)
    assert task_seeds(5, 2) == seeds[:2]
    assert len(set(seeds)) == 4
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert task_seeds(6, 4) != seeds


def _fail_on(value: int) -> int:
    if value == 2:
        raise ValueError("no estimates left")
    return value * 10


@pytest.mark.parametrize("backend", ["sequential", "dask"])
def test_a_failing_task_is_named(backend, request):
    """Also after the error travelled back from a worker process (dask; loky would work as
    well, but an error makes joblib restart its processes, seconds of imports)."""
    if backend == "dask":
        request.getfixturevalue("dask_client")
    tasks = [(f"data set {name!r}", (value,)) for name, value in [("a", 1), ("b", 2), ("c", 3)]]
    with joblib.parallel_config(backend=backend, n_jobs=2):
        assert list(dispatch(_fail_on, tasks[::2])) == [10, 30]
        with pytest.raises(TaskError, match=r"data set 'b' failed: ValueError: no estimates left"):
            list(dispatch(_fail_on, tasks))


def test_fit_many_checks_its_input_before_sampling(cohorts):
    fits, tree = cohorts
    with pytest.raises(ValueError, match="draws must be an integer"):
        bh.fit_many(fits, tree, draws=0)
    with pytest.raises(ValueError, match="data set 'bad': "):
        bh.fit_many({"good": fits["cohort_0"], "bad": (np.zeros(24), -np.ones(24))}, tree)
    with pytest.raises(ValueError, match="datasets is empty"):
        bh.fit_many({}, tree)
    with pytest.raises(ValueError, match="datasets must be"):
        bh.fit_many(fits["cohort_0"], tree)


def test_fit_many_takes_a_list_and_a_tree_per_data_set(cohorts):
    fits, tree = cohorts
    listed = _quietly(bh.fit_many, [(fits["cohort_0"], tree)], random_seed=2, **GIBBS)
    assert list(listed) == [0]
    assert listed[0].posterior["theta"].sizes["feature"] == tree.n_features


def test_parallel_fits_get_one_core_each(cohorts, monkeypatch):
    """Nested parallelism: the outer level is parallel, so each fit runs on one core."""
    assert "cores" not in inner_fit_options({"draws": 10})
    with joblib.parallel_config(backend="threading", n_jobs=2):
        assert parallel.outer_jobs() == 2
        assert inner_fit_options({"progressbar": True}) == {"cores": 1, "progressbar": False}
        assert inner_fit_options({"cores": 3})["cores"] == 3  # the user's choice stands
    seen = []
    sample = ShrinkageModel.sample

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("cores"))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(ShrinkageModel, "sample", spy)
    fits, tree = cohorts
    with joblib.parallel_config(backend="threading", n_jobs=2):
        _quietly(bh.fit_many, fits, tree, random_seed=1, **GIBBS)
    assert seen == [1, 1, 1]
    seen.clear()
    _quietly(bh.fit_many, fits, tree, random_seed=1, **GIBBS)
    assert seen == [None, None, None]


def test_bad_depths_samplers_and_seeds_are_refused_before_any_fit(cohorts, two_levels, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fit was sampled before the arguments were checked")

    monkeypatch.setattr(ShrinkageModel, "sample", refuse)
    fits, tree = cohorts
    fit, levels = two_levels
    with pytest.raises(ValueError, match="depth 7 is beyond"):
        compare_depths(fit, levels, depths=[0, 7], **GIBBS)
    with pytest.raises(ValueError, match="unknown sampler 'gibs'"):
        compare_depths(fit, levels, **{**GIBBS, "sampler": "gibs"})
    with pytest.raises(ValueError, match="random_seed must"):
        compare_depths(fit, levels, random_seed=-1, **GIBBS)
    with pytest.raises(ValueError, match="unknown sampler 'gibs'"):
        bh.fit_many(fits, tree, sampler="gibs")
    with pytest.raises(ValueError, match="random_seed must"):
        bh.fit_many(fits, tree, random_seed="one")
    with pytest.raises(ValueError, match="unknown sampler 'gibs'"):
        simulation_study(replicates=1, sampler="gibs")


class _Dispatched(Exception):
    pass


def test_every_many_fit_function_shows_one_bar_over_its_tasks_by_default(
    cohorts, two_levels, monkeypatch
):
    """One rule: progressbar=True by default, one bar over the tasks, none for the fits."""
    from bayeshier_pymc import depth_comparison, many_fits, study

    seen = []

    def record(function, tasks, *, progress=False, **kwargs):
        options = next(a for a in next(iter(tasks))[1] if isinstance(a, dict))
        seen.append((progress, options.get("progressbar")))
        raise _Dispatched

    for module in (depth_comparison, many_fits, study):
        monkeypatch.setattr(module, "dispatch", record)
    fits, tree = cohorts
    fit, levels = two_levels
    settings = {"draws": 20, "tune": 20, "chains": 1}
    calls = [
        lambda **extra: compare_depths(fit, levels, sampler="gibbs", **settings, **extra),
        lambda **extra: bh.fit_many(fits, tree, sampler="gibbs", **settings, **extra),
        lambda **extra: simulation_study(replicates=1, **settings, **extra),
    ]
    for call in calls:
        for extra, shown in (({}, True), ({"progressbar": False}, False)):
            with pytest.raises(_Dispatched):
                call(**extra)
            assert seen.pop() == (shown, False), (call, extra)
