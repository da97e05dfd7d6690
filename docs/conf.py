"""Sphinx configuration of the jaxembed documentation.

Build (what CI runs, warnings are errors):
    sphinx-build -W --keep-going -b html docs docs/_build/html

Why Sphinx with MyST (as flax and optax) rather than MkDocs with mkdocstrings (as equinox): the
docstrings are Google style ("Args:", "Returns:"), which Sphinx's autodoc + napoleon render
as they are, the pages stay Markdown (MyST) that GitHub renders too, and ``sphinx-build -W``
turns every broken reference, unknown directive and malformed docstring into a failure.
"""

from __future__ import annotations

import os
import sys

# The documented package is the checkout this file belongs to, whatever is installed.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import jaxembed  # noqa: E402

project = "jaxembed"
author = "jaxembed authors"
copyright = "jaxembed authors"
release = jaxembed.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: `#section` anchors for headings down to ###, so pages link to each other's sections.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "substitution"]
# {{ version }} on a page: jaxembed.__version__ of the documented checkout.
myst_substitutions = {"version": release}

# autodoc: Google-style docstrings, members in source order, signatures without type noise.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not second object descriptions
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"jaxembed {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]

copybutton_prompt_text = r"\$ "
copybutton_prompt_is_regexp = True


def _source_defaults(cls) -> dict:
    """``{field: default as written}`` of a dataclass's annotated class attributes (flax Linen
    modules are dataclasses: their generated ``__init__`` has only the default values' reprs)."""
    import ast
    import inspect
    import textwrap

    out = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                out[node.target.id] = ast.get_source_segment(textwrap.dedent(inspect.getsource(klass)), node.value)
    return out


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
    """The class signature as the user calls it: flax NNX modules' metaclass defines
    ``__call__(*args, **kwargs)``, which autodoc would show, so take ``__init__``'s; Linen modules
    (dataclasses) get their fields' defaults as written and lose flax's ``parent``/``name``."""
    if what != "class":
        return None
    import dataclasses
    import inspect

    from sphinx.ext.autodoc.preserve_defaults import DefaultValue, update_defvalue
    from sphinx.util.inspect import stringify_signature

    try:
        if dataclasses.is_dataclass(obj):
            sig = inspect.signature(obj)
            written = _source_defaults(obj)
            params = [
                p.replace(default=DefaultValue(written[p.name])) if p.name in written else p
                for p in sig.parameters.values()
            ]
        elif signature == "(*args, **kwargs)":
            update_defvalue(app, obj.__init__, False)  # defaults as written in the source
            params = list(inspect.signature(obj.__init__).parameters.values())
        else:
            return None
    except (TypeError, ValueError):
        return None
    params = [p for p in params if p.name not in ("self", "parent", "name")]
    # Without annotations, as autodoc shows every signature here (they are in the description).
    sig = inspect.Signature(params)
    return stringify_signature(sig, show_annotation=False, show_return_annotation=False), None


def setup(app):
    app.connect("autodoc-process-signature", _constructor_signature)
