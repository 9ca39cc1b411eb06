"""Gibbs sampling of the tree model: shared sweeps, a PyMC step method and a NumPy engine.

See ``docs/gibbs.md`` for the schemes, the τ mixing and the storage choices;
:func:`bayeshier_pymc.sampling.sample_gibbs` runs either and returns the InferenceData.
"""

from bayeshier_pymc.gibbs.engine import SCHEMES, run_engine
from bayeshier_pymc.gibbs.step import TreeGibbs

__all__ = ["SCHEMES", "TreeGibbs", "run_engine"]
