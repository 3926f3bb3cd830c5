"""The sandbox gateway's stored payment methods, kept as Stripe keeps a PaymentMethod.

A test token (``pm_card_visa``, ``paypal_ok``…) is what a holder types on the sandbox's pages;
what the mailbox stores for auto-renew is a method the sandbox created from it, in its own
``sandbox_methods`` table: ``pm_sbx_…`` for a card (brand, last 4 digits and an expiry three
years ahead, as a test card has), ``paypal_sbx_…`` for a PayPal account.  A charge of a stored
method answers as the test token it was made from would.

Two ways a method is created:

- :func:`keep_charged_method`: the checkout's successful payment keeps its card for the next
  renewals (Stripe's ``setup_future_usage``).  The id is derived from the charge's idempotency
  key, so the checkout asked again (a replay, a reconciliation) gets the same method, once;
- :func:`create_method`: the auto-renew page's new method, a new id each time.

Tokens that came in through the import (``pm_card_visa`` on the mailbox itself) are charged as
before: :func:`behaviour_of` gives back any token that is not a stored method's id.
"""

from __future__ import annotations

import calendar
import hashlib
import secrets
from datetime import date, datetime

from sqlalchemy import Connection, select

from worker.gateways.base import SavedMethod
from worker.store.db import dialect_insert
from worker.store.models import SandboxMethod

CARD_PREFIX = "pm_sbx_"
PAYPAL_PREFIX = "paypal_sbx_"
#: A test card's expiry: the month it was stored in, this many years later.
CARD_YEARS = 3

#: test token -> (brand, last 4): Stripe's test cards, and the sandbox's own.
CARDS: dict[str, tuple[str, str]] = {
    "pm_card_visa": ("Visa", "4242"),
    "pm_card_chargeDeclined": ("Visa", "0002"),
    "pm_card_chargeDeclinedInsufficientFunds": ("Visa", "9995"),
    "pm_card_chargeDeclinedExpiredCard": ("Visa", "0069"),
    "pm_card_authenticationRequired": ("Visa", "3184"),
    "pm_sandbox_timeout": ("Visa", "0019"),
}

_METHODS = SandboxMethod.__table__


def is_stored_method(token: str) -> bool:
    return token.startswith((CARD_PREFIX, PAYPAL_PREFIX))


def behaviour_of(connection: Connection, token: str) -> str:
    """The test token a charge of ``token`` answers as: a stored method's own, or the token itself."""
    if not is_stored_method(token):
        return token
    behaviour = connection.execute(select(_METHODS.c.behaviour).where(_METHODS.c.method_id == token)).scalar()
    return behaviour if behaviour is not None else token  # an unknown id: no such payment method


def create_method(
    connection: Connection, behaviour: str, *, now: datetime, source_key: str | None = None
) -> SavedMethod:
    """Store a method made from the test token ``behaviour``; with ``source_key`` (a charge's key) its
    id is derived from the key and a second call gives back the first method.  The caller commits."""
    paypal = behaviour.startswith("paypal")
    prefix = PAYPAL_PREFIX if paypal else CARD_PREFIX
    if source_key is None:
        suffix = secrets.token_hex(12)
    else:
        suffix = hashlib.sha256(f"method:{source_key}".encode()).hexdigest()[:24]
    method_id = prefix + suffix
    brand, last4 = ("PayPal", None) if paypal else CARDS.get(behaviour, ("Visa", None))
    expires = None if paypal else (now.month, now.year + CARD_YEARS)
    connection.execute(
        dialect_insert(connection, _METHODS).on_conflict_do_nothing(),
        {
            "method_id": method_id,
            "behaviour": behaviour,
            "brand": brand,
            "last4": last4,
            "exp_month": expires[0] if expires else None,
            "exp_year": expires[1] if expires else None,
            "source_key": source_key,
            "created_at": now,
        },
    )
    row = connection.execute(
        select(_METHODS.c.method_id, _METHODS.c.exp_month, _METHODS.c.exp_year).where(_METHODS.c.method_id == method_id)
    ).one()
    return SavedMethod(row.method_id, card_expiry(row.exp_month, row.exp_year))


def card_expiry(month: int | None, year: int | None) -> date | None:
    """A card's expiry as the mailbox keeps it: the last day of its month."""
    if month is None or year is None:
        return None
    return date(year, month, calendar.monthrange(year, month)[1])


def describe_stored(connection: Connection, token: str) -> str | None:
    """``Visa •••• 4242`` or ``PayPal`` for a stored method's id, None for anything else."""
    if not is_stored_method(token):
        return None
    row = connection.execute(select(_METHODS.c.brand, _METHODS.c.last4).where(_METHODS.c.method_id == token)).first()
    if row is None:
        return None
    return row.brand if row.last4 is None else f"{row.brand} •••• {row.last4}"
