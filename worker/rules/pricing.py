"""Pure order rules: plan limits, used space, prices with VAT, years, payment delays and working days.

Nothing here touches the database or reads a clock; every function is a
function of its arguments (``today`` included), unit-tested without I/O.
Prices come from ``config.catalogue``.

Problems are returned as :class:`Problem` values (a field, a message key and
the values the message needs) and worded by :func:`problem_message` in Italian
or English.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from typing import Any

from config import catalogue
from worker.rules.vocabulary import BANK_TRANSFER, CARD, PAYPAL, PLAN_LABELS, POSTAL_SLIP

#: At most this many working days between a payment and its registration.
REGISTRATION_WORKING_DAYS = {CARD: 0, PAYPAL: 0, BANK_TRANSFER: 1, POSTAL_SLIP: 7}

MB_PER_GB = 1024

MESSAGES: dict[str, dict[str, str]] = {
    "on_domain": {
        "it": (
            "La casella PEC {address} è su un dominio: si rinnova rinnovando il dominio, e la tipologia e lo spazio "
            "non si possono modificare."
        ),
        "en": (
            "The PEC mailbox {address} is on a domain: it is renewed by renewing the domain, and its plan and space "
            "cannot be changed."
        ),
    },
    "deleted": {
        "it": (
            "La casella PEC {address} è stata cancellata (oltre 90 giorni dalla scadenza) e non può più essere "
            "rinnovata."
        ),
        "en": "The PEC mailbox {address} has been deleted (over 90 days after expiry) and can no longer be renewed.",
    },
    "plan_unknown": {
        "it": "Scelga una tipologia: Standard, Pro o Premium.",
        "en": "Choose a plan: Standard, Pro or Premium.",
    },
    "not_whole": {
        "it": "Indichi un numero intero di GB, da 0 in su.",
        "en": "Give a whole number of GB, from 0 up.",
    },
    "extra_space_standard_max": {
        "it": "Sulla tipologia Standard si può acquistare al massimo 1 GB di spazio aggiuntivo (2 GB in tutto).",
        "en": "On the Standard plan at most 1 GB of extra space can be bought (2 GB in all).",
    },
    "extra_space_max": {
        "it": "Si possono acquistare al massimo {max} GB di spazio casella aggiuntivo.",
        "en": "At most {max} GB of extra mailbox space can be bought.",
    },
    "archive_standard": {
        "it": "Lo spazio archivio aggiuntivo è disponibile solo per le tipologie Pro e Premium.",
        "en": "Extra archive space is only available on the Pro and Premium plans.",
    },
    "extra_archive_max": {
        "it": "Si possono acquistare al massimo {max} GB di archivio aggiuntivo.",
        "en": "At most {max} GB of extra archive can be bought.",
    },
    "free_space": {
        "it": (
            "La casella occupa {used} MB: la tipologia {plan} arriva al massimo a {capacity} GB. Liberi spazio prima "
            "di rinnovare, oppure scelga una tipologia più grande."
        ),
        "en": (
            "The mailbox uses {used} MB: the {plan} plan holds at most {capacity} GB. Free some space before "
            "renewing, or choose a larger plan."
        ),
    },
    "space_needed": {
        "it": "La casella occupa {used} MB: con la tipologia {plan} servono almeno {needed} GB di spazio aggiuntivo.",
        "en": "The mailbox uses {used} MB: on the {plan} plan it needs at least {needed} GB of extra space.",
    },
    # One GB takes the singular verb in Italian ("serve almeno 1 GB", "servono almeno 2 GB").
    "space_needed_one": {
        "it": "La casella occupa {used} MB: con la tipologia {plan} serve almeno 1 GB di spazio aggiuntivo.",
        "en": "The mailbox uses {used} MB: on the {plan} plan it needs at least 1 GB of extra space.",
    },
    "archive_deletion": {
        "it": (
            "Passando alla tipologia Standard l'archivio della casella {address} verrà cancellato. Confermi di voler "
            "procedere."
        ),
        "en": "Moving to the Standard plan deletes the archive of {address}. Confirm that you want to go ahead.",
    },
    "auto_renew_plan_change": {
        "it": (
            "Per la casella {address} è attivo il rinnovo automatico: il rinnovo manuale è possibile solo cambiando "
            "tipologia. Per rinnovare senza cambiare tipologia, disattivi prima il rinnovo automatico."
        ),
        "en": (
            "Auto-renew is on for {address}: a manual renewal is only possible with a change of plan. To renew "
            "without changing plan, first switch auto-renew off."
        ),
    },
}


def problem_message(key: str, language: str, **values: Any) -> str:
    return MESSAGES[key]["en" if language == "en" else "it"].format(**values)


@dataclass(frozen=True)
class Problem:
    """One broken rule: ``field`` is the form field it is about."""

    field: str
    key: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)

    def message(self, language: str) -> str:
        return problem_message(self.key, language, **self.values)


# -- Plans and space --------------------------------------------------------------------------------


def mailbox_capacity_gb(plan: str, extra_space_gb: int) -> int:
    return catalogue.PLAN_MAILBOX_GB[plan] + extra_space_gb


def extra_space_needed_gb(plan: str, used_space_mb: int) -> int:
    """The fewest extra GB the used space needs on ``plan`` (maybe more than can be bought)."""
    included_mb = catalogue.PLAN_MAILBOX_GB[plan] * MB_PER_GB
    if used_space_mb <= included_mb:
        return 0
    return -(-(used_space_mb - included_mb) // MB_PER_GB)


def is_downgrade_to_standard(current_plan: str, new_plan: str) -> bool:
    """Pro or Premium to Standard: the archive is deleted."""
    return new_plan == "standard" and catalogue.PLAN_ARCHIVE_GB.get(current_plan, 0) > 0


def check_mailbox_choice(
    *,
    address: str,
    current_plan: str,
    used_space_mb: int,
    on_domain: bool,
    deleted: bool,
    auto_renew: bool,
    plan: Any,
    extra_space_gb: Any,
    extra_archive_gb: Any,
    confirm_archive_deletion: bool,
    auto_renew_exempt: bool = False,
) -> list[Problem]:
    """Every rule broken by a choice for one mailbox (empty: the choice is good).

    ``auto_renew_exempt``: the order was left by a failed auto-renew charge,
    so it may renew without a plan change although auto-renew is on.
    Field names: ``plan``, ``extra_space_gb``, ``extra_archive_gb``,
    ``confirm_archive_deletion``.
    """
    if on_domain:
        return [Problem("plan", "on_domain", {"address": address})]
    if deleted:
        return [Problem("plan", "deleted", {"address": address})]
    if plan not in catalogue.PLAN_PRICES_CENTS:
        return [Problem("plan", "plan_unknown")]
    problems: list[Problem] = []
    space_ok = _whole(extra_space_gb)
    archive_ok = _whole(extra_archive_gb)
    if not space_ok:
        problems.append(Problem("extra_space_gb", "not_whole"))
    if not archive_ok:
        problems.append(Problem("extra_archive_gb", "not_whole"))
    if space_ok:
        maximum = catalogue.PLAN_MAX_EXTRA_SPACE_GB[plan]
        if extra_space_gb > maximum:
            key = "extra_space_standard_max" if plan == "standard" else "extra_space_max"
            problems.append(Problem("extra_space_gb", key, {"max": maximum}))
        else:
            needed = extra_space_needed_gb(plan, used_space_mb)
            if needed > maximum:
                capacity = mailbox_capacity_gb(plan, maximum)
                problems.append(
                    Problem(
                        "plan", "free_space", {"used": used_space_mb, "plan": PLAN_LABELS[plan], "capacity": capacity}
                    )
                )
            elif extra_space_gb < needed:
                problems.append(
                    Problem(
                        "extra_space_gb",
                        "space_needed_one" if needed == 1 else "space_needed",
                        {"used": used_space_mb, "plan": PLAN_LABELS[plan], "needed": needed},
                    )
                )
    if archive_ok and extra_archive_gb > 0:
        maximum = catalogue.PLAN_MAX_EXTRA_ARCHIVE_GB[plan]
        if maximum == 0:
            problems.append(Problem("extra_archive_gb", "archive_standard"))
        elif extra_archive_gb > maximum:
            problems.append(Problem("extra_archive_gb", "extra_archive_max", {"max": maximum}))
    if is_downgrade_to_standard(current_plan, plan) and not confirm_archive_deletion:
        problems.append(Problem("confirm_archive_deletion", "archive_deletion", {"address": address}))
    if auto_renew and not auto_renew_exempt and plan == current_plan:
        problems.append(Problem("plan", "auto_renew_plan_change", {"address": address}))
    return problems


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- Years ------------------------------------------------------------------------------------------


def max_years(any_promo: bool) -> int:
    return catalogue.MAX_PROMO_YEARS if any_promo else catalogue.MAX_YEARS


def check_years(years: Any, any_promo: bool) -> Problem | None:
    """1 to 5 years, or 1 to 2 when the order holds a promotional product."""
    if not isinstance(years, int) or isinstance(years, bool) or years < 1 or years > catalogue.MAX_YEARS:
        return Problem("years", "years_range", {"max": max_years(any_promo)})
    if any_promo and years > catalogue.MAX_PROMO_YEARS:
        return Problem("years", "years_promo")
    return None


# -- Prices -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineInput:
    """What one order line buys."""

    address: str
    plan: str
    extra_space_gb: int = 0
    extra_archive_gb: int = 0


@dataclass(frozen=True)
class PriceLine:
    """One line of the price: a plan, or extra GB, of one mailbox, for ``years`` years."""

    address: str
    item: str  # "plan", "extra_space" or "extra_archive"
    plan: str
    quantity: int  # 1 for the plan, else GB
    years: int
    unit_cents: int  # per unit per year, VAT excluded
    amount_cents: int  # quantity x years x unit, VAT excluded

    def label(self, language: str) -> str:
        plan = PLAN_LABELS[self.plan]
        years = _years_text(self.years, language)
        if language == "en":
            what = {
                "plan": f"PEC mailbox {plan}",
                "extra_space": f"Extra mailbox space, {self.quantity} GB",
                "extra_archive": f"Extra archive, {self.quantity} GB",
            }[self.item]
        else:
            what = {
                "plan": f"Casella PEC {plan}",
                "extra_space": f"Spazio casella aggiuntivo, {self.quantity} GB",
                "extra_archive": f"Archivio aggiuntivo, {self.quantity} GB",
            }[self.item]
        return f"{what} – {self.address} – {years}"


def _years_text(years: int, language: str) -> str:
    if language == "en":
        return "1 year" if years == 1 else f"{years} years"
    return "1 anno" if years == 1 else f"{years} anni"


@dataclass(frozen=True)
class OrderSummary:
    lines: tuple[PriceLine, ...]
    years: int
    subtotal_cents: int  # VAT excluded
    vat_percent: int
    vat_cents: int
    #: What the holder pays: VAT included, or the subtotal under split payment (a public
    #: administration pays the VAT to the Treasury itself, art. 17-ter DPR 633/1972).
    total_cents: int
    split_payment: bool = False


def vat_cents(subtotal_cents: int, percent: int = catalogue.VAT_PERCENT) -> int:
    """The VAT on a subtotal, rounded half up to the cent."""
    return (subtotal_cents * percent + 50) // 100


def price_order(lines: Iterable[LineInput], years: int, *, split_payment: bool = False) -> OrderSummary:
    """The price of an order, line by line, with the VAT on the subtotal; under ``split_payment``
    the total to pay is the subtotal (the VAT is still stated)."""
    priced: list[PriceLine] = []
    for line in lines:
        plan_cents = catalogue.PLAN_PRICES_CENTS[line.plan]
        priced.append(PriceLine(line.address, "plan", line.plan, 1, years, plan_cents, plan_cents * years))
        if line.extra_space_gb:
            unit = catalogue.EXTRA_SPACE_GB_CENTS
            priced.append(
                PriceLine(
                    line.address,
                    "extra_space",
                    line.plan,
                    line.extra_space_gb,
                    years,
                    unit,
                    unit * line.extra_space_gb * years,
                )
            )
        if line.extra_archive_gb:
            unit = catalogue.EXTRA_ARCHIVE_GB_CENTS
            priced.append(
                PriceLine(
                    line.address,
                    "extra_archive",
                    line.plan,
                    line.extra_archive_gb,
                    years,
                    unit,
                    unit * line.extra_archive_gb * years,
                )
            )
    subtotal = sum(line.amount_cents for line in priced)
    vat = vat_cents(subtotal)
    total = subtotal if split_payment else subtotal + vat
    return OrderSummary(tuple(priced), years, subtotal, catalogue.VAT_PERCENT, vat, total, split_payment)


def line_price_cents(line: LineInput, years: int) -> int:
    """One mailbox's share of the price, VAT excluded."""
    return price_order([line], years).subtotal_cents


