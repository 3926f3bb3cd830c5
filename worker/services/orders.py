"""The manual renewal order, from a signed link to a confirmed order awaiting payment.

The web link handler (``worker/web``) is a thin layer over this module: every
function takes an open ``session`` and the time (``today`` and/or ``now``) as
arguments, nothing reads a clock, and the caller commits (except
:func:`worker.services.payments.pay_order_with_gateway`, which commits its intent
before calling the gateway).

The flow (DESIGN.md, "The order flow"):

1. :func:`describe_link` (GET, read-only): what the link is about and whether
   an order can start.
2. :func:`start_order` (POST): the open order of that link (target + expiry
   cycle), created once; a second POST gives the same order.
3. :func:`choose_mailboxes`: plan and extras per mailbox.
4. :func:`set_holder`: the holder data ("Dati intestatario"), with e-invoicing.
5. :func:`choose_payment`: the method and the years; :func:`payment_options`
   lists the methods that may be offered.
6. :func:`accept_terms`.
7. :func:`confirm_order`: the order number, status ``awaiting_payment`` and
   the ``order-confirmation`` email with the payment instructions.

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

import secrets
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from config import catalogue
from config.settings import Settings
from worker.rules import pricing, schedule
from worker.mail.emails import OrderEmail
from worker.mail.queue import NewEmail, QueuedEmail, queue_email
from worker.rules.holder_data import check_holder
from worker.rules.links import ACCOUNT, MAILBOX, RenewalLink
from worker.store.models import (
    Account,
    Holder,
    Mailbox,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
    RenewalOrderLine,
)
from worker.rules.pricing import (
    BANK_TRANSFER,
    CARD,
    PAYMENT_METHODS,
    PAYPAL,
    POSTAL_SLIP,
    OrderSummary,
    PriceLine,
)

__all__ = [
    "BANK_TRANSFER",
    "CARD",
    "PAYMENT_METHODS",
    "PAYPAL",
    "POSTAL_SLIP",
    "LinkState",
    "LinkView",
    "MailboxSummary",
    "MailboxChoice",
    "PaymentOption",
    "OrderSummary",
    "PriceLine",
    "OrderError",
    "OrderValidationError",
    "OrderNotOpen",
    "LinkNotUsable",
    "describe_link",
    "read_mailbox_link",
    "start_order",
    "find_order",
    "find_order_by_number",
    "order_mailboxes",
    "choose_mailboxes",
    "holder_form_data",
    "set_holder",
    "payment_options",
    "choose_payment",
    "accept_terms",
    "confirm_order",
    "order_summary",
    "next_step",
    "checkout_url",
    "payment_instructions",
    "earliest_deletion_on",
    "create_unpaid_renewal_order",
]


class LinkState:
    """The values of :attr:`LinkView.state`."""

    RENEWABLE = "renewable"
    #: Manual renewal refused while auto-renew is on; a renewal with a plan change is allowed.
    AUTO_RENEW = "auto_renew"
    ON_DOMAIN = "on_domain"
    ALREADY_RENEWED = "already_renewed"
    DELETED = "deleted"
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class MailboxSummary:
    """One mailbox as the link page and the order steps show it."""

    id: int
    address: str
    plan: str
    extra_space_gb: int
    extra_archive_gb: int
    used_space_mb: int
    expires_on: date
    #: The 91st day after expiry: from then on it cannot be renewed.
    deletion_on: date
    last_renewable_on: date
    #: "active" or "expired" ("deleted" mailboxes are listed only by a mailbox link).
    state: str
    auto_renew: bool
    on_domain: bool
    promo: bool
    #: Whether this mailbox can be put in an order (plan change only, if auto_renew).
    orderable: bool


@dataclass(frozen=True)
class LinkView:
    """What GET /rinnova/<token> shows.  Built without writing anything."""

    state: str  # a LinkState value
    #: The holder's language for the page ("it" or "en").
    language: str
    mailboxes: tuple[MailboxSummary, ...] = ()
    #: For ``already_renewed`` (mailbox link): the mailbox's new expiry date.
    new_expires_on: date | None = None
    #: The open order already started from this link, if any (to resume it).
    order_public_id: str | None = None
    holder_name: str | None = None
    account_login: str | None = None


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


class OrderError(Exception):
    """Base of the order errors."""


class OrderValidationError(OrderError):
    """Bad input at a step: ``errors`` maps a field name to a message; nothing was changed."""

    def __init__(self, errors: Mapping[str, str]):
        self.errors = dict(errors)
        super().__init__("; ".join(f"{key}: {value}" for key, value in self.errors.items()))


class OrderNotOpen(OrderValidationError):
    """The order is no longer a draft (confirmed, paid or cancelled): its steps cannot change."""


class LinkNotUsable(OrderError):
    """The link cannot start an order; ``state`` is the :class:`LinkState` that says why."""

    def __init__(self, state: str):
        self.state = state
        super().__init__(f"this link cannot start an order: {state}")


# -- Messages ---------------------------------------------------------------------------------------


_MESSAGES: dict[str, dict[str, str]] = {
    "order_not_open": {
        "it": "L'ordine è già stato confermato e non può più essere modificato.",
        "en": "The order has already been confirmed and can no longer be changed.",
    },
    "order_paid": {"it": "L'ordine è già stato pagato.", "en": "The order has already been paid."},
    "order_cancelled": {"it": "L'ordine è stato annullato.", "en": "The order has been cancelled."},
    "no_mailboxes": {
        "it": "Scelga almeno una casella PEC da rinnovare.",
        "en": "Choose at least one PEC mailbox to renew.",
    },
    "unknown_mailbox": {
        "it": "Questa casella PEC non fa parte dell'ordine.",
        "en": "This PEC mailbox is not part of the order.",
    },
    "step_mailboxes": {
        "it": "Confermi prima le caselle PEC da rinnovare.",
        "en": "First confirm the PEC mailboxes to renew.",
    },
    "step_holder": {
        "it": "Confermi prima i Dati intestatario.",
        "en": "First confirm the holder details (Dati intestatario).",
    },
    "step_payment": {
        "it": "Scelga prima la modalità di pagamento e la frequenza di rinnovo.",
        "en": "First choose the payment method and the renewal frequency.",
    },
    "terms_required": {
        "it": "Per completare l'ordine deve leggere e accettare le condizioni contrattuali.",
        "en": "To complete the order you must read and accept the contract terms.",
    },
    "method_unknown": {
        "it": "Scelga una modalità di pagamento: carta di credito, PayPal, bonifico bancario o bollettino postale.",
        "en": "Choose a payment method: credit card, PayPal, bank transfer or postal slip.",
    },
    "method_too_late": {
        "it": "Questa modalità di pagamento non è più disponibile: il pagamento verrebbe registrato "
        "dopo la cancellazione della casella ({deletion}). Scelga carta di credito o PayPal.",
        "en": "This payment method is no longer available: the payment would be registered after "
        "the mailbox is deleted ({deletion}). Choose a credit card or PayPal.",
    },
    "years_range": {
        "it": "Scelga una frequenza di rinnovo da 1 a {max} anni.",
        "en": "Choose a renewal frequency from 1 to {max} years.",
    },
    "years_promo": {
        "it": "Per i prodotti in promozione la frequenza di rinnovo è di 1 o 2 anni.",
        "en": "For promotional products the renewal frequency is 1 or 2 years.",
    },
    "mailbox_changed": {
        "it": "La casella PEC {address} è stata rinnovata o modificata dopo l'inizio dell'ordine.",
        "en": "The PEC mailbox {address} was renewed or changed after the order started.",
    },
}


def message(key: str, language: str, **values: Any) -> str:
    """One message of this module in ``language`` (Italian unless "en")."""
    texts = _MESSAGES.get(key) or pricing.MESSAGES[key]
    return texts["en" if language == "en" else "it"].format(**values)


# -- Reading a link ---------------------------------------------------------------------------------


def _mailbox_summary(mailbox: Mailbox, today: date) -> MailboxSummary:
    state = schedule.mailbox_state(mailbox.expires_on, today)
    on_domain = mailbox.domain_id is not None
    return MailboxSummary(
        id=mailbox.id,
        address=mailbox.address,
        plan=mailbox.plan,
        extra_space_gb=mailbox.extra_space_gb or 0,
        extra_archive_gb=mailbox.extra_archive_gb or 0,
        used_space_mb=mailbox.used_space_mb or 0,
        expires_on=mailbox.expires_on,
        deletion_on=schedule.deletion_date(mailbox.expires_on),
        last_renewable_on=schedule.last_renewable_day(mailbox.expires_on),
        state=state.value,
        auto_renew=bool(mailbox.auto_renew),
        on_domain=on_domain,
        promo=bool(mailbox.promo),
        orderable=not on_domain and state is not schedule.MailboxState.DELETED,
    )


def in_renewal_window(expires_on: date, today: date) -> bool:
    """From 3 calendar months before expiry to the 90th day after it."""
    return schedule.add_months(expires_on, -schedule.NOTICE_WINDOW_MONTHS) <= today <= schedule.last_renewable_day(expires_on)


def _order_for_link(session: Session, target: str, target_id: int, cycle: date) -> RenewalOrder | None:
    return session.scalar(
        select(RenewalOrder).where(
            RenewalOrder.link_target == target,
            RenewalOrder.link_target_id == target_id,
            RenewalOrder.link_cycle == cycle,
        )
    )


def _account_window_mailboxes(session: Session, account_id: int, today: date) -> list[Mailbox]:
    # A generous SQL bound (3 months are at most 92 days), then the exact rule.
    rows = session.scalars(
        select(Mailbox)
        .where(
            Mailbox.account_id == account_id,
            Mailbox.expires_on <= today + timedelta(days=93),
            Mailbox.expires_on >= today - timedelta(days=schedule.RENEWABLE_DAYS_AFTER_EXPIRY),
        )
        .order_by(Mailbox.address)
    ).all()
    return [mailbox for mailbox in rows if in_renewal_window(mailbox.expires_on, today)]


def describe_link(session: Session | Connection, link: RenewalLink, today: date) -> LinkView:
    """What the link is about and whether an order can start.  Read-only: safe for a GET.

    ``session`` may be a Core ``Connection`` for a mailbox link, which is read
    in one statement (the link page reads it in autocommit); an account link
    needs a ``Session``.

    A mailbox link (``link.target == "m"``):

    - ``not_found``: no such mailbox;
    - ``on_domain``: a mailbox on a customer domain (renewed with the domain);
    - ``already_renewed``: its expiry moved on from the link's cycle (``new_expires_on``);
    - ``deleted``: more than 90 days after expiry;
    - ``auto_renew``: auto-renew is on; manual renewal is refused, a plan change
      is allowed (:func:`start_order` works, and :func:`choose_mailboxes` then
      requires a plan change).  An unpaid renewal order left by a failed
      auto-renew charge makes the link ``renewable`` instead, payable by any method;
    - ``renewable`` otherwise.

    An account link (``"a"``) lists every mailbox of the account in its renewal
    window (from 3 calendar months before expiry to the 90th day after);
    ``renewable`` when at least one without auto-renew can be ordered, else
    ``auto_renew`` or ``on_domain`` when those are all it has in the window,
    else ``already_renewed`` (its order was paid, or nothing is left to renew),
    ``deleted`` or ``not_found``.
    """
    if link.target == MAILBOX:
        return _describe_mailbox_link(session, link, today)
    if link.target == ACCOUNT:
        return _describe_account_link(session, link, today)
    return LinkView(state=LinkState.NOT_FOUND, language="it")


#: The mailbox, its holder's name and the order of its link (if any), in one statement.
#: A link page is the web app's hot path: three ORM reads (the mailbox, its lazy-loaded holder,
#: the order) were three round trips to PostgreSQL and most of the page's time, and building
#: the statement anew cost more CPU than running it (bench/link_handler.sh); so it is built
#: once, with parameters.  The order's key is unique: the outer join gives at most one row.
_MAILBOX_LINK_QUERY = (
    select(
        Mailbox.id,
        Mailbox.address,
        Mailbox.plan,
        Mailbox.extra_space_gb,
        Mailbox.extra_archive_gb,
        Mailbox.used_space_mb,
        Mailbox.expires_on,
        Mailbox.domain_id,
        Mailbox.auto_renew,
        Mailbox.promo,
        Mailbox.language,
        Holder.name.label("holder_name"),
        RenewalOrder.public_id.label("order_public_id"),
        RenewalOrder.status.label("order_status"),
        RenewalOrder.origin.label("order_origin"),
    )
    .join(Holder, Holder.id == Mailbox.holder_id)
    .outerjoin(
        RenewalOrder,
        (RenewalOrder.link_target == MAILBOX)
        & (RenewalOrder.link_target_id == Mailbox.id)
        & (RenewalOrder.link_cycle == bindparam("cycle")),
    )
    .where(Mailbox.id == bindparam("mailbox_id"))
)


def _describe_mailbox_link(session: Session | Connection, link: RenewalLink, today: date) -> LinkView:
    # A Core row, not an ORM object: it has the attributes _mailbox_summary reads.
    mailbox = session.execute(_MAILBOX_LINK_QUERY, {"mailbox_id": link.target_id, "cycle": link.expires_on}).first()
    return _mailbox_link_view(mailbox, link, today)


class _RawSelect:
    """One Core ``select`` compiled once for one dialect, run on a DBAPI cursor of the pool.

    The SQL is SQLAlchemy's own (``statement.compile(dialect=...)``), with the
    dialect's paramstyle, its bind casts and its type processors (SQLite keeps
    dates as text): the same statement and the same values as
    ``connection.execute(statement)``, without the execution context, the
    result object and the events around one row.  Only for drivers whose
    connection can read outside a transaction without a round trip
    (:data:`_RAW_DRIVERS`).
    """

    def __init__(self, statement, dialect, parameter_names: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # Every bind parameter: the caller's (given to parameters()) and the statement's own literals.
        self._defaults = compiled.construct_params(dict.fromkeys(parameter_names))
        self._bind_processors = {
            name: processor
            for name in self._defaults
            if (processor := compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._positions = tuple(compiled.positiontup) if compiled.positional else None
        self.columns = tuple(column.key for column in statement.selected_columns)
        self._result_processors = tuple(
            (index, processor)
            for index, column in enumerate(statement.selected_columns)
            if (processor := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        )

    def parameters(self, values: Mapping[str, Any]):
        merged = {**self._defaults, **values}
        for name, processor in self._bind_processors.items():
            merged[name] = processor(merged[name])
        if self._positions is None:
            return merged
        return tuple(merged[name] for name in self._positions)

    def row(self, raw: Sequence[Any]) -> list:
        values = list(raw)
        for index, processor in self._result_processors:
            values[index] = processor(values[index])
        return values


#: Drivers whose link read skips SQLAlchemy's execution: psycopg switches to autocommit on the client
#: (no round trip on an idle connection), and make_engine opens SQLite connections with the driver's
#: transaction handling off (a lone SELECT is its own transaction).  Any other driver reads through Core.
_RAW_DRIVERS = ("psycopg", "pysqlite")


@dataclass(frozen=True)
class _MailboxLinkRow:
    """A row of ``_MAILBOX_LINK_QUERY`` with the attributes _mailbox_summary and the view read."""

    id: int
    address: str
    plan: str
    extra_space_gb: int | None
    extra_archive_gb: int | None
    used_space_mb: int | None
    expires_on: date
    domain_id: int | None
    auto_renew: bool | None
    promo: bool | None
    language: str | None
    holder_name: str | None
    order_public_id: str | None
    order_status: str | None
    order_origin: str | None


_raw_link_selects: "weakref.WeakKeyDictionary[Any, _RawSelect]" = weakref.WeakKeyDictionary()


def _raw_link_select(dialect) -> _RawSelect:
    select_ = _raw_link_selects.get(dialect)
    if select_ is None:
        select_ = _raw_link_selects[dialect] = _RawSelect(_MAILBOX_LINK_QUERY, dialect, ("mailbox_id", "cycle"))
        assert select_.columns == tuple(field for field in _MailboxLinkRow.__dataclass_fields__), select_.columns
    return select_


def read_mailbox_link(engine: Engine, link: RenewalLink, today: date) -> LinkView:
    """:func:`describe_link` for a mailbox link, read in one SELECT outside any transaction.

    The link page's read (``GET /rinnova/<token>``): the statement of
    :func:`describe_link`, run on a raw DBAPI cursor of a pooled connection in
    autocommit, so one round trip, with no BEGIN and no ROLLBACK.  A single
    SELECT sees one snapshot and cannot write.  If the pooled connection turns
    out dead (the database restarted), the pool drops it and every connection
    opened before it, as SQLAlchemy does for a disconnect, and the read is made
    once more on a fresh connection.  A driver not in :data:`_RAW_DRIVERS`
    reads through Core, in autocommit.
    """
    if link.target != MAILBOX:
        raise ValueError("read_mailbox_link reads a mailbox link; an account link needs describe_link and a Session")
    dialect = engine.dialect
    values = {"mailbox_id": link.target_id, "cycle": link.expires_on}
    if dialect.driver not in _RAW_DRIVERS:
        return _read_mailbox_link_core(engine, link, today)
    compiled = _raw_link_select(dialect)
    parameters = compiled.parameters(values)
    for attempt in (1, 2):
        pooled = engine.raw_connection()
        try:
            raw = _fetch_one(pooled, compiled.sql, parameters, dialect.driver)
        except BaseException as error:
            if not _is_disconnect(dialect, pooled, error):
                raise
            # What SQLAlchemy does on a disconnect: drop this connection and every one opened before it.
            engine.pool._invalidate(pooled, error)
            if attempt == 2 or not isinstance(error, Exception):
                raise
            continue
        finally:
            pooled.close()  # back to the pool, unless invalidated
        return _mailbox_link_view(None if raw is None else _MailboxLinkRow(*compiled.row(raw)), link, today)
    raise AssertionError("unreachable")


#: Where a pooled psycopg connection keeps the cursor of its link reads (its pool record's ``info``,
#: which SQLAlchemy clears when it replaces the connection).
_LINK_CURSOR = "pec_link_cursor"


def _fetch_one(pooled, sql: str, parameters, driver: str):
    connection = pooled.driver_connection
    if driver != "psycopg":
        cursor = connection.cursor()
        try:
            cursor.execute(sql, parameters)
            return cursor.fetchone()
        finally:
            cursor.close()
    cursor = pooled.info.get(_LINK_CURSOR)
    if cursor is None or cursor.closed or cursor.connection is not connection:
        cursor = pooled.info[_LINK_CURSOR] = connection.cursor()  # one per connection, reused
    # The pool hands out an idle connection: switching autocommit on and off costs no round trip.
    connection.autocommit = True
    try:
        # Binary results: psycopg's C loaders read the dates, integers and booleans without parsing
        # text (about a fifth of the execute's CPU, bench/link_handler.sh); the same Python values.
        cursor.execute(sql, parameters, prepare=True, binary=True)
        return cursor.fetchone()
    finally:
        if not connection.broken:  # a broken one is invalidated by the caller, never pooled again
            connection.autocommit = False  # as the pool's other users expect it


def _is_disconnect(dialect, pooled, error: BaseException) -> bool:
    """The connection is unusable: a disconnect the driver reported, or a psycopg connection left
    broken by anything at all (an interrupt in the middle of a round trip)."""
    connection = pooled.dbapi_connection
    if connection is None:
        return True
    if isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(error, connection, None):
        return True
    return bool(getattr(connection, "broken", False))


def _read_mailbox_link_core(engine: Engine, link: RenewalLink, today: date) -> LinkView:
    engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            return _describe_mailbox_link(connection, link, today)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
    with engine.connect() as connection:  # the pool replaced its connections: once more
        return _describe_mailbox_link(connection, link, today)


def _mailbox_link_view(mailbox, link: RenewalLink, today: date) -> LinkView:
    if mailbox is None:
        return LinkView(state=LinkState.NOT_FOUND, language="it")
    language = mailbox.language if mailbox.language in ("it", "en") else "it"
    summary = _mailbox_summary(mailbox, today)
    common = {"language": language, "mailboxes": (summary,), "holder_name": mailbox.holder_name}
    if mailbox.domain_id is not None:
        return LinkView(state=LinkState.ON_DOMAIN, **common)
    if mailbox.expires_on > link.expires_on:
        return LinkView(state=LinkState.ALREADY_RENEWED, new_expires_on=mailbox.expires_on, **common)
    if mailbox.expires_on < link.expires_on:
        return LinkView(state=LinkState.NOT_FOUND, language=language)
    if schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
        return LinkView(state=LinkState.DELETED, **common)
    has_order = mailbox.order_public_id is not None
    order_id = mailbox.order_public_id if has_order and mailbox.order_status != OrderStatus.CANCELLED.value else None
    if mailbox.auto_renew and not (has_order and mailbox.order_origin == OrderOrigin.AUTO_RENEW_FAILED.value):
        return LinkView(state=LinkState.AUTO_RENEW, order_public_id=order_id, **common)
    return LinkView(state=LinkState.RENEWABLE, order_public_id=order_id, **common)


def _describe_account_link(session: Session, link: RenewalLink, today: date) -> LinkView:
    account = session.get(Account, link.target_id)
    if account is None:
        return LinkView(state=LinkState.NOT_FOUND, language="it")
    window = _account_window_mailboxes(session, account.id, today)
    first = window[0] if window else session.scalar(
        select(Mailbox).where(Mailbox.account_id == account.id).order_by(Mailbox.id).limit(1)
    )
    language = first.language if first is not None and first.language in ("it", "en") else "it"
    summaries = tuple(_mailbox_summary(mailbox, today) for mailbox in window)
    common = {
        "language": language,
        "mailboxes": summaries,
        "account_login": account.login,
        "holder_name": first.holder.name if first is not None else None,
    }
    order = _order_for_link(session, ACCOUNT, account.id, link.expires_on)
    if order is not None and order.status == OrderStatus.PAID.value:
        return LinkView(state=LinkState.ALREADY_RENEWED, **common)
    order_id = order.public_id if order is not None and order.status != OrderStatus.CANCELLED.value else None
    orderable = [summary for summary in summaries if summary.orderable]
    if any(not summary.auto_renew for summary in orderable):
        return LinkView(state=LinkState.RENEWABLE, order_public_id=order_id, **common)
    if orderable:
        return LinkView(state=LinkState.AUTO_RENEW, order_public_id=order_id, **common)
    if summaries:
        return LinkView(state=LinkState.ON_DOMAIN, **common)
    expiries = session.scalars(select(Mailbox.expires_on).where(Mailbox.account_id == account.id)).all()
    if any(expires_on > link.expires_on for expires_on in expiries):
        return LinkView(state=LinkState.ALREADY_RENEWED, **common)
    if any(schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED for expires_on in expiries):
        return LinkView(state=LinkState.DELETED, **common)
    return LinkView(state=LinkState.NOT_FOUND, language=language)


# -- Starting an order ------------------------------------------------------------------------------


def _holder_snapshot(holder: Holder) -> dict[str, str | None]:
    return {name: getattr(holder, name) for name in HOLDER_FIELDS}


#: The ``HolderData`` fields kept in ``RenewalOrder.holder_data``.
HOLDER_FIELDS = (
    "name", "kind", "reference_email", "tax_code", "vat_number", "postal_address",
    "sdi_code", "einvoice_pec", "office_code", "cig", "cup",
)  # fmt: skip


def _new_order(
    *, account_id: int, holder_id: int, target: str, target_id: int, cycle: date, language: str, now: datetime
) -> RenewalOrder:
    return RenewalOrder(
        public_id=secrets.token_urlsafe(24),
        account_id=account_id,
        holder_id=holder_id,
        status=OrderStatus.DRAFT.value,
        origin=OrderOrigin.LINK.value,
        link_target=target,
        link_target_id=target_id,
        link_cycle=cycle,
        language=language if language in ("it", "en") else "it",
        mailboxes_confirmed=False,
        gateway_attempts=0,
        created_at=now,
    )


def _line_for(mailbox: Mailbox, *, selected: bool) -> RenewalOrderLine:
    return RenewalOrderLine(
        mailbox=mailbox,
        mailbox_id=mailbox.id,
        old_expires_on=mailbox.expires_on,
        old_plan=mailbox.plan,
        selected=selected,
        plan=mailbox.plan,
        extra_space_gb=mailbox.extra_space_gb or 0,
        extra_archive_gb=mailbox.extra_archive_gb or 0,
        archive_deletion_confirmed=False,
    )


def _insert_once(session: Session, order: RenewalOrder) -> RenewalOrder:
    """Add ``order``; if another transaction created the order of the same link first, return that one."""
    try:
        with session.begin_nested():
            session.add(order)
            session.flush()
    except IntegrityError:
        existing = _order_for_link(session, order.link_target, order.link_target_id, order.link_cycle)
        if existing is None:
            raise
        return existing
    return order


def start_order(session: Session, link: RenewalLink, today: date, now: datetime) -> RenewalOrder:
    """The open order of this link, created on the first call (POST only).

    Idempotent: the same link (target + expiry cycle) always gives the same
    order, whatever its status.  Raises :class:`LinkNotUsable` when
    :func:`describe_link` does not allow an order (``on_domain``, ``deleted``,
    ``already_renewed``, ``not_found``).  The order starts with one line per
    orderable mailbox, with the current plan and extras (for auto-renew
    mailboxes in an account order the line starts not selected:
    ``RenewalOrderLine.selected``).  The caller commits.
    """
    existing = _order_for_link(session, link.target, link.target_id, link.expires_on)
    if existing is not None:
        return existing
    view = describe_link(session, link, today)
    if view.state not in (LinkState.RENEWABLE, LinkState.AUTO_RENEW):
        raise LinkNotUsable(view.state)
    if link.target == MAILBOX:
        mailbox = session.get(Mailbox, link.target_id)
        assert mailbox is not None
        order = _new_order(
            account_id=mailbox.account_id, holder_id=mailbox.holder_id, target=MAILBOX, target_id=mailbox.id,
            cycle=link.expires_on, language=mailbox.language, now=now,
        )  # fmt: skip
        order.lines.append(_line_for(mailbox, selected=True))
    else:
        ids = [summary.id for summary in view.mailboxes if summary.orderable]
        mailboxes = [session.get(Mailbox, mailbox_id) for mailbox_id in ids]
        holder_source = next((m for m in mailboxes if not m.auto_renew), mailboxes[0])
        order = _new_order(
            account_id=link.target_id, holder_id=holder_source.holder_id, target=ACCOUNT, target_id=link.target_id,
            cycle=link.expires_on, language=view.language, now=now,
        )  # fmt: skip
        for mailbox in mailboxes:
            order.lines.append(_line_for(mailbox, selected=not mailbox.auto_renew))
    return _insert_once(session, order)


def find_order(session: Session, public_id: str) -> RenewalOrder | None:
    """The order with this public id (from the URL / signed session), or None."""
    if not isinstance(public_id, str) or not 1 <= len(public_id) <= 64:
        return None
    return session.scalar(select(RenewalOrder).where(RenewalOrder.public_id == public_id))


def find_order_by_number(session: Session, order_number: str) -> RenewalOrder | None:
    return session.scalar(select(RenewalOrder).where(RenewalOrder.order_number == order_number.strip().upper()))


def order_mailboxes(session: Session, order: RenewalOrder, today: date) -> list[MailboxSummary]:
    """The mailboxes of the order's lines, for the step pages (in address order)."""
    summaries = [_mailbox_summary(line.mailbox, today) for line in order.lines]
    return sorted(summaries, key=lambda summary: summary.address)


