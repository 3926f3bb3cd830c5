"""Import mailboxes from a CSV file: ``pec-renewal import mailboxes FILE.csv``.

The file is read once, in one transaction.  Each record is checked as it is
read, and its checked, normalised values go, ``CHUNK_ROWS`` records at a
time, to a temporary staging table with its line number (``COPY`` on
PostgreSQL, bulk inserts on SQLite).  While no problem has been found, each
chunk is also upserted from there with set-based statements: accounts by
login, domains by name, holders by (account, digest of the holder data),
mailboxes by address.  On PostgreSQL that runs in a second thread, beside the
checking of the next chunk.

The rules across rows (an address twice, a domain given two expiries) are
checked in SQL on the staging table at the end.  A file with any bad row is
refused whole with :class:`ImportRefused`, listing every problem as
``line N, column NAME: what is wrong`` (N counts CSV records, the header is
line 1), and the transaction is rolled back: nothing is written, not even
the chunks upserted before the first problem.  Re-importing a file updates
(a mailbox whose every value is already the file's is left as it is, and
counted as unchanged).

**The worker's own renewals win.**  The file is the provider's master data,
which can be older than what happened here.  A row whose expiry is earlier
than the mailbox's is older than the worker's data: its expiry and its
renewal columns (plan, extras, auto-renew, payment method, card expiry,
renewal years, promo: :data:`RENEWAL_COLUMNS`) are not applied, and neither
are the renewal columns of a row with the mailbox's own expiry when that
cycle was renewed here (a registered payment of an order, a successful
auto-renew charge: they set the plan and extras paid for and how the
mailbox renews).  Each value kept is reported as an :class:`ImportConflict`
naming the line, the column, what the worker holds and why; the row's other
columns (the holder, the reference address, the language …) are applied.
``force=True`` applies the file anyway.  A row with a later expiry means
the mailbox was renewed elsewhere: it is applied, and the open orders of the
cycles before it are cancelled (their payment could only be refused now); a
charge intent of such a cycle whose answer was never recorded (``started``,
``unknown``) is left as it is, for the operator to look up, and reported:
the charge work only ever charges the mailbox's current cycle, so that
cycle is never charged again.  Mailboxes on a customer domain follow their
domain's expiry, as before.  ``dry_run=True`` does all of it and rolls it
back.

Memory stays flat as the file grows: a row lives in this process only while
its chunk is checked and sent; what rows must agree on is kept by the
database.

**Bulk-load path** (PostgreSQL only, for a first import into an empty
fleet).  When ``mailboxes`` is empty as the import begins, the import drops,
inside its own transaction, the secondary indexes and the foreign keys of
``mailboxes`` and ``holders`` (it keeps the primary keys and the unique
constraints its ``ON CONFLICT`` clauses name: ``uq_accounts_login``,
``uq_holders_account_id``, ``uq_domains_name``), inserts the mailboxes
chunk by chunk without an ``ON CONFLICT``, and once the file is known to be
good builds every index and constraint again, with the names and
definitions read from the live catalog just before the drop
(PostgreSQL's "Populating a Database" advice: one index build is far
cheaper than a million index insertions).  DDL is transactional in
PostgreSQL: a refused file, or any failure, rolls back the drops with the
rows, and the schema is as it was.  The drops take an ``ACCESS EXCLUSIVE``
lock on ``mailboxes`` and ``holders`` (and on ``accounts`` and ``domains``,
which their foreign keys refer to) until the import commits: the daily
scan, the link pages and anything else reading those tables wait for the
import.  On an empty fleet there is nothing for them to do; an import into
a fleet that has mailboxes takes the normal path and no such lock.  SQLite
always takes the normal path.
"""

from __future__ import annotations

import calendar
import contextlib
import csv
import difflib
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from operator import itemgetter
from typing import TextIO

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.rules import holder_data, schedule, vocabulary
from worker.store.db import dialect_insert
from worker.gateways.base import mask_token
from worker.rules.holder_data import HolderData
from worker.store.models import (
    Account,
    ChargeIntent,
    ChargeStatus,
    Domain,
    Holder,
    Mailbox,
    OrderStatus,
    Payment,
    Plan,
    RenewalOrder,
    RenewalOrderLine,
)
from worker.rules.schedule import Stage, first_action_on

REQUIRED_COLUMNS = ("address", "account", "holder_name", "holder_kind", "reference_email", "plan")
#: ``expires_on``, or for a mailbox on a customer domain ``domain`` and ``domain_expires_on``.
EXPIRY_COLUMNS = ("expires_on", "domain", "domain_expires_on")
OPTIONAL_COLUMNS = (
    "auto_renew",
    "payment_method",
    "card_expiry",
    "renewal_years",
    "promo",
    "extra_space_gb",
    "extra_archive_gb",
    "used_space_mb",
    "tax_code",
    "vat_number",
    "einvoice_code",
    "language",
    "postal_address",
    "cig",
    "cup",
)
KNOWN_COLUMNS = REQUIRED_COLUMNS + EXPIRY_COLUMNS + OPTIONAL_COLUMNS

PLANS = vocabulary.PLANS
LANGUAGES = vocabulary.LANGUAGES
MAX_RENEWAL_YEARS = 5
MAX_PROMO_RENEWAL_YEARS = 2
MAX_STANDARD_EXTRA_SPACE_GB = 1
PLANS_WITH_ARCHIVE = (Plan.PRO.value, Plan.PREMIUM.value)
INT32_MAX = 2**31 - 1
ACCOUNT_MAX = 254
#: The years a date of the file may fall in (``expires_on``, ``domain_expires_on``,
#: ``card_expiry``).  Outside them a date is a mistake (PEC began in 2005), and the schedule's
#: arithmetic (three months before expiry, five years of renewal, 91 days to deletion) stays far
#: from the calendar's ends: ``0001-01-01`` or ``9999-12-31`` would overflow it.
FIRST_YEAR = 2000
LAST_YEAR = 2199

#: Records per chunk, and how often ``progress`` is called.  Bigger chunks
#: are cheaper to upsert (each statement has a fixed cost); this size keeps
#: a chunk's text to some 15 MB and still moves a progress bar often.
CHUNK_ROWS = 50_000
#: PostgreSQL's ``work_mem`` during an import.
WORK_MEM = "64MB"
#: Take the bulk-load path (PostgreSQL, into an empty fleet) when it applies.
BULK_LOAD = True
#: The interpreter's thread switch interval during an import (seconds; CPython's default is 5 ms).
#: The writer thread sends each chunk to ``COPY`` in 128 KB blocks and, whenever the socket is
#: full, waits for PostgreSQL with the GIL released; the checking thread then kept the GIL for
#: up to the whole interval before the writer could send the next block, and PostgreSQL sat
#: idle.  At 1-5 ms the staging of 1M rows took 10-14 s in most runs (4.4 s in one), against
#: 2.5-2.9 s for the same COPY alone; at 0.05-0.2 ms it took 2.5-2.9 s, and the whole import
#: 20-24 s instead of 25-36 s (bench/import.py, bench/RESULTS.md, stop 13).  The interval
#: matters only while a thread asks for the GIL, so the checking thread's own time did not grow.
SWITCH_INTERVAL = 0.0001
#: PostgreSQL's ``maintenance_work_mem`` while the bulk-load path rebuilds the indexes.
MAINTENANCE_WORK_MEM = "256MB"
#: What the bulk-load path drops for the load and rebuilds after it, by table:
#: every index and constraint of the table but its primary key and the
#: unique constraints kept (an ``ON CONFLICT`` of the upserts names them).
BULK_TABLES = ("mailboxes", "holders")
BULK_KEPT = frozenset({"uq_holders_account_id"})
#: The unique constraint on ``mailboxes.address``, rebuilt first on the bulk-load path.
UNIQUE_ADDRESS = "uq_mailboxes_address"

#: The columns a re-import overwrites (all but the address and the id).
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
    "next_action_on",
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

#: Columns of a holder row, as named in the staging table.
HOLDER_COLUMNS = (
    "name",
    "kind",
    "reference_email",
    "tax_code",
    "vat_number",
    "postal_address",
    "sdi_code",
    "einvoice_pec",
    "office_code",
    "cig",
    "cup",
)

