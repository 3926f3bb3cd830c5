"""The worker's own renewals win; a mailbox renewed elsewhere closes its old cycle.

The file is the provider's master data, which can be older than what
happened here.  A row whose expiry is earlier than the mailbox's is older
than the worker's data: its expiry and its renewal columns
(:data:`RENEWAL_COLUMNS`) are not applied, and neither are the renewal
columns of a row with the mailbox's own expiry when that cycle was renewed
here (a registered payment of an order, a successful auto-renew charge).
Each value kept is reported as an :class:`ImportConflict`; the row's other
columns are applied.  ``force`` applies the file anyway.  A row with a
later expiry means the mailbox was renewed elsewhere: it is applied, and the
open orders of the cycles before it are cancelled; an unresolved charge
intent of such a cycle is reported, for the operator to look up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, or_, select, update
from sqlalchemy.sql import ColumnElement

from worker.gateways.base import mask_token
from worker.rules import schedule
from worker.services.importer.report import ImportConflict
from worker.services.importer.staged import STAGING
from worker.store.models import (
    ChargeIntent,
    ChargeStatus,
    Mailbox,
    MailboxSchedule,
    OrderStatus,
    Payment,
    RenewalOrder,
    RenewalOrderLine,
)

#: The columns a renewal sets (what was paid for, and how the mailbox renews): kept as the
#: worker holds them when the file's row is older, or when this cycle was renewed here.
RENEWAL_COLUMNS = (
    "plan",
    "extra_space_gb",
    "extra_archive_gb",
    "auto_renew",
    "payment_method",
    "card_expires_on",
    "renewal_years",
    "promo",
)
#: Staged columns whose import column has another name.
_FILE_COLUMNS = {"card_expires_on": "card_expiry"}
#: An order that may still be paid, and so closed when the file renews its cycle elsewhere.
OPEN_ORDER_STATUSES = (OrderStatus.DRAFT.value, OrderStatus.AWAITING_PAYMENT.value)
#: A charge intent whose answer was never recorded: money may have moved.
UNRESOLVED_CHARGES = (ChargeStatus.STARTED.value, ChargeStatus.UNKNOWN.value)
#: Mailboxes whose renewals are read in one statement.
LOOKUP_BATCH = 1000

_rows = STAGING
_mailboxes = Mailbox.__table__
_schedule = MailboxSchedule.__table__
_lines, _orders = RenewalOrderLine.__table__, RenewalOrder.__table__
_payments, _intents = Payment.__table__, ChargeIntent.__table__


@dataclass
class Sync:
    """How an import treats what the worker holds, and what it found (written by the writer thread)."""

    force: bool = False
    dry_run: bool = False
    #: When the import runs, and its business date: the time of the platform's events it writes.
    now: datetime | None = None
    today: date | None = None
    #: The file's columns by position (set once the header is read): to list a line's
    #: conflicts in the file's order, and to say when a column is not in the file at all.
    position: dict[str, int] = field(default_factory=dict)
    conflicts: list[ImportConflict] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Renewal:
    """A renewal made here: the expiry it gave, the business date, and what it was."""

    until: date
    on: date
    what: str


def sync_chunk(connection: Connection, in_chunk: ColumnElement[bool], sync: Sync) -> set[int]:
    """Compare the chunk's rows with the mailboxes they update; return the ids of those in conflict.

    Only rows that may matter are read (a row with an earlier expiry than
    its mailbox's, one with the same expiry and another renewal column, one
    with a later expiry whose mailbox has an open order or an unresolved
    charge): on a routine re-import, a few.  A conflict's kept values are
    written into its staged row, so the upsert that follows writes them back
    as they are and applies the rest of the row.
    """
    candidates = connection.execute(_candidates(in_chunk, sync.force)).all()
    if not candidates:
        return set()
    renewals = _renewals_here(connection, [row[2] for row in candidates if row[4] <= row[5]])
    conflicting: set[int] = set()
    older = False
    same_cycle: list[dict[str, Any]] = []
    renewed_elsewhere: list[tuple[int, int, str, date]] = []
    width = len(RENEWAL_COLUMNS)
    for seq, line, mailbox_id, address, given_expiry, expiry, *values in candidates:
        if given_expiry > expiry:
            renewed_elsewhere.append((line, mailbox_id, address, given_expiry))
            continue
        given, held = values[:width], values[width:]
        if not _keep(line, given_expiry, expiry, given, held, renewals.get(mailbox_id, ()), sync):
            continue
        conflicting.add(mailbox_id)
        if given_expiry < expiry:
            older = True
        else:
            same_cycle.append(
                {"b_seq": seq, **{f"b_{name}": value for name, value in zip(RENEWAL_COLUMNS, held, strict=True)}}
            )
    _write_back(connection, in_chunk, older, same_cycle)
    if renewed_elsewhere:
        _close_old_cycles(connection, renewed_elsewhere, sync)
    return conflicting


def _candidates(in_chunk: ColumnElement[bool], force: bool):
    """The chunk's rows that may keep a value or close a cycle, with their mailbox's values, in file order."""
    rows, mailboxes = _rows, _mailboxes
    open_order = (
        select(_lines.c.id)
        .join(_orders, _orders.c.id == _lines.c.order_id)
        .where(
            _lines.c.mailbox_id == mailboxes.c.id,
            _lines.c.selected.is_(True),
            _lines.c.old_expires_on < rows.c.expires_on,
            _orders.c.status.in_(OPEN_ORDER_STATUSES),
        )
        .exists()
    )
    unresolved_charge = (
        select(_intents.c.id)
        .where(
            _intents.c.mailbox_id == mailboxes.c.id,
            _intents.c.status.in_(UNRESOLVED_CHARGES),
            _intents.c.cycle_expires_on < rows.c.expires_on,
        )
        .exists()
    )
    renewed_elsewhere = and_(rows.c.expires_on > mailboxes.c.expires_on, or_(open_order, unresolved_charge))
    wanted = renewed_elsewhere
    if not force:
        other_renewal = or_(*(rows.c[name].is_distinct_from(mailboxes.c[name]) for name in RENEWAL_COLUMNS))
        wanted = or_(
            rows.c.expires_on < mailboxes.c.expires_on,
            and_(rows.c.expires_on == mailboxes.c.expires_on, other_renewal),
            renewed_elsewhere,
        )
    return (
        select(
            rows.c.seq,
            rows.c.line,
            mailboxes.c.id,
            mailboxes.c.address,
            rows.c.expires_on,
            mailboxes.c.expires_on,
            *(rows.c[name] for name in RENEWAL_COLUMNS),
            *(mailboxes.c[name] for name in RENEWAL_COLUMNS),
        )
        .join(mailboxes, mailboxes.c.address == rows.c.address)
        .where(in_chunk, rows.c.domain.is_(None), wanted)
        .order_by(rows.c.seq)
    )


def _keep(
    line: int,
    given_expiry: date,
    expiry: date,
    given: list[Any],
    held: list[Any],
    renewals: tuple[_Renewal, ...] | list[_Renewal],
    sync: Sync,
) -> bool:
    """Whether a row that is not newer than its mailbox keeps any of the worker's values; report them if so."""
    in_force = [renewal for renewal in renewals if renewal.until <= expiry]
    latest = max(in_force, key=lambda renewal: (renewal.until, renewal.on), default=None)
    if given_expiry < expiry:
        if latest is not None and latest.until > given_expiry:
            reason = f"renewed here on {latest.on.isoformat()}, {latest.what}"
        else:
            reason = f"an earlier import gave the later expiry {expiry.isoformat()}"
    elif latest is not None and latest.until == expiry:
        reason = f"renewed here on {latest.on.isoformat()}, {latest.what}"
    else:
        return False  # the same expiry, not renewed here: the file's values apply
    kept = [("expires_on", expiry, given_expiry)] if given_expiry < expiry else []
    kept.extend(
        (name, held_value, given_value)
        for name, held_value, given_value in zip(RENEWAL_COLUMNS, held, given, strict=True)
        if held_value != given_value
    )
    if not kept:
        return False
    sync.conflicts.extend(
        sorted(
            (_conflict(line, name, held_value, given_value, reason, sync) for name, held_value, given_value in kept),
            key=lambda conflict: sync.position.get(conflict.column, len(sync.position)),
        )
    )
    return True


