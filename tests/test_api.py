"""The public API: exported names exist and are documented; plots take ax=."""

import inspect

import bayeshier_pymc as bh
from bayeshier_pymc import plots


def test_every_exported_name_exists_and_is_documented():
    for name in bh.__all__:
        obj = getattr(bh, name)
        if name != "__version__":
            assert inspect.getdoc(obj), name


def test_plots_take_ax_and_are_exported():
    assert set(plots.__all__) == {
        "plot_shrinkage",
        "plot_forest_by_group",
        "plot_volcano",
        "plot_tau",
        "plot_tau_prior_posterior",
        "plot_sampler_comparison",
        "plot_compare",
        "plot_group_effects",
        "plot_stage1_vs_shrunken",
    }
    for name in plots.__all__:
        assert "ax" in inspect.signature(getattr(plots, name)).parameters, name
