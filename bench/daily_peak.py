"""A peak day end to end: 200,000 due notices in a 10M-mailbox table, through Celery, PostgreSQL and SMTP.

    .venv/bin/python bench/daily_peak.py --mailboxes 10000000 --due 200000 \
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench_peak \
        --redis-url redis://127.0.0.1:6379/4 --smtp 127.0.0.1:2525

Seeds the fleet once with ``generate_series`` (``quiet_day.seed``); a later run
with the same ``--mailboxes`` reuses it, and only the due sets are reset: with
``--days N``, N peak days back to back from 2027-01-11, the d-th day's due set
is the d-th block of ``--due`` mailboxes, expiring 15 days after that day
(ledger, outbox and daily runs are emptied before the first day, never between
two days).  Starts Postfix's ``smtp-sink`` on
``--smtp`` unless ``--external-sink``, and the Celery workers (``--worker
QUEUES:CONCURRENCY``, repeatable) with the PEC_RENEWAL_* environment pointing
at these services.  Then, in this process and run:

1. the bare limit: the same templates rendered and sent to the same sink by
   one process per core, one persistent SMTP connection each, no database and
   no Celery;
2. the peak day: one ``pec_renewal.daily_scan`` task for the peak day, timed
   until every due mailbox has its ledger row and every email was accepted by
   the sink;
3. the bare limit again (the day's figure is the mean of the runs before and
   after it, so a noisy neighbour hurts both sides alike);

and again 2 and 3 for each further day, on the same database and the same
workers, with nothing between two days but the bare limit: no re-seed, no
VACUUM, no CHECKPOINT (autovacuum does what it would do in production).

Progress goes to stderr; the last line on stdout is a JSON summary with
emails/s, wall time, the ratio to the bare limit, the CPU time per email of
the workers and of the bare limit (steadier than wall time on a shared
machine), and the peak RSS (VmHWM) of every worker process: at the top level
the last day's, and each day's in ``days``, with PostgreSQL's CPU and WAL per
email and the HOT share of each written table's updates.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from databases import ensure_database, psycopg_url  # noqa: E402
from peak_costs import (  # noqa: E402
    backend_cpu,
    cpu_seconds,
    last_ledger_id,
    maybe_done,
    outcome_counts,
    peak_rss_mb,
    process_tree,
    progress_counts,
    redis_server_pids,
    table_counters,
    table_writes,
    wal_bytes_between,
    wal_position,
)
from quiet_day import FIRST_EXPIRY, seed  # noqa: E402

from config.settings import Settings  # noqa: E402
from worker.mail.mailers import SMTPMailer  # noqa: E402
from worker.mail.message_ids import message_id_for  # noqa: E402
from worker.services.notices import SCHEDULE_STATE_KEY  # noqa: E402
from worker.services.runtime import Runtime, freeze_startup_objects  # noqa: E402
from worker.store import migrate  # noqa: E402

PEAK_DAY = date(2027, 1, 11)
#: Every due mailbox of a day expires on the same date (bought the day PEC became compulsory):
#: the "-15d" stage falls on that peak day.
PEAK_EXPIRY = PEAK_DAY + timedelta(days=15)
STAGE = "-15d"
#: The seeded fleet's first next date (``quiet_day.FIRST_EXPIRY`` less 92 days) is 2027-01-18:
#: up to this many days back to back, nothing but the due sets falls on a peak day.
MAX_DAYS = 7
MAIL_FROM = "Rinnovi PEC <rinnovi@pec-provider.example>"
#: A fixed key for the benchmark's links only: nothing is ever verified with it.
BENCH_SECRET_KEYS = "bench-only-key-0123456789abcdef0123456789"
#: Mail processes mostly wait (on the sink's replies and on each outcome's commit): on 2 cores, 4, 6 and 8 of
#: them sent 1,645, 1,728 and 1,868 emails/s (bench/RESULTS.md).
DEFAULT_WORKERS = ("scan,notices:2", "mail:8")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the database ------------------------------------------------------------------------


def peak_day(number: int) -> date:
    """The date of the ``number``-th peak day (0 for the first)."""
    return PEAK_DAY + timedelta(days=number)


def reset_due_set(url: str, due: int, days: int = 1) -> None:
    """Make the d-th block of ``due`` mailboxes due on the d-th peak day (expiring 15 days later), for
    ``days`` days, and nothing else due by the last; empty what a run writes.

    Quick enough to run before every run: it touches the due rows and whatever
    an earlier run with a larger ``--due`` or ``--days`` left due, through indexes.
    """
    last_day = peak_day(days - 1)
    with psycopg.connect(psycopg_url(url)) as connection:
        # Whatever an earlier run left due by the last day, outside this run's due sets, goes back to
        # its seeded expiry and next date; the mailboxes first, found by their schedule's date.
        moved_away = {"first": FIRST_EXPIRY, "day": last_day, "due": due * days}
        connection.execute(
            """UPDATE mailboxes m SET expires_on = %(first)s::date + (m.id %% 3650)::int
               FROM mailbox_schedule s
               WHERE s.mailbox_id = m.id AND s.next_action_on <= %(day)s AND s.mailbox_id > %(due)s""",
            moved_away,
        )
        connection.execute(
            """UPDATE mailbox_schedule SET next_action_on = %(first)s::date + (mailbox_id %% 3650)::int - 92
               WHERE next_action_on <= %(day)s AND mailbox_id > %(due)s""",
            moved_away,
        )
        due_sets = {"expiry": PEAK_EXPIRY, "day": PEAK_DAY, "due": due, "all": due * days}
        connection.execute(
            """UPDATE mailboxes SET expires_on = %(expiry)s::date + ((id - 1) / %(due)s)::int
               WHERE id <= %(all)s AND expires_on <> %(expiry)s::date + ((id - 1) / %(due)s)::int""",
            due_sets,
        )
        connection.execute(
            """UPDATE mailbox_schedule SET next_action_on = %(day)s::date + ((mailbox_id - 1) / %(due)s)::int
               WHERE mailbox_id <= %(all)s""",
            due_sets,
        )
        connection.execute("TRUNCATE notice_ledger, outbox_queue, outbox_messages, daily_runs, bounced_addresses")
        # The schedule in force is the recorded one: the scan does not walk the fleet
        # to reconcile next_action_on (it does so once after NOTICE_STAGES changes).
        fingerprint = ",".join(stage.name for stage in Settings.from_env(worker_environment_base()).notice_stages)
        connection.execute(
            """INSERT INTO worker_state (key, value) VALUES (%s, %s)
               ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
            (SCHEDULE_STATE_KEY, fingerprint),
        )
        due_now = connection.execute(
            """SELECT count(*) FILTER (WHERE next_action_on <= %s), count(*) FROM mailbox_schedule
               WHERE next_action_on <= %s""",
            (PEAK_DAY, last_day),
        ).fetchone()
        connection.commit()
        connection.autocommit = True
        # Every run and every reset leave 200,000 dead mailbox rows, and autovacuum waits for
        # 2M on a 10M table: unvacuumed, each run started with more garbage in the mailboxes'
        # pages and indexes than the last (2.4M dead rows, never vacuumed, after six runs in a
        # row).  A provider's autovacuum has the whole day between two scans: each run
        # starts vacuumed (7 s on 10M rows after six runs).  Not the emptied tables:
        # statistics of an empty table would plan the whole day as if they stayed empty;
        # never analysed, they are planned by their actual size.  Only before the first
        # day: the later days find what the earlier ones and autovacuum left.
        connection.execute("VACUUM (ANALYZE) mailboxes, mailbox_schedule")
        # Then the reset's and the vacuum's dirty pages are written out, as a quiet night
        # before the 06:00 scan would have: left in the 128 MB of shared buffers, they were
        # the day's to write, and PostgreSQL's CPU per email doubled (measured back to back:
        # 0.35 ms and ratio 0.570 without, 0.146 ms and 0.768 with).
        try:
            connection.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            raise SystemExit(
                "CHECKPOINT is refused to this database user: the bench needs a superuser, or"
                " (PostgreSQL 15 and later) a user granted pg_checkpoint: GRANT pg_checkpoint TO <user>"
            ) from None
    if tuple(due_now) != (due, due * days):
        raise SystemExit(
            f"{due_now[0]} mailboxes are due on {PEAK_DAY} and {due_now[1]} by {last_day}, not {due} and {due * days}"
        )