def _write_back(connection: Connection, in_chunk: ColumnElement[bool], older: bool, same_cycle: list[dict]) -> None:
    """Write the worker's values into the staged rows that keep them, for the upsert to write back."""
    rows, mailboxes = _rows, _mailboxes
    if older:
        # Every older row keeps the worker's expiry, next action and renewal columns: one statement.
        kept = ("expires_on", *RENEWAL_COLUMNS)
        connection.execute(
            update(rows)
            .where(
                in_chunk,
                rows.c.domain.is_(None),
                rows.c.address == mailboxes.c.address,
                rows.c.expires_on < mailboxes.c.expires_on,
                _schedule.c.mailbox_id == mailboxes.c.id,
            )
            .values({**{name: mailboxes.c[name] for name in kept}, "next_action_on": _schedule.c.next_action_on})
        )
    if same_cycle:
        connection.execute(
            update(rows)
            .where(rows.c.seq == bindparam("b_seq"))
            .values({name: bindparam(f"b_{name}", type_=rows.c[name].type) for name in RENEWAL_COLUMNS}),
            same_cycle,
        )


def _renewals_here(connection: Connection, mailbox_ids: list[int]) -> dict[int, list[_Renewal]]:
    """Every renewal made here of these mailboxes: the paid order lines, the successful charges."""
    lines, orders, intents = _lines, _orders, _intents
    paid_on = select(func.min(_payments.c.business_date)).where(_payments.c.order_id == orders.c.id).scalar_subquery()
    found: dict[int, list[_Renewal]] = {}
    for start in range(0, len(mailbox_ids), LOOKUP_BATCH):
        batch = mailbox_ids[start : start + LOOKUP_BATCH]
        for mailbox_id, until, number, paid_at, on in connection.execute(
            select(lines.c.mailbox_id, lines.c.new_expires_on, orders.c.order_number, orders.c.paid_at, paid_on)
            .join(orders, orders.c.id == lines.c.order_id)
            .where(
                lines.c.mailbox_id.in_(batch),
                lines.c.selected.is_(True),
                lines.c.new_expires_on.is_not(None),
                orders.c.status == OrderStatus.PAID.value,
            )
        ):
            on = on or (paid_at.date() if paid_at is not None else until)
            found.setdefault(mailbox_id, []).append(_Renewal(until, on, f"order {number}"))
        charged = select(
            intents.c.mailbox_id,
            intents.c.cycle_expires_on,
            intents.c.years,
            intents.c.business_date,
            intents.c.idempotency_key,
        ).where(intents.c.mailbox_id.in_(batch), intents.c.status == ChargeStatus.SUCCEEDED.value)
        for mailbox_id, cycle, years, on, key in connection.execute(charged):
            found.setdefault(mailbox_id, []).append(_Renewal(schedule.add_years(cycle, years), on, f"charge {key}"))
    return found


