"""The headers every page gets: the security headers a view did not set, each once."""

from __future__ import annotations

from flask import Response

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
