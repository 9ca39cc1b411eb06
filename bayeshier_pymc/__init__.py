"""Bayesian hierarchical shrinkage of metabolite effects, on PyMC."""

from importlib.metadata import PackageNotFoundError, version

from bayeshier_pymc.estimates import Estimates
from bayeshier_pymc.hierarchy import Hierarchy
from bayeshier_pymc.inference_data import loo
from bayeshier_pymc.shrinkage import ShrinkageModel
from bayeshier_pymc.simulate import SimulatedStudy, simulate, train_test_split

try:
    __version__ = version("bayeshier_pymc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Estimates",
    "Hierarchy",
    "ShrinkageModel",
    "SimulatedStudy",
    "__version__",
    "loo",
    "simulate",
    "train_test_split",
]
