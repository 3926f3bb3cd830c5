"""What the templates see of the stored context: each mailbox, and the values they share."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from worker.mail.headers import header_address, refuse_line_breaks
from worker.rules import vocabulary
from worker.rules.links import LinkSigner
from worker.rules.schedule import deletion_date, last_renewable_day

_DISPLAYED_DOMAIN_RE = re.compile(r'[^\s@<>(),;:"\[\]\\]+')
#: An order number: ``PEC-2027-000123``.
ORDER_NUMBER_RE = re.compile(r"PEC-\d{4}-\d{6,}")


@dataclass(frozen=True)
class PendingOrderView:
    """The holder's order awaiting payment for a mailbox's cycle, as a notice mentions it."""

    number: str
    amount: str
    #: The method's label in the email's language ("" when none was chosen yet).
    method: str
    #: The method's key (``bank_transfer``, ``postal_slip``, ``card``, ``paypal``) or None.
    method_key: str | None


@dataclass(frozen=True)
class MailboxView:
    id: int
    address: str
    plan: str
    plan_label: str
    domain: str | None
    expires_on: date
    last_renewable_on: date
    deletion_on: date
    renewal_url: str | None
    pending_order: PendingOrderView | None = None


def pending_order_view(raw: Any, language: str) -> PendingOrderView | None:
    """A mailbox's ``pending_order`` (the notice batch writes it), checked; None when there is none."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError("a mailbox's pending order must be an object")
    number, method, cents = raw.get("number"), raw.get("method"), raw.get("amount_cents")
    if not isinstance(number, str) or not ORDER_NUMBER_RE.fullmatch(number):
        raise ValueError(f"order number {number!r} is not like PEC-2027-000123")
    if method is not None and method not in vocabulary.PAYMENT_METHODS:
        raise ValueError(f"payment method {method!r} is not one of {', '.join(vocabulary.PAYMENT_METHODS)}")
    if not isinstance(cents, int) or isinstance(cents, bool) or cents <= 0:
        raise ValueError(f"amount {cents!r} is not a whole number of cents")
    return PendingOrderView(
        number=number,
        amount=vocabulary.format_euro(cents, language),
        method=vocabulary.METHOD_LABELS[language].get(method or "", ""),
        method_key=method,
    )


def mailbox_view(raw: Any, signer: LinkSigner, with_renewal_link: bool, language: str = "it") -> MailboxView:
    if not isinstance(raw, Mapping):
        raise ValueError("each mailbox in the context must be an object")
    try:
        mailbox_id, address, expires_text, plan = raw["id"], raw["address"], raw["expires_on"], raw["plan"]
    except KeyError as missing:
        raise ValueError(f"a mailbox in the context has no {missing.args[0]!r}") from None
    if not isinstance(mailbox_id, int) or isinstance(mailbox_id, bool):
        raise ValueError(f"mailbox id {mailbox_id!r} is not a whole number")
    address = header_address(address, "mailbox address")
    if plan not in vocabulary.PLANS:
        raise ValueError(f"plan {plan!r} is not one of {', '.join(vocabulary.PLANS)}")
    try:
        expires_on = date.fromisoformat(expires_text)
    except (TypeError, ValueError):
        raise ValueError(f"expires_on {expires_text!r} is not a date YYYY-MM-DD") from None
    domain = raw.get("domain")
    if domain is not None:
        refuse_line_breaks(domain, "domain")
        if not _DISPLAYED_DOMAIN_RE.fullmatch(domain):
            raise ValueError(f"domain {domain!r} is not a domain name")
    return MailboxView(
        id=mailbox_id,
        address=address,
        plan=plan,
        plan_label=vocabulary.PLAN_LABELS[plan],
        domain=domain,
        expires_on=expires_on,
        last_renewable_on=last_renewable_day(expires_on),
        deletion_on=deletion_date(expires_on),
        renewal_url=signer.renewal_url(mailbox_id, expires_on) if with_renewal_link else None,
        pending_order=pending_order_view(raw.get("pending_order"), language),
    )


def common_value(values: Iterable[date]) -> date | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def display_name(value: Any) -> str | None:
    """The holder's name for the bodies: one line, or None.  Never used in a header."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("holder_name must be a string or null")
    return " ".join(value.split()) or None
