"""The daily job end to end: real PostgreSQL, an SMTP server on loopback, a frozen clock."""

from __future__ import annotations

import email
import email.policy
import threading
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import func, select

from tests.support.factories import make_mailbox
from tests.support.outbox_rows import outbox_message
from tests.support.settings import smtp_runtime
from worker.mail.outbox import CLAIM_LEASE, claim_due_messages
from worker.rules.links import MAILBOX
from worker.services.daily import SCAN_LEASE, DayAction, fan_out_day, run_day, scan_day, start_day
from worker.services.notices import process_notice_batch
from worker.services.runtime import Runtime
from worker.store.models import BouncedAddress, DailyRun, Mailbox, NoticeLedgerEntry, OutboxMessage, OutboxQueueEntry

ROME = ZoneInfo("Europe/Rome")


def at_morning(day: date) -> datetime:
    """06:00 in Rome on ``day``: when beat runs the scan."""
    return datetime.combine(day, time(6, 0), tzinfo=ROME)


@pytest.fixture
def runtime(tmp_path, database_url, session_factory, smtp_server):
    rt = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    yield rt
    rt.close()


def received(smtp_server):
    return [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages]


def run_on(rt: Runtime, day: date, **kwargs):
    with time_machine.travel(at_morning(day), tick=False):
        return run_day(rt, day, **kwargs)


def add_mailbox(rt: Runtime, **kwargs) -> Mailbox:
    with rt.session_factory() as session, session.begin():
        return make_mailbox(session, **kwargs)


def test_lifetime_of_a_mailbox(runtime, smtp_server):
    """Walk one mailbox through every day of its cycle: each stage once, on its date, to the holder."""
    expires_on = date(2027, 3, 31)
    mailbox = add_mailbox(runtime, expires_on=expires_on, reference_email="anna.verdi@example.it")
    sent = []
    day = date(2026, 12, 1)
    while day <= date(2027, 7, 15):
        before = len(smtp_server.messages)
        run_on(runtime, day)
        for message in received(smtp_server)[before:]:
            sent.append((day, message["X-PEC-Renewal-Kind"], message["X-PEC-Renewal-Stage"]))
            assert message["To"] == "anna.verdi@example.it"
            assert message["X-PEC-Renewal-Mailboxes"] == mailbox.address
        day += timedelta(days=1)

    assert sent == [
        (date(2026, 12, 31), "expiry-notice", "-3m"),
        (date(2027, 1, 31), "expiry-notice", "-2m"),
        (date(2027, 2, 28), "expiry-notice", "-1m"),  # 31 March - 1 month, clamped
        (date(2027, 3, 16), "expiry-notice", "-15d"),
        (date(2027, 3, 24), "expiry-notice", "-7d"),
        (date(2027, 3, 30), "expiry-notice", "-1d"),
        (date(2027, 3, 31), "expiry-notice", "0d"),
        (date(2027, 4, 1), "expired-notice", "+1d"),
        (date(2027, 4, 30), "expired-notice", "+30d"),
        (date(2027, 5, 30), "expired-notice", "+60d"),
        (date(2027, 6, 22), "expired-notice", "+83d"),
    ]
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox.id).next_action_on is None  # deleted: never looked at again
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == 11


def test_one_email_per_address_kind_and_stage(runtime, smtp_server):
    expires_on = date(2027, 3, 31)
    shared = [add_mailbox(runtime, expires_on=expires_on, reference_email="studio@example.it") for _ in range(3)]
    alone = add_mailbox(runtime, expires_on=expires_on, reference_email="altro@example.it")
    add_mailbox(runtime, expires_on=expires_on + timedelta(days=20), reference_email="studio@example.it")

    summary = run_on(runtime, date(2026, 12, 31))

    messages = sorted(received(smtp_server), key=lambda message: message["To"])
    assert [message["To"] for message in messages] == ["altro@example.it", "studio@example.it"]
    assert messages[0]["X-PEC-Renewal-Mailboxes"] == alone.address
    assert messages[1]["X-PEC-Renewal-Mailboxes"] == ",".join(sorted(m.address for m in shared))
    assert summary.scan.notices[("expiry-notice", "-3m")] == 4
    assert summary.scan.emails[("expiry-notice", "-3m")] == 2
    assert summary.delivery.sent == 2


