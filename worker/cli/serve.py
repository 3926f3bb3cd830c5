"""``pec-renewal serve``: the link handler on Flask's development server.

In production use gunicorn instead (see the README)::

    gunicorn -c python:worker.web.gunicorn_conf 'worker.web:create_app()'
"""

from __future__ import annotations

import dataclasses
import logging

import click
from werkzeug.serving import run_simple

from worker.cli.common import ensure_schema
from worker.web import create_app
from worker.web.security import RedactingRequestHandler


def serving_url(host: str, port: int) -> str:
    """The base URL of links to a server listening on ``host``:``port`` (all interfaces: this machine)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--debug", is_flag=True, help="Reload on code changes and show tracebacks (never in production).")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, debug: bool) -> None:
    """Serve the renewal link handler for development (Flask's server; use gunicorn in production).

    With PEC_RENEWAL_BASE_URL unset, the links it writes point at this host and port.
    """

    runtime = ctx.find_root().obj
    if not runtime.settings.base_url_explicit:
        # Links (the checkout link of an order, ...) point at this server, not at the default's port.
        runtime.settings = dataclasses.replace(runtime.settings, base_url=serving_url(host, port))
    ensure_schema(runtime)
    app = create_app(runtime)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    click.echo(
        f"serving the link handler on http://{host}:{port}/ (links point at {runtime.settings.base_url})", err=True
    )
    run_simple(
        host,
        port,
        app,
        use_reloader=debug,
        use_debugger=debug,
        threaded=True,
        request_handler=RedactingRequestHandler,
    )
