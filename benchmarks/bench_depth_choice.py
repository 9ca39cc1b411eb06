"""Which depth each criterion recommends, against the depth that estimates θ best.

Run ``python benchmarks/bench_depth_choice.py [--data ../shared/data] [--splits 6]
[--seeds 3]``. Every fit is the Gibbs engine with the package defaults (tree-structured noise
of the estimates, ``"auto"`` priors). The criteria, each :func:`bayeshier_pymc.compare_fits`
on the same fits at depths 0, 1, 2:

* ``replicate``: the default rule, the elpd of a fresh replicate of the estimates;
* ``loo marginal``: the rule on PSIS-LOO leaving one metabolite out (the default before);
* ``loo marginal, deepest``: the same with ``prefer="deepest"``;
* ``loo group``, ``loo group top``: leaving one group out at the finest and the coarsest
  annotation level.

Real data (QMDiab plasma, the liver lipidome; skipped with a message when their CSVs are
absent): the split-half coefficient-MSE gain over stage 1 at each depth
(:func:`bayeshier_pymc.calibration.split_half_check`, the truth-free yardstick) for the
structured and the independent noise model, then each criterion's recommendation on the whole
data set and the fresh replicate's estimated MSE relative to stage 1.

Simulations (truth known): twelve subclasses of 20 metabolites in three superclasses with
noise shared within subclasses, superclasses and by all, true depth 0, 1 or 2
(``docs/model_comparison.md``), and the rows of
:func:`bayeshier_pymc.study.correlated_settings` (four subclasses in two superclasses, true
depth 2; stage 1 on a 70% training split). For each replicate the true coefficient-MSE gain
at every depth, the depth with the best, and each criterion's recommendation; then per
criterion the share of replicates where it recommends the true depth and the MSE-best one.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bayeshier_pymc import Hierarchy, ShrinkageModel, mlm
from bayeshier_pymc.calibration import StageTwo, split_half_check
from bayeshier_pymc.depth_comparison import RecommendationRule, compare_fits
from bayeshier_pymc.results import coefficient_matrix
from bayeshier_pymc.simulate import ResidualNoise, simulate, train_test_split
from bayeshier_pymc.study import correlated_settings, simulate_setting
from bayeshier_pymc.validation_data import VALIDATION_SETS, available_studies

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEPTHS = (0, 1, 2)
BY_LOO = RecommendationRule(criterion="loo")
SHARED_NOISE = ResidualNoise(subclass_sd=0.5, superclass_sd=0.4, global_sd=0.3)
TRUTHS = {
    0: {"tau_u": 0.0, "tau_v": 0.0, "tau_w": 0.15},
    1: {"tau_u": 0.0, "tau_v": 0.4, "tau_w": 0.05},
    2: {"tau_u": 0.6, "tau_v": 0.05, "tau_w": 0.05},
}
"""The true depths of the twelve-subclass simulation and their scales."""


def main() -> None:
    """Print the real-data table, the simulation replicates and the agreement shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--splits", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    options = {"draws": args.draws, "tune": args.draws // 2, "chains": 2}
    start = time.perf_counter()
    studies = dict(available_studies(args.data, VALIDATION_SETS))
    real_rows = [_real_row(study, args.splits, options) for study in studies.values()]
    if real_rows:
        print("Real data: split-half coefficient-MSE gain over stage 1 by depth (structured and")
        print("independent noise), each criterion's recommended depth on the whole data set, and")
        print("the fresh replicate's estimated coefficient MSE relative to stage 1 by depth:")
        print(pd.DataFrame(real_rows).set_index("data set").astype(object).T.to_string())
    sim_rows = [
        _simulated_row(f"twelve subclasses, truth {truth}", truth, study, study, seed, options)
        for truth, scales in TRUTHS.items()
        for seed in range(1, args.seeds + 1)
        for study in [_twelve_subclasses(seed, scales)]
    ]
    real = [studies[name] for name in ("liver_lipidome", "qmdiab") if name in studies]
    for setting in correlated_settings(real=real)[1:]:
        for seed in range(args.seeds):
            study = simulate_setting(setting, seed)
            train, _ = train_test_split(study, 0.7, random_seed=seed)
            label = f"{setting.residual_name} residuals, truth 2"
            sim_rows.append(_simulated_row(label, 2, train, study, seed, options))
    replicates = pd.DataFrame(sim_rows)
    print("\nSimulations: true coefficient-MSE gain over stage 1 by depth, the MSE-best depth,")
    print("and each criterion's recommended depth:")
    print(replicates.to_string(index=False))
    criteria = list(_criteria_names())
    shares = pd.DataFrame(
        {
            "true depth": [(replicates[c] == replicates["true depth"]).mean() for c in criteria],
            "MSE-best depth": [(replicates[c] == replicates["MSE-best"]).mean() for c in criteria],
        },
        index=pd.Index(criteria, name="criterion"),
    )
    print(f"\nShare of the {len(replicates)} simulated replicates where each criterion recommends:")
    print(shares.round(2).to_string())
    print(f"\n{time.perf_counter() - start:.0f} s")


