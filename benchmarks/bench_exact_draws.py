"""Exact draws given τ after NUTS: the compiled passes against the NumPy reference algebra.

On the research simulation (``bench_nuts.research_model``: p=10, m=770, one subclass level,
tree-structured noise), times :func:`bayeshier_pymc.sampling.draw_given_scales` on fixed scale
draws (4 chains × 1000 draws, τ uniform on [0.05, 0.2]) beside the reference algebra that it
replaced (:func:`~bayeshier_pymc.gaussian_tree.upward_pass` and
:func:`~bayeshier_pymc.gaussian_tree.draw_tree` per chain), alternating ``--runs`` times, and
prints the median times, their ratio and the largest difference of the draws (the same normals
in the same order: rounding only).

    python benchmarks/bench_exact_draws.py [--runs 3] [--draws 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from bench_nuts import research_model

from bayeshier_pymc.gaussian_tree import draw_tree, upward_pass
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.sampling import draw_given_scales


def reference_draws(problem: ShrinkageProblem, tau: np.ndarray, seed: int) -> np.ndarray:
    """θ drawn chain by chain with the NumPy reference algebra (the former implementation)."""
    rng = np.random.default_rng(seed)
    priors, index, noise = problem.priors, problem.index, problem.noise
    theta = []
    for chain_tau in tau:
        scales = problem.algebra_scales(chain_tau)
        messages = upward_pass(
            problem.algebra_b, problem.var_b, scales, index, priors.mu0, priors.s0, noise=noise
        )
        theta.append(draw_tree(messages, scales, index, priors.mu0, priors.s0, rng, noise=noise)[2])
    return np.stack(theta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--draws", type=int, default=1000)
    args = parser.parse_args()
    problem = research_model().problem
    tau = np.random.default_rng(0).uniform(
        0.05, 0.2, (4, args.draws, problem.b.shape[0], len(problem.tree.levels) + 1)
    )
    draw_given_scales(problem, tau[:, :2], np.random.default_rng(1))  # compile the kernels
    times: dict[str, list[float]] = {"reference": [], "compiled": []}
    for _ in range(args.runs):
        start = time.perf_counter()
        old = reference_draws(problem, tau, 1)
        times["reference"].append(time.perf_counter() - start)
        start = time.perf_counter()
        new = draw_given_scales(problem, tau, np.random.default_rng(1))["theta"]
        times["compiled"].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:>9}: {value:6.2f} s (median of {args.runs})")
    print(f"reference / compiled: {medians['reference'] / medians['compiled']:.1f}x")
    print(f"largest |difference| of the θ draws: {np.abs(new - old).max():.1e}")


if __name__ == "__main__":
    main()
