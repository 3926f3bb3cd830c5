"""The link handler served on loopback for a real headless Chromium (Debian's, driven by Playwright).

    with served_link_handler(lambda base_url: make_runtime(base_url)) as (runtime, base_url):
        browser = launch_chromium(playwright)

The runtime is built once the server has its port, so the links it signs point at it.  CI
installs the browser with ``scripts/install-browser``; without it the tests that need it skip.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from werkzeug.serving import make_server

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
#: A phone: the width the pages must hold at, with JavaScript off.
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
def served_link_handler(make_runtime: Callable[[str], Runtime]) -> Iterator[tuple[Runtime, str]]:
    """The link handler on a free loopback port, its runtime made by ``make_runtime(base_url)``."""
    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True, request_handler=RedactingRequestHandler)
    base_url = f"http://127.0.0.1:{server.port}"
    runtime = make_runtime(base_url)
    late.app = create_app(runtime)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield runtime, base_url
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