def _criteria_names() -> dict[str, str]:
    return {
        "replicate": "the elpd of a fresh replicate (default)",
        "loo marginal": "PSIS-LOO, one metabolite out",
        "loo marginal, deepest": "the same, prefer the deepest",
        "loo group": "PSIS-LOO, one finest group out",
        "loo group top": "PSIS-LOO, one coarsest group out",
    }


def _recommendations(fits: dict[int, Any], tree: Hierarchy) -> dict[str, Any]:
    """Each criterion's recommended depth, and the replicate comparison."""
    replicate = compare_fits(dict(fits))
    top = tree.levels[-1]
    return {
        "replicate": replicate.recommended,
        "loo marginal": compare_fits(dict(fits), rule=BY_LOO).recommended,
        "loo marginal, deepest": RecommendationRule(criterion="loo", prefer="deepest").choose(
            replicate.table
        ),
        "loo group": compare_fits(dict(fits), tree, loo="group", rule=BY_LOO).recommended,
        "loo group top": compare_fits(
            dict(fits), tree, loo="group", group_level=top, rule=BY_LOO
        ).recommended,
        "_comparison": replicate,
    }


def _fits(fit: Any, tree: Hierarchy, seed: int, options: dict[str, Any]) -> dict[int, Any]:
    return {
        depth: ShrinkageModel(fit, tree, depth=depth, effect_scale="raw").sample(
            "gibbs", random_seed=seed, progressbar=False, **options
        )
        for depth in DEPTHS
    }


def _real_row(study: Any, n_splits: int, options: dict[str, Any]) -> dict[str, Any]:
    """Split-half gains per depth and noise model, and every criterion on the whole set."""
    row: dict[str, Any] = {"data set": study.name}
    for noise, label in (("auto", "structured"), ("independent", "independent")):
        for depth in DEPTHS:
            stage_two = StageTwo(
                depth=depth, sampler="gibbs", noise=noise, effect_scale="raw", **options
            )
            halves = split_half_check(
                study.Y, study.X, study.hierarchy, stage_two=stage_two, n_splits=n_splits
            )
            row[f"split-half gain, {label} {depth}"] = round(halves.loc["mean", "mse_gain"], 3)
    structured = {d: row[f"split-half gain, structured {d}"] for d in DEPTHS}
    row["split-half best (structured)"] = max(structured, key=lambda d: structured[d])
    recommended = _recommendations(_fits(mlm(study.Y, study.X), study.hierarchy, 0, options),
                                   study.hierarchy)  # fmt: skip
    comparison = recommended.pop("_comparison")
    row.update(recommended)
    for depth in DEPTHS:
        relative = comparison.replicate.loc[str(depth), "relative_mse"]
        row[f"replicate relative MSE {depth}"] = round(relative, 3)
    return row


def _twelve_subclasses(seed: int, scales: dict[str, float]) -> Any:
    return simulate(60, 240, 1, proportions=[1.0] * 12, n_superclasses=3,
                    residuals=SHARED_NOISE, random_seed=seed, **scales)  # fmt: skip


def _simulated_row(
    label: str, truth: int, data: Any, study: Any, seed: int, options: dict[str, Any]
) -> dict[str, Any]:
    """One replicate: stage 1 on ``data``, true gains against ``study.B``, every criterion."""
    fit = mlm(data.Y, data.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, study.levels)
    fits = _fits(fit, tree, seed, options)
    stage_one = float(((fit.coef - study.B) ** 2).mean())
    gains = {
        depth: stage_one / float(((coefficient_matrix(idata) - study.B) ** 2).mean())
        for depth, idata in fits.items()
    }
    recommended = _recommendations(fits, tree)
    recommended.pop("_comparison")
    return {
        "setting": label,
        "seed": seed,
        "true depth": truth,
        **{f"gain {depth}": round(gain, 2) for depth, gain in gains.items()},
        "MSE-best": max(gains, key=lambda depth: gains[depth]),
        **recommended,
    }


if __name__ == "__main__":
    main()
