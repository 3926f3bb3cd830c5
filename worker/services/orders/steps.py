"""The steps of a started order: mailboxes, holder data, payment method and years, terms, confirmation.

Each step checks its input against the rules (``worker.rules.pricing``,
``worker.rules.holder_data``) and raises :class:`OrderValidationError` with a
message per field, changing nothing; or records the choice on the order and
flushes.  The caller commits.  Only a draft's steps change, except the payment
method of an unpaid order left by a failed auto-renew charge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.mail.templates import format_long_date
from worker.rules import pricing, schedule
from worker.rules.auto_renew import UNRESOLVED
from worker.rules.holder_data import check_holder
from worker.rules.vocabulary import GATEWAY_METHODS, METHOD_LABELS, PAYMENT_METHODS, label
from worker.services.orders.emails import ORDER_CONFIRMATION, queue_order_email
from worker.services.orders.errors import OrderNotOpen, OrderValidationError
from worker.services.orders.messages import holder_problem_message, message
from worker.services.orders.summary import (
    HOLDER_FIELDS,
    any_promo,
    auto_renew_exempt,
    earliest_deletion_on,
    holder_snapshot,
    next_step,
    order_language,
    order_number_for,
    selected_lines,
    update_totals,
)
from worker.store.models import ChargeIntent, Mailbox, OrderStatus, RenewalOrder, RenewalOrderLine


@dataclass(frozen=True)
class MailboxChoice:
    """The holder's choice for one mailbox at step 1 ("Gestione caselle PEC")."""

    mailbox_id: int
    plan: str
    extra_space_gb: int = 0
    extra_archive_gb: int = 0
    confirm_archive_deletion: bool = False
    #: For an account order: whether this mailbox is renewed at all.
    renew: bool = True


@dataclass(frozen=True)
class PaymentOption:
    method: str  # card, paypal, bank_transfer, postal_slip
    #: Whether it may be offered today (registration before deletion).
    available: bool
    #: The latest day the payment would be registered, if paid today.
    registered_by: date
    #: Why it is not offered, in the holder's language (None when available).
    reason: str | None = None
    #: Card and PayPal switch auto-renew on.
    switches_auto_renew_on: bool = False


def _require_draft(order: RenewalOrder) -> None:
    if order.status == OrderStatus.DRAFT.value:
        return
    key = {
        OrderStatus.PAID.value: "order_paid",
        OrderStatus.CANCELLED.value: "order_cancelled",
    }.get(order.status, "order_not_open")
    raise OrderNotOpen({"order": message(key, order_language(order))})


# -- Step 1: the mailboxes -----------------------------------------------------------------------------


def choose_mailboxes(
    session: Session, order: RenewalOrder, choices: Sequence[MailboxChoice], today: date | None = None
) -> RenewalOrder:
    """Step 1: the plan and extras of each mailbox; validated against the rules of ``worker.rules.pricing``.

    A line without a choice keeps its current values (and is checked).
    Raises :class:`OrderValidationError` with per-field messages, changing
    nothing, when a rule is broken: an unknown plan, extras beyond the plan's
    limits, used space that does not fit, a downgrade to Standard without
    ``confirm_archive_deletion``, an auto-renew mailbox without a plan change,
    no mailbox selected.  With ``today``, a mailbox deleted since is refused too.
    """
    _require_draft(order)
    language = order_language(order)
    errors: dict[str, str] = {}
    by_id: dict[int, MailboxChoice] = {}
    line_ids = {line.mailbox_id for line in order.lines}
    for choice in choices:
        if choice.mailbox_id not in line_ids:
            errors["mailboxes"] = message("unknown_mailbox", language)
            continue
        by_id[choice.mailbox_id] = choice
    planned = [(line, by_id.get(line.mailbox_id) or _current_choice(line)) for line in order.lines]
    for line, choice in planned:
        if choice.renew:
            for field_name, text in _choice_problems(order, line, choice, today, language):
                errors.setdefault(field_name, text)
    if not any(choice.renew for _line, choice in planned):
        errors.setdefault("mailboxes", message("no_mailboxes", language))
    if errors:
        raise OrderValidationError(errors)
    _apply_choices(order, planned)
    session.flush()
    return order


def _current_choice(line: RenewalOrderLine) -> MailboxChoice:
    """The choice a line already holds (for a mailbox the form did not send)."""
    return MailboxChoice(
        mailbox_id=line.mailbox_id,
        plan=line.plan,
        extra_space_gb=line.extra_space_gb,
        extra_archive_gb=line.extra_archive_gb,
        confirm_archive_deletion=line.archive_deletion_confirmed,
        renew=line.selected,
    )


