"""The email templates: one Jinja environment, each kind's templates compiled once per process,
and the dates in words they show.

Each kind is a folder of ``email_templates/`` holding ``subject.<lang>.txt``,
``body.<lang>.txt`` and ``body.<lang>.html`` for every language, extending ``_base/``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Literal

import css_inline
from jinja2 import BaseLoader, Environment, StrictUndefined, Template, TemplateNotFound, pass_context

from worker.mail.kinds import KINDS
from worker.rules.vocabulary import LANGUAGES

# Laid out by hand (fmt: skip): six months to a line.
MONTH_NAMES = {
    "it": ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno",
           "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre"),
    "en": ("January", "February", "March", "April", "May", "June",
           "July", "August", "September", "October", "November", "December"),
}  # fmt: skip


def format_long_date(day: date, language: str) -> str:
    """``31 marzo 2027`` / ``31 March 2027``; the first of the month is ``1º`` in Italian."""
    month = MONTH_NAMES[language][day.month - 1]
    number = "1º" if language == "it" and day.day == 1 else str(day.day)
    return f"{number} {month} {day.year}"


def format_date_with_article(day: date, language: str) -> str:
    """Italian: the date with its article, elided before a vowel: ``il 31 marzo 2027``,
    ``l'8 marzo 2027``, ``l'11 marzo 2027``.  English needs none: ``31 March 2027``."""
    text = format_long_date(day, language)
    if language != "it":
        return text
    return f"l'{text}" if day.day in (8, 11) else f"il {text}"


@pass_context
def _long_date_filter(context: Any, day: date) -> str:
    return format_long_date(day, context["language"])


@pass_context
def _date_with_article_filter(context: Any, day: date) -> str:
    return format_date_with_article(day, context["language"])


class _PackageResourceLoader(BaseLoader):
    """Templates read through importlib.resources, so they load from any kind of install."""

    def __init__(self, root: Traversable):
        self._root = root

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        path = self._root
        for part in template.split("/"):
            if part in ("", ".", "..") or part.startswith("__"):
                raise TemplateNotFound(template)
            path = path.joinpath(part)
        if not path.is_file():
            raise TemplateNotFound(template)
        return path.read_text(encoding="utf-8"), None, lambda: True

    def list_templates(self) -> list[str]:
        names: list[str] = []

        def walk(folder: Traversable, prefix: str) -> None:
            for entry in folder.iterdir():
                if entry.name.startswith(("__", ".")):
                    continue
                if entry.is_dir():
                    walk(entry, f"{prefix}{entry.name}/")
                elif entry.name.endswith((".txt", ".html")):
                    names.append(prefix + entry.name)

        walk(self._root, "")
        return sorted(names)


@cache
def template_environment() -> Environment:
    """The one Jinja environment of the process: HTML autoescaped, text not, undefined is an error."""
    environment = Environment(
        loader=_PackageResourceLoader(files("email_templates")),
        autoescape=lambda name: name is not None and name.endswith(".html"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )
    environment.filters["long_date"] = _long_date_filter
    environment.filters["date_with_article"] = _date_with_article_filter
    return environment


def template_name(kind: str, part: Literal["subject", "text", "html"], language: str) -> str:
    file_name = {"subject": "subject.{}.txt", "text": "body.{}.txt", "html": "body.{}.html"}[part]
    return f"{kind}/{file_name.format(language)}"


@cache
def compiled_templates() -> dict[tuple[str, str, str], Template]:
    """Every template of every kind and language, compiled once per process."""
    environment = template_environment()
    return {
        (kind, part, language): environment.get_template(template_name(kind, part, language))
        for kind in KINDS
        for language in LANGUAGES
        for part in ("subject", "text", "html")
    }


@cache
def css_inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


def compile_templates() -> None:
    """Compile every template now (once per process; what a fork inherits is not compiled again)."""
    compiled_templates()
    css_inliner()
