"""The link handler served on loopback for a real headless Chromium (Debian's, driven by Playwright).

CI installs the browser with ``scripts/install-browser``; without it the browser tests are skipped.
"""

from __future__ import annotations

import email
import email.policy
import mailbox as maildir_module
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from werkzeug.serving import make_server

from tests.support.settings import make_settings
from worker.services.runtime import Runtime
from worker.web import create_app
from worker.web.security import RedactingRequestHandler

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: A phone's viewport, as the holders who open the links from their email on a phone see the pages.
PHONE = {"width": 390, "height": 844}

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: run scripts/install-browser (CI does)"
)


class _LateApp:
    """A WSGI app set after the server is bound, so the links can carry the server's real port."""

    app = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@contextmanager
def served_app(tmp_path, database_url, session_factory, clock, **settings) -> Iterator[tuple[Runtime, str]]:
    """The link handler on a loopback port, writing its emails to a Maildir: (runtime, base URL)."""
    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True, request_handler=RedactingRequestHandler)
    base_url = f"http://127.0.0.1:{server.port}"
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        base_url=base_url,
        mail_backend="maildir",
        maildir=tmp_path / "mail",
        **settings,
    )
    runtime = Runtime(settings, clock=clock)
    runtime.__dict__["session_factory"] = session_factory
    late.app = create_app(runtime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield runtime, base_url
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        runtime.mailer.close() if "mailer" in runtime.__dict__ else None


def maildir_messages(path) -> list[email.message.EmailMessage]:
    """The messages of a Maildir, parsed (in no particular order)."""
    box = maildir_module.Maildir(path, create=False)
    return [email.message_from_bytes(raw.as_bytes(), policy=email.policy.default) for _key, raw in box.items()]


def links_in(message, base_url: str, path: str) -> list[str]:
    """The ``{base_url}/{path}/<token>`` links of a message's plain-text body."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.findall(re.escape(base_url) + "/" + re.escape(path) + r"/[A-Za-z0-9_\-.]+", text)


@contextmanager
def phone_page(playwright, locale: str | None = None) -> Iterator:
    """A page in headless Chromium at a phone's width, with JavaScript off (and the browser's
    ``locale``, for the pages that know no holder and follow Accept-Language)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        context = browser.new_context(java_script_enabled=False, viewport=PHONE, locale=locale)
        yield context.new_page()
    finally:
        browser.close()


def inside_the_width(locator, width: int = PHONE["width"]) -> bool:
    """Whether the element is laid out fully within the viewport's width (no scrolling to reach it)."""
    box = locator.bounding_box()
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