# -- Steps ------------------------------------------------------------------------------------------


def _language(order: RenewalOrder) -> str:
    return "en" if order.language == "en" else "it"


def _require_draft(order: RenewalOrder) -> None:
    if order.status == OrderStatus.DRAFT.value:
        return
    key = {
        OrderStatus.PAID.value: "order_paid",
        OrderStatus.CANCELLED.value: "order_cancelled",
    }.get(order.status, "order_not_open")
    raise OrderNotOpen({"order": message(key, _language(order))})


def _auto_renew_exempt(order: RenewalOrder) -> bool:
    return order.origin == OrderOrigin.AUTO_RENEW_FAILED.value


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
    language = _language(order)
    errors: dict[str, str] = {}
    by_id: dict[int, MailboxChoice] = {}
    line_ids = {line.mailbox_id for line in order.lines}
    for choice in choices:
        if choice.mailbox_id not in line_ids:
            errors["mailboxes"] = message("unknown_mailbox", language)
            continue
        by_id[choice.mailbox_id] = choice
    planned: list[tuple[RenewalOrderLine, MailboxChoice]] = []
    for line in order.lines:
        choice = by_id.get(line.mailbox_id) or MailboxChoice(
            mailbox_id=line.mailbox_id,
            plan=line.plan,
            extra_space_gb=line.extra_space_gb,
            extra_archive_gb=line.extra_archive_gb,
            confirm_archive_deletion=line.archive_deletion_confirmed,
            renew=line.selected,
        )
        planned.append((line, choice))
        if not choice.renew:
            continue
        mailbox = line.mailbox
        deleted = today is not None and schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED
        for problem in pricing.check_mailbox_choice(
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
            auto_renew_exempt=_auto_renew_exempt(order),
        ):
            errors.setdefault(f"{problem.field}-{line.mailbox_id}", problem.message(language))
    if not any(choice.renew for _line, choice in planned):
        errors.setdefault("mailboxes", message("no_mailboxes", language))
    if errors:
        raise OrderValidationError(errors)
    for line, choice in planned:
        line.selected = bool(choice.renew)
        if choice.renew:
            line.plan = choice.plan
            line.extra_space_gb = choice.extra_space_gb
            line.extra_archive_gb = choice.extra_archive_gb
            line.archive_deletion_confirmed = pricing.is_downgrade_to_standard(line.mailbox.plan, choice.plan) and bool(
                choice.confirm_archive_deletion
            )
    order.mailboxes_confirmed = True
    if order.years is not None:
        if pricing.check_years(order.years, _any_promo(order)) is not None:
            order.years = None  # no longer allowed (a promo mailbox was added): choose again
        _update_totals(order)
    session.flush()
    return order