def _choice_problems(
    order: RenewalOrder, line: RenewalOrderLine, choice: MailboxChoice, today: date | None, language: str
) -> list[tuple[str, str]]:
    """(field name, message) for each rule the choice breaks."""
    mailbox = line.mailbox
    deleted = today is not None and schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED
    problems = pricing.check_mailbox_choice(
        address=mailbox.address,
        current_plan=mailbox.plan,
        used_space_mb=mailbox.used_space_mb or 0,
        on_domain=mailbox.domain_id is not None,
        deleted=deleted,
        auto_renew=bool(mailbox.auto_renew),
        plan=choice.plan,
        extra_space_gb=choice.extra_space_gb,
        extra_archive_gb=choice.extra_archive_gb,
        confirm_archive_deletion=bool(choice.confirm_archive_deletion),
        auto_renew_exempt=auto_renew_exempt(order),
    )
    return [(f"{problem.field}-{line.mailbox_id}", problem.message(language)) for problem in problems]


def _apply_choices(order: RenewalOrder, planned: list[tuple[RenewalOrderLine, MailboxChoice]]) -> None:
    for line, choice in planned:
        line.selected = bool(choice.renew)
        if choice.renew:
            line.plan = choice.plan
            line.extra_space_gb = choice.extra_space_gb
            line.extra_archive_gb = choice.extra_archive_gb
            downgrade = pricing.is_downgrade_to_standard(line.mailbox.plan, choice.plan)
            line.archive_deletion_confirmed = downgrade and bool(choice.confirm_archive_deletion)
    order.mailboxes_confirmed = True
    if order.years is not None:
        if pricing.check_years(order.years, any_promo(order)) is not None:
            order.years = None  # no longer allowed (a promo mailbox was added): choose again
        update_totals(order)


# -- Step 2: the holder --------------------------------------------------------------------------------


def holder_form_data(order: RenewalOrder) -> dict[str, str]:
    """The holder fields to pre-fill step 2 with: the edited data if any, else the holder's own.

    The keys are :func:`worker.rules.holder_data.check_holder`'s arguments; the
    e-invoicing code is given as ``einvoice_code`` whichever column holds it.
    """
    data = order.holder_data or holder_snapshot(order.holder)
    einvoice = data.get("sdi_code") or data.get("einvoice_pec") or data.get("office_code") or ""
    return {
        "name": data.get("name") or "",
        "kind": data.get("kind") or "",
        "reference_email": data.get("reference_email") or "",
        "tax_code": data.get("tax_code") or "",
        "vat_number": data.get("vat_number") or "",
        "einvoice_code": einvoice,
        "postal_address": data.get("postal_address") or "",
        "cig": data.get("cig") or "",
        "cup": data.get("cup") or "",
        **{name: data.get(name) or "" for name in BILLING_FIELDS},
    }


_HOLDER_FORM_FIELDS = (
    "name", "kind", "reference_email", "tax_code", "vat_number", "einvoice_code", "postal_address", "cig", "cup",
    "billing_address", "billing_postcode", "billing_city", "billing_province", "billing_country",
)  # fmt: skip
#: The billing address (the electronic invoice's), pre-filled from the holder's imported data.
BILLING_FIELDS = _HOLDER_FORM_FIELDS[-5:]


def set_holder(session: Session, order: RenewalOrder, form_data: Mapping[str, str | None]) -> RenewalOrder:
    """Step 2: confirm or edit the holder data (``check_holder``'s fields).

    The data is checked with :func:`worker.rules.holder_data.check_holder` (tax code
    and VAT checksums, e-invoicing code by holder kind, CIG/CUP only for a
    public administration) and kept on the order; it takes effect on the
    mailboxes when the payment is registered.  Raises
    :class:`OrderValidationError` in the holder's language.
    """
    _require_draft(order)
    values = {}
    for name in _HOLDER_FORM_FIELDS:
        value = form_data.get(name)
        values[name] = value if isinstance(value, str) else None
    holder, problems = check_holder(**values)
    if problems:
        language = order_language(order)
        kind = (values.get("kind") or "").strip().lower()
        errors: dict[str, str] = {}
        for problem in problems:
            errors.setdefault(problem.field, holder_problem_message(problem.field, problem.message, kind, language))
        raise OrderValidationError(errors)
    assert holder is not None
    order.holder_data = {name: getattr(holder, name) for name in HOLDER_FIELDS}
    session.flush()
    return order


# -- Step 3: the payment method and the years ----------------------------------------------------------


def _too_late(method: str | None, order: RenewalOrder, today: date, language: str) -> str | None:
    """Why ``method`` can no longer pay the order (its payment would be registered after a deletion), or None."""
    deletion_on = earliest_deletion_on(order)
    if deletion_on is None or pricing.method_in_time(method, today, deletion_on):
        return None
    return _too_late_message(deletion_on, today, language)


