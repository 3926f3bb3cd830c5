"""Reading a signed link: what it is about and whether an order can start.  Nothing here writes.

:func:`describe_link` is the one read.  A mailbox link is one Core statement
(the mailbox, its holder's name and the order of its link, joined); an account
link reads the account's mailboxes in their renewal window through the ORM, and
a group link ("Rinnova tutte") the same of the mailboxes it names.
:func:`read_mailbox_link` runs the same statement for the link page, on a
pooled connection of its own, outside any transaction where the database
allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from worker.rules import schedule
from worker.rules.auto_renew import AWAITING_AUTHENTICATION
from worker.rules.links import ACCOUNT, GROUP, MAILBOX, RenewalLink
from worker.rules.notices import reminders_opted_out
from worker.rules.vocabulary import DEFAULT_LANGUAGE, LANGUAGES
from worker.store.models import (
    LIVE_ORDER_STATUSES,
    Account,
    ChargeIntent,
    Holder,
    Mailbox,
    OrderOrigin,
    OrderStatus,
    RenewalOrder,
)


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
    #: Days from the day it was read to the expiry: negative once expired (what advice fits).
    days_to_expiry: int = 0
    #: Whether the holder opted out of the expiry reminders of this cycle ("Non intendo rinnovare").
    reminders_opted_out: bool = False


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
    #: That order's status, number, method and total (a confirmed order awaiting payment shows them).
    order_status: str | None = None
    order_number: str | None = None
    order_method: str | None = None
    order_total_cents: int | None = None
    holder_name: str | None = None
    account_login: str | None = None
    #: The number of the unpaid order a failed auto-renew charge left (mailbox link), if any.
    failed_charge_order: str | None = None
    #: The cycle's auto-renew charge waiting for the holder's authentication (its intent's id), if any.
    authentication_intent_id: int | None = None


def holder_language(value: str | None) -> str:
    """A stored language as the pages and emails use it: one of the languages, else the default."""
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


def mailbox_summary(mailbox: Any, today: date) -> MailboxSummary:
    """``mailbox`` (an ORM row, or a row of the link statement with the same attributes) on ``today``."""
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
        days_to_expiry=(mailbox.expires_on - today).days,
        reminders_opted_out=reminders_opted_out(mailbox.reminders_opt_out_for, mailbox.expires_on),
    )


def in_renewal_window(expires_on: date, today: date) -> bool:
    """From 3 calendar months before expiry to the 90th day after it."""
    opens = schedule.add_months(expires_on, -schedule.NOTICE_WINDOW_MONTHS)
    return opens <= today <= schedule.last_renewable_day(expires_on)


def order_for_link(session: Session, target: str, target_id: int, cycle: date) -> RenewalOrder | None:
    """The live order (draft, awaiting payment or paid) started from the link of ``target`` for the
    expiry ``cycle``: at most one (a partial unique index); cancelled and lapsed orders are left out."""
    return session.scalar(
        select(RenewalOrder).where(
            RenewalOrder.link_target == target,
            RenewalOrder.link_target_id == target_id,
            RenewalOrder.link_cycle == cycle,
            RenewalOrder.status.in_(LIVE_ORDER_STATUSES),
        )
    )


def describe_link(session: Session | Connection, link: RenewalLink, today: date) -> LinkView:
    """What the link is about and whether an order can start.  Read-only: safe for a GET.

    ``session`` may be a Core ``Connection`` for a mailbox link, which is read
    in one statement; an account link needs a ``Session``.

    A mailbox link (``link.target == "m"``):

    - ``not_found``: no such mailbox, or a cycle the mailbox never had;
    - ``on_domain``: a mailbox on a customer domain (renewed with the domain);
    - ``already_renewed``: its expiry moved on from the link's cycle (``new_expires_on``);
    - ``deleted``: more than 90 days after expiry;
    - ``auto_renew``: auto-renew is on; manual renewal is refused, a plan change
      is allowed (``start_order`` works, and ``choose_mailboxes`` then requires
      a plan change).  An unpaid renewal order left by a failed auto-renew
      charge makes the link ``renewable`` instead, payable by any method;
    - ``renewable`` otherwise.

    An account link (``"a"``) lists every mailbox of the account in its renewal
    window (from 3 calendar months before expiry to the 90th day after);
    ``renewable`` when at least one without auto-renew can be ordered, else
    ``auto_renew`` or ``on_domain`` when those are all it has in the window,
    else ``already_renewed`` (its order was paid, or nothing is left to renew),
    ``deleted`` or ``not_found``.

    A group link (``"g"``, the "Rinnova tutte" of a grouped notice) is read as
    an account link of the mailboxes it names, all of one account.
    """
    if link.target == MAILBOX:
        row = session.execute(_MAILBOX_LINK_QUERY, {"mailbox_id": link.target_id, "cycle": link.expires_on}).first()
        return _mailbox_link_view(row, link, today)
    if link.target in (ACCOUNT, GROUP):
        if not isinstance(session, Session):
            raise TypeError("an account or group link is read with a Session")
        return _describe_account_link(session, link, today)
    return LinkView(state=LinkState.NOT_FOUND, language=DEFAULT_LANGUAGE)


def read_mailbox_link(engine: Engine, link: RenewalLink, today: date) -> LinkView:
    """:func:`describe_link` of a mailbox link on a pooled connection of ``engine``: the link page's read.

    On PostgreSQL the connection is in autocommit for the read: one round trip,
    no BEGIN and no ROLLBACK (a single SELECT sees one snapshot and cannot
    write).  If the pooled connection turns out dead (the server restarted), the
    pool replaces its connections and the read is made once more.
    """
    if link.target != MAILBOX:
        raise ValueError("read_mailbox_link reads a mailbox link; an account link needs describe_link and a Session")
    try:
        with _read_connection(engine) as connection:
            return describe_link(connection, link, today)
    except DBAPIError as error:
        if not error.connection_invalidated:
            raise
    with _read_connection(engine) as connection:  # the pool replaced its connections: once more
        return describe_link(connection, link, today)


def _read_connection(engine: Engine) -> Connection:
    """A pooled connection for one read.  PostgreSQL's goes into autocommit (and back when it is
    returned).  SQLite's stays as ``worker.store.db.make_engine`` sets it up (the driver's own
    transaction handling off, BEGIN from an event): switching its isolation level would turn the
    driver's handling back on for the connection's next user, and a local file has no round trip
    to save."""
    connection = engine.connect()
    if engine.dialect.name == "postgresql":
        connection.execution_options(isolation_level="AUTOCOMMIT")
    return connection


#: The cycle's auto-renew charge waiting for the holder's authentication (a status the rule leaves
#: on the cycle's last attempt only), as a scalar subquery of the link's statement.
_WAITING_CHARGE = (
    select(ChargeIntent.id)
    .where(
        ChargeIntent.mailbox_id == Mailbox.id,
        ChargeIntent.cycle_expires_on == Mailbox.expires_on,
        ChargeIntent.status == AWAITING_AUTHENTICATION,
    )
    .order_by(ChargeIntent.attempt.desc())
    .limit(1)
    .scalar_subquery()
)

#: The mailbox, its holder's name and the live order of its link (if any), in one statement built once.
#: A link page is the web app's hot path: three ORM reads (the mailbox, its lazy-loaded holder,
#: the order) were three round trips, and building the statement anew cost more CPU than running
#: it (bench/link_handler.sh).  The live order's key is unique: the outer join gives at most one row.
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
        Mailbox.reminders_opt_out_for,
        Holder.name.label("holder_name"),
        RenewalOrder.public_id.label("order_public_id"),
        RenewalOrder.status.label("order_status"),
        RenewalOrder.origin.label("order_origin"),
        RenewalOrder.order_number.label("order_number"),
        RenewalOrder.payment_method.label("order_method"),
        RenewalOrder.total_cents.label("order_total_cents"),
        _WAITING_CHARGE.label("authentication_intent_id"),
    )
    .join(Holder, Holder.id == Mailbox.holder_id)
    .outerjoin(
        RenewalOrder,
        (RenewalOrder.link_target == MAILBOX)
        & (RenewalOrder.link_target_id == Mailbox.id)
        & (RenewalOrder.link_cycle == bindparam("cycle"))
        & RenewalOrder.status.in_(LIVE_ORDER_STATUSES),
    )
    .where(Mailbox.id == bindparam("mailbox_id"))
)


def _mailbox_link_view(row: Any, link: RenewalLink, today: date) -> LinkView:
    if row is None:
        return LinkView(state=LinkState.NOT_FOUND, language=DEFAULT_LANGUAGE)
    language = holder_language(row.language)
    common: dict[str, Any] = {
        "language": language,
        "mailboxes": (mailbox_summary(row, today),),
        "holder_name": row.holder_name,
    }
    if row.domain_id is not None:
        return LinkView(state=LinkState.ON_DOMAIN, **common)
    if row.expires_on > link.expires_on:
        return LinkView(state=LinkState.ALREADY_RENEWED, new_expires_on=row.expires_on, **common)
    if row.expires_on < link.expires_on:
        return LinkView(state=LinkState.NOT_FOUND, language=language)
    if schedule.mailbox_state(row.expires_on, today) is schedule.MailboxState.DELETED:
        return LinkView(state=LinkState.DELETED, **common)
    has_order = row.order_public_id is not None
    if has_order:
        common.update(
            order_public_id=row.order_public_id,
            order_status=row.order_status,
            order_number=row.order_number,
            order_method=row.order_method,
            order_total_cents=row.order_total_cents,
        )
    failed_charge = has_order and row.order_origin == OrderOrigin.AUTO_RENEW_FAILED.value
    if row.auto_renew and not failed_charge:
        return LinkView(state=LinkState.AUTO_RENEW, authentication_intent_id=row.authentication_intent_id, **common)
    unpaid = failed_charge and row.order_status == OrderStatus.AWAITING_PAYMENT.value
    return LinkView(
        state=LinkState.RENEWABLE,
        failed_charge_order=row.order_number if unpaid else None,
        **common,
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


def _group_mailboxes(session: Session, link: RenewalLink) -> tuple[Account | None, list[Mailbox]]:
    """The account of a group link and the mailboxes it names (by address); no account unless they
    are all of one (a mailbox moved to another account since the notice: not one order)."""
    mailboxes = list(session.scalars(select(Mailbox).where(Mailbox.id.in_(link.mailbox_ids)).order_by(Mailbox.address)))
    accounts = {mailbox.account_id for mailbox in mailboxes}
    if len(accounts) != 1:
        return None, []
    return session.get(Account, accounts.pop()), mailboxes


def _describe_account_link(session: Session, link: RenewalLink, today: date) -> LinkView:
    if link.target == ACCOUNT:
        account = session.get(Account, link.target_id)
        window = _account_window_mailboxes(session, link.target_id, today) if account is not None else []
        first = window[0] if window else None
        if account is not None and first is None:
            query = select(Mailbox).where(Mailbox.account_id == account.id).order_by(Mailbox.id).limit(1)
            first = session.scalar(query)
    else:
        account, mailboxes = _group_mailboxes(session, link)
        window = [mailbox for mailbox in mailboxes if in_renewal_window(mailbox.expires_on, today)]
        first = (window or mailboxes or [None])[0]
    if account is None:
        return LinkView(state=LinkState.NOT_FOUND, language=DEFAULT_LANGUAGE)
    summaries = tuple(mailbox_summary(mailbox, today) for mailbox in window)
    common: dict[str, Any] = {
        "language": holder_language(first.language if first is not None else None),
        "mailboxes": summaries,
        "account_login": account.login,
        "holder_name": first.holder.name if first is not None else None,
    }
    order = order_for_link(session, link.target, link.target_id, link.expires_on)
    if order is not None and order.status == OrderStatus.PAID.value:
        return LinkView(state=LinkState.ALREADY_RENEWED, **common)
    if order is not None:
        common.update(
            order_public_id=order.public_id,
            order_status=order.status,
            order_number=order.order_number,
            order_method=order.payment_method,
            order_total_cents=order.total_cents,
        )
    orderable = [summary for summary in summaries if summary.orderable]
    if any(not summary.auto_renew for summary in orderable):
        return LinkView(state=LinkState.RENEWABLE, **common)
    if orderable:
        return LinkView(state=LinkState.AUTO_RENEW, **common)
    if summaries:
        return LinkView(state=LinkState.ON_DOMAIN, **common)
    return _account_outside_window(session, link, today, common)


def _account_outside_window(session: Session, link: RenewalLink, today: date, common: dict[str, Any]) -> LinkView:
    """An account (or group) with no mailbox in its renewal window: renewed since, deleted, or never of this cycle."""
    if link.target == ACCOUNT:
        expiries = session.scalars(select(Mailbox.expires_on).where(Mailbox.account_id == link.target_id)).all()
    else:
        expiries = session.scalars(select(Mailbox.expires_on).where(Mailbox.id.in_(link.mailbox_ids))).all()
    if any(expires_on > link.expires_on for expires_on in expiries):
        return LinkView(state=LinkState.ALREADY_RENEWED, **common)
    if any(schedule.mailbox_state(expires_on, today) is schedule.MailboxState.DELETED for expires_on in expiries):
        return LinkView(state=LinkState.DELETED, **common)
    return LinkView(state=LinkState.NOT_FOUND, language=common["language"])