def holder_form_data(order: RenewalOrder) -> dict[str, str]:
    """The holder fields to pre-fill step 2 with: the edited data if any, else the holder's own.

    The keys are :func:`worker.rules.holder_data.check_holder`'s arguments; the
    e-invoicing code is given as ``einvoice_code`` whichever column holds it.
    """
    data = order.holder_data or _holder_snapshot(order.holder)
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
    }


_HOLDER_FORM_FIELDS = (
    "name", "kind", "reference_email", "tax_code", "vat_number", "einvoice_code", "postal_address", "cig", "cup",
)  # fmt: skip


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
        language = _language(order)
        kind = (values.get("kind") or "").strip().lower()
        errors: dict[str, str] = {}
        for problem in problems:
            errors.setdefault(problem.field, holder_problem_message(problem.field, problem.message, kind, language))
        raise OrderValidationError(errors)
    assert holder is not None
    order.holder_data = {name: getattr(holder, name) for name in HOLDER_FIELDS}
    session.flush()
    return order


_FIELD_LABELS_EN = {
    "name": "The name",
    "kind": "The holder type",
    "reference_email": "The reference email",
    "tax_code": "The tax code",
    "vat_number": "The VAT number",
    "einvoice_code": "The e-invoicing code",
    "postal_address": "The postal address",
    "cig": "The CIG",
    "cup": "The CUP",
}