# -- the services --------------------------------------------------------------------------


def worker_environment_base() -> dict[str, str]:
    return {
        "PEC_RENEWAL_SECRET_KEYS": BENCH_SECRET_KEYS,
        "PEC_RENEWAL_MAIL_FROM": MAIL_FROM,
        "PEC_RENEWAL_BASE_URL": "https://rinnovi.example.it",
    }


def worker_environment(args, var_dir: Path) -> dict[str, str]:
    host, port = args.smtp
    return {
        **worker_environment_base(),
        "PEC_RENEWAL_VAR_DIR": str(var_dir),
        "PEC_RENEWAL_DATABASE_URL": args.database_url,
        "PEC_RENEWAL_BROKER_URL": args.redis_url,
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": host,
        "PEC_RENEWAL_SMTP_PORT": str(port),
        "PEC_RENEWAL_METRICS_PORT": "0",
        **{f"PEC_RENEWAL_{name}": value for name, value in args.setting},
    }


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {host}:{port}")


def start_sink(host: str, port: int, out: Path) -> subprocess.Popen:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    command = [sink] + (["-u", "nobody"] if os.geteuid() == 0 else []) + [f"{host}:{port}", "1000"]
    process = subprocess.Popen(command, stdout=open(out, "wb"), stderr=subprocess.STDOUT)
    wait_for_port(host, port)
    return process


