"""Italian by default, English for holders whose language is en.

The pages keep both wordings side by side: ``t("Italiano {x}", "English {x}", x=...)``.
The language of a page is the mailbox's (or the order's) language; pages that
know no holder, such as a broken link, follow the browser's Accept-Language.
"""

from __future__ import annotations

from datetime import date

from flask import g, has_app_context, has_request_context, request

from worker.mail.templates import format_date_with_article, format_long_date
from worker.rules.vocabulary import DEFAULT_LANGUAGE, LANGUAGES, METHOD_LABELS, PLAN_LABELS, format_euro, label


def language() -> str:
    """The page's language: the one :func:`set_language` chose, else the browser's (read once, when first
    asked: a link page takes the holder's and never parses Accept-Language)."""
    if not has_app_context():
        return DEFAULT_LANGUAGE
    value = getattr(g, "language", None)
    if value is None:
        value = g.language = best_language(request.accept_languages) if has_request_context() else DEFAULT_LANGUAGE
    return value


def set_language(value: str | None) -> str:
    g.language = value = value if value in LANGUAGES else DEFAULT_LANGUAGE
    return value


def best_language(accept_languages) -> str:
    return accept_languages.best_match(LANGUAGES, default=DEFAULT_LANGUAGE) or DEFAULT_LANGUAGE


def translate(lang: str, italian: str, english: str, /, **values) -> str:
    text = english if lang == "en" else italian
    return text.format(**values) if values else text


def translate_in_context(italian: str, english: str, /, **values) -> str:
    return translate(language(), italian, english, **values)


def plan_label(plan: str) -> str:
    return PLAN_LABELS.get(str(plan), str(plan))


def method_label(method: str) -> str:
    """A payment method's label in the page's language, capitalised as a choice on its own."""
    text = label(METHOD_LABELS, method, language())
    return text[:1].upper() + text[1:]


def long_date(day: date | None) -> str:
    if day is None:
        return ""
    return format_long_date(day, language())


def euro(cents: int | None) -> str:
    """``1.234,56 €`` in Italian, ``€1,234.56`` in English."""
    if cents is None:
        return ""
    return format_euro(int(cents), language())


def date_with_article(day: date | None) -> str:
    """Italian ``il 31 marzo 2027`` / ``l'8 marzo 2027``; English ``31 March 2027``."""
    if day is None:
        return ""
    return format_date_with_article(day, language())