def holder_problem_message(field_name: str, detail: str, kind: str, language: str) -> str:
    """A holder problem from ``check_holder`` (English, for operators) worded for the holder."""
    if language == "en":
        if detail.startswith(("is ", "contains ")):
            return f"{_FIELD_LABELS_EN.get(field_name, field_name)} {detail}."
        return detail[0].upper() + detail[1:] + "."
    required = detail.startswith("is required")
    too_long = "characters long" in detail
    control = "control character" in detail
    checksum = "checksum" in detail
    if field_name == "name":
        if required:
            return "Indichi il nome e cognome o la ragione sociale dell'intestatario."
        if too_long:
            return "Il nome è troppo lungo: al massimo 200 caratteri."
        return "Il nome contiene caratteri non ammessi."
    if field_name == "kind":
        return (
            "Scelga il tipo di intestatario: persona fisica, ditta individuale, azienda, "
            "libero professionista o pubblica amministrazione."
        )
    if field_name == "reference_email":
        if required:
            return "Indichi l'indirizzo email di riferimento: è lì che arrivano tutti gli avvisi."
        return "L'indirizzo email di riferimento non è valido."
    if field_name == "postal_address":
        if too_long:
            return "L'indirizzo postale è troppo lungo: al massimo 300 caratteri."
        if control:
            return "L'indirizzo postale contiene caratteri non ammessi."
        return "L'indirizzo postale non è valido."
    if field_name == "tax_code":
        if required:
            return "Per una pubblica amministrazione il codice fiscale (11 cifre) è obbligatorio."
        if checksum:
            return "Il codice fiscale non è corretto: il carattere di controllo non corrisponde."
        if "public administration" in detail:
            return "Il codice fiscale di una pubblica amministrazione ha 11 cifre."
        if "birth date" in detail:
            return "Il codice fiscale non è valido: la data di nascita non esiste."
        return "Il codice fiscale non è valido: ha 16 caratteri (persona fisica) o 11 cifre."
    if field_name == "vat_number":
        if required:
            return "La partita IVA è obbligatoria per questo tipo di intestatario."
        if checksum:
            return "La partita IVA non è corretta: la cifra di controllo non corrisponde."
        if "11 digits" in detail:
            return "La partita IVA non è valida: ha 11 cifre."
        return "La partita IVA non è valida."
    if field_name == "einvoice_code":
        if kind == "public_administration":
            if required:
                return "Indichi il codice univoco ufficio (6 caratteri) per la fattura elettronica."
            return "Il codice univoco ufficio non è valido: ha 6 lettere o cifre."
        if required:
            return "Indichi il codice destinatario SDI (7 caratteri) o un indirizzo PEC per la fattura elettronica."
        if "PEC address:" in detail:
            return "L'indirizzo PEC per la fattura elettronica non è valido."
        return "Indichi un codice destinatario SDI di 7 caratteri oppure un indirizzo PEC."
    if field_name in ("cig", "cup"):
        label = field_name.upper()
        if "only for" in detail:
            return f"Il {label} si indica solo per una pubblica amministrazione."
        length = 10 if field_name == "cig" else 15
        return f"Il {label} non è valido: ha {length} lettere o cifre."
    return "Valore non valido."


