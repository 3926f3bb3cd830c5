"""The import's checks of one value: dates, months, whole numbers, booleans, domains, cells.

Pure functions of the text of one cell.  Each returns the value as the
import stages it (text) or raises ``ValueError`` with the message that goes
after ``line N, column NAME:``.  The costly ones are cached: a file repeats
its dates, plans and numbers on line after line.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import date
from functools import lru_cache
from typing import Any

from config import catalogue
from worker.rules import vocabulary

#: The plans and languages a row may name; the one plan whose extra space the import limits.
PLANS, LANGUAGES, STANDARD = vocabulary.PLANS, vocabulary.LANGUAGES, vocabulary.Plan.STANDARD.value

#: The renewal frequency, in years (catalogue: 1 to 5, 1 to 2 with a promo).
MAX_RENEWAL_YEARS = catalogue.MAX_YEARS
MAX_PROMO_RENEWAL_YEARS = catalogue.MAX_PROMO_YEARS
#: The extra space a Standard mailbox may have (the catalogue's limit).
MAX_STANDARD_EXTRA_SPACE_GB = catalogue.PLAN_MAX_EXTRA_SPACE_GB[STANDARD]
#: The plans with an archive, where extra archive space may be bought.
PLANS_WITH_ARCHIVE = tuple(plan for plan in PLANS if catalogue.PLAN_MAX_EXTRA_ARCHIVE_GB[plan])

INT32_MAX = 2**31 - 1
#: The longest account login.
ACCOUNT_MAX = 254
#: The years a date of the file may fall in (``expires_on``, ``domain_expires_on``,
#: ``card_expiry``).  Outside them a date is a mistake (PEC began in 2005), and the schedule's
#: arithmetic (three months before expiry, five years of renewal, 91 days to deletion) stays far
#: from the calendar's ends: ``0001-01-01`` or ``9999-12-31`` would overflow it.
FIRST_YEAR = 2000
LAST_YEAR = 2199

#: Any C0/C1 control character (CR and LF included) or a byte that was not UTF-8
#: (kept as a lone surrogate by the "surrogateescape" error handler).
BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
#: Any character that ``str.isspace`` calls a space.
SPACE_RE = re.compile(r"\s")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
_UINT_RE = re.compile(r"[0-9]{1,10}")
_PAYMENT_METHOD_RE = re.compile(r"[A-Za-z0-9_\-.]{1,200}")
_DOMAIN_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: Booleans as staged: "1" and "0" read as true and false in PostgreSQL and SQLite alike.
BOOLEANS = {"true": "1", "false": "0"}
#: Each plan and language as a row writes it most often, mapped to one string object each.
PLAN_NAMES = {plan: plan for plan in PLANS}
LANGUAGE_CODES = {language: language for language in LANGUAGES}

#: Records a problem with a column, unless that column already has one.
Problem = Callable[[str, str], object]


def checked(value: str, column: str, checker: Callable[[str], Any], problem: Problem) -> Any:
    """``checker(value)``, or None when the value is bad (then ``problem`` is told why)."""
    try:
        return checker(value)
    except ValueError as error:
        problem(column, str(error))
        return None


def stripped(joined: str) -> bool:
    """Whether no cell would change with ``str.strip``, given the cells joined with NUL.

    Only for ASCII cells without a control character (:data:`BAD_CHAR_RE`):
    there, a space is the only character ``str.strip`` removes, and a NUL
    can only be a separator.
    """
    return not (joined.startswith(" ") or joined.endswith(" ") or " \x00" in joined or "\x00 " in joined)


def printable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD, safe to print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def bad_char_problem(value: str) -> str:
    """What is wrong with ``value``, which :data:`BAD_CHAR_RE` matches."""
    match = BAD_CHAR_RE.search(value)
    assert match is not None
    char = match.group()
    if "\udc80" <= char <= "\udcff":
        byte = ord(char) - 0xDC00
        return f"is not UTF-8 (byte 0x{byte:02X} at character {match.start() + 1}): save the file as UTF-8"
    if char in "\r\n":
        return "contains a line break"
    return f"contains the control character U+{ord(char):04X}"


def account_problem(login: str) -> str | None:
    """What is wrong with an account login (given, stripped), or None."""
    if len(login) > ACCOUNT_MAX:
        return f"is {len(login)} characters long; at most {ACCOUNT_MAX}"
    # Printable ASCII has one space character, found quicker with ``in``.
    if (" " in login) if login.isascii() and login.isprintable() else SPACE_RE.search(login):
        return f"{login!r} contains a space"
    return None


def check_plan(text: str) -> str:
    """A plan's name, in any case: the name."""
    plan = PLAN_NAMES.get(text) or PLAN_NAMES.get(text.lower())
    if plan is None:
        raise ValueError(f"{text!r} is not a plan: one of {', '.join(PLANS)}")
    return plan


def check_language(text: str) -> str:
    """A language's code, in any case: the code."""
    language = LANGUAGE_CODES.get(text) or LANGUAGE_CODES.get(text.lower())
    if language is None:
        raise ValueError(f"{text!r} is not a language: {' or '.join(LANGUAGES)}")
    return language


def check_payment_method(text: str) -> str:
    """A payment token as the gateway gave it."""
    if not _PAYMENT_METHOD_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a payment token: 1 to 200 letters, digits, '_', '-' or '.'")
    return text


@lru_cache(maxsize=65536)
def check_date(text: str) -> str:
    """A real date as YYYY-MM-DD, from :data:`FIRST_YEAR` to :data:`LAST_YEAR`: the text itself."""
    if _DATE_RE.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            _check_year(text, day.year)
            return text
    raise ValueError(f"{text!r} is not a real date as YYYY-MM-DD")


@lru_cache(maxsize=4096)
def check_card_expiry(text: str) -> str:
    """YYYY-MM: the last day of that month, as YYYY-MM-DD."""
    match = _MONTH_RE.fullmatch(text)
    if match:
        year, month = int(match.group(1)), int(match.group(2))
        if 1 <= month <= 12:
            _check_year(text, year)
            return date(year, month, calendar.monthrange(year, month)[1]).isoformat()
    raise ValueError(f"{text!r} is not a month as YYYY-MM")


def _check_year(text: str, year: int) -> None:
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"{text!r} is not in the years {FIRST_YEAR} to {LAST_YEAR}")


@lru_cache(maxsize=65536)
def parse_uint(text: str) -> int:
    """A whole number from 0 to :data:`INT32_MAX`."""
    if _UINT_RE.fullmatch(text):
        number = int(text)
        if number <= INT32_MAX:
            return number
        raise ValueError(f"{text} is too large")
    raise ValueError(f"{text!r} is not a whole number of 0 or more")


def check_bool(text: str) -> str:
    """True or false, in any case, as staged: "1" or "0"."""
    try:
        return BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not true or false") from None


@lru_cache(maxsize=65536)
def normalise_domain(text: str) -> str:
    """A domain name such as example.it, lower-cased, without a leading ``@`` or a trailing dot."""
    name = text.lower().rstrip(".")
    if name.startswith("@"):
        name = name[1:]
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a domain name such as example.it")
    return name
