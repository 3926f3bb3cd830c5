"""An auto-renew charge answered "requires authentication", end to end through the sandbox: the
email (loopback SMTP), its signed link, the page, the sandbox's 3-D Secure challenge, and the
renewal, once; or, never authenticated, charge-failed with its unpaid order on the last charge day."""

from __future__ import annotations

import email
import email.policy
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select, update

from tests.support.charges import CHARGE_DAY, EXPIRES, mark_charge_notice_sent
from tests.support.factories import make_mailbox
from tests.support.link_handler import close_runtime, csrf_token, link_path, row_counts, runtime_on_test_database
from tests.support.settings import make_settings
from worker.gateways.base import ChargeOutcome, ChargeResult
from worker.services import charges
from worker.services.daily import run_day
from worker.store.models import (
    ChargeIntent,
    GatewayRefund,
    Invoice,
    Mailbox,
    NoticeLedgerEntry,
    PlatformEvent,
    RenewalOrder,
    SandboxChallenge,
    SandboxCharge,
)
from worker.web import create_app

LAST_CHARGE_DAY = EXPIRES - timedelta(days=1)


def _messages(smtp_server):
    return [email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_server.messages]


def _text(message) -> str:
    return message.get_body(("plain",)).get_content()


def _path(url: str) -> str:
    return url.removeprefix("https://rinnovi.example.test")


@pytest.fixture
def runtime(tmp_path, database_url, session_factory, clock, smtp_server):
    """The link handler's runtime, mailing through the loopback SMTP server."""
    settings = make_settings(
        tmp_path, database_url=database_url, mail_backend="smtp", smtp_host=smtp_server.host, smtp_port=smtp_server.port
    )
    built = runtime_on_test_database(settings, session_factory, clock)
    yield built
    close_runtime(built)


@pytest.fixture
def client(runtime):
    return create_app(runtime).test_client()


@pytest.fixture
def waiting(runtime, session_factory, clock, smtp_server):
    """A mailbox whose charge on its charge day asked for authentication; the email's link (a path)."""
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(
            session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_authenticationRequired"
        )
        mark_charge_notice_sent(session, mailbox)
        session.flush()
        mailbox_id = mailbox.id
    clock.today = CHARGE_DAY
    run_day(runtime, CHARGE_DAY)
    (asked,) = _messages(smtp_server)
    assert asked["X-PEC-Renewal-Kind"] == "charge-authentication-required"
    text = _text(asked)
    assert "30 marzo 2027" in text and "non faremo altri tentativi" in text
    (link,) = [word for word in text.split() if "/rinnovo-automatico/autenticazione/" in word]
    return mailbox_id, _path(link)


def _days(runtime, clock, first: date, last: date) -> None:
    day = first
    while day <= last:
        clock.today = day
        run_day(runtime, day)
        day += timedelta(days=1)


def test_approved_on_the_sandbox_challenge_renews_once(client, runtime, session_factory, clock, smtp_server, waiting):
    mailbox_id, link = waiting
    with session_factory() as session:
        mailbox = session.get_one(Mailbox, mailbox_id)
        renewal_link = link_path(runtime, mailbox)
    # The mailbox's link page says the charge waits for the holder, not that a charge will come.
    page = client.get(renewal_link).get_data(as_text=True)
    assert "attende la Sua autenticazione" in page and "7 giorni prima della scadenza" not in page
    assert 'href="/rinnovo-automatico/autenticazione/' in page
    # So does its auto-renew page.
    page = client.get("/rinnovo-automatico/" + runtime.signer.auto_renew_token(mailbox_id)).get_data(as_text=True)
    assert "attende la Sua autenticazione" in page and "nessuno per questa scadenza" not in page
    assert 'href="/rinnovo-automatico/autenticazione/' in page
    before = row_counts(session_factory)
    html = client.get(link).get_data(as_text=True)
    assert "Autentica il pagamento" in html and "30 marzo 2027" in html
    assert row_counts(session_factory) == before  # GET writes nothing
    assert client.post(link, data={}).status_code == 400  # no CSRF token
    response = client.post(link, data={"csrf_token": csrf_token(html)})
    assert response.status_code == 303
    challenge = response.headers["Location"]
    assert challenge.startswith("/sandbox/3ds/")
    opened = row_counts(session_factory)
    assert opened == {**before, "sandbox_challenges": 1}  # the sandbox records the challenge it opens
    challenge_page = client.get(challenge)
    assert challenge_page.status_code == 200 and row_counts(session_factory) == opened
    challenge_html = challenge_page.get_data(as_text=True)
    assert "Approva" in challenge_html and "Rifiuta" in challenge_html
    approved = client.post(f"{challenge}/approva", data={"csrf_token": csrf_token(challenge_html)})
    assert approved.status_code == 303 and approved.headers["Location"] == f"{link}/esito"
    assert "Rinnovo completato" in client.get(link).get_data(as_text=True)

    renewed = date(2028, 3, 31)
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == renewed
        assert session.scalars(select(ChargeIntent.status)).all() == ["succeeded"]
        assert session.scalars(select(SandboxCharge.outcome)).all() == ["succeeded"]
        assert session.scalars(select(SandboxChallenge.status)).all() == ["approved"]
        assert session.scalar(select(func.count()).select_from(Invoice)) == 1
        assert (
            session.scalar(
                select(NoticeLedgerEntry.kind).where(
                    NoticeLedgerEntry.stage == "-7d", NoticeLedgerEntry.mailbox_id == mailbox_id
                )
            )
            == "charge-succeeded"
        )
        intent_id = session.scalar(select(ChargeIntent.id))
    # The gateway's webhook arriving after the return page renews nothing more.
    again = charges.finish_authentication(
        runtime.session_factory,
        runtime.gateway,
        intent_id,
        today=CHARGE_DAY,
        clock=runtime.clock,
        mail_domain=runtime.mail_domain,
        answer=ChargeResult(ChargeOutcome.SUCCEEDED, "sbx", "authenticated"),
    )
    assert again.outcome == "skipped"
    _days(runtime, clock, CHARGE_DAY + timedelta(days=1), EXPIRES)
    kinds = [message["X-PEC-Renewal-Kind"] for message in _messages(smtp_server)]
    assert kinds == ["charge-authentication-required", "charge-succeeded"]
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == renewed
        assert session.scalar(select(func.count()).select_from(SandboxCharge)) == 1
        renewed_events = session.scalar(
            select(func.count()).select_from(PlatformEvent).where(PlatformEvent.type == "mailbox.renewed")
        )
        assert renewed_events == 1