def _selected_lines(order: RenewalOrder) -> list[RenewalOrderLine]:
    return [line for line in order.lines if line.selected]


def _any_promo(order: RenewalOrder) -> bool:
    return any(line.mailbox.promo for line in _selected_lines(order))


def earliest_deletion_on(order: RenewalOrder) -> date | None:
    """The earliest deletion date (the 91st day after expiry) of the order's selected mailboxes."""
    dates = [schedule.deletion_date(line.old_expires_on) for line in _selected_lines(order)]
    return min(dates) if dates else None


def payment_options(session: Session, order: RenewalOrder, today: date) -> list[PaymentOption]:
    """Every payment method, and whether it may be offered today.

    A method is refused when its registration delay would end after the
    earliest deletion date of the order's mailboxes: card and PayPal register
    at once, a bank transfer the next working day, a postal slip in up to 7
    working days (Italian working days: ``worker.rules.pricing.add_working_days``).
    """
    from worker.mail.emails import format_long_date

    language = _language(order)
    deletion_on = earliest_deletion_on(order)
    options = []
    for method in PAYMENT_METHODS:
        by = pricing.registered_by(method, today)
        available = deletion_on is None or by < deletion_on
        reason = None
        if not available:
            reason = message("method_too_late", language, deletion=format_long_date(deletion_on, language))
        options.append(
            PaymentOption(
                method=method,
                available=available,
                registered_by=by,
                reason=reason,
                switches_auto_renew_on=method in pricing.GATEWAY_METHODS,
            )
        )
    return options


