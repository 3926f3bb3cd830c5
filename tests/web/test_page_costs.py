"""What every page gets: the security headers a view did not set, each once, and the session serializer."""

from __future__ import annotations

from flask import Response
from flask.sessions import SecureCookieSessionInterface

from worker.web.security import SECURITY_HEADERS


def test_a_header_the_view_set_is_kept_and_the_others_are_added_once(app, client):
    @app.get("/_test/own-headers")
    def _own_headers():
        response = Response("ok")
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
        response.headers["content-security-policy"] = "default-src 'self'"  # any case
        return response

    response = client.get("/_test/own-headers")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers.getlist("Content-Security-Policy") == ["default-src 'self'"]
    for name, value in SECURITY_HEADERS.items():
        if name not in ("X-Frame-Options", "Content-Security-Policy"):
            assert response.headers.getlist(name) == [value], name
    assert response.headers.getlist("Strict-Transport-Security") != []  # the test base URL is https


def test_the_session_serializer_is_built_once_per_key_set_and_is_flasks(app):
    interface = app.session_interface
    ours = interface.get_signing_serializer(app)
    assert interface.get_signing_serializer(app) is ours
    stock = SecureCookieSessionInterface().get_signing_serializer(app)
    payload = {"csrf_token": "a" * 40, "orders": ["same-order-id-0123456789"] * 20, "_flashes": [("message", "ok")]}
    assert ours.loads(stock.dumps(payload)) == payload  # Flask's own cookies are read
    assert stock.loads(ours.dumps(payload)) == payload  # and Flask reads ours


def test_a_new_key_set_gets_its_own_serializer(app):
    interface = app.session_interface
    before = interface.get_signing_serializer(app)
    app.config["SECRET_KEY_FALLBACKS"] = [
        *app.config["SECRET_KEY_FALLBACKS"],
        "an-older-key-0123456789abcdef0123456789",
    ]
    after = interface.get_signing_serializer(app)
    assert after is not before
    assert after.loads(before.dumps({"x": 1})) == {"x": 1}
    app.config["SECRET_KEY_FALLBACKS"] = [*app.config["SECRET_KEY_FALLBACKS"], app.secret_key]
    app.secret_key = "a-newer-key-0123456789abcdef0123456789"  # a rotation: the newest signs, the rest verify
    newest = interface.get_signing_serializer(app)
    assert newest is not after and newest.loads(after.dumps({"x": 2})) == {"x": 2}
