"""Sphinx configuration for the wsseg documentation."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "wsseg"
author = "wsseg developers"
copyright = "2026, wsseg developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]
autodoc_default_options = {}
autoclass_content = "class"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_mock_imports = ["pydensecrf", "pydensecrf2"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shape", "params_style"), ("Source", "notes_style")]
intersphinx_mapping = {}
nitpicky = False
suppress_warnings = ["ref.python"]
html_theme = "furo"
html_title = "wsseg"
exclude_patterns = ["_build"]
