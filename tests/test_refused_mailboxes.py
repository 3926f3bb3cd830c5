"""A mailbox the renderer refuses never stops the other mailboxes of its email.

The address ``usеr3@…`` below has a Cyrillic ``е`` (U+0435) in its local part: sending it
would need SMTPUTF8, which the renderer refuses.  Its notice is left out of the email
shared with the holder's other mailboxes, which goes to them; the refusal is on its ledger
row, in the relay's result and metrics, and in ``report``.  A reference address that cannot
be sent fails its message at once, for good (not retried), with the reason on the message
and on every ledger row of it.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import mailbox as maildir
import os
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.outbox_rows import mark
from tests.support.settings import TEST_SECRET_KEYS, smtp_runtime
from worker import metrics
from worker.cli.main import main
from worker.mail.emails import EmailRenderer
from worker.mail.headers import Refused, header_address
from worker.mail.outbox import requeue_failed_messages
from worker.rules.holder_data import sendable_address
from worker.rules.links import LinkSigner
from worker.services.daily import run_day, scan_day
from worker.services.report import build_report
from worker.services.runtime import Runtime
from worker.store.db import make_engine, make_session_factory
from worker.store.models import NoticeLedgerEntry, OutboxMessage

DAY = date(2027, 3, 31)
MORNING = datetime.combine(DAY, time(6, 0), tzinfo=ZoneInfo("Europe/Rome"))
CYRILLIC_E = "\u0435"
REFUSED_ADDRESS = f"us{CYRILLIC_E}r3@pec.provider.example.it"
NOW = datetime(2027, 1, 31, 6, 0, tzinfo=timezone(timedelta(hours=1)))
#: The refusal reasons (metric labels and ledger prefixes) are a contract: written out here.
NON_ASCII_LOCAL_PART, NOT_AN_ADDRESS, NO_MAILBOX_LEFT = "non-ascii-local-part", "not-an-address", "no-mailbox-left"


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def header_mailboxes(message) -> list[str]:
    return [item.strip() for item in str(message["X-PEC-Renewal-Mailboxes"]).split(",")]


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- The renderer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    signer = LinkSigner(TEST_SECRET_KEYS.split(","), "https://rinnovi.example.test", max_age_days=200)
    return EmailRenderer(mail_from="Rinnovi PEC <rinnovi@pec-provider.example>", signer=signer)


def boxes(*addresses: str) -> list[dict]:
    return [
        {"id": 101 + number, "address": address, "expires_on": "2027-03-31", "plan": "pro", "domain": None}
        for number, address in enumerate(addresses)
    ]


def render(renderer, context, kind="expiry-notice", stage="-2m", to_address="anna@example.it"):
    return renderer.render(
        kind=kind,
        stage=stage,
        language="it",
        to_address=to_address,
        message_id="0123456789abcdef0123456789abcdef@pec-provider.example",
        context=context,
        now=NOW,
    )


@pytest.mark.parametrize(
    ("bad_address", "reason"),
    [
        (REFUSED_ADDRESS, NON_ASCII_LOCAL_PART),
        ("due@@pec.example.it", NOT_AN_ADDRESS),
        ("tre@pec.example.it\r\nBcc: x@example.it", NOT_AN_ADDRESS),
    ],
)
def test_a_refused_mailbox_is_left_out_of_a_notice_and_named_with_its_reason(renderer, bad_address, reason):
    rendered = render(
        renderer, {"holder_name": "Anna", "mailboxes": boxes("uno@pec.example.it", bad_address, "tre@pec.example.it")}
    )
    assert rendered.mailbox_addresses == ("uno@pec.example.it", "tre@pec.example.it")
    ((refused),) = rendered.refused
    assert (refused.mailbox_id, refused.address, refused.reason) == (102, bad_address, reason)
    message = parse(rendered.as_bytes())
    assert header_mailboxes(message) == ["uno@pec.example.it", "tre@pec.example.it"]
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "uno@pec.example.it" in text and "tre@pec.example.it" in text and bad_address not in text
    assert "2 caselle PEC" in message["Subject"]  # the subject counts the mailboxes it names


def test_an_email_whose_every_mailbox_is_refused_is_refused_with_each_reason(renderer):
    with pytest.raises(ValueError, match="every mailbox of the email was refused") as refused:
        render(renderer, {"holder_name": None, "mailboxes": boxes(REFUSED_ADDRESS, "x@@y.example.it")})
    assert refused.value.reason == NO_MAILBOX_LEFT
    assert [(m.mailbox_id, m.reason) for m in refused.value.mailboxes] == [
        (101, NON_ASCII_LOCAL_PART),
        (102, NOT_AN_ADDRESS),
    ]


@pytest.mark.parametrize(
    "reference", [f"ann{CYRILLIC_E}@example.it", "\uff41nna@example.it"], ids=["cyrillic", "full-width"]
)
def test_a_refused_reference_address_refuses_the_email_with_its_reason(renderer, reference):
    with pytest.raises(ValueError, match="needs SMTPUTF8") as refused:
        render(
            renderer,
            {"holder_name": None, "mailboxes": boxes("uno@pec.example.it", "due@pec.example.it")},
            to_address=reference,
        )
    assert refused.value.reason == NON_ASCII_LOCAL_PART


def order_context(*addresses: str) -> dict:
    return {
        "holder_name": "Anna",
        "mailboxes": [{**box, "new_expires_on": "2028-03-31"} for box in boxes(*addresses)],
        "order": {
            "number": "PEC-2027-000001",
            "years": 1,
            "method": "bank_transfer",
            "subtotal_cents": 1000,
            "vat_percent": 22,
            "vat_cents": 220,
            "total_cents": 1220,
            "lines": [],
        },
        "payment": {
            "iban": "IT60X0542811101000000123456",
            "beneficiary": "B",
            "postal_account": "1",
            "checkout_url": "https://rinnovi.example.test/ordine/a/pagamento",
        },
    }


@pytest.mark.parametrize("kind", ["order-confirmation", "renewal-completed"])
def test_an_order_email_is_never_sent_without_one_of_its_mailboxes(renderer, kind):
    """An order's totals cover every mailbox: one refused refuses the email (it is not a list of notices)."""
    rendered = render(renderer, order_context("uno@pec.example.it", "due@pec.example.it"), kind=kind, stage="0d")
    assert len(rendered.mailbox_addresses) == 2 and rendered.refused == ()
    with pytest.raises(ValueError, match="needs SMTPUTF8"):
        render(renderer, order_context("uno@pec.example.it", REFUSED_ADDRESS), kind=kind, stage="0d")