def _may_change_payment(order: RenewalOrder) -> bool:
    """A draft, or an unpaid order left by a failed auto-renew charge (payable by any method)."""
    if order.status == OrderStatus.DRAFT.value:
        return True
    return order.status == OrderStatus.AWAITING_PAYMENT.value and _auto_renew_exempt(order)


def choose_payment(session: Session, order: RenewalOrder, method: str, years: int, today: date) -> RenewalOrder:
    """Step 3: the payment method and the renewal frequency (1-5 years; 1-2 with a promo mailbox).

    Raises :class:`OrderValidationError` (fields ``method``, ``years``, or
    ``order`` when step 1 is not done).  The totals of the order are computed
    here.  Also allowed on an unpaid order left by a failed auto-renew charge,
    whose method may be chosen (or changed) while it awaits payment.
    """
    if not _may_change_payment(order):
        _require_draft(order)
    language = _language(order)
    errors: dict[str, str] = {}
    if not order.mailboxes_confirmed:
        errors["order"] = message("step_mailboxes", language)
    if method not in PAYMENT_METHODS:
        errors["method"] = message("method_unknown", language)
    else:
        deletion_on = earliest_deletion_on(order)
        if deletion_on is not None and not pricing.method_in_time(method, today, deletion_on):
            from worker.mail.emails import format_long_date

            errors["method"] = message("method_too_late", language, deletion=format_long_date(deletion_on, language))
    if order.status == OrderStatus.AWAITING_PAYMENT.value and years != order.years:
        years = order.years  # the years of a confirmed order are fixed
    problem = pricing.check_years(years, _any_promo(order))
    if problem is not None:
        errors["years"] = message(problem.key, language, **problem.values)
    if errors:
        raise OrderValidationError(errors)
    order.payment_method = method
    order.years = years
    _update_totals(order)
    session.flush()
    return order