def format_amount(cents: int) -> str:
    """The plain amount for a payment, ``48.80``: what the bank statement and the CLI use."""
    return f"{cents // 100}.{cents % 100:02d}"


# -- Working days and payment methods ---------------------------------------------------------------


def easter_sunday(year: int) -> date:
    """Gregorian Easter (the anonymous Gregorian algorithm, "Meeus/Jones/Butcher")."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741  (the algorithm's own letters, as published)
    m = (a + 11 * h + 22 * l) // 451
    month, day = divmod(h + l - 7 * m + 114, 31)
    return date(year, month, day + 1)


@cache
def italian_holidays(year: int) -> frozenset[date]:
    """The Italian national holidays of ``year`` that fall on any weekday.

    New Year, Epiphany, Easter Monday, Liberation Day (25 April), Labour Day,
    Republic Day (2 June), Ferragosto, All Saints, the Immaculate Conception,
    Christmas and St Stephen; and, from 2026, St Francis (4 October), made a
    national holiday again by law 151/2025.  Local patron saints' days are not
    national holidays and do not count.
    """
    days = {
        date(year, 1, 1),
        date(year, 1, 6),
        easter_sunday(year) + timedelta(days=1),
        date(year, 4, 25),
        date(year, 5, 1),
        date(year, 6, 2),
        date(year, 8, 15),
        date(year, 11, 1),
        date(year, 12, 8),
        date(year, 12, 25),
        date(year, 12, 26),
    }
    if year >= 2026:
        days.add(date(year, 10, 4))
    return frozenset(days)


def is_working_day(day: date) -> bool:
    """Monday to Friday, except the Italian national holidays."""
    return day.weekday() < 5 and day not in italian_holidays(day.year)


def add_working_days(day: date, count: int) -> date:
    """The ``count``-th working day after ``day`` (``day`` itself when count is 0)."""
    if count < 0:
        raise ValueError("count must be 0 or more")
    while count:
        day += timedelta(days=1)
        if is_working_day(day):
            count -= 1
    return day


def registered_by(method: str, today: date) -> date:
    """The latest day a payment made today by ``method`` is registered."""
    return add_working_days(today, REGISTRATION_WORKING_DAYS[method])


def method_in_time(method: str, today: date, deletion_on: date) -> bool:
    """Whether a payment made today by ``method`` is registered before ``deletion_on`` (the 91st day)."""
    return registered_by(method, today) < deletion_on
