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
    # Serves MathJax 3 from _static/mathjax (sets mathjax_path), so math renders offline, no CDN.
    "sphinx-mathjax-offline",
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
napoleon_custom_sections = [("Source", "notes_style")]  # "Shape": see _shape_section_to_field below
intersphinx_mapping = {}
nitpicky = False
suppress_warnings = ["ref.python"]
html_theme = "furo"
html_title = "wsseg"
html_static_path = ["_static"]
html_css_files = ["wsseg.css"]  # wider content column: no scrollbar on long equations and code
exclude_patterns = ["_build"]


def _shape_section_to_field(app, what, name, obj, options, lines):
    """Turn a Google-style ``Shape:`` section into a ``:Shape:`` field before napoleon runs.

    Shape sections are PyTorch-style bullet lists (``- x: (B, C, H, W)``), which napoleon's
    ``params_style`` would mangle into parameter names ("- x"). As a field of the same field list as
    Parameters / Returns / Raises (not a rubric, as ``notes_style`` would make it), the list renders
    as written and ``autodoc_typehints = "description"`` still merges into a single field list.
    """
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != "Shape:":
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        body, i = [], i + 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
            body.append(lines[i])
            i += 1
        trailing = 0
        while body and not body[-1].strip():
            body.pop()
            trailing += 1
        out.append(" " * indent + ":Shape:")
        out.extend(b for b in body)
        out.extend([""] * trailing)
    lines[:] = out


def setup(app):
    # Before napoleon (priority 500), so that it passes the field through unchanged.
    app.connect("autodoc-process-docstring", _shape_section_to_field, priority=400)