# -- The relay ------------------------------------------------------------------------------


def queue_group_with_one_refused(runtime: Runtime) -> dict[str, int]:
    """Three mailboxes of anna@example.it due on DAY, one of them with a Cyrillic letter; the scan queues one email."""
    with runtime.session_factory() as session, session.begin():
        ids = {
            address: make_mailbox(session, expires_on=DAY, address=address, reference_email="anna@example.it").id
            for address in ("uno@pec.provider.example.it", REFUSED_ADDRESS, "tre@pec.provider.example.it")
        }
    with time_machine.travel(MORNING, tick=False):
        scan = scan_day(runtime, DAY)
    assert sum(scan.emails.values()) == 1
    return ids


def ledger(session_factory) -> dict[int, str | None]:
    with session_factory() as session:
        return dict(session.execute(select(NoticeLedgerEntry.mailbox_id, NoticeLedgerEntry.refused_reason)).all())


def test_the_email_goes_to_the_other_mailboxes_and_the_refused_one_is_recorded(
    tmp_path, database_url, session_factory, smtp_server, caplog
):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    ids = queue_group_with_one_refused(runtime)
    before = sample("pec_renewal_notices_refused_total", reason=NON_ASCII_LOCAL_PART)
    try:
        with time_machine.travel(MORNING, tick=False), caplog.at_level(logging.WARNING, logger="worker.mail.outbox"):
            result = runtime.relay.deliver_due()
    finally:
        runtime.close()
    metrics.record_relay(result)

    assert (result.sent, result.failed, result.deferred) == (1, 0, 0)
    assert result.refused == {NON_ASCII_LOCAL_PART: 1} and not result.refused_emails
    (received,) = smtp_server.messages
    message = parse(received.data)
    assert received.recipients == ("anna@example.it",)
    assert header_mailboxes(message) == ["tre@pec.provider.example.it", "uno@pec.provider.example.it"]
    with session_factory() as session:
        (row,) = session.scalars(select(OutboxMessage)).all()
        assert (row.status, row.last_error) == ("sent", None)
    reasons = ledger(session_factory)
    assert reasons[ids["uno@pec.provider.example.it"]] is None and reasons[ids["tre@pec.provider.example.it"]] is None
    assert reasons[ids[REFUSED_ADDRESS]].startswith("non-ascii-local-part: left out of the email: mailbox address")
    assert REFUSED_ADDRESS in reasons[ids[REFUSED_ADDRESS]]
    assert sample("pec_renewal_notices_refused_total", reason=NON_ASCII_LOCAL_PART) == before + 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"mailbox {ids[REFUSED_ADDRESS]} left out" in line for line in warnings), warnings


