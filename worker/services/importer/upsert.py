"""Writing, set-based, from the staging table: accounts, domains, holders and mailboxes.

Accounts by login, domains by name, holders by (account, digest of the
holder data), mailboxes by address and their next dates (``mailbox_schedule``)
by mailbox, one statement each per chunk, in SQLAlchemy Core: the same
statements on PostgreSQL and SQLite, with each dialect's ``INSERT … ON
CONFLICT`` (:func:`~worker.store.db.dialect_insert`).

On the bulk-load path (PostgreSQL, into an empty fleet, without the
secondary indexes) the holders and mailboxes of a chunk are inserted by
:func:`_insert_new_holders` and :func:`_insert_new_mailboxes`, whose cost per
chunk does not grow with the tables.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, func, insert, or_, select, true, update
from sqlalchemy.sql import ColumnElement

from worker.events.queue import auto_renew_event, write_events
from worker.rules.import_rows import HOLDER_COLUMNS
from worker.services.importer.conflicts import Sync, sync_chunk
from worker.services.importer.report import ChunkCounts
from worker.services.importer.staged import STAGING
from worker.store.bulk_load import BulkWriter, Timed, untimed
from worker.store.db import dialect_insert
from worker.store.models import Account, Domain, Holder, Mailbox, MailboxSchedule

#: The columns of ``mailboxes`` a re-import overwrites (all but the address and the id).
MAILBOX_UPDATE_COLUMNS = (
    "account_id",
    "holder_id",
    "reference_email",
    "domain_id",
    "plan",
    "extra_space_gb",
    "extra_archive_gb",
    "used_space_mb",
    "expires_on",
    "auto_renew",
    "payment_method",
    "card_expires_on",
    "renewal_years",
    "promo",
    "language",
)
#: The tables whose statistics the first chunk refreshes: the joins of the next chunks read them.
_ANALYSED = (Account.__table__, Holder.__table__, Domain.__table__)

_rows = STAGING
_accounts, _holders, _domains, _mailboxes, _schedule = (
    model.__table__ for model in (Account, Holder, Domain, Mailbox, MailboxSchedule)
)


def upsert_chunk(
    connection: Connection,
    after_seq: int,
    last_seq: int,
    *,
    database: BulkWriter,
    analyse: bool,
    bulk: bool = False,
    timed: Timed = untimed,
    sync: Sync | None = None,
) -> ChunkCounts:
    """Upsert the good rows ``after_seq < seq <= last_seq`` of the staging table; return what each row did.

    ``analyse`` (for the first chunk): refresh the statistics of the tables
    the joins read, which rows written by this transaction are missing from.
    Before the mailboxes, :func:`~worker.services.importer.conflicts.sync_chunk`
    keeps what the worker holds where the file is older than it (unless
    ``sync.force``) and closes the old cycles of mailboxes renewed elsewhere.

    ``bulk`` (the bulk-load path: ``mailboxes`` was empty when the import
    began and has no unique index on ``address`` now): the mailboxes are
    inserted, all of them new; the file's own rows of a domain all have its
    expiry (or the file is refused), so none needs moving.
    """
    in_chunk = and_(_rows.c.seq > after_seq, _rows.c.seq <= last_seq)
    if bulk:
        # The ids of the accounts and holders this chunk adds come from their
        # sequences, above these (nothing else writes to the tables: the
        # bulk-load path holds them ACCESS EXCLUSIVE).
        max_account, max_holder, max_mailbox = connection.execute(
            select(
                select(func.coalesce(func.max(_accounts.c.id), 0)).scalar_subquery(),
                select(func.coalesce(func.max(_holders.c.id), 0)).scalar_subquery(),
                select(func.coalesce(func.max(_mailboxes.c.id), 0)).scalar_subquery(),
            )
        ).one()
    with timed("accounts"):
        _upsert_accounts(connection, in_chunk, distinct=bulk)
    with timed("domains"):
        _upsert_domains(connection, in_chunk)
    # The mailboxes of these domains that the file does not list follow them once the whole
    # file is written (follow_domains), so a mailbox the file lists counts as its own row did.
    with timed("holders"):
        if bulk:
            _insert_new_holders(connection, in_chunk, max_account)
        else:
            _upsert_holders(connection, in_chunk)
    if analyse:
        with timed("analyze"):
            database.analyze(*_ANALYSED)
    if bulk:
        with timed("mailboxes"):
            _insert_new_mailboxes(connection, in_chunk, max_account, max_holder)
        with timed("schedule"):
            _insert_new_schedule(connection, in_chunk, max_mailbox)
        return ChunkCounts(created=last_seq - after_seq)
    conflicting: set[int] = set()
    if sync is not None:
        with timed("sync"):
            conflicting = sync_chunk(connection, in_chunk, sync)
        _tell_the_platform(connection, in_chunk, sync)
    with timed("mailboxes"):
        return _upsert_mailboxes(connection, database, in_chunk, last_seq - after_seq, conflicting)


def _tell_the_platform(connection: Connection, in_chunk: ColumnElement[bool], sync: Sync) -> None:
    """``auto_renew.changed`` for each mailbox whose auto-renew the chunk switches (read before the
    mailboxes are written; a new mailbox is no switch)."""
    assert sync.now is not None and sync.today is not None
    switched = connection.execute(
        select(_mailboxes.c.id, _mailboxes.c.address, _rows.c.auto_renew)
        .join(_rows, _rows.c.address == _mailboxes.c.address)
        .where(in_chunk, _mailboxes.c.auto_renew.is_distinct_from(_rows.c.auto_renew))
        .order_by(_mailboxes.c.id)
    ).all()
    events = [
        auto_renew_event(row.id, row.address, auto_renew=bool(row.auto_renew), source="import") for row in switched
    ]
    write_events(connection, events, now=sync.now, business_date=sync.today)


def _upsert_accounts(connection: Connection, in_chunk: ColumnElement[bool], *, distinct: bool) -> None:
    logins = select(_rows.c.login).where(in_chunk)
    if distinct:
        # Each login once: a probe of the unique index per login rather than per row.
        logins = logins.distinct()
    statement = dialect_insert(connection, _accounts).from_select(["login"], logins)
    connection.execute(statement.on_conflict_do_nothing(index_elements=["login"]))


def _upsert_domains(connection: Connection, in_chunk: ColumnElement[bool]) -> None:
    """Domains, with their expiry (one per domain in a chunk, or the rows are not upserted)."""
    chunk_domains = (
        select(_rows.c.domain, _rows.c.domain_expires_on)
        .where(in_chunk, _rows.c.domain.is_not(None))
        .group_by(_rows.c.domain, _rows.c.domain_expires_on)
        .subquery()
    )
    statement = dialect_insert(connection, _domains).from_select(
        ["name", "expires_on"], select(chunk_domains.c.domain, chunk_domains.c.domain_expires_on).where(true())
    )
    connection.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"expires_on": statement.excluded.expires_on})
    )


def _upsert_holders(connection: Connection, in_chunk: ColumnElement[bool]) -> None:
    """Holders: equal data under one account is one row (the key is a digest of it)."""
    statement = dialect_insert(connection, _holders).from_select(
        ["account_id", "holder_key", *HOLDER_COLUMNS],
        select(_accounts.c.id, _rows.c.holder_key, *(_rows.c[name] for name in HOLDER_COLUMNS))
        .join(_accounts, _accounts.c.login == _rows.c.login)
        .where(in_chunk),
    )
    connection.execute(statement.on_conflict_do_nothing(index_elements=["account_id", "holder_key"]))


def _upsert_mailboxes(
    connection: Connection, database: BulkWriter, in_chunk: ColumnElement[bool], size: int, conflicting: set[int]
) -> ChunkCounts:
    """Mailboxes, by address.  A row in conflict counts as such, whether or not its other values were written."""
    rows, accounts, holders, domains, mailboxes = _rows, _accounts, _holders, _domains, _mailboxes
    values = {"account_id": accounts.c.id, "holder_id": holders.c.id, "domain_id": domains.c.id}
    chunk = (
        select(rows.c.address, *(values[name] if name in values else rows.c[name] for name in MAILBOX_UPDATE_COLUMNS))
        .join(accounts, accounts.c.login == rows.c.login)
        .join(holders, and_(holders.c.account_id == accounts.c.id, holders.c.holder_key == rows.c.holder_key))
        .outerjoin(domains, domains.c.name == rows.c.domain)
        .where(in_chunk)
    )
    statement = dialect_insert(connection, mailboxes)
    # A mailbox whose every column already has the file's value is left
    # alone (no new row version, no index entries), and counted as unchanged:
    # the statement returns only the rows it wrote.
    upsert = statement.from_select(["address", *MAILBOX_UPDATE_COLUMNS], chunk).on_conflict_do_update(
        index_elements=["address"],
        set_={name: statement.excluded[name] for name in MAILBOX_UPDATE_COLUMNS},
        where=or_(*(mailboxes.c[name].is_distinct_from(statement.excluded[name]) for name in MAILBOX_UPDATE_COLUMNS)),
    )
    existing = select(mailboxes.c.id).join(rows, rows.c.address == mailboxes.c.address).where(in_chunk)
    written = database.upsert(upsert, mailboxes.c.id, existing)
    created = sum(1 for inserted, _ in written if inserted)
    # The rows updated, in mailboxes or in their schedule alone (a new row is never in conflict).
    changed = {mailbox_id for inserted, mailbox_id in written if not inserted} | _upsert_schedule(connection, in_chunk)
    updated = len(changed - conflicting - {mailbox_id for inserted, mailbox_id in written if inserted})
    return ChunkCounts(created, updated, size - created - updated - len(conflicting), len(conflicting))


def _upsert_schedule(connection: Connection, in_chunk: ColumnElement[bool]) -> set[int]:
    """The chunk's mailboxes' next dates, by mailbox: a new one's row, an existing one's date where it
    differs.  Returns the mailboxes whose row was written."""
    rows, mailboxes, schedule = _rows, _mailboxes, _schedule
    statement = dialect_insert(connection, schedule)
    upsert = statement.from_select(
        ["mailbox_id", "next_action_on"],
        select(mailboxes.c.id, rows.c.next_action_on)
        .join(mailboxes, mailboxes.c.address == rows.c.address)
        .where(in_chunk),
    ).on_conflict_do_update(
        index_elements=["mailbox_id"],
        set_={"next_action_on": statement.excluded.next_action_on},
        where=schedule.c.next_action_on.is_distinct_from(statement.excluded.next_action_on),
    )
    return set(connection.execute(upsert.returning(schedule.c.mailbox_id)).scalars())


def _insert_new_holders(connection: Connection, in_chunk: ColumnElement[bool], max_account: int) -> None:
    """The bulk-load path's holders of one chunk.

    The accounts and holders a chunk refers to are nearly all new in that
    chunk: they are found among the rows above the largest id before the
    chunk (a range of the primary key, so the join hashes a chunk's worth of
    rows, not the whole table, whose size grows with the file); any other (a
    holder whose mailboxes straddle two chunks, an account seen earlier in
    the file or before the import) is looked up by its unique index.
    """
    staged = (
        select(_rows.c.login, _rows.c.holder_key, *(_rows.c[name] for name in HOLDER_COLUMNS))
        .where(in_chunk)
        .distinct()
        .subquery("staged")
    )
    new_account = _accounts.alias("new_account")
    statement = dialect_insert(connection, _holders).from_select(
        ["account_id", "holder_key", *HOLDER_COLUMNS],
        select(
            _account_id(staged.c.login, new_account), staged.c.holder_key, *(staged.c[name] for name in HOLDER_COLUMNS)
        )
        .select_from(staged)
        .outerjoin(new_account, and_(new_account.c.id > max_account, new_account.c.login == staged.c.login)),
    )
    connection.execute(statement.on_conflict_do_nothing(index_elements=["account_id", "holder_key"]))


def _insert_new_mailboxes(
    connection: Connection, in_chunk: ColumnElement[bool], max_account: int, max_holder: int
) -> None:
    """The bulk-load path's mailboxes of one chunk, all new (see :func:`_insert_new_holders`)."""
    new_account, new_holder = _accounts.alias("new_account"), _holders.alias("new_holder")
    known_holder = _holders.alias("known_holder")
    chunk = (
        select(_rows, _account_id(_rows.c.login, new_account).label("account_id"))
        .outerjoin(new_account, and_(new_account.c.id > max_account, new_account.c.login == _rows.c.login))
        .where(in_chunk)
        .offset(0)  # the planner keeps each row's account id, computed once, for the joins below
        .subquery("chunk")
    )
    known_holder_id = (
        select(known_holder.c.id)
        .where(known_holder.c.account_id == chunk.c.account_id, known_holder.c.holder_key == chunk.c.holder_key)
        .scalar_subquery()
    )
    values = {
        "account_id": chunk.c.account_id,
        "holder_id": func.coalesce(new_holder.c.id, known_holder_id),
        "domain_id": _domains.c.id,
    }
    new_holder_of_row = and_(
        new_holder.c.id > max_holder,
        new_holder.c.account_id == chunk.c.account_id,
        new_holder.c.holder_key == chunk.c.holder_key,
    )
    connection.execute(
        insert(_mailboxes).from_select(
            ["address", *MAILBOX_UPDATE_COLUMNS],
            select(
                chunk.c.address, *(values[name] if name in values else chunk.c[name] for name in MAILBOX_UPDATE_COLUMNS)
            )
            .select_from(chunk)
            .outerjoin(new_holder, new_holder_of_row)
            .outerjoin(_domains, _domains.c.name == chunk.c.domain),
        )
    )


