"""Renewal tokens at the link handler: every bad token is one clear Italian 4xx page that changes
nothing, keys rotate without breaking the links already sent, and no log line ever holds a token.

The signer itself is unit-tested in tests/test_links.py; here each case goes through HTTP.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx
import pytest
import time_machine
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token, row_counts
from tests.support.settings import TEST_SECRET_KEYS
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start, walk_to_confirm
from worker.rules.links import REDACTED, RENEWAL_SALT, redact
from worker.services import orders
from worker.web import templating
from worker.web.security import RedactingFilter, RedactingRequestHandler

EXPIRY = date(2027, 2, 10)
INVALID_HEADING = "Link non valido o scaduto"
KEY_A = "rotation-key-a-0123456789abcdef0123456789"
KEY_B = "rotation-key-b-0123456789abcdef0123456789"
KEY_C = "rotation-key-c-0123456789abcdef0123456789"
SIGNED_AT = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def mailbox_id(session_factory) -> int:
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        session.commit()
        return mailbox.id


def payload(mailbox_id: int) -> list:
    return ["m", mailbox_id, EXPIRY.isoformat()]


def flip_first(text: str) -> str:
    # The first character: the last one of a base64 part carries padding bits that may not change the bytes.
    return ("A" if text[0] != "A" else "B") + text[1:]


def bad_tokens(runtime, mailbox_id: int) -> dict[str, str]:
    keys = list(runtime.settings.secret_keys)
    good = runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    body, timestamp, signature = good.split(".")
    return {
        "signature changed": f"{body}.{timestamp}.{flip_first(signature)}",
        "payload changed": f"{flip_first(body)}.{timestamp}.{signature}",
        "timestamp changed": f"{body}.{flip_first(timestamp)}.{signature}",
        "truncated": good[:-3],
        "truncated to the payload": body,
        "one character more": good + "x",
        "dot removed": good.replace(".", "", 1),
        "upper case": good.upper(),
        "another purpose": URLSafeTimedSerializer(keys, salt="pec-renewal.unsubscribe").dumps(payload(mailbox_id)),
        "no salt": URLSafeTimedSerializer(keys).dumps(payload(mailbox_id)),
        "an unknown key": URLSafeTimedSerializer([KEY_C], salt=RENEWAL_SALT).dumps(payload(mailbox_id)),
        "well signed, bad payload": URLSafeTimedSerializer(keys, salt=RENEWAL_SALT).dumps({"m": mailbox_id}),
        "a mailbox that does not exist": runtime.signer.renewal_token("m", 999_999, EXPIRY),
        "an account that does not exist": runtime.signer.renewal_token("a", 999_999, EXPIRY),
        # Well signed, with ids no database column holds (PostgreSQL's bigint ends at 2**63 - 1).
        "a mailbox id out of range": signed(keys, ["m", 2**63, EXPIRY.isoformat()]),
        "a mailbox id far out of range": signed(keys, ["m", 10**30, EXPIRY.isoformat()]),
        "a negative mailbox id": signed(keys, ["m", -(2**63) - 1, EXPIRY.isoformat()]),
        "an account id out of range": signed(keys, ["a", 2**63, EXPIRY.isoformat()]),
        "a cycle out of range": signed(keys, ["m", mailbox_id, "9999-12-31"]),
    }


def signed(keys: list[str], value) -> str:
    return URLSafeTimedSerializer(keys, salt=RENEWAL_SALT).dumps(value)


def assert_invalid_link_page(response) -> str:
    assert 400 <= response.status_code < 500, response.status_code
    body = response.get_data(as_text=True)
    assert INVALID_HEADING in body
    assert "Controlli di averlo copiato per intero dall&#39;email" in body  # what to do about it, in Italian
    assert "signature" not in body.lower() and "firma" not in body.lower() and "Traceback" not in body
    assert_security_headers(response)
    return body


def test_every_bad_token_is_the_same_clear_italian_4xx_and_changes_nothing(
    client, runtime, session_factory, mailbox_id
):
    good_path = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    token = csrf_token(client.get(good_path).get_data(as_text=True))  # a real browser session with its CSRF token
    before = row_counts(session_factory)
    pages = set()
    for _case, bad in bad_tokens(runtime, mailbox_id).items():
        pages.add(assert_invalid_link_page(client.get(f"/rinnova/{bad}")))
        # A POST with a valid CSRF token starts nothing either.  (A well-signed link to a mailbox that
        # does not exist is sent back to its own page, as any link that cannot start an order.)
        assert_invalid_link_page(client.post(f"/rinnova/{bad}", data={"csrf_token": token}, follow_redirects=True))
    assert len(pages) == 1  # the same page whatever went wrong: nothing said about why
    assert row_counts(session_factory) == before


@pytest.mark.parametrize("target,target_id", [("m", 999_999), ("a", 999_999), ("m", 2**63), ("a", 2**63), ("m", 0)])
def test_a_well_signed_link_whose_ids_do_not_resolve_is_the_broken_link_404(
    client, runtime, mailbox_id, target, target_id
):
    """GET and POST alike: the page of any broken link, at once (no redirect, no 500)."""
    token = csrf_token(
        client.get("/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)).get_data(as_text=True)
    )
    bad = signed(list(runtime.settings.secret_keys), [target, target_id, EXPIRY.isoformat()])
    broken = client.get("/rinnova/garbage").get_data(as_text=True)
    for response in (client.get(f"/rinnova/{bad}"), client.post(f"/rinnova/{bad}", data={"csrf_token": token})):
        assert response.status_code == 404
        assert response.get_data(as_text=True) == broken
        assert_security_headers(response)
    fresh = client.application.test_client()  # a first visit (no cookie) takes the link page's own path
    assert fresh.get(f"/rinnova/{bad}").status_code == 404


def test_a_link_signed_with_a_retired_key_is_refused(make_app, session_factory, mailbox_id):
    before_rotation = make_app(secret_keys=KEY_A)
    token = before_rotation.extensions["pec_runtime"].signer.renewal_token("m", mailbox_id, EXPIRY)
    assert before_rotation.test_client().get(f"/rinnova/{token}").status_code == 200
    after_retirement = make_app(secret_keys=f"{KEY_B},{KEY_C}")  # KEY_A no longer in PEC_RENEWAL_SECRET_KEYS
    before = row_counts(session_factory)
    assert_invalid_link_page(after_retirement.test_client().get(f"/rinnova/{token}"))
    assert row_counts(session_factory) == before


def test_an_expired_link_is_a_clear_4xx(client, runtime, session_factory, mailbox_id):
    max_age = timedelta(days=runtime.settings.link_max_age_days)
    with time_machine.travel(SIGNED_AT, tick=False) as traveller:
        path = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
        traveller.move_to(SIGNED_AT + max_age - timedelta(minutes=1))
        page = client.get(path)
        assert page.status_code == 200  # still good a minute before its maximum age
        token = csrf_token(page.get_data(as_text=True))
        traveller.move_to(SIGNED_AT + max_age + timedelta(seconds=1))
        before = row_counts(session_factory)
        assert_invalid_link_page(client.get(path))
        assert_invalid_link_page(client.post(path, data={"csrf_token": token}))
        assert row_counts(session_factory) == before


def test_key_rotation_old_links_work_while_listed_and_the_new_key_signs(make_app, session_factory, mailbox_id):
    only_a = make_app(secret_keys=KEY_A)
    rotated = make_app(secret_keys=f"{KEY_A},{KEY_B}")  # KEY_B added last: it signs, KEY_A still verifies
    only_b = make_app(secret_keys=KEY_B)

    def signer(app):
        return app.extensions["pec_runtime"].signer

    sent_before = signer(only_a).renewal_token("m", mailbox_id, EXPIRY)
    sent_after = signer(rotated).renewal_token("m", mailbox_id, EXPIRY)
    # The links already in holders' mailboxes keep working while KEY_A is listed...
    assert rotated.test_client().get(f"/rinnova/{sent_before}").status_code == 200
    # ...and the new ones are signed with KEY_B alone: KEY_A cannot read them, KEY_B can.
    assert only_b.test_client().get(f"/rinnova/{sent_after}").status_code == 200
    assert_invalid_link_page(only_a.test_client().get(f"/rinnova/{sent_after}"))
    # Once KEY_A is retired, its links stop.
    assert_invalid_link_page(only_b.test_client().get(f"/rinnova/{sent_before}"))

    # An order started before the rotation stays reachable after it: the session cookie is signed
    # with the newest key and verified with the older ones too.
    browser = only_a.test_client()
    order = start(browser, f"/rinnova/{sent_before}")
    after = rotated.test_client()
    after.set_cookie("pec_rinnovo", browser.get_cookie("pec_rinnovo").value)
    assert after.get(f"{order}/caselle").status_code == 200
    stranger = only_b.test_client()
    stranger.set_cookie("pec_rinnovo", browser.get_cookie("pec_rinnovo").value)
    assert stranger.get(f"{order}/caselle").status_code == 404  # the retired key's cookie is not read


def test_the_invalid_link_page_follows_the_browser_language_and_defaults_to_italian(client):
    response = client.get("/rinnova/garbage", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert response.status_code == 404
    assert "This link is not valid or has expired" in response.get_data(as_text=True)
    for language in ("de-DE", "", "*"):
        response = client.get("/rinnova/garbage", headers={"Accept-Language": language})
        assert INVALID_HEADING in response.get_data(as_text=True)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and s not in (".", "..")))
def test_any_string_as_token_is_a_4xx_never_a_500(client, token):
    response = client.get("/rinnova/" + token.replace("?", "%3F").replace("#", "%23"))
    assert 400 <= response.status_code < 500
    assert_security_headers(response)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=200))
def test_non_utf8_paths_are_a_4xx(client, raw):
    response = client.get("/rinnova/" + quote_from_bytes(raw, safe=""))
    assert 400 <= response.status_code < 500


# -- No token in any log line --------------------------------------------------------------------


def test_a_valid_token_is_in_no_log_line_through_a_whole_order(client, runtime, session_factory, mailbox_id, caplog):
    path = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    token = path.rsplit("/", 1)[1]
    caplog.set_level(logging.DEBUG)  # every logger, every level
    client.get(path)
    client.get(path + "?utm_source=email")
    client.get(path + "x")  # a near miss is logged as a bad link, if at all
    client.post(path, data={})  # refused: no CSRF token
    order = start(client, path)
    walk_to_confirm(client, order, mailbox_id, plan="pro", holder=PRIVATE_HOLDER)
    assert post_form(client, f"{order}/conferma").status_code == 303
    client.get(path)  # the link page of a confirmed order
    # werkzeug's own request line, as the development server writes it:
    logging.getLogger("werkzeug").info('127.0.0.1 - - [x] "%s" %s %s', f"GET {path} HTTP/1.1", "200", "-")
    messages = [record.getMessage() for record in caplog.records]
    assert messages
    for message in messages:
        assert token not in message
        assert token.split(".")[0] not in message  # not even its payload part
    assert any(f"/rinnova/{REDACTED}" in message for message in messages)


@pytest.mark.parametrize("failing", ["the mailbox read", "the page"])
def test_an_exception_on_a_link_page_is_logged_without_the_token(
    app, runtime, mailbox_id, caplog, monkeypatch, failing
):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    client = app.test_client()
    if failing == "the mailbox read":
        monkeypatch.setattr(orders, "read_mailbox_link", explode)
    else:
        monkeypatch.setattr(templating, "localised", explode)  # the page fails after reading a good token
    caplog.set_level(logging.WARNING)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    token = runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    response = client.get(f"/rinnova/{token}")
    assert response.status_code == 500
    assert "Errore temporaneo" in response.get_data(as_text=True)
    assert_security_headers(response)
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"Exception on /rinnova/{REDACTED} [GET]" in message for message in messages)
    assert not any(token in message or token.split(".")[0] in message for message in messages)


def test_redact_takes_every_token_out():
    line = '127.0.0.1 - - "GET /rinnova/eyJhYmMi.Zz_-x.sig HTTP/1.1" 200 -; then /rinnova/other?x=1'
    assert redact(line) == f'127.0.0.1 - - "GET /rinnova/{REDACTED} HTTP/1.1" 200 -; then /rinnova/{REDACTED}?x=1'


def test_redact_takes_a_signed_token_out_of_a_query_string_or_a_referer(runtime):
    token = runtime.signer.renewal_token("m", 12, EXPIRY)
    line = f'"GET /other?next={token} HTTP/1.1" 200 "https://x.example/page?t={token}"'
    assert redact(line) == f'"GET /other?next={REDACTED} HTTP/1.1" 200 "https://x.example/page?t={REDACTED}"'
    for harmless in ("pec.provider.example.it", "2027-02-10", "a.b.c", "mario.rossi@example.it", "3.1.2"):
        assert redact(harmless) == harmless


@hsettings(max_examples=200)
@given(token=st.from_regex(r"[A-Za-z0-9_\-.]{1,300}", fullmatch=True))
def test_redact_never_leaves_a_token(token):
    assert redact(f"GET /rinnova/{token} HTTP/1.1") == f"GET /rinnova/{REDACTED} HTTP/1.1"


def test_the_filter_redacts_arguments_of_any_record():
    record = logging.LogRecord(
        "werkzeug", logging.INFO, __file__, 1, '"%s" %s', ("GET /rinnova/abc.def HTTP/1.1", 200), None
    )
    RedactingFilter().filter(record)
    assert record.getMessage() == f'"GET /rinnova/{REDACTED} HTTP/1.1" 200'


def test_werkzeugs_request_handler_redacts_the_request_line(monkeypatch):
    import werkzeug.serving as serving

    lines = []

    class Handler(RedactingRequestHandler):
        def __init__(self):  # no socket: only the logging is exercised
            self.path = "/rinnova/secret.token.value"
            self.command = "GET"
            self.request_version = "HTTP/1.1"
            self.requestline = "GET /rinnova/secret.token.value HTTP/1.1"
            self.client_address = ("127.0.0.1", 1)

        def address_string(self):
            return "127.0.0.1"

    monkeypatch.setattr(serving, "_log", lambda type, message, *args: lines.append(message % args))
    Handler().log_request(200, 10)
    Handler().log_error("code %d, message %s", 400, "Bad request syntax ('GET /rinnova/secret.token.value')")
    assert len(lines) == 2 and all("secret.token.value" not in line for line in lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gunicorn_access_log_never_holds_the_token(tmp_path, database_url, runtime, mailbox_id):
    """The real server with the shipped configuration: request line, query string and Referer."""
    port = _free_port()
    environ = dict(
        os.environ,
        PEC_RENEWAL_DATABASE_URL=database_url,
        PEC_RENEWAL_SECRET_KEYS=TEST_SECRET_KEYS,
        PEC_RENEWAL_BASE_URL=f"http://127.0.0.1:{port}",
        PEC_RENEWAL_VAR_DIR=str(tmp_path / "var"),
    )
    log_path = tmp_path / "gunicorn.log"
    command = [
        str(Path(sys.executable).with_name("gunicorn")),
        "-c",
        "python:worker.web.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "worker.web:create_app()",
    ]
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            command, env=environ, stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2]
        )
        try:
            token = runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:  # wait for the server to answer
                try:
                    page = httpx.get(f"{base}/rinnova/{token}", headers={"Referer": f"{base}/rinnova/{token}"})
                    break
                except httpx.TransportError:
                    assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.1)
            assert page.status_code == 200 and page.headers["Referrer-Policy"] == "no-referrer"
            assert httpx.get(f"{base}/rinnova/{token}?token={token}").status_code == 200
            assert httpx.post(f"{base}/rinnova/{token}", data={}).status_code == 400
            assert httpx.get(f"{base}/rinnova/{token}x").status_code == 404
        finally:
            server.terminate()
            server.wait(timeout=30)
    log = log_path.read_text()
    assert log.count(f"/rinnova/{REDACTED}") >= 4, log  # the access lines are there...
    assert token not in log and token.split(".")[0] not in log  # ...without the token
