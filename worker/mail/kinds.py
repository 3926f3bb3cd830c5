"""The email kinds: what sets each apart, and the template variables each adds to the common ones.

Adding a kind: a folder in ``email_templates/`` and one entry in :data:`KIND_RULES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from worker.mail.headers import refuse_line_breaks
from worker.mail.variables import ORDER_NUMBER_RE, common_value
from worker.rules import vocabulary
from worker.rules.links import TARGETS, LinkSigner
from worker.rules.notices import REMINDER_KINDS

KINDS = (
    "expiry-notice",
    "expired-notice",
    "domain-expiry-notice",
    "order-confirmation",
    "renewal-completed",
    "charge-notice",
    "card-expiring",
    "charge-succeeded",
    "charge-failed",
    "payment-refunded",
    "charge-skipped",
    "charge-authentication-required",
)

KindContext = Callable[[Mapping[str, Any], dict[str, Any], LinkSigner], dict[str, Any]]


@dataclass(frozen=True)
class KindRules:
    """What sets one kind apart; the wording lives in its template folder."""

    #: Whether each mailbox gets its own signed Rinnova link.
    renewal_links: bool
    #: When its stages fall: "before" (up to the expiry date itself), "after" or "any".
    stages: Literal["before", "after", "any"]
    #: Extra template variables (and checks) for this kind, from the stored context
    #: and the common variables.
    extra_context: KindContext | None = None
    #: Whether each mailbox is a notice of its own (its own ledger row), so that a mailbox
    #: the renderer refuses is left out and the email goes to the others.  Not for an
    #: order's emails: their totals cover every mailbox, so one refused refuses the email.
    mailboxes_apart: bool = False
    #: Whether a grouped email also carries one "Rinnova tutte" link for all its mailboxes of one
    #: account (``renew_all_url`` in the templates; worker.mail.group_links).
    renew_all: bool = False
    #: A reminder the holder can opt out of (``worker.rules.notices.REMINDER_KINDS``): it carries
    #: ``List-Unsubscribe`` and ``List-Unsubscribe-Post`` (RFC 2369, RFC 8058 one-click).
    reminder: bool = False


def _order_link(payment: Mapping[str, Any], signer: LinkSigner) -> str:
    """Where the holder resumes the order from the email: the signed Rinnova link it was started from.

    The order pages live in the browser session that started the order; the
    signed link opens it again from any device (the link page offers "resume").
    Older stored emails without ``resume_link`` keep their checkout URL.
    """
    resume = payment.get("resume_link")
    if not isinstance(resume, Mapping):
        return payment["checkout_url"]
    target, target_id, cycle = resume.get("target"), resume.get("id"), resume.get("cycle")
    if target not in TARGETS or not isinstance(target_id, int) or not isinstance(cycle, str):
        raise ValueError(f"resume_link {dict(resume)!r} is not a link target")
    return signer.url_for(target, target_id, date.fromisoformat(cycle), resume.get("ids") or ())


def _domain_notice_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    if any(mailbox.domain is None for mailbox in common["mailboxes"]):
        raise ValueError("a domain-expiry-notice needs the domain of every mailbox")
    return {}


_IBAN_RE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


def _euro(cents: Any, language: str) -> str:
    """A stored amount as the holder reads it (``48,80 €`` / ``€48.80``); a negative or
    fractional one is refused."""
    if not isinstance(cents, int) or isinstance(cents, bool) or cents < 0:
        raise ValueError(f"amount {cents!r} is not a whole number of cents")
    return vocabulary.format_euro(cents, language)


@dataclass(frozen=True)
class OrderedMailbox:
    address: str
    plan_label: str
    old_plan_label: str
    plan_changed: bool
    extra_space_gb: int
    extra_archive_gb: int
    archive_deleted: bool
    expires_on: date
    new_expires_on: date


def _order_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """The order, its price and the payment instructions, for order-confirmation and renewal-completed."""
    language = common["language"]
    order, payment = stored.get("order"), stored.get("payment")
    if not isinstance(order, Mapping) or not isinstance(payment, Mapping):
        raise ValueError("an order email needs 'order' and 'payment' in its context")
    number = order.get("number")
    if not isinstance(number, str) or not ORDER_NUMBER_RE.fullmatch(number):
        raise ValueError(f"order number {number!r} is not like PEC-2027-000123")
    method = order.get("method")
    if method is not None and method not in vocabulary.PAYMENT_METHODS:
        raise ValueError(f"payment method {method!r} is not one of {', '.join(vocabulary.PAYMENT_METHODS)}")
    years = order.get("years")
    if not isinstance(years, int) or not 1 <= years <= 5:
        raise ValueError(f"years {years!r} is not 1 to 5")
    iban = payment.get("iban")
    if not isinstance(iban, str) or not _IBAN_RE.fullmatch(iban):
        raise ValueError(f"IBAN {iban!r} is not an IBAN")
    for name in ("beneficiary", "postal_account", "checkout_url"):
        refuse_line_breaks(payment.get(name), name)
    ordered = []
    raw_by_address = {raw.get("address"): raw for raw in stored["mailboxes"] if isinstance(raw, Mapping)}
    for mailbox in common["mailboxes"]:
        raw = raw_by_address[mailbox.address]
        old_plan = raw.get("old_plan", mailbox.plan)
        if old_plan not in vocabulary.PLANS:
            raise ValueError(f"plan {old_plan!r} is not one of {', '.join(vocabulary.PLANS)}")
        ordered.append(
            OrderedMailbox(
                address=mailbox.address,
                plan_label=mailbox.plan_label,
                old_plan_label=vocabulary.PLAN_LABELS[old_plan],
                plan_changed=old_plan != mailbox.plan,
                extra_space_gb=int(raw.get("extra_space_gb") or 0),
                extra_archive_gb=int(raw.get("extra_archive_gb") or 0),
                archive_deleted=bool(raw.get("archive_deleted")),
                expires_on=mailbox.expires_on,
                new_expires_on=date.fromisoformat(raw["new_expires_on"]),
            )
        )
    lines = [
        {"label": line["label_en" if language == "en" else "label_it"], "amount": _euro(line["amount_cents"], language)}
        for line in order.get("lines") or []
    ]
    return {
        "order_number": number,
        "years": years,
        "method": method,
        "method_label": vocabulary.METHOD_LABELS[language].get(method or "", ""),
        "auto_renew": method in ("card", "paypal"),
        "lines": lines,
        "subtotal": _euro(order["subtotal_cents"], language),
        "vat_percent": int(order["vat_percent"]),
        "vat": _euro(order["vat_cents"], language),
        "total": _euro(order["total_cents"], language),
        "split_payment": bool(order.get("split_payment")),
        "iban": iban,
        "beneficiary": payment["beneficiary"],
        "postal_account": payment["postal_account"],
        "checkout_url": _order_link(payment, signer),
        "ordered": ordered,
        "common_new_expires_on": common_value(item.new_expires_on for item in ordered),
        "invoice": _invoice(stored, language),
    }


_CHARGE_REASONS = (
    "hard_decline",
    "requires_authentication",
    "retries_exhausted",
    "no_payment_method",
    "not_charged_before_expiry",
)


def _charge_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """The auto-renew emails: amount (VAT included), charge date, masked method, receipt or failure."""
    language = common["language"]
    charge = stored.get("charge")
    if not isinstance(charge, Mapping):
        raise ValueError("an auto-renew email needs 'charge' in its context")
    if len(common["mailboxes"]) != 1:
        raise ValueError("an auto-renew email is about one mailbox")
    method = charge.get("method")
    refuse_line_breaks(method, "method")
    years = charge.get("years")
    if not isinstance(years, int) or not 1 <= years <= 5:
        raise ValueError(f"years {years!r} is not 1 to 5")

    def day(name: str) -> date | None:
        value = charge.get(name)
        return None if value is None else date.fromisoformat(value)

    reason = charge.get("reason")
    if reason is not None and reason not in _CHARGE_REASONS:
        raise ValueError(f"reason {reason!r} is not one of {', '.join(_CHARGE_REASONS)}")
    order_number = charge.get("order_number")
    if order_number is not None and not ORDER_NUMBER_RE.fullmatch(order_number):
        raise ValueError(f"order number {order_number!r} is not like PEC-2027-000123")
    reference = charge.get("reference")
    if reference is not None:
        refuse_line_breaks(reference, "reference")
    order_method = charge.get("order_method")
    if order_method is not None and order_method not in vocabulary.PAYMENT_METHODS:
        raise ValueError(f"payment method {order_method!r} is not one of {', '.join(vocabulary.PAYMENT_METHODS)}")
    return {
        "amount": _euro(charge["amount_cents"], language),
        "subtotal": _euro(charge["subtotal_cents"], language),
        "vat": _euro(charge["vat_cents"], language),
        "vat_percent": int(charge["vat_percent"]),
        # A public administration under split payment: the amount is the taxable one, the VAT its own.
        "split_payment": bool(charge.get("split_payment")),
        "years": years,
        "method": method,
        "charge_on": day("charge_on"),
        "charged_on": day("charged_on"),
        "card_expires_on": day("card_expires_on"),
        "new_expires_on": day("new_expires_on"),
        "reason": reason,
        "order_number": order_number,
        "reference": reference,
        "order_method_label": vocabulary.METHOD_LABELS[language].get(order_method or "", ""),
        "cancel_by": day("cancel_by"),
        # The mailbox's auto-renew page: switch it off or on, replace the method.
        "auto_renew_url": signer.auto_renew_url(common["mailboxes"][0].id),
        "invoice": _invoice(stored, language),
    }


def _authentication_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """charge-authentication-required: the charge's context, the signed link to authenticate THAT
    charge (its intent) on session, and the day it is given up."""
    context = _charge_context(stored, common, signer)
    charge = stored["charge"]
    intent_id = charge.get("intent_id")
    if type(intent_id) is not int or intent_id < 1:
        raise ValueError(f"intent id {intent_id!r} is not a charge intent")
    context["authentication_url"] = signer.charge_authentication_url(intent_id)
    context["authenticate_by"] = date.fromisoformat(charge["authenticate_by"])
    return context


def _invoice(stored: Mapping[str, Any], language: str) -> dict[str, Any] | None:
    """A receipt's electronic invoice (``email_templates/_base/invoice.*``): its courtesy copy once issued,
    ``{"issued": False}`` while it waits for data, None for an email that has none (written before invoices)."""
    invoice = stored.get("invoice")
    if not isinstance(invoice, Mapping):
        return None
    if not invoice.get("issued"):
        return {"issued": False}
    for part in (invoice["seller"], invoice["buyer"]):
        for value in part.values():
            if value is not None:  # a private holder has no VAT number, a company may have no tax code
                refuse_line_breaks(value, "invoice")
    return {
        "issued": True,
        "number": invoice.get("number"),
        "issued_on": date.fromisoformat(invoice["issued_on"]),
        "seller": invoice["seller"],
        "buyer": invoice["buyer"],
        "lines": [
            {
                "description": line["description"],
                "quantity": line["quantity"],
                "amount": _euro(line["amount_cents"], language),
            }
            for line in invoice["lines"]
        ],
        "subtotal": _euro(invoice["subtotal_cents"], language),
        "vat_percent": int(invoice["vat_percent"]),
        "vat": _euro(invoice["vat_cents"], language),
        "total": _euro(invoice["total_cents"], language),
        "split_payment": bool(invoice.get("split_payment")),
        "due": _euro(invoice.get("due_cents", invoice["total_cents"]), language),
    }


_REFUND_KINDS = ("automatic", "requested")


def _refund_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """payment-refunded: the order (or, for an auto-renew charge given back, its one mailbox), and the
    refund (amount, automatic or requested, the method refunded)."""
    refund = stored.get("refund")
    if not isinstance(refund, Mapping):
        raise ValueError("a payment-refunded email needs 'refund' in its context")
    if refund.get("kind") not in _REFUND_KINDS:
        raise ValueError(f"refund kind {refund.get('kind')!r} is not one of {', '.join(_REFUND_KINDS)}")
    method = refund.get("method")
    if method not in ("card", "paypal"):
        raise ValueError(f"refund method {method!r} is not card or paypal")
    language = common["language"]
    charge = refund.get("charge") is True
    if charge and (refund["kind"] != "automatic" or len(common["mailboxes"]) != 1):
        raise ValueError("an auto-renew charge is given back automatically, about one mailbox")
    return {
        **({} if charge else _order_context(stored, common, signer)),
        "refund_charge": charge,
        "refund_amount": _euro(refund.get("amount_cents"), language),
        "refund_automatic": refund["kind"] == "automatic",
        "refund_method_label": vocabulary.METHOD_LABELS[language][method],
    }


#: Adding a kind: a folder in email_templates/ and one entry here.
KIND_RULES: dict[str, KindRules] = {
    "expiry-notice": KindRules(
        renewal_links=True, stages="before", mailboxes_apart=True, renew_all=True, reminder=True
    ),
    "expired-notice": KindRules(
        renewal_links=True, stages="after", mailboxes_apart=True, renew_all=True, reminder=True
    ),
    "domain-expiry-notice": KindRules(
        renewal_links=False, stages="any", extra_context=_domain_notice_context, mailboxes_apart=True, reminder=True
    ),
    # Order emails are not tied to a stage of the schedule; the outbox names them "0d".
    "order-confirmation": KindRules(renewal_links=False, stages="any", extra_context=_order_context),
    "renewal-completed": KindRules(renewal_links=False, stages="any", extra_context=_order_context),
    # Auto-renew (worker/rules/auto_renew.py, worker/services/charges/), one mailbox per email.
    # Each carries the mailbox's auto-renew page (``auto_renew_url``): switch it off or on, replace
    # the method.  charge-failed also carries the cycle's Rinnova link, to pay the unpaid order.
    "charge-notice": KindRules(renewal_links=False, stages="before", extra_context=_charge_context),
    "card-expiring": KindRules(renewal_links=False, stages="before", extra_context=_charge_context),
    "charge-succeeded": KindRules(renewal_links=False, stages="any", extra_context=_charge_context),
    "charge-failed": KindRules(renewal_links=True, stages="any", extra_context=_charge_context),
    # A gateway payment given back: automatically (a double payment, or an auto-renew charge of a
    # mailbox renewed meanwhile) or on request (payments refund).
    "payment-refunded": KindRules(renewal_links=False, stages="any", extra_context=_refund_context),
    # The charge not made while the holder's own order awaits payment: its link leads to that
    # order (how to pay it, change its method, or cancel it).
    "charge-skipped": KindRules(renewal_links=True, stages="before", extra_context=_charge_context),
    # The charge waits for the holder's authentication on session: its link leads to the page that
    # sends the holder to authenticate that charge (worker/web/charge_authentication.py).
    "charge-authentication-required": KindRules(
        renewal_links=False, stages="any", extra_context=_authentication_context
    ),
}
assert set(KIND_RULES) == set(KINDS)
assert {kind for kind, rules in KIND_RULES.items() if rules.reminder} == REMINDER_KINDS
