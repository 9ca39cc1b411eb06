"""Bayesian hierarchical shrinkage of metabolite effects, on PyMC."""

from importlib.metadata import PackageNotFoundError, version

from bayeshier_pymc import preprocess
from bayeshier_pymc.datasets import demo_study
from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import loo
from bayeshier_pymc.mlm import MLMFit, mlm
from bayeshier_pymc.results import (
    coefficient_matrix,
    coefficient_summary,
    coefficient_table,
    group_effects,
    scale_summary,
)
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.simulate import SimulatedStudy, simulate, train_test_split

try:
    __version__ = version("bayeshier_pymc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Estimates",
    "Hierarchy",
    "MLMFit",
    "ShrinkageModel",
    "SimulatedStudy",
    "__version__",
    "coefficient_matrix",
    "coefficient_summary",
    "coefficient_table",
    "demo_study",
    "group_effects",
    "loo",
    "mlm",
    "preprocess",
    "scale_summary",
    "simulate",
    "train_test_split",
]
