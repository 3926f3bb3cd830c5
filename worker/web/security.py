"""Security headers, and keeping renewal tokens out of every log line.

A renewal token is a bearer credential: whoever holds it can see the
mailbox summary and start an order.  It is in the path of ``GET
/rinnova/<token>``, so every log line that could carry a request path goes
through :func:`redact`: werkzeug's request log (the development server),
Flask's "Exception on <path>" line, and gunicorn's access log.  It also takes
out a signed token found anywhere else in the line (a query string a mail
client added, a Referer), so a token copied where it does not belong is not
logged either.
"""

from __future__ import annotations

import logging

from werkzeug.serving import WSGIRequestHandler

# The redaction is the links' own (worker.rules.links), applied here to the web's loggers.
from worker.rules.links import redact

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "style-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

#: On every answer but the stylesheet's: no page (a holder's name, an order) is kept by a cache.
NO_STORE_HEADERS = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))

#: Sent when the request came over https, or the public base URL is https (TLS ended at a proxy).
STRICT_TRANSPORT_SECURITY = "max-age=31536000; includeSubDomains"


class RedactingFilter(logging.Filter):
    """Formats a record's message with its arguments, redacted, so no handler sees the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        redacted = redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, ()
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the filter to the loggers that see request paths (idempotent)."""
    for name in ("werkzeug", "gunicorn.access", "gunicorn.error", "worker.web"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class RedactingRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, with the token taken out of every line it logs."""

    def log(self, type: str, message: str, *args) -> None:
        try:
            text = message % args
        except (TypeError, ValueError):
            text = message
        super().log(type, "%s", redact(text))
