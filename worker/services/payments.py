"""Registering payments: the step that completes a renewal.

- :func:`register_payment` registers one payment of a confirmed order, by
  hand (``pec-renewal payments register``), from a bank statement, or after
  a successful gateway charge.  It is idempotent by ``(order, reference)``:
  the same payment registered twice is registered once.  A wrong amount, an
  unknown or unconfirmed order, an order already paid by another payment, or
  a mailbox renewed or deleted since the order: refused with
  :class:`PaymentRefused`, and nothing changes.
- :func:`import_bank_statement` matches the lines of a bank statement (CSV) to
  orders by the order number in the payment reference.
- :func:`pay_order_with_gateway` charges a card / PayPal token at checkout
  ("intent, act, record") and registers the payment on success.

On registration each mailbox's expiry moves forward by the order's years from
its OLD expiry (29 February goes to 28 February), the plan and extras take
effect (a move to Standard drops the archive), the holder data confirmed in
the order takes effect, card and PayPal store the payment method and switch
auto-renew on with the chosen frequency, ``next_action_on`` restarts at the
first stage of the new cycle, and a ``renewal-completed`` email is queued.
Old links then show "already renewed", since the expiry moved on.

Bank statement CSV (UTF-8, a header row, comma or semicolon separated):

=============  ==========================================================
``date``       the value date: ``2027-03-31`` or ``31/03/2027``
``amount``     the credit in euro: ``48.80``, ``48,80``, ``1.234,56`` or
               ``1,234.56`` (an optional ``€`` / ``EUR``); a debit
               (negative amount) is skipped
``reference``  the payment reference (causale) as the bank shows it; the
               order number ``PEC-2027-000123`` is found anywhere in it
``id``         optional: the bank's transaction id (CRO / TRN); when given
               it is the payment's reference for idempotency, else the
               date and the reference text are
=============  ==========================================================

Header names are case-insensitive, and the Italian ``data``, ``data valuta``,
``importo``, ``causale`` and ``descrizione`` are accepted.  Other columns are
ignored.  Lines that match no order, match several, or
carry the wrong amount are reported and change nothing.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from worker.rules import pricing, schedule
from worker.rules.holder_data import HolderData
from worker.store.models import Holder, Mailbox, OrderStatus, Payment, RenewalOrder
from worker.services.orders import HOLDER_FIELDS, RENEWAL_COMPLETED, queue_order_email
from worker.rules.schedule import Stage

ORDER_NUMBER_RE = re.compile(r"PEC-(\d{4})-(\d{6,})", re.IGNORECASE)
REFERENCE_MAX = 200


class PaymentRefused(Exception):
    """The payment cannot be registered; nothing changed.  ``code`` names why, ``str()`` says it."""

    def __init__(self, code: str, message: str, *, order_number: str | None = None):
        self.code = code
        self.order_number = order_number
        super().__init__(message)


@dataclass(frozen=True)
class RenewedMailbox:
    address: str
    old_expires_on: date
    new_expires_on: date
    plan: str


@dataclass(frozen=True)
class RegistrationResult:
    order_number: str
    #: False when this payment was already registered (nothing changed this time).
    registered: bool
    payment_id: int
    amount_cents: int
    method: str
    renewed: tuple[RenewedMailbox, ...] = ()


def parse_euro(text: str) -> int:
    """Euro cents from ``48.80``, ``48,80``, ``48``, ``1.234,56``, ``1,234.56``, ``€ 48,80``, ``48.80 EUR``.

    ValueError for anything else (more than 2 decimals, letters, empty).  A
    leading ``-`` gives a negative amount.
    """
    value = text.strip().replace("\u00a0", " ")
    value = re.sub(r"(?i)^(eur|€)\s*|\s*(eur|€)$", "", value).strip().replace(" ", "")
    negative = value.startswith("-")
    if value[:1] in "+-":
        value = value[1:]
    if not value:
        raise ValueError(f"{text!r} is not an amount in euro")
    match = re.fullmatch(r"(\d{1,3}(?:([.,])\d{3})*|\d+)(?:([.,])(\d{1,2}))?", value)
    if not match:
        raise ValueError(f"{text!r} is not an amount in euro such as 48.80 or 48,80")
    whole, thousands, decimal, cents = match.groups()
    # With thousands separators the decimals must follow with the other one ("1.234,56"):
    # "1.234" alone could be 1234 euro or a mistyped 1.23, and money is not guessed.
    if thousands and (decimal is None or decimal == thousands):
        raise ValueError(f"{text!r} is ambiguous: write 1234.56, 1234,56, 1.234,56 or 1,234.56")
    euros = int(whole.replace(".", "").replace(",", "")) if thousands else int(whole)
    amount = euros * 100 + (int(cents.ljust(2, "0")) if cents else 0)
    return -amount if negative else amount


def find_order_numbers(reference: str) -> list[str]:
    """The distinct order numbers in a payment reference, normalised (``PEC-2027-000123``)."""
    found = []
    for year, number in ORDER_NUMBER_RE.findall(reference):
        value = f"PEC-{year}-{number}"
        if value not in found:
            found.append(value)
    return found


def register_payment(
    session: Session,
    *,
    order_number: str,
    amount_cents: int,
    method: str,
    reference: str,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
    payment_token: str | None = None,
) -> RegistrationResult:
    """Register one payment of a confirmed order; see the module's docstring.

    ``reference``: the bank's reference, the slip's number or the gateway's
    charge key; with the order it is the idempotency key.  ``payment_token``:
    for card / PayPal, the stored method to charge at the next renewals.
    ``stages``: the notice schedule (default ``settings.notice_stages``).
    Locks the order row, so two registrations of one order run one after the
    other.  The caller commits.
    """
    stages = settings.notice_stages if stages is None else stages
    number = (order_number or "").strip().upper()
    reference = " ".join((reference or "").split())[:REFERENCE_MAX]
    if method not in pricing.PAYMENT_METHODS:
        raise PaymentRefused("bad_method", f"{method!r} is not one of {', '.join(pricing.PAYMENT_METHODS)}")
    if not reference:
        raise PaymentRefused("bad_reference", "a payment needs a reference (the bank's, the slip's or the gateway's)")
    if not isinstance(amount_cents, int) or amount_cents <= 0:
        raise PaymentRefused("bad_amount", f"{amount_cents!r} is not a positive amount")
    order = session.scalar(
        select(RenewalOrder).where(RenewalOrder.order_number == number).with_for_update()
    )
    if order is None:
        raise PaymentRefused("unknown_order", f"no order {number or '(empty)'}", order_number=number or None)
    existing = session.scalar(select(Payment).where(Payment.order_id == order.id, Payment.reference == reference))
    if existing is not None:
        if existing.amount_cents != amount_cents:
            raise PaymentRefused(
                "reference_reused",
                f"{number}: the reference {reference!r} was already registered for "
                f"{pricing.format_amount(existing.amount_cents)} EUR, not {pricing.format_amount(amount_cents)}",
                order_number=number,
            )
        return RegistrationResult(number, False, existing.id, existing.amount_cents, existing.method)
    if order.status == OrderStatus.PAID.value:
        raise PaymentRefused(
            "already_paid",
            f"{number} is already paid (on {order.paid_at:%Y-%m-%d}); this payment was not registered: refund it",
            order_number=number,
        )
    if order.status != OrderStatus.AWAITING_PAYMENT.value:
        raise PaymentRefused("not_payable", f"{number} is {order.status}, not awaiting payment", order_number=number)
    if amount_cents != order.total_cents:
        raise PaymentRefused(
            "wrong_amount",
            f"{number}: the amount is {pricing.format_amount(amount_cents)} EUR but the order's total is "
            f"{pricing.format_amount(order.total_cents or 0)} EUR; nothing registered",
            order_number=number,
        )
    lines = [line for line in order.lines if line.selected]
    mailboxes = {
        mailbox.id: mailbox
        for mailbox in session.scalars(
            select(Mailbox).where(Mailbox.id.in_([line.mailbox_id for line in lines])).with_for_update()
        )
    }
    for line in lines:
        mailbox = mailboxes[line.mailbox_id]
        if mailbox.expires_on != line.old_expires_on:
            raise PaymentRefused(
                "mailbox_changed",
                f"{number}: {mailbox.address} expires on {mailbox.expires_on}, not {line.old_expires_on} as when "
                "ordered (renewed by another order?); nothing registered",
                order_number=number,
            )
        if mailbox.domain_id is not None:
            raise PaymentRefused("on_domain", f"{number}: {mailbox.address} is on a domain", order_number=number)
        if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
            raise PaymentRefused(
                "mailbox_deleted",
                f"{number}: {mailbox.address} was deleted on {schedule.deletion_date(mailbox.expires_on)} and "
                "cannot be renewed; nothing registered: refund the payment",
                order_number=number,
            )

    years = order.years or 1
    holder = _holder_for(session, order)
    renewed = []
    for line in lines:
        mailbox = mailboxes[line.mailbox_id]
        new_expires_on = schedule.add_years(line.old_expires_on, years)
        mailbox.expires_on = new_expires_on
        mailbox.plan = line.plan
        mailbox.extra_space_gb = line.extra_space_gb
        mailbox.extra_archive_gb = line.extra_archive_gb if line.plan != "standard" else 0
        mailbox.renewal_years = years
        if method in pricing.GATEWAY_METHODS and payment_token:
            mailbox.auto_renew = True
            if mailbox.payment_method != payment_token:
                mailbox.card_expires_on = None  # not known for a new token
            mailbox.payment_method = payment_token
        mailbox.next_action_on = schedule.first_action_on(stages, new_expires_on)
        if holder is not None:
            mailbox.holder_id = holder.id
            mailbox.reference_email = holder.reference_email
        line.new_expires_on = new_expires_on
        renewed.append(RenewedMailbox(mailbox.address, line.old_expires_on, new_expires_on, line.plan))
    payment = Payment(
        order_id=order.id,
        method=method,
        amount_cents=amount_cents,
        reference=reference,
        registered_at=now,
        business_date=today,
    )
    session.add(payment)
    order.status = OrderStatus.PAID.value
    order.paid_at = now
    order.payment_method = method
    session.flush()
    queue_order_email(session, order, RENEWAL_COMPLETED, now=now, today=today, settings=settings)
    return RegistrationResult(number, True, payment.id, amount_cents, method, tuple(renewed))


def _holder_for(session: Session, order: RenewalOrder) -> Holder | None:
    """The holder row for the data confirmed in the order (found or created), or None if unchanged."""
    if not order.holder_data:
        return None
    data = HolderData(**{name: order.holder_data.get(name) for name in HOLDER_FIELDS})
    current = order.holder
    if all(getattr(current, name) == getattr(data, name) for name in HOLDER_FIELDS):
        return None
    key = data.holder_key
    holder = session.scalar(select(Holder).where(Holder.account_id == order.account_id, Holder.holder_key == key))
    if holder is None:
        holder = Holder(account_id=order.account_id, holder_key=key, **{name: getattr(data, name) for name in HOLDER_FIELDS})
        session.add(holder)
        session.flush()
    return holder


# -- Bank statements --------------------------------------------------------------------------------


REGISTERED = "registered"
ALREADY_REGISTERED = "already_registered"
UNMATCHED = "unmatched"
WRONG_AMOUNT = "wrong_amount"
REFUSED = "refused"
INVALID = "invalid"
SKIPPED = "skipped"


@dataclass(frozen=True)
class BankLineResult:
    line: int  # the record number, the header being line 1
    status: str  # one of the constants above
    message: str
    order_number: str | None = None
    amount_cents: int | None = None


@dataclass
class BankImportReport:
    lines: list[BankLineResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(result.status for result in self.lines)

    @property
    def problems(self) -> list[BankLineResult]:
        return [result for result in self.lines if result.status not in (REGISTERED, ALREADY_REGISTERED, SKIPPED)]


class BankStatementInvalid(Exception):
    """The file itself cannot be read as a statement (no header, missing columns)."""


def _parse_bank_date(text: str) -> date:
    value = text.strip()
    match = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", value)
    if match:
        day, month, year = (int(part) for part in match.groups())
        return date(year, month, day)
    return date.fromisoformat(value)


def _open_text(source: str | Path | IO[str] | IO[bytes]) -> IO[str]:
    if isinstance(source, (str, Path)):
        return open(source, encoding="utf-8-sig", newline="")
    if isinstance(source, io.TextIOBase):
        return source
    return io.TextIOWrapper(source, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]


#: Italian headers, as Italian banks export them.
_COLUMN_ALIASES = {
    "data": "date",
    "data valuta": "date",
    "importo": "amount",
    "causale": "reference",
    "descrizione": "reference",
}


def read_bank_statement(source: str | Path | IO[str] | IO[bytes]) -> Iterable[tuple[int, dict[str, str]]]:
    """The statement's records as ``(line number, {column: value})``, columns lower-cased."""
    handle = _open_text(source)
    try:
        text = handle.read()
    finally:
        if isinstance(source, (str, Path)):
            handle.close()
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise BankStatementInvalid("the statement is empty: it needs a header row date,amount,reference")
    columns = [_COLUMN_ALIASES.get(name.strip().lower(), name.strip().lower()) for name in header]
    missing = [name for name in ("date", "amount", "reference") if name not in columns]
    if missing:
        raise BankStatementInvalid(f"the header lacks the column(s) {', '.join(missing)} (date,amount,reference[,id])")
    records = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        records.append((number, {name: (row[index] if index < len(row) else "") for index, name in enumerate(columns)}))
    return records


