"""Stage-1 speed at the COPDGene size (n=784 samples, m=999 features, p=10 covariates).

Run ``python benchmarks/bench_mlm.py``. Prints, measured in this run with best-of-several
timings:

* the time of ``mlm(Y, X)`` with standard errors over one ``numpy.linalg.lstsq(X, Y)``
  (goal <= 1.5);
* the time of 1000 batched row permutations over a loop of 1000 ``lstsq`` calls on row-permuted
  ``Y`` (goal <= 0.2).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bayeshier_pymc.mlm import mlm

N_OBS, N_FEATURES, N_COVARIATES = 784, 999, 10
FIT_GOAL, PERM_GOAL = 1.5, 0.2


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Return the smallest wall time of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``Y``, the covariates (without intercept) and the full design."""
    rng = np.random.default_rng(seed)
    covariates = rng.normal(size=(N_OBS, N_COVARIATES - 1))
    design = np.column_stack([np.ones(N_OBS), covariates])
    coef = rng.normal(scale=0.2, size=(N_COVARIATES, N_FEATURES))
    y = design @ coef + rng.normal(size=(N_OBS, N_FEATURES))
    return y, covariates, design


def fit_with_se(y: np.ndarray, covariates: np.ndarray) -> object:
    """Fit the model and materialise the standard errors."""
    return mlm(y, covariates).se


def lstsq_loop(y: np.ndarray, design: np.ndarray, n_perms: int, seed: int) -> None:
    """The naive permutation test: one ``lstsq`` per row permutation of ``Y``."""
    rng = np.random.default_rng(seed)
    for _ in range(n_perms):
        np.linalg.lstsq(design, y[rng.permutation(N_OBS)], rcond=None)


def main() -> None:
    """Time the fit and the permutation test and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-perms", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    y, covariates, design = make_data()
    fit_with_se(y, covariates)

    lstsq = best_time(lambda: np.linalg.lstsq(design, y, rcond=None), args.repeats)
    fit = best_time(lambda: fit_with_se(y, covariates), args.repeats)
    print(f"lstsq: {lstsq * 1e3:.2f} ms, fit with SEs: {fit * 1e3:.2f} ms")
    print(f"fit/lstsq ratio: {fit / lstsq:.2f} (goal <= {FIT_GOAL})")

    model = mlm(y, covariates)
    perm_repeats = max(2, args.repeats // 5)
    batched = best_time(
        lambda: model.permutation_test(args.n_perms, random_seed=1, progress=False), perm_repeats
    )
    loop = best_time(lambda: lstsq_loop(y, design, args.n_perms, seed=1), 2)
    print(f"{args.n_perms} permutations: batched {batched:.2f} s, lstsq loop {loop:.2f} s")
    print(f"permutations/lstsq-loop ratio: {batched / loop:.3f} (goal <= {PERM_GOAL})")


if __name__ == "__main__":
    main()
