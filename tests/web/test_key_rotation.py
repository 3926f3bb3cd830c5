"""``PEC_RENEWAL_SECRET_KEYS`` rotation: every key verifies, the newest signs, the CSRF token included.

A holder who opened a link page before the operator added a key must still be
able to press its button afterwards: the form's CSRF token and the session
cookie were signed with the key that was newest then.
"""

from __future__ import annotations

from datetime import date

import pytest

from tests.support.factories import make_mailbox
from tests.support.link_handler import close_runtime, csrf_token, link_path, row_counts, runtime_on_test_database
from tests.support.settings import make_settings
from worker.web import create_app

OLD_KEY = "rotation-old-key-0123456789abcdef0123456789"
NEW_KEY = "rotation-new-key-0123456789abcdef0123456789"


@pytest.fixture
def make_app(tmp_path, database_url, session_factory, clock):
    runtimes = []

    def make(secret_keys: str):
        settings = make_settings(tmp_path, database_url=database_url, secret_keys=secret_keys)
        runtime = runtime_on_test_database(settings, session_factory, clock)
        runtimes.append(runtime)
        return runtime, create_app(runtime)

    yield make
    for runtime in runtimes:
        close_runtime(runtime)


def post_across_a_restart(make_app, session_factory, keys_before: str, keys_after: str):
    """A browser opens a mailbox's link page on a server with ``keys_before``; the server restarts
    with ``keys_after``; the browser presses the button (its cookie and the form's CSRF token)."""
    runtime_before, app_before = make_app(keys_before)
    with session_factory() as session, session.begin():
        mailbox = make_mailbox(session, expires_on=date(2027, 2, 1))
    path = link_path(runtime_before, mailbox)
    browser = app_before.test_client()
    page = browser.get(path)
    assert page.status_code == 200
    token = csrf_token(page.get_data(as_text=True))

    _, app_after = make_app(keys_after)
    restarted = app_after.test_client()
    cookie = browser.get_cookie("pec_rinnovo")
    assert cookie is not None
    restarted.set_cookie("pec_rinnovo", cookie.value, domain=cookie.domain)
    return restarted.post(path, data={"csrf_token": token})


@pytest.mark.parametrize(
    "keys_after, status",
    [
        (f"{OLD_KEY},{NEW_KEY}", 303),  # a key added: the old one still verifies
        (NEW_KEY, 400),  # the old key retired: what it signed is refused
    ],
)
def test_a_link_page_opened_before_a_key_rotation_still_starts_the_order(make_app, session_factory, keys_after, status):
    response = post_across_a_restart(make_app, session_factory, OLD_KEY, keys_after)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    if status == 303:
        assert response.headers["Location"].startswith("/ordine/")
        assert row_counts(session_factory)["renewal_orders"] == 1
    else:  # checked before the view runs: the CSRF error page, and no order
        assert "Modulo scaduto" in response.get_data(as_text=True)
        assert row_counts(session_factory)["renewal_orders"] == 0


def test_after_a_rotation_the_newest_key_signs_the_csrf_token(make_app, session_factory):
    # A server that knows only the newest key accepts what one with both signed.
    response = post_across_a_restart(make_app, session_factory, f"{OLD_KEY},{NEW_KEY}", NEW_KEY)
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    assert row_counts(session_factory)["renewal_orders"] == 1
