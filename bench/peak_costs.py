"""What a peak day costs and how far it has got, read from outside the measured processes: their
CPU time and peak memory (``/proc``), the CPU of the PostgreSQL backends serving a database, the
server's WAL, each table's rows written (``pg_stat_user_tables``), and the day's ledger and outbox."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import psycopg
import redis
from databases import psycopg_url

#: What a day's writes are measured by, per table (``pg_stat_user_tables``).
TABLE_COUNTERS = ("n_tup_ins", "n_tup_upd", "n_tup_hot_upd", "n_tup_del")


def table_counters(connection: psycopg.Connection) -> dict[str, tuple[int, ...]]:
    """Each table's rows inserted, updated, updated HOT and deleted so far, as the statistics hold them.

    The server's backends report their counts when their transaction ends and
    they have been idle a moment: read a second or two after the day's last commit."""
    connection.execute("SELECT pg_stat_clear_snapshot()")
    rows = connection.execute(f"SELECT relname, {', '.join(TABLE_COUNTERS)} FROM pg_stat_user_tables").fetchall()
    connection.rollback()
    return {name: tuple(int(value) for value in counts) for name, *counts in rows}


def wal_position(connection: psycopg.Connection) -> str:
    """The server's current WAL position (for every database of the server, not only this one)."""
    position = connection.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    connection.rollback()
    return position


def wal_bytes_between(connection: psycopg.Connection, before: str, after: str) -> int:
    value = connection.execute("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after, before)).fetchone()[0]
    connection.rollback()
    return int(value)


def table_writes(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]) -> dict[str, dict]:
    """The tables the day wrote, with their counters' growth and the share of their updates that were HOT."""
    writes = {}
    for name, counts in sorted(after.items()):
        grown = dict(
            zip(TABLE_COUNTERS, (a - b for a, b in zip(counts, before.get(name, (0,) * 4), strict=True)), strict=True)
        )
        if any(grown.values()):
            writes[name] = grown
    return writes


def backend_cpu(connection: psycopg.Connection) -> dict[int, float]:
    """CPU seconds used so far by each PostgreSQL backend connected to this database, but ours."""
    pids = [
        pid
        for (pid,) in connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    ]
    connection.rollback()
    return {pid: cpu_seconds([pid]) for pid in pids}


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return pids
    for child in children:
        pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time these processes have used so far (/proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def redis_server_pids(url: str) -> list[int]:
    """The Redis server's own process, when it runs on this machine (for its CPU time)."""
    try:
        return [int(redis.Redis.from_url(url).info("server")["process_id"])]
    except (redis.RedisError, KeyError, ValueError):
        return []


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water resident set (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def progress_counts(connection: psycopg.Connection, day: date) -> tuple[int, int, int, bool]:
    """(the day's ledger rows, its outbox rows, those still pending, scan recorded): exact, but a few
    counts over the day's rows, so read every few seconds and at the end only."""
    ledger = connection.execute("SELECT count(*) FROM notice_ledger WHERE business_date = %s", (day,)).fetchone()[0]
    total, pending = connection.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM outbox_messages WHERE business_date = %s",
        (day,),
    ).fetchone()
    scanned = connection.execute(
        "SELECT finished_at IS NOT NULL FROM daily_runs WHERE business_date = %s", (day,)
    ).fetchone()
    connection.rollback()
    return ledger, total, pending, bool(scanned and scanned[0])


def last_ledger_id(connection: psycopg.Connection) -> int:
    """The highest ledger id so far (0 for none): a day's rows are above the one read before it."""
    value = connection.execute("SELECT coalesce(max(id), 0) FROM notice_ledger").fetchone()[0]
    connection.rollback()
    return int(value)


def maybe_done(connection: psycopg.Connection, due: int, ledger_before: int) -> bool:
    """A cheap test, every half second, that the day may be over: ``due`` ledger rows exist above
    the day's first (the highest ledger id, by the primary key) and no message is pending (one
    probe of ``outbox_queue``, which holds only the messages still to be sent).  The polling of
    earlier versions counted both tables every half second: a tenth of a core taken from the
    measured system."""
    probe = connection.execute(
        """SELECT (SELECT coalesce(max(id), 0) FROM notice_ledger) - %s >= %s
                  AND NOT EXISTS (SELECT 1 FROM outbox_queue WHERE NOT failed)""",
        (ledger_before, due),
    ).fetchone()[0]
    connection.rollback()
    return bool(probe)


def outcome_counts(url: str) -> dict[str, int]:
    with psycopg.connect(psycopg_url(url)) as connection:
        return dict(connection.execute("SELECT status, count(*) FROM outbox_messages GROUP BY status").fetchall())
