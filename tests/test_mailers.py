"""The mail adapters against a real SMTP server on loopback (aiosmtpd), and the Maildir."""

from __future__ import annotations

import email
import email.policy
import io
import mailbox
import socket
from datetime import UTC, datetime

import pytest
from aiosmtpd.smtp import AuthResult

from tests.support.settings import make_settings
from tests.support.smtp_server import LoopbackSMTPServer
from worker.mail.emails import EmailRenderer
from worker.mail.mailers import ConsoleMailer, DeliveryError, MaildirMailer, SMTPMailer, make_mailer
from worker.rules.links import LinkSigner

SENDER = "rinnovi@pec-provider.example.it"


def message(number: int = 1) -> bytes:
    """A small message with a line that starts with a dot (SMTP dot-stuffing must undo it)."""
    return (
        f"From: Rinnovi PEC <{SENDER}>\r\n"
        f"To: mario@example.it\r\n"
        f"Subject: test {number}\r\n"
        f"Message-ID: <test-{number}@pec-provider.example.it>\r\n"
        "\r\n"
        "first line\r\n"
        ".a line that starts with a dot\r\n"
        "..two dots\r\n"
    ).encode("ascii")


@pytest.fixture(params=["plain", "pipelining"])
def smtp_server(request):
    """Every SMTP test runs twice: against a server without PIPELINING (smtplib's
    sendmail, four round trips) and one with it (MAIL, RCPT and DATA in one write)."""
    server = LoopbackSMTPServer(pipelining=request.param == "pipelining")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailer(smtp_server):
    mailer = SMTPMailer(smtp_server.host, smtp_server.port, timeout=5.0, local_hostname="client.example.it")
    yield mailer
    mailer.close()


def test_a_message_arrives_intact(smtp_server, mailer):
    mailer.send(SENDER, "mario@example.it", message())
    [received] = smtp_server.messages
    assert received.sender == SENDER
    assert received.recipients == ("mario@example.it",)
    assert received.data == message()


def test_a_rendered_email_arrives_intact_and_parses(smtp_server, mailer):
    renderer = EmailRenderer(
        mail_from=f"Rinnovi PEC <{SENDER}>",
        signer=LinkSigner(["k" * 40], "https://rinnovi.example.it", max_age_days=200),
    )
    rendered = renderer.render(
        kind="expired-notice",
        stage="+1d",
        language="it",
        to_address="mario@example.it",
        message_id="abc123@pec-provider.example.it",
        context={
            "holder_name": "Mario Rossi",
            "mailboxes": [
                {"id": 7, "address": "mario@pec.example.it", "expires_on": "2027-03-31", "plan": "pro", "domain": None}
            ],
        },
        now=datetime(2027, 4, 1, 5, 0, tzinfo=UTC),
    )
    mailer.send(rendered.sender, rendered.recipient, rendered.as_bytes())
    [received] = smtp_server.messages
    assert received.data == rendered.as_bytes()
    parsed = email.message_from_bytes(received.data, policy=email.policy.default)
    assert parsed["Subject"] == rendered.subject
    assert parsed["X-PEC-Renewal-Stage"] == "+1d"


def test_one_connection_is_reused_across_sends(smtp_server, mailer):
    for number in range(5):
        mailer.send(SENDER, f"user{number}@example.it", message(number))
    assert len(smtp_server.messages) == 5
    assert smtp_server.connections == 1
    assert mailer.connections_opened == 1


def test_451_is_transient_and_the_next_send_works_on_the_same_connection(smtp_server, mailer):
    mailer.send(SENDER, "first@example.it", message(1))
    smtp_server.fail_next("451 4.3.0 Try again later")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(2))
    assert caught.value.permanent is False
    assert caught.value.smtp_code == 451
    assert "Try again later" in str(caught.value)

    mailer.send(SENDER, "mario@example.it", message(3))
    assert [m.data for m in smtp_server.messages] == [message(1), message(3)]
    assert smtp_server.connections == 1  # RSET kept the session usable


