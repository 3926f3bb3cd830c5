"""Auto-renew charges at once: two racing workers, the gateway's concurrency, the shared pool, the threads' logs."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import date

import time_machine
from sqlalchemy import event, func, select

from tests.support.charges import CHARGE_DAY, add_auto_renew, at_morning, build_runtime, run_on
from tests.support.settings import make_settings
from worker.logs import configure_logging, log_context, remove_logging
from worker.services import charges
from worker.services.runtime import POOL_SIZE, Runtime, pool_size
from worker.store.models import ChargeIntent, Mailbox, NoticeLedgerEntry, SandboxCharge


def test_two_workers_racing_for_the_same_charges_charge_each_once(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server, sandbox_latency_ms=100)
    try:
        mailboxes = [add_auto_renew(rt, "pm_card_visa", notified=True) for _ in range(20)]
        ids = [m.id for m in mailboxes]
        with rt.session_factory() as session, session.begin():
            for mailbox_id in ids:
                session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY
        barrier = threading.Barrier(2)
        results = []

        def worker(order):
            barrier.wait()
            with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
                results.append(
                    charges.run_charges(
                        rt.session_factory,
                        rt.gateway,
                        order,
                        today=CHARGE_DAY,
                        clock=rt.clock,
                        mail_domain=rt.mail_domain,
                        concurrency=4,
                    )
                )

        threads = [threading.Thread(target=worker, args=(o,)) for o in (ids, list(reversed(ids)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(r.charges for r in results) == 20
        assert sum(r.outcomes["succeeded"] for r in results) == 20
        with rt.session_factory() as session:
            assert session.scalar(select(func.count()).select_from(SandboxCharge)) == 20
            assert session.scalar(select(func.count(func.distinct(SandboxCharge.idempotency_key)))) == 20
            assert session.scalar(select(func.count()).select_from(ChargeIntent)) == 20
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(NoticeLedgerEntry)
                    .where(NoticeLedgerEntry.kind == "charge-succeeded")
                )
                == 20
            )
            assert {m.expires_on for m in session.scalars(select(Mailbox))} == {date(2028, 3, 31)}
    finally:
        rt.close()


class CallsInFlight:
    """The runtime's own gateway, counting the charges it is answering at once."""

    def __init__(self, inner):
        self._inner, self._lock, self.now, self.most = inner, threading.Lock(), 0, 0

    def charge(self, **kwargs):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            return self._inner.charge(**kwargs)
        finally:
            with self._lock:
                self.now -= 1

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_charges_run_concurrently_up_to_the_gateway_concurrency(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(
        tmp_path, database_url, session_factory, smtp_server, sandbox_latency_ms=200, gateway_concurrency=16
    )
    in_flight = CallsInFlight(rt.gateway)
    rt.gateway = in_flight
    try:
        for _ in range(32):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 32
        # Each answer takes 200 ms: the charges overlap, never more than GATEWAY_CONCURRENCY at once.
        assert 2 <= in_flight.most <= 16, in_flight.most
    finally:
        rt.close()


def test_the_charge_threads_share_a_pool_that_keeps_its_connections(tmp_path, database_url, smtp_server):
    """32 threads on the runtime's own engine open at most its pool's 33 connections, once each.

    SQLAlchemy's default pool (5 kept, 10 overflow) closed each overflow connection as it came
    back: this test opened 35 connections with it."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        sandbox_latency_ms=50,
        gateway_concurrency=32,
    )
    rt = Runtime(settings)  # its own engine and pool, as in a worker
    opened = []
    event.listen(rt.engine, "connect", lambda *_: opened.append(1))
    try:
        for _ in range(96):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 96
        assert rt.engine.pool.size() == pool_size(settings) == 33
        assert 1 < len(opened) <= 33  # each connection opened once, kept in the pool
    finally:
        rt.close()


def test_no_charge_thread_waits_for_a_connection_when_the_gateway_answers_at_once(tmp_path, database_url, smtp_server):
    """At zero latency each of the 32 threads asks for a connection again as soon as it gives one
    back; on a pool of 15, 17 threads waited the whole run (and failed their charges past the
    pool's 30 s).  The pool covers the threads: it is never all checked out."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        sandbox_latency_ms=0,
        gateway_concurrency=32,
    )
    rt = Runtime(settings)
    most = [0]

    def checked_out(*_) -> None:
        most[0] = max(most[0], rt.engine.pool.checkedout())

    event.listen(rt.engine, "checkout", checked_out)
    try:
        for _ in range(128):
            add_auto_renew(rt, "pm_card_visa", notified=True)
        summary = run_on(rt, CHARGE_DAY)
        assert summary.charges.outcomes["succeeded"] == 128 and summary.charges.errors == 0
        assert POOL_SIZE < most[0] < rt.engine.pool.size()  # more threads than 15 at once, none waiting
    finally:
        rt.close()


def test_charge_threads_log_with_the_task_s_context(tmp_path, database_url, session_factory, smtp_server):
    """The charges run in a thread pool; their log lines still carry the task id and business date."""
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        ids = [add_auto_renew(rt, "pm_card_visa", notified=True).id for _ in range(6)]
        with rt.session_factory() as session, session.begin():
            for mailbox_id in ids:
                session.get(Mailbox, mailbox_id).next_action_on = CHARGE_DAY
        stream = io.StringIO()
        handler = configure_logging("json", logging.INFO, stream=stream)
        try:
            with log_context(day=CHARGE_DAY, task="charge-task-1", name="pec_renewal.charge_batch"):
                with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
                    result = charges.run_charges(
                        rt.session_factory,
                        rt.gateway,
                        ids,
                        today=CHARGE_DAY,
                        clock=rt.clock,
                        mail_domain=rt.mail_domain,
                        concurrency=3,
                    )
        finally:
            remove_logging(handler)
    finally:
        rt.close()
    assert result.charges == 6
    charged = [
        record
        for record in map(json.loads, stream.getvalue().splitlines())
        if record["logger"] == "worker.gateways.sandbox" and record["message"].startswith("sandbox: charged")
    ]
    assert len(charged) == 6
    assert {(r["task_id"], r["task"], r["business_date"]) for r in charged} == {
        ("charge-task-1", "pec_renewal.charge_batch", CHARGE_DAY.isoformat())
    }
