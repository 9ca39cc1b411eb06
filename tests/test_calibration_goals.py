"""Issue 14's calibration goals on real data, where they hold (slow; need ``../shared/data``).

The settings are those of the documented ``benchmarks/bench_calibration.py`` run (seed 0, 6
splits, 3 known-truth replicates, the Gibbs engine with 4 chains × 1000 draws after 1000
tuning steps), so what is asserted here is what ``docs/benchmarks/calibration_compare.txt``
(included in ``docs/calibration.md``) shows. The
split-half coverage uses the Student-t quantile of half B's estimated standard errors and is
judged against its cluster-robust standard error. The goals that do not hold (QMDiab's
split-half coverage at every depth and the liver's below depth 2, known-truth coverage above
97% on the liver lipidome, depth 0 under correlated noise) are documented there with their
diagnosis, not asserted. Stage 2 there has tree-structured noise estimated from the stage-1
fit (``noise="auto"``) and effects exchangeable in Y's units (``effect_scale="raw"``, the
default of that run). The last tests fit stage 2 with the package's defaults, effects
exchangeable in units of each metabolite's residual SD (the settings of
``benchmarks/bench_effect_scale.py``), in which the split-half goals hold at depths 1 and 2,
and the known-truth check with a truth of each depth fitted at that depth (the settings of
``benchmarks/bench_known_truth_depths.py``), where it holds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bayeshier_pymc import ShrinkageModel, mlm
from bayeshier_pymc.calibration import (
    StageTwo,
    known_truth_check,
    split_half_check,
    stage_one_posterior,
)
from bayeshier_pymc.depth_comparison import compare_fits
from bayeshier_pymc.validation_data import (
    LIVER_FILES,
    QMDIAB_FILES,
    has_files,
    read_liver_lipidome,
    read_qmdiab,
    real_residual_covariance,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:the sampler's diagnostics failed"),
]

READERS = {"qmdiab": (QMDIAB_FILES, read_qmdiab), "liver": (LIVER_FILES, read_liver_lipidome)}


def _study(shared_data, name):
    files, reader = READERS[name]
    if not has_files(shared_data, files):
        pytest.skip(f"{name} CSVs absent from {shared_data}")
    return reader(shared_data)


def _stage_two(depth: int, noise: str = "auto") -> StageTwo:
    """The documented calibration run's stage 2, effects exchangeable in Y's units."""
    return StageTwo(
        depth=depth,
        sampler="gibbs",
        noise=noise,
        effect_scale="raw",
        draws=1000,
        tune=1000,
        chains=4,
    )


def _split_halves(study, stage_two):
    return split_half_check(study.Y, study.X, study.hierarchy, stage_two=stage_two, n_splits=6)


def _known_truth(study, stage_two, *, group_sd=0.3, n_replicates=3):
    """The known-truth check's means with the benchmarks' settings (by default 3 replicates of
    class effects, seed 0)."""
    covariance = real_residual_covariance(study)
    return known_truth_check(
        study.X,
        study.hierarchy,
        covariance,
        stage_two=stage_two,
        group_sd=group_sd,
        n_replicates=n_replicates,
    ).loc["mean"]


@pytest.mark.parametrize(
    ("name", "depth"), [("qmdiab", 1), ("qmdiab", 2), ("liver", 1), ("liver", 2)]
)
def test_known_truth_false_sign_rate_is_within_goal(shared_data, name, depth):
    """Real covariance, known truth: FSR ≤ 5% and ≤ 2× the calls' mean lfsr; coverage ≥ 93%.

    Measured: the ``structured`` rows of depths 1 and 2 of the known-truth tables in
    ``docs/benchmarks/calibration_compare.txt`` (the liver's coverage is above 97%: the
    conservative intervals of ``docs/calibration.md``).
    """
    study = _study(shared_data, name)
    result = _known_truth(study, _stage_two(depth))
    assert result["false_sign_rate"] <= 0.05
    assert result["false_sign_rate"] <= 2.0 * result["claimed_lfsr"]
    assert result["coverage"] >= 0.93
    if name == "qmdiab":
        assert result["coverage"] <= 0.97


@pytest.mark.parametrize("name", ["qmdiab", "liver"])
def test_the_split_half_check_is_calibrated_for_stage_one(shared_data, name):
    """The check's reference: unshrunk estimates, θ ~ N(b_A, s_A²), cover 95% within twice
    the coverage's cluster-robust se (measured: the ``stage 1`` rows of the split-half tables
    in ``docs/benchmarks/calibration_compare.txt``)."""
    result = _split_halves(_study(shared_data, name), stage_one_posterior).loc["mean"]
    assert abs(result["coverage"] - 0.95) <= 2.0 * result["coverage_se"]


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_qmdiab_split_half_sign_errors_are_within_twice_claimed(shared_data, depth):
    """Measured: ``sign_error_rate`` against ``claimed_lfsr`` (of ``checked_calls`` per split)
    in QMDiab's ``structured`` split-half rows of ``docs/benchmarks/calibration_compare.txt``;
    the ``coverage`` there misses 93% at every depth (``docs/calibration.md``, "Why split-half
    coverage falls short")."""
    result = _split_halves(_study(shared_data, "qmdiab"), _stage_two(depth)).loc["mean"]
    assert result["sign_error_rate"] <= 2.0 * result["claimed_lfsr"]


def test_liver_split_halves_at_the_full_depth(shared_data):
    """Depth 2 (the whole noise tree): coverage within 2 se of 95% and above 93%, sign errors
    within twice claimed, and a lower coefficient MSE than the independent model at depth 0,
    paired over the six splits (measured: the liver's ``structured 2`` split-half row of
    ``docs/benchmarks/calibration_compare.txt`` against ``independent 0``, and its
    ``mse_minus_indep0`` ± ``se_of_difference``). Depths 0 and 1 cover less than 93% there
    (``docs/calibration.md``, "Why split-half coverage falls short")."""
    study = _study(shared_data, "liver")
    structured = _split_halves(study, _stage_two(2))
    independent = _split_halves(study, _stage_two(0, "independent"))
    mean = structured.loc["mean"]
    assert mean["coverage"] >= 0.93
    assert abs(mean["coverage"] - 0.95) <= 2.0 * mean["coverage_se"]
    assert mean["sign_error_rate"] <= 2.0 * mean["claimed_lfsr"]
    difference = (structured["mse"] - independent["mse"]).drop(index="mean")
    assert difference.mean() + 2.0 * difference.std(ddof=1) / len(difference) ** 0.5 < 0.0
    assert mean["mse_gain"] > independent.loc["mean", "mse_gain"]


# --- effects exchangeable in each metabolite's residual-SD units (effect_scale) --------------

EFFECT_SCALE_SPLITS = 24
"""The splits of ``benchmarks/bench_effect_scale.py`` (``docs/benchmarks/effect_scale.txt``)."""


def _package_default(depth: int) -> StageTwo:
    """Stage 2 with the package's defaults (effects exchangeable in residual-SD units) and the
    benchmark's Gibbs settings."""
    return StageTwo(depth=depth, sampler="gibbs", draws=1000, tune=1000, chains=4)


@pytest.mark.parametrize(
    ("name", "depth"), [("qmdiab", 1), ("qmdiab", 2), ("liver", 1), ("liver", 2)]
)
def test_split_halves_with_the_defaults_meet_the_goals(shared_data, name, depth):
    """The defaults, effects exchangeable in residual-SD units: split-half coverage
    93–97% and sign errors within twice claimed, at depths 1 and 2 of both data sets over 24
    splits (measured: the ``residual_sd`` rows of ``docs/benchmarks/effect_scale.txt``); with
    effects exchangeable in Y's units QMDiab covers below 93% at every depth. Depth 0 misses
    in either unit (``docs/calibration.md``)."""
    study = _study(shared_data, name)
    result = split_half_check(
        study.Y,
        study.X,
        study.hierarchy,
        stage_two=_package_default(depth),
        n_splits=EFFECT_SCALE_SPLITS,
    ).loc["mean"]
    assert 0.93 <= result["coverage"] <= 0.97
    assert result["sign_error_rate"] <= 2.0 * result["claimed_lfsr"]


@pytest.mark.parametrize(
    ("name", "depth"), [("qmdiab", 1), ("qmdiab", 2), ("liver", 1), ("liver", 2)]
)
def test_known_truth_in_y_units_is_covered_with_the_defaults(shared_data, name, depth):
    """The truth drawn exchangeable in Y's units, so the residual-SD model is misspecified: its
    intervals still cover 93–97% with false sign rates ≤ 5% and ≤ 2× claimed (measured: the
    known-truth ``residual_sd`` rows of ``docs/benchmarks/effect_scale.txt``)."""
    study = _study(shared_data, name)
    result = _known_truth(study, _package_default(depth))
    assert 0.93 <= result["coverage"] <= 0.97
    assert result["false_sign_rate"] <= 0.05
    assert result["false_sign_rate"] <= 2.0 * result["claimed_lfsr"]


@pytest.mark.parametrize(("name", "recommended"), [("qmdiab", 1), ("liver", 2)])
def test_the_default_at_its_recommended_depth_is_as_accurate_as_the_research_models_best(
    shared_data, name, recommended
):
    """The accuracy goal with the defaults (measured: ``docs/benchmarks/accuracy_goal.txt``):
    ``compare_fits`` recommends ``recommended`` on the whole data set, and there the default's
    split-half MSE gain over 24 splits is at least the research model's (independent estimates,
    effects in Y's units) at its best depth of 0, 1 and 2."""
    study = _study(shared_data, name)
    fit = mlm(study.Y, study.X)
    fits = {
        depth: ShrinkageModel(fit, study.hierarchy, depth=depth).sample(
            "gibbs", draws=1000, tune=1000, chains=4, random_seed=0, progressbar=False
        )
        for depth in (0, 1, 2)
    }
    assert compare_fits(fits).recommended == recommended

    def gain(stage_two: StageTwo) -> float:
        halves = split_half_check(
            study.Y, study.X, study.hierarchy, stage_two=stage_two, n_splits=EFFECT_SCALE_SPLITS
        )
        return halves.loc["mean", "mse_gain"]

    research = StageTwo(
        sampler="gibbs", noise="independent", effect_scale="raw", draws=1000, tune=1000, chains=4
    )
    best = max(gain(replace(research, depth=depth)) for depth in (0, 1, 2))
    assert gain(_package_default(recommended)) >= best


# --- known truth at every true depth (benchmarks/bench_known_truth_depths.py) ----------------

TRUE_GROUP_SDS = {0: (0.0,), 1: (0.3,), 2: (0.1, 0.3)}
"""The group-effect sd per annotation level from the finest of each true depth."""


@pytest.mark.parametrize(
    ("name", "true_depth", "effect_scale"),
    [
        ("qmdiab", 0, "auto"),
        ("qmdiab", 1, "auto"),
        ("qmdiab", 2, "auto"),
        ("liver", 1, "auto"),
        ("liver", 2, "raw"),
    ],
)
def test_known_truth_fitted_at_its_true_depth_meets_the_goal(
    shared_data, name, true_depth, effect_scale
):
    """Real covariance, a truth of depth 0, 1 or 2 in Y's units, stage 2 at the true depth:
    coverage 93–97%, false sign rate ≤ 5% and ≤ 2× claimed (measured:
    ``docs/benchmarks/known_truth_depths.txt``). With the defaults on QMDiab at every true
    depth and on the liver at depth 1; the liver's depth-2 truth in its own units (the default
    units miss there), and its depth-0 truth in no model (``docs/calibration.md``, "Known truth
    at every true depth")."""
    study = _study(shared_data, name)
    stage_two = replace(_package_default(true_depth), effect_scale=effect_scale)
    # the settings of docs/benchmarks/known_truth_depths.txt: 10 replicates, seed 0
    result = _known_truth(study, stage_two, group_sd=TRUE_GROUP_SDS[true_depth], n_replicates=10)
    assert 0.93 <= result["coverage"] <= 0.97
    assert result["false_sign_rate"] <= 0.05
    assert result["false_sign_rate"] <= 2.0 * result["claimed_lfsr"]
