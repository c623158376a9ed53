"""Griffe extension for the documentation site: the source's Sphinx roles (:class:`X`, :func:`~a.b`) as code."""

from __future__ import annotations

import re

from griffe import Extension, Object

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


class SphinxRoles(Extension):
    """Rewrite ``:role:`target``` as ```target``` in every docstring before it is parsed."""

    def on_instance(self, *, obj: Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
