"""What an order holds: its selected lines, its language, its holder data, its price and its next step.

Plain functions of a :class:`~worker.store.models.RenewalOrder` and its lines;
only :func:`update_totals` writes, on the order object (the caller flushes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from worker.rules import pricing, schedule
from worker.rules.pricing import OrderSummary
from worker.rules.vocabulary import PUBLIC_ADMINISTRATION
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
    "billing_address", "billing_postcode", "billing_city", "billing_province", "billing_country",
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


def split_payment(order: RenewalOrder) -> bool:
    """Whether the order asks its total under split payment (the VAT left to the public administration):
    as its totals were last worked out (:func:`update_totals`)."""
    return bool(order.vat_cents) and order.total_cents is not None and order.total_cents == order.subtotal_cents


def order_summary(order: RenewalOrder) -> OrderSummary:
    """The price line by line, the VAT (22%) and the total to pay, for the years chosen (1 until chosen)."""
    lines = sorted(selected_lines(order), key=lambda line: line.mailbox.address)
    return pricing.price_order(
        [_line_input(line) for line in lines], order.years or 1, split_payment=split_payment(order)
    )


def update_totals(order: RenewalOrder, split_payment_for_pa: bool | None = None) -> None:
    """The order's and each line's prices for its years (none until the years are chosen).

    ``split_payment_for_pa`` (the setting ``SPLIT_PAYMENT_FOR_PA``): a public administration's
    order asks the subtotal, the VAT being left to it; None keeps the order's way as it is
    (the steps that do not read the settings).  The payment step and the confirmation decide.
    """
    if order.years is None:
        order.subtotal_cents = order.vat_cents = order.total_cents = None
        for line in order.lines:
            line.price_cents = None
        return
    split = (
        split_payment(order)
        if split_payment_for_pa is None
        else split_payment_for_pa and order_holder(order).get("kind") == PUBLIC_ADMINISTRATION
    )
    lines = sorted(selected_lines(order), key=lambda line: line.mailbox.address)
    summary = pricing.price_order([_line_input(line) for line in lines], order.years, split_payment=split)
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
