"""The bayeshier command: help, demo, simulate → fit round trip, real data, clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayeshier_pymc.cli import main

TINY = ["--draws", "200", "--tune", "200", "--chains", "2"]


@pytest.mark.parametrize("command", [[], ["demo"], ["fit"], ["simulate"], ["study"]])
def test_help_on_every_subcommand(command):
    result = subprocess.run(
        [sys.executable, "-m", "bayeshier_pymc.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: bayeshier" in result.stdout


def test_demo_writes_results(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), *TINY]) == 0
    err = capsys.readouterr().err
    assert "stage 1" in err and "stage 2" in err
    logged = [line.removeprefix("wrote ") for line in err.splitlines() if line.startswith("wrote ")]
    assert sorted(Path(path).name for path in logged) == sorted(p.name for p in tmp_path.iterdir())
    assert Path(logged[-1]).name == "report.md"
    effects = pd.read_csv(tmp_path / "shrunken_effects.csv")
    assert set(effects["covariate"]) == {"age", "bmi", "sex"}
    assert len(effects) == 3 * 300
    for name in [
        "results.nc",
        "report.md",
        "depths.csv",
        "sampler_agreement.csv",
        "shrinkage.png",
        "forest_by_group.png",
        "volcano.png",
        "tau.png",
        "depths.png",
        "posterior_predictive.png",
        "sampler_comparison.png",
    ]:
        assert (tmp_path / name).stat().st_size > 0, name
    report = (tmp_path / "report.md").read_text()
    assert "Which depth of the tree?" in report and "Recommended: depth" in report
    assert "![shrinkage](shrinkage.png)" in report


@pytest.fixture
def simulated(tmp_path):
    assert (
        main(
            [
                "simulate",
                "--n",
                "60",
                "--m",
                "40",
                "--p",
                "2",
                "--superclasses",
                "2",
                "--out",
                str(tmp_path / "sim"),
            ]
        )
        == 0
    )
    return tmp_path / "sim"


def _fit_args(sim, **overrides):
    args = {
        "--responses": sim / "responses.csv",
        "--samples": sim / "samples.csv",
        "--annotations": sim / "annotations.csv",
        "--formula": "0 + x0 + x1",
        "--out": sim.parent / "fit",
    }
    args.update(overrides)
    flat = [str(v) for pair in args.items() for v in pair]
    # simulated responses are not intensities: no log transform
    return ["fit", *flat, "--levels", "subclass", "superclass", "--no-log", *TINY]


def test_fit_preprocesses_like_preprocess_by_default():
    """`bayeshier fit` and `preprocess()` share one set of defaults, each step switchable."""
    import inspect

    from bayeshier_pymc.cli import _parser
    from bayeshier_pymc.preprocess import preprocess

    required = ["--responses", "r", "--samples", "s", "--annotations", "a", "--formula", "x"]
    args = _parser().parse_args(["fit", *required, "--levels", "L"])
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(preprocess).parameters.items()
    }
    assert (args.max_missing, args.impute, args.log_base) == (0.2, "half_min", 2.0)
    assert args.log_transform is defaults["log"] is True and not args.standardize
    assert defaults["max_missing"] == args.max_missing and defaults["impute"] == args.impute
    assert defaults["base"] == args.log_base and defaults["standardize"] is args.standardize
    off = _parser().parse_args(
        ["fit", *required, "--levels", "L", "--no-log", "--impute", "none", "--max-missing", "1"]
    )
    assert not off.log_transform and off.impute == "none" and off.max_missing == 1.0


def test_simulate_then_fit(simulated):
    assert main(_fit_args(simulated)) == 0
    scales = pd.read_csv(simulated.parent / "fit" / "scales.csv")
    assert set(scales["level"]) == {"feature", "subclass", "superclass"}


def test_fast_path_flags(simulated, capsys):
    """One sampler at one depth, no comparisons, no progress on the terminal."""
    out = simulated.parent / "fast"
    args = _fit_args(simulated, **{"--out": out})
    args += ["--sampler", "gibbs", "--depth", "1", "--no-compare", "--quiet", "--cores", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    # no step lines and no bars (a warning about the short chains may still show)
    assert captured.out == "" and "stage" not in captured.err and "it/s" not in captured.err
    assert "sweep/s" not in captured.err
    scales = pd.read_csv(out / "scales.csv")
    assert set(scales["level"]) == {"feature", "subclass"}
    assert not (out / "depths.csv").exists() and not (out / "sampler_comparison.png").exists()
    report = (out / "report.md").read_text()
    assert "gibbs" in report and "Which depth" not in report
    effects = pd.read_csv(out / "shrunken_effects.csv")
    assert effects["called"].equals(effects["qvalue"] <= 0.05)
    # a stricter call threshold, and one outside (0, 1) refused before any work
    assert main([*args, "--alpha", "0.001"]) == 0
    strict = pd.read_csv(out / "shrunken_effects.csv")
    assert strict["called"].equals(strict["qvalue"] <= 0.001)
    assert strict["called"].sum() < effects["called"].sum()
    assert "q-value ≤ 0.001" in (out / "report.md").read_text()
    assert main([*args, "--alpha", "1.5"]) == 2
    assert "alpha must lie in (0, 1), got 1.5" in capsys.readouterr().err
    # no pooling, and a depth the tree does not have
    none = _fit_args(simulated, **{"--out": simulated.parent / "none"})
    assert main([*none, "--depth", "none", "--no-compare", "--quiet"]) == 0
    assert main([*none, "--depth", "5", "--no-compare"]) == 2
    assert "depth 5 is beyond the annotation levels" in capsys.readouterr().err


def test_version_and_file_system_errors(simulated, tmp_path, capsys):
    result = subprocess.run(
        [sys.executable, "-m", "bayeshier_pymc.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.fullmatch(r"bayeshier \S+\n", result.stdout)
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    assert main(_fit_args(simulated, **{"--out": blocked / "results"})) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayeshier: error:") and len(err.strip().splitlines()) == 1


def _corrupt(sim, name, edit):
    edit(pd.read_csv(sim / name)).to_csv(sim / name, index=False)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sim: (sim / "responses.csv").unlink(), "responses file .* does not exist"),
        (
            lambda sim: _corrupt(sim, "responses.csv", lambda f: f.assign(metabolite_3="x")),
            r"1 response column\(s\) are not numeric, e.g. \['metabolite_3'\]",
        ),
        (
            lambda sim: _corrupt(sim, "samples.csv", lambda f: f.drop(index=[0, 1])),
            r"2 response sample\(s\) have no row in the samples file, e.g. \['sample_0'",
        ),
        (
            lambda sim: _corrupt(sim, "annotations.csv", lambda f: f.drop(index=[5])),
            r"1 response feature\(s\) have no annotation, e.g. \['metabolite_5'\]",
        ),
        (
            lambda sim: _corrupt(
                sim,
                "annotations.csv",
                lambda f: f.rename(columns={"subclass": "sub"}),
            ),
            r"no column\(s\) \['subclass'\]",
        ),
    ],
)
def test_fit_errors_are_named(simulated, capsys, edit, message):
    edit(simulated)
    assert main(_fit_args(simulated)) == 2
    assert re.search(message, capsys.readouterr().err)


def test_fit_on_qmdiab_plasma(shared_data, tmp_path):
    args = [
        "fit",
        "--responses",
        str(shared_data / "qmdiab_plasma_data.csv"),
        "--samples",
        str(shared_data / "qmdiab_plasma_samples.csv"),
        "--annotations",
        str(shared_data / "qmdiab_plasma_features.csv"),
        "--feature-id",
        "featureID",
        "--formula",
        "AGE + BMI + C(GENDER) + C(T2D)",
        "--levels",
        "SUB_PATHWAY",
        "SUPER_PATHWAY",
        "--drop-unannotated",
        "--max-missing",
        "0.2",
        "--impute",
        "half_min",
        "--log-base",
        "2",
        "--standardize",
        "--out",
        str(tmp_path),
        *TINY,
    ]
    assert main(args) == 0
    effects = pd.read_csv(tmp_path / "shrunken_effects.csv")
    assert set(effects["covariate"]) == {"AGE", "BMI", "C(GENDER)[T.1]", "C(T2D)[T.1]"}
    # 404 named metabolites, of which those with ≤ 20% missing remain
    assert 250 < effects["feature"].nunique() < 404


def test_study_runs_a_small_grid(tmp_path, capsys):
    args = [
        "study",
        "--replicates",
        "1",
        "--rows",
        "60x300",
        "--heterogeneity",
        "moderate",
        "--no-superclass-rows",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "study.csv")
    assert table[["n", "m"]].values.tolist() == [[60, 300]]
    assert table["coef_mse_ratio"].iloc[0] > 1.5
    captured = capsys.readouterr()
    # the table on stdout, the progress on stderr
    assert "coef_mse_ratio" in captured.out and "coef MSE ratio" in captured.err


def test_missing_response_values_are_named_or_fitted_per_feature(simulated, capsys):
    """A NaN left after preprocessing: an error naming --missing-values, or per-feature fits."""

    def blank(frame: pd.DataFrame) -> pd.DataFrame:
        values = frame.copy()
        values.iloc[:5, 3] = np.nan
        values.iloc[:58, 4] = np.nan  # 2 rows left for 2 covariates: a missing feature
        return values

    _corrupt(simulated, "responses.csv", blank)
    keep_gaps = [*_fit_args(simulated), "--impute", "none", "--max-missing", "1"]
    assert main(keep_gaps) == 2
    assert "per-feature" in capsys.readouterr().err
    args = [*keep_gaps, "--missing-values", "per-feature", "--sampler", "gibbs"]
    assert main([*args, "--depth", "2", "--no-compare"]) == 0
    effects = pd.read_csv(simulated.parent / "fit" / "shrunken_effects.csv")
    missing = effects[effects["feature"] == "metabolite_3"]
    assert missing["estimate"].isna().all() and missing["lfsr"].notna().all()
    # no residual SD for a feature without an estimate: its standardized θ has no Y-units value
    assert missing["mean"].isna().all()
    assert effects.loc[effects["feature"] != "metabolite_3", "mean"].notna().all()


def test_fit_leaves_the_intercept_out_and_takes_the_research_priors(simulated):
    """The same default as ShrinkageModel (the intercept not shrunk); --priors research."""
    import json

    import bayeshier_pymc as bh

    fast = ["--sampler", "gibbs", "--depth", "1", "--no-compare", "--quiet", "--cores", "1"]
    for priors in ("auto", "research"):
        out = simulated.parent / f"priors_{priors}"
        args = _fit_args(simulated, **{"--out": out, "--formula": "x0 + x1"})
        assert main([*args, *fast, "--priors", priors]) == 0
        (stored,) = out.glob("*.nc")
        idata = bh.load_results(stored).idata
        assert idata.posterior["covariate"].to_numpy().tolist() == ["x0", "x1"]
        assert json.loads(idata.attrs["priors"])["preset"] == priors


def test_per_feature_missing_values_keep_the_gaps_by_default(simulated, capsys, monkeypatch):
    """--missing-values per-feature: --impute defaults to none; an imputation is refused."""
    from bayeshier_pymc import preprocess

    calls = []

    def record(responses, **options):
        calls.append(options["impute"])
        raise ValueError("stop after preprocessing")

    monkeypatch.setattr(preprocess, "preprocess", record)
    assert main([*_fit_args(simulated), "--missing-values", "per-feature"]) == 2
    assert main(_fit_args(simulated)) == 2
    assert calls == [None, "half_min"]
    capsys.readouterr()
    args = [*_fit_args(simulated), "--missing-values", "per-feature", "--impute", "min"]
    assert main(args) == 2
    assert "--impute min fills the gaps" in capsys.readouterr().err
    assert len(calls) == 2  # refused before reading anything


def test_study_takes_the_research_priors_by_default(tmp_path, monkeypatch):
    from bayeshier_pymc import study

    seen = []

    def record(settings, **options):
        seen.append(options["priors"])
        raise ValueError("stop before sampling")

    monkeypatch.setattr(study, "simulation_study", record)
    base = ["study", "--replicates", "1", "--rows", "60x300", "--out", str(tmp_path)]
    assert main(base) == 2
    assert main([*base, "--priors", "auto"]) == 2
    assert seen == ["research", "auto"]


def test_the_simulate_hint_is_one_shell_command(tmp_path, capsys):
    import shlex

    assert main(["simulate", "--n", "20", "--m", "30", "--p", "2", "--out", str(tmp_path)]) == 0
    (hint,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("try: ")]
    words = shlex.split(hint.removeprefix("try: "), comments=True)
    assert words[:2] == ["bayeshier", "fit"] and words[-1] == "--no-log"


def test_fit_in_residual_sd_units_writes_tables_in_the_responses_units(simulated):
    """--effect-scale residual_sd (the default's units): stage 2 fits the standardized stage-1
    fit (the same draws as ShrinkageModel on fit.standardized() in its own units), the effect
    table is multiplied back into Y's units and the report says which numbers are in
    residual-SD units; --effect-scale raw fits another model."""
    import bayeshier_pymc as bh

    fast = ["--sampler", "gibbs", "--depth", "1", "--no-compare", "--quiet", "--cores", "1"]
    out = simulated.parent / "residual_sd"
    args = _fit_args(simulated, **{"--out": out})
    assert main([*args, *fast, "--effect-scale", "residual_sd", "--seed", "3"]) == 0
    effects = pd.read_csv(out / "shrunken_effects.csv")
    stage1 = pd.read_csv(out / "stage1_estimates.csv")
    merged = effects.merge(stage1, on=["covariate", "feature"], suffixes=("", "_stage1"))
    np.testing.assert_allclose(merged["estimate"], merged["estimate_stage1"], rtol=1e-10)
    np.testing.assert_allclose(merged["se"], merged["se_stage1"], rtol=1e-10)

    responses = pd.read_csv(simulated / "responses.csv", index_col=0)
    samples = pd.read_csv(simulated / "samples.csv", index_col=0)
    annotations = pd.read_csv(simulated / "annotations.csv", index_col=0)
    fit = bh.mlm(responses, "0 + x0 + x1", data=samples)
    tree = bh.Hierarchy.from_frame(annotations, ["subclass", "superclass"])
    idata = bh.ShrinkageModel(fit.standardized(), tree, depth=1, effect_scale="raw").sample(
        "gibbs", draws=200, tune=200, chains=2, cores=1, random_seed=3, progressbar=False
    )
    reference = bh.coefficient_table(idata)
    unit = fit.residual_sd.to_series().reindex(effects["feature"]).to_numpy()
    np.testing.assert_allclose(effects["mean"], reference["mean"] * unit, rtol=1e-10)
    np.testing.assert_allclose(effects["hdi_upper"], reference["hdi_upper"] * unit, rtol=1e-10)
    np.testing.assert_array_equal(effects["lfsr"], reference["lfsr"])
    assert "residual-SD units" in (out / "report.md").read_text()
    # the same settings in Y's units fit another model
    raw = simulated.parent / "raw"
    raw_args = [*_fit_args(simulated, **{"--out": raw}), *fast, "--seed", "3"]
    assert main([*raw_args, "--effect-scale", "raw"]) == 0
    assert not np.allclose(pd.read_csv(raw / "shrunken_effects.csv")["mean"], effects["mean"])
    assert "residual-SD units" not in (raw / "report.md").read_text()
    default = simulated.parent / "default"
    assert main([*_fit_args(simulated, **{"--out": default}), *fast, "--seed", "3"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(default / "shrunken_effects.csv"), effects)


def test_pipeline_refuses_an_unknown_effect_scale_before_any_work(tmp_path):
    import bayeshier_pymc as bh
    from bayeshier_pymc.pipeline import run_pipeline

    study = bh.demo_study()
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="effect_scale must be one of"):
        run_pipeline(
            study.Y, study.X, study.annotations, study.levels, out, effect_scale="z-scores"
        )
    assert not out.exists()