def import_bank_statement(
    session: Session,
    source: str | Path | IO[str] | IO[bytes],
    *,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
) -> BankImportReport:
    """Register the bank transfers of a statement; see the module's docstring for the columns.

    Each line is matched to an order by the order number in its reference and
    registered with :func:`register_payment` (method ``bank_transfer``) in its
    own savepoint: a refused line changes nothing and the others go on.
    Importing the same statement again registers nothing more.  Raises
    :class:`BankStatementInvalid` when the file is not a statement at all.
    The caller commits.
    """
    report = BankImportReport()
    for number, record in read_bank_statement(source):
        reference_text = " ".join(record.get("reference", "").split())
        try:
            amount = parse_euro(record.get("amount", ""))
            value_date = _parse_bank_date(record.get("date", ""))
        except ValueError as error:
            report.lines.append(BankLineResult(number, INVALID, str(error)))
            continue
        if amount <= 0:
            report.lines.append(BankLineResult(number, SKIPPED, "not a credit", amount_cents=amount))
            continue
        found = find_order_numbers(reference_text)
        if not found:
            report.lines.append(
                BankLineResult(number, UNMATCHED, f"no order number in the reference {reference_text!r}", amount_cents=amount)
            )
            continue
        if len(found) > 1:
            report.lines.append(
                BankLineResult(
                    number, UNMATCHED, f"several order numbers in the reference: {', '.join(found)}", amount_cents=amount
                )
            )
            continue
        bank_id = (record.get("id") or "").strip()
        payment_reference = f"bank:{bank_id}" if bank_id else f"bank:{value_date.isoformat()}:{reference_text}"
        try:
            with session.begin_nested():
                result = register_payment(
                    session,
                    order_number=found[0],
                    amount_cents=amount,
                    method=pricing.BANK_TRANSFER,
                    reference=payment_reference,
                    now=now,
                    today=today,
                    settings=settings,
                    stages=stages,
                )
        except PaymentRefused as refused:
            status = {"unknown_order": UNMATCHED, "wrong_amount": WRONG_AMOUNT}.get(refused.code, REFUSED)
            report.lines.append(BankLineResult(number, status, str(refused), found[0], amount))
            continue
        if result.registered:
            renewed = ", ".join(f"{item.address} to {item.new_expires_on}" for item in result.renewed)
            report.lines.append(BankLineResult(number, REGISTERED, f"{found[0]} paid: renewed {renewed}", found[0], amount))
        else:
            report.lines.append(BankLineResult(number, ALREADY_REGISTERED, f"{found[0]}: already registered", found[0], amount))
    return report