def test_550_is_permanent(smtp_server, mailer):
    smtp_server.fail_next("550 5.1.1 No such user")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "nobody@example.it", message())
    assert caught.value.permanent is True
    assert caught.value.smtp_code == 550

    mailer.send(SENDER, "mario@example.it", message(2))
    assert [m.recipients for m in smtp_server.messages] == [("mario@example.it",)]
    assert smtp_server.connections == 1


def test_5xx_after_data_is_permanent_and_4xx_after_data_transient(smtp_server, mailer):
    smtp_server.fail_next("554 5.6.0 Message refused", at="data")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(1))
    assert (caught.value.permanent, caught.value.smtp_code) == (True, 554)

    smtp_server.fail_next("452 4.3.1 Insufficient system storage", at="data")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(2))
    assert (caught.value.permanent, caught.value.smtp_code) == (False, 452)

    mailer.send(SENDER, "mario@example.it", message(3))
    assert [m.data for m in smtp_server.messages] == [message(3)]


def test_a_refused_sender_is_not_the_recipients_fault(smtp_server, mailer):
    smtp_server.fail_next("553 5.7.1 Sender address rejected", at="mail")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message())
    assert (caught.value.permanent, caught.value.smtp_code) == (False, 553)


def test_disconnect_after_data_is_transient_and_the_mailer_recovers(smtp_server, mailer):
    mailer.send(SENDER, "mario@example.it", message(1))
    smtp_server.disconnect_after_data_next()
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(2))
    assert caught.value.permanent is False
    assert caught.value.smtp_code is None

    mailer.send(SENDER, "mario@example.it", message(3))
    assert [m.data for m in smtp_server.messages] == [message(1), message(3)]
    assert smtp_server.connections == 2
    assert mailer.connections_opened == 2


def test_421_closes_the_connection_and_the_next_send_reconnects(smtp_server, mailer):
    smtp_server.fail_next("421 4.3.2 Service shutting down", at="mail")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(1))
    assert (caught.value.permanent, caught.value.smtp_code) == (False, 421)

    mailer.send(SENDER, "mario@example.it", message(2))
    assert smtp_server.connections == 2
    assert [m.data for m in smtp_server.messages] == [message(2)]


def test_an_idle_connection_is_checked_with_noop_and_replaced_when_dead(smtp_server):
    now = [1000.0]
    mailer = SMTPMailer(
        smtp_server.host, smtp_server.port, timeout=5.0, local_hostname="client.example.it", clock=lambda: now[0]
    )
    try:
        mailer.send(SENDER, "mario@example.it", message(1))
        now[0] += 10
        mailer.send(SENDER, "mario@example.it", message(2))
        assert smtp_server.noops == 0  # used recently: no check

        now[0] += 31
        mailer.send(SENDER, "mario@example.it", message(3))
        assert smtp_server.noops == 1 and smtp_server.connections == 1  # alive: reused

        smtp_server.drop_connections()  # the server hangs up on the idle client
        now[0] += 31
        mailer.send(SENDER, "mario@example.it", message(4))
        assert smtp_server.connections == 2
        assert [m.data for m in smtp_server.messages] == [message(n) for n in (1, 2, 3, 4)]
    finally:
        mailer.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
def test_login_when_a_user_is_set():
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"secret", handled=False)

    server = LoopbackSMTPServer(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    server.start()
    try:
        good = SMTPMailer(server.host, server.port, user="relay", password="secret", local_hostname="client.example.it")
        good.send(SENDER, "mario@example.it", message())
        good.close()
        assert len(server.messages) == 1 and logins[0][1:] == (b"relay", b"secret")

        bad = SMTPMailer(server.host, server.port, user="relay", password="wrong", local_hostname="client.example.it")
        with pytest.raises(DeliveryError) as caught:
            bad.send(SENDER, "mario@example.it", message())
        assert (caught.value.permanent, caught.value.smtp_code) == (False, 535)  # our configuration, not a bounce
    finally:
        server.stop()


def test_connection_refused_is_transient():
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mailer = SMTPMailer("127.0.0.1", port, timeout=5.0, local_hostname="client.example.it")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message())
    assert caught.value.permanent is False
    assert caught.value.smtp_code is None
    assert "cannot connect" in str(caught.value)


