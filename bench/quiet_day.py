"""Scan cost on a big fleet: a quiet day (nothing due) and a normal day (~20,000 due).

    .venv/bin/python bench/quiet_day.py --mailboxes 10000000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench

Seeds the table with ``generate_series`` (not the ORM) once, in chunks of
500,000 rows with a progress bar on stderr; a later run with the same
``--mailboxes`` reuses it.  For each day it times, in the same process and
alternately, the worker's scan (``due_mailbox_batches``: the due rows with
their reference address, grouped into batches that never split an address)
and the baseline, a raw psycopg read of the due rows (id and notice
address).  The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/databases.py, however this is loaded

from databases import ensure_database, psycopg_url

from worker.services.notices import due_mailbox_batches
from worker.services.runtime import freeze_startup_objects
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory

QUIET_DAY = date(2027, 1, 10)
NORMAL_DAY = date(2027, 1, 11)
#: Expiries spread over ten years from this date; next_action_on three months before.
FIRST_EXPIRY = date(2027, 4, 20)


#: Rows inserted per statement while seeding: small enough for the progress bar
#: to move every few seconds, large enough to cost nothing against one statement.
SEED_CHUNK = 500_000


def chunks(total: int) -> Iterator[tuple[int, int]]:
    """``(first, last)`` id ranges, 1-based and inclusive, of at most ``SEED_CHUNK`` ids."""
    for first in range(1, total + 1, SEED_CHUNK):
        yield first, min(first + SEED_CHUNK - 1, total)


def seed(url: str, mailboxes: int, normal_day_due: int) -> float:
    """Fill the fleet unless it already holds ``mailboxes`` rows; returns the seconds it took.

    Rows are inserted with ``generate_series`` in chunks of ``SEED_CHUNK`` in one
    transaction, with a progress bar on stderr (10M mailboxes take minutes).
    """
    with psycopg.connect(psycopg_url(url)) as connection:
        count = connection.execute("SELECT count(*) FROM mailboxes").fetchone()[0]
        if count == mailboxes:
            return 0.0
        started = time.perf_counter()
        connection.execute(
            "TRUNCATE notice_ledger, outbox_queue, outbox_messages, mailbox_schedule, mailboxes, holders, accounts"
            " RESTART IDENTITY CASCADE"
        )
        holders = max(1, mailboxes // 3)
        # Every mailbox's next action is at least a day after the quiet day, but
        # for the ``normal_day_due`` mailboxes due on the normal day.
        connection.execute("DROP INDEX IF EXISTS ix_mailbox_schedule_next_action_on")
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        ) as progress:
            rows = progress.add_task("seeding accounts and holders", total=2 * holders + mailboxes)
            for first, last in chunks(holders):
                connection.execute(
                    "INSERT INTO accounts (id, login)"
                    " SELECT g, 'account' || g || '@example.it' FROM generate_series(%s::int, %s) g",
                    (first, last),
                )
                progress.advance(rows, last - first + 1)
            for first, last in chunks(holders):
                connection.execute(
                    """INSERT INTO holders (id, account_id, holder_key, name, kind, reference_email)
                       SELECT g, g, md5(g::text), 'Titolare ' || g, 'private', 'titolare' || g || '@example.it'
                       FROM generate_series(%s::int, %s) g""",
                    (first, last),
                )
                progress.advance(rows, last - first + 1)
            progress.update(rows, description="seeding mailboxes")
            for first, last in chunks(mailboxes):
                connection.execute(
                    """INSERT INTO mailboxes (id, address, account_id, holder_id, reference_email, plan, extra_space_gb,
                                              extra_archive_gb, used_space_mb, expires_on, auto_renew, renewal_years,
                                              promo, language)
                       SELECT g, 'casella' || g || '@pec.example.it', 1 + g %% %(holders)s, 1 + g %% %(holders)s,
                              'titolare' || (1 + g %% %(holders)s) || '@example.it', 'standard', 0, 0, 100,
                              %(first_expiry)s::date + (g %% 3650),
                              false, 1, false, 'it'
                       FROM generate_series(%(first)s::int, %(last)s) g""",
                    {"holders": holders, "first_expiry": FIRST_EXPIRY, "first": first, "last": last},
                )
                connection.execute(
                    """INSERT INTO mailbox_schedule (mailbox_id, next_action_on)
                       SELECT g, CASE WHEN g <= %(due)s THEN %(normal_day)s::date
                                      ELSE %(first_expiry)s::date + (g %% 3650) - 92 END
                       FROM generate_series(%(first)s::int, %(last)s) g""",
                    {
                        "first_expiry": FIRST_EXPIRY,
                        "due": normal_day_due,
                        "normal_day": NORMAL_DAY,
                        "first": first,
                        "last": last,
                    },
                )
                progress.advance(rows, last - first + 1)
            finishing = progress.add_task("index and VACUUM ANALYZE", total=2)
            connection.execute("CREATE INDEX ix_mailbox_schedule_next_action_on ON mailbox_schedule (next_action_on)")
            connection.commit()
            progress.advance(finishing)
            connection.autocommit = True
            connection.execute("VACUUM ANALYZE accounts, holders, mailboxes, mailbox_schedule")
            progress.advance(finishing)
        return time.perf_counter() - started


def raw_read(connection: psycopg.Connection, day: date) -> int:
    """The baseline: the due rows (id and notice address) over an open connection, as the scan's pool has."""
    rows = connection.execute(
        """SELECT s.mailbox_id, m.reference_email FROM mailbox_schedule s JOIN mailboxes m ON m.id = s.mailbox_id
           WHERE s.next_action_on <= %s""",
        (day,),
    ).fetchall()
    connection.rollback()
    return len(rows)