def test_a_failed_grouped_email_requeued_goes_out_without_the_refused_mailbox(
    tmp_path, database_url, session_factory, smtp_server
):
    """An email that failed whole before (``refused by the renderer``) goes once requeued."""
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    queue_group_with_one_refused(runtime)
    with session_factory() as session, session.begin():
        (row,) = session.scalars(select(OutboxMessage)).all()
        mark(session, [row.id], "failed", attempts=1, last_error="refused by the renderer: mailbox address …")
    with session_factory() as session, session.begin():
        assert requeue_failed_messages(session) == 1
    try:
        with time_machine.travel(MORNING, tick=False):
            result = runtime.relay.deliver_due()
    finally:
        runtime.close()
    assert result.sent == 1 and len(smtp_server.messages) == 1


def test_a_refused_reference_address_fails_the_message_at_once_and_for_good(
    tmp_path, database_url, session_factory, smtp_server, caplog
):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    bad_reference = f"ann{CYRILLIC_E}@example.it"
    with runtime.session_factory() as session, session.begin():
        refused_ids = [
            make_mailbox(session, expires_on=DAY, address=address, reference_email=bad_reference).id
            for address in ("a@pec.provider.example.it", "b@pec.provider.example.it")
        ]
        fine_id = make_mailbox(session, expires_on=DAY, reference_email="bruno@example.it").id
    with time_machine.travel(MORNING, tick=False):
        scan_day(runtime, DAY)
    emails_before = sample("pec_renewal_emails_refused_total", reason=NON_ASCII_LOCAL_PART)
    try:
        with time_machine.travel(MORNING, tick=False), caplog.at_level(logging.WARNING, logger="worker.mail.outbox"):
            result = runtime.relay.deliver_due()
        # Not retried: nothing of it is due again, however late.
        with time_machine.travel(MORNING + timedelta(days=1), tick=False):
            again = runtime.relay.deliver_due()
    finally:
        runtime.close()
    metrics.record_relay(result)

    assert (result.sent, result.failed, result.deferred) == (1, 1, 0)
    assert result.refused_emails == {NON_ASCII_LOCAL_PART: 1} and result.refused == {NON_ASCII_LOCAL_PART: 2}
    assert again.handled == 0
    assert [m.recipients for m in smtp_server.messages] == [("bruno@example.it",)]
    with session_factory() as session:
        failed = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "failed")).one()
        assert failed.attempts == 1 and failed.next_attempt_at is None
        assert (
            failed.last_error.startswith("refused by the renderer: to_address")
            and "needs SMTPUTF8" in failed.last_error
        )
    reasons = ledger(session_factory)
    assert reasons[fine_id] is None
    for mailbox_id in refused_ids:
        assert reasons[mailbox_id].startswith("non-ascii-local-part: the email was refused: to_address"), reasons
    assert sample("pec_renewal_emails_refused_total", reason=NON_ASCII_LOCAL_PART) == emails_before + 1
    assert any("refused by the renderer" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_report_counts_the_refused_notices_of_the_last_run(tmp_path, database_url, session_factory, smtp_server):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    with runtime.session_factory() as session, session.begin():
        for address in ("uno@pec.provider.example.it", REFUSED_ADDRESS):
            make_mailbox(session, expires_on=DAY, address=address, reference_email="anna@example.it")
        make_mailbox(session, expires_on=DAY, reference_email=f"ann{CYRILLIC_E}@example.it")
    try:
        with time_machine.travel(MORNING, tick=False):
            summary = run_day(runtime, DAY)
        with session_factory() as session:
            report = build_report(
                session, start=DAY, days=1, stages=runtime.settings.notice_stages, plan=runtime.charge_plan
            )
    finally:
        runtime.close()
    assert (summary.delivery.sent, summary.delivery.failed) == (1, 1)
    assert report.last_run["refused"] == 2  # the mailbox left out, and the one whose reference address is refused
    assert json.loads(json.dumps(report.as_dict()))["last_run"]["refused"] == 2


# -- The command ----------------------------------------------------------------------------


def test_run_daily_sends_the_email_without_the_refused_mailbox_and_warns(tmp_path):
    """``pec-renewal run-daily`` on the embedded default: the holder gets the email about the
    mailbox that can be named; stderr has a warning naming the one left out."""
    var = tmp_path / "var"
    env = {**os.environ, "PEC_RENEWAL_VAR_DIR": str(var), "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS}
    upgrade = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "db", "upgrade"], env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr
    engine = make_engine(f"sqlite:///{var / 'pec-renewal.sqlite3'}")
    try:
        with make_session_factory(engine)() as session, session.begin():
            for address in ("uno@pec.provider.example.it", REFUSED_ADDRESS):
                make_mailbox(session, expires_on=DAY, address=address, reference_email="anna@example.it")
    finally:
        engine.dispose()
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli.main", "run-daily", "--date", DAY.isoformat()],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 1," in result.stdout, result.stdout
    assert "warning: 1 mailbox notice(s) refused by the renderer (non-ascii-local-part 1)" in result.stdout, (
        result.stdout
    )
    warnings = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(entry["level"] == "WARNING" and "left out of the email" in entry["message"] for entry in warnings), (
        result.stderr
    )
    (message,) = [parse(m.as_bytes()) for m in maildir.Maildir(var / "mail", create=False)]
    assert header_mailboxes(message) == ["uno@pec.provider.example.it"]
    assert str(message["To"]) == "anna@example.it"


def test_outbox_retry_leaves_an_email_refused_by_the_renderer_failed(
    tmp_path, database_url, session_factory, smtp_server
):
    """Sending it again unchanged would fail again: ``outbox retry`` requeues only the others, and says how to
    send the refused one once its data is corrected."""
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    with runtime.session_factory() as session, session.begin():
        make_mailbox(session, expires_on=DAY, reference_email=f"ann{CYRILLIC_E}@example.it")
        make_mailbox(session, expires_on=DAY, reference_email="bruno@example.it")
    try:
        with time_machine.travel(MORNING, tick=False):
            scan_day(runtime, DAY)
            runtime.relay.deliver_due()
    finally:
        runtime.close()
    with session_factory() as session, session.begin():
        refused = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "failed")).one()
        other = session.scalars(select(OutboxMessage).where(OutboxMessage.status == "sent")).one()
        # its attempts ran out: failed, as the relay leaves it (with its queue row)
        mark(session, [other.id], "failed", last_error="SMTP 451 try again later")
    env = {
        f"PEC_RENEWAL_{name.upper()}": str(value)
        for name, value in {
            "database_url": database_url,
            "var_dir": tmp_path / "var",
            "secret_keys": TEST_SECRET_KEYS,
        }.items()
    }
    result = CliRunner().invoke(main, ["outbox", "retry"], env=env)
    assert result.exit_code == 0, result.output
    assert "requeued 1 failed message(s)" in result.output and "notices resend ADDRESS" in result.output
    with session_factory() as session:
        assert session.get(OutboxMessage, refused.id).status == "failed"
        assert session.get(OutboxMessage, other.id).status == "pending"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("a" * 65 + "@pec.example.it", NOT_AN_ADDRESS),
        ("anna@ex\u0430mple.it", "invalid-domain"),  # a Cyrillic а among Latin letters
        ("\uff41nna@example.it", NON_ASCII_LOCAL_PART),  # a full-width a
        ("anna@" + "d" * 63 + "." + "e" * 63 + "." + "f" * 63 + "." + "g" * 60 + ".it", "invalid-domain"),
    ],
)
def test_the_renderer_refuses_what_the_import_refuses(address, reason):
    """One rule for a sendable address: what the import refuses at the door never reaches a header."""
    with pytest.raises(ValueError):
        sendable_address(address)
    with pytest.raises(Refused) as refused:
        header_address(address, "to_address")
    assert refused.value.reason == reason


def test_a_unicode_domain_takes_its_idna_2008_form():
    """IDNA 2003 would turn faß.de into fass.de, another domain."""
    assert header_address("anna@faß.de") == "anna@xn--fa-hia.de"
