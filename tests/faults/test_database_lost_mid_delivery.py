"""The database connection cut while ``pec-renewal run-daily`` or ``relay`` is delivering.

Figure: the command prints one line on stderr (``pec-renewal: cannot use the database: …``,
no traceback) and exits 1; after a clean re-run every due notice is delivered, and the
duplicates are at most the one outcome group (``RELAY_OUTCOME_GROUP``) of the relay that lost
the database, each with the Message-ID of its first copy.

How the cut lands.  The command reaches PostgreSQL through a TCP proxy of this test's own on
loopback.  The SMTP server on loopback calls the test back once it has written its ``250``
for the n-th message; the test then closes the proxy: every connection through it is cut and
the port refuses new ones, as when the database host goes away.  The relay goes on sending
until it next writes to the database, which fails.  The re-run goes to PostgreSQL directly,
an hour later on its own clock (``tests/faults/cli_at.py``), when the leases of the batch the
cut relay had claimed have run out.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from datetime import date, timedelta

import pytest
import time_machine
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from tests.support.celery_process import worker_environment
from tests.support.charges import at_morning
from tests.support.faults import (
    ROOT,
    duplicates,
    outbox_status,
    received_ids,
    recipients_with_two_message_ids,
    seed_mailboxes,
)
from tests.support.settings import smtp_runtime
from worker.rules.schedule import add_months
from worker.services.daily import scan_day
from worker.store.models import NoticeLedgerEntry, OutboxMessage

pytestmark = pytest.mark.slow

DAY = date(2027, 4, 15)
MAILBOXES = 60


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1 in front of ``target``.  ``cut()`` closes every connection through
    it and stops listening, so a new connection is refused."""

    def __init__(self, target: tuple[str, int]):
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # how often the accepting thread looks whether it was cut
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, name="db-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._cut.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                if self._cut.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self._cut.set()
            self._listener.close()
            for end in self._sockets:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()
        self._thread.join(timeout=5)

    @property
    def was_cut(self) -> bool:
        return self._cut.is_set()


@pytest.fixture
def proxy(database_url):
    url = make_url(database_url)
    proxy = LoopbackProxy((url.host or "127.0.0.1", url.port or 5432))
    yield proxy
    if not proxy.was_cut:
        proxy.cut()


def through(database_url: str, proxy: LoopbackProxy) -> str:
    return make_url(database_url).set(port=proxy.port).render_as_string(hide_password=False)


def cli(env: dict, tmp_path, *args: str, clock) -> subprocess.CompletedProcess:
    """``pec-renewal ARGS`` in a subprocess whose clock starts at ``clock``."""
    return subprocess.run(
        [sys.executable, "-m", "tests.faults.cli_at", *args],
        env={**env, "PYTHONPATH": str(ROOT), "PEC_RENEWAL_TEST_CLOCK": clock.isoformat()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cut_after_the_nth_250(smtp_server, proxy: LoopbackProxy, nth: int) -> None:
    def hook(index: int, _message) -> None:
        if index == nth - 1:
            proxy.cut()

    smtp_server.after_reply = hook


def assert_one_line_and_exit_1(result: subprocess.CompletedProcess) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pec-renewal: cannot use the database: "), result.stderr
    assert "Traceback" not in result.stderr


def assert_nothing_lost(session_factory, smtp_server, group: int, nth: int) -> None:
    with session_factory() as session:
        expected = set(session.scalars(select(OutboxMessage.message_id)))
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == MAILBOXES
    assert len(expected) == MAILBOXES
    assert outbox_status(session_factory) == {"sent": MAILBOXES}
    received = received_ids(smtp_server)
    assert set(received) == expected  # every due notice, and nothing else
    assert duplicates(smtp_server) <= group  # at most the cut relay's group went again
    if nth % group:  # the cut fell inside a group: its messages sent before the failed write went again
        assert duplicates(smtp_server) >= 1
    assert recipients_with_two_message_ids(smtp_server) == {}


@pytest.mark.parametrize(("nth", "group"), [(20, 16), (10, 1)])
def test_run_daily_loses_the_database_mid_delivery(
    session_factory, database_url, smtp_server, proxy, tmp_path, nth, group
):
    seed_mailboxes(session_factory, MAILBOXES, expires_on=add_months(DAY, 1), next_action_on=DAY)
    env = worker_environment(tmp_path, through(database_url, proxy), smtp_server, relay_outcome_group=group)
    cut_after_the_nth_250(smtp_server, proxy, nth)

    first = cli(env, tmp_path, "run-daily", "--date", DAY.isoformat(), clock=at_morning(DAY))

    assert proxy.was_cut and len(smtp_server.messages) >= nth
    assert_one_line_and_exit_1(first)
    assert outbox_status(session_factory)["sent"] < MAILBOXES  # the cut stopped the day

    smtp_server.after_reply = None
    direct = worker_environment(tmp_path, database_url, smtp_server, relay_outcome_group=group)
    again = cli(direct, tmp_path, "run-daily", "--date", DAY.isoformat(), clock=at_morning(DAY) + timedelta(hours=1))
    assert again.returncode == 0, again.stderr
    assert_nothing_lost(session_factory, smtp_server, group, nth)


@pytest.mark.parametrize(("nth", "group"), [(7, 16), (30, 4)])
def test_relay_loses_the_database_mid_delivery(session_factory, database_url, smtp_server, proxy, tmp_path, nth, group):
    seed_mailboxes(session_factory, MAILBOXES, expires_on=add_months(DAY, 1), next_action_on=DAY)
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        with time_machine.travel(at_morning(DAY), tick=False):
            assert sum(scan_day(runtime, DAY).emails.values()) == MAILBOXES
    finally:
        runtime.close()
    env = worker_environment(tmp_path, through(database_url, proxy), smtp_server, relay_outcome_group=group)
    cut_after_the_nth_250(smtp_server, proxy, nth)

    first = cli(env, tmp_path, "relay", clock=at_morning(DAY))

    assert proxy.was_cut and len(smtp_server.messages) >= nth
    assert_one_line_and_exit_1(first)

    smtp_server.after_reply = None
    direct = worker_environment(tmp_path, database_url, smtp_server, relay_outcome_group=group)
    again = cli(direct, tmp_path, "relay", clock=at_morning(DAY) + timedelta(hours=1))
    assert again.returncode == 0, again.stderr
    assert_nothing_lost(session_factory, smtp_server, group, nth)


def test_every_command_refused_by_a_cut_proxy_says_so_in_one_line(database_url, smtp_server, proxy, tmp_path):
    """The database already gone when the command starts: the same line, whatever the command."""
    env = worker_environment(tmp_path, through(database_url, proxy), smtp_server)
    proxy.cut()
    for args in (["relay"], ["run-daily", "--date", DAY.isoformat()], ["outbox", "retry"], ["report"]):
        assert_one_line_and_exit_1(cli(env, tmp_path, *args, clock=at_morning(DAY)))
