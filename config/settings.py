"""The one settings object, read from the environment (prefix ``PEC_RENEWAL_``).

Every value is parsed and checked here, once (the checks of single values and of the seller's
and the webhooks' groups are in :mod:`config.setting_values`), so a bad value stops the
program at start-up with one line that names the variable, never later with a
traceback.  Nothing else in the project reads ``os.environ``.

With nothing set, everything runs with no server: SQLite under ``./var``, a
file-system Celery broker, mail written to a Maildir, the sandbox gateway, and
a generated secret key kept in ``./var/secret_key``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from email.utils import parseaddr
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from config.setting_values import (
    PREFIX,
    SettingsError,
    has_space,
    hide_password,
    is_base_url,
    is_page_url,
    read_choice,
    read_integer,
    read_number,
    read_seller,
    read_switch,
    read_webhook,
)
from worker.rules.einvoice import Seller
from worker.rules.schedule import DEFAULT_STAGES, Stage, StageSyntaxError, parse_stages

MAIL_BACKENDS = ("maildir", "smtp", "console")
SMTP_TLS_MODES = ("none", "starttls", "ssl")
PAYMENT_GATEWAYS = ("sandbox", "stripe", "paypal")
LOG_FORMATS = ("auto", "text", "json")
#: The clauses a holder approves specifically (artt. 1341-1342 c.c.) at the order's terms step,
#: as the provider's general terms of contract number them: ``;``-separated in the variable.
DEFAULT_UNFAIR_TERMS_CLAUSES = (
    "art. 5 (Durata, rinnovo e rinnovo automatico)",
    "art. 7 (Sospensione del servizio)",
    "art. 8 (Recesso e risoluzione)",
    "art. 10 (Limitazioni di responsabilità del gestore)",
    "art. 12 (Modifiche delle condizioni)",
    "art. 15 (Foro competente)",
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    broker_url: str
    broker_transport_options: dict = field(hash=False, compare=False)
    mail_backend: str = "maildir"
    maildir: Path = Path("var/mail")
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_tls: str = "none"
    smtp_timeout: float = 30.0
    mail_from: str = "Rinnovi PEC <rinnovi@localhost>"
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    secret_key_generated: bool = False
    base_url: str = "http://127.0.0.1:5000"
    #: False when BASE_URL is unset and base_url is the default: ``pec-renewal serve`` then puts
    #: its own address and port there.
    base_url_explicit: bool = False
    timezone: ZoneInfo = ZoneInfo("Europe/Rome")
    payment_gateway: str = "sandbox"
    notice_stages: tuple[Stage, ...] = DEFAULT_STAGES
    scan_batch_size: int = 500
    daily_scan_at: tuple[int, int] = (6, 0)
    link_max_age_days: int = 200
    outbox_max_attempts: int = 12
    relay_batch_size: int = 200
    #: Outcomes the relay commits in one statement: the most messages a relay's crash can send
    #: twice (worker.mail.outbox).  1 commits each before the next send.
    relay_outcome_group: int = 16
    # Payment gateways.  The *_API_BASE settings point an adapter at another
    # endpoint (the tests' local HTTP servers); production leaves them unset.
    sandbox_latency_ms: int = 0
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    paypal_client_id: str | None = None
    paypal_client_secret: str | None = field(default=None, repr=False)
    paypal_api_base: str = "https://api-m.paypal.com"
    #: The signing secret of the Stripe webhook endpoint (``whsec_…``): POST /webhooks/stripe is off without it.
    stripe_webhook_secret: str | None = field(default=None, repr=False)
    #: The id of the PayPal webhook (verify-webhook-signature): POST /webhooks/paypal is off without it.
    paypal_webhook_id: str | None = None
    gateway_concurrency: int = 32
    # Bank transfer instructions shown in the order confirmation.
    bank_iban: str = "IT60X0542811101000000123456"
    bank_beneficiary: str = "Provider PEC S.p.A."
    postal_account: str = "001234567890"
    # The contract documents and the support page, linked from the order pages and the emails.
    terms_url: str = "https://www.provider-pec.example.it/condizioni-generali"
    manual_url: str = "https://www.provider-pec.example.it/manuale-operativo"
    support_url: str = "https://www.provider-pec.example.it/assistenza"
    unfair_terms_clauses: tuple[str, ...] = DEFAULT_UNFAIR_TERMS_CLAUSES
    # Auto-renew: days before expiry of the charge notice, and of the charge and its retries.
    charge_notice_days: int = 30
    charge_days: tuple[int, ...] = (7, 5, 3, 1)
    #: A charge whose answer is not recorded this long after its claim is taken for lost (its
    #: process died): the next run of the day looks it up at the gateway.
    charge_reconcile_after_minutes: int = 5
    # Operations: the Celery worker's Prometheus port (0: off) and the address it
    # listens on; the bearer token that opens the link handler's /metrics (unset:
    # /metrics is off); log lines as JSON, text, or "auto" (text on a terminal).
    metrics_port: int = 9464
    metrics_address: str = "127.0.0.1"
    metrics_token: str | None = field(default=None, repr=False)
    log_format: str = "auto"
    #: The bearer token of ``POST /api/v1/renewal-links`` (the area clienti and the webmail ask it
    #: for a Rinnova link); unset, the API answers 404.
    api_token: str | None = field(default=None, repr=False)
    #: The seller on the electronic invoices (the ``SELLER_*`` settings); None: no invoice is issued.
    seller: Seller | None = None
    #: Split payment (scissione dei pagamenti, art. 17-ter DPR 633/1972) for public administrations:
    #: their orders and auto-renew charges ask the taxable amount, and their invoices say ``EsigibilitaIVA`` S.
    split_payment_for_pa: bool = True
    #: Where the PEC platform hears of renewals, expiries and deletions (signed webhooks); unset,
    #: the events are kept and not sent.  The secret (``whsec_`` and base64) signs them.
    platform_webhook_url: str | None = None
    platform_webhook_secret: str | None = field(default=None, repr=False)
    #: Where the sandbox gateway posts its webhooks (our own ``/webhooks/sandbox``); unset, it sends
    #: none.  The secret (``whsec_`` and base64) signs them and verifies them at the endpoint.
    sandbox_webhook_url: str | None = None
    sandbox_webhook_secret: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # The generated repr would show passwords inside the database and broker URLs.
        shown = []
        for item in fields(self):
            if item.repr:
                value = getattr(self, item.name)
                if (
                    item.name in ("database_url", "broker_url", "platform_webhook_url", "sandbox_webhook_url")
                    and value is not None
                ):
                    value = hide_password(value)
                shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @property
    def is_embedded(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return _read(os.environ if environ is None else environ)


def _read(environ: Mapping[str, str]) -> Settings:
    def raw(name: str) -> str | None:
        value = environ.get(PREFIX + name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    var_dir = Path(raw("VAR_DIR") or "var").resolve()

    database_url = raw("DATABASE_URL") or f"sqlite:///{var_dir / 'pec-renewal.sqlite3'}"
    if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", database_url):
        raise SettingsError("DATABASE_URL", "must start with sqlite:// or postgresql+psycopg://")
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://") :]
    if database_url.startswith("sqlite"):
        _check_sqlite_file(database_url, var_dir)

    broker_url = raw("BROKER_URL") or "filesystem://"
    transport_options: dict = {}
    if broker_url == "filesystem://":
        broker_dir = var_dir / "broker"
        transport_options = {
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "processed_folder": str(broker_dir / "processed"),
            "store_processed": False,
        }
    elif not re.match(r"^rediss?://", broker_url):
        # Celery speaks other brokers (AMQP, SQLAlchemy...), but what the worker promises after a
        # crash rests on Redis: a dead worker's tasks come back after the visibility timeout, which
        # is set here above every task's time limit (config/celery.py), and the fault suite runs on
        # Redis.  RabbitMQ would need its own consumer timeout set above that limit, and tests.
        raise SettingsError(
            "BROKER_URL",
            "must be redis://HOST:PORT/DB or rediss://HOST:PORT/DB (or filesystem:// for the embedded default);"
            " other Celery brokers are not supported",
        )
    elif has_space(broker_url):
        raise SettingsError("BROKER_URL", "must not hold spaces or control characters")
    else:
        # The visibility timeout must exceed every task time limit (config/celery.py).
        transport_options = {"visibility_timeout": 3600}

    mail_backend = read_choice(raw("MAIL_BACKEND") or "maildir", "MAIL_BACKEND", MAIL_BACKENDS)
    maildir = Path(raw("MAILDIR") or var_dir / "mail").resolve()
    smtp_tls = read_choice(raw("SMTP_TLS") or "none", "SMTP_TLS", SMTP_TLS_MODES)
    smtp_port = read_integer(
        raw("SMTP_PORT"), "SMTP_PORT", default={"ssl": 465, "starttls": 587}.get(smtp_tls, 25), low=1, high=65535
    )
    smtp_timeout = read_number(raw("SMTP_TIMEOUT"), "SMTP_TIMEOUT", default=30.0)

    mail_from = raw("MAIL_FROM") or "Rinnovi PEC <rinnovi@localhost>"
    if any(not character.isprintable() for character in mail_from) or "@" not in parseaddr(mail_from)[1]:
        raise SettingsError("MAIL_FROM", f"{mail_from!r} is not an address like 'Rinnovi PEC <rinnovi@example.it>'")

    base_url = (raw("BASE_URL") or "http://127.0.0.1:5000").rstrip("/")
    if not is_base_url(base_url):
        raise SettingsError("BASE_URL", f"{base_url!r} is not an http(s) URL such as https://rinnovi.example.it")

    tz_name = raw("TIMEZONE") or "Europe/Rome"
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SettingsError("TIMEZONE", f"{tz_name!r} is not a known time zone (such as Europe/Rome)") from None

    payment_gateway = read_choice(raw("PAYMENT_GATEWAY") or "sandbox", "PAYMENT_GATEWAY", PAYMENT_GATEWAYS)
    stripe_api_key = raw("STRIPE_API_KEY")
    if payment_gateway == "stripe" and not stripe_api_key:
        raise SettingsError("STRIPE_API_KEY", "is required when PEC_RENEWAL_PAYMENT_GATEWAY is stripe")
    paypal_client_id, paypal_client_secret = raw("PAYPAL_CLIENT_ID"), raw("PAYPAL_CLIENT_SECRET")
    if payment_gateway == "paypal" and not (paypal_client_id and paypal_client_secret):
        missing = "PAYPAL_CLIENT_ID" if not paypal_client_id else "PAYPAL_CLIENT_SECRET"
        raise SettingsError(missing, "is required when PEC_RENEWAL_PAYMENT_GATEWAY is paypal")
    stripe_webhook_secret = raw("STRIPE_WEBHOOK_SECRET")
    if stripe_webhook_secret is not None and not re.fullmatch(r"whsec_[A-Za-z0-9]{8,}", stripe_webhook_secret):
        raise SettingsError("STRIPE_WEBHOOK_SECRET", "is not a Stripe webhook signing secret (whsec_…)")
    paypal_webhook_id = raw("PAYPAL_WEBHOOK_ID")
    if paypal_webhook_id is not None:
        if not re.fullmatch(r"[A-Za-z0-9]{1,50}", paypal_webhook_id):
            raise SettingsError("PAYPAL_WEBHOOK_ID", f"{paypal_webhook_id!r} is not a PayPal webhook id")
        if not (paypal_client_id and paypal_client_secret):
            raise SettingsError(
                "PAYPAL_WEBHOOK_ID",
                "needs PAYPAL_CLIENT_ID and PAYPAL_CLIENT_SECRET (its events are verified by PayPal)",
            )
    gateway_urls = {}
    for name in ("STRIPE_API_BASE", "PAYPAL_API_BASE"):
        value = raw(name)
        if value is not None:
            value = value.rstrip("/")
            if not is_base_url(value):
                raise SettingsError(name, f"{value!r} is not an http(s) URL")
        gateway_urls[name] = value
    sandbox_latency_ms = read_integer(raw("SANDBOX_LATENCY_MS"), "SANDBOX_LATENCY_MS", default=0, low=0, high=60_000)
    gateway_concurrency = read_integer(raw("GATEWAY_CONCURRENCY"), "GATEWAY_CONCURRENCY", default=32, low=1, high=1000)
    bank_iban = (raw("BANK_IBAN") or "IT60X0542811101000000123456").replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", bank_iban):
        raise SettingsError("BANK_IBAN", f"{bank_iban!r} is not an IBAN")
    charge_days_text = raw("CHARGE_DAYS") or "7,5,3,1"
    try:
        charge_days = tuple(int(part) for part in charge_days_text.split(","))
    except ValueError:
        raise SettingsError("CHARGE_DAYS", f"{charge_days_text!r} is not a list of days such as 7,5,3,1") from None
    if not all(1 <= day <= 60 for day in charge_days) or list(charge_days) != sorted(set(charge_days), reverse=True):
        raise SettingsError(
            "CHARGE_DAYS", f"{charge_days_text!r}: days before expiry, from 60 to 1, each fewer than the one before"
        )
    charge_notice_days = read_integer(raw("CHARGE_NOTICE_DAYS"), "CHARGE_NOTICE_DAYS", default=30, low=2, high=89)
    if charge_notice_days <= charge_days[0]:
        raise SettingsError(
            "CHARGE_NOTICE_DAYS",
            f"{charge_notice_days} must be more than the charge's {charge_days[0]} days before expiry",
        )
    # Longer than a gateway call can last (a charge and its lookup: 35 s each at most with the
    # adapters' timeouts), so a charge still in flight is never looked up as lost.
    charge_reconcile_after_minutes = read_integer(
        raw("CHARGE_RECONCILE_AFTER_MINUTES"),
        "CHARGE_RECONCILE_AFTER_MINUTES",
        default=Settings.charge_reconcile_after_minutes,
        low=2,
        high=720,
    )
    postal_account = raw("POSTAL_ACCOUNT") or "001234567890"
    if not re.fullmatch(r"\d{8,12}", postal_account):
        raise SettingsError(
            "POSTAL_ACCOUNT", f"{postal_account!r} is not a postal current account number (8 to 12 digits)"
        )
    bank_beneficiary = raw("BANK_BENEFICIARY") or "Provider PEC S.p.A."
    if any(ord(character) < 32 for character in bank_beneficiary):
        raise SettingsError("BANK_BENEFICIARY", "must be one line of text")
    page_urls = {}
    for name in ("TERMS_URL", "MANUAL_URL", "SUPPORT_URL"):
        value = raw(name) or getattr(Settings, name.lower())
        if not is_page_url(value):
            raise SettingsError(name, f"{value!r} is not an http(s) URL such as https://www.example.it/condizioni")
        page_urls[name.lower()] = value
    unfair_terms_clauses = _clauses(raw("UNFAIR_TERMS_CLAUSES"))

    stages_text = raw("NOTICE_STAGES")
    try:
        notice_stages = parse_stages(stages_text) if stages_text else DEFAULT_STAGES
    except StageSyntaxError as error:
        raise SettingsError("NOTICE_STAGES", str(error)) from None

    scan_at = raw("DAILY_SCAN_AT") or "06:00"
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", scan_at)
    if not match:
        raise SettingsError("DAILY_SCAN_AT", f"{scan_at!r} is not a time of day such as 06:00")

    scan_batch_size = read_integer(raw("SCAN_BATCH_SIZE"), "SCAN_BATCH_SIZE", default=500, low=1, high=100_000)
    # A link sent three months before expiry must still open on the last renewable day.
    link_max_age_days = read_integer(raw("LINK_MAX_AGE_DAYS"), "LINK_MAX_AGE_DAYS", default=200, low=184, high=3650)
    outbox_max_attempts = read_integer(raw("OUTBOX_MAX_ATTEMPTS"), "OUTBOX_MAX_ATTEMPTS", default=12, low=1, high=100)
    relay_batch_size = read_integer(raw("RELAY_BATCH_SIZE"), "RELAY_BATCH_SIZE", default=200, low=1, high=10_000)
    relay_outcome_group = read_integer(
        raw("RELAY_OUTCOME_GROUP"), "RELAY_OUTCOME_GROUP", default=Settings.relay_outcome_group, low=1, high=1_000
    )

    metrics_port = read_integer(raw("METRICS_PORT"), "METRICS_PORT", default=9464, low=0, high=65535)
    metrics_address = raw("METRICS_ADDRESS") or "127.0.0.1"
    try:
        ipaddress.ip_address(metrics_address)
    except ValueError:
        raise SettingsError(
            "METRICS_ADDRESS", f"{metrics_address!r} is not an IP address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    metrics_token = raw("METRICS_TOKEN")
    if metrics_token is not None and (len(metrics_token) < 32 or has_space(metrics_token)):
        raise SettingsError("METRICS_TOKEN", "must be at least 32 characters, without spaces")
    log_format = read_choice(raw("LOG_FORMAT") or "auto", "LOG_FORMAT", LOG_FORMATS)
    api_token = raw("API_TOKEN")
    if api_token is not None and (len(api_token) < 32 or has_space(api_token)):
        raise SettingsError("API_TOKEN", "must be at least 32 characters, without spaces")

    seller = read_seller(raw)
    split_payment_for_pa = read_switch(raw("SPLIT_PAYMENT_FOR_PA"), "SPLIT_PAYMENT_FOR_PA", default=True)
    platform_webhook_url, platform_webhook_secret = read_webhook(
        raw("PLATFORM_WEBHOOK_URL"), raw("PLATFORM_WEBHOOK_SECRET")
    )
    sandbox_webhook_url, sandbox_webhook_secret = read_webhook(
        raw("SANDBOX_WEBHOOK_URL"), raw("SANDBOX_WEBHOOK_SECRET"), "SANDBOX"
    )

    # Last, so that a bad value elsewhere stops the program before a key is
    # generated.  Its warning is logged where the key signs (warn_generated_secret_key).
    # Set but blank is refused, not taken
    # for "unset": in production that is a deployment mistake, and a generated
    # key would hide it.
    secret_keys, generated = _secret_keys(environ.get(PREFIX + "SECRET_KEYS"), var_dir)

    return Settings(
        var_dir=var_dir,
        database_url=database_url,
        broker_url=broker_url,
        broker_transport_options=transport_options,
        mail_backend=mail_backend,
        maildir=maildir,
        smtp_host=raw("SMTP_HOST") or "localhost",
        smtp_port=smtp_port,
        smtp_user=raw("SMTP_USER"),
        smtp_password=raw("SMTP_PASSWORD"),
        smtp_tls=smtp_tls,
        smtp_timeout=smtp_timeout,
        mail_from=mail_from,
        secret_keys=secret_keys,
        secret_key_generated=generated,
        base_url=base_url,
        base_url_explicit=raw("BASE_URL") is not None,
        timezone=timezone,
        payment_gateway=payment_gateway,
        notice_stages=notice_stages,
        scan_batch_size=scan_batch_size,
        daily_scan_at=(int(match.group(1)), int(match.group(2))),
        link_max_age_days=link_max_age_days,
        outbox_max_attempts=outbox_max_attempts,
        relay_batch_size=relay_batch_size,
        relay_outcome_group=relay_outcome_group,
        sandbox_latency_ms=sandbox_latency_ms,
        stripe_api_key=stripe_api_key,
        stripe_api_base=gateway_urls["STRIPE_API_BASE"],
        paypal_client_id=paypal_client_id,
        paypal_client_secret=paypal_client_secret,
        paypal_api_base=gateway_urls["PAYPAL_API_BASE"] or "https://api-m.paypal.com",
        stripe_webhook_secret=stripe_webhook_secret,
        paypal_webhook_id=paypal_webhook_id,
        gateway_concurrency=gateway_concurrency,
        bank_iban=bank_iban,
        bank_beneficiary=bank_beneficiary,
        postal_account=postal_account,
        **page_urls,
        unfair_terms_clauses=unfair_terms_clauses,
        charge_notice_days=charge_notice_days,
        charge_days=charge_days,
        charge_reconcile_after_minutes=charge_reconcile_after_minutes,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        metrics_token=metrics_token,
        log_format=log_format,
        api_token=api_token,
        seller=seller,
        split_payment_for_pa=split_payment_for_pa,
        platform_webhook_url=platform_webhook_url,
        platform_webhook_secret=platform_webhook_secret,
        sandbox_webhook_url=sandbox_webhook_url,
        sandbox_webhook_secret=sandbox_webhook_secret,
    )


def _check_sqlite_file(database_url: str, var_dir: Path) -> None:
    """An SQLite file must be in a folder that exists: SQLite would create a new, empty database
    anywhere, and a mistyped path would then look like a fleet with no mailboxes.  The folder
    ``VAR_DIR`` is the exception: the embedded default makes it."""
    try:
        path = make_url(database_url).database
    except ArgumentError:
        raise SettingsError("DATABASE_URL", f"{hide_password(database_url)!r} is not a database URL") from None
    if not path or path == ":memory:" or path.startswith("file:"):
        return  # in memory, or a URI the driver reads itself
    file = Path(path).resolve()
    if file.is_dir():
        raise SettingsError("DATABASE_URL", f"{file} is a folder, not a database file")
    if file.parent == var_dir or file.parent.is_dir():
        return
    missing = file.parent
    while not missing.parent.is_dir() and missing.parent != missing:
        missing = missing.parent
    raise SettingsError("DATABASE_URL", f"the folder {missing} does not exist (create it, or correct the path)")


def _secret_keys(value: str | None, var_dir: Path) -> tuple[tuple[str, ...], bool]:
    if value is not None:
        keys = tuple(key.strip() for key in value.split(",") if key.strip())
        short = [index for index, key in enumerate(keys, 1) if len(key) < 32]
        if not keys:
            raise SettingsError("SECRET_KEYS", "is set but holds no key (unset it to use a generated key under var/)")
        if short:
            raise SettingsError("SECRET_KEYS", f"key number {short[0]} is shorter than 32 characters")
        return keys, False
    # Embedded default: a generated key kept under var/, so links survive restarts.
    # The key is written whole to a temporary file and then linked into place,
    # so a second process either wins the link or reads a complete key.
    path = var_dir / "secret_key"
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd, temporary = tempfile.mkstemp(prefix=".secret_key.", dir=var_dir)  # mode 0600
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process linked its key first: use that one
            finally:
                os.unlink(temporary)
        key = path.read_text().strip()
    except OSError as error:
        raise SettingsError("SECRET_KEYS", f"is not set and {path} cannot be used: {error.strerror or error}") from None
    if len(key) < 32:
        raise SettingsError("SECRET_KEYS", f"is not set and {path} holds no usable key; delete it to make a new one")
    return (key,), True


_warned_key_files: set[Path] = set()
_warned_lock = threading.Lock()


def warn_generated_secret_key(settings: Settings) -> None:
    """Log that links are signed with the key generated under ``VAR_DIR``: once per process, and only
    where a key signs (the link signer, the link handler; a Celery worker before its pool forks).

    Reading the settings says nothing, so ``--help`` and the commands that sign nothing stay quiet.
    """
    if not settings.secret_key_generated:
        return
    path = settings.var_dir / "secret_key"
    with _warned_lock:
        if path in _warned_key_files:
            return
        _warned_key_files.add(path)
    log.warning("PEC_RENEWAL_SECRET_KEYS is not set: using the generated key in %s (set it in production)", path)


def _clauses(value: str | None) -> tuple[str, ...]:
    """``UNFAIR_TERMS_CLAUSES``: clause references separated by ``;``, each one line of at most 200 characters."""
    if value is None:
        return DEFAULT_UNFAIR_TERMS_CLAUSES
    clauses = tuple(" ".join(part.split()) for part in value.split(";") if part.strip())
    if not 1 <= len(clauses) <= 30:
        raise SettingsError("UNFAIR_TERMS_CLAUSES", "must name 1 to 30 clauses, separated by ';'")
    for clause in clauses:
        if len(clause) > 200 or not clause.isprintable():
            raise SettingsError(
                "UNFAIR_TERMS_CLAUSES", f"{clause[:40]!r}…: each clause is one line of at most 200 characters"
            )
    return clauses