def _conflict(line: int, name: str, held: object, given: object, reason: str, sync: Sync) -> ImportConflict:
    column = _FILE_COLUMNS.get(name, name)
    value = _shown(name, given)
    if column not in sync.position:
        said = f"the file has no {column} column (so {value})"
    elif value == "empty":
        said = "the file leaves it empty"
    else:
        said = f"the file says {value}"
    return ImportConflict(line, column, _shown(name, held), reason, said)


def _shown(name: str, value: object) -> str:
    """A value as the report shows it: as the file writes it; a payment token masked."""
    if value is None or value == "":
        return "empty"
    if isinstance(value, bool):
        return "true" if value else "false"
    if name == "payment_method":
        return mask_token(str(value))
    if name == "card_expires_on" and isinstance(value, date):
        return f"{value:%Y-%m}"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _close_old_cycles(connection: Connection, renewed: list[tuple[int, int, str, date]], sync: Sync) -> None:
    """For mailboxes the file renews elsewhere (``(line, id, address, new expiry)``): cancel the
    open orders of their earlier cycles, and report their unresolved charges.

    Such an order can no longer be paid (registering its payment would be refused:
    the expiry moved on), so a holder following its link or a bank transfer
    naming it meets a cancelled order, and the card / PayPal checkout of it
    is refused before any charge.  An unresolved charge (``started`` or
    ``unknown``) may have moved money: it stays as it is, still counted by
    ``pec_renewal_charge_intents_unresolved``, and the charge work, which
    only charges a mailbox's current cycle, never charges that cycle again.
    """
    by_id = {mailbox_id: (line, address, expires_on) for line, mailbox_id, address, expires_on in renewed}
    ids = list(by_id)
    cancelled: dict[int, int] = {}  # order id -> the line that cancels it
    notes: list[tuple[int, str]] = []
    for start in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[start : start + LOOKUP_BATCH]
        _close_open_orders(connection, batch, by_id, cancelled, notes, sync)
        _report_unresolved_charges(connection, batch, by_id, sync)
    order_ids = list(cancelled)
    for start in range(0, len(order_ids), LOOKUP_BATCH):
        connection.execute(
            update(_orders)
            .where(_orders.c.id.in_(order_ids[start : start + LOOKUP_BATCH]))
            .values(status=OrderStatus.CANCELLED.value)
        )
    sync.closed.extend(note for _, note in sorted(notes, key=lambda item: item[0]))


