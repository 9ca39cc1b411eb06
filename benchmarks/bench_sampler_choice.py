"""NUTS against the Gibbs engine on the user guide's model (QMDiab plasma, both levels).

Run ``python benchmarks/bench_sampler_choice.py [--data ../shared/data]``. Builds the model of
``docs/user_guide.md`` (309 metabolites, 4 covariates, sub- and super-pathway, correlated
noise), samples it with both samplers at their defaults (4 chains × 1000 draws after 1000
tuning steps, seed 1) and prints their wall times, sampling times, the slowest r̂ and bulk ESS
of each, and :func:`~bayeshier_pymc.compare_samplers`' agreement and ESS per second. The FAQ
(``docs/faq.md``) includes this output from ``docs/benchmarks/sampler_choice_qmdiab.txt``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import arviz as az
import pandas as pd

import bayeshier_pymc as bh

LEVELS = ["SUB_PATHWAY", "SUPER_PATHWAY"]
FORMULA = "AGE + BMI + C(GENDER) + C(T2D)"
COVARIATES = ["AGE", "BMI", "C(GENDER)[T.1]", "C(T2D)[T.1]"]
CHECKED = ["tau", "mu", *(f"{level}_mean" for level in LEVELS), "theta"]


def guide_model(data_dir: Path) -> bh.ShrinkageModel:
    """The user guide's stage-2 model on QMDiab plasma."""
    raw = pd.read_csv(data_dir / "qmdiab_plasma_data.csv", index_col="sample_id")
    samples = pd.read_csv(data_dir / "qmdiab_plasma_samples.csv", index_col="sample_id")
    features = pd.read_csv(data_dir / "qmdiab_plasma_features.csv", index_col="featureID")
    tree = bh.Hierarchy.from_frame(features, LEVELS, drop_unannotated=True)
    fit = bh.mlm(bh.preprocess.preprocess(raw[tree.features]), FORMULA, data=samples)
    return bh.ShrinkageModel(fit, tree, covariates=COVARIATES)


def main() -> None:
    """Sample with both samplers and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="data folder")
    parser.add_argument("--seed", type=int, default=1, help="random seed of both samplers")
    args = parser.parse_args()
    model = guide_model(args.data)
    print(f"{model!r}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; bayeshier_pymc {bh.__version__}")
    runs = {}
    for sampler in ("nuts", "gibbs"):
        start = time.perf_counter()
        idata = model.sample(sampler, random_seed=args.seed, progressbar=False)
        wall = time.perf_counter() - start
        summary = az.summary(idata, var_names=CHECKED, kind="diagnostics")
        sampling = idata.attrs["sampling_time"]
        print(
            f"{idata.attrs['sampler']}: wall {wall:.1f} s (sampling {sampling:.1f} s); "
            f"max r̂ {summary['r_hat'].max():.3f}; min bulk ESS {summary['ess_bulk'].min():.0f}"
        )
        runs[sampler] = idata
    print(bh.compare_samplers(runs["nuts"], runs["gibbs"], names=("NUTS", "Gibbs")))


if __name__ == "__main__":
    main()
