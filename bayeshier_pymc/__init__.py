"""Bayesian hierarchical shrinkage of metabolite effects, on PyMC.

The submodules that ``import bayeshier_pymc`` does not need (the plots, which import
matplotlib's pyplot, the command line, the pipeline and its report) are
imported on first use: ``bh.plots.plot_shrinkage(...)`` works after ``import bayeshier_pymc as
bh`` alone (PEP 562).
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from bayeshier_pymc import preprocess
from bayeshier_pymc.calibration import known_truth_check, split_half_check
from bayeshier_pymc.datasets import demo_study
from bayeshier_pymc.depth_comparison import DepthComparison, compare_depths
from bayeshier_pymc.diagnostics import Diagnosis, diagnose
from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import add_log_likelihood, loo, problem_from_idata
from bayeshier_pymc.many_fits import fit_many
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.noise import TreeNoise, tree_noise
from bayeshier_pymc.persistence import load_results, save_results
from bayeshier_pymc.prediction import predict_new
from bayeshier_pymc.problem import ShrinkageProblem
from bayeshier_pymc.results import (
    coefficient_matrix,
    coefficient_summary,
    coefficient_table,
    display_table,
    group_effects,
    scale_summary,
)
from bayeshier_pymc.sampler_comparison import SamplerComparison, compare_samplers
from bayeshier_pymc.sampling import sample
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.simulate import SimulatedStudy, simulate, train_test_split
from bayeshier_pymc.streamed import theta_draws
from bayeshier_pymc.study import StudyResult, simulation_study

try:
    __version__ = version("bayeshier_pymc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

_LAZY_SUBMODULES = ("cli", "csv_inputs", "pipeline", "plots", "report")
"""Public submodules imported on first attribute access rather than with the package."""

__all__ = [
    "DepthComparison",
    "Diagnosis",
    "Estimates",
    "Hierarchy",
    "MLMFit",
    "SamplerComparison",
    "ShrinkageModel",
    "ShrinkageProblem",
    "SimulatedStudy",
    "StudyResult",
    "TreeNoise",
    "__version__",
    "add_log_likelihood",
    "coefficient_matrix",
    "coefficient_summary",
    "coefficient_table",
    "compare_depths",
    "compare_samplers",
    "demo_study",
    "diagnose",
    "display_table",
    "fit_many",
    "group_effects",
    "known_truth_check",
    "load_results",
    "loo",
    "mlm",
    "predict_new",
    "preprocess",
    "problem_from_idata",
    "sample",
    "save_results",
    "scale_summary",
    "simulate",
    "simulation_study",
    "split_half_check",
    "theta_draws",
    "train_test_split",
    "tree_noise",
]


def __getattr__(name: str) -> ModuleType:
    """Import a public submodule left out of ``import bayeshier_pymc`` on first use (PEP 562)."""
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_SUBMODULES})