def test_each_mailbox_gets_its_own_signed_link_bound_to_its_cycle(runtime, smtp_server):
    first = add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email="studio@example.it")
    second = add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email="studio@example.it")
    run_on(runtime, date(2026, 12, 31))
    (message,) = received(smtp_server)
    text = message.get_body(("plain",)).get_content()
    # Each mailbox's own "Rinnova:" line (the email's "Rinnova tutte" link is another test's).
    tokens = [line.split("/rinnova/", 1)[1].split()[0] for line in text.splitlines() if line.startswith("Rinnova:")]
    assert len(tokens) == 2
    with time_machine.travel(at_morning(date(2026, 12, 31)), tick=False):
        links = {runtime.signer.read_renewal_token(token) for token in tokens}
    assert {(link.target, link.target_id, link.expires_on) for link in links} == {
        (MAILBOX, first.id, date(2027, 3, 31)),
        (MAILBOX, second.id, date(2027, 3, 31)),
    }
    assert all(link.is_current_for(date(2027, 3, 31)) for link in links)
    assert not any(link.is_current_for(date(2028, 3, 31)) for link in links)  # once renewed


def test_domain_mailbox_gets_a_domain_notice_without_renewal_link(runtime, smtp_server):
    add_mailbox(runtime, expires_on=date(2027, 3, 31), domain="studiobianchi.it")
    run_on(runtime, date(2027, 3, 24))
    (message,) = received(smtp_server)
    assert message["X-PEC-Renewal-Kind"] == "domain-expiry-notice"
    assert message["X-PEC-Renewal-Stage"] == "-7d"
    assert "/rinnova/" not in message.as_string()


def test_auto_renew_mailboxes_get_no_manual_notice(runtime, smtp_server):
    add_mailbox(runtime, expires_on=date(2027, 3, 31), card=True)
    summary = run_on(runtime, date(2026, 12, 31))
    assert smtp_server.messages == []
    assert summary.scan.skipped == {"auto-renew": 1}


def test_same_day_twice_sends_nothing_more(runtime, smtp_server):
    for _ in range(5):
        add_mailbox(runtime, expires_on=date(2027, 3, 31))
    first = run_on(runtime, date(2027, 3, 31))
    second = run_on(runtime, date(2027, 3, 31))
    assert first.delivery.sent == 5
    assert second.scan.examined == 0 and second.delivery.sent == 0
    assert len(smtp_server.messages) == 5
    with runtime.session_factory() as session:
        run = session.get(DailyRun, date(2027, 3, 31))
        assert run.finished_at is not None and run.summary["sent"] == 0