# -- Card and PayPal at checkout ---------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayPaymentResult:
    """What happened at checkout: ``outcome`` is a ChargeOutcome value, or ``already_paid``."""

    outcome: str
    message: str
    registration: RegistrationResult | None = None
    decline_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.registration is not None


def gateway_idempotency_key(order: RenewalOrder, attempt: int) -> str:
    """``order:{id}:{attempt}``: one key per checkout attempt, so a declined card can be replaced by
    another (a gateway refuses a key reused with a different method), while a retry of the same
    attempt, or its reconciliation, reuses the key and never charges twice."""
    return f"order:{order.id}:{attempt}"


def pay_order_with_gateway(
    session: Session,
    gateway: Any,
    order: RenewalOrder,
    payment_method_token: str,
    *,
    method: str,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
) -> GatewayPaymentResult:
    """Charge a card / PayPal token for a confirmed order, and register the payment on success.

    Intent, act, record: the attempt (``gateway_attempts``, ``gateway_state =
    "started"``) is COMMITTED before the gateway is called, with the
    idempotency key ``order:{id}:{attempt}``.  An attempt left ``started`` or
    ``unknown`` (a crash, a timeout) is first reconciled with
    ``gateway.lookup(key)``: a charge the gateway made is registered (with the
    token it was made with), never made again; a key the gateway never saw is
    replayed with the same key and token, so two checkouts at once charge
    once.  On success the payment is registered (reference
    ``{gateway.name}:{key}``), the token stored and auto-renew switched on.
    A decline changes nothing but the attempt's state.  This function
    commits (twice: the intent, then the result).
    """
    from worker.gateways.base import ChargeOutcome

    if method not in pricing.GATEWAY_METHODS:
        raise PaymentRefused("bad_method", f"{method!r} is not card or paypal")
    if not isinstance(payment_method_token, str) or not payment_method_token.strip():
        raise PaymentRefused("bad_token", "no payment method token")
    session.refresh(order, with_for_update=True)
    if order.status == OrderStatus.PAID.value:
        session.commit()
        return GatewayPaymentResult("already_paid", f"{order.order_number} is already paid")
    if order.status != OrderStatus.AWAITING_PAYMENT.value or not order.total_cents:
        session.rollback()
        raise PaymentRefused("not_payable", f"order {order.public_id} is {order.status}, not awaiting payment")

    def register(key: str, token: str) -> RegistrationResult:
        return register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method=method,
            reference=f"{gateway.name}:{key}",
            now=now,
            today=today,
            settings=settings,
            stages=stages,
            payment_token=token,
        )

    def record(key: str, token: str, result) -> GatewayPaymentResult:
        """Write the gateway's answer for attempt ``key`` (and register a success); commits."""
        session.refresh(order, with_for_update=True)
        if gateway_idempotency_key(order, order.gateway_attempts) == key:
            order.gateway_state = result.outcome.value
        registration = register(key, token) if result.outcome is ChargeOutcome.SUCCEEDED else None
        session.commit()
        return GatewayPaymentResult(result.outcome.value, result.message, registration, result.decline_code)

    def charge(key: str, token: str):
        return gateway.charge(
            payment_method=token,
            amount_cents=order.total_cents,
            currency="EUR",
            idempotency_key=key,
            description=f"Rinnovo PEC {order.order_number}",
        )

    # An attempt whose outcome was never recorded (a crash, a lost answer, or another
    # request still waiting for the gateway) is settled first, with its own key and token.
    if order.gateway_state in ("started", ChargeOutcome.UNKNOWN.value) and order.gateway_attempts:
        key = gateway_idempotency_key(order, order.gateway_attempts)
        token = order.gateway_token or payment_method_token
        session.commit()  # no lock is held while the gateway is asked
        found = gateway.lookup(key)
        if found is None:
            # The gateway never saw the key (or the call is still in flight): replaying the
            # same key with the same parameters is safe, and the gateway charges at most once.
            return record(key, token, charge(key, token))
        if found.outcome in (ChargeOutcome.SUCCEEDED, ChargeOutcome.UNKNOWN):
            return record(key, token, found)
        session.refresh(order, with_for_update=True)
        order.gateway_state = found.outcome.value  # declined: a new attempt may follow

    order.gateway_attempts = (order.gateway_attempts or 0) + 1
    order.gateway_state = "started"
    order.gateway_token = payment_method_token
    key = gateway_idempotency_key(order, order.gateway_attempts)
    session.commit()  # the intent, before the gateway is called
    return record(key, payment_method_token, charge(key, payment_method_token))