def start_worker(spec: str, env: dict[str, str], directory: Path, number: int) -> subprocess.Popen:
    queues, _, concurrency = spec.partition(":")
    command = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", queues, f"--concurrency={concurrency or 1}", "-n", f"peak{number}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        env={**os.environ, **env},
        cwd=BENCH.parent,
        stdout=open(directory / f"worker{number}.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the bare limit -------------------------------------------------------------------------


def bare_context(mailbox_id: int) -> tuple[str, str, dict]:
    """(recipient, Message-ID, context) as the notice batch writes them for the seeded mailbox."""
    context = {
        "holder_name": f"Titolare {mailbox_id}",
        "mailboxes": [
            {
                "id": mailbox_id,
                "address": f"casella{mailbox_id}@pec.example.it",
                "expires_on": PEAK_EXPIRY.isoformat(),
                "plan": "standard",
                "domain": None,
            }
        ],
    }
    message_id = message_id_for(
        [(mailbox_id, PEAK_EXPIRY.isoformat(), STAGE)], "pec-provider.example", installation_id="bench"
    )
    return f"titolare{mailbox_id}@example.it", message_id, context


def bare_sender(renderer, host: str, port: int, ids: range, started: multiprocessing.Barrier) -> None:
    mailer = SMTPMailer(host, port)
    mailer.send("warm@example.it", "warm@example.it", b"Subject: warm-up\r\n\r\n.\r\n")
    started.wait()
    for mailbox_id in ids:
        recipient, message_id, context = bare_context(mailbox_id)
        email = renderer.render(
            kind="expiry-notice", stage=STAGE, language="it", to_address=recipient,
            message_id=message_id, context=context, now=datetime.now(UTC),
        )  # fmt: skip
        mailer.send(email.sender, email.recipient, email.as_bytes())
    mailer.close()


def bare_limit(renderer, host: str, port: int, emails: int, processes: int) -> tuple[float, float]:
    """Emails/s of ``processes`` processes rendering and sending, forked after the templates compiled,
    and the CPU milliseconds they used per email."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(processes + 1)
    share = -(-emails // processes)
    shares = [range(1 + n * share, 1 + min(emails, (n + 1) * share)) for n in range(processes)]
    children = [context.Process(target=bare_sender, args=(renderer, host, port, ids, barrier)) for ids in shares]
    for child in children:
        child.start()
    barrier.wait()
    started = time.perf_counter()
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"a bare-limit sender failed (exit {child.exitcode})")
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    return emails / wall, cpu * 1000 / emails


# -- the peak day ----------------------------------------------------------------------------


def wait_for_workers(app, workers: list[subprocess.Popen], directory: Path) -> None:
    """Let every worker reach its queues before the clock starts."""
    deadline = time.monotonic() + 60
    while len(app.control.inspect(timeout=1.0).active_queues() or {}) < len(workers):
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"the workers did not start; see {directory}/worker*.log")


def drive_peak_day(args, app, day: date, directory: Path, workers: list[subprocess.Popen]) -> dict:
    """One peak day: the scan task sent, timed until the day's due mailboxes have their ledger rows
    and no email is pending; with the CPU, WAL and table writes it cost."""
    connection = psycopg.connect(psycopg_url(args.database_url))
    worker_pids = [pid for worker in workers for pid in process_tree(worker.pid)]
    sink_pids = process_tree(args.sink_pid) if args.sink_pid else []
    redis_pids = redis_server_pids(args.redis_url)
    ledger_before = last_ledger_id(connection)
    tables_before = table_counters(connection)
    wal_before = wal_position(connection)
    cpu_before = cpu_seconds(worker_pids)
    cpu_before_each = {pid: cpu_seconds([pid]) for pid in worker_pids}
    others_before = {
        "postgres": backend_cpu(connection),
        "sink": cpu_seconds(sink_pids),
        "redis": cpu_seconds(redis_pids),
    }
    postgres_seen = dict(others_before["postgres"])
    started = time.perf_counter()
    app.send_task("pec_renewal.daily_scan", args=[day.isoformat()])
    last_report = 0.0
    scanned_at = notices_at = None
    ledger = 0
    while True:
        time.sleep(0.5)
        elapsed = time.perf_counter() - started
        # The backends' CPU is read while they live (a backend's /proc goes with it).
        postgres_seen.update(backend_cpu(connection))
        done = maybe_done(connection, args.due, ledger_before)
        if done or elapsed - last_report >= 5:
            last_report = elapsed
            ledger, total, pending, scanned = progress_counts(connection, day)
            if scanned and scanned_at is None:
                scanned_at = elapsed
            if ledger >= args.due and notices_at is None:
                notices_at = elapsed
            log(f"{day}: {elapsed:6.1f} s: {ledger:,} notices, {total - pending:,}/{total:,} emails handled")
            if ledger >= args.due and pending == 0:
                break
        if elapsed > args.timeout:
            raise SystemExit(f"the peak day {day} did not finish in {args.timeout} s ({ledger} notices)")
        if any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"a worker died; see {directory}/worker*.log")
    wall = time.perf_counter() - started
    wal_after = wal_position(connection)
    cpu = cpu_seconds(worker_pids) - cpu_before
    postgres_seen.update(backend_cpu(connection))
    others = {
        "postgres": sum(postgres_seen.values()) - sum(others_before["postgres"].values()),
        "sink": cpu_seconds(sink_pids) - others_before["sink"],
        "redis": cpu_seconds(redis_pids) - others_before["redis"],
    }
    time.sleep(STATISTICS_DELAY)  # the backends' table counts reach the statistics when they idle
    writes = table_writes(tables_before, table_counters(connection))
    wal = wal_bytes_between(connection, wal_before, wal_after)
    connection.close()

    rss = {}
    for number, (spec, worker) in enumerate(zip(args.worker, workers, strict=True)):
        pids = process_tree(worker.pid)
        rss[f"worker{number} {spec}"] = {
            "main": peak_rss_mb(pids[0]),
            "pool": [peak_rss_mb(pid) for pid in pids[1:]],
            # CPU seconds each process used during the day: the main process (consumer) and its pool.
            "cpu_seconds": [round(cpu_seconds([pid]) - cpu_before_each.get(pid, 0), 1) for pid in pids],
        }
    emails = max(total, 1)
    return {
        "date": day.isoformat(),
        "wall_seconds": round(wall, 2),
        "scan_done_seconds": round(scanned_at or 0, 2),
        "notices_done_seconds": round(notices_at or 0, 2),
        "emails": total,
        "emails_per_second": round(total / wall, 1),
        "workers_cpu_ms_per_email": round(cpu * 1000 / emails, 3),
        # Where else the CPU went: the PostgreSQL backends serving this database, the sink
        # and Redis (shared with whatever else uses the server).
        "other_cpu_ms_per_email": {name: round(seconds * 1000 / emails, 3) for name, seconds in others.items()},
        "postgres_cpu_ms_per_email": round(others["postgres"] * 1000 / emails, 3),
        # The server's WAL, whatever database wrote it: read on a server nothing else writes to.
        "wal_bytes_per_email": round(wal / emails),
        # The day's WAL positions, for pg_waldump (which names the relation of each record).
        "wal_range": [wal_before, wal_after],
        "hot_update_ratio": {
            name: round(grown["n_tup_hot_upd"] / grown["n_tup_upd"], 3) if grown["n_tup_upd"] else None
            for name, grown in writes.items()
        },
        "table_writes": writes,
        "peak_rss_mb": rss,
    }


#: Seconds to wait after a day for the backends' table statistics (PostgreSQL reports them at
#: most once a second from a backend, and when it idles).
STATISTICS_DELAY = 11.0


def run_peak_days(args, env: dict[str, str], directory: Path, pipe) -> None:
    """The peak days on one set of workers: after each day its figures go to ``pipe``, and the
    next day waits for the parent's word (it measures the bare limit meanwhile)."""
    from worker.celery_setup import create_celery

    redis.Redis.from_url(args.redis_url).flushdb()
    workers = [start_worker(spec, env, directory, number) for number, spec in enumerate(args.worker)]
    try:
        app = create_celery(Settings.from_env(env))
        wait_for_workers(app, workers, directory)
        log(f"{len(workers)} Celery workers up ({', '.join(args.worker)}); peak days start")
        for number in range(args.days):
            pipe.send(("day", drive_peak_day(args, app, peak_day(number), directory, workers)))
            pipe.recv()
    finally:
        for worker in workers:
            stop(worker)


def _peak_child(args, env: dict[str, str], directory: Path, pipe) -> None:
    os.environ.update(env)  # worker.celery_app builds its app from the environment on import
    try:
        run_peak_days(args, env, directory, pipe)
        pipe.send(("done", None))
    except BaseException as error:  # SystemExit included: the parent reports it
        pipe.send(("error", str(error)))


def run_peak_days_in_child(args, env: dict[str, str], directory: Path, between) -> list[dict]:
    """The peak days, driven from a forked process: Celery's client (kombu) never lives in
    this one, whose later forks (the bare limit) would otherwise hang closing its connections.
    ``between(day)`` runs here after each day, while the workers wait."""
    context = multiprocessing.get_context("fork")
    here, there = context.Pipe(duplex=True)
    child = context.Process(target=_peak_child, args=(args, env, directory, there))
    child.start()
    days = []
    try:
        while True:
            status, value = here.recv()
            if status == "day":
                days.append(value)
                between(value)
                here.send("next")
            elif status == "done":
                return days
            else:
                raise SystemExit(value)
    finally:
        child.join()


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mailboxes", type=int, default=10_000_000)
    parser.add_argument("--due", type=int, default=200_000, help="mailboxes due on each peak day (one email each)")
    parser.add_argument(
        "--days", type=int, default=1, help=f"peak days back to back on the same database (1 to {MAX_DAYS}; default 1)"
    )
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/pec_bench_peak")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4", help="the broker (its DB is emptied)")
    parser.add_argument("--smtp", type=parse_hostport, default=("127.0.0.1", 2525), help="the SMTP sink, host:port")
    parser.add_argument("--external-sink", action="store_true", help="use a sink already listening on --smtp")
    parser.add_argument(
        "--worker", action="append", metavar="QUEUES:CONCURRENCY",
        help=f"a Celery worker to start, e.g. scan,notices:1 (repeatable; default {' '.join(DEFAULT_WORKERS)})",
    )  # fmt: skip
    parser.add_argument(
        "--setting", action="append", default=[], type=lambda text: tuple(text.split("=", 1)), metavar="NAME=VALUE",
        help="an extra PEC_RENEWAL_NAME=VALUE for the workers, e.g. RELAY_BATCH_SIZE=500",
    )  # fmt: skip
    parser.add_argument(
        "--bare-emails", type=int, default=None, help="emails per bare-limit run (default: min(due, 30000))"
    )
    parser.add_argument(
        "--processes", type=int, default=os.cpu_count(), help="bare-limit processes (default: the cores)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a day may take")
    args = parser.parse_args()
    args.worker = args.worker or list(DEFAULT_WORKERS)
    if not 1 <= args.days <= MAX_DAYS:
        parser.error(f"--days must be 1 to {MAX_DAYS}")
    if args.due * args.days > args.mailboxes:
        parser.error("--due × --days is more than --mailboxes")
    bare_emails = args.bare_emails or min(args.due, 30_000)

    ensure_database(args.database_url)
    migrate.upgrade(args.database_url)
    seconds = seed(args.database_url, args.mailboxes, args.due)
    if seconds:
        log(f"seeded {args.mailboxes:,} mailboxes in {seconds:.1f} s")
    started = time.perf_counter()
    reset_due_set(args.database_url, args.due, args.days)
    reset_seconds = time.perf_counter() - started
    log(f"due sets reset in {reset_seconds:.1f} s: {args.due:,} mailboxes due on each day from {PEAK_DAY}")

    directory = Path(tempfile.mkdtemp(prefix="daily_peak-"))
    env = worker_environment(args, directory / "var")
    host, port = args.smtp
    sink = None if args.external_sink else start_sink(host, port, directory / "sink.out")
    args.sink_pid = sink.pid if sink is not None else None
    try:
        runtime = Runtime(Settings.from_env(env))
        renderer = runtime.renderer  # templates compiled before the senders fork
        freeze_startup_objects()
        bare_runs = [bare_limit(renderer, host, port, bare_emails, args.processes)]
        log(f"bare limit: {bare_runs[0][0]:,.0f} emails/s ({args.processes} processes, {bare_emails:,} emails)")

        def after_day(day: dict) -> None:
            rate = day["emails"] / day["wall_seconds"]
            log(
                f"peak day {day['date']}: {day['emails']:,} emails in {day['wall_seconds']:.1f} s, {rate:,.0f} emails/s"
            )
            bare_runs.append(bare_limit(renderer, host, port, bare_emails, args.processes))
            log(f"bare limit: {bare_runs[-1][0]:,.0f} emails/s")
            (before, cpu_before), (after, cpu_after) = bare_runs[-2:]
            day["bare_limit_emails_per_second"] = round((before + after) / 2, 1)
            day["bare_limit_runs"] = [round(before, 1), round(after, 1)]
            day["bare_limit_cpu_ms_per_email"] = round((cpu_before + cpu_after) / 2, 3)
            day["ratio_to_bare_limit"] = round(rate / ((before + after) / 2), 3)

        days = run_peak_days_in_child(args, env, directory, after_day)
    finally:
        if sink is not None:
            stop(sink)
    last = days[-1]
    outcomes = outcome_counts(args.database_url)
    summary = {
        "mailboxes": args.mailboxes,
        "due": args.due,
        "seed_seconds": round(seconds, 1),
        "reset_seconds": round(reset_seconds, 1),
        "workers": args.worker,
        "settings": dict(args.setting),
        **{key: value for key, value in last.items() if key not in ("date", "bare_limit_runs")},
        "bare_limit_runs": [round(rate, 1) for rate, _ in bare_runs],
        "bare_limit_processes": args.processes,
        "outbox": outcomes,
        "bench_peak_rss_mb": peak_rss_mb(os.getpid()),
        "days": days,
        "logs": str(directory),
    }
    print(json.dumps(summary))
    if outcomes.get("sent", 0) != sum(day["emails"] for day in days):
        sys.exit(1)


if __name__ == "__main__":
    main()