def _insert_new_schedule(connection: Connection, in_chunk: ColumnElement[bool], max_mailbox: int) -> None:
    """The bulk-load path's schedule rows of one chunk's new mailboxes: those above the largest id
    before the chunk (a range of the primary key: the address has no index on this path)."""
    statement = dialect_insert(connection, _schedule).from_select(
        ["mailbox_id", "next_action_on"],
        select(_mailboxes.c.id, _rows.c.next_action_on)
        .join(_rows, _rows.c.address == _mailboxes.c.address)
        .where(_mailboxes.c.id > max_mailbox, in_chunk),
    )
    # An address twice in the file is two mailboxes here, each joined to both lines: one row each
    # (the rebuilt unique index on the address then refuses the file).
    connection.execute(statement.on_conflict_do_nothing(index_elements=["mailbox_id"]))


def _account_id(login: ColumnElement[str], new_account) -> ColumnElement[int]:
    """The id of the account ``login``: among the chunk's new accounts, else by the unique index."""
    known_account = _accounts.alias("known_account")
    known = select(known_account.c.id).where(known_account.c.login == login).scalar_subquery()
    return func.coalesce(new_account.c.id, known)


def follow_domains(connection: Connection) -> None:
    """Move the mailboxes of the file's domains that the file does not list to their domain's expiry.

    The file's own rows of a domain have its expiry already (or the file is refused).
    """
    rows, domains, mailboxes = _rows, _domains, _mailboxes
    staged = (
        select(rows.c.domain, rows.c.domain_expires_on, rows.c.next_action_on)
        .where(rows.c.seq.is_not(None), rows.c.domain.is_not(None))
        .group_by(rows.c.domain, rows.c.domain_expires_on, rows.c.next_action_on)
        .subquery()
    )
    dated = (
        select(domains.c.id, staged.c.domain_expires_on, staged.c.next_action_on)
        .join(staged, staged.c.domain == domains.c.name)
        .subquery()
    )
    # The schedule first: its rows are chosen by the expiry that the second statement moves.
    moving = (mailboxes.c.domain_id == dated.c.id, mailboxes.c.expires_on != dated.c.domain_expires_on)
    connection.execute(
        update(_schedule)
        .where(_schedule.c.mailbox_id == mailboxes.c.id, *moving)
        .values(next_action_on=dated.c.next_action_on)
    )
    connection.execute(update(mailboxes).where(*moving).values(expires_on=dated.c.domain_expires_on))
