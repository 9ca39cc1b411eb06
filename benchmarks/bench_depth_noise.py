"""Which depth PSIS-LOO recommends when the residuals are correlated: tree noise against none.

Run ``python benchmarks/bench_depth_noise.py [--seeds 1 2 3] [--draws 1000]``. Twelve subclasses
of 20 metabolites in three superclasses, one covariate, n = 60, residual noise shared within
subclasses (sd 0.5), within superclasses (sd 0.4) and by all metabolites (sd 0.3), under three
truths: no group effects, subclass effects only, and both levels. Each seed's data set is
fitted at every depth by :func:`~bayeshier_pymc.depth_comparison.compare_depths` (Gibbs
engine, two chains) with the default tree-structured noise and with ``noise="independent"``,
and scored by marginal and by group LOO (one subclass left out). Per data set it prints the
sd of the true subclass means, the depth each LOO recommends (by the LOO rule), and two
paired elpd differences with their standard errors: depth 1 over depth 0 by marginal LOO and
depth 2 over depth 1 by group LOO. ``docs/model_comparison.md`` includes the default run's
output from ``docs/benchmarks/depth_noise.txt``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
import pandas as pd

from bayeshier_pymc import Hierarchy, mlm
from bayeshier_pymc.depth_comparison import (
    DepthComparison,
    RecommendationRule,
    compare_depths,
    compare_fits,
)
from bayeshier_pymc.simulate import ResidualNoise, simulate

SHARED_NOISE = ResidualNoise(subclass_sd=0.5, superclass_sd=0.4, global_sd=0.3)
TRUTHS = {
    "0: no group effects": {"tau_u": 0.0, "tau_v": 0.0, "tau_w": 0.15},
    "1: subclasses": {"tau_u": 0.0, "tau_v": 0.4, "tau_w": 0.05},
    "2: both levels": {"tau_u": 0.6, "tau_v": 0.05, "tau_w": 0.05},
}
NOISE_MODELS = ("auto", "independent")
BY_LOO = RecommendationRule(criterion="loo")
"""Both recommendations are by the PSIS-LOO rule (the default criterion is the fresh replicate)."""


def paired_difference(comparison: DepthComparison, better: int, worse: int) -> str:
    """``elpd(better) − elpd(worse) ± se`` from the pointwise values of both depths."""
    difference = np.ravel(comparison.elpd[better].loo_i) - np.ravel(comparison.elpd[worse].loo_i)
    se = np.sqrt(difference.size * np.var(difference))
    return f"{difference.sum():.1f} ± {se:.1f}"


def one_data_set(truth: dict[str, float], seed: int, draws: int) -> list[dict[str, object]]:
    """Both noise models' recommendations and elpd differences on one simulated data set."""
    study = simulate(60, 240, 1, proportions=[1.0] * 12, n_superclasses=3,
                     residuals=SHARED_NOISE, random_seed=seed, **truth)  # fmt: skip
    fit = mlm(study.Y, study.X, x_intercept=False)
    tree = Hierarchy.from_frame(study.annotations, ["subclass", "superclass"])
    true_means = study.B.to_pandas().T.groupby(study.annotations["subclass"]).mean()
    rows = []
    for noise in NOISE_MODELS:
        marginal = compare_depths(fit, tree, sampler="gibbs", noise=noise, draws=draws,
                                  chains=2, random_seed=seed, progressbar=False,
                                  rule=BY_LOO, effect_scale="raw")  # fmt: skip
        group = compare_fits(marginal.fits, tree, loo="group", rule=BY_LOO)
        rows.append(
            {
                "seed": seed,
                "noise": "tree" if noise == "auto" else noise,
                "sd of subclass means": round(float(true_means.to_numpy().std(ddof=1)), 2),
                "marginal: recommended": marginal.recommended,
                "group: recommended": group.recommended,
                "marginal: depth 1 − 0": paired_difference(marginal, 1, 0),
                "group: depth 2 − 1": paired_difference(group, 2, 1),
            }
        )
    return rows


def main() -> None:
    """Run every truth and seed and print one table per truth."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.getLogger("pymc").setLevel(logging.ERROR)
    start = time.perf_counter()
    for name, truth in TRUTHS.items():
        rows = [row for seed in args.seeds for row in one_data_set(truth, seed, args.draws)]
        scales = ", ".join(f"{key} = {value}" for key, value in truth.items())
        print(f"truth {name} ({scales})")
        print(pd.DataFrame(rows).to_string(index=False))
        print()
    print(f"Gibbs engine, 2 chains × {args.draws} draws; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