# Any C0/C1 control character (CR and LF included) or a byte that was not UTF-8
# (kept as a lone surrogate by the "surrogateescape" error handler).
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MONTH_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
_UINT_RE = re.compile(r"[0-9]{1,10}")
_PAYMENT_METHOD_RE = re.compile(r"[A-Za-z0-9_\-.]{1,200}")
_DOMAIN_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
#: Any character that ``str.isspace`` calls a space.
_SPACE_RE = re.compile(r"\s")
#: The line number a warning starts with.
_LINE_RE = re.compile(r"line ([0-9]+)")
#: Booleans as staged: "1" and "0" read as true and false in PostgreSQL and SQLite alike.
_BOOLEANS = {"true": "1", "false": "0"}
# Known names, mapped to one string object each.
_PLANS = {plan: plan for plan in PLANS}
_LANGUAGES = {language: language for language in LANGUAGES}

Progress = Callable[[int], None]
#: Records a problem with a column, unless that column already has one.
_Problem = Callable[[str, str], object]


@dataclass(frozen=True)
class ImportProblem:
    """One thing wrong in the file.  ``str()`` is ``line N, column NAME: message``."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        if self.column is None:
            return f"line {self.line}: {self.message}"
        return f"line {self.line}, column {self.column}: {self.message}"


@dataclass(frozen=True)
class ImportConflict:
    """A value of the file not applied: the worker's is kept.

    ``str()`` is ``line N, column NAME: kept VALUE (why); the file says VALUE``.
    """

    line: int
    column: str
    #: The worker's value, kept.
    kept: str
    #: Why it is kept: the renewal made here, or the later expiry an earlier import gave.
    reason: str
    #: What the file says, as a phrase (``the file says …``).
    given: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: kept {self.kept} ({self.reason}); {self.given}"


class ImportRefused(Exception):
    """The file has problems; nothing was written.  ``errors`` lists them all, in file order."""

    def __init__(self, errors: list[ImportProblem]):
        self.errors = errors
        super().__init__(f"{len(errors)} problem(s) in the file; nothing was imported")


@dataclass
class ImportReport:
    """What an import did (or, for a dry run, would do).

    Every good row is counted once: ``created`` (new), ``updated`` (a value
    changed), ``unchanged`` (every value already the file's) or
    ``conflicting`` (a value kept as the worker holds it, listed in
    ``conflicts``; the row's other values may have been applied).
    """

    rows: int = 0
    created: int = 0
    updated: int = 0
    domains: int = 0
    warnings: list[str] = field(default_factory=list)
    unchanged: int = 0
    #: Rows with at least one value kept as the worker holds it.
    conflicting: int = 0
    #: Every value kept, by line and column.
    conflicts: list[ImportConflict] = field(default_factory=list)
    #: Orders cancelled because the file renews their cycle elsewhere, by line.
    closed: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: Whether the bulk-load path was taken (PostgreSQL, into an empty fleet).
    bulk: bool = field(default=False, compare=False)
    #: Seconds per phase (the checking thread's CPU, each kind of SQL statement), for benchmarks.
    timings: dict[str, float] = field(default_factory=dict, compare=False, repr=False)


# --------------------------------------------------------------------------
# The staging table

#: One row per checked record.  A good row has every value and its ``seq``
#: (1, 2, … in file order); a bad row has only ``line`` and what rules across
#: rows look at (``address``, and ``domain`` with ``domain_expires_on``).
#: Every value is staged as text, an empty string for an absent one.
STAGING = Table(
    "import_rows",
    MetaData(),
    Column("line", Integer),
    Column("seq", Integer),
    Column("address", Text),
    Column("login", Text),
    Column("holder_key", Text),
    Column("domain", Text),
    Column("domain_expires_on", Date),
    Column("expires_on", Date),
    Column("plan", Text),
    Column("extra_space_gb", Integer),
    Column("extra_archive_gb", Integer),
    Column("used_space_mb", Integer),
    Column("auto_renew", Boolean),
    Column("payment_method", Text),
    Column("card_expires_on", Date),
    Column("renewal_years", Integer),
    Column("promo", Boolean),
    Column("language", Text),
    Column("next_action_on", Date),
    *(Column(name, Text) for name in HOLDER_COLUMNS),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
STAGING_WIDTH = len(STAGING.columns)
_ADDRESS, _DOMAIN, _DOMAIN_EXPIRES_ON = (
    STAGING.columns.keys().index(name) for name in ("address", "domain", "domain_expires_on")
)

StagedRow = tuple[str, ...]


class _StagingWriter:
    """Stages the checked rows and, while the file is still good, upserts them chunk by chunk.

    Rows are handed over ``CHUNK_ROWS`` at a time.  Each chunk goes
    to the staging table (``COPY`` on PostgreSQL, bulk inserts on SQLite),
    then, unless a problem has been found by then, is upserted into the real
    tables.  A chunk upserted before a later problem is found is undone with
    everything else when the transaction rolls back.

    On PostgreSQL that database work runs in a thread of its own, so the next
    chunk is checked while the last one is written (psycopg releases the GIL
    while it waits for the server); until :meth:`finish` returns, only that
    thread uses the connection.  On SQLite it runs in line.
    """

    def __init__(self, connection: Connection, report: ImportReport, sync: _Sync, *, bulk_load: bool = True):
        self.connection = connection
        self.report = report
        self.sync = sync
        self.postgresql = connection.dialect.name == "postgresql"
        #: Rows staged since the last hand-over: lines of COPY text on PostgreSQL, tuples on SQLite.
        self.rows: list[str] | list[StagedRow] = []
        #: The ``seq`` of the last good row staged, and of the last one handed over.
        self.good = self.handed_over = 0
        #: Good rows upserted so far (read by the checking thread for progress).
        self.written = 0
        #: Two good rows of one chunk that one statement could not upsert
        #: together (one address twice, a domain with two expiries): the
        #: file will be refused, so nothing more is upserted.
        self.conflict = False
        self.chunk_addresses: set[str] = set()
        self.chunk_domains: dict[str, str] = {}
        self.failure: BaseException | None = None
        self.queue: queue.Queue[tuple[list[StagedRow] | str, int, int, bool] | None] = queue.Queue(maxsize=1)
        self.thread: threading.Thread | None = None

        self.timings = report.timings
        #: The bulk-load path: the fleet was empty, so the secondary indexes
        #: and foreign keys of the tables filled were dropped (rebuilt by :meth:`rebuild`).
        self.bulk: _BulkLoad | None = None

        STAGING.create(connection)
        connection.exec_driver_sql(f"CREATE INDEX ix_{STAGING.name}_seq ON {STAGING.name} (seq)")
        if self.postgresql:
            # Sorts and hashes over the whole file (the rules across rows)
            # spill to disk with the default 4 MB; this is the server's
            # memory, for this transaction only.
            connection.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
            if BULK_LOAD and bulk_load:
                with self._timed("bulk_drop"):
                    self.bulk = _BulkLoad.start(connection)
                report.bulk = self.bulk is not None
            self.thread = threading.Thread(target=self._run, name="import-writer", daemon=True)
            self.thread.start()

    def stage(self, row: StagedRow, good: bool) -> None:
        self.rows.append(_copy_line(row) if self.postgresql else row)
        if good:
            self.good += 1
            if self.bulk is None:
                # The bulk-load path inserts mailboxes: an address twice is no error there.
                address = row[_ADDRESS]
                if address in self.chunk_addresses:
                    self.conflict = True
                self.chunk_addresses.add(address)
            domain = row[_DOMAIN]
            if domain and self.chunk_domains.setdefault(domain, row[_DOMAIN_EXPIRES_ON]) != row[_DOMAIN_EXPIRES_ON]:
                self.conflict = True

    def hand_over(self, upsert: bool) -> None:
        """Send the rows staged since the last call; upsert them too if ``upsert`` and no conflict."""
        if self.failure is not None:
            raise self.failure
        if not self.rows:
            return
        chunk: list[StagedRow] | str = self.rows
        if self.postgresql:
            self.rows.append("")
            chunk = "\n".join(self.rows)
        item = (chunk, self.handed_over, self.good, upsert and not self.conflict)
        self.rows = []
        self.handed_over = self.good
        self.chunk_addresses.clear()
        self.chunk_domains.clear()
        if self.thread is not None:
            self.queue.put(item)
        else:
            self._write(*item)

    def finish(self, upsert: bool, waiting: Callable[[], object] | None = None) -> None:
        """Hand over the last rows and wait until everything is written, calling ``waiting()`` every second."""
        try:
            self.hand_over(upsert)
        finally:
            self.stop(waiting)
        if self.failure is not None:
            raise self.failure

    def stop(self, waiting: Callable[[], object] | None = None) -> None:
        """Wait for the writer thread to finish what it was given."""
        if self.thread is not None:
            self.queue.put(None)
            while True:
                self.thread.join(timeout=1)
                if not self.thread.is_alive():
                    break
                if waiting is not None:
                    waiting()
            self.thread = None

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def rebuild(self) -> None:
        """On the bulk-load path, once the file is known to be good: rebuild what was dropped."""
        if self.bulk is not None:
            self.bulk.rebuild(self.connection, self._timed)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self._write(*item)
                except BaseException as error:  # noqa: BLE001 - raised again in the checking thread
                    self.failure = error

    def _write(self, chunk: list[StagedRow] | str, after_seq: int, last_seq: int, upsert: bool) -> None:
        connection = self.connection
        with self._timed("stage"):
            if isinstance(chunk, str):
                cursor = connection.connection.driver_connection.cursor()
                columns = ", ".join(STAGING.columns.keys())
                with cursor.copy(f"COPY {STAGING.name} ({columns}) FROM STDIN (FORMAT text, NULL '')") as copy:
                    copy.write(chunk)
            else:
                statement = f"INSERT INTO {STAGING.name} VALUES ({', '.join('?' * STAGING_WIDTH)})"
                connection.exec_driver_sql(statement, [tuple(value or None for value in row) for row in chunk])
        if upsert and last_seq > after_seq:
            first_chunk = after_seq == 0
            if first_chunk and self.postgresql:
                # A temporary table has no statistics until it is analysed.
                with self._timed("analyze"):
                    connection.exec_driver_sql(f"ANALYZE {STAGING.name} (seq, address, login, holder_key, domain)")
            counts = _upsert_chunk(
                connection,
                after_seq,
                last_seq,
                analyse=first_chunk and self.postgresql,
                bulk=self.bulk is not None,
                timed=self._timed,
                sync=self.sync,
            )
            report = self.report
            report.created += counts.created
            report.updated += counts.updated
            report.unchanged += counts.unchanged
            report.conflicting += counts.conflicting
            self.written = last_seq


def _copy_line(row: StagedRow) -> str:
    """A row in COPY's text format, where an empty field is NULL.

    A staged value never contains a tab or a line break (any control
    character refuses the row), so only backslashes need escaping.
    """
    text = "\t".join(row)
    if "\\" in text:
        text = "\t".join(value.replace("\\", "\\\\") for value in row)
    return text


# --------------------------------------------------------------------------
# Public API


class _DryRunDone(Exception):
    """Leaves the import's transaction of a dry run, which rolls everything back."""


def import_mailboxes(
    session_factory: sessionmaker[Session],
    source: str | os.PathLike[str] | TextIO,
    *,
    stages: tuple[Stage, ...],
    progress: Progress | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Check the whole CSV ``source`` (a path or a text stream) and upsert it, in one transaction.

    Raises :class:`ImportRefused` listing every problem when any row is bad;
    then nothing is written.  ``progress(done)`` is called about every
    ``CHUNK_ROWS`` records: ``done`` is the records checked plus the rows
    written, and climbs to twice the number of records (a progress bar's
    total is ``2 * count_records(path)``).

    ``force``: apply the file's expiries and renewal columns even where they
    would undo a renewal made here or move an expiry earlier (see the
    module's docstring).  ``dry_run``: do everything, report it, and roll it
    all back (without the bulk-load path's lock and index rebuild).
    """
    report = ImportReport(dry_run=dry_run)
    sync = _Sync(force=force, dry_run=dry_run)
    try:
        _import(session_factory, source, stages, progress, report, sync)
    except _DryRunDone:
        pass
    return report


def _import(
    session_factory: sessionmaker[Session],
    source: str | os.PathLike[str] | TextIO,
    stages: tuple[Stage, ...],
    progress: Progress | None,
    report: ImportReport,
    sync: _Sync,
) -> None:
    with _prompt_thread_switches(), _open(source) as stream, session_factory() as session, session.begin():
        connection = session.connection()
        writer = _StagingWriter(connection, report, sync, bulk_load=not sync.dry_run)
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            checked = _check_file(stream, stages, writer, progress)
        except BaseException:
            writer.stop()
            raise
        report.timings["checking_cpu"] = time.thread_time() - cpu_started
        report.timings["checking_wall"] = time.perf_counter() - started
        # The last chunks are written after the file is read: keep the progress moving.
        with writer._timed("last_chunks_wait"):
            writer.finish(
                upsert=not checked.errors,
                waiting=None if progress is None else lambda: progress(checked.records + writer.written),
            )
        # On the bulk-load path, a good file's addresses are checked by
        # building the unique index on mailboxes.address (the rows are all
        # there); only when that fails is the staging table searched for
        # the lines, which saves grouping every address of the file.
        bulk_addresses = writer.bulk is not None and not checked.errors
        with writer._timed("rules_across_rows"):
            _check_across_rows(connection, checked, addresses=not bulk_addresses)
            if bulk_addresses and checked.errors:
                # A domain with two expiries: the file is refused; list every problem.
                _check_across_rows(connection, checked, domains=False)
        if checked.errors:
            raise ImportRefused(checked.errors)  # leaving the block rolls everything back
        if writer.bulk is None:
            with writer._timed("domain_mailboxes"):
                _follow_domains(connection)
        if bulk_addresses:
            try:
                with connection.begin_nested():
                    writer.rebuild()
            except IntegrityError as error:
                if getattr(getattr(error.orig, "diag", None), "constraint_name", None) != UNIQUE_ADDRESS:
                    raise
                with writer._timed("rules_across_rows"):
                    _check_across_rows(connection, checked, domains=False)
                if not checked.errors:
                    raise
                raise ImportRefused(checked.errors) from None
        report.rows = checked.rows
        # Both lists are in file order; a line's own warnings first.
        report.warnings = sorted(checked.warnings + sync.warnings, key=_line_of)
        report.conflicts = sync.conflicts
        report.closed = sync.closed
        report.domains = connection.execute(
            select(func.count(STAGING.c.domain.distinct())).where(STAGING.c.seq.is_not(None))
        ).scalar_one()
        STAGING.drop(connection)
        if sync.dry_run:
            if progress is not None:
                progress(checked.records + checked.rows)
            raise _DryRunDone  # leaving the block rolls everything back
    if progress is not None:
        progress(checked.records + checked.rows)


def _line_of(message: str) -> int:
    """N of a message that starts ``line N``."""
    match = _LINE_RE.match(message)
    return int(match.group(1)) if match else 0


@contextmanager
def _prompt_thread_switches() -> Iterator[None]:
    """:data:`SWITCH_INTERVAL` while the import runs (if shorter than the process's), then the previous one."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def count_records(path: str | os.PathLike[str]) -> int:
    """The number of data records in a CSV file (its lines but the header), cheaply, for a progress bar."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1
    return max(lines - 1, 0)


# --------------------------------------------------------------------------
# Reading and checking


@dataclass
class _CheckedFile:
    #: Good rows staged.
    rows: int = 0
    #: Records read after the header, blank ones included.
    records: int = 0
    errors: list[ImportProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Column name → position in the header, to sort a line's problems.
    position: dict[str, int] = field(default_factory=dict)


@contextmanager
def _open(source: str | os.PathLike[str] | TextIO) -> Iterator[TextIO]:
    if isinstance(source, (str, os.PathLike)):
        # Bytes that are not UTF-8 become lone surrogates, reported per cell.
        with open(source, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
            yield file
    else:
        yield source


def _check_file(
    stream: TextIO, stages: tuple[Stage, ...], writer: _StagingWriter, progress: Progress | None
) -> _CheckedFile:
    checked = _CheckedFile()
    reader = csv.reader(stream)
    try:
        header_cells = next(reader, None)
    except csv.Error as error:
        checked.errors.append(ImportProblem(1, None, f"cannot be read as CSV: {error}"))
        return checked
    if not header_cells or not any(cell.strip() for cell in header_cells):
        checked.errors.append(ImportProblem(1, None, "the file is empty: the first line must name the columns"))
        return checked
    header = _check_header(header_cells, checked.errors)
    if checked.errors:
        # Rows checked against a broken header would only add noise.
        return checked

    row_checker = _RowChecker(header, stages, checked, writer.stage)
    writer.sync.position = row_checker.position
    check = row_checker.check
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # the reader goes on with the next record
            line += 1
            checked.errors.append(ImportProblem(line, None, f"cannot be read as CSV: {error}"))
            continue
        line += 1
        check(line, cells)
        if len(writer.rows) >= CHUNK_ROWS:
            writer.hand_over(upsert=not checked.errors)
        if progress is not None and (line - 1) % CHUNK_ROWS == 0:
            progress(line - 1 + writer.written)
    checked.records = line - 1
    return checked


def _check_header(cells: list[str], errors: list[ImportProblem]) -> list[str]:
    """The normalised column names; problems go to ``errors`` as line 1."""
    names = [cell.strip().lower() for cell in cells]
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if not name:
            errors.append(ImportProblem(1, f"#{position}", "the header cell is empty: name the column or remove it"))
        elif _BAD_CHAR_RE.search(name):
            errors.append(ImportProblem(1, _printable(name), _bad_char_problem(name)))
        elif name in seen:
            errors.append(ImportProblem(1, name, "is in the header twice"))
        elif name not in KNOWN_COLUMNS:
            close = difflib.get_close_matches(name, KNOWN_COLUMNS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            errors.append(ImportProblem(1, name, f"is not a known column{hint}"))
        seen.add(name)
    for name in REQUIRED_COLUMNS:
        if name not in seen:
            errors.append(ImportProblem(1, name, "is missing from the header"))
    if "expires_on" not in seen and "domain" not in seen and "domain_expires_on" not in seen:
        errors.append(
            ImportProblem(
                1,
                "expires_on",
                "is missing from the header (or, for mailboxes on a customer domain, give domain and domain_expires_on)",
            )
        )
    elif "domain" in seen and "domain_expires_on" not in seen:
        errors.append(ImportProblem(1, "domain_expires_on", "is missing from the header: a domain needs its expiry"))
    elif "domain_expires_on" in seen and "domain" not in seen:
        errors.append(ImportProblem(1, "domain", "is missing from the header: domain_expires_on needs it"))
    return names


def _stripped(joined: str) -> bool:
    """Whether no cell would change with ``str.strip``, given the cells joined with NUL.

    Only for ASCII cells without a control character (:data:`_BAD_CHAR_RE`):
    there, a space is the only character ``str.strip`` removes, and a NUL
    can only be a separator.
    """
    return not (
        joined.startswith(" ") or joined.endswith(" ") or " \x00" in joined or "\x00 " in joined
    )


def _printable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD, safe to print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _bad_char_problem(value: str) -> str:
    match = _BAD_CHAR_RE.search(value)
    assert match is not None
    char = match.group()
    if "\udc80" <= char <= "\udcff":
        byte = ord(char) - 0xDC00
        return f"is not UTF-8 (byte 0x{byte:02X} at character {match.start() + 1}): save the file as UTF-8"
    if char in "\r\n":
        return "contains a line break"
    return f"contains the control character U+{ord(char):04X}"


class _RowChecker:
    """Checks one record after another and stages each; keeps nothing per row."""

    def __init__(
        self,
        header: list[str],
        stages: tuple[Stage, ...],
        checked: _CheckedFile,
        stage: Callable[[StagedRow, bool], None],
    ):
        self.header = header
        self.width = len(header)
        checked.position = self.position = {name: index for index, name in enumerate(header)}
        # Every known column's stripped cell, in KNOWN_COLUMNS order; a column
        # missing from the header reads the empty cell appended to each record.
        self.known_cells = itemgetter(*(self.position.get(name, self.width) for name in KNOWN_COLUMNS))
        self.stages = stages
        self.checked = checked
        self.stage = stage
        self.bad_char_search = _BAD_CHAR_RE.search
        self.next_action: dict[str, str] = {}

    def check(self, line: int, cells: list[str]) -> None:
        joined = "".join(cells)
        if not joined or joined.isspace():
            return  # a blank line
        problems: dict[str, str] = {}
        # ASCII without a bad character (printable ASCII never has one) has only
        # one character that strip removes, the space: the common case.
        if joined.isascii() and (joined.isprintable() or not self.bad_char_search(joined)):
            if len(cells) == self.width and _stripped("\x00".join(cells)):
                # No cell to strip.
                cells.append("")
                row = self._check_values(line, self.known_cells(cells), problems)
                self.stage(row, not problems)
                if problems:
                    self._report(line, problems)
                return
        elif self.bad_char_search(joined):
            for name, cell in zip(self.header, cells):
                if _BAD_CHAR_RE.search(cell):
                    problems.setdefault(name, _bad_char_problem(cell))
        if len(cells) != self.width:
            column = self.header[min(len(cells), self.width - 1)]
            problems.setdefault(
                column,
                f"the record has {len(cells)} fields but the header has {self.width}"
                " (quote values that contain a comma)",
            )
        else:
            # Cells with bad characters fail their own checks too; the first
            # problem of a cell is the one reported.
            cells = list(map(str.strip, cells))
            cells.append("")
            row = self._check_values(line, self.known_cells(cells), problems)
            self.stage(row, not problems)
        if problems:
            self._report(line, problems)

    def _report(self, line: int, problems: dict[str, str]) -> None:
        order = self.position
        errors = self.checked.errors
        for column in sorted(problems, key=lambda name: order.get(name, len(order))):
            errors.append(ImportProblem(line, column, problems[column]))

    def _check_values(self, line: int, values: tuple[str, ...], problems: dict[str, str]) -> StagedRow:
        """The row to stage: every value when the row is good, else what rules across rows need.

        Problems go to ``problems``, the first per column.  An empty string is
        an absent value.
        """
        problem = problems.setdefault
        (
            address,
            login,
            holder_name,
            holder_kind,
            reference_email,
            given_plan,
            expires_text,
            domain,
            domain_expires_text,
            auto_renew_text,
            payment_method,
            card_expiry,
            renewal_years_text,
            promo_text,
            extra_space_text,
            extra_archive_text,
            used_space_text,
            tax_code,
            vat_number,
            einvoice_code,
            language_text,
            postal_address,
            cig,
            cup,
        ) = values

        if not address:
            problem("address", "is required")
        else:
            try:
                address = holder_data.normalise_email(address)
            except ValueError as error:
                problem("address", str(error))
                address = ""

        if not login:
            problem("account", "is required")
        elif len(login) > ACCOUNT_MAX:
            problem("account", f"is {len(login)} characters long; at most {ACCOUNT_MAX}")
        elif (" " in login) if login.isascii() and login.isprintable() else _SPACE_RE.search(login):
            problem("account", f"{login!r} contains a space")

        holder, holder_key, holder_values, holder_problems = _check_holder(
            holder_name, holder_kind, reference_email, tax_code, vat_number, einvoice_code, postal_address, cig, cup
        )
        for holder_problem in holder_problems:
            problem(_HOLDER_COLUMNS.get(holder_problem.field, holder_problem.field), holder_problem.message)

        plan = ""
        if not given_plan:
            problem("plan", "is required")
        else:
            plan = _PLANS.get(given_plan) or _PLANS.get(given_plan.lower(), "")
            if not plan:
                problem("plan", f"{given_plan!r} is not a plan: one of {', '.join(PLANS)}")

        domain_expires_on = ""
        if domain_expires_text:
            domain_expires_on = _checked(domain_expires_text, "domain_expires_on", _check_date, problem)
        expires_on = ""
        if expires_text:
            expires_on = _checked(expires_text, "expires_on", _check_date, problem)
        domain_text = domain
        if domain:
            try:
                domain = _normalise_domain(domain)
            except ValueError as error:
                problem("domain", str(error))
                domain = ""
            if expires_text:
                problem(
                    "expires_on",
                    "must be empty for a mailbox on a domain: it takes the domain's expiry, domain_expires_on",
                )
            if not domain_expires_text:
                problem("domain_expires_on", "is required for a mailbox on a domain")
            if domain and address:
                address_domain = address.rpartition("@")[2]
                if address_domain != domain and not address_domain.endswith("." + domain):
                    problem("domain", f"the address {address} is not on {domain}")
            expires_on = domain_expires_on
        elif domain_expires_text:
            problem("domain_expires_on", "is only for a mailbox on a domain: give domain too, or use expires_on")
        elif not expires_text:
            problem("expires_on", "is required (for a mailbox on a customer domain: domain and domain_expires_on)")

        auto_renew = "0"
        if auto_renew_text:
            auto_renew = _BOOLEANS.get(auto_renew_text) or _checked(auto_renew_text, "auto_renew", _check_bool, problem) or "0"
        promo = "0"
        if promo_text:
            promo = _BOOLEANS.get(promo_text) or _checked(promo_text, "promo", _check_bool, problem) or "0"
        if payment_method and not _PAYMENT_METHOD_RE.fullmatch(payment_method):
            problem(
                "payment_method",
                f"{payment_method!r} is not a payment token: 1 to 200 letters, digits, '_', '-' or '.'",
            )
        if auto_renew == "1":
            if domain_text:
                problem("auto_renew", "must be false for a mailbox on a domain: it is renewed with its domain")
            elif not payment_method:
                problem("auto_renew", "is true but payment_method is empty")
        card_expires_on = ""
        if card_expiry:
            card_expires_on = _checked(card_expiry, "card_expiry", _check_card_expiry, problem)

        renewal_years = "1"
        if renewal_years_text:
            years = _checked(renewal_years_text, "renewal_years", _parse_uint, problem)
            if years is not None:
                if not 1 <= years <= MAX_RENEWAL_YEARS:
                    problem("renewal_years", f"{years} is not a number of years from 1 to {MAX_RENEWAL_YEARS}")
                elif promo == "1" and years > MAX_PROMO_RENEWAL_YEARS:
                    problem(
                        "renewal_years",
                        f"a promo mailbox renews for 1 or {MAX_PROMO_RENEWAL_YEARS} years, not {years}",
                    )
                renewal_years = str(years)

        extra_space_gb = 0
        if extra_space_text:
            extra_space_gb = _checked(extra_space_text, "extra_space_gb", _parse_uint, problem) or 0
            if plan == Plan.STANDARD.value and extra_space_gb > MAX_STANDARD_EXTRA_SPACE_GB:
                problem(
                    "extra_space_gb",
                    f"standard allows at most {MAX_STANDARD_EXTRA_SPACE_GB} GB of extra space, not {extra_space_gb}",
                )
        extra_archive_gb = 0
        if extra_archive_text:
            extra_archive_gb = _checked(extra_archive_text, "extra_archive_gb", _parse_uint, problem) or 0
            if extra_archive_gb and plan and plan not in PLANS_WITH_ARCHIVE:
                problem(
                    "extra_archive_gb",
                    f"{plan} has no archive: extra archive space is only for {' and '.join(PLANS_WITH_ARCHIVE)}",
                )
        used_space_mb = 0
        if used_space_text:
            used_space_mb = _checked(used_space_text, "used_space_mb", _parse_uint, problem) or 0

        language = "it"
        if language_text:
            language = _LANGUAGES.get(language_text) or _LANGUAGES.get(language_text.lower(), "")
            if not language:
                problem("language", f"{language_text!r} is not a language: it or en")

        if holder is not None and address and (domain or holder.reference_email == address):
            self._warn(line, address, holder.reference_email, domain)

        if problems:
            # What the rules across rows need: the address once it is valid,
            # the domain and its expiry once both are.
            if not (domain and domain_expires_on):
                domain = domain_expires_on = ""
            return (str(line), "", address, *_BLANK_MIDDLE, domain, domain_expires_on, *_BLANK_TAIL)
        assert holder is not None
        try:
            next_action_on = self.next_action[expires_on]
        except KeyError:
            first = first_action_on(self.stages, date.fromisoformat(expires_on))
            next_action_on = self.next_action[expires_on] = first.isoformat() if first else ""
        self.checked.rows += 1
        return (
            str(line),
            str(self.checked.rows),
            address,
            login,
            holder_key,
            domain,
            domain_expires_on,
            expires_on,
            plan,
            str(extra_space_gb) if extra_space_gb else "0",
            str(extra_archive_gb) if extra_archive_gb else "0",
            str(used_space_mb) if used_space_mb else "0",
            auto_renew,
            payment_method,
            card_expires_on,
            renewal_years,
            promo,
            language,
            next_action_on,
        ) + holder_values

    def _warn(self, line: int, address: str, reference_email: str, domain: str) -> None:
        if reference_email == address:
            self.checked.warnings.append(
                f"line {line}, column reference_email: is the mailbox itself; notices may never be read"
            )
            return
        if domain:
            reference_domain = reference_email.rpartition("@")[2]
            if reference_domain == domain or reference_domain.endswith("." + domain):
                self.checked.warnings.append(
                    f"line {line}, column reference_email: {reference_email} is on {domain}, the domain this"
                    " mailbox depends on; if the domain expires, notices may never be read"
                )


#: The staged columns of a bad row between ``address`` and ``domain``, and after ``domain_expires_on``.
_BLANK_MIDDLE = ("",) * (_DOMAIN - _ADDRESS - 1)
_BLANK_TAIL = ("",) * (STAGING_WIDTH - _DOMAIN_EXPIRES_ON - 1)

#: Holder fields whose import column has another name.
_HOLDER_COLUMNS = {"name": "holder_name", "kind": "holder_kind"}


@lru_cache(maxsize=4096)
def _check_holder(
    name: str,
    kind: str,
    reference_email: str,
    tax_code: str,
    vat_number: str,
    einvoice_code: str,
    postal_address: str,
    cig: str,
    cup: str,
) -> tuple[HolderData | None, str, tuple[str, ...], tuple[holder_data.HolderProblem, ...]]:
    """``holder_data.check_holder``, the holder key and the staged holder columns, cached.

    A holder's mailboxes are usually on nearby lines.  The staged columns are
    ``HOLDER_COLUMNS``, an empty string for an absent value.
    """
    holder, problems = holder_data.check_holder(
        name=name,
        kind=kind,
        reference_email=reference_email,
        tax_code=tax_code,
        vat_number=vat_number,
        einvoice_code=einvoice_code,
        postal_address=postal_address,
        cig=cig,
        cup=cup,
    )
    if holder is None:
        return None, "", (), tuple(problems)
    values = (
        holder.name,
        holder.kind,
        holder.reference_email,
        holder.tax_code or "",
        holder.vat_number or "",
        holder.postal_address or "",
        holder.sdi_code or "",
        holder.einvoice_pec or "",
        holder.office_code or "",
        holder.cig or "",
        holder.cup or "",
    )
    try:
        return holder, holder.holder_key, values, ()
    except UnicodeEncodeError:  # bytes that were not UTF-8: the row is refused for them
        return holder, "", values, ()


def _checked(value: str, column: str, checker: Callable[[str], object], problem: _Problem):
    """``checker(value)``, or None when the value is bad (then ``problem`` is told why)."""
    try:
        return checker(value)
    except ValueError as error:
        problem(column, str(error))
        return None


@lru_cache(maxsize=65536)
def _check_date(text: str) -> str:
    """A real date as YYYY-MM-DD, from :data:`FIRST_YEAR` to :data:`LAST_YEAR`: the text itself."""
    if _DATE_RE.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            pass
        else:
            _check_year(text, day.year)
            return text
    raise ValueError(f"{text!r} is not a real date as YYYY-MM-DD")


@lru_cache(maxsize=4096)
def _check_card_expiry(text: str) -> str:
    """YYYY-MM: the last day of that month, as YYYY-MM-DD."""
    match = _MONTH_RE.fullmatch(text)
    if match:
        year, month = int(match.group(1)), int(match.group(2))
        if 1 <= month <= 12:
            _check_year(text, year)
            return date(year, month, calendar.monthrange(year, month)[1]).isoformat()
    raise ValueError(f"{text!r} is not a month as YYYY-MM")


def _check_year(text: str, year: int) -> None:
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"{text!r} is not in the years {FIRST_YEAR} to {LAST_YEAR}")


@lru_cache(maxsize=65536)
def _parse_uint(text: str) -> int:
    if _UINT_RE.fullmatch(text):
        number = int(text)
        if number <= INT32_MAX:
            return number
        raise ValueError(f"{text} is too large")
    raise ValueError(f"{text!r} is not a whole number of 0 or more")


def _check_bool(text: str) -> str:
    """True or false, as staged: "1" or "0"."""
    try:
        return _BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not true or false") from None


@lru_cache(maxsize=65536)
def _normalise_domain(text: str) -> str:
    name = text.lower().rstrip(".")
    if name.startswith("@"):
        name = name[1:]
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a domain name such as example.it")
    return name


# --------------------------------------------------------------------------
# Rules across rows, in SQL on the staging table


def _check_across_rows(
    connection: Connection, checked: _CheckedFile, *, addresses: bool = True, domains: bool = True
) -> None:
    """An address on two lines; a domain given two expiries.  Problems join ``checked.errors`` in file order.

    As when a row is checked, a column keeps its first problem: a cell that
    already has one gets no second.  ``addresses``, ``domains``: which of
    the two rules to check.
    """
    rows = STAGING
    found: list[ImportProblem] = []
    if addresses:
        _repeated_addresses(connection, found)
    if domains:
        _domains_with_two_expiries(connection, found)
    if found:
        taken = {(problem.line, problem.column) for problem in checked.errors}
        checked.errors.extend(problem for problem in found if (problem.line, problem.column) not in taken)
    order = checked.position
    checked.errors.sort(key=lambda problem: (problem.line, order.get(problem.column, len(order))))


def _repeated_addresses(connection: Connection, found: list[ImportProblem]) -> None:
    rows = STAGING
    repeated = (
        select(rows.c.address, func.min(rows.c.line).label("first_line"))
        .where(rows.c.address.is_not(None))
        .group_by(rows.c.address)
        .having(func.count() > 1)
        .subquery()
    )
    for line, address, first_line in connection.execute(
        select(rows.c.line, rows.c.address, repeated.c.first_line)
        .join(repeated, repeated.c.address == rows.c.address)
        .where(rows.c.line > repeated.c.first_line)
    ):
        found.append(ImportProblem(line, "address", f"{address} is already on line {first_line}"))


def _domains_with_two_expiries(connection: Connection, found: list[ImportProblem]) -> None:
    rows = STAGING
    first = (
        select(rows.c.domain, func.min(rows.c.line).label("first_line"))
        .where(rows.c.domain.is_not(None))
        .group_by(rows.c.domain)
        .subquery()
    )
    earlier = rows.alias("earlier")
    for line, domain, expires_on, first_line, known in connection.execute(
        select(rows.c.line, rows.c.domain, rows.c.domain_expires_on, first.c.first_line, earlier.c.domain_expires_on)
        .join(first, first.c.domain == rows.c.domain)
        .join(earlier, earlier.c.line == first.c.first_line)
        .where(rows.c.domain_expires_on != earlier.c.domain_expires_on)
    ):
        found.append(
            ImportProblem(
                line,
                "domain_expires_on",
                f"{expires_on.isoformat()} differs from {known.isoformat()} given for {domain} on line {first_line}",
            )
        )


# --------------------------------------------------------------------------
# The bulk-load path: into an empty fleet, without the secondary indexes


#: A phase timer: ``with timed("name"): ...``.
_Timed = Callable[[str], "contextlib.AbstractContextManager[None]"]


def _untimed(phase: str) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass
class _BulkLoad:
    """The indexes and constraints dropped for a first import, to be rebuilt exactly.

    PostgreSQL's own advice for populating a database: writing a million
    rows into ``mailboxes`` with its indexes and foreign keys live costs
    far more than building them once at the end.  The definitions are read
    from the live catalog (``pg_get_indexdef``, ``pg_get_constraintdef``)
    just before they are dropped, so what is rebuilt is what was there.
    All of it is DDL inside the import's transaction: a refused file (or any
    failure) rolls the drops back with the rows.
    """

    #: ``(table, name, definition)``: plain indexes (``CREATE INDEX …``).
    indexes: list[tuple[str, str, str]]
    #: ``(table, name, kind, definition)``: ``u`` unique and ``f`` foreign-key constraints.
    constraints: list[tuple[str, str, str, str]]

    @classmethod
    def start(cls, connection: Connection) -> _BulkLoad | None:
        """Drop what the load does not need if ``mailboxes`` is empty; None (nothing done) otherwise.

        ``DROP INDEX`` and ``ALTER TABLE`` take an ``ACCESS EXCLUSIVE`` lock
        on ``mailboxes`` and ``holders`` (and a lesser one on the tables the
        foreign keys refer to) until the import commits or rolls back: the
        daily scan and the link pages wait for it.  On an empty fleet there
        is nothing for them to read.
        """
        if connection.exec_driver_sql("SELECT EXISTS (SELECT FROM mailboxes)").scalar_one():
            return None
        connection.exec_driver_sql("LOCK TABLE mailboxes, holders IN ACCESS EXCLUSIVE MODE")
        # Another import may have filled the fleet before the lock was granted.
        if connection.exec_driver_sql("SELECT EXISTS (SELECT FROM mailboxes)").scalar_one():
            return None
        indexes: list[tuple[str, str, str]] = []
        constraints: list[tuple[str, str, str, str]] = []
        for table in BULK_TABLES:
            constraints.extend(
                (table, name, kind, definition)
                for name, kind, definition in connection.exec_driver_sql(
                    "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = %(table)s::regclass AND contype IN ('u', 'f') ORDER BY conname",
                    {"table": table},
                )
                if name not in BULK_KEPT
            )
            # Indexes that are not a constraint's (primary key, unique).
            indexes.extend(
                (table, name, definition)
                for name, definition in connection.exec_driver_sql(
                    "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
                    " WHERE x.indrelid = %(table)s::regclass AND NOT EXISTS (SELECT FROM pg_constraint c"
                    "  WHERE c.conrelid = x.indrelid AND c.conindid = x.indexrelid AND c.contype IN ('p', 'u', 'x'))"
                    " ORDER BY i.relname",
                    {"table": table},
                )
            )
        quote = connection.dialect.identifier_preparer.quote
        # Foreign keys first: a unique constraint may be what one refers to.
        for table, name, kind, _ in sorted(constraints, key=lambda item: item[2] != "f"):
            connection.exec_driver_sql(f"ALTER TABLE {quote(table)} DROP CONSTRAINT {quote(name)}")
        for _, name, _ in indexes:
            connection.exec_driver_sql(f"DROP INDEX {quote(name)}")
        return cls(indexes, constraints)

    def rebuild(self, connection: Connection, timed: _Timed) -> None:
        """Create again every index and constraint dropped, with its name and definition."""
        quote = connection.dialect.identifier_preparer.quote
        connection.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        constraints = sorted(self.constraints, key=lambda item: item[2] == "f")
        # Unique constraints first (one of them may refuse the file), then
        # the plain indexes, then the foreign keys.
        for table, name, kind, definition in constraints:
            if kind != "f":
                with timed(f"rebuild {name}"):
                    connection.exec_driver_sql(f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}")
        for _, name, definition in self.indexes:
            with timed(f"rebuild {name}"):
                connection.exec_driver_sql(definition)
        for table, name, kind, definition in constraints:
            if kind == "f":
                with timed(f"rebuild {name}"):
                    connection.exec_driver_sql(f"ALTER TABLE {quote(table)} ADD CONSTRAINT {quote(name)} {definition}")


# --------------------------------------------------------------------------
# Writing, set-based, from the staging table


# The bulk-load path's holders and mailboxes of one chunk (PostgreSQL).  The
# accounts and holders a chunk refers to are nearly all new in that chunk:
# they are found among the rows above the largest id before the chunk (a
# range of the primary key, so the join hashes a chunk's worth of rows, not
# the whole table, whose size grows with the file); any other (a holder
# whose mailboxes straddle two chunks, an account seen earlier in the file
# or before the import) is looked up by its unique index.
_CHUNK_ACCOUNT_ID = (
    "coalesce(new_account.id, (SELECT known.id FROM accounts known WHERE known.login = staged.login))"
)
_BULK_HOLDERS = f"""
INSERT INTO holders (account_id, holder_key, {", ".join(HOLDER_COLUMNS)})
SELECT {_CHUNK_ACCOUNT_ID}, staged.holder_key, {", ".join(f"staged.{name}" for name in HOLDER_COLUMNS)}
FROM (
    SELECT DISTINCT ON (login, holder_key) * FROM {STAGING.name}
    WHERE seq > %(after_seq)s AND seq <= %(last_seq)s
) staged
LEFT JOIN accounts new_account ON new_account.id > %(max_account)s AND new_account.login = staged.login
ON CONFLICT (account_id, holder_key) DO NOTHING
"""
_BULK_MAILBOX_VALUES = {
    "account_id": "chunk.account_id",
    "holder_id": (
        "coalesce(new_holder.id, (SELECT known.id FROM holders known"
        " WHERE known.account_id = chunk.account_id AND known.holder_key = chunk.holder_key))"
    ),
    "domain_id": "domains.id",
}
_BULK_MAILBOXES = f"""
INSERT INTO mailboxes (address, {", ".join(MAILBOX_UPDATE_COLUMNS)})
SELECT chunk.address, {", ".join(_BULK_MAILBOX_VALUES.get(name, f"chunk.{name}") for name in MAILBOX_UPDATE_COLUMNS)}
FROM (
    SELECT staged.*, {_CHUNK_ACCOUNT_ID} AS account_id
    FROM {STAGING.name} staged
    LEFT JOIN accounts new_account ON new_account.id > %(max_account)s AND new_account.login = staged.login
    WHERE staged.seq > %(after_seq)s AND staged.seq <= %(last_seq)s
    OFFSET 0
) chunk
LEFT JOIN holders new_holder ON new_holder.id > %(max_holder)s
    AND new_holder.account_id = chunk.account_id AND new_holder.holder_key = chunk.holder_key
LEFT JOIN domains ON domains.name = chunk.domain
"""


def _follow_domains(connection: Connection) -> None:
    """Move the mailboxes of the file's domains that the file does not list to their domain's expiry.

    The file's own rows of a domain have its expiry already (or the file is refused).
    """
    rows = STAGING
    domains, mailboxes = Domain.__table__, Mailbox.__table__
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
    connection.execute(
        update(mailboxes)
        .where(mailboxes.c.domain_id == dated.c.id, mailboxes.c.expires_on != dated.c.domain_expires_on)
        .values(expires_on=dated.c.domain_expires_on, next_action_on=dated.c.next_action_on)
    )


def _upsert_chunk(
    connection: Connection,
    after_seq: int,
    last_seq: int,
    *,
    analyse: bool,
    bulk: bool = False,
    timed: _Timed | None = None,
    sync: _Sync | None = None,
) -> _ChunkCounts:
    """Upsert the good rows ``after_seq < seq <= last_seq`` of the staging table; return what each row did.

    Accounts by login, domains by name, holders by (account, key), mailboxes
    by address.  ``analyse`` (on PostgreSQL, for the first chunk): refresh the
    statistics of the tables the joins read, which rows written by this
    transaction are missing from.
    Before the mailboxes, :func:`_sync_chunk` keeps what the worker holds
    where the file is older than it (unless ``sync.force``) and closes the
    old cycles of mailboxes renewed elsewhere.

    ``bulk`` (the bulk-load path: ``mailboxes`` was empty when the import
    began and has no unique index on ``address`` now): the mailboxes are
    inserted, all of them new; the file's own rows of a domain all have its
    expiry (or the file is refused), so none needs moving; holders and
    mailboxes are written by :data:`_BULK_HOLDERS` and :data:`_BULK_MAILBOXES`,
    whose cost per chunk does not grow with the tables.
    """
    if timed is None:
        timed = _untimed
    rows = STAGING
    accounts, holders, domains, mailboxes = (model.__table__ for model in (Account, Holder, Domain, Mailbox))
    in_chunk = and_(rows.c.seq > after_seq, rows.c.seq <= last_seq)

    logins = select(rows.c.login).where(in_chunk)
    if bulk:
        # The ids of the accounts and holders this chunk adds come from their
        # sequences, above these (nothing else writes to the tables: the
        # bulk-load path holds them ACCESS EXCLUSIVE).  _BULK_HOLDERS and
        # _BULK_MAILBOXES look for them there first.
        max_account, max_holder = connection.exec_driver_sql(
            "SELECT (SELECT coalesce(max(id), 0) FROM accounts), (SELECT coalesce(max(id), 0) FROM holders)"
        ).one()
        # Each login once: a probe of the unique index per login rather than per row.
        logins = logins.distinct()
    statement = dialect_insert(connection, accounts).from_select(["login"], logins)
    with timed("accounts"):
        connection.execute(statement.on_conflict_do_nothing(index_elements=["login"]))

    # Domains, with their expiry (one per domain in a chunk, or the rows are not upserted).
    chunk_domains = (
        select(rows.c.domain, rows.c.domain_expires_on, rows.c.next_action_on)
        .where(in_chunk, rows.c.domain.is_not(None))
        .group_by(rows.c.domain, rows.c.domain_expires_on, rows.c.next_action_on)
        .subquery()
    )
    statement = dialect_insert(connection, domains).from_select(
        ["name", "expires_on"], select(chunk_domains.c.domain, chunk_domains.c.domain_expires_on).where(true())
    )
    with timed("domains"):
        connection.execute(
            statement.on_conflict_do_update(index_elements=["name"], set_={"expires_on": statement.excluded.expires_on})
        )
    # The mailboxes of these domains that the file does not list follow them once the whole
    # file is written (_follow_domains), so a mailbox the file lists counts as its own row did.

    if bulk:
        parameters = {
            "after_seq": after_seq,
            "last_seq": last_seq,
            "max_account": max_account,
            "max_holder": max_holder,
        }
        with timed("holders"):
            connection.exec_driver_sql(_BULK_HOLDERS, parameters)
        if analyse:
            with timed("analyze"):
                connection.exec_driver_sql("ANALYZE accounts, holders, domains")
        with timed("mailboxes"):
            connection.exec_driver_sql(_BULK_MAILBOXES, parameters)
        return _ChunkCounts(created=last_seq - after_seq)

    # Holders: equal data under one account is one row (the key is a digest of it).
    statement = dialect_insert(connection, holders).from_select(
        ["account_id", "holder_key", *HOLDER_COLUMNS],
        select(accounts.c.id, rows.c.holder_key, *(rows.c[name] for name in HOLDER_COLUMNS))
        .join(accounts, accounts.c.login == rows.c.login)
        .where(in_chunk),
    )
    with timed("holders"):
        connection.execute(statement.on_conflict_do_nothing(index_elements=["account_id", "holder_key"]))
    if analyse:
        with timed("analyze"):
            connection.exec_driver_sql("ANALYZE accounts, holders, domains")

    # Mailboxes, by address.
    chunk = (
        select(
            rows.c.address,
            accounts.c.id,
            holders.c.id,
            rows.c.reference_email,
            domains.c.id,
            rows.c.plan,
            rows.c.extra_space_gb,
            rows.c.extra_archive_gb,
            rows.c.used_space_mb,
            rows.c.expires_on,
            rows.c.auto_renew,
            rows.c.payment_method,
            rows.c.card_expires_on,
            rows.c.renewal_years,
            rows.c.promo,
            rows.c.language,
            rows.c.next_action_on,
        )
        .join(accounts, accounts.c.login == rows.c.login)
        .join(holders, and_(holders.c.account_id == accounts.c.id, holders.c.holder_key == rows.c.holder_key))
        .outerjoin(domains, domains.c.name == rows.c.domain)
        .where(in_chunk)
    )
    conflicting: set[int] = set()
    if sync is not None:
        with timed("sync"):
            conflicting = _sync_chunk(connection, in_chunk, sync)

    statement = dialect_insert(connection, mailboxes)
    # A mailbox whose every column already has the file's value is left
    # alone (no new row version, no index entries), and counted as unchanged:
    # the statement returns only the rows it wrote.
    upsert = statement.from_select(["address", *MAILBOX_UPDATE_COLUMNS], chunk).on_conflict_do_update(
        index_elements=["address"],
        set_={name: statement.excluded[name] for name in MAILBOX_UPDATE_COLUMNS},
        where=or_(*(mailboxes.c[name].is_distinct_from(statement.excluded[name]) for name in MAILBOX_UPDATE_COLUMNS)),
    )
    size = last_seq - after_seq
    if connection.dialect.name == "postgresql":
        # A row this statement inserted has no xmax; an updated one has ours.
        # Cheaper than looking the addresses up first.
        with timed("mailboxes"):
            if not conflicting:
                written = connection.execute(upsert.returning(literal_column("xmax = 0"))).scalars().all()
                created = sum(written)
                return _ChunkCounts(created, len(written) - created, size - len(written))
            written_rows = connection.execute(upsert.returning(literal_column("xmax = 0"), mailboxes.c.id)).all()
        created = sum(1 for new, _ in written_rows if new)
        rewritten = len(written_rows) - created
        rewritten_in_conflict = sum(1 for new, mailbox_id in written_rows if not new and mailbox_id in conflicting)
    else:
        existing = connection.execute(
            select(func.count()).select_from(rows.join(mailboxes, mailboxes.c.address == rows.c.address)).where(in_chunk)
        ).scalar_one()
        created = size - existing
        # The rows inserted and those updated (a new row is never in conflict).
        written_ids = connection.execute(upsert.returning(mailboxes.c.id)).scalars().all()
        rewritten = len(written_ids) - created
        rewritten_in_conflict = sum(1 for mailbox_id in written_ids if mailbox_id in conflicting)
    # A row in conflict counts as such, whether or not its other values were written.
    updated = rewritten - rewritten_in_conflict
    return _ChunkCounts(created, updated, size - created - updated - len(conflicting), len(conflicting))


@dataclass(frozen=True)
class _ChunkCounts:
    """What the rows of one chunk did; each row is in one count."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    conflicting: int = 0


# --------------------------------------------------------------------------
# The worker's own renewals, and mailboxes renewed elsewhere


@dataclass
class _Sync:
    """How an import treats what the worker holds, and what it found (written by the writer thread)."""

    force: bool = False
    dry_run: bool = False
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


def _sync_chunk(connection: Connection, in_chunk, sync: _Sync) -> set[int]:
    """Compare the chunk's rows with the mailboxes they update; return the ids of those in conflict.

    Only rows that may matter are read (a row with an earlier expiry than
    its mailbox's, one with the same expiry and another renewal column, one
    with a later expiry whose mailbox has an open order or an unresolved
    charge): on a routine re-import, a few.  A conflict's kept values are
    written into its staged row, so the upsert that follows writes them back
    as they are and applies the rest of the row.
    """
    rows = STAGING
    mailboxes = Mailbox.__table__
    lines, orders, intents = RenewalOrderLine.__table__, RenewalOrder.__table__, ChargeIntent.__table__
    open_order = (
        select(lines.c.id)
        .join(orders, orders.c.id == lines.c.order_id)
        .where(
            lines.c.mailbox_id == mailboxes.c.id,
            lines.c.selected.is_(True),
            lines.c.old_expires_on < rows.c.expires_on,
            orders.c.status.in_(OPEN_ORDER_STATUSES),
        )
        .exists()
    )
    unresolved_charge = (
        select(intents.c.id)
        .where(
            intents.c.mailbox_id == mailboxes.c.id,
            intents.c.status.in_(UNRESOLVED_CHARGES),
            intents.c.cycle_expires_on < rows.c.expires_on,
        )
        .exists()
    )
    renewed_elsewhere = and_(rows.c.expires_on > mailboxes.c.expires_on, or_(open_order, unresolved_charge))
    if sync.force:
        wanted = renewed_elsewhere
    else:
        wanted = or_(
            rows.c.expires_on < mailboxes.c.expires_on,
            and_(
                rows.c.expires_on == mailboxes.c.expires_on,
                or_(*(rows.c[name].is_distinct_from(mailboxes.c[name]) for name in RENEWAL_COLUMNS)),
            ),
            renewed_elsewhere,
        )
    candidates = connection.execute(
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
    ).all()
    if not candidates:
        return set()
    width = len(RENEWAL_COLUMNS)
    renewals = _renewals_here(connection, [row[2] for row in candidates if row[4] <= row[5]])
    #: Whether any row is older than its mailbox; the rows of a cycle renewed here.
    older = False
    same_cycle: list[dict] = []
    renewed_elsewhere_rows: list[tuple[int, int, str, date]] = []
    conflicting: set[int] = set()
    for seq, line, mailbox_id, address, given_expiry, expiry, *values in candidates:
        given, held = values[:width], values[width:]
        if given_expiry > expiry:
            renewed_elsewhere_rows.append((line, mailbox_id, address, given_expiry))
            continue
        in_force = [renewal for renewal in renewals.get(mailbox_id, ()) if renewal.until <= expiry]
        latest = max(in_force, key=lambda renewal: (renewal.until, renewal.on), default=None)
        if given_expiry < expiry:
            if latest is not None and latest.until > given_expiry:
                reason = f"renewed here on {latest.on.isoformat()}, {latest.what}"
            else:
                reason = f"an earlier import gave the later expiry {expiry.isoformat()}"
        elif latest is not None and latest.until == expiry:
            reason = f"renewed here on {latest.on.isoformat()}, {latest.what}"
        else:
            continue  # the same expiry, not renewed here: the file's values apply
        kept = []
        if given_expiry < expiry:
            kept.append(("expires_on", expiry, given_expiry))
        kept.extend(
            (name, held_value, given_value)
            for name, held_value, given_value in zip(RENEWAL_COLUMNS, held, given)
            if held_value != given_value
        )
        if not kept:
            continue
        conflicting.add(mailbox_id)
        sync.conflicts.extend(
            sorted(
                (_conflict(line, name, held_value, given_value, reason, sync) for name, held_value, given_value in kept),
                key=lambda conflict: sync.position.get(conflict.column, len(sync.position)),
            )
        )
        if given_expiry < expiry:
            older = True
        else:
            patch = {f"b_{name}": value for name, value in zip(RENEWAL_COLUMNS, held)}
            patch["b_seq"] = seq
            same_cycle.append(patch)
    if older:
        # Every older row keeps the worker's expiry, next action and renewal columns: one statement.
        kept = ("expires_on", "next_action_on", *RENEWAL_COLUMNS)
        connection.execute(
            update(rows)
            .where(
                in_chunk,
                rows.c.domain.is_(None),
                rows.c.address == mailboxes.c.address,
                rows.c.expires_on < mailboxes.c.expires_on,
            )
            .values({name: mailboxes.c[name] for name in kept})
        )
    if same_cycle:
        connection.execute(
            update(rows)
            .where(rows.c.seq == bindparam("b_seq"))
            .values({name: bindparam(f"b_{name}", type_=rows.c[name].type) for name in RENEWAL_COLUMNS}),
            same_cycle,
        )
    if renewed_elsewhere_rows:
        _close_old_cycles(connection, renewed_elsewhere_rows, sync)
    return conflicting


def _renewals_here(connection: Connection, mailbox_ids: list[int]) -> dict[int, list[_Renewal]]:
    """Every renewal made here of these mailboxes: the paid order lines, the successful charges."""
    lines, orders = RenewalOrderLine.__table__, RenewalOrder.__table__
    payments, intents = Payment.__table__, ChargeIntent.__table__
    paid_on = select(func.min(payments.c.business_date)).where(payments.c.order_id == orders.c.id).scalar_subquery()
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
        for mailbox_id, cycle, years, on, key in connection.execute(
            select(
                intents.c.mailbox_id, intents.c.cycle_expires_on, intents.c.years, intents.c.business_date,
                intents.c.idempotency_key,
            ).where(intents.c.mailbox_id.in_(batch), intents.c.status == ChargeStatus.SUCCEEDED.value)
        ):  # fmt: skip
            found.setdefault(mailbox_id, []).append(_Renewal(schedule.add_years(cycle, years), on, f"charge {key}"))
    return found


def _conflict(line: int, name: str, held: object, given: object, reason: str, sync: _Sync) -> ImportConflict:
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


def _close_old_cycles(connection: Connection, renewed: list[tuple[int, int, str, date]], sync: _Sync) -> None:
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
    lines, orders, intents = RenewalOrderLine.__table__, RenewalOrder.__table__, ChargeIntent.__table__
    by_id = {mailbox_id: (line, address, expires_on) for line, mailbox_id, address, expires_on in renewed}
    ids = list(by_id)
    cancelled: dict[int, int] = {}  # order id -> the line that cancels it
    notes: list[tuple[int, str]] = []
    done = "would be cancelled" if sync.dry_run else "cancelled"
    for start in range(0, len(ids), LOOKUP_BATCH):
        batch = ids[start : start + LOOKUP_BATCH]
        for order_id, number, status, gateway_state, attempts, mailbox_id, old_expires_on in connection.execute(
            select(
                orders.c.id, orders.c.order_number, orders.c.status, orders.c.gateway_state, orders.c.gateway_attempts,
                lines.c.mailbox_id, lines.c.old_expires_on,
            )
            .join(orders, orders.c.id == lines.c.order_id)
            .where(
                lines.c.mailbox_id.in_(batch), lines.c.selected.is_(True), orders.c.status.in_(OPEN_ORDER_STATUSES)
            )
            .order_by(orders.c.id)
        ):  # fmt: skip
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
    if cancelled:
        order_ids = list(cancelled)
        for start in range(0, len(order_ids), LOOKUP_BATCH):
            connection.execute(
                update(orders)
                .where(orders.c.id.in_(order_ids[start : start + LOOKUP_BATCH]))
                .values(status=OrderStatus.CANCELLED.value)
            )
    sync.closed.extend(note for _, note in sorted(notes, key=lambda item: item[0]))
