"""The manual renewal order, from a signed link to a confirmed order awaiting payment.

The web link handler (``worker/web``) is a thin layer over this package: every
function takes an open ``session`` and the time (``today`` and/or ``now``) as
arguments, nothing reads a clock, and the caller commits (except
:func:`worker.services.payments.pay_order_with_gateway`, which commits its intent
before calling the gateway).

The flow, one module per part:

- ``link``: :func:`describe_link` (GET, read-only): what the link is about and
  whether an order can start; :func:`read_mailbox_link` is the link page's
  read of it.
- ``start``: :func:`start_order` (POST): the open order of that link (target +
  expiry cycle), created once; a second POST gives the same order.  Also the
  unpaid order a failed auto-renew charge leaves.
- ``steps``: :func:`choose_mailboxes` (plan and extras per mailbox),
  :func:`set_holder` (the holder data, "Dati intestatario", with
  e-invoicing), :func:`choose_payment` (the method and the years;
  :func:`payment_options` lists the methods that may be offered),
  :func:`accept_terms`, and :func:`confirm_order` (the order number, status
  ``awaiting_payment`` and the ``order-confirmation`` email).
- ``life``: after the start: :func:`cancel_order` (an unpaid order, by the
  holder or the desk), :func:`change_payment_method` (a confirmed order, after
  a decline or a change of mind), :func:`lapse_orders` (the daily run, on the
  deletion date) and :func:`pending_manual_order` (what an auto-renew charge
  must not run past).  A cancelled or lapsed order frees its link's cycle.
- ``summary``: what an order holds and costs, and its next step.
- ``emails``: the order's emails and their payment instructions.
- ``messages`` and ``errors``: what a refused step says.

Validation errors raise :class:`OrderValidationError` whose ``errors`` maps a
form field name to a message in the holder's language (Italian, or English
for ``language == "en"``).  Field names: for mailboxes ``plan-<mailbox_id>``,
``extra_space_gb-<mailbox_id>``, ``extra_archive_gb-<mailbox_id>``,
``confirm_archive_deletion-<mailbox_id>`` and ``mailboxes`` (the whole
selection); for the holder the :func:`worker.rules.holder_data.check_holder`
argument names (``name``, ``kind``, ``reference_email``, ``tax_code``,
``vat_number``, ``einvoice_code``, ``postal_address``, ``cig``, ``cup``); for
the payment ``method`` and ``years``; ``terms``; and ``order`` for a problem
with the order as a whole (wrong status, a step missing).
"""

from __future__ import annotations

from worker.rules.pricing import OrderSummary, PriceLine
from worker.rules.vocabulary import (
    BANK_TRANSFER,
    CARD,
    PAYMENT_METHODS,
    PAYPAL,
    POSTAL_SLIP,
)
from worker.services.orders.emails import (
    ORDER_CONFIRMATION,
    ORDER_EMAIL_STAGE,
    RENEWAL_COMPLETED,
    checkout_url,
    mail_domain,
    order_email_context,
    payment_instructions,
    queue_order_email,
)
from worker.services.orders.errors import (
    LinkNotUsable,
    OrderError,
    OrderNotOpen,
    OrderValidationError,
)
from worker.services.orders.life import (
    UNRESOLVED_GATEWAY_STATES,
    LapseResult,
    cancel_order,
    change_payment_method,
    lapse_orders,
    pending_manual_order,
    pending_orders,
    withdraw_confirmation,
)
from worker.services.orders.link import (
    LinkState,
    LinkView,
    MailboxSummary,
    describe_link,
    in_renewal_window,
    read_mailbox_link,
)
from worker.services.orders.messages import holder_problem_message, message
from worker.services.orders.start import (
    create_unpaid_renewal_order,
    find_order,
    find_order_by_number,
    order_mailboxes,
    start_order,
)
from worker.services.orders.steps import (
    MailboxChoice,
    PaymentOption,
    accept_terms,
    choose_mailboxes,
    choose_payment,
    confirm_order,
    holder_form_data,
    payment_options,
    set_holder,
)
from worker.services.orders.summary import (
    HOLDER_FIELDS,
    Renewal,
    earliest_deletion_on,
    new_expiry,
    next_step,
    order_holder,
    order_number_for,
    order_renewals,
    order_summary,
)

__all__ = [
    "BANK_TRANSFER",
    "CARD",
    "HOLDER_FIELDS",
    "ORDER_CONFIRMATION",
    "ORDER_EMAIL_STAGE",
    "PAYMENT_METHODS",
    "PAYPAL",
    "POSTAL_SLIP",
    "RENEWAL_COMPLETED",
    "UNRESOLVED_GATEWAY_STATES",
    "LapseResult",
    "LinkNotUsable",
    "LinkState",
    "LinkView",
    "MailboxChoice",
    "MailboxSummary",
    "OrderError",
    "OrderNotOpen",
    "OrderSummary",
    "OrderValidationError",
    "PaymentOption",
    "PriceLine",
    "Renewal",
    "accept_terms",
    "cancel_order",
    "change_payment_method",
    "checkout_url",
    "choose_mailboxes",
    "choose_payment",
    "confirm_order",
    "create_unpaid_renewal_order",
    "describe_link",
    "earliest_deletion_on",
    "find_order",
    "find_order_by_number",
    "holder_form_data",
    "holder_problem_message",
    "in_renewal_window",
    "lapse_orders",
    "mail_domain",
    "message",
    "new_expiry",
    "next_step",
    "order_email_context",
    "order_holder",
    "order_mailboxes",
    "order_number_for",
    "order_renewals",
    "order_summary",
    "payment_instructions",
    "payment_options",
    "pending_manual_order",
    "pending_orders",
    "queue_order_email",
    "read_mailbox_link",
    "set_holder",
    "start_order",
    "withdraw_confirmation",
]