def test_two_scans_at_once_write_each_notice_once(runtime, smtp_server):
    for number in range(120):
        add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email=f"titolare{number % 40}@example.it")
    barrier = threading.Barrier(2)
    results = []

    def scan():
        barrier.wait()
        with time_machine.travel(at_morning(date(2027, 3, 24)), tick=False):
            results.append(scan_day(runtime, date(2027, 3, 24)))

    threads = [threading.Thread(target=scan) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(result.notices[("expiry-notice", "-7d")] for result in results) == 120
    assert sum(result.emails[("expiry-notice", "-7d")] for result in results) == 40
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == 120
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 40
    runtime.relay.deliver_due()
    assert sorted(message["To"] for message in received(smtp_server)) == sorted(
        f"titolare{number}@example.it" for number in range(40)
    )


def test_missed_days_send_only_the_most_urgent_notice(runtime, smtp_server):
    add_mailbox(runtime, expires_on=date(2027, 3, 31))
    run_on(runtime, date(2027, 2, 28))  # -1m
    summary = run_on(runtime, date(2027, 3, 25))  # the job did not run on -15d nor on -7d
    assert [message["X-PEC-Renewal-Stage"] for message in received(smtp_server)] == ["-1m", "-7d"]
    assert summary.scan.superseded == 1
    for day in (date(2027, 3, 26), date(2027, 3, 29)):
        run_on(runtime, day)
    assert len(smtp_server.messages) == 2  # -15d is dropped for good


def test_deleted_mailbox_gets_nothing_and_is_not_looked_at_again(runtime, smtp_server):
    mailbox = add_mailbox(runtime, expires_on=date(2027, 3, 31))
    summary = run_on(runtime, date(2027, 6, 30))  # the 91st day after expiry
    assert smtp_server.messages == []
    assert summary.scan.skipped == {"deleted": 1}
    with runtime.session_factory() as session:
        assert session.get(Mailbox, mailbox.id).next_action_on is None


def test_dry_run_changes_nothing(runtime, smtp_server):
    mailbox = add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email="dry@example.it")
    summary = run_on(runtime, date(2027, 3, 31), dry_run=True)
    assert [(p.to_address, p.kind, p.stage, p.mailboxes) for p in summary.scan.planned] == [
        ("dry@example.it", "expiry-notice", "0d", [mailbox.address])
    ]
    assert smtp_server.messages == []
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(OutboxMessage)) == 0
        assert session.scalar(select(func.count()).select_from(NoticeLedgerEntry)) == 0
        assert session.scalar(select(func.count()).select_from(DailyRun)) == 0
        assert session.get(Mailbox, mailbox.id).next_action_on == mailbox.next_action_on


def test_message_id_is_derived_from_the_ledger_keys(runtime, smtp_server):
    add_mailbox(runtime, expires_on=date(2027, 3, 31))
    run_on(runtime, date(2027, 3, 31))
    (message,) = received(smtp_server)
    with runtime.session_factory() as session:
        outbox = session.scalars(select(OutboxMessage)).one()
    assert message["Message-ID"] == f"<{outbox.message_id}>"
    assert outbox.message_id.endswith("@pec-provider.example")


class TestDeliveryFailures:
    def test_451_is_retried_with_backoff_and_delivered_later(self, runtime, smtp_server):
        add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email="later@example.it")
        smtp_server.fail_next("451 4.3.0 Try again later")
        summary = run_on(runtime, date(2027, 3, 31))
        assert summary.delivery.deferred == 1 and smtp_server.messages == []
        with time_machine.travel(at_morning(date(2027, 3, 31)) + timedelta(seconds=30), tick=False):
            assert runtime.relay.deliver_due().handled == 0  # backoff not over
        with time_machine.travel(at_morning(date(2027, 3, 31)) + timedelta(minutes=2), tick=False):
            assert runtime.relay.deliver_due().sent == 1
        assert [message["To"] for message in received(smtp_server)] == ["later@example.it"]

    def test_550_bounces_and_is_not_retried(self, runtime, smtp_server):
        add_mailbox(runtime, expires_on=date(2027, 3, 31), reference_email="nobody@example.it")
        smtp_server.fail_next("550 5.1.1 No such user")
        summary = run_on(runtime, date(2027, 3, 31))
        assert summary.delivery.bounced == 1
        with time_machine.travel(at_morning(date(2027, 4, 1)), tick=False):
            assert runtime.relay.deliver_due().handled == 0
        assert smtp_server.messages == []
        with runtime.session_factory() as session:
            bounce = session.get(BouncedAddress, "nobody@example.it")
            assert bounce.bounces == 1 and "550" in bounce.last_reply
            assert session.scalars(select(OutboxMessage.status)).all() == ["bounced"]

    def test_disconnect_after_data_is_retried_with_the_same_message_id(self, runtime, smtp_server):
        add_mailbox(runtime, expires_on=date(2027, 3, 31))
        smtp_server.disconnect_after_data_next()
        summary = run_on(runtime, date(2027, 3, 31))
        assert summary.delivery.deferred == 1
        with time_machine.travel(at_morning(date(2027, 3, 31)) + timedelta(minutes=5), tick=False):
            assert runtime.relay.deliver_due().sent == 1
        with runtime.session_factory() as session:
            outbox = session.scalars(select(OutboxMessage)).one()
        assert outbox.attempts == 2 and outbox.status == "sent"
        assert [message["Message-ID"] for message in received(smtp_server)][-1] == f"<{outbox.message_id}>"


