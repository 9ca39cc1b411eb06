"""Issue 18's failure modes, one test each: arguments checked before work, whole writes,
bounded stage-2 inputs, no silent data changes on the CSV path, messages that name the file,
column or feature. (Interrupts: ``tests/test_interrupts.py``.)"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pytest

import bayeshier_pymc as bh
from bayeshier_pymc import preprocess
from bayeshier_pymc.cli import main
from bayeshier_pymc.csv_inputs import read_study
from bayeshier_pymc.shrinkage import ShrinkageModel

HUGE_SEED = 99999999999999999999999

pytestmark = pytest.mark.filterwarnings("ignore::bayeshier_pymc.convergence.ConvergenceWarning")


@pytest.fixture(scope="module")
def model() -> ShrinkageModel:
    rng = np.random.default_rng(0)
    b = rng.normal(size=(2, 12))
    return ShrinkageModel((b, np.full(b.shape, 0.5)))


@pytest.fixture
def no_sampling(monkeypatch):
    """Any sampling or model building fails the test: arguments must be refused before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr("bayeshier_pymc.sampling.pm.sample", forbidden)
    monkeypatch.setattr(ShrinkageModel, "build", forbidden)
    monkeypatch.setattr("bayeshier_pymc.sampling.build_model", forbidden)
    monkeypatch.setattr("bayeshier_pymc.sampling.run_engine", forbidden)


# ---------------------------------------------------------------- 3. sampler arguments
@pytest.mark.parametrize("sampler", ["nuts", "gibbs"])
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"chains": 0}, r"chains must be an integer >= 1, got 0"),
        ({"chains": -1}, r"chains must be an integer >= 1, got -1"),
        ({"draws": 0}, r"draws must be an integer >= 1, got 0"),
        ({"tune": -5}, r"tune must be an integer >= 0, got -5"),
        ({"draws": 2.5}, r"draws must be an integer >= 1, got 2.5"),
        ({"chains": True}, r"chains must be an integer >= 1, got True"),
        ({"cores": 0}, r"cores must be an integer >= 1, got 0"),
        ({"random_seed": -1}, r"random_seed must lie in \[0, 2\*\*63\), got -1"),
        ({"random_seed": HUGE_SEED}, r"random_seed must lie in \[0, 2\*\*63\)"),
        ({"random_seed": 1.5}, r"random_seed must be None, an integer .* or a numpy"),
    ],
)
def test_bad_sampler_arguments_are_refused_before_any_work(
    model, no_sampling, sampler, arguments, message
):
    with pytest.raises(ValueError, match=message):
        model.sample(sampler, **arguments)
    with pytest.raises(ValueError, match=message):
        bh.sample(model.problem, sampler, **arguments)


def test_a_numpy_generator_is_a_seed(model):
    """PyMC users pass Generators: the same generator state gives the same draws."""
    runs = [
        model.sample(
            "gibbs",
            draws=20,
            tune=10,
            chains=2,
            random_seed=np.random.default_rng(3),
            progressbar=False,
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(
        runs[0].posterior["theta"].to_numpy(), runs[1].posterior["theta"].to_numpy()
    )
    assert 0 <= runs[0].attrs["random_seed"] < 2**63


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--chains", "0"], "chains must be an integer >= 1, got 0"),
        (["--chains", "-1"], "chains must be an integer >= 1, got -1"),
        (["--draws", "0"], "draws must be an integer >= 1, got 0"),
        (["--tune", "-5"], "tune must be an integer >= 0, got -5"),
        (["--draws", "1", "--tune", "0"], "--draws must be at least 4"),
        (["--seed", str(HUGE_SEED)], r"random_seed must lie in \[0, 2\*\*63\)"),
    ],
)
def test_the_cli_refuses_bad_sampler_options_before_any_work(
    tmp_path, capsys, monkeypatch, options, message
):
    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr("bayeshier_pymc.datasets.demo_study", forbidden)
    assert main(["demo", "--out", str(tmp_path / "out"), *options]) == 2
    error = capsys.readouterr().err
    assert "bayeshier: error:" in error
    assert re.search(message, error), error


# ------------------------------------------------------------------- 4. whole writes
@pytest.fixture(scope="module")
def idata(model) -> az.InferenceData:
    return model.sample("gibbs", draws=10, tune=10, chains=2, random_seed=1, progressbar=False)


