"""Shared by the fault suite: real Celery worker processes we can kill, fast seeding, the counts asserted.

Registered as a plugin in ``tests/conftest.py``: its fixtures are ``flushed_redis`` and ``workers``.

Every fault test runs against the real PostgreSQL and Redis (the DB given by
``PEC_RENEWAL_TEST_REDIS_URL``, flushed first), real ``celery worker``
subprocesses, and the aiosmtpd server on loopback (``tests/support/smtp_server.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import date, datetime
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import func, select, text

from config.celery import QUEUES, celery_config
from tests.support.settings import TEST_REDIS_URL, make_settings
from tests.support.waiting import wait_until
from worker.services import charges
from worker.store.models import ChargeIntent, OutboxMessage, OutboxStatus

ROOT = Path(__file__).resolve().parents[2]


def leftover_workers(broker_url: str) -> list[int]:
    """Processes still consuming ``broker_url``: Celery workers (and their pool processes) that an
    interrupted earlier run left behind, found by ``celery`` in their command line and the
    ``PEC_RENEWAL_BROKER_URL`` in their environment."""
    wanted = f"PEC_RENEWAL_BROKER_URL={broker_url}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            environment = (entry / "environ").read_bytes().split(b"\0") if b"celery" in command else []
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environment:
            found.append(int(entry.name))
    return found


@pytest.fixture
def flushed_redis():
    """Our Redis DB, emptied: no message left by an earlier test, and no worker left by an interrupted
    run still consuming it (it would take this test's tasks with its own clock and SMTP server)."""
    for pid in leftover_workers(TEST_REDIS_URL):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not leftover_workers(TEST_REDIS_URL), timeout=30, what="leftover workers to die")
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.close()


class CeleryWorker:
    """One ``celery worker`` subprocess, in its own process group so a kill takes all of it.

    ``start(clock=…)`` starts it with its wall clock moved (tests/faults/celery_at.py).
    """

    def __init__(self, env: dict, log_dir: Path, *, queues: str, concurrency: int = 2, name: str = "worker"):
        self.env, self.log_dir, self.queues, self.concurrency, self.name = env, log_dir, queues, concurrency, name
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, clock: datetime | None = None) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        env = dict(self.env)
        if clock is not None:
            env["PEC_RENEWAL_TEST_CLOCK"] = clock.isoformat()
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.faults.celery_at",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                self.queues,
                f"--concurrency={self.concurrency}",
                "-n",
                f"{self.name}-{self.starts}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
            ],
            env=env,
            cwd=self.log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool processes, at once."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self._wait_for_pool_to_die()

    def _wait_for_pool_to_die(self) -> None:
        def group_gone() -> bool:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(group_gone, timeout=30, what=f"{self.name}'s pool processes to die")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), as systemd does; SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self, tail: int | None = 3000) -> str:
        """The output of every start of this worker (the last ``tail`` characters of each, for failure messages)."""
        texts = (path.read_text(errors="replace") for path in sorted(self.log_dir.glob(f"{self.name}-*.log")))
        return "\n".join(text[-tail:] if tail else text for text in texts)


@pytest.fixture
def workers():
    """Every worker a test starts is killed at its end, whatever happened (a warm stop takes seconds)."""
    started: list[CeleryWorker] = []
    yield started
    for worker in started:
        if worker.running:
            worker.kill()


def celery_client(tmp_path):
    """A Celery app that only sends tasks (as beat does) to our Redis DB.

    Not ``worker.celery_app``: importing it builds settings from this process's environment.
    Not the current app either: a test may run tasks eagerly in-process meanwhile.
    """
    app = Celery("pec_renewal", set_as_current=False)
    app.conf.update(celery_config(make_settings(tmp_path, broker_url=TEST_REDIS_URL)))
    return app


