"""Security headers, broken links, tokens kept out of logs, the app factory and the serve command."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from tests.factories import make_mailbox
from tests.web.conftest import assert_security_headers, csrf_token, link_path, row_counts
from worker.links import RENEWAL_SALT
from worker.web import create_app
from worker.web.security import REDACTED, RedactingFilter, RedactingRequestHandler, redact

@pytest.mark.parametrize(
    "path",
    ["/", "/rinnova/garbage", "/rinnova/a.b.c", "/ordine/abcdefghijkl", "/ordine/abcdefghijkl/caselle", "/nope"],
)
def test_every_page_has_the_security_headers(client, path):
    response = client.get(path)
    assert_security_headers(response)
    assert "<script" not in response.get_data(as_text=True)


def test_static_css_is_cacheable_and_still_has_headers(client):
    response = client.get("/static/style.css")
    assert response.status_code == 200
    assert_security_headers(response, no_store=False)


def _tampered(token: str) -> list[str]:
    payload, _, signature = token.rpartition(".")
    # The first character: the last one of base64 carries padding bits that may not change the bytes.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return [
        f"{payload}.{flipped}",  # signature changed
        token[:-3],  # truncated
        token + "x",
        token.replace(".", "", 1),
        "x" + token,
        token.upper(),
    ]


def test_tampered_links_get_one_clear_4xx_page_and_change_nothing(client, runtime, session_factory, caplog):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        token = link_path(runtime, mailbox).rsplit("/", 1)[1]
    before = row_counts(session_factory)
    pages = set()
    for bad in _tampered(token):
        response = client.get(f"/rinnova/{bad}")
        assert response.status_code == 404, bad
        body = response.get_data(as_text=True)
        assert "Link non valido o scaduto" in body
        assert "signature" not in body.lower() and "firma" not in body.lower()
        assert_security_headers(response)
        pages.add(body)
    assert len(pages) == 1  # the same page whatever went wrong: nothing said about why
    assert row_counts(session_factory) == before


def test_expired_and_other_purpose_tokens_are_refused(client, runtime, session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        mailbox_id = mailbox.id
    keys = list(settings.secret_keys)
    other_purpose = URLSafeTimedSerializer(keys, salt="pec-renewal.unsubscribe").dumps(["m", mailbox_id, "2027-02-10"])
    unknown_key = URLSafeTimedSerializer(["an-unknown-key-0123456789abcdef0123"], salt=RENEWAL_SALT).dumps(
        ["m", mailbox_id, "2027-02-10"]
    )
    bad_payload = URLSafeTimedSerializer(keys, salt=RENEWAL_SALT).dumps({"m": mailbox_id})
    for token in (other_purpose, unknown_key, bad_payload):
        assert client.get(f"/rinnova/{token}").status_code == 404

    # A token older than LINK_MAX_AGE_DAYS: signed with a timestamp in the past.
    class PastSigner(TimestampSigner):
        def get_timestamp(self):
            return super().get_timestamp() - (settings.link_max_age_days + 1) * 86400

    expired = URLSafeTimedSerializer(keys, salt=RENEWAL_SALT, signer=PastSigner).dumps(["m", mailbox_id, "2027-02-10"])
    response = client.get(f"/rinnova/{expired}")
    assert response.status_code == 404
    assert "Link non valido o scaduto" in response.get_data(as_text=True)


def test_a_link_for_a_mailbox_that_does_not_exist_is_the_same_4xx(client, runtime, session_factory):
    token = runtime.signer.renewal_token("m", 999_999, date(2027, 2, 10))
    assert client.get(f"/rinnova/{token}").status_code == 404


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.text(min_size=1, max_size=300).filter(lambda s: "/" not in s and s not in (".", "..")))
def test_any_string_as_token_is_a_4xx_never_a_500(client, token):
    response = client.get("/rinnova/" + token.replace("?", "%3F").replace("#", "%23"))
    assert 400 <= response.status_code < 500
    assert_security_headers(response)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=200))
def test_non_utf8_paths_are_a_4xx(app, raw):
    from urllib.parse import quote_from_bytes

    client = app.test_client()
    response = client.get("/rinnova/" + quote_from_bytes(raw, safe=""))
    assert 400 <= response.status_code < 500


def test_post_without_csrf_token_is_refused_and_changes_nothing(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        path = link_path(runtime, mailbox)
    before = row_counts(session_factory)
    response = client.post(path, data={})
    assert response.status_code == 400
    assert "Modulo scaduto" in response.get_data(as_text=True)
    response = client.post(path, data={"csrf_token": "forged"})
    assert response.status_code == 400
    assert row_counts(session_factory) == before


def test_a_csrf_token_from_another_browser_session_is_refused(app, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        path = link_path(runtime, mailbox)
    first, second = app.test_client(), app.test_client()
    token = csrf_token(first.get(path).get_data(as_text=True))
    second.get(path)  # the second browser has a session of its own
    before = row_counts(session_factory)
    assert second.post(path, data={"csrf_token": token}).status_code == 400
    assert row_counts(session_factory) == before


@hsettings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(forged=st.text(max_size=200))
def test_any_forged_csrf_token_is_refused(app, forged):
    client = app.test_client()
    client.get("/")
    response = client.post("/rinnova/abc", data={"csrf_token": forged})
    assert response.status_code == 400


def test_a_post_from_another_origin_is_refused(client):
    response = client.post("/rinnova/abc", headers={"Origin": "https://evil.example"})
    assert response.status_code == 400


# -- Logs -------------------------------------------------------------------------------------------


def test_redact_takes_every_token_out():
    line = '127.0.0.1 - - "GET /rinnova/eyJhYmMi.Zz_-x.sig HTTP/1.1" 200 -; then /rinnova/other?x=1'
    assert redact(line) == f'127.0.0.1 - - "GET /rinnova/{REDACTED} HTTP/1.1" 200 -; then /rinnova/{REDACTED}?x=1'


@hsettings(max_examples=200)
@given(token=st.from_regex(r"[A-Za-z0-9_\-.]{1,300}", fullmatch=True))
def test_redact_never_leaves_a_token(token):
    assert redact(f"GET /rinnova/{token} HTTP/1.1") == f"GET /rinnova/{REDACTED} HTTP/1.1"


def test_the_token_is_in_no_log_line(client, runtime, session_factory, caplog):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        path = link_path(runtime, mailbox)
    token = path.rsplit("/", 1)[1]
    caplog.set_level(logging.DEBUG)
    client.get(path)
    client.get(path + "x")
    client.post(path, data={})
    # werkzeug's own request line, as the development server writes it:
    logging.getLogger("werkzeug").info('127.0.0.1 - - [x] "%s" %s %s', f"GET {path} HTTP/1.1", "200", "-")
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token[:40] not in record.getMessage()
    assert any(REDACTED in record.getMessage() for record in caplog.records)


def test_an_exception_on_a_link_page_is_logged_without_the_token(app, runtime, caplog, monkeypatch):
    from worker.web import views

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "invalid_link_page", explode)
    caplog.set_level(logging.ERROR)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = app.test_client().get("/rinnova/not-a-token-abc")
    assert response.status_code == 500
    assert "<script" not in response.get_data(as_text=True)
    messages = [record.getMessage() for record in caplog.records]
    assert any(f"/rinnova/{REDACTED}" in message for message in messages)
    assert not any("not-a-token-abc" in message for message in messages)


def test_werkzeugs_request_handler_redacts_the_request_line():
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

    import werkzeug.serving as serving

    original = serving._log
    serving._log = lambda type, message, *args: lines.append(message % args)
    try:
        Handler().log_request(200, 10)
        Handler().log_error("code %d, message %s", 400, "Bad request syntax ('GET /rinnova/secret.token.value')")
    finally:
        serving._log = original
    assert lines and all("secret.token.value" not in line for line in lines)


def test_the_filter_redacts_arguments_of_any_record():
    record = logging.LogRecord("werkzeug", logging.INFO, __file__, 1, '"%s" %s', ("GET /rinnova/abc.def HTTP/1.1", 200), None)
    RedactingFilter().filter(record)
    assert record.getMessage() == f'"GET /rinnova/{REDACTED} HTTP/1.1" 200'


def test_gunicorn_access_log_is_redacted():
    pytest.importorskip("gunicorn")
    from worker.web.gunicorn_conf import RedactingLogger

    atoms = {"r": "GET /rinnova/abc.def HTTP/1.1", "U": "/rinnova/abc.def", "f": "https://x/rinnova/abc.def"}

    class Fake(RedactingLogger):
        def __init__(self):
            pass

    from gunicorn.glogging import Logger

    original = Logger.atoms
    Logger.atoms = lambda self, *args: dict(atoms)
    try:
        result = Fake().atoms(None, None, {}, None)
    finally:
        Logger.atoms = original
    assert "abc.def" not in " ".join(str(value) for value in result.values())


# -- Factory and command ------------------------------------------------------------------------------


def test_create_app_without_arguments_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PEC_RENEWAL_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PEC_RENEWAL_SECRET_KEYS", "k" * 40 + ",n" + "m" * 40)
    monkeypatch.setenv("PEC_RENEWAL_BASE_URL", "https://rinnovi.example.it")
    app = create_app()
    assert app.config["SECRET_KEY"] == "n" + "m" * 40  # the newest key signs
    assert app.config["SECRET_KEY_FALLBACKS"] == ["k" * 40]
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    monkeypatch.setenv("PEC_RENEWAL_BASE_URL", "http://127.0.0.1:5000")
    assert create_app().config["SESSION_COOKIE_SECURE"] is False


def test_serve_command_is_registered():
    from worker.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "--host" in result.output and "--port" in result.output


def test_a_huge_form_is_refused_with_a_clear_page(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 10))
        session.commit()
        path = link_path(runtime, mailbox)
    before = row_counts(session_factory)
    response = client.post(path, data={"csrf_token": "x", "name": "a" * 200_000})
    assert response.status_code in (400, 413)
    assert_security_headers(response)
    assert row_counts(session_factory) == before


def test_pages_that_know_no_holder_follow_the_browser_language(client):
    response = client.get("/rinnova/garbage", headers={"Accept-Language": "en-GB,en;q=0.9"})
    assert response.status_code == 404
    assert "This link is not valid or has expired" in response.get_data(as_text=True)
    response = client.get("/rinnova/garbage", headers={"Accept-Language": "de-DE"})
    assert "Link non valido o scaduto" in response.get_data(as_text=True)
