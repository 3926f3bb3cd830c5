"""``pec-renewal events list|retry|deliver``, and the platform's settings checked at start."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from config.settings import SettingsError
from tests.support.settings import TEST_SECRET_KEYS, make_settings
from tests.support.webhook_receiver import WebhookReceiver, new_secret
from worker.cli.main import main
from worker.events import queue
from worker.store.models import PlatformEvent


def run(tmp_path, database_url, *args, **overrides):
    env = {
        "PEC_RENEWAL_VAR_DIR": str(tmp_path / "var"),
        "PEC_RENEWAL_DATABASE_URL": database_url,
        "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS,
        **{f"PEC_RENEWAL_{key.upper()}": value for key, value in overrides.items()},
    }
    return CliRunner().invoke(main, list(args), env=env)


def seed(session_factory) -> None:
    """Three events: one failed on 1 April, one failed on 3 April, one pending."""
    with session_factory() as session, session.begin():
        for mailbox_id, day in ((1, 1), (2, 3), (3, 3)):
            at = datetime(2027, 4, day, 7, 0, tzinfo=UTC)
            event = queue.NewEvent(queue.MAILBOX_EXPIRED, mailbox_id, "c", {"address": f"m{mailbox_id}@pec.example"})
            queue.write_events(session, [event], now=at, business_date=at.date())
        session.execute(
            update(PlatformEvent)
            .where(PlatformEvent.mailbox_id.in_([1, 2]))
            .values(status="failed", attempts=1, last_error="HTTP 400: bad")
        )


def test_list_shows_the_events_and_filters_by_status(tmp_path, database_url, session_factory):
    seed(session_factory)
    listed = run(tmp_path, database_url, "events", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(row["mailbox_id"], row["status"]) for row in rows] == [(3, "pending"), (2, "failed"), (1, "failed")]
    assert rows[1]["last_error"] == "HTTP 400: bad" and rows[1]["webhook_id"].startswith("msg_")
    failed = run(tmp_path, database_url, "events", "list", "--status", "failed")
    assert failed.exit_code == 0
    assert [line.split()[0] for line in failed.stdout.splitlines()] == ["2", "1"]
    assert "1 pending, 2 failed; PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: none is sent" in failed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("events", "list", "--status", "sent"), "--status: 'sent' is not one of pending, delivered, failed"),
        (("events", "list", "--limit", "0"), "--limit: '0' is not a whole number from 1 to 100000"),
        (("events", "retry", "--since", "2027-13-01"), "--since: '2027-13-01' is not a date like 2027-03-31"),
    ],
)
def test_bad_input_is_one_line(tmp_path, database_url, session_factory, args, message):
    result = run(tmp_path, database_url, *args)
    assert result.exit_code == 2
    assert result.stderr == f"pec-renewal: {message}\n"


def test_retry_requeues_the_failed_events_since_a_date(tmp_path, database_url, session_factory):
    seed(session_factory)
    since = run(tmp_path, database_url, "events", "retry", "--since", "2027-04-02")
    assert since.exit_code == 0 and since.stdout.startswith("requeued 1 failed event(s) written since 2027-04-02")
    with session_factory() as session:
        statuses = dict(session.query(PlatformEvent.mailbox_id, PlatformEvent.status).all())
    assert statuses == {1: "failed", 2: "pending", 3: "pending"}
    everything = run(tmp_path, database_url, "events", "retry")
    assert everything.stdout.startswith("requeued 1 failed event(s);")


def test_deliver_posts_now_or_says_why_not(tmp_path, database_url, session_factory):
    seed(session_factory)
    unset = run(tmp_path, database_url, "events", "deliver")
    assert unset.exit_code == 1
    assert unset.stderr == "pec-renewal: PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: the events are kept, not sent\n"
    receiver = WebhookReceiver().start()
    try:
        sent = run(
            tmp_path, database_url, "events", "deliver",
            platform_webhook_url=receiver.url, platform_webhook_secret=receiver.secret,
        )  # fmt: skip
    finally:
        receiver.stop()
    assert sent.exit_code == 0, sent.output
    assert sent.stdout == "delivered 1, deferred 0 (retried later), failed 0\n"
    assert [(d.verified, d.data["address"]) for d in receiver.deliveries] == [(True, "m3@pec.example")]


@pytest.mark.parametrize(
    ("overrides", "variable", "problem"),
    [
        ({"platform_webhook_url": "https://platform.example/hooks"}, "PLATFORM_WEBHOOK_SECRET", "is required"),
        ({"platform_webhook_url": "ftp://platform.example/"}, "PLATFORM_WEBHOOK_URL", "is not an http(s) URL"),
        ({"platform_webhook_url": "https://platform.example:99999/"}, "PLATFORM_WEBHOOK_URL", "http(s) URL"),
        ({"platform_webhook_secret": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}, "PLATFORM_WEBHOOK_SECRET", "whsec_"),
        ({"platform_webhook_secret": "whsec_c2hvcnQ="}, "PLATFORM_WEBHOOK_SECRET", "24 to 64"),
        ({"platform_webhook_secret": "whsec_not base64!"}, "PLATFORM_WEBHOOK_SECRET", "base64"),
    ],
)
def test_the_platform_settings_are_checked_at_start(tmp_path, overrides, variable, problem):
    with pytest.raises(SettingsError) as refused:
        make_settings(tmp_path, **overrides)
    assert refused.value.variable == f"PEC_RENEWAL_{variable}" and problem in refused.value.problem
    assert "whsec_not" not in str(refused.value) and "c2VjcmV0" not in str(refused.value)  # never echoed


def test_good_platform_settings(tmp_path):
    secret = new_secret()
    settings = make_settings(
        tmp_path, platform_webhook_url="https://platform.example/hooks?v=1", platform_webhook_secret=secret
    )
    assert (settings.platform_webhook_url, settings.platform_webhook_secret) == (
        "https://platform.example/hooks?v=1",
        secret,
    )
    assert secret not in repr(settings)
    with_password = make_settings(
        tmp_path, platform_webhook_url="https://pec:s3cret@platform.example/hooks", platform_webhook_secret=secret
    )
    assert "s3cret" not in repr(with_password)
    assert make_settings(tmp_path).platform_webhook_url is None


def test_the_day_summary_counts_the_events(tmp_path, database_url, session_factory):
    seed(session_factory)
    result = run(tmp_path, database_url, "run-daily", "--date", "2027-04-03", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["platform_events"] == {
        "delivered": 0, "deferred": 0, "failed": 0, "delivered_by_type": {},
    }  # fmt: skip
    with session_factory() as session:  # without a URL the day keeps its events
        assert session.query(PlatformEvent).filter_by(status="pending").count() == 1


def test_check_names_where_the_events_go_without_credentials(tmp_path, database_url, session_factory):
    seed(session_factory)
    result = run(
        tmp_path, database_url, "check",
        platform_webhook_url="https://pec:s3cret@platform.example:8443/hooks?token=t0ken",
        platform_webhook_secret=new_secret(),
    )  # fmt: skip
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("platform")]
    assert line.split(None, 2)[1:] == ["ok", "webhooks to https://platform.example:8443/hooks (1 pending, 2 failed)"]
    assert "s3cret" not in result.output and "t0ken" not in result.output