def seed_mailboxes(
    session_factory,
    count: int,
    *,
    expires_on: date,
    next_action_on: date,
    auto_renew: bool = False,
    payment_method: str | None = None,
    prefix: str = "titolare",
) -> list[int]:
    """``count`` mailboxes, each with its own account, holder and reference address, in three statements."""
    with session_factory() as session, session.begin():
        first = session.scalar(select(func.coalesce(func.max(text("id")), 0)).select_from(text("accounts")))
        session.execute(
            text("INSERT INTO accounts (login) SELECT :prefix || g || '@example.it' FROM generate_series(1, :count) g"),
            {"prefix": prefix, "count": count},
        )
        session.execute(
            text(
                "INSERT INTO holders (account_id, holder_key, name, kind, reference_email) "
                "SELECT id, md5(login), 'Titolare ' || id, 'private', login FROM accounts WHERE id > :first"
            ),
            {"first": first},
        )
        ids = session.scalars(
            text(
                "INSERT INTO mailboxes (address, account_id, holder_id, reference_email, plan, extra_space_gb, "
                "extra_archive_gb, used_space_mb, expires_on, auto_renew, payment_method, renewal_years, promo, "
                "language) "
                "SELECT 'casella' || h.id || '@pec.provider.example.it', h.account_id, h.id, h.reference_email, "
                "'standard', 0, 0, 100, :expires_on, :auto_renew, :payment_method, 1, false, 'it' "
                "FROM holders h WHERE h.account_id > :first ORDER BY h.id RETURNING id"
            ),
            {
                "first": first,
                "expires_on": expires_on,
                "auto_renew": auto_renew,
                "payment_method": payment_method,
            },
        ).all()
        session.execute(
            text(
                "INSERT INTO mailbox_schedule (mailbox_id, next_action_on) "
                "SELECT m.id, :next_action_on FROM mailboxes m JOIN holders h ON h.id = m.holder_id "
                "WHERE h.account_id > :first"
            ),
            {"first": first, "next_action_on": next_action_on},
        )
    return sorted(ids)


def outbox_status(session_factory) -> Counter:
    with session_factory() as session:
        return Counter(
            dict(session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all())
        )


def sent_message_ids(session_factory) -> set[str]:
    with session_factory() as session:
        return set(
            session.scalars(select(OutboxMessage.message_id).where(OutboxMessage.status == OutboxStatus.SENT.value))
        )


def database_quiet(session_factory) -> bool:
    """No other connection is inside a statement or a transaction (a killed client's commit has landed)."""
    with session_factory() as session:
        busy = session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
            )
        )
    return busy == 0


def received_ids(smtp_server) -> Counter:
    """Message-ID -> copies received."""
    return Counter(smtp_server.message_ids())


def duplicates(smtp_server) -> int:
    return sum(copies - 1 for copies in received_ids(smtp_server).values())


def recipients_with_two_message_ids(smtp_server) -> dict[str, set[str]]:
    """Recipients that got the same notice under different Message-IDs (there must be none)."""
    by_recipient: dict[str, set[str]] = {}
    for message in list(smtp_server.messages):
        by_recipient.setdefault(message.recipients[0], set()).add(message.message_id)
    return {recipient: ids for recipient, ids in by_recipient.items() if len(ids) > 1}


def mark_charge_notices_sent(session_factory, mailbox_ids: list[int], expires_on: date) -> None:
    """As if each cycle's charge notice went out on its day (tests that start at the charge)."""
    with session_factory() as session, session.begin():
        session.execute(
            text(
                "INSERT INTO notice_ledger (mailbox_id, cycle_expires_on, stage, kind, business_date) "
                "SELECT id, :cycle, :stage, :kind, :on FROM mailboxes WHERE id = ANY(:ids)"
            ),
            {
                "ids": mailbox_ids,
                "cycle": expires_on,
                "stage": charges.CHARGE_NOTICE_STAGE.name,
                "kind": charges.CHARGE_NOTICE,
                "on": charges.CHARGE_NOTICE_STAGE.on(expires_on),
            },
        )


def gateway_charges_per_cycle(session_factory) -> Counter:
    """(mailbox id, cycle) -> charges in the sandbox gateway's own table (keys renewal:{mailbox}:{cycle}:{attempt})."""
    with session_factory() as session:
        keys = session.scalars(text("SELECT idempotency_key FROM sandbox_charges")).all()
    return Counter(tuple(key.split(":")[1:3]) for key in keys)


def queues_idle(redis_client) -> bool:
    """No task waiting in any queue, and none taken and not yet acknowledged."""
    return all(redis_client.llen(queue) == 0 for queue in QUEUES) and not redis_client.hlen("unacked")


def charge_intents(session_factory) -> Counter:
    """Charge intents by status."""
    with session_factory() as session:
        return Counter(
            dict(session.execute(select(ChargeIntent.status, func.count()).group_by(ChargeIntent.status)).all())
        )
