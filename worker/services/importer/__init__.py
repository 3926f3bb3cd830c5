"""Import mailboxes from a CSV file: ``pec-renewal import mailboxes FILE.csv``.

The file is read once, in one transaction.  Each record is checked as it is
read (:mod:`worker.rules.import_rows`, pure), and its checked, normalised
values go, a chunk of records at a time, to a temporary staging table with
its line number (:mod:`.staged`, :mod:`.writer`: ``COPY`` on PostgreSQL,
inserts on SQLite, in a thread beside the checking).  While no problem has
been found, each chunk is also upserted from there with set-based statements
(:mod:`.upsert`): accounts by login, domains by name, holders by (account,
digest of the holder data), mailboxes by address.

The rules across rows (an address twice, a domain given two expiries) are
checked in SQL on the staging table at the end (:mod:`.across_rows`).  A
file with any bad row is refused whole with :class:`ImportRefused`, listing
every problem as ``line N, column NAME: what is wrong`` (N counts CSV
records, the header is line 1), and the transaction is rolled back: nothing
is written, not even the chunks upserted before the first problem.
Re-importing a file updates (a mailbox whose every value is already the
file's is left as it is, and counted as unchanged).

**The worker's own renewals win** (:mod:`.conflicts`): a row older than what
the worker holds does not undo a renewal made here; its values kept are
reported as :class:`ImportConflict`; ``force=True`` applies the file anyway.
Mailboxes on a customer domain follow their domain's expiry.
``dry_run=True`` does all of it and rolls it back.

Memory stays flat as the file grows: a row lives in this process only while
its chunk is checked and sent; what rows must agree on is kept by the
database.

**Bulk-load path** (PostgreSQL only, for a first import into an empty
fleet: :class:`worker.store.bulk_load.BulkLoad`).  When ``mailboxes`` is
empty as the import begins, the import drops, inside its own transaction,
the secondary indexes and the foreign keys of ``mailboxes`` and ``holders``
(it keeps the primary keys and the unique constraints its ``ON CONFLICT``
clauses name: ``uq_accounts_login``, ``uq_holders_account_id``,
``uq_domains_name``), inserts the mailboxes chunk by chunk without an
``ON CONFLICT``, and once the file is known to be good builds every index
and constraint again, with the names and definitions read from the live
catalog just before the drop.  DDL is transactional in PostgreSQL: a
refused file, or any failure, rolls back the drops with the rows, and the
schema is as it was.  The drops take an ``ACCESS EXCLUSIVE`` lock on
``mailboxes`` and ``holders`` (and on ``accounts`` and ``domains``, which
their foreign keys refer to) until the import commits: the daily scan, the
link pages and anything else reading those tables wait for the import.  On
an empty fleet there is nothing for them to do; an import into a fleet that
has mailboxes takes the normal path and no such lock.  SQLite always takes
the normal path.
"""

from worker.services.importer.importing import CHUNK_ROWS, SWITCH_INTERVAL, import_mailboxes
from worker.services.importer.reading import count_records
from worker.services.importer.report import ImportConflict, ImportProblem, ImportRefused, ImportReport

__all__ = [
    "CHUNK_ROWS",
    "SWITCH_INTERVAL",
    "ImportConflict",
    "ImportProblem",
    "ImportRefused",
    "ImportReport",
    "count_records",
    "import_mailboxes",
]
