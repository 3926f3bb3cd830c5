"""Platform events delivered by a real Celery worker that consumes only the ``events`` queue."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import select

from config.celery import EVENTS_QUEUE, celery_config
from tests.support.celery_process import start_celery_worker, stop_celery_worker, worker_environment
from tests.support.settings import TEST_REDIS_URL, make_settings
from tests.support.waiting import wait_until
from tests.support.webhook_receiver import WebhookReceiver
from worker.celery_setup import create_celery
from worker.events import queue
from worker.store.models import PlatformEvent

pytestmark = pytest.mark.slow


def test_the_task_runs_on_its_own_queue_and_beat_sends_it_every_minute(tmp_path):
    config = celery_config(make_settings(tmp_path))
    assert config["task_routes"]["pec_renewal.deliver_platform_events"] == {"queue": EVENTS_QUEUE}
    assert EVENTS_QUEUE in {queue.name for queue in config["task_queues"]}
    schedule = config["beat_schedule"]["deliver-platform-events"]
    assert schedule["task"] == "pec_renewal.deliver_platform_events"
    assert schedule["schedule"].total_seconds() == 60


def test_an_events_worker_posts_the_due_events(tmp_path, database_url, session_factory):
    redis.Redis.from_url(TEST_REDIS_URL).flushdb()
    receiver = WebhookReceiver().start()
    now = datetime.now(UTC)
    with session_factory() as session, session.begin():
        events = [
            queue.NewEvent(queue.MAILBOX_RENEWED, 4, "order=PEC-1", {"mailbox_id": 4, "address": "a@pec.example"}),
            queue.NewEvent(queue.MAILBOX_EXPIRED, 4, "2027-03-31", {"mailbox_id": 4, "address": "a@pec.example"}),
        ]
        queue.write_events(session, events, now=now, business_date=now.date())
    env = worker_environment(
        tmp_path, database_url, platform_webhook_url=receiver.url, platform_webhook_secret=receiver.secret
    )
    process = start_celery_worker(env, tmp_path, queues=EVENTS_QUEUE, concurrency=1)
    try:
        app = create_celery(make_settings(tmp_path, broker_url=TEST_REDIS_URL))
        app.send_task("pec_renewal.deliver_platform_events")

        def delivered() -> bool:
            with session_factory() as session:
                return session.scalars(select(PlatformEvent.status)).all() == ["delivered", "delivered"]

        wait_until(delivered, timeout=60, what="both events delivered")
    finally:
        stop_celery_worker(process)
        receiver.stop()
    assert [(d.verified, d.type) for d in receiver.deliveries] == [(True, "mailbox.renewed"), (True, "mailbox.expired")]
