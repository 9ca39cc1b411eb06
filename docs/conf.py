"""Sphinx configuration for the bayeshier_pymc documentation."""

from importlib.metadata import version as _version

project = "bayeshier_pymc"
author = "bayeshier_pymc developers"
copyright = "2026, bayeshier_pymc developers"
release = _version("bayeshier_pymc")

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_nb",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
# _static holds files written by code (docs/examples) that pages include, not pages
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute", "_static"]
# the tutorial notebooks live in ../notebooks; docs/notebooks is a symlink to that folder
autosummary_generate = True
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
myst_enable_extensions = ["dollarmath", "amsmath", "deflist"]
nb_execution_mode = "off"  # notebooks are committed executed; the test suite runs them
nb_merge_streams = True
suppress_warnings = ["mystnb.unknown_mime_type", "misc.highlighting_failure"]
html_theme = "pydata_sphinx_theme"
html_title = "bayeshier_pymc"
html_theme_options = {"navigation_with_keys": False}
intersphinx_mapping = {}
