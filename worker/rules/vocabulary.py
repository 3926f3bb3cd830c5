"""The words of the domain, defined once: plans, holder kinds, languages, payment methods, euro amounts.

Every other module takes these names and labels from here: the tables (their
``Plan`` and ``HolderKind`` columns), the import, the pricing rules, the
order flow, the payments, the emails and the pages.  The prices and limits of
each plan are the catalogue's (``config/catalogue.py``), keyed by these plan
names.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Plan(StrEnum):
    """A mailbox's plan (tipologia)."""

    STANDARD = "standard"
    PRO = "pro"
    PREMIUM = "premium"


class HolderKind(StrEnum):
    """Who holds a mailbox: what the holder data must carry (tax code, VAT number, e-invoicing) depends on it."""

    PRIVATE = "private"
    SOLE_PROPRIETOR = "sole_proprietor"
    COMPANY = "company"
    PROFESSIONAL = "professional"
    PUBLIC_ADMINISTRATION = "public_administration"


# -- Languages ---------------------------------------------------------------------------------------

#: The languages of the pages and the emails; a holder with no (or another) language gets the default.
LANGUAGES: Final = ("it", "en")
DEFAULT_LANGUAGE: Final = "it"


# -- Plans -------------------------------------------------------------------------------------------

PLANS: Final = tuple(plan.value for plan in Plan)
#: A plan's name as holders read it, the same in every language.
PLAN_LABELS: Final = MappingProxyType(
    {Plan.STANDARD.value: "Standard", Plan.PRO.value: "Pro", Plan.PREMIUM.value: "Premium"}
)


# -- Holder kinds ------------------------------------------------------------------------------------

PRIVATE: Final = HolderKind.PRIVATE.value
PUBLIC_ADMINISTRATION: Final = HolderKind.PUBLIC_ADMINISTRATION.value
#: The kinds that are an organisation rather than a person: greeted "Spett.le" in Italian.
CORPORATE_KINDS: Final = (HolderKind.COMPANY.value, HolderKind.PUBLIC_ADMINISTRATION.value)
#: The kinds that need a partita IVA and an SDI code or PEC address.
BUSINESS_KINDS: Final = (HolderKind.SOLE_PROPRIETOR.value, HolderKind.COMPANY.value, HolderKind.PROFESSIONAL.value)
HOLDER_KINDS: Final = tuple(kind.value for kind in HolderKind)
# Laid out by hand (fmt: skip): one block per language, a label to a line.
HOLDER_KIND_LABELS: Final = MappingProxyType({
    "it": MappingProxyType({
        HolderKind.PRIVATE.value: "Persona fisica (privato)",
        HolderKind.SOLE_PROPRIETOR.value: "Ditta individuale",
        HolderKind.COMPANY.value: "Azienda",
        HolderKind.PROFESSIONAL.value: "Libero professionista",
        HolderKind.PUBLIC_ADMINISTRATION.value: "Pubblica amministrazione",
    }),
    "en": MappingProxyType({
        HolderKind.PRIVATE.value: "Private person",
        HolderKind.SOLE_PROPRIETOR.value: "Sole proprietorship",
        HolderKind.COMPANY.value: "Company",
        HolderKind.PROFESSIONAL.value: "Self-employed professional",
        HolderKind.PUBLIC_ADMINISTRATION.value: "Public administration",
    }),
})  # fmt: skip


# -- Payment methods ---------------------------------------------------------------------------------

CARD: Final = "card"
PAYPAL: Final = "paypal"
BANK_TRANSFER: Final = "bank_transfer"
POSTAL_SLIP: Final = "postal_slip"
PAYMENT_METHODS: Final = (CARD, PAYPAL, BANK_TRANSFER, POSTAL_SLIP)
#: Methods that go through the payment gateway and switch auto-renew on.
GATEWAY_METHODS: Final = (CARD, PAYPAL)
#: A method as a sentence names it ("pay by bank transfer"): lower case but for PayPal.
METHOD_LABELS: Final = MappingProxyType(
    {
        "it": MappingProxyType(
            {
                CARD: "carta di credito",
                PAYPAL: "PayPal",
                BANK_TRANSFER: "bonifico bancario",
                POSTAL_SLIP: "bollettino postale",
            }
        ),
        "en": MappingProxyType(
            {CARD: "credit card", PAYPAL: "PayPal", BANK_TRANSFER: "bank transfer", POSTAL_SLIP: "postal slip"}
        ),
    }
)


def label(labels: MappingProxyType[str, MappingProxyType[str, str]], value: str, language: str) -> str:
    """``value``'s label in ``language`` (the default language's for any other), or ``value`` itself if it has none."""
    return labels.get(language, labels[DEFAULT_LANGUAGE]).get(value, value)


# -- Amounts -----------------------------------------------------------------------------------------


def format_euro(cents: int, language: str = DEFAULT_LANGUAGE) -> str:
    """An amount as a holder reads it: ``48,80 €`` and ``1.234,56 €`` in Italian, ``€48.80`` and
    ``€1,234.56`` in English; a negative amount starts with ``-``.  The space before ``€`` is a
    no-break space (U+00A0): an amount never wraps across two lines."""
    sign = "-" if cents < 0 else ""
    euros, rest = divmod(abs(cents), 100)
    if language == "en":
        return f"{sign}€{euros:,}.{rest:02d}"
    return f"{sign}{euros:,}".replace(",", ".") + f",{rest:02d}\u00a0€"
