"""Figures of a shrinkage fit: every function takes ``ax=`` and returns the axes.

Importing this package imports matplotlib.pyplot; the core modules never import it themselves.
"""

from bayeshier_pymc.plots.compare import plot_compare
from bayeshier_pymc.plots.forest import plot_forest_by_group
from bayeshier_pymc.plots.group_effects import plot_group_effects
from bayeshier_pymc.plots.sampler_comparison import plot_sampler_comparison
from bayeshier_pymc.plots.shrinkage import plot_shrinkage
from bayeshier_pymc.plots.stage1_comparison import plot_stage1_vs_shrunken
from bayeshier_pymc.plots.tau import plot_tau, plot_tau_prior_posterior
from bayeshier_pymc.plots.volcano import plot_volcano

__all__ = [
    "plot_compare",
    "plot_forest_by_group",
    "plot_group_effects",
    "plot_sampler_comparison",
    "plot_shrinkage",
    "plot_stage1_vs_shrunken",
    "plot_tau",
    "plot_tau_prior_posterior",
    "plot_volcano",
]