def test_a_failed_save_leaves_neither_a_partial_file_nor_a_changed_one(idata, tmp_path):
    path = bh.save_results(tmp_path / "results.nc", idata)
    before = path.read_bytes()
    broken = idata.copy()
    broken.attrs["random_seed"] = HUGE_SEED  # not storable: the write fails part way
    with pytest.raises(Exception):  # noqa: B017 - whatever the storage library raises
        bh.save_results(path, broken)
    assert path.read_bytes() == before
    with pytest.raises(Exception):  # noqa: B017
        bh.save_results(tmp_path / "new.nc", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.nc"]


def test_load_results_refuses_a_file_without_the_posterior(tmp_path):
    path = tmp_path / "partial.nc"
    az.InferenceData(
        attrs={"a": 1}, observed_data=pd.DataFrame({"x": [1.0]}).to_xarray()
    ).to_netcdf(str(path), base_group="idata")
    with pytest.raises(ValueError, match=r"partial.nc' is incomplete: .* no posterior"):
        bh.load_results(path)


def test_load_results_names_a_damaged_file(idata, tmp_path):
    path = bh.save_results(tmp_path / "damaged.nc", idata)
    data = bytearray(path.read_bytes())
    for start in range(len(data) // 3, len(data), 997):  # damage the data, keep the header
        data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged.nc"):
        bh.load_results(path)


def test_save_results_refuses_a_folder_or_a_missing_folder(idata, tmp_path):
    with pytest.raises(ValueError, match=r"it is a folder; name a file"):
        bh.save_results(tmp_path, idata)
    with pytest.raises(ValueError, match=r"the folder .*nowhere' does not exist"):
        bh.save_results(tmp_path / "nowhere" / "r.nc", idata)


def test_the_cli_refuses_an_out_that_is_a_file(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert main(["demo", "--out", str(taken), "--draws", "10"]) == 2
    assert "is an existing file; name a folder" in capsys.readouterr().err
    assert taken.read_text() == "keep me"


# --------------------------------------------------------------- 5. stage-2 inputs
@pytest.mark.parametrize(
    ("estimate", "se", "message"),
    [
        (1.0, 1e300, r"standard errors \(se\) hold 1 value\(s\) outside \[1e-100, 1e100\]"),
        (1.0, 1e-300, r"standard errors \(se\) hold 1 value\(s\) outside \[1e-100, 1e100\]"),
        (1e300, 1.0, r"estimates hold 1 value\(s\) outside \|value\| <= 1e100"),
        (1.0, True, r"standard errors \(se\) must be numbers, got booleans"),
        (True, 1.0, r"estimates must be numbers, got booleans"),
    ],
)
def test_extreme_or_boolean_stage2_inputs_are_refused_by_name(estimate, se, message):
    b = np.ones((1, 5))
    s = np.full((1, 5), 0.5)
    b[0, 2], s[0, 2] = estimate, se
    if isinstance(se, bool):
        s = np.full((1, 5), True)
    if isinstance(estimate, bool):
        b = np.full((1, 5), True)
    with pytest.raises(ValueError, match=message):
        ShrinkageModel((b, s))


@pytest.mark.parametrize(
    ("priors", "message"),
    [
        ({"tau_scale": 1e300}, r"priors\['tau_scale'\] must be positive and finite, in"),
        ({"s0": 1e300}, r"priors\['s0'\] must be a positive number in \[1e-100, 1e100\]"),
        ({"mu0": 1e300}, r"priors\['mu0'\] must be finite with \|mu0\| <= 1e100"),
        ({"s0": "abc"}, r"priors\['s0'\] must be a number, got 'abc'"),
        ({"mu0": True}, r"priors\['mu0'\] must be a number, got True"),
        ({"tau_scale": [1, "x"]}, r"priors\['tau_scale'\] must be a number, got 'x'"),
        ({"tau_scale": {"feature": None}}, r"priors\['tau_scale'\]\['feature'\] must be a"),
        ([1, 2], r"priors must be a mapping such as"),
    ],
)
def test_bad_priors_are_refused_by_name(priors, message):
    with pytest.raises(ValueError, match=message):
        ShrinkageModel((np.ones((1, 4)), np.ones((1, 4))), priors=priors)


# -------------------------------------------------------- 6-7. the CSV / formula path
def _study_files(folder: Path, *, samples: pd.DataFrame | None = None) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    ids = [f"S{i}" for i in range(12)]
    features = ["M1", "M2", "M3", "M4"]
    responses = pd.DataFrame(rng.normal(size=(12, 4)), index=pd.Index(ids, name="id"))
    responses.columns = features
    if samples is None:
        samples = pd.DataFrame(
            {"AGE": rng.normal(size=12), "SITE": ["a"] * 12}, index=pd.Index(ids, name="id")
        )
    annotations = pd.DataFrame(
        {"CLASS": ["x", "x", "y", "y"]}, index=pd.Index(features, name="feature")
    )
    paths = {"responses": folder / "y.csv", "samples": folder / "x.csv"}
    paths["annotations"] = folder / "a.csv"
    responses.to_csv(paths["responses"])
    samples.to_csv(paths["samples"])
    annotations.to_csv(paths["annotations"])
    return paths


def test_a_formula_term_without_columns_is_refused_by_name(tmp_path):
    data = pd.DataFrame({"AGE": np.arange(12.0), "SITE": ["a"] * 12})
    y = pd.DataFrame(np.random.default_rng(0).normal(size=(12, 3)))
    with pytest.raises(ValueError, match=r"formula term\(s\) \['C\(SITE\)'\] of X yield no column"):
        bh.mlm(y, "AGE + C(SITE)", data=data)


def test_a_repeated_response_header_is_named_as_such(tmp_path):
    paths = _study_files(tmp_path)
    text = paths["responses"].read_text().splitlines()
    text[0] = text[0].replace("M2", "M1")
    paths["responses"].write_text("\n".join(text) + "\n")
    for drop in (False, True):
        with pytest.raises(ValueError, match=r"y.csv' repeats the column header\(s\) \['M1'\]"):
            read_study(*paths.values(), ["CLASS"], drop_unannotated=drop)


def test_every_filter_logs_what_it_removed(tmp_path, caplog):
    paths = _study_files(tmp_path)
    pd.read_csv(paths["annotations"]).iloc[:2].to_csv(paths["annotations"], index=False)
    with caplog.at_level(logging.INFO, logger="bayeshier_pymc"):
        study = read_study(*paths.values(), ["CLASS"], drop_unannotated=True)
        responses = study.responses.copy()
        responses.iloc[:7, 0] = np.nan
        kept = preprocess.drop_sparse_features(responses, 0.5)
    assert list(kept.columns) == ["M2"]
    assert "left out 2 response feature(s) without annotation: ['M3', 'M4']" in caplog.text
    assert "dropped 1 of 2 feature(s) missing in more than 0.5 of the samples: ['M1']" in (
        caplog.text
    )


def test_sample_ids_match_exactly_as_text(tmp_path):
    samples = pd.DataFrame(
        {"AGE": np.arange(12.0)}, index=pd.Index([f"{i:03d}" for i in range(12)], name="id")
    )
    paths = _study_files(tmp_path, samples=samples)
    responses = pd.read_csv(paths["responses"])
    responses["id"] = range(12)
    responses.to_csv(paths["responses"], index=False)
    with pytest.raises(ValueError, match=r"matched exactly as text \('001' is not '1'\)"):
        read_study(*paths.values(), ["CLASS"])


def test_a_semicolon_separated_file_is_named_with_the_likely_cause(tmp_path):
    paths = _study_files(tmp_path)
    frame = pd.read_csv(paths["annotations"])
    frame.to_csv(paths["annotations"], sep=";", index=False)
    with pytest.raises(ValueError, match=r"a.csv' has one column only .* wrong separator"):
        read_study(*paths.values(), ["CLASS"])


def test_an_empty_file_is_named(tmp_path):
    paths = _study_files(tmp_path)
    paths["samples"].write_text("")
    with pytest.raises(ValueError, match=r"the samples file '.*x.csv' is empty"):
        read_study(*paths.values(), ["CLASS"])


def test_an_all_missing_column_is_named_by_its_feature():
    y = pd.DataFrame(np.random.default_rng(0).normal(size=(10, 3)), columns=["M1", "M2", "M3"])
    y["M2"] = np.nan
    with pytest.raises(ValueError, match=r"column\(s\) \['M2'\] hold no finite value"):
        bh.mlm(y, np.ones((10, 1)))


def test_the_n_le_p_message_says_the_intercept_is_counted():
    y = np.random.default_rng(0).normal(size=(3, 2))
    with pytest.raises(ValueError, match=r"p=3 columns; .* n - p = 0; p counts the intercept\)"):
        bh.mlm(y, np.random.default_rng(1).normal(size=(3, 2)))


def test_the_cli_refuses_a_one_level_categorical(tmp_path, capsys):
    paths = _study_files(tmp_path)
    options = ["--responses", str(paths["responses"]), "--samples", str(paths["samples"])]
    options += ["--annotations", str(paths["annotations"]), "--levels", "CLASS"]
    options += ["--no-log"]
    status = main(["fit", *options, "--formula", "AGE + C(SITE)", "--out", str(tmp_path / "o")])
    assert status == 2
    assert "['C(SITE)']" in capsys.readouterr().err
    assert os.listdir(tmp_path / "o") == []