def _too_late_message(deletion_on: date, today: date, language: str) -> str:
    """Why a method is too late, naming the methods that are still in time ("carta di credito, PayPal o
    bonifico bancario"): never only card and PayPal while a bank transfer is still offered."""
    in_time = [label(METHOD_LABELS, method, language) for method in PAYMENT_METHODS
               if pricing.method_in_time(method, today, deletion_on)]  # fmt: skip
    conjunction = " or " if language == "en" else " o "
    methods = conjunction.join([", ".join(in_time[:-1]), in_time[-1]]) if len(in_time) > 1 else "".join(in_time)
    return message("method_too_late", language, deletion=format_long_date(deletion_on, language), methods=methods)


def payment_options(session: Session, order: RenewalOrder, today: date) -> list[PaymentOption]:
    """Every payment method, and whether it may be offered today.

    A method is refused when its registration delay would end after the
    earliest deletion date of the order's mailboxes: card and PayPal register
    at once, a bank transfer the next working day, a postal slip in up to 7
    working days (Italian working days: ``worker.rules.pricing.add_working_days``).
    """
    language = order_language(order)
    deletion_on = earliest_deletion_on(order)
    options = []
    for method in PAYMENT_METHODS:
        by = pricing.registered_by(method, today)
        available = deletion_on is None or by < deletion_on
        reason = None
        if deletion_on is not None and not available:
            reason = _too_late_message(deletion_on, today, language)
        options.append(
            PaymentOption(
                method=method,
                available=available,
                registered_by=by,
                reason=reason,
                switches_auto_renew_on=method in GATEWAY_METHODS,
            )
        )
    return options


def _may_change_payment(order: RenewalOrder) -> bool:
    """A draft, or an unpaid order left by a failed auto-renew charge (payable by any method)."""
    if order.status == OrderStatus.DRAFT.value:
        return True
    return order.status == OrderStatus.AWAITING_PAYMENT.value and auto_renew_exempt(order)


def choose_payment(
    session: Session,
    order: RenewalOrder,
    method: str,
    years: int,
    today: date,
    *,
    split_payment_for_pa: bool | None = None,
) -> RenewalOrder:
    """Step 3: the payment method and the renewal frequency (1-5 years; 1-2 with a promo mailbox).

    Raises :class:`OrderValidationError` (fields ``method``, ``years``, or
    ``order`` when step 1 is not done).  The totals of the order are computed
    here.  Also allowed on an unpaid order left by a failed auto-renew charge,
    whose method may be chosen (or changed) while it awaits payment.
    """
    if not _may_change_payment(order):
        _require_draft(order)
    language = order_language(order)
    errors: dict[str, str] = {}
    if not order.mailboxes_confirmed:
        errors["order"] = message("step_mailboxes", language)
    if method not in PAYMENT_METHODS:
        errors["method"] = message("method_unknown", language)
    elif (too_late := _too_late(method, order, today, language)) is not None:
        errors["method"] = too_late
    if order.status == OrderStatus.AWAITING_PAYMENT.value and years != order.years:
        years = order.years  # the years of a confirmed order are fixed
    problem = pricing.check_years(years, any_promo(order))
    if problem is not None:
        errors["years"] = message(problem.key, language, **problem.values)
    if errors:
        raise OrderValidationError(errors)
    order.payment_method = method
    order.years = years
    update_totals(order, split_payment_for_pa)
    session.flush()
    return order


# -- Step 4: the terms, and the confirmation -----------------------------------------------------------


def accept_terms(
    session: Session, order: RenewalOrder, now: datetime, accepted: bool = True, clauses_approved: bool = True
) -> RenewalOrder:
    """Step 4: the contract terms, and the specific approval of the clauses of artt. 1341-1342 c.c.
    (``UNFAIR_TERMS_CLAUSES``), each recorded with its time.  Both are required: one missing raises
    :class:`OrderValidationError` (``terms``, ``clauses``) and records neither."""
    _require_draft(order)
    errors = {}
    if not accepted:
        errors["terms"] = message("terms_required", order_language(order))
    if not clauses_approved:
        errors["clauses"] = message("clauses_required", order_language(order))
    if errors:
        order.terms_accepted_at = order.unfair_terms_approved_at = None
        raise OrderValidationError(errors)
    order.terms_accepted_at = order.unfair_terms_approved_at = now
    session.flush()
    return order


@dataclass(frozen=True)
class _Held:
    """What holds an order's mailboxes elsewhere, read under their locks."""

    #: Mailboxes whose auto-renew charge of the cycle has no answer yet.
    charging: frozenset[int]
    #: Mailbox id -> the number of another confirmed order of the same cycle awaiting payment.
    ordered: dict[int, str]


