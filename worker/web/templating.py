"""Templates compiled once per language, with their fixed texts as constants.

The pages keep both wordings side by side, ``t("Italiano", "English")``, and
``t`` picks one at run time on every call (worker.web.i18n).  On the link page,
the page every holder opens (bench/link_handler.sh), those calls were nearly
half of the template's time.  A template asked for as ``localised(name,
language)`` ("@it/link.html", "@en/link.html") is the same source compiled
for that language: every ``t()`` whose two texts are literals becomes the
chosen literal (``.format(...)`` of it, when it has values), and
``language()`` the language itself.  Its ``extends``, ``include`` and
``import`` get the same language.

The output is the same: a literal is escaped when the template is compiled,
as the text ``t()`` returns is escaped when it is written (autoescape stays
on), and values go through the same ``str.format``.  A template that binds a
name ``t`` or ``language`` of its own is compiled as it is.
"""

from __future__ import annotations

import re

from flask import current_app, has_request_context, request, url_for
from flask.templating import Environment as FlaskEnvironment
from jinja2 import BaseLoader, nodes
from jinja2.visitor import NodeTransformer

from worker.web.i18n import LANGUAGES

_LOCALISED_RE = re.compile(r"@([a-z]{2})/(.+)")


def localised(name: str, language: str) -> str:
    """The name of ``name`` compiled for ``language`` ("it" or "en")."""
    if language not in LANGUAGES:
        raise ValueError(f"no such language: {language!r}")
    return f"@{language}/{name}"


_splits: dict[str | None, tuple[str | None, str | None]] = {}


def _split(name: str | None) -> tuple[str | None, str | None]:
    """(language, template name) of a template name; (None, name) for a name that is not localised."""
    split = _splits.get(name)
    if split is None:
        match = _LOCALISED_RE.fullmatch(name or "")
        split = (None, name) if match is None or match.group(1) not in LANGUAGES else (match.group(1), match.group(2))
        if len(_splits) < 1024:  # the templates' names: a handful
            _splits[name] = split
    return split


def static_url(filename: str) -> str:
    """``url_for("static", filename=filename)``, built once per application root (SCRIPT_NAME).

    A relative static URL depends on nothing else: every page's stylesheet link
    was a URL build, about a tenth of the link page's template (bench/link_handler.sh).
    """
    app = current_app._get_current_object()
    key = (request.script_root if has_request_context() else None, filename)
    cache = app.extensions.setdefault("pec_static_urls", {})
    url = cache.get(key)
    if url is None:
        url = url_for("static", filename=filename)
        if len(cache) < 256:
            cache[key] = url
    return url


class _FoldTranslations(NodeTransformer):
    def __init__(self, language: str) -> None:
        self.language = language
        self.index = 1 if language == "en" else 0  # t(italian, english)

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        node = self.generic_visit(node)
        callee = node.node
        if not isinstance(callee, nodes.Name) or node.dyn_args is not None or node.dyn_kwargs is not None:
            return node
        if callee.name == "language" and not node.args and not node.kwargs:
            return nodes.Const(self.language, lineno=node.lineno)
        if callee.name != "t" or len(node.args) != 2:
            return node
        if not all(isinstance(arg, nodes.Const) and isinstance(arg.value, str) for arg in node.args):
            return node
        text = nodes.Const(node.args[self.index].value, lineno=node.lineno)
        if not node.kwargs:
            return text
        # t(it, en, name=value) is text.format(name=value), as worker.web.i18n.translate does it.
        return nodes.Call(
            nodes.Getattr(text, "format", "load", lineno=node.lineno), [], node.kwargs, None, None, lineno=node.lineno
        )


def _binds(tree: nodes.Template, names: set[str]) -> bool:
    return any(name.name in names and name.ctx in ("store", "param") for name in tree.find_all(nodes.Name))


class Environment(FlaskEnvironment):
    """Flask's Jinja environment, with the language-compiled templates (:func:`localised`)."""

    def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
        language, _ = _split(name)
        if language is not None and isinstance(source, str):
            tree = self.parse(source, name, filename)
            if not _binds(tree, {"t", "language"}):
                tree = _FoldTranslations(language).visit(tree)
                tree.set_environment(self)
            source = tree
        return super().compile(source, name, filename, raw, defer_init)

    def join_path(self, template: str, parent: str) -> str:
        language, _ = _split(parent)
        if language is not None and _split(template)[0] is None:
            return localised(template, language)
        return template


class LocalisedLoader(BaseLoader):
    """Reads "@<language>/<name>" as "<name>" from the loader it wraps (Flask's own)."""

    def __init__(self, loader: BaseLoader) -> None:
        self.loader = loader

    def get_source(self, environment, template):
        return self.loader.get_source(environment, _split(template)[1])

    def list_templates(self):
        return self.loader.list_templates()
