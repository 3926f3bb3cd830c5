"""Opting out of the expiry reminders, on PostgreSQL with the loopback SMTP server: the List-Unsubscribe
headers of real messages, the scan that honours an opt-out, its end at renewal, and ``mailbox show``."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import time_machine
from sqlalchemy import select

from tests.support.charges import add_auto_renew, at_morning, received, run_on, walk
from tests.support.factories import make_mailbox
from tests.support.renewals import place_order, register
from worker.cli.desk import format_mailbox
from worker.rules.links import redact
from worker.rules.notices import OPTED_OUT
from worker.services import desk, reminders
from worker.store.models import Mailbox, OutboxMessage

EXPIRES = date(2027, 3, 31)
NOW = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)
_UNSUBSCRIBE_RE = re.compile(r"<(https://rinnovi\.example\.test/avvisi/([A-Za-z0-9_\-.]+))>")


def add_mailbox(rt, **kwargs) -> Mailbox:
    with rt.session_factory() as session, session.begin():
        return make_mailbox(session, **kwargs)


def unsubscribe_token(message) -> str:
    match = _UNSUBSCRIBE_RE.fullmatch(message["List-Unsubscribe"])
    assert match, message["List-Unsubscribe"]
    return match.group(2)


def message_id_of_link(rt, message, day: date) -> str:
    """The Message-ID the email's List-Unsubscribe link names, read as the link handler does on ``day``."""
    with time_machine.travel(at_morning(day), tick=False):
        return rt.signer.read_reminders_token(unsubscribe_token(message))


def opt_out_for(rt, mailbox_id: int):
    with rt.session_factory() as session:
        return session.get(Mailbox, mailbox_id).reminders_opt_out_for