def test_a_server_that_never_answers_times_out_as_transient():
    with socket.socket() as silent:  # accepts connections (backlog) but never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mailer = SMTPMailer("127.0.0.1", silent.getsockname()[1], timeout=0.2, local_hostname="client.example.it")
        with pytest.raises(DeliveryError) as caught:
            mailer.send(SENDER, "mario@example.it", message())
    assert caught.value.permanent is False
    assert "timed out" in str(caught.value)


def test_close_then_send_reconnects(smtp_server, mailer):
    mailer.send(SENDER, "mario@example.it", message(1))
    mailer.close()
    mailer.close()  # closing twice is harmless
    mailer.send(SENDER, "mario@example.it", message(2))
    assert smtp_server.connections == 2 and len(smtp_server.messages) == 2


def test_line_breaks_in_envelope_addresses_are_refused(smtp_server, mailer, tmp_path):
    for backend in (mailer, MaildirMailer(tmp_path / "mail"), ConsoleMailer(io.StringIO())):
        with pytest.raises(ValueError):
            backend.send(SENDER, "mario@example.it\r\nRCPT TO:<victim@example.it>", message())
    assert smtp_server.messages == []


def test_maildir_backend_is_readable_by_mailbox_maildir(tmp_path):
    path = tmp_path / "mail"
    mailer = MaildirMailer(path)
    mailer.send(SENDER, "mario@example.it", message(1))
    mailer.send(SENDER, "anna@example.it", message(2))
    mailer.close()

    stored = sorted(mailbox.Maildir(path, create=False), key=lambda m: m["Subject"])
    assert [m["Subject"] for m in stored] == ["test 1", "test 2"]
    assert stored[0]["Message-ID"] == "<test-1@pec-provider.example.it>"
    assert stored[0].get_payload() == "first line\n.a line that starts with a dot\n..two dots\n"


def test_console_backend_prints_recipient_and_subject():
    stream = io.StringIO()
    ConsoleMailer(stream).send(SENDER, "mario@example.it", message(7))
    assert stream.getvalue() == "mail to mario@example.it [- -]: test 7\n"


def test_make_mailer_chooses_by_settings(tmp_path, smtp_server):
    assert isinstance(make_mailer(make_settings(tmp_path, mail_backend="console")), ConsoleMailer)
    maildir = make_mailer(make_settings(tmp_path, mail_backend="maildir", maildir=tmp_path / "m"))
    assert isinstance(maildir, MaildirMailer) and maildir.path == tmp_path / "m"
    smtp = make_mailer(make_settings(tmp_path, mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port))
    assert isinstance(smtp, SMTPMailer) and (smtp.host, smtp.port, smtp.tls) == ("127.0.0.1", smtp_server.port, "none")
    smtp.send(SENDER, "mario@example.it", message())
    smtp.close()
    assert len(smtp_server.messages) == 1


def test_maildir_backend_creates_missing_parent_folders(tmp_path):
    target = tmp_path / "not" / "yet" / "mail"
    MaildirMailer(target).send("a@example.it", "b@example.it", b"Subject: x\r\n\r\nbody\r\n")
    assert len(list((target / "new").iterdir())) == 1


def test_pipelining_is_used_when_the_server_offers_it(smtp_server, mailer):
    mailer.send(SENDER, "mario@example.it", message())
    assert mailer._connection.has_extn("pipelining") is smtp_server.pipelining
    assert [m.data for m in smtp_server.messages] == [message()]


def test_a_pipelined_refusal_at_mail_from_is_transient_and_the_connection_stays_usable(smtp_server, mailer):
    smtp_server.fail_next("451 4.3.0 Sender check failed", at="mail")
    with pytest.raises(DeliveryError) as caught:
        mailer.send(SENDER, "mario@example.it", message(1))
    assert (caught.value.permanent, caught.value.smtp_code) == (False, 451)
    mailer.send(SENDER, "mario@example.it", message(2))
    assert [m.data for m in smtp_server.messages] == [message(2)]
    assert smtp_server.connections == 1
