"""The import's entry point: one file, one transaction, every row checked before anything stays."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime

from sqlalchemy import Connection, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from worker.rules.import_rows import CheckedFile
from worker.rules.schedule import Stage
from worker.services.importer import across_rows
from worker.services.importer.conflicts import Sync
from worker.services.importer.reading import Progress, Source, check_file, open_source
from worker.services.importer.report import ImportRefused, ImportReport
from worker.services.importer.staged import STAGING
from worker.services.importer.upsert import follow_domains
from worker.services.importer.writer import StagingWriter
from worker.store.bulk_load import UNIQUE_ADDRESS, violated_constraint

#: Records per chunk, and how often ``progress`` is called.  Bigger chunks
#: are cheaper to upsert (each statement has a fixed cost); this size keeps
#: a chunk's text to some 15 MB and still moves a progress bar often.
CHUNK_ROWS = 50_000
#: The interpreter's thread switch interval during an import (seconds; CPython's default is 5 ms).
#: The writer thread sends each chunk to the database in blocks and, whenever the socket is
#: full, waits with the GIL released; the checking thread then kept the GIL for up to the whole
#: interval before the writer could send the next block, and the database sat idle.  At 1-5 ms
#: the staging of 1M rows on PostgreSQL took 10-14 s in most runs, against 2.5-2.9 s for the
#: same COPY alone; at 0.05-0.2 ms it took 2.5-2.9 s, and the whole import 20-24 s instead of
#: 25-36 s (bench/import.py).  The interval matters only while a thread asks for the GIL, so
#: the checking thread's own time did not grow.
SWITCH_INTERVAL = 0.0001
#: The line number a warning starts with.
_LINE_RE = re.compile(r"line ([0-9]+)")


class _DryRunDone(Exception):
    """Leaves the import's transaction of a dry run, which rolls everything back."""


def import_mailboxes(
    session_factory: sessionmaker[Session],
    source: Source,
    *,
    stages: tuple[Stage, ...],
    progress: Progress | None = None,
    force: bool = False,
    dry_run: bool = False,
    chunk_rows: int = CHUNK_ROWS,
    bulk_load: bool = True,
    now: datetime | None = None,
    today: date | None = None,
) -> ImportReport:
    """Check the whole CSV ``source`` (a path or a text stream) and upsert it, in one transaction.

    Raises :class:`ImportRefused` listing every problem when any row is bad;
    then nothing is written.  ``progress(done)`` is called every
    ``chunk_rows`` records: ``done`` is the records checked plus the rows
    written, and climbs to twice the number of records (a progress bar's
    total is ``2 * count_records(path)``).

    ``force``: apply the file's expiries and renewal columns even where they
    would undo a renewal made here or move an expiry earlier (see
    :mod:`worker.services.importer.conflicts`).  ``dry_run``: do everything,
    report it, and roll it all back (without the bulk-load path's lock and
    index rebuild).  ``bulk_load``: take the bulk-load path where it applies
    (PostgreSQL, into an empty fleet); False takes the normal path.  ``now`` and ``today``: the
    time and business date of the ``auto_renew.changed`` events of the mailboxes whose auto-renew
    the file switches (the CLI passes the runtime's; by default the system clock's UTC time and date).
    """
    report = ImportReport(dry_run=dry_run)
    now = now or datetime.now(UTC)
    sync = Sync(force=force, dry_run=dry_run, now=now, today=today or now.date())
    try:
        _import(session_factory, source, stages, progress, report, sync, chunk_rows, bulk_load and not dry_run)
    except _DryRunDone:
        pass
    return report


def _import(
    session_factory: sessionmaker[Session],
    source: Source,
    stages: tuple[Stage, ...],
    progress: Progress | None,
    report: ImportReport,
    sync: Sync,
    chunk_rows: int,
    bulk_load: bool,
) -> None:
    with _prompt_thread_switches(), open_source(source) as stream, session_factory() as session, session.begin():
        connection = session.connection()
        writer = StagingWriter(connection, report, sync, bulk_load=bulk_load)
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            checked = check_file(stream, stages, writer, progress, chunk_rows)
        except BaseException:
            writer.stop()
            raise
        report.timings["checking_cpu"] = time.thread_time() - cpu_started
        report.timings["checking_wall"] = time.perf_counter() - started
        # The last chunks are written after the file is read: keep the progress moving.
        with report.timed("last_chunks_wait"):
            writer.finish(
                upsert=not checked.errors,
                waiting=None if progress is None else lambda: progress(checked.records + writer.written),
            )
        _check_rules_across_rows(connection, checked, writer)
        if writer.bulk is None:
            with report.timed("domain_mailboxes"):
                follow_domains(connection)
        else:
            _rebuild(connection, checked, writer)
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


def _check_rules_across_rows(connection: Connection, checked: CheckedFile, writer: StagingWriter) -> None:
    """Check what rows must agree on; raise :class:`ImportRefused` (leaving the block rolls everything
    back) if the file has any problem.

    On the bulk-load path, a good file's addresses are checked by building
    the unique index on ``mailboxes.address`` (the rows are all there, see
    :func:`_rebuild`): that saves grouping every address of the file.
    """
    bulk_addresses = writer.bulk is not None and not checked.errors
    with writer.report.timed("rules_across_rows"):
        across_rows.check_across_rows(connection, checked, addresses=not bulk_addresses)
        if bulk_addresses and checked.errors:
            # A domain with two expiries: the file is refused; list every problem.
            across_rows.check_across_rows(connection, checked, domains=False)
    if checked.errors:
        raise ImportRefused(checked.errors)


def _rebuild(connection: Connection, checked: CheckedFile, writer: StagingWriter) -> None:
    """The bulk-load path, the file good so far: build the indexes and constraints again.

    An address twice fails the unique index: the staging table is then
    searched for the lines, and the file refused.
    """
    try:
        with connection.begin_nested():
            writer.rebuild()
    except IntegrityError as error:
        if violated_constraint(error) != UNIQUE_ADDRESS:
            raise
        with writer.report.timed("rules_across_rows"):
            across_rows.check_across_rows(connection, checked, domains=False)
        if not checked.errors:
            raise
        raise ImportRefused(checked.errors) from None


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
