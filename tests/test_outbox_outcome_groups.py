"""The relay commits its outcomes in groups (``PEC_RENEWAL_RELAY_OUTCOME_GROUP``).

What a group may cost is bounded: when the SMTP server has accepted message
``i`` of a batch, every group finished before ``i`` was sent is committed, so a
crash at that point repeats at most one group.  Checked from the server's side,
at each ``250``, against the database (PostgreSQL in the default test run).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import func, select

from config.settings import SettingsError
from tests.support.factories import make_mailbox
from tests.support.settings import make_settings, smtp_runtime
from worker.services.daily import scan_day
from worker.services.runtime import Runtime
from worker.store.models import BouncedAddress, OutboxMessage

DAY = date(2027, 3, 31)
MORNING = datetime.combine(DAY, time(6, 0), tzinfo=ZoneInfo("Europe/Rome"))
MESSAGES = 40


def queue_notices(runtime: Runtime, count: int) -> None:
    """``count`` notices due on DAY, one per holder, queued in the outbox by the day's scan."""
    with runtime.session_factory() as session, session.begin():
        for number in range(count):
            make_mailbox(session, expires_on=DAY, reference_email=f"titolare{number}@example.it")
    with time_machine.travel(MORNING, tick=False):
        scan_day(runtime, DAY)


def deliver_in_the_morning(runtime: Runtime):
    """One relay run (every batch due) on DAY's morning; the runtime is closed after it."""
    try:
        with time_machine.travel(MORNING, tick=False):
            return runtime.relay.deliver_due()
    finally:
        runtime.close()


def outbox_by_status(session_factory) -> dict[str, int]:
    with session_factory() as session:
        rows = session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status))
        return dict(rows.all())


@pytest.mark.parametrize("group", [1, 4, 16])
def test_outcomes_trail_the_sends_by_at_most_one_group(tmp_path, database_url, session_factory, smtp_server, group):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server, relay_outcome_group=group)
    queue_notices(runtime, MESSAGES)
    committed_at_reply: list[int] = []

    def count_committed(index: int, _message) -> None:
        committed_at_reply.append(outbox_by_status(session_factory).get("sent", 0))

    smtp_server.after_reply = count_committed
    result = deliver_in_the_morning(runtime)

    assert result.sent == MESSAGES
    assert outbox_by_status(session_factory) == {"sent": MESSAGES}  # the last, partial group included
    assert len(committed_at_reply) == MESSAGES
    for index, committed in enumerate(committed_at_reply):
        # Every group finished before message ``index`` was sent is committed; at most the
        # group that ``index`` closes may be too (the relay may write it before this read),
        # and the batch's last message closes its group whatever its size.
        closes = MESSAGES if index == MESSAGES - 1 else ((index + 1) // group) * group
        assert (index // group) * group <= committed <= closes, (index, committed_at_reply)
    if group > 1:  # grouped for real: some reply saw earlier messages not yet committed
        assert any(committed < index for index, committed in enumerate(committed_at_reply))


def test_a_bounce_commits_the_group_before_it_then_itself_with_the_address(
    tmp_path, database_url, session_factory, smtp_server
):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server, relay_outcome_group=16)
    queue_notices(runtime, 6)
    with session_factory() as session:
        ids = session.scalars(select(OutboxMessage.id).order_by(OutboxMessage.id)).all()
        bouncing = session.get(OutboxMessage, ids[3]).to_address
    sent_before_bounce: list[int] = []

    def fail_the_fourth(index: int, _message) -> None:
        if index == 2:  # the third was accepted: the fourth is refused
            smtp_server.fail_next("550 5.1.1 No such user")
            sent_before_bounce.append(outbox_by_status(session_factory).get("sent", 0))

    smtp_server.after_reply = fail_the_fourth
    result = deliver_in_the_morning(runtime)

    assert (result.sent, result.bounced) == (5, 1)
    with session_factory() as session:
        statuses = session.scalars(select(OutboxMessage.status).order_by(OutboxMessage.id)).all()
        assert statuses == ["sent", "sent", "sent", "bounced", "sent", "sent"]
        assert session.get(BouncedAddress, bouncing).bounces == 1
    assert sent_before_bounce == [0]  # the three sent before the bounce were still one open group


def test_a_group_mixes_sent_and_deferred_outcomes(tmp_path, database_url, session_factory, smtp_server):
    """Every column of a group's arrays with values and NULLs side by side: a 451 in the middle."""
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server, relay_outcome_group=16)
    queue_notices(runtime, 5)

    def defer_the_third(index: int, _message) -> None:
        if index == 1:
            smtp_server.fail_next("451 4.3.0 Try again later")

    smtp_server.after_reply = defer_the_third
    result = deliver_in_the_morning(runtime)

    assert (result.sent, result.deferred) == (4, 1)
    with session_factory() as session:
        rows = session.execute(
            select(
                OutboxMessage.status,
                OutboxMessage.attempts,
                OutboxMessage.next_attempt_at,
                OutboxMessage.last_error,
                OutboxMessage.sent_at,
            ).order_by(OutboxMessage.id)
        ).all()
    assert [row.status for row in rows] == ["sent", "sent", "pending", "sent", "sent"]
    assert [row.attempts for row in rows] == [1, 1, 1, 1, 1]
    deferred = rows[2]
    assert deferred.next_attempt_at == MORNING + timedelta(minutes=1) and "451" in deferred.last_error
    assert deferred.sent_at is None
    for row in rows[:2] + rows[3:]:
        assert row.sent_at == MORNING and row.next_attempt_at is None and row.last_error is None


class _StopAfter:
    """The runtime's own SMTP mailer, stopped by ``SystemExit`` (as a worker's shutdown) before send ``n``."""

    def __init__(self, mailer, n: int):
        self._mailer = mailer
        self._left = n

    def send(self, sender, recipient, data) -> None:
        if self._left == 0:
            raise SystemExit("worker shutting down")
        self._left -= 1
        self._mailer.send(sender, recipient, data)

    def close(self) -> None:
        self._mailer.close()


def test_a_batch_stopped_by_an_exception_still_commits_what_it_sent(
    tmp_path, database_url, session_factory, smtp_server
):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server, relay_outcome_group=16)
    runtime.mailer = _StopAfter(runtime.mailer, 5)  # before the relay, which takes the runtime's mailer
    queue_notices(runtime, 10)
    with pytest.raises(SystemExit):
        deliver_in_the_morning(runtime)

    assert len(smtp_server.messages) == 5
    assert outbox_by_status(session_factory) == {"sent": 5, "pending": 5}  # the rest leased, sent later
    with session_factory() as session:
        sent = set(session.scalars(select(OutboxMessage.message_id).where(OutboxMessage.status == "sent")))
    assert sent == {message.message_id for message in smtp_server.messages}


@pytest.mark.parametrize("value", ["0", "-1", "1001", "16x"])
def test_a_bad_outcome_group_is_refused_at_start(tmp_path, value):
    with pytest.raises(SettingsError, match="RELAY_OUTCOME_GROUP"):
        make_settings(tmp_path, relay_outcome_group=value)