def accept_terms(session: Session, order: RenewalOrder, now: datetime, accepted: bool = True) -> RenewalOrder:
    """Step 4: the contract terms.  ``accepted=False`` raises :class:`OrderValidationError` (``terms``)."""
    _require_draft(order)
    if not accepted:
        order.terms_accepted_at = None
        raise OrderValidationError({"terms": message("terms_required", _language(order))})
    order.terms_accepted_at = now
    session.flush()
    return order


def _line_inputs(order: RenewalOrder) -> list[pricing.LineInput]:
    return [
        pricing.LineInput(line.mailbox.address, line.plan, line.extra_space_gb, line.extra_archive_gb)
        for line in sorted(_selected_lines(order), key=lambda line: line.mailbox.address)
    ]


def _update_totals(order: RenewalOrder) -> None:
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
        line.price_cents = (
            pricing.line_price_cents(
                pricing.LineInput(line.mailbox.address, line.plan, line.extra_space_gb, line.extra_archive_gb), order.years
            )
            if line.selected
            else None
        )


def order_summary(order: RenewalOrder) -> OrderSummary:
    """The price line by line, the VAT (22%) and the total, for the years chosen (1 until chosen)."""
    return pricing.price_order(_line_inputs(order), order.years or 1)


def next_step(order: RenewalOrder) -> str:
    """The first step still to do: ``mailboxes``, ``holder``, ``payment``, ``terms``, ``confirm``,
    then ``pay`` (awaiting payment; ``payment`` if an unpaid auto-renew order has no method yet),
    ``paid`` or ``cancelled``."""
    if order.status == OrderStatus.PAID.value:
        return "paid"
    if order.status == OrderStatus.CANCELLED.value:
        return "cancelled"
    if order.status == OrderStatus.AWAITING_PAYMENT.value:
        return "payment" if order.payment_method is None else "pay"
    if not order.mailboxes_confirmed:
        return "mailboxes"
    if order.holder_data is None:
        return "holder"
    if order.payment_method is None or order.years is None:
        return "payment"
    if order.terms_accepted_at is None:
        return "terms"
    return "confirm"


def checkout_url(settings: Settings, order: RenewalOrder) -> str:
    """Where a card / PayPal order is paid: ``{BASE_URL}/ordine/{public_id}/pagamento``.

    The web teammate serves this path (an opaque order id, no link token).
    """
    return f"{settings.base_url}/ordine/{order.public_id}/pagamento"


def order_number_for(order_id: int, year: int) -> str:
    """``PEC-2027-000123``: the year of confirmation and the order's id (6 digits or more)."""
    return f"PEC-{year:04d}-{order_id:06d}"


def mail_domain(settings: Settings) -> str:
    return parseaddr(settings.mail_from)[1].rpartition("@")[2]


def _check_still_renewable(order: RenewalOrder, today: date) -> dict[str, str]:
    language = _language(order)
    errors: dict[str, str] = {}
    for line in _selected_lines(order):
        mailbox = line.mailbox
        if mailbox.expires_on != line.old_expires_on or mailbox.domain_id is not None:
            errors[f"plan-{mailbox.id}"] = message("mailbox_changed", language, address=mailbox.address)
        elif schedule.mailbox_state(mailbox.expires_on, today) is schedule.MailboxState.DELETED:
            errors[f"plan-{mailbox.id}"] = pricing.problem_message("deleted", language, address=mailbox.address)
    return errors


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
        "resume_link": {"target": order.link_target, "id": order.link_target_id, "cycle": order.link_cycle.isoformat()},
        "registered_in_working_days": pricing.REGISTRATION_WORKING_DAYS.get(order.payment_method or "", 0),
    }