def _close_open_orders(
    connection: Connection,
    batch: list[int],
    by_id: dict[int, tuple[int, str, date]],
    cancelled: dict[int, int],
    notes: list[tuple[int, str]],
    sync: Sync,
) -> None:
    """Find the open orders of the old cycles of ``batch``'s mailboxes: into ``cancelled``, with a note each."""
    lines, orders = _lines, _orders
    done = "would be cancelled" if sync.dry_run else "cancelled"
    open_orders = (
        select(
            orders.c.id,
            orders.c.order_number,
            orders.c.status,
            orders.c.gateway_state,
            orders.c.gateway_attempts,
            lines.c.mailbox_id,
            lines.c.old_expires_on,
        )
        .join(orders, orders.c.id == lines.c.order_id)
        .where(lines.c.mailbox_id.in_(batch), lines.c.selected.is_(True), orders.c.status.in_(OPEN_ORDER_STATUSES))
        .order_by(orders.c.id)
    )
    for order_id, number, status, gateway_state, attempts, mailbox_id, old_expires_on in connection.execute(
        open_orders
    ):
        line, address, expires_on = by_id[mailbox_id]
        if old_expires_on >= expires_on or order_id in cancelled:
            continue
        cancelled[order_id] = line
        name = f"order {number}" if number else "a draft order"
        state = " (awaiting payment)" if status == OrderStatus.AWAITING_PAYMENT.value else ""
        notes.append(
            (
                line,
                f"line {line}: {name}{state} for the cycle of {address} ending {old_expires_on.isoformat()}"
                f" {done}: the file renews it to {expires_on.isoformat()} elsewhere",
            )
        )
        if gateway_state in UNRESOLVED_CHARGES and attempts:
            sync.warnings.append(
                f"line {line}: the card / PayPal payment order:{order_id}:{attempts} of {name} is"
                f" {gateway_state} (its answer was never recorded) and may have charged the holder: look it up"
                " with the gateway and refund it if it went through"
            )


def _report_unresolved_charges(
    connection: Connection, batch: list[int], by_id: dict[int, tuple[int, str, date]], sync: Sync
) -> None:
    """Warn of each unresolved charge intent of an old cycle of ``batch``'s mailboxes."""
    intents = _intents
    for mailbox_id, key, status, cycle in connection.execute(
        select(intents.c.mailbox_id, intents.c.idempotency_key, intents.c.status, intents.c.cycle_expires_on)
        .where(intents.c.mailbox_id.in_(batch), intents.c.status.in_(UNRESOLVED_CHARGES))
        .order_by(intents.c.id)
    ):
        line, address, expires_on = by_id[mailbox_id]
        if cycle >= expires_on:
            continue
        sync.warnings.append(
            f"line {line}: the auto-renew charge {key} for the cycle of {address} ending {cycle.isoformat()} is"
            f" {status} (its answer was never recorded); the file renews the mailbox to"
            f" {expires_on.isoformat()} elsewhere, so that cycle is not charged again: look the charge up"
            " (pec-renewal sandbox charges, or the gateway) and refund it if it went through"
        )
