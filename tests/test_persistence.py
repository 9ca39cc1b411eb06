"""Results saved to netCDF load back with nothing lost and work with every reporting function."""

from __future__ import annotations

import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import bayeshier_pymc as bh
from bayeshier_pymc import results
from bayeshier_pymc.convergence import ConvergenceWarning
from bayeshier_pymc.inference_data import build_inference_data
from bayeshier_pymc.persistence import load_results, save_results

FEATURES = ["α-tocopherol", "β 2", "日本", "f,3", "f/4", "ünï"]


@pytest.fixture(scope="module")
def fitted() -> tuple[az.InferenceData, bh.Hierarchy, bh.MLMFit]:
    rng = np.random.default_rng(1)
    y = pd.DataFrame(rng.normal(size=(30, 6)), columns=FEATURES)
    x = pd.DataFrame({"âge": rng.normal(size=30)}, index=y.index)
    fit = bh.mlm(y, x)
    annotations = pd.DataFrame(
        {"SUB": ["x", "x", "y", "y", "z", "z"], "SUPER": ["P", "P", "P", "P", "Q", "Q"]},
        index=FEATURES,
    )
    tree = bh.Hierarchy.from_frame(annotations, ["SUB", "SUPER"])
    model = bh.ShrinkageModel(fit, tree)
    posterior = model.draw_given_scales(np.abs(rng.normal(size=(2, 20, 1, 3))), rng)
    idata = build_inference_data(
        posterior,
        model.problem,
        sampler="test",
        sample_stats={"diverging": np.zeros((2, 20), bool)},
        attrs={"flag": True, "nothing": None, "one": ["x"], "random_seed": 7},
    )
    return idata, tree, fit


def assert_same_idata(saved: az.InferenceData, loaded: az.InferenceData) -> None:
    assert set(saved.groups()) == set(loaded.groups())
    assert dict(saved.attrs) == dict(loaded.attrs)
    for group in saved.groups():
        before, after = saved[group], loaded[group]
        xr.testing.assert_identical(before, after)
        for name in [*before.coords, *before.data_vars]:
            assert before[name].dtype == after[name].dtype, (group, name)
        assert dict(before.attrs) == dict(after.attrs), group


def test_round_trip_keeps_everything(fitted, tmp_path: Path) -> None:
    idata, tree, fit = fitted
    path = save_results(tmp_path / "r.nc", idata, hierarchy=tree, fit=fit)
    loaded, tree2, frame = load_results(path)
    assert_same_idata(idata, loaded)
    assert loaded.attrs["levels"] == ["SUB", "SUPER"]  # a list, not an array or a string
    assert loaded.attrs["one"] == ["x"] and loaded.attrs["flag"] is True
    assert loaded.attrs["nothing"] is None
    assert tree2 is not None and tree2.levels == tree.levels
    assert tree2.features.equals(tree.features) and tree2.features.dtype == tree.features.dtype
    for before, after in zip(tree.groups, tree2.groups, strict=True):
        assert before.equals(after) and before.name == after.name
    for before, after in zip(tree.parents, tree2.parents, strict=True):
        np.testing.assert_array_equal(before, after)
    pd.testing.assert_frame_equal(frame, fit.to_frame(), check_exact=True)
    assert frame.attrs == {"n_obs": 30, "df_resid": 28, "dof": "n-p", "shrinkage": None}


def test_every_reporting_function_works_on_loaded_results(fitted, tmp_path: Path) -> None:
    idata, tree, fit = fitted
    loaded, _, _ = load_results(save_results(tmp_path / "r.nc", idata, hierarchy=tree, fit=fit))
    not_readers = ("DEFAULT_ALPHA", "resolve_hdi_prob", "display_table", "format_rate")
    readers = [name for name in results.__all__ if name not in not_readers]
    for name in readers:
        function = getattr(results, name)
        if name == "lfsr":
            before, after = function(idata.posterior["theta"]), function(loaded.posterior["theta"])
        elif name == "qvalue":
            before = function(results.lfsr(idata.posterior["theta"]))
            after = function(results.lfsr(loaded.posterior["theta"]))
        else:
            before, after = function(idata), function(loaded)
        if isinstance(before, pd.DataFrame):
            pd.testing.assert_frame_equal(before, after)
        elif isinstance(before, bh.Estimates):
            xr.testing.assert_identical(before.estimate, after.estimate)
            xr.testing.assert_identical(before.se, after.se)
        else:
            xr.testing.assert_identical(before, after)
    for level in tree.levels:
        pd.testing.assert_frame_equal(
            results.group_effects(idata, level), results.group_effects(loaded, level)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bh.loo(loaded).elpd_loo == pytest.approx(bh.loo(idata).elpd_loo)


def test_mixed_type_and_numeric_labels_survive(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    features = [1, "1", 2.5, "x"]
    model = bh.ShrinkageModel(
        (
            pd.DataFrame(rng.normal(size=(1, 4)), columns=features),
            pd.DataFrame(np.ones((1, 4)), columns=features),
        )
    )
    posterior = model.draw_given_scales(np.ones((1, 5, 1, 1)), rng)
    idata = build_inference_data(posterior, model.problem, sampler="t")
    loaded, tree, frame = load_results(save_results(tmp_path / "m.nc", idata, hierarchy=model.tree))
    assert_same_idata(idata, loaded)
    # xarray holds mixed coordinate labels as text; the hierarchy keeps the original types
    assert list(loaded.posterior["feature"].values) == [str(f) for f in features]
    assert tree is not None and list(tree.features) == features and tree.levels == ()
    assert frame is None


def test_sampled_result_without_pooling_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    model = bh.ShrinkageModel((rng.normal(size=(1, 5)), np.ones((1, 5))), depth="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        idata = model.sample(draws=20, tune=20, chains=2, random_seed=1, progressbar=False)
    loaded, tree, frame = load_results(save_results(tmp_path / "n.nc", idata))
    assert_same_idata(idata, loaded)
    assert tree is None and frame is None and loaded.attrs["levels"] == []
    xr.testing.assert_identical(
        results.coefficient_summary(idata), results.coefficient_summary(loaded)
    )


def test_bad_arguments_and_files_raise_value_errors(fitted, tmp_path: Path) -> None:
    idata, _, _ = fitted
    with pytest.raises(ValueError, match=r"must be an arviz\.InferenceData"):
        save_results(tmp_path / "x.nc", {"posterior": None})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hierarchy must be a Hierarchy"):
        save_results(tmp_path / "x.nc", idata, hierarchy="tree")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fit must be a stage-1 fit"):
        save_results(tmp_path / "x.nc", idata, fit=3)
    with pytest.raises(ValueError, match="no results file"):
        load_results(tmp_path / "absent.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(ValueError, match="not a netCDF file"):
        load_results(tmp_path / "junk.nc")
    plain = idata.posterior[["tau"]].copy()
    plain.attrs = {}
    az.InferenceData(posterior=plain).to_netcdf(str(tmp_path / "plain.nc"))
    with pytest.raises(ValueError, match="not written by save_results"):
        load_results(tmp_path / "plain.nc")