def test_a_message_the_renderer_refuses_fails_without_retries(runtime, smtp_server):
    add_mailbox(runtime, expires_on=date(2027, 3, 31))
    add_mailbox(runtime, expires_on=date(2027, 3, 31))
    with time_machine.travel(at_morning(date(2027, 3, 31)), tick=False):
        scan_day(runtime, date(2027, 3, 31))
    with runtime.session_factory() as session, session.begin():
        broken = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).first()
        broken.context = {**broken.context, "mailboxes": [{**broken.context["mailboxes"][0], "plan": "gold"}]}
    with time_machine.travel(at_morning(date(2027, 3, 31)), tick=False):
        result = runtime.relay.deliver_due()
    assert (result.sent, result.failed, result.deferred) == (1, 1, 0)
    with runtime.session_factory() as session:
        statuses = session.scalars(select(OutboxMessage.status).order_by(OutboxMessage.id)).all()
    assert statuses == ["failed", "sent"]
    assert len(smtp_server.messages) == 1


def test_a_claim_of_given_ids_takes_only_the_due_pending_ones_up_to_the_limit(session_factory):
    now = datetime(2027, 3, 31, 5, 0, tzinfo=ZoneInfo("UTC"))

    def message(number: int, status: str = "pending", next_attempt_at: datetime | None = None) -> OutboxMessage:
        return outbox_message(
            message_id=f"m{number}@pec-provider.example",
            kind="expiry-notice",
            stage="-15d",
            language="it",
            to_address=f"titolare{number}@example.it",
            business_date=now.date(),
            context={},
            status=status,
            attempts=0,
            next_attempt_at=next_attempt_at,
            created_at=now,
        )

    with session_factory() as session, session.begin():
        session.add_all(
            [
                message(1),
                message(2, status="sent"),
                message(3, next_attempt_at=now + timedelta(minutes=5)),  # deferred, or leased to another relay
                message(4, next_attempt_at=now - timedelta(minutes=1)),  # its retry is due
                message(5),
                message(6),  # not asked for
            ]
        )
    with session_factory() as session, session.begin():
        ids = {m.message_id: m.id for m in session.scalars(select(OutboxMessage))}
        asked = [ids[f"m{n}@pec-provider.example"] for n in (5, 4, 3, 2, 1)]
        claimed = claim_due_messages(session, now, 2, only_ids=asked)
        assert claimed == [ids["m1@pec-provider.example"], ids["m4@pec-provider.example"]]
        assert claim_due_messages(session, now, 10, only_ids=asked) == [ids["m5@pec-provider.example"]]
    with session_factory() as session:
        leased = session.scalars(
            select(OutboxMessage.message_id)
            .join(OutboxQueueEntry)
            .where(OutboxQueueEntry.next_attempt_at == now + CLAIM_LEASE)
        )
        assert sorted(leased) == ["m1@pec-provider.example", "m4@pec-provider.example", "m5@pec-provider.example"]


def test_a_stage_sent_in_an_earlier_cycle_is_sent_again_in_this_one(runtime, session_factory):
    """The ledger is read by mailbox and checked by cycle: last year's -15d does not stop this year's."""
    today = date(2027, 3, 16)
    with session_factory() as session, session.begin():
        renewed = make_mailbox(session, expires_on=date(2027, 3, 31))
        already = make_mailbox(session, expires_on=date(2027, 3, 31))
        for mailbox, cycle in ((renewed, date(2026, 3, 31)), (already, date(2027, 3, 31))):
            session.add(
                NoticeLedgerEntry(
                    mailbox_id=mailbox.id,
                    cycle_expires_on=cycle,
                    stage="-15d",
                    kind="expiry-notice",
                    business_date=cycle - timedelta(days=15),
                )
            )
        ids = [renewed.id, already.id]
    with session_factory() as session, session.begin():
        result = process_notice_batch(
            session,
            ids,
            today=today,
            stages=runtime.settings.notice_stages,
            now=at_morning(today),
            mail_domain="pec-provider.example",
        )
    assert result.notices == {("expiry-notice", "-15d"): 1}
    assert result.skipped["already-sent"] == 1
    assert [planned.mailboxes for planned in result.planned] == [[renewed.address]]