def _lock_mailboxes(session: Session, order: RenewalOrder) -> _Held:
    """Lock the order's selected mailboxes (as the auto-renew charge does before it claims), read
    them afresh, and say which are held elsewhere: a charge of their cycle in flight (started or
    unknown), or another confirmed order of their cycle awaiting payment.

    A confirmation and a charge of one mailbox thus run one after the other: a charge that
    comes second sees the order awaiting payment and is not made; a confirmation that comes
    second is refused while the charge has no answer, and after a success because the
    mailbox was renewed.  Two confirmations of orders sharing a mailbox (its own link's and a
    "Rinnova tutte" link's, say) run one after the other too, and the second is refused: one
    cycle never has two orders awaiting payment."""
    ids = sorted(line.mailbox_id for line in selected_lines(order))
    mailboxes = session.scalars(
        select(Mailbox).where(Mailbox.id.in_(ids)).order_by(Mailbox.id).with_for_update()
        .execution_options(populate_existing=True)
    ).all()  # fmt: skip
    cycle_of = {mailbox.id: mailbox.expires_on for mailbox in mailboxes}
    in_flight = session.execute(
        select(ChargeIntent.mailbox_id, ChargeIntent.cycle_expires_on).where(
            ChargeIntent.mailbox_id.in_(ids), ChargeIntent.status.in_(UNRESOLVED)
        )
    ).all()
    others = session.execute(
        select(RenewalOrderLine.mailbox_id, RenewalOrderLine.old_expires_on, RenewalOrder.order_number)
        .join(RenewalOrder, RenewalOrder.id == RenewalOrderLine.order_id)
        .where(
            RenewalOrderLine.mailbox_id.in_(ids),
            RenewalOrderLine.selected.is_(True),
            RenewalOrder.status == OrderStatus.AWAITING_PAYMENT.value,
            RenewalOrder.id != order.id,
        )
    ).all()
    return _Held(
        charging=frozenset(mailbox_id for mailbox_id, cycle in in_flight if cycle_of.get(mailbox_id) == cycle),
        ordered={mailbox_id: number for mailbox_id, cycle, number in others if cycle_of.get(mailbox_id) == cycle},
    )


def _check_still_renewable(order: RenewalOrder, today: date, held: _Held) -> dict[str, str]:
    language = order_language(order)
    errors: dict[str, str] = {}
    for line in selected_lines(order):
        mailbox = line.mailbox
        if mailbox.id in held.charging:
            errors[f"plan-{mailbox.id}"] = message("charge_in_progress", language, address=mailbox.address)
        elif mailbox.expires_on != line.old_expires_on or mailbox.domain_id is not None:
            errors[f"plan-{mailbox.id}"] = message("mailbox_changed", language, address=mailbox.address)
        elif schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
            errors[f"plan-{mailbox.id}"] = pricing.problem_message("deleted", language, address=mailbox.address)
        elif mailbox.id in held.ordered:
            number = held.ordered[mailbox.id]
            errors[f"plan-{mailbox.id}"] = message("in_another_order", language, address=mailbox.address, number=number)
    return errors


_STEP_MESSAGES = {
    "mailboxes": "step_mailboxes",
    "holder": "step_holder",
    "payment": "step_payment",
    "terms": "terms_required",
}


def confirm_order(
    session: Session, order: RenewalOrder, *, now: datetime, today: date, settings: Settings
) -> RenewalOrder:
    """Step 5: confirm the order.  Idempotent: a second call returns it unchanged.

    Checks every step again (and that no mailbox was renewed or deleted
    meanwhile, and that the method is still in time), gives the order its
    number (``PEC-2027-000123``), sets it ``awaiting_payment`` and queues the
    ``order-confirmation`` email to the holder's reference address with the
    payment instructions (bank transfer: IBAN, beneficiary, amount and order
    number for the payment reference; postal slip: the same with the postal
    account; card / PayPal: the checkout link, see ``checkout_url``).
    The order row is locked first, so a double click confirms once.
    The caller commits.
    """
    session.refresh(order, with_for_update=True)
    if order.status in (OrderStatus.AWAITING_PAYMENT.value, OrderStatus.PAID.value):
        return order
    _require_draft(order)
    language = order_language(order)
    step = next_step(order)
    if step != "confirm":
        raise OrderValidationError({"terms" if step == "terms" else "order": message(_STEP_MESSAGES[step], language)})
    errors = _check_still_renewable(order, today, _lock_mailboxes(session, order))
    if (too_late := _too_late(order.payment_method, order, today, language)) is not None:
        errors["method"] = too_late
    if errors:
        raise OrderValidationError(errors)
    update_totals(order, settings.split_payment_for_pa)
    order.order_number = order_number_for(order.id, today.year)
    order.status = OrderStatus.AWAITING_PAYMENT.value
    order.confirmed_at = now
    session.flush()
    queue_order_email(session, order, ORDER_CONFIRMATION, now=now, today=today, settings=settings)
    return order
