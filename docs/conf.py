"""Sphinx configuration of the samlearn documentation.

Build (warnings are errors): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The "paper vs samlearn" table is generated from :mod:`samlearn.paper` at build time.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's samlearn, also when it is not installed

import samlearn  # noqa: E402
from samlearn.paper import DIFFERENCES  # noqa: E402

project = "samlearn"
author = "samlearn developers"
release = version = samlearn.__version__
copyright = "samlearn developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"            # the numpydoc sections say the types
autodoc_class_signature = "separated"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Conventions", "notes_style")]
myst_heading_anchors = 3
# numpydoc types such as "ndarray of shape (n, ndim)" are split into words that Sphinx tries to
# cross-reference; "shape" and "ndim" name many attributes, which is not an error in the docs
suppress_warnings = ["myst.header", "ref.python"]
nitpicky = False

html_theme = "alabaster"
html_theme_options = {"description": "self-supervised anatomical embeddings", "fixed_sidebar": True}
html_static_path = []


def _skip_member(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated metadata-routing setters (``set_fit_request``, ...):
    samlearn does not route metadata, and their docstrings refer to scikit-learn's glossary."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return skip


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)


def _paper_table() -> str:
    """The rows of samlearn.paper.DIFFERENCES as an rst list-table."""
    def cell(v):
        return "(cannot be switched off)" if v is None else f"``{v!r}``" if not isinstance(v, str) or v in (
            "cosine", "constant", "auto", "coarse", "ransac") else v

    rows = [".. list-table::", "   :header-rows: 1", "   :widths: 18 16 16 16 34", "",
            "   * - estimator", "     - parameter", "     - samlearn default", "     - the paper's",
            "     - what samlearn's default adds"]
    for d in DIFFERENCES:
        rows += [f"   * - :class:`~samlearn.{d.estimator}`",
                 f"     - ``{d.parameter}``" if d.parameter else "     - (none)",
                 f"     - {cell(d.default) if d.parameter else 'always'}",
                 f"     - {cell(d.paper) if d.parameter else '(cannot be switched off)'}",
                 f"     - {d.what}"]
    return "\n".join(rows) + "\n"


(HERE / "_generated").mkdir(exist_ok=True)
(HERE / "_generated" / "paper_table.rst").write_text(_paper_table())
