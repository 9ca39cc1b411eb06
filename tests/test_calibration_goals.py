"""Issue 14's calibration goals on real data, where they hold (slow; need ``../shared/data``).

The settings are those of ``benchmarks/bench_calibration.py`` (seed 0, 6 splits, 3
known-truth replicates, collapsed NUTS with PyMC's sampler, 2 chains × 500 draws after 500
tuning steps), so the figures asserted here are the ones ``docs/calibration.md`` reports; the
goals that do not hold (split-half coverage below 93%, known-truth coverage above 97% on the
liver lipidome, depth 0 under correlated noise) are documented there with their diagnosis, not
asserted. Stage 2 is the package default: tree-structured noise estimated from the stage-1
fit (``noise="auto"``).
"""

from __future__ import annotations

import pytest

from bayeshier_pymc.calibration import StageTwo, known_truth_check, split_half_check
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
    return StageTwo(
        depth=depth,
        noise=noise,
        draws=500,
        tune=500,
        chains=2,
        sample_options={"nuts_sampler": "pymc", "cores": 1},
    )


def _split_halves(study, depth: int, noise: str = "auto"):
    return split_half_check(
        study.Y, study.X, study.hierarchy, stage_two=_stage_two(depth, noise), n_splits=6
    )


@pytest.mark.parametrize(
    ("name", "depth"), [("qmdiab", 1), ("qmdiab", 2), ("liver", 1), ("liver", 2)]
)
def test_known_truth_false_sign_rate_is_within_goal(shared_data, name, depth):
    """Real covariance, known truth: FSR ≤ 5% and ≤ 2× the calls' mean lfsr; coverage ≥ 93%.

    Measured: QMDiab 0.32% / 0.24% (depth 1), 0.29% / 0.24% (2), coverage 0.946, 0.945;
    liver 0.36% / 1.02%, 0.58% / 1.04%, coverage 0.976, 0.978 (conservative, above 97%).
    """
    study = _study(shared_data, name)
    result = known_truth_check(
        study.X,
        study.hierarchy,
        real_residual_covariance(study),
        stage_two=_stage_two(depth),
        n_replicates=3,
    ).loc["mean"]
    assert result["false_sign_rate"] <= 0.05
    assert result["false_sign_rate"] <= 2.0 * result["claimed_lfsr"]
    assert result["coverage"] >= 0.93
    if name == "qmdiab":
        assert result["coverage"] <= 0.97


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_qmdiab_split_half_sign_errors_are_within_twice_claimed(shared_data, depth):
    """Measured: 0.45% / 0.80% (depth 0), 0.29% / 0.72% (1), 0.28% / 0.72% (2), of ~115
    checked calls per split; the coverage (0.894, 0.918, 0.922) misses 93%."""
    result = _split_halves(_study(shared_data, "qmdiab"), depth).loc["mean"]
    assert result["sign_error_rate"] <= 2.0 * result["claimed_lfsr"]


def test_liver_split_halves_at_the_full_depth(shared_data):
    """Depth 2 (the whole noise tree): no sign errors among ~11 checked calls per split, and a
    lower coefficient MSE than the independent model's best depth (0), paired over the six
    splits (measured gains 2.47 against 1.91). PSIS-LOO puts depth 1 within 1.2 ± 1.7 elpd
    and recommends it; its gain, 1.79, misses this goal (see docs/calibration.md)."""
    study = _study(shared_data, "liver")
    structured = _split_halves(study, 2)
    independent = _split_halves(study, 0, "independent")
    assert structured.loc["mean", "sign_error_rate"] <= 2.0 * structured.loc["mean", "claimed_lfsr"]
    difference = (structured["mse"] - independent["mse"]).drop(index="mean")
    assert difference.mean() + 2.0 * difference.std(ddof=1) / len(difference) ** 0.5 < 0.0
    assert structured.loc["mean", "mse_gain"] > independent.loc["mean", "mse_gain"]