def test_refused_then_never_authenticated_fails_on_the_last_charge_day(
    client, runtime, session_factory, clock, smtp_server, waiting
):
    mailbox_id, link = waiting
    html = client.get(link).get_data(as_text=True)
    challenge = client.post(link, data={"csrf_token": csrf_token(html)}).headers["Location"]
    challenge_html = client.get(challenge).get_data(as_text=True)
    refused = client.post(f"{challenge}/rifiuta", data={"csrf_token": csrf_token(challenge_html)})
    assert refused.status_code == 303
    back = client.get(refused.headers["Location"]).get_data(as_text=True)
    assert "Autentica di nuovo" in back and "30 marzo 2027" in back
    with session_factory() as session:
        assert session.scalars(select(SandboxChallenge.status)).all() == ["refused"]
        assert session.scalars(select(ChargeIntent.status)).all() == ["requires_authentication"]
    _days(runtime, clock, CHARGE_DAY + timedelta(days=1), LAST_CHARGE_DAY - timedelta(days=1))
    assert [m["X-PEC-Renewal-Kind"] for m in _messages(smtp_server)] == ["charge-authentication-required"]
    _days(runtime, clock, LAST_CHARGE_DAY, LAST_CHARGE_DAY)
    failed = _messages(smtp_server)[-1]
    assert (failed["X-PEC-Renewal-Kind"], failed["X-PEC-Renewal-Stage"]) == ("charge-failed", "-1d")
    with session_factory() as session:
        order = session.scalar(select(RenewalOrder))
        assert (order.status, order.origin) == ("awaiting_payment", "auto_renew_failed")
        assert session.scalar(select(func.count()).select_from(SandboxCharge)) == 1  # no second attempt
        assert session.get_one(Mailbox, mailbox_id).expires_on == EXPIRES
    assert order.order_number in _text(failed)
    # The authentication page now leads to that order, and authenticates nothing any more.
    html = client.get(link).get_data(as_text=True)
    assert "Rinnovo automatico non riuscito" in html and "/rinnova/" in html and "csrf_token" not in html
    response = client.post(link, data={"csrf_token": csrf_token(back)})
    assert response.status_code == 303 and response.headers["Location"] == link
    # Authenticated on a gateway's page left open: too late for this charge, the money goes back.
    with session_factory() as session, session.begin():
        intent_id, reference = session.execute(select(ChargeIntent.id, ChargeIntent.reference)).one()
        session.execute(update(SandboxCharge).values(outcome="succeeded"))
    late = charges.finish_authentication(
        runtime.session_factory,
        runtime.gateway,
        intent_id,
        today=LAST_CHARGE_DAY,
        clock=runtime.clock,
        mail_domain=runtime.mail_domain,
        answer=ChargeResult(ChargeOutcome.SUCCEEDED, reference, "authenticated"),
    )
    assert late.outcome == "succeeded-refunded"
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == EXPIRES
        assert session.scalars(select(GatewayRefund.status)).all() == ["succeeded"]
        assert session.scalar(select(RenewalOrder.status)) == "awaiting_payment"


def test_a_forged_or_foreign_token_opens_nothing(client, runtime, waiting):
    _mailbox_id, link = waiting
    assert client.get(link + "x").status_code == 404
    foreign = "/rinnovo-automatico/autenticazione/" + runtime.signer.auto_renew_token(1)
    assert client.get(foreign).status_code == 404
    assert client.get("/sandbox/3ds/" + "A" * 32).status_code == 404


def test_authenticated_after_auto_renew_was_switched_off_is_refunded(runtime, session_factory, waiting):
    mailbox_id, _link = waiting
    with session_factory() as session, session.begin():
        session.get_one(Mailbox, mailbox_id).auto_renew = False
        intent_id = session.scalar(select(ChargeIntent.id))
        reference = session.scalar(select(ChargeIntent.reference))
        session.execute(update(SandboxCharge).values(outcome="succeeded"))  # the holder authenticated it
    run = charges.finish_authentication(
        runtime.session_factory,
        runtime.gateway,
        intent_id,
        today=CHARGE_DAY,
        clock=runtime.clock,
        mail_domain=runtime.mail_domain,
        answer=ChargeResult(ChargeOutcome.SUCCEEDED, reference, "authenticated"),
    )
    assert run.outcome == "succeeded-refunded"
    with session_factory() as session:
        assert session.get_one(Mailbox, mailbox_id).expires_on == EXPIRES
        assert session.scalars(select(GatewayRefund.status)).all() == ["succeeded"]
        assert session.scalars(select(ChargeIntent.status)).all() == ["succeeded"]
