"""What an order holds: its selected lines, its language, its holder data, its price and its next step.

Plain functions of a :class:`~worker.store.models.RenewalOrder` and its lines;
only :func:`update_totals` writes, on the order object (the caller flushes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from worker.rules import pricing, schedule
from worker.rules.pricing import OrderSummary
from worker.services.orders.link import holder_language
from worker.store.models import (
    Holder,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
    RenewalOrderLine,
)

#: The ``HolderData`` fields kept in ``RenewalOrder.holder_data``.
HOLDER_FIELDS = (
    "name", "kind", "reference_email", "tax_code", "vat_number", "postal_address",
    "sdi_code", "einvoice_pec", "office_code", "cig", "cup",
)  # fmt: skip


def holder_snapshot(holder: Holder) -> dict[str, str | None]:
    """The holder's data as an order keeps it (``HOLDER_FIELDS``)."""
    return {name: getattr(holder, name) for name in HOLDER_FIELDS}


def order_holder(order: RenewalOrder) -> dict[str, str | None]:
    """The holder data the order is invoiced to: as confirmed at step 2, else the holder's own."""
    return order.holder_data or holder_snapshot(order.holder)


def new_expiry(line: RenewalOrderLine, years: int) -> date:
    """The expiry the line's mailbox has once the order is paid: its old expiry plus the years (the
    renewal counts from the expiry, even after it), or the one recorded when it was paid."""
    return line.new_expires_on or schedule.add_years(line.old_expires_on, years)


@dataclass(frozen=True)
class Renewal:
    """One mailbox of an order as the confirmation step and the confirmed page show it."""

    address: str
    plan: str
    old_plan: str
    expires_on: date
    new_expires_on: date


def order_renewals(order: RenewalOrder) -> list[Renewal]:
    """The selected mailboxes of the order, by address, with their current and their new expiry."""
    years = order.years or 1
    return [
        Renewal(line.mailbox.address, line.plan, line.old_plan, line.old_expires_on, new_expiry(line, years))
        for line in sorted(selected_lines(order), key=lambda line: line.mailbox.address)
    ]


def order_language(order: RenewalOrder) -> str:
    return holder_language(order.language)


def selected_lines(order: RenewalOrder) -> list[RenewalOrderLine]:
    """The lines the holder renews (an account order may leave some out)."""
    return [line for line in order.lines if line.selected]


def any_promo(order: RenewalOrder) -> bool:
    return any(line.mailbox.promo for line in selected_lines(order))


def auto_renew_exempt(order: RenewalOrder) -> bool:
    """An unpaid order left by a failed auto-renew charge: payable by any method, no plan change needed."""
    return order.origin == OrderOrigin.AUTO_RENEW_FAILED.value


def earliest_deletion_on(order: RenewalOrder) -> date | None:
    """The earliest deletion date (the 91st day after expiry) of the order's selected mailboxes."""
    dates = [schedule.deletion_date(line.old_expires_on) for line in selected_lines(order)]
    return min(dates) if dates else None


def _line_input(line: RenewalOrderLine) -> pricing.LineInput:
    return pricing.LineInput(line.mailbox.address, line.plan, line.extra_space_gb, line.extra_archive_gb)


def order_summary(order: RenewalOrder) -> OrderSummary:
    """The price line by line, the VAT (22%) and the total, for the years chosen (1 until chosen)."""
    lines = sorted(selected_lines(order), key=lambda line: line.mailbox.address)
    return pricing.price_order([_line_input(line) for line in lines], order.years or 1)


def update_totals(order: RenewalOrder) -> None:
    """The order's and each line's prices for its years (none until the years are chosen)."""
    if order.years is None:
        order.subtotal_cents = order.vat_cents = order.total_cents = None
        for line in order.lines:
            line.price_cents = None
        return
    summary = order_summary(order)
    order.subtotal_cents = summary.subtotal_cents
    order.vat_cents = summary.vat_cents
    order.total_cents = summary.total_cents
    for line in order.lines:
        line.price_cents = pricing.line_price_cents(_line_input(line), order.years) if line.selected else None


def next_step(order: RenewalOrder) -> str:
    """The first step still to do: ``mailboxes``, ``holder``, ``payment``, ``terms``, ``confirm``,
    then ``pay`` (awaiting payment; ``payment`` if an unpaid auto-renew order has no method yet),
    ``paid``, ``cancelled`` or ``lapsed``."""
    if order.status == OrderStatus.PAID.value:
        return "paid"
    if order.status == OrderStatus.CANCELLED.value:
        return "cancelled"
    if order.status == OrderStatus.LAPSED.value:
        return "lapsed"
    if order.status == OrderStatus.AWAITING_PAYMENT.value:
        return "payment" if order.payment_method is None else "pay"
    if not order.mailboxes_confirmed:
        return "mailboxes"
    if order.holder_data is None:
        return "holder"
    if order.payment_method is None or order.years is None:
        return "payment"
    if order.terms_accepted_at is None or order.unfair_terms_approved_at is None:
        return "terms"
    return "confirm"


def order_number_for(order_id: int, year: int) -> str:
    """``PEC-2027-000123``: the year of confirmation and the order's id (6 digits or more)."""
    return f"PEC-{year:04d}-{order_id:06d}"
