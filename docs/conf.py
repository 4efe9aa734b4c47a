"""Sphinx configuration: myst-nb (executed notebooks), autosummary API, accessors."""

import os

import sphinx_autosummary_accessors

import scarlet_xr

project = "scarlet_xr"
author = "scarlet_xr developers"
release = version = scarlet_xr.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autosummary_accessors",
]

templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# API reference from docstrings (NumPy style); members follow each module's __all__
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_imported_members = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# notebooks (docs/tutorials -> ../notebooks) are executed at build time, offline
nb_execution_mode = os.environ.get("SCARLET_XR_NB_EXECUTION", "force")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_merge_streams = True
myst_enable_extensions = ["dollarmath"]

html_theme = "sphinx_book_theme"
html_title = "scarlet_xr"
html_theme_options = {"show_toc_level": 2}
# MathJax comes with the page only where maths is used; no other CDN asset is needed
suppress_warnings = ["mystnb.unknown_mime_type"]
