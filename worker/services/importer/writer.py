"""The staging writer: checked rows go to the database while the file is read.

Rows are handed over a chunk at a time.  Each chunk goes to the staging
table (with the database's bulk writer: ``COPY`` on PostgreSQL, inserts
elsewhere), then, unless a problem has been found by then, is upserted into
the real tables.  A chunk upserted before a later problem is found is undone
with everything else when the transaction rolls back.

That database work runs in a thread of its own, so the next chunk is checked
while the last one is written (the driver releases the GIL while it waits for
the database); until :meth:`StagingWriter.finish` returns, only that thread
uses the connection.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from worker.rules.import_rows import ADDRESS, DOMAIN, DOMAIN_EXPIRES_ON, StagedRow
from worker.services.importer.conflicts import Sync
from worker.services.importer.report import ImportReport
from worker.services.importer.staged import ANALYSED_COLUMNS, STAGING
from worker.services.importer.upsert import upsert_chunk
from worker.store.bulk_load import BulkLoad, BulkWriter, bulk_writer

#: What the writer thread is given: the rows, the ``seq`` after which and up to which they are
#: numbered, and whether to upsert them.
_Chunk = tuple[Any, int, int, bool]


class StagingWriter:
    """Stages the checked rows and, while the file is still good, upserts them chunk by chunk."""

    def __init__(self, connection: Connection, report: ImportReport, sync: Sync, *, bulk_load: bool = True):
        self.connection = connection
        self.report = report
        self.sync = sync
        self.database: BulkWriter = bulk_writer(connection)
        self.encode = self.database.encode
        #: Rows staged since the last hand-over, as the database's bulk writer takes them.
        self.rows: list[Any] = []
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
        self.queue: queue.Queue[_Chunk | None] = queue.Queue(maxsize=1)
        #: The bulk-load path: the fleet was empty, so the secondary indexes
        #: and foreign keys of the tables filled were dropped (rebuilt by :meth:`rebuild`).
        self.bulk: BulkLoad | None = None

        STAGING.create(connection)
        self.database.use_memory()
        if bulk_load:
            with report.timed("bulk_drop"):
                self.bulk = self.database.start_bulk_load()
        report.bulk = self.bulk is not None
        self.thread: threading.Thread | None = threading.Thread(target=self._run, name="import-writer", daemon=True)
        self.thread.start()

    def stage(self, row: StagedRow, good: bool) -> None:
        """Stage one checked row (``good``: with all its values, to be upserted)."""
        self.rows.append(self.encode(row))
        if good:
            self.good += 1
            if self.bulk is None:
                # The bulk-load path inserts mailboxes: an address twice is no error there.
                address = row[ADDRESS]
                if address in self.chunk_addresses:
                    self.conflict = True
                self.chunk_addresses.add(address)
            domain = row[DOMAIN]
            if domain and self.chunk_domains.setdefault(domain, row[DOMAIN_EXPIRES_ON]) != row[DOMAIN_EXPIRES_ON]:
                self.conflict = True

    def hand_over(self, upsert: bool) -> None:
        """Send the rows staged since the last call; upsert them too if ``upsert`` and no conflict."""
        if self.failure is not None:
            raise self.failure
        if not self.rows:
            return
        item = (self.database.pack(self.rows), self.handed_over, self.good, upsert and not self.conflict)
        self.rows = []
        self.handed_over = self.good
        self.chunk_addresses.clear()
        self.chunk_domains.clear()
        self.queue.put(item)

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

    def rebuild(self) -> None:
        """On the bulk-load path, once the file is known to be good: rebuild what was dropped."""
        if self.bulk is not None:
            self.bulk.rebuild(self.connection, self.report.timed)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.failure is None:
                try:
                    self._write(*item)
                except BaseException as error:
                    self.failure = error

    def _write(self, chunk: Any, after_seq: int, last_seq: int, upsert: bool) -> None:
        timed = self.report.timed
        with timed("stage"):
            self.database.load(STAGING, chunk)
        if upsert and last_seq > after_seq:
            first_chunk = after_seq == 0
            if first_chunk:
                # A temporary table has no statistics until it is analysed.
                with timed("analyze"):
                    self.database.analyze(STAGING, columns=ANALYSED_COLUMNS)
            counts = upsert_chunk(
                self.connection,
                after_seq,
                last_seq,
                database=self.database,
                analyse=first_chunk,
                bulk=self.bulk is not None,
                timed=timed,
                sync=self.sync,
            )
            self.report.add(counts)
            self.written = last_seq