class _StopBeforeSend:
    """The runtime's mailer, stopped by ``SystemExit`` (as a process being shut down) at its first send."""

    def __init__(self, mailer):
        self._mailer = mailer

    def send(self, sender, recipient, data) -> None:
        raise SystemExit("stopped")

    def close(self) -> None:
        self._mailer.close()


class TestStartDay:
    """Beat's firing and run-daily start a business date through one rule (``start_day``)."""

    def test_run_daily_claims_a_free_date_and_a_crash_keeps_beat_off_it_for_the_lease(self, runtime, smtp_server):
        day = date(2027, 3, 31)
        add_mailbox(runtime, expires_on=day)
        runtime.mailer = _StopBeforeSend(runtime.mailer)  # before the relay, which takes the runtime's mailer
        with pytest.raises(SystemExit):
            run_on(runtime, day)  # the scan was written; the process stops at the first send
        with runtime.session_factory() as session:
            run = session.get(DailyRun, day)
            assert run is not None and run.finished_at is None  # claimed, not finished
        with time_machine.travel(at_morning(day) + timedelta(minutes=20), tick=False):
            assert start_day(runtime, day).action is DayAction.NOTHING  # beat leaves the date to its claimant
        with time_machine.travel(at_morning(day) + SCAN_LEASE + timedelta(minutes=1), tick=False):
            taken_over = start_day(runtime, day)  # the lease ran out: beat takes the date over
        assert taken_over.action is DayAction.SCAN and taken_over.batches == []  # the scan had been written

    def test_run_daily_on_a_date_claimed_or_finished_elsewhere_still_runs_to_completion(self, runtime, smtp_server):
        day = date(2027, 3, 31)
        mailbox = add_mailbox(runtime, expires_on=day)
        with time_machine.travel(at_morning(day), tick=False):
            beat = start_day(runtime, day)  # beat claimed the date; its batches are not written yet
            assert (beat.action, beat.batches) == (DayAction.SCAN, [[mailbox.id]])
            assert start_day(runtime, day).action is DayAction.NOTHING
            rerun = start_day(runtime, day, rerun=True)
            assert (rerun.action, rerun.batches) == (DayAction.RERUN, [[mailbox.id]])
        summary = run_on(runtime, day)
        assert summary.delivery.sent == 1
        with runtime.session_factory() as session:
            assert session.get(DailyRun, day).finished_at is not None
        again = run_on(runtime, day)  # a finished date: it runs, and finds nothing more to send
        assert (again.scan.examined, again.delivery.sent, len(smtp_server.messages)) == (0, 0, 1)

    def test_beat_catches_up_only_long_after_the_scan_finished(self, runtime):
        day = date(2027, 3, 31)
        mailbox = add_mailbox(runtime, expires_on=day)
        queued: list[list[int]] = []
        with time_machine.travel(at_morning(day), tick=False):
            assert fan_out_day(runtime, day, queued.append) == 1  # claimed, queued, finished; the batch is lost
            assert start_day(runtime, day).action is DayAction.NOTHING
        with time_machine.travel(at_morning(day) + SCAN_LEASE + timedelta(minutes=1), tick=False):
            assert fan_out_day(runtime, day, queued.append) == 1  # still due: queued again
        assert queued == [[mailbox.id], [mailbox.id]]

    def test_a_dry_run_claims_nothing(self, runtime):
        day = date(2027, 3, 31)
        mailbox = add_mailbox(runtime, expires_on=day)
        with time_machine.travel(at_morning(day), tick=False):
            dry = start_day(runtime, day, dry_run=True)
            assert (dry.action, dry.batches) == (DayAction.DRY_RUN, [[mailbox.id]])
            assert start_day(runtime, day).action is DayAction.SCAN  # the date was still free
