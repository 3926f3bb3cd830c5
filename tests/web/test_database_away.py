"""Every page of the link handler answers 503 (the error page's style, one log line) when the
database is away: a port nothing listens on, or connections cut under a running app.

Real engines throughout: the app is built from settings whose ``DATABASE_URL`` points at a closed
port, or at a TCP relay of the test's own in front of the test database, which the test stops.
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import date

import pytest
from flask import session as flask_session
from flask_wtf.csrf import generate_csrf

from tests.support.factories import make_mailbox
from tests.support.link_handler import assert_security_headers, csrf_token
from tests.support.settings import make_settings
from tests.support.web_flow import start
from worker.services.runtime import Runtime
from worker.store.db import make_engine, make_session_factory
from worker.web import create_app, runtime_of

EXPIRY = date(2027, 2, 10)
HEADING = "Servizio momentaneamente non disponibile"
METRICS_TOKEN = "metrics-token-0123456789abcdef0123456789"
ORDER_ID = "order-id-that-is-long-enough"
ORDER_PAGES = ("", "/caselle", "/intestatario", "/modulo", "/condizioni", "/conferma", "/pagamento")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


class TcpRelay:
    """Bytes both ways between 127.0.0.1:<port> and ``upstream``; ``stop()`` cuts every connection."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = _closed_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone would not)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for end in sockets:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()


def _app(tmp_path, database_url: str, **config):
    app = create_app(make_settings(tmp_path, database_url=database_url, metrics_token=METRICS_TOKEN), **config)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: an unhandled error is a 500 page
    return app


def _session_with_order(client, app) -> str:
    """A browser session that holds an order id and a CSRF secret (no database needed); its form token."""
    with app.test_request_context():
        token = generate_csrf()  # Flask-WTF's: a new secret in this session, and the form's signed copy
        raw = flask_session["csrf_token"]
    with client.session_transaction() as browser_session:
        browser_session["orders"] = [ORDER_ID]
        browser_session["csrf_token"] = raw
    return token


def _assert_unavailable(response, records, what) -> None:
    assert response.status_code == 503, (what, response.status_code)
    body = response.get_data(as_text=True)
    assert HEADING in body and '<link rel="stylesheet"' in body, what  # the error pages' template
    assert "Traceback" not in body and "psycopg" not in body and "OperationalError" not in body
    assert response.headers["Retry-After"] == "60"
    assert_security_headers(response)
    assert len(records) == 1, (what, [record.getMessage() for record in records])  # one line each...
    (record,) = records
    assert record.levelno == logging.ERROR and record.exc_info is None and record.exc_text is None  # ...no traceback
    message = record.getMessage()
    assert "\n" not in message and message.startswith("database unavailable on ")


def _every_page(client, app, link_token: str):
    """(what, response) for every page of the app that reads or writes the database."""
    form_token = _session_with_order(client, app)
    fresh = app.test_client()
    yield "GET a link, first visit", fresh.get(f"/rinnova/{link_token}")
    yield "GET a link, with a session", client.get(f"/rinnova/{link_token}")
    yield "POST a link", client.post(f"/rinnova/{link_token}", data={"csrf_token": form_token})
    for page in ORDER_PAGES:
        yield f"GET /ordine/…{page}", client.get(f"/ordine/{ORDER_ID}{page}")
        if page:  # the order's own page is read-only (GET)
            yield f"POST /ordine/…{page}", client.post(f"/ordine/{ORDER_ID}{page}", data={"csrf_token": form_token})


def test_every_page_is_a_503_when_nothing_listens_at_the_database_port(tmp_path, runtime, caplog):
    app = _app(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/pec_renewal")
    link_token = runtime.signer.renewal_token("m", 1, EXPIRY)  # the same keys as the app's
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    pages = 0
    for what, response in _every_page(client, app, link_token):
        records = [record for record in caplog.records if record.levelno >= logging.WARNING]
        _assert_unavailable(response, records, what)
        caplog.clear()
        pages += 1
    assert pages == 3 + 2 * len(ORDER_PAGES) - 1
    # What needs no database still answers: the home page, the stylesheet, and /metrics, which says
    # the database is down.
    assert client.get("/").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert metrics.status_code == 200 and "pec_renewal_database_up 0.0" in metrics.get_data(as_text=True)
    runtime_of(app).close()


def test_the_503_follows_the_browser_language(tmp_path, runtime):
    app = _app(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/pec_renewal")
    token = runtime.signer.renewal_token("m", 1, EXPIRY)
    response = app.test_client().get(f"/rinnova/{token}", headers={"Accept-Language": "en"})
    assert response.status_code == 503
    assert "Service temporarily unavailable" in response.get_data(as_text=True)
    runtime_of(app).close()


@pytest.fixture
def relay(database_url):
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    relay = TcpRelay((url.host or "127.0.0.1", url.port or 5432))
    relay.start()
    yield relay
    relay.stop()


def test_connections_cut_under_a_running_app_give_503_then_the_app_recovers(
    tmp_path, database_url, session_factory, relay, clock, caplog
):
    from sqlalchemy.engine import make_url

    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY, plan="pro")
        session.commit()
        mailbox_id = mailbox.id
    through_relay = make_url(database_url).set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    app = _app(tmp_path, through_relay)
    runtime = runtime_of(app)
    runtime.clock = clock
    link = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    browser = app.test_client()
    assert app.test_client().get(link).status_code == 200  # pooled connections now open, through the relay
    order = start(browser, link)
    page = browser.get(f"{order}/caselle")
    assert page.status_code == 200
    form_token = csrf_token(page.get_data(as_text=True))

    relay.stop()  # the database "goes away": every open connection is cut, and no new one gets through
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    requests = [
        ("GET a link, first visit", lambda: app.test_client().get(link)),
        ("GET a link, with a session", lambda: browser.get(link)),
        ("POST a link", lambda: browser.post(link, data={"csrf_token": form_token})),
        ("GET a step", lambda: browser.get(f"{order}/caselle")),
        (
            "POST a step",
            lambda: browser.post(f"{order}/caselle", data={"csrf_token": form_token, f"plan-{mailbox_id}": "pro"}),
        ),
        ("GET the order", lambda: browser.get(order)),
    ]
    for what, send in requests:
        response = send()
        records = [record for record in caplog.records if record.levelno >= logging.WARNING]
        caplog.clear()
        _assert_unavailable(response, records, what)

    relay.start()  # the database is back: the same app serves again, without a restart
    assert app.test_client().get(link).status_code == 200
    assert browser.get(f"{order}/caselle").status_code == 200
    runtime.close()


def test_a_pool_with_every_connection_busy_is_a_503_too(tmp_path, database_url, session_factory, clock, caplog):
    """Every pooled connection held past the pool's timeout (an overloaded database): the same 503."""
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRY)
        session.commit()
        mailbox_id = mailbox.id
    runtime = Runtime(make_settings(tmp_path, database_url=database_url), clock=clock)
    engine = make_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    runtime.__dict__["engine"] = engine
    runtime.__dict__["session_factory"] = make_session_factory(engine)
    app = create_app(runtime)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    link = "/rinnova/" + runtime.signer.renewal_token("m", mailbox_id, EXPIRY)
    assert app.test_client().get(link).status_code == 200
    caplog.set_level(logging.DEBUG)
    with engine.connect():  # the only connection, busy
        caplog.clear()
        response = app.test_client().get(link)
        _assert_unavailable(response, [r for r in caplog.records if r.levelno >= logging.WARNING], "pool exhausted")
    assert app.test_client().get(link).status_code == 200
    runtime.close()