def worker_scan(session_factory, day: date) -> int:
    with session_factory() as session:
        return sum(len(batch) for batch in due_mailbox_batches(session, day, 500))


def timed(function, *args, repeat: int) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000_000)
    parser.add_argument("--due", type=int, default=20_000, help="mailboxes due on the normal day")
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    ensure_database(args.database_url)
    migrate.upgrade(args.database_url)
    seconds = seed(args.database_url, args.mailboxes, args.due)
    if seconds:
        print(f"seeded {args.mailboxes:,} mailboxes in {seconds:.1f} s", flush=True)

    engine = make_engine(args.database_url)
    session_factory = make_session_factory(engine)
    freeze_startup_objects()  # as the CLI and every Celery worker process do at start-up
    raw_connection = psycopg.connect(psycopg_url(args.database_url))
    worker_scan(session_factory, QUIET_DAY)  # open the pool's connection, as a running worker has
    summary = {"mailboxes": args.mailboxes, "seed_seconds": round(seconds, 1)}
    for label, day in (("quiet_day", QUIET_DAY), ("normal_day", NORMAL_DAY)):
        # Alternate the two so that a noisy neighbour hurts both alike.
        worker_times, raw_times = [], []
        for _ in range(args.repeat):
            worker_seconds, worker_rows = timed(worker_scan, session_factory, day, repeat=1)
            raw_seconds, raw_rows = timed(raw_read, raw_connection, day, repeat=1)
            worker_times.append(worker_seconds)
            raw_times.append(raw_seconds)
        worker_median, raw_median = statistics.median(worker_times), statistics.median(raw_times)
        if worker_rows != raw_rows:
            raise SystemExit(f"{label}: the scan read {worker_rows} rows, the raw read {raw_rows}")
        print(
            f"{label}: {worker_rows:,} due; scan {worker_median * 1000:.1f} ms, raw read {raw_median * 1000:.1f} ms,"
            f" ratio {worker_median / raw_median:.2f}",
            flush=True,
        )
        summary[label] = {
            "due": worker_rows,
            "scan_ms": round(worker_median * 1000, 2),
            "raw_read_ms": round(raw_median * 1000, 2),
            "ratio": round(worker_median / raw_median, 2),
        }
    raw_connection.close()
    engine.dispose()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
