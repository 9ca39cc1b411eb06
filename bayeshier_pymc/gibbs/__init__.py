"""Gibbs sampling of the tree model: shared updates, a PyMC step method and a NumPy engine.

See ``docs/gibbs.md`` for the schemes, the τ mixing and the storage choices.
"""

from bayeshier_pymc.gibbs.engine import SCHEMES, sample_gibbs
from bayeshier_pymc.gibbs.step import TreeGibbs

__all__ = ["SCHEMES", "TreeGibbs", "sample_gibbs"]
