"""The order's emails: ``order-confirmation`` (with the payment instructions) and ``renewal-completed``.

:func:`queue_order_email` writes the outbox row, once per order and kind; the
relay renders it from :func:`order_email_context`, plain data only.
"""

from __future__ import annotations

from datetime import date, datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy.orm import Session

from config.settings import Settings
from worker.mail.message_ids import OrderEmail
from worker.mail.queue import NewEmail, QueuedEmail, queue_email
from worker.rules import pricing
from worker.rules.links import GROUP
from worker.rules.vocabulary import GATEWAY_METHODS
from worker.services.orders.summary import (
    new_expiry,
    order_holder,
    order_language,
    order_summary,
    selected_lines,
)
from worker.store.models import (
    RenewalOrder,
    RenewalOrderLine,
)

ORDER_CONFIRMATION = "order-confirmation"
RENEWAL_COMPLETED = "renewal-completed"
#: The outbox and its renderer name every email by a stage; order emails are not
#: tied to a stage of the schedule and use "0d".
ORDER_EMAIL_STAGE = "0d"


def checkout_url(settings: Settings, order: RenewalOrder) -> str:
    """Where a card / PayPal order is paid: ``{BASE_URL}/ordine/{public_id}/pagamento``.

    The link handler serves this path (an opaque order id, no link token).
    """
    return f"{settings.base_url}/ordine/{order.public_id}/pagamento"


def mail_domain(settings: Settings) -> str:
    """The domain of ``MAIL_FROM``, which names the Message-IDs."""
    return parseaddr(settings.mail_from)[1].rpartition("@")[2]


def payment_instructions(order: RenewalOrder, settings: Settings) -> dict[str, Any]:
    """What the holder needs to pay the order, for the confirmation page and email.

    ``method``, ``order_number``, ``amount_cents``, ``amount`` (``48.80``),
    ``iban``, ``beneficiary`` (bank transfer), ``postal_account`` (postal
    slip), ``reference`` (what to write as the payment reference: the order
    number), ``checkout_url`` (card / PayPal), ``registered_in_working_days``.
    """
    total = order.total_cents or 0
    return {
        "method": order.payment_method,
        "order_number": order.order_number,
        "amount_cents": total,
        "amount": pricing.format_amount(total),
        "iban": settings.bank_iban,
        "beneficiary": settings.bank_beneficiary,
        "postal_account": settings.postal_account,
        "reference": order.order_number,
        "checkout_url": checkout_url(settings, order),
        # The email links to the signed Rinnova link the order was started from
        # (signed when the email is rendered; no token is stored).
        "resume_link": resume_link(order),
        "registered_in_working_days": pricing.REGISTRATION_WORKING_DAYS.get(order.payment_method or "", 0),
    }


def resume_link(order: RenewalOrder) -> dict[str, Any]:
    """The link the order was started from, as plain data: target, id, cycle, and a group's mailboxes."""
    link: dict[str, Any] = {
        "target": order.link_target,
        "id": order.link_target_id,
        "cycle": order.link_cycle.isoformat(),
    }
    if order.link_target == GROUP:
        # The link's mailboxes as far as the order knows them, with the one its key names (the
        # smallest of the link's): the same order, whichever of them has left the window since.
        link["ids"] = sorted({order.link_target_id, *(line.mailbox_id for line in order.lines)})
    return link


def _mailbox_context(line: RenewalOrderLine, years: int) -> dict[str, Any]:
    return {
        "id": line.mailbox_id,
        "address": line.mailbox.address,
        # The templates show each mailbox with the expiry it renews from.
        "expires_on": line.old_expires_on.isoformat(),
        "plan": line.plan,
        "domain": None,
        "old_plan": line.old_plan,
        "extra_space_gb": line.extra_space_gb,
        "extra_archive_gb": line.extra_archive_gb,
        "archive_deleted": pricing.is_downgrade_to_standard(line.old_plan, line.plan),
        "new_expires_on": new_expiry(line, years).isoformat(),
    }


def order_email_context(order: RenewalOrder, settings: Settings) -> dict[str, Any]:
    """The plain data the ``order-confirmation`` and ``renewal-completed`` emails are rendered from."""
    holder = order_holder(order)
    summary = order_summary(order)
    lines = sorted(selected_lines(order), key=lambda line: line.mailbox.address)
    return {
        "holder_name": holder.get("name"),
        "holder_kind": holder.get("kind"),
        "mailboxes": [_mailbox_context(line, order.years or 1) for line in lines],
        "order": {
            "number": order.order_number,
            "years": order.years or 1,
            "method": order.payment_method,
            "subtotal_cents": summary.subtotal_cents,
            "vat_percent": summary.vat_percent,
            "vat_cents": summary.vat_cents,
            "total_cents": summary.total_cents,
            "split_payment": summary.split_payment,
            "lines": [
                {"label_it": line.label("it"), "label_en": line.label("en"), "amount_cents": line.amount_cents}
                for line in summary.lines
            ],
            "auto_renew": order.payment_method in GATEWAY_METHODS,
        },
        "payment": payment_instructions(order, settings),
    }


def queue_order_email(
    session: Session,
    order: RenewalOrder,
    kind: str,
    *,
    now: datetime,
    today: date,
    settings: Settings,
    extra: dict[str, Any] | None = None,
    resend: int = 0,
) -> QueuedEmail | None:
    """Queue ``kind`` (order-confirmation or renewal-completed) for the order, once per order and
    ``resend`` (0; the n-th change of the payment method re-sends the confirmation as ``n``).

    ``extra``: more of the context (the renewal-completed email's invoice)."""
    holder = order_holder(order)
    email = NewEmail(
        about=OrderEmail(kind, order.order_number),
        kind=kind,
        stage=ORDER_EMAIL_STAGE,
        language=order_language(order),
        to_address=holder["reference_email"].lower(),
        context=order_email_context(order, settings) | (extra or {}),
        resend=resend,
    )
    return queue_email(session, email, mail_domain=mail_domain(settings), business_date=today, now=now)
