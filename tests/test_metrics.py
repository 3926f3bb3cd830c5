"""Prometheus metrics: counters after a real run, the link handler's /metrics, the worker's port.

Real PostgreSQL, the aiosmtpd server on loopback, and (for the port) a real
Celery worker process on the real Redis.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
import time_machine
from click.testing import CliRunner
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text, update

from config.settings import Settings, SettingsError
from tests.support.celery_process import start_celery_worker, stop_celery_worker, worker_environment
from tests.support.factories import make_mailbox
from tests.support.outbox_rows import mark, outbox_message
from tests.support.settings import TEST_REDIS_URL, TEST_SECRET_KEYS, make_settings
from tests.support.waiting import wait_until
from worker import metrics
from worker.celery_setup import create_celery
from worker.cli.main import main
from worker.mail.outbox import RelayResult
from worker.metrics import database_query
from worker.services.charges import ChargesResult
from worker.services.daily import run_day, scan_day
from worker.services.runtime import Runtime
from worker.store.models import MailboxSchedule, OutboxMessage, OutboxStatus
from worker.web import create_app

ROME = ZoneInfo("Europe/Rome")
DAY = date(2027, 3, 31)
TOKEN = "metrics-token-0123456789abcdef0123456789"

#: Every name an operator's alert may use, as the text format writes it.
COUNTER_NAMES = {
    "pec_renewal_mailboxes_examined_total",
    "pec_renewal_emails_queued_total",
    "pec_renewal_mailboxes_skipped_total",
    "pec_renewal_emails_sent_total",
    "pec_renewal_emails_bounced_total",
}
GAUGE_NAMES = {
    "pec_renewal_database_up",
    "pec_renewal_outbox_depth",
    "pec_renewal_oldest_due_age_seconds",
    "pec_renewal_charge_intents_unresolved",
}


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text_format: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text_format)
        for s in family.samples
    }


@pytest.fixture
def runtime(tmp_path, database_url, session_factory, smtp_server):
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        mail_backend="smtp",
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        metrics_token=TOKEN,
    )
    rt = Runtime(settings)
    rt.session_factory = session_factory
    yield rt
    rt.close()


# -- settings ------------------------------------------------------------------------------------


def test_metrics_settings_defaults_and_values(tmp_path):
    defaults = make_settings(tmp_path)
    assert (defaults.metrics_port, defaults.metrics_address, defaults.metrics_token) == (9464, "127.0.0.1", None)
    chosen = make_settings(tmp_path, metrics_port="0", metrics_address="0.0.0.0", metrics_token=TOKEN)
    assert (chosen.metrics_port, chosen.metrics_address, chosen.metrics_token) == (0, "0.0.0.0", TOKEN)
    assert TOKEN not in repr(chosen)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("METRICS_PORT", "http", "PEC_RENEWAL_METRICS_PORT: 'http' is not a whole number"),
        ("METRICS_PORT", "70000", "PEC_RENEWAL_METRICS_PORT: 70000 is outside 0..65535"),
        (
            "METRICS_ADDRESS",
            "prometheus.local",
            "PEC_RENEWAL_METRICS_ADDRESS: 'prometheus.local' is not an IP address such as 127.0.0.1 or 0.0.0.0",
        ),
        ("METRICS_TOKEN", "short", "PEC_RENEWAL_METRICS_TOKEN: must be at least 32 characters, without spaces"),
    ],
)
def test_a_bad_metrics_setting_is_one_line(tmp_path, name, value, message):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "PEC_RENEWAL_VAR_DIR": str(tmp_path),
                "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
                f"PEC_RENEWAL_{name}": value,
            }
        )
    assert str(caught.value) == message
    if name == "METRICS_TOKEN":
        assert value not in str(caught.value)  # a token is never echoed


# -- counters ------------------------------------------------------------------------------------


def test_counters_move_after_a_real_daily_run(runtime, smtp_server):
    with runtime.session_factory() as session, session.begin():
        for number in range(5):
            make_mailbox(session, expires_on=DAY, reference_email=f"titolare{number}@example.it")
        make_mailbox(session, expires_on=DAY, reference_email="rifiuta@example.it")
    smtp_server.fail_next("550 5.1.1 No such user")  # the first delivery bounces
    before = {
        "examined": sample("pec_renewal_mailboxes_examined_total"),
        "queued": sample("pec_renewal_emails_queued_total", kind="expiry-notice", stage="0d"),
        "sent": sample("pec_renewal_emails_sent_total", kind="expiry-notice", stage="0d"),
        "bounced": sample("pec_renewal_emails_bounced_total"),
    }

    with time_machine.travel(datetime.combine(DAY, time(6, 0), tzinfo=ROME), tick=False):
        summary = run_day(runtime, DAY)

    assert summary.delivery.sent == 5 and summary.delivery.bounced == 1
    assert sample("pec_renewal_mailboxes_examined_total") - before["examined"] == summary.scan.examined == 6
    assert sample("pec_renewal_emails_queued_total", kind="expiry-notice", stage="0d") - before["queued"] == 6
    assert sample("pec_renewal_emails_sent_total", kind="expiry-notice", stage="0d") - before["sent"] == 5
    assert sample("pec_renewal_emails_bounced_total") - before["bounced"] == 1
    assert len(smtp_server.messages) == 5


def test_a_dry_run_counts_nothing(runtime):
    with runtime.session_factory() as session, session.begin():
        make_mailbox(session, expires_on=DAY)
    before = sample("pec_renewal_mailboxes_examined_total")
    run_day(runtime, DAY, dry_run=True)
    assert sample("pec_renewal_mailboxes_examined_total") == before


def test_charges_and_at_capacity_are_counted():
    result = ChargesResult(
        examined=40, outcomes=Counter(succeeded=30, unknown=2, idle=6), charges=33, lookups=3, errors=2
    )
    result.emails[("charge-succeeded", "-7d")] = 30
    before = {
        "succeeded": sample("pec_renewal_charges_total", result="succeeded"),
        "unknown": sample("pec_renewal_charges_total", result="unknown"),
        "error": sample("pec_renewal_charges_total", result="error"),
        "charge": sample("pec_renewal_gateway_calls_total", call="charge"),
        "gateway": sample("pec_renewal_at_capacity_total", limit="gateway_concurrency"),
        "relay": sample("pec_renewal_at_capacity_total", limit="relay_batches"),
    }
    metrics.record_charges(result, concurrency=32)  # 40 mailboxes, 32 at once: some waited
    metrics.record_charges(ChargesResult(examined=10, outcomes=Counter(succeeded=10)), concurrency=32)
    metrics.record_relay(RelayResult(sent=400), capacity=400)  # the relay used every batch
    metrics.record_relay(RelayResult(sent=399), capacity=400)

    assert sample("pec_renewal_charges_total", result="succeeded") - before["succeeded"] == 40
    assert sample("pec_renewal_charges_total", result="unknown") - before["unknown"] == 2
    assert sample("pec_renewal_charges_total", result="error") - before["error"] == 2
    assert sample("pec_renewal_gateway_calls_total", call="charge") - before["charge"] == 33
    assert sample("pec_renewal_at_capacity_total", limit="gateway_concurrency") - before["gateway"] == 1
    assert sample("pec_renewal_at_capacity_total", limit="relay_batches") - before["relay"] == 1


# -- the link handler's /metrics -----------------------------------------------------------------


def test_link_handler_metrics_need_the_token(runtime, tmp_path):
    client = create_app(runtime).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer " + TOKEN}).status_code == 200

    no_token = Runtime(make_settings(tmp_path, database_url=runtime.settings.database_url))
    try:
        assert (
            create_app(no_token).test_client().get("/metrics", headers={"Authorization": "Bearer " + TOKEN}).status_code
            == 404
        )
    finally:
        no_token.close()


def test_link_handler_metrics_read_the_database(runtime, session_factory):
    now = datetime(2027, 3, 31, 10, 0, tzinfo=UTC)
    runtime.clock = lambda: now
    with session_factory() as session, session.begin():
        overdue = make_mailbox(session, expires_on=DAY)  # next action: an earlier stage's date
        make_mailbox(session, expires_on=DAY + timedelta(days=200))
        session.flush()
        session.execute(
            update(MailboxSchedule)
            .where(MailboxSchedule.mailbox_id == overdue.id)
            .values(next_action_on=DAY - timedelta(days=1))
        )
        context = {"mailboxes": []}
        common = dict(
            kind="expiry-notice",
            stage="0d",
            language="it",
            to_address="a@example.it",
            business_date=DAY,
            context=context,
        )
        session.add_all(
            [
                outbox_message(message_id="new@x", created_at=now - timedelta(minutes=3), **common),
                outbox_message(
                    message_id="retry@x",
                    created_at=now - timedelta(hours=5),
                    attempts=2,
                    next_attempt_at=now - timedelta(seconds=30),
                    **common,
                ),
                outbox_message(
                    message_id="later@x",
                    created_at=now - timedelta(hours=1),
                    attempts=1,
                    next_attempt_at=now + timedelta(minutes=4),
                    **common,
                ),
                outbox_message(
                    message_id="failed@x",
                    created_at=now - timedelta(days=2),
                    attempts=12,
                    status=OutboxStatus.FAILED.value,
                    **common,
                ),
                outbox_message(
                    message_id="sent@x",
                    created_at=now - timedelta(days=2),
                    attempts=1,
                    status=OutboxStatus.SENT.value,
                    **common,
                ),
            ]
        )

    response = create_app(runtime).test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    values = samples(response.get_data(as_text=True))
    assert {name for name, _labels in values} >= GAUGE_NAMES
    assert values[("pec_renewal_database_up", ())] == 1
    assert values[("pec_renewal_outbox_depth", (("state", "due"),))] == 2
    assert values[("pec_renewal_outbox_depth", (("state", "waiting"),))] == 1
    assert values[("pec_renewal_outbox_depth", (("state", "failed"),))] == 1
    # The oldest due message: the new one, created 3 minutes ago (the retry became due 30 s ago).
    assert values[("pec_renewal_oldest_due_age_seconds", (("queue", "outbox"),))] == 180
    # The oldest mailbox was due at yesterday's scan, 06:00 in Rome (04:00 UTC): 30 hours ago.
    assert values[("pec_renewal_oldest_due_age_seconds", (("queue", "mailboxes"),))] == 30 * 3600
    assert values[("pec_renewal_charge_intents_unresolved", (("status", "unknown"),))] == 0


def test_an_unreachable_database_is_a_gauge_not_a_failed_scrape(tmp_path):
    settings = make_settings(
        tmp_path, database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere", metrics_token=TOKEN
    )
    rt = Runtime(settings)
    try:
        response = create_app(rt).test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        rt.close()
    assert response.status_code == 200
    assert samples(response.get_data(as_text=True)) == {("pec_renewal_database_up", ()): 0}


def test_the_gauge_query_uses_the_indexes(engine, session_factory):
    """With sequential scans priced out, every part of the query is an index scan: no full read of a table."""
    now = datetime(2027, 3, 31, 10, 0, tzinfo=UTC)
    with engine.connect() as connection:
        connection.execute(text("SET enable_seqscan = off"))
        compiled = database_query(now).compile(engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(row[0] for row in connection.execute(text(f"EXPLAIN {compiled}")))
        connection.rollback()
    assert "Seq Scan" not in plan, plan
    assert "ix_outbox_queue_next_attempt_at" in plan and "ix_outbox_queue_failed" in plan, plan
    assert "ix_mailbox_schedule_next_action_on" in plan, plan
    assert "ix_charge_intents_unresolved" in plan, plan


# -- the Celery worker's port --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_the_worker_serves_what_its_processes_counted(tmp_path, database_url, session_factory, smtp_server):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    port = free_port()
    env = worker_environment(
        tmp_path, database_url, smtp_server, scan_batch_size=4, metrics_port=port, log_format="json"
    )
    stale = tmp_path / "var" / "metrics" / "worker-999999999"  # left by a worker that is gone
    stale.mkdir(parents=True)
    with session_factory() as session, session.begin():
        for number in range(12):
            make_mailbox(session, expires_on=DAY, reference_email=f"titolare{number}@example.it")
    process = start_celery_worker(env, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape():
            try:
                return samples(httpx.get(url, timeout=5).text)
            except httpx.HTTPError:
                return None

        assert wait_until(scrape, timeout=60, what="the metrics port")[("pec_renewal_database_up", ())] == 1
        create_celery(make_settings(tmp_path, broker_url=TEST_REDIS_URL)).send_task(
            "pec_renewal.daily_scan", args=[DAY.isoformat()]
        )
        wait_until(lambda: len(smtp_server.messages) >= 12, timeout=90, what="12 emails")

        def counted():
            values = scrape() or {}
            sent = values.get(("pec_renewal_emails_sent_total", (("kind", "expiry-notice"), ("stage", "0d"))), 0)
            return values if sent == 12 else None

        values = wait_until(counted, timeout=30, what="the port to count 12 emails sent")
        assert values[("pec_renewal_mailboxes_examined_total", ())] == 12
        assert values[("pec_renewal_emails_queued_total", (("kind", "expiry-notice"), ("stage", "0d")))] == 12
        assert {name for name, _labels in values} >= COUNTER_NAMES - {
            "pec_renewal_emails_bounced_total",
            "pec_renewal_mailboxes_skipped_total",
        } | GAUGE_NAMES
        assert values[("pec_renewal_outbox_depth", (("state", "due"),))] == 0
        assert not stale.exists()
        assert process.poll() is None, "the worker died"
    finally:
        stop_celery_worker(process)

    lines = [line for line in (tmp_path / "worker.log").read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    batch_lines = [r for r in records if r.get("task") == "pec_renewal.notice_batch"]
    assert batch_lines, "no log line of a notice batch"
    assert all(r["business_date"] == DAY.isoformat() and r["task_id"] for r in batch_lines)


# -- runbook: requeue failed messages ------------------------------------------------------------


def test_outbox_retry_requeues_failed_messages_and_the_relay_sends_them(tmp_path, runtime, smtp_server):
    with runtime.session_factory() as session, session.begin():
        for number in range(4):
            make_mailbox(session, expires_on=DAY, reference_email=f"titolare{number}@example.it")
    scan_day(runtime, DAY)
    with runtime.session_factory() as session, session.begin():
        ids = session.scalars(select(OutboxMessage.id).order_by(OutboxMessage.to_address)).all()
        # As if the attempts ran out (3 messages, one of them of the day before) and one bounced.
        mark(session, ids[:3], "failed", attempts=12)
        session.execute(
            update(OutboxMessage).where(OutboxMessage.id == ids[2]).values(business_date=DAY - timedelta(days=1))
        )
        mark(session, [ids[3]], "bounced", attempts=1)
    settings = runtime.settings
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": settings.database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_MAIL_BACKEND": "smtp",
        "PEC_RENEWAL_SMTP_HOST": smtp_server.host,
        "PEC_RENEWAL_SMTP_PORT": str(smtp_server.port),
        "PEC_RENEWAL_MAIL_FROM": settings.mail_from,
    }
    result = CliRunner().invoke(main, ["outbox", "retry", "--date", DAY.isoformat()], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("requeued 2 failed message(s) of 2027-03-31")
    with runtime.session_factory() as session:
        rows = {m.id: m for m in session.scalars(select(OutboxMessage))}
    assert [(rows[i].status, rows[i].attempts, rows[i].next_attempt_at) for i in ids] == [
        ("pending", 0, None),
        ("pending", 0, None),
        ("failed", 12, None),
        ("bounced", 1, None),
    ]

    result = CliRunner().invoke(main, ["relay"], env=env, catch_exceptions=False)
    assert result.stdout.startswith("sent 2,"), result.output
    assert sorted(m.recipients[0] for m in smtp_server.messages) == ["titolare0@example.it", "titolare1@example.it"]
    assert sorted(smtp_server.message_ids()) == sorted(rows[i].message_id for i in ids[:2])  # the same Message-IDs
