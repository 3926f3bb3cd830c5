"""``pec-renewal check``: probe every service the worker needs, one clear line each."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text

from worker.events.delivery import event_counts
from worker.services.invoices.export import SellerMissing
from worker.services.runtime import Runtime
from worker.store import migrate


@dataclass(frozen=True)
class Probe:
    service: str
    ok: bool
    detail: str
    #: Works, but something is left undone (no invoice without the seller settings): not a failure.
    warning: bool = False


def check_all(rt: Runtime) -> list[Probe]:
    return [
        _probe("database", lambda: check_database(rt)),
        _probe("broker", lambda: check_broker(rt)),
        _probe("mail", lambda: check_mail(rt)),
        _probe("gateway", lambda: check_gateway(rt)),
        _probe("platform", lambda: check_platform(rt)),
        _probe("webhooks", lambda: check_webhooks(rt)),
        check_invoices(rt),
    ]


def check_invoices(rt: Runtime) -> Probe:
    """Whether invoices can be issued: the seller settings are set."""
    seller = rt.settings.seller
    if seller is None:
        return Probe("invoices", True, str(SellerMissing()) + "; paid renewals' invoices wait", warning=True)
    return Probe("invoices", True, f"seller IT{seller.vat_number}, {seller.fiscal_regime}")


def _probe(service: str, check: Callable[[], str]) -> Probe:
    try:
        return Probe(service, True, check())
    except Exception as error:  # every failure is reported, none stops the other probes
        return Probe(service, False, _one_line(error))


def _one_line(error: Exception) -> str:
    from sqlalchemy.exc import DBAPIError

    if isinstance(error, DBAPIError):  # the driver's message, without SQLAlchemy's SQL and links
        error = error.orig
    if isinstance(error, OSError) and error.strerror:
        return f"cannot connect: {error.strerror}"
    return (" ".join(str(error).split()) or type(error).__name__)[:300]


def check_database(rt: Runtime) -> str:
    with rt.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    current, head = migrate.current_revision(rt.settings.database_url), migrate.head_revision()
    if current != head:
        raise RuntimeError(
            f"reachable, but at revision {current or 'none'} instead of {head}: run 'pec-renewal db upgrade'"
        )
    return f"{rt.engine.dialect.name}, revision {current}"


def check_broker(rt: Runtime) -> str:
    settings = rt.settings
    if settings.broker_url.startswith("filesystem"):
        folder = Path(settings.broker_transport_options["data_folder_in"])
        _writable(folder)
        return f"file-system broker in {folder}"
    from kombu import Connection

    with Connection(
        settings.broker_url, transport_options=settings.broker_transport_options, connect_timeout=5
    ) as connection:
        connection.ensure_connection(max_retries=1, timeout=5)
        return f"{connection.transport_cls} at {connection.as_uri()}"


def check_mail(rt: Runtime) -> str:
    settings = rt.settings
    if settings.mail_backend == "console":
        return "console backend (mail is printed, not sent)"
    if settings.mail_backend == "maildir":
        _writable(settings.maildir)
        return f"Maildir {settings.maildir}"
    timeout = min(settings.smtp_timeout, 10.0)
    if settings.smtp_tls == "ssl":
        client = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    try:
        client.ehlo()
        if settings.smtp_tls == "starttls":
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if settings.smtp_user:
            client.login(settings.smtp_user, settings.smtp_password or "")
        code, _ = client.noop()
        if code != 250:
            raise RuntimeError(f"NOOP answered {code}")
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            client.close()
    return (
        f"SMTP {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_tls}{', login' if settings.smtp_user else ''})"
    )


def check_gateway(rt: Runtime) -> str:
    return rt.gateway.check_credentials()


def check_platform(rt: Runtime) -> str:
    """Where the platform's events go, and how many wait or failed; no request is made (a POST
    would be an event).  Unset ``PLATFORM_WEBHOOK_URL`` is said plainly: events are kept, not sent."""
    with rt.session_factory() as session:
        counts = event_counts(session)
    waiting = f"{counts.pending} pending, {counts.failed} failed"
    url = rt.settings.platform_webhook_url
    if url is None:
        return f"PEC_RENEWAL_PLATFORM_WEBHOOK_URL is not set: events are kept, not sent ({waiting})"
    return f"webhooks to {_shown(url)} ({waiting})"


def _shown(url: str) -> str:
    """A webhook URL without a user, a password or a query, which may hold a token."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def check_webhooks(rt: Runtime) -> str:
    """The configured gateway's webhook secret is set (without it no payment is registered when a
    holder closes the browser before coming back), and the key's mode, test or live."""
    settings = rt.settings
    url = f"{settings.base_url}/webhooks/{settings.payment_gateway}"
    if settings.payment_gateway == "stripe":
        if not settings.stripe_webhook_secret:
            raise RuntimeError("PEC_RENEWAL_STRIPE_WEBHOOK_SECRET is not set: Stripe's events cannot be verified")
        mode = "live" if (settings.stripe_api_key or "").startswith(("sk_live_", "rk_live_")) else "test"
        return f"Stripe webhook secret set, {mode} mode; endpoint {url}"
    if settings.payment_gateway == "paypal":
        if not settings.paypal_webhook_id:
            raise RuntimeError("PEC_RENEWAL_PAYPAL_WEBHOOK_ID is not set: PayPal's events cannot be verified")
        mode = "sandbox" if "sandbox" in settings.paypal_api_base else "live"
        return f"PayPal webhook id set, {mode} API {settings.paypal_api_base}; endpoint {url}"
    if settings.sandbox_webhook_url:
        return f"sandbox webhooks sent to {_shown(settings.sandbox_webhook_url)}; endpoint {url}"
    return "sandbox: no webhook to receive"


def _writable(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".pec-renewal-check"
    probe.write_text("ok")
    probe.unlink()