def order_email_context(order: RenewalOrder, settings: Settings) -> dict[str, Any]:
    """The plain data the ``order-confirmation`` and ``renewal-completed`` emails are rendered from."""
    holder = order.holder_data or _holder_snapshot(order.holder)
    summary = order_summary(order)
    mailboxes = []
    for line in sorted(_selected_lines(order), key=lambda line: line.mailbox.address):
        years = order.years or 1
        mailboxes.append(
            {
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
                "new_expires_on": (line.new_expires_on or schedule.add_years(line.old_expires_on, years)).isoformat(),
            }
        )
    return {
        "holder_name": holder.get("name"),
        "mailboxes": mailboxes,
        "order": {
            "number": order.order_number,
            "years": order.years or 1,
            "method": order.payment_method,
            "subtotal_cents": summary.subtotal_cents,
            "vat_percent": summary.vat_percent,
            "vat_cents": summary.vat_cents,
            "total_cents": summary.total_cents,
            "lines": [
                {"label_it": line.label("it"), "label_en": line.label("en"), "amount_cents": line.amount_cents}
                for line in summary.lines
            ],
            "auto_renew": order.payment_method in pricing.GATEWAY_METHODS,
        },
        "payment": payment_instructions(order, settings),
    }


def queue_order_email(
    session: Session, order: RenewalOrder, kind: str, *, now: datetime, today: date, settings: Settings
) -> QueuedEmail | None:
    """Queue ``kind`` (order-confirmation or renewal-completed) for the order, once per order."""
    holder = order.holder_data or _holder_snapshot(order.holder)
    email = NewEmail(
        about=OrderEmail(kind, order.order_number),
        kind=kind,
        stage=ORDER_EMAIL_STAGE,
        language=_language(order),
        to_address=holder["reference_email"].lower(),
        context=order_email_context(order, settings),
    )
    return queue_email(session, email, mail_domain=mail_domain(settings), business_date=today, now=now)


ORDER_CONFIRMATION = "order-confirmation"
RENEWAL_COMPLETED = "renewal-completed"
#: The outbox and its renderer name every email by a stage; order emails are not
#: tied to a stage of the schedule and use "0d".
ORDER_EMAIL_STAGE = "0d"


def confirm_order(session: Session, order: RenewalOrder, *, now: datetime, today: date, settings: Settings) -> RenewalOrder:
    """Step 5: confirm the order.  Idempotent: a second call returns it unchanged.

    Checks every step again (and that no mailbox was renewed or deleted
    meanwhile, and that the method is still in time), gives the order its
    number (``PEC-2027-000123``), sets it ``awaiting_payment`` and queues the
    ``order-confirmation`` email to the holder's reference address with the
    payment instructions (bank transfer: IBAN, beneficiary, amount and order
    number for the payment reference; postal slip: the same with the postal
    account; card / PayPal: the checkout link, see :func:`checkout_url`).
    The order row is locked first, so a double click confirms once.
    The caller commits.
    """
    session.refresh(order, with_for_update=True)
    if order.status in (OrderStatus.AWAITING_PAYMENT.value, OrderStatus.PAID.value):
        return order
    _require_draft(order)
    language = _language(order)
    step = next_step(order)
    if step != "confirm":
        key = {"mailboxes": "step_mailboxes", "holder": "step_holder", "payment": "step_payment", "terms": "terms_required"}[step]
        raise OrderValidationError({"terms" if step == "terms" else "order": message(key, language)})
    errors = _check_still_renewable(order, today)
    deletion_on = earliest_deletion_on(order)
    if deletion_on is not None and not pricing.method_in_time(order.payment_method, today, deletion_on):
        from worker.mail.emails import format_long_date

        errors["method"] = message("method_too_late", language, deletion=format_long_date(deletion_on, language))
    if errors:
        raise OrderValidationError(errors)
    _update_totals(order)
    order.order_number = order_number_for(order.id, today.year)
    order.status = OrderStatus.AWAITING_PAYMENT.value
    order.confirmed_at = now
    session.flush()
    queue_order_email(session, order, ORDER_CONFIRMATION, now=now, today=today, settings=settings)
    return order


def create_unpaid_renewal_order(
    session: Session, mailbox: Mailbox, years: int, now: datetime, today: date, *, settings: Settings | None = None
) -> RenewalOrder:
    """For issue 4: the unpaid renewal order ("in attesa di pagamento") after a failed auto-renew charge.

    Created confirmed (``awaiting_payment``, with its order number, no
    payment method yet) for the mailbox's current plan and extras, ``years``
    years, keyed like the mailbox's own link for this expiry cycle: the link
    in the charge-failed email (``signer.renewal_url(mailbox.id,
    mailbox.expires_on)``) leads to it (``describe_link`` says
    ``renewable``), and it may be paid by any method although auto-renew is on
    (:func:`choose_payment` is allowed on it).  Idempotent per (mailbox,
    expiry cycle): an order the holder had already started from that link is
    marked as such and returned.  Queues no email (the caller's
    ``charge-failed`` email carries the link).  The caller commits.
    ``settings`` is accepted for symmetry and not needed.
    """
    if mailbox.domain_id is not None:
        raise ValueError("a mailbox on a domain has no renewal order")
    existing = _order_for_link(session, MAILBOX, mailbox.id, mailbox.expires_on)
    if existing is not None:
        if existing.status != OrderStatus.PAID.value:
            existing.origin = OrderOrigin.AUTO_RENEW_FAILED.value
            session.flush()
        return existing
    if pricing.check_years(years, bool(mailbox.promo)) is not None:
        years = min(max(int(years), 1), pricing.max_years(bool(mailbox.promo)))
    order = _new_order(
        account_id=mailbox.account_id, holder_id=mailbox.holder_id, target=MAILBOX, target_id=mailbox.id,
        cycle=mailbox.expires_on, language=mailbox.language, now=now,
    )  # fmt: skip
    order.origin = OrderOrigin.AUTO_RENEW_FAILED.value
    order.holder = mailbox.holder
    order.holder_data = _holder_snapshot(mailbox.holder)
    order.lines.append(_line_for(mailbox, selected=True))
    order.mailboxes_confirmed = True
    order.years = years
    _update_totals(order)
    order = _insert_once(session, order)
    if order.order_number is None:
        order.order_number = order_number_for(order.id, today.year)
        order.status = OrderStatus.AWAITING_PAYMENT.value
        order.confirmed_at = now
        session.flush()
    return order