def test_a_grouped_reminder_carries_one_link_that_opts_all_its_mailboxes_out(runtime, smtp_server):
    boxes = [add_mailbox(runtime, expires_on=EXPIRES, reference_email="studio@example.it") for _ in range(3)]
    other = add_mailbox(runtime, expires_on=EXPIRES, reference_email="altro@example.it")
    run_on(runtime, date(2026, 12, 31))  # -3m
    studio = next(message for message in received(smtp_server) if message["To"] == "studio@example.it")
    assert studio["X-PEC-Renewal-Kind"] == "expiry-notice"
    assert studio["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    message_id = message_id_of_link(runtime, studio, date(2027, 1, 5))
    assert f"<{message_id}>" == studio["Message-ID"]

    with runtime.session_factory() as session:
        view = reminders.opt_out(session, message_id, today=date(2027, 1, 5), now=NOW, via=reminders.ONE_CLICK)
        session.commit()
    assert [mailbox.opted_out for mailbox in view.mailboxes] == [True, True, True]
    assert {opt_out_for(runtime, box.id) for box in boxes} == {EXPIRES}
    assert opt_out_for(runtime, other.id) is None  # not in that email

    before = len(smtp_server.messages)
    summary = run_on(runtime, date(2027, 1, 31))  # -2m
    assert [message["To"] for message in received(smtp_server)[before:]] == ["altro@example.it"]
    assert summary.scan.skipped[OPTED_OUT] == 3

    with runtime.session_factory() as session:
        reminders.opt_back_in(session, message_id, today=date(2027, 2, 1))
        session.commit()
    before = len(smtp_server.messages)
    run_on(runtime, date(2027, 2, 28))  # -1m: the reminders come again
    studio = next(message for message in received(smtp_server)[before:] if message["To"] == "studio@example.it")
    assert studio["X-PEC-Renewal-Mailboxes"] == ",".join(sorted(box.address for box in boxes))


def test_an_opt_out_is_idempotent_and_keeps_its_first_date(runtime, smtp_server):
    box = add_mailbox(runtime, expires_on=EXPIRES)
    run_on(runtime, date(2026, 12, 31))
    message_id = message_id_of_link(runtime, received(smtp_server)[0], date(2027, 1, 5))
    for hour in (9, 10):
        with runtime.session_factory() as session:
            later = NOW.replace(hour=hour)
            reminders.opt_out(session, message_id, today=date(2027, 1, 5), now=later, via=reminders.ONE_CLICK)
            session.commit()
    with runtime.session_factory() as session:
        mailbox = session.get(Mailbox, box.id)
        assert (mailbox.reminders_opt_out_for, mailbox.reminders_opt_out_at, mailbox.reminders_opt_out_via) == (
            EXPIRES,
            NOW.replace(hour=9),
            "one-click",
        )


def test_an_opted_out_mailbox_gets_no_reminder_to_the_end_yet_its_next_cycle_does(runtime, smtp_server):
    """Opted out at -3m: nothing more down to +83d.  Renewed (a bank transfer registered), the opt-out
    no longer applies: the next cycle's reminders come."""
    box = add_mailbox(runtime, expires_on=EXPIRES, address="user1@pec.example.it")
    run_on(runtime, date(2026, 12, 31))
    message_id = message_id_of_link(runtime, received(smtp_server)[0], date(2027, 1, 5))
    with runtime.session_factory() as session:
        reminders.opt_out(session, message_id, today=date(2026, 12, 31), now=NOW, via=reminders.REMINDERS_PAGE)
        session.commit()
    assert walk(runtime, smtp_server, date(2027, 1, 1), date(2027, 3, 20)) == []

    order = place_order(runtime.session_factory, runtime.settings, plan="standard", years=1, today=date(2027, 3, 21))
    register(runtime.session_factory, runtime.settings, order, date(2027, 3, 22))
    with runtime.session_factory() as session:
        mailbox = session.get(Mailbox, box.id)
        assert mailbox.expires_on == date(2028, 3, 31)
        (opt_out,) = desk.mailbox_details(
            session, mailbox, today=date(2027, 3, 22), stages=runtime.settings.notice_stages,
            plan=runtime.charge_plan,
        )["opt_outs"]  # fmt: skip
        assert (opt_out["cycle_expires_on"], opt_out["via"], opt_out["in_force"]) == ("2027-03-31", "page", False)
    sent = walk(runtime, smtp_server, date(2027, 12, 30), date(2027, 12, 31))
    assert sent == [
        # The order's receipt, queued when it was paid, goes out with the next run: it is not a
        # reminder, and an opt-out never held it back.  (Its confirmation, still unsent when the
        # payment was registered, was withdrawn: it would have asked for a payment already made.)
        (date(2027, 12, 30), "renewal-completed", "0d"),
        (date(2027, 12, 31), "expiry-notice", "-3m"),
    ]


def test_charge_emails_keep_coming_after_an_opt_out(runtime, smtp_server):
    box = add_auto_renew(runtime, "pm_card_visa")
    with runtime.session_factory() as session:
        reminders.opt_out_cycles(
            session, [(box.id, EXPIRES)], today=date(2027, 2, 1), now=NOW, via=reminders.RENEWAL_PAGE
        )
        session.commit()
    sent = walk(runtime, smtp_server, date(2027, 3, 1), date(2027, 3, 24))
    assert [kind for _day, kind, _stage in sent] == ["charge-notice", "charge-succeeded"]
    assert all(message["List-Unsubscribe"] is None for message in received(smtp_server))


def test_mailbox_show_lists_an_opt_out_in_force(runtime, smtp_server):
    box = add_mailbox(runtime, expires_on=EXPIRES)
    with runtime.session_factory() as session:
        reminders.opt_out_cycles(session, [(box.id, EXPIRES)], today=date(2027, 1, 5), now=NOW, via=reminders.ONE_CLICK)
        session.commit()
        mailbox = session.get(Mailbox, box.id)
        details = desk.mailbox_details(
            session, mailbox, today=date(2027, 1, 5), stages=runtime.settings.notice_stages, plan=runtime.charge_plan
        )
    assert details["opt_outs"] == [
        {
            "what": "opted out of the expiry reminders",
            "cycle_expires_on": "2027-03-31",
            "opted_out_at": "2027-01-05T09:00:00+00:00",
            "via": "one-click",
            "in_force": True,
            "ended": None,
        }
    ]
    # The forecast knows it too: no reminder is coming for this cycle.
    assert details["next_action"] is None
    text = format_mailbox(details)  # mailbox show, at 80 columns
    assert "Opt-outs (1)" in text
    assert "opted out of the expiry reminders for the expiry of 2027-03-31" in text and "in force" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_an_opt_out_covers_only_the_cycle_and_the_mailboxes_the_email_was_about(runtime, smtp_server):
    box = add_mailbox(runtime, expires_on=EXPIRES)
    with runtime.session_factory() as session:
        # A link of an earlier cycle, a deleted cycle: nothing is opted out.
        assert reminders.opt_out_cycles(session, [(box.id, date(2026, 3, 31))], today=date(2027, 1, 5), now=NOW,
                                     via=reminders.ONE_CLICK) == 0  # fmt: skip
        session.commit()
    assert opt_out_for(runtime, box.id) is None


def test_a_non_reminder_email_names_no_mailboxes_to_opt_out(runtime, smtp_server):
    box = add_auto_renew(runtime, "pm_card_visa")
    walk(runtime, smtp_server, date(2027, 3, 1), date(2027, 3, 1))
    with runtime.session_factory() as session:
        charge_notice = session.scalars(select(OutboxMessage)).one()
        assert charge_notice.kind == "charge-notice"
        assert reminders.describe_reminders(session, charge_notice.message_id, date(2027, 3, 2)) is None
        assert reminders.opt_out(session, charge_notice.message_id, today=date(2027, 3, 2), now=NOW,
                                        via=reminders.ONE_CLICK) is None  # fmt: skip
        assert reminders.describe_reminders(session, "nothing@pec-provider.example", date(2027, 3, 2)) is None
    assert opt_out_for(runtime, box.id) is None


def test_the_message_holds_the_token_only_in_its_headers_and_no_log_line_does(runtime, smtp_server, caplog):
    add_mailbox(runtime, expires_on=EXPIRES)
    caplog.set_level("DEBUG")
    run_on(runtime, date(2026, 12, 31))
    token = unsubscribe_token(received(smtp_server)[0])
    # Every line the worker logged while it rendered and sent the email (the test SMTP server's own
    # debug lines, "mail.log", show what it received, and are not the worker's).
    worker_lines = [record.getMessage() for record in caplog.records if not record.name.startswith("mail.log")]
    assert worker_lines and not any(token in line for line in worker_lines)
    assert token not in redact(received(smtp_server)[0]["List-Unsubscribe"])
