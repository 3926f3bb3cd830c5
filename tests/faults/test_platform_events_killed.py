"""A sender of platform events killed after the platform accepted an event and before its
outcome was committed: the event is posted again, under the same ``webhook-id``, once the
killed sender's lease runs out, so the platform can drop the copy.

The killed sender is a real subprocess: ``child_main`` posts the due events through an HTTP
transport that SIGKILLs its own process right after the platform's answer.  The hook lives
here, in this test module, not in production code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import time_machine
from sqlalchemy import select

from config.settings import Settings
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from tests.support.webhook_receiver import WebhookReceiver
from worker.events import queue
from worker.events.delivery import CLAIM_LEASE, EventSender
from worker.services.runtime import Runtime
from worker.store.models import PlatformEvent

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2027, 4, 1, 7, 0, tzinfo=UTC)


class KillingTransport(httpx.HTTPTransport):
    """HTTP, with a SIGKILL of this process as soon as the answer has come."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        response.read()
        os.kill(os.getpid(), signal.SIGKILL)
        return response


def child_main() -> None:  # pragma: no cover - runs in a subprocess
    rt = Runtime(Settings.from_env())
    with time_machine.travel(AT, tick=False):
        sender = EventSender(
            rt.engine,
            url=rt.settings.platform_webhook_url,
            secret=rt.settings.platform_webhook_secret,
            clock=rt.clock,
            transport=KillingTransport(),
        )
        sender.deliver_due()


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def test_killed_after_the_post_and_before_the_commit_posts_again_with_the_same_id(
    tmp_path, database_url, session_factory, receiver
):
    with session_factory() as session, session.begin():
        event = queue.NewEvent(queue.MAILBOX_EXPIRED, 7, "2027-03-31", {"mailbox_id": 7, "address": "a@pec.example"})
        queue.write_events(session, [event], now=AT, business_date=date(2027, 4, 1))
    env = {
        **os.environ,
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "child-var"),
        "PEC_RENEWAL_PLATFORM_WEBHOOK_URL": receiver.url,
        "PEC_RENEWAL_PLATFORM_WEBHOOK_SECRET": receiver.secret,
        "PYTHONPATH": str(ROOT),
    }
    with time_machine.travel(AT, tick=False):  # the receiver's clock, as the child's
        child = subprocess.run(
            [sys.executable, "-c", "from tests.faults.test_platform_events_killed import child_main; child_main()"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    (first,) = receiver.deliveries
    assert first.verified and first.status == 200
    with session_factory() as session:
        (stored,) = session.scalars(select(PlatformEvent))
        assert (stored.status, stored.attempts) == ("pending", 0)  # the answer was never recorded

    settings = make_settings(
        tmp_path, database_url=database_url, platform_webhook_url=receiver.url, platform_webhook_secret=receiver.secret
    )
    rt = Runtime(settings)
    rt.session_factory = session_factory
    try:
        with time_machine.travel(AT + CLAIM_LEASE - timedelta(seconds=1), tick=False):
            assert rt.event_sender.deliver_due().handled == 0  # the killed sender's lease still holds it
        with time_machine.travel(AT + CLAIM_LEASE, tick=False):
            assert rt.event_sender.deliver_due().delivered == 1
    finally:
        rt.close()
    first, again = receiver.deliveries
    assert again.verified and again.status == 200
    assert first.webhook_id == again.webhook_id == stored.webhook_id
    assert first.body == again.body
    with session_factory() as session:
        assert session.scalars(select(PlatformEvent.status)).all() == ["delivered"]
