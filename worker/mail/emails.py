"""Rendering the notices: Jinja2 templates in ``email_templates/<kind>/`` to a MIME message.

Each kind is a folder holding ``subject.<lang>.txt``, ``body.<lang>.txt`` and
``body.<lang>.html`` for every language, extending ``_base/``.  The outbox
stores only plain data (the holder's name and the mailboxes); everything the
templates show is derived here: the signed Rinnova links, the lifecycle dates
and the dates written out in the holder's language.

Header safety: every value that reaches a header is checked here (no CR or
LF, addresses without spaces, commas or angle brackets), the subject is one
line, and the holder's name never reaches a header: it is only shown in the
bodies, escaped in the HTML part.

The message itself (``RenderedEmail.as_bytes``) has one fixed shape and is
written directly rather than through the ``email`` package: the legacy
``email.mime`` classes with compat32 are about 3x faster than ``EmailMessage``
with the SMTP policy, and writing it directly is over 10x faster again.
Neither compat32 nor direct writing checks header values, which is why every
value is checked when the email is rendered.  The tests parse every kind back
with the standard library's strict parser.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Literal

import css_inline
from jinja2 import BaseLoader, Environment, StrictUndefined, Template, TemplateNotFound, pass_context
from sqlalchemy import Connection, Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from worker.rules import vocabulary
from worker.rules.holder_data import LOCAL_PART_MAX, sendable_address
from worker.rules.links import ACCOUNT, MAILBOX, LinkSigner
from worker.rules.schedule import Stage, deletion_date, last_renewable_day, parse_stage
from worker.store.db import dialect_insert
from worker.store.models import WorkerState

KINDS = (
    "expiry-notice",
    "expired-notice",
    "domain-expiry-notice",
    "order-confirmation",
    "renewal-completed",
    "charge-notice",
    "card-expiring",
    "charge-succeeded",
    "charge-failed",
    "charge-skipped",
)
LANGUAGES = vocabulary.LANGUAGES
PLANS = vocabulary.PLANS
PLAN_LABELS = vocabulary.PLAN_LABELS
#: RFC 5322: a line must not be longer than 998 characters (78 is a recommendation).
MAX_HEADER_LINE = 998

MONTH_NAMES = {
    "it": ("gennaio", "febbraio", "marzo", "aprile", "maggio", "giugno",
           "luglio", "agosto", "settembre", "ottobre", "novembre", "dicembre"),
    "en": ("January", "February", "March", "April", "May", "June",
           "July", "August", "September", "October", "November", "December"),
}  # fmt: skip

#: An address we put in a header or an envelope: one "@", and none of the
#: characters that could add a recipient, a comment or a line to a header.
_ADDRESS_RE = re.compile(r'[^\s@<>(),;:"\[\]\\]+@[^\s@<>(),;:"\[\]\\]+')
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")
_DISPLAYED_DOMAIN_RE = re.compile(r'[^\s@<>(),;:"\[\]\\]+')


# -- Kinds ---------------------------------------------------------------------------------

KindContext = Callable[[Mapping[str, Any], dict[str, Any], LinkSigner], dict[str, Any]]


@dataclass(frozen=True)
class KindRules:
    """What sets one kind apart; the wording lives in its template folder."""

    #: Whether each mailbox gets its own signed Rinnova link.
    renewal_links: bool
    #: When its stages fall: "before" (up to the expiry date itself), "after" or "any".
    stages: Literal["before", "after", "any"]
    #: Extra template variables (and checks) for this kind, from the stored context
    #: and the common variables.
    extra_context: KindContext | None = None
    #: Whether each mailbox is a notice of its own (its own ledger row), so that a mailbox
    #: the renderer refuses is left out and the email goes to the others.  Not for an
    #: order's emails: their totals cover every mailbox, so one refused refuses the email.
    mailboxes_apart: bool = False


def _order_link(payment: Mapping[str, Any], signer: LinkSigner) -> str:
    """Where the holder resumes the order from the email: the signed Rinnova link it was started from.

    The order pages live in the browser session that started the order; the
    signed link opens it again from any device (the link page offers "resume").
    Older stored emails without ``resume_link`` keep their checkout URL.
    """
    resume = payment.get("resume_link")
    if not isinstance(resume, Mapping):
        return payment["checkout_url"]
    target, target_id, cycle = resume.get("target"), resume.get("id"), resume.get("cycle")
    if target not in (MAILBOX, ACCOUNT) or not isinstance(target_id, int) or not isinstance(cycle, str):
        raise ValueError(f"resume_link {dict(resume)!r} is not a link target")
    return signer.url_for(target, target_id, date.fromisoformat(cycle))


def _domain_notice_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    if any(mailbox.domain is None for mailbox in common["mailboxes"]):
        raise ValueError("a domain-expiry-notice needs the domain of every mailbox")
    return {}


_ORDER_NUMBER_RE = re.compile(r"PEC-\d{4}-\d{6,}")
_IBAN_RE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")
_PAYMENT_METHODS = vocabulary.PAYMENT_METHODS
_METHOD_LABELS = vocabulary.METHOD_LABELS


def _euro(cents: Any, language: str) -> str:
    """``48,80 €`` / ``€48.80``."""
    if not isinstance(cents, int) or isinstance(cents, bool) or cents < 0:
        raise ValueError(f"amount {cents!r} is not a whole number of cents")
    euros, rest = divmod(cents, 100)
    if language == "en":
        return f"€{euros:,}.{rest:02d}"
    return f"{euros:,}".replace(",", ".") + f",{rest:02d} €"


@dataclass(frozen=True)
class OrderedMailbox:
    address: str
    plan_label: str
    old_plan_label: str
    plan_changed: bool
    extra_space_gb: int
    extra_archive_gb: int
    archive_deleted: bool
    expires_on: date
    new_expires_on: date


def _order_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """The order, its price and the payment instructions, for order-confirmation and renewal-completed."""
    language = common["language"]
    order, payment = stored.get("order"), stored.get("payment")
    if not isinstance(order, Mapping) or not isinstance(payment, Mapping):
        raise ValueError("an order email needs 'order' and 'payment' in its context")
    number = order.get("number")
    if not isinstance(number, str) or not _ORDER_NUMBER_RE.fullmatch(number):
        raise ValueError(f"order number {number!r} is not like PEC-2027-000123")
    method = order.get("method")
    if method is not None and method not in _PAYMENT_METHODS:
        raise ValueError(f"payment method {method!r} is not one of {', '.join(_PAYMENT_METHODS)}")
    years = order.get("years")
    if not isinstance(years, int) or not 1 <= years <= 5:
        raise ValueError(f"years {years!r} is not 1 to 5")
    iban = payment.get("iban")
    if not isinstance(iban, str) or not _IBAN_RE.fullmatch(iban):
        raise ValueError(f"IBAN {iban!r} is not an IBAN")
    for name in ("beneficiary", "postal_account", "checkout_url"):
        _refuse_line_breaks(payment.get(name), name)
    ordered = []
    raw_by_address = {raw.get("address"): raw for raw in stored["mailboxes"] if isinstance(raw, Mapping)}
    for mailbox in common["mailboxes"]:
        raw = raw_by_address[mailbox.address]
        old_plan = raw.get("old_plan", mailbox.plan)
        if old_plan not in PLANS:
            raise ValueError(f"plan {old_plan!r} is not one of {', '.join(PLANS)}")
        ordered.append(
            OrderedMailbox(
                address=mailbox.address,
                plan_label=mailbox.plan_label,
                old_plan_label=PLAN_LABELS[old_plan],
                plan_changed=old_plan != mailbox.plan,
                extra_space_gb=int(raw.get("extra_space_gb") or 0),
                extra_archive_gb=int(raw.get("extra_archive_gb") or 0),
                archive_deleted=bool(raw.get("archive_deleted")),
                expires_on=mailbox.expires_on,
                new_expires_on=date.fromisoformat(raw["new_expires_on"]),
            )
        )
    lines = [
        {"label": line["label_en" if language == "en" else "label_it"], "amount": _euro(line["amount_cents"], language)}
        for line in order.get("lines") or []
    ]
    return {
        "order_number": number,
        "years": years,
        "method": method,
        "method_label": _METHOD_LABELS[language].get(method or "", ""),
        "auto_renew": method in ("card", "paypal"),
        "lines": lines,
        "subtotal": _euro(order["subtotal_cents"], language),
        "vat_percent": int(order["vat_percent"]),
        "vat": _euro(order["vat_cents"], language),
        "total": _euro(order["total_cents"], language),
        "iban": iban,
        "beneficiary": payment["beneficiary"],
        "postal_account": payment["postal_account"],
        "checkout_url": _order_link(payment, signer),
        "ordered": ordered,
        "common_new_expires_on": _common(item.new_expires_on for item in ordered),
    }


_CHARGE_REASONS = (
    "hard_decline",
    "requires_authentication",
    "retries_exhausted",
    "no_payment_method",
    "not_charged_before_expiry",
)


def _charge_context(stored: Mapping[str, Any], common: dict[str, Any], signer: LinkSigner) -> dict[str, Any]:
    """The auto-renew emails: amount (VAT included), charge date, masked method, receipt or failure."""
    language = common["language"]
    charge = stored.get("charge")
    if not isinstance(charge, Mapping):
        raise ValueError("an auto-renew email needs 'charge' in its context")
    if len(common["mailboxes"]) != 1:
        raise ValueError("an auto-renew email is about one mailbox")
    method = charge.get("method")
    _refuse_line_breaks(method, "method")
    years = charge.get("years")
    if not isinstance(years, int) or not 1 <= years <= 5:
        raise ValueError(f"years {years!r} is not 1 to 5")

    def day(name: str) -> date | None:
        value = charge.get(name)
        return None if value is None else date.fromisoformat(value)

    reason = charge.get("reason")
    if reason is not None and reason not in _CHARGE_REASONS:
        raise ValueError(f"reason {reason!r} is not one of {', '.join(_CHARGE_REASONS)}")
    order_number = charge.get("order_number")
    if order_number is not None and not _ORDER_NUMBER_RE.fullmatch(order_number):
        raise ValueError(f"order number {order_number!r} is not like PEC-2027-000123")
    reference = charge.get("reference")
    if reference is not None:
        _refuse_line_breaks(reference, "reference")
    order_method = charge.get("order_method")
    if order_method is not None and order_method not in _PAYMENT_METHODS:
        raise ValueError(f"payment method {order_method!r} is not one of {', '.join(_PAYMENT_METHODS)}")
    return {
        "amount": _euro(charge["amount_cents"], language),
        "subtotal": _euro(charge["subtotal_cents"], language),
        "vat": _euro(charge["vat_cents"], language),
        "vat_percent": int(charge["vat_percent"]),
        "years": years,
        "method": method,
        "charge_on": day("charge_on"),
        "charged_on": day("charged_on"),
        "card_expires_on": day("card_expires_on"),
        "new_expires_on": day("new_expires_on"),
        "reason": reason,
        "order_number": order_number,
        "reference": reference,
        "order_method_label": _METHOD_LABELS[language].get(order_method or "", ""),
        "cancel_by": day("cancel_by"),
    }


#: Adding a kind: a folder in email_templates/ and one entry here.
KIND_RULES: dict[str, KindRules] = {
    "expiry-notice": KindRules(renewal_links=True, stages="before", mailboxes_apart=True),
    "expired-notice": KindRules(renewal_links=True, stages="after", mailboxes_apart=True),
    "domain-expiry-notice": KindRules(
        renewal_links=False, stages="any", extra_context=_domain_notice_context, mailboxes_apart=True
    ),
    # Order emails are not tied to a stage of the schedule; the outbox names them "0d".
    "order-confirmation": KindRules(renewal_links=False, stages="any", extra_context=_order_context),
    "renewal-completed": KindRules(renewal_links=False, stages="any", extra_context=_order_context),
    # Auto-renew (worker/rules/auto_renew.py, worker/services/charges/), one mailbox per email.
    # The signed Rinnova link of the cycle leads to the link handler: there the holder changes the
    # plan or learns how to switch auto-renew off (charge-notice, card-expiring), or pays the
    # unpaid order (charge-failed).
    "charge-notice": KindRules(renewal_links=True, stages="before", extra_context=_charge_context),
    "card-expiring": KindRules(renewal_links=True, stages="before", extra_context=_charge_context),
    "charge-succeeded": KindRules(renewal_links=False, stages="any", extra_context=_charge_context),
    "charge-failed": KindRules(renewal_links=True, stages="any", extra_context=_charge_context),
    # The charge not made while the holder's own order awaits payment: its link leads to that
    # order (how to pay it, change its method, or cancel it).
    "charge-skipped": KindRules(renewal_links=True, stages="before", extra_context=_charge_context),
}
assert set(KIND_RULES) == set(KINDS)


# -- Dates in words ------------------------------------------------------------------------


def format_long_date(day: date, language: str) -> str:
    """``31 marzo 2027`` / ``31 March 2027``; the first of the month is ``1º`` in Italian."""
    month = MONTH_NAMES[language][day.month - 1]
    number = "1º" if language == "it" and day.day == 1 else str(day.day)
    return f"{number} {month} {day.year}"


def format_date_with_article(day: date, language: str) -> str:
    """Italian: the date with its article, elided before a vowel: ``il 31 marzo 2027``,
    ``l'8 marzo 2027``, ``l'11 marzo 2027``.  English needs none: ``31 March 2027``."""
    text = format_long_date(day, language)
    if language != "it":
        return text
    return f"l'{text}" if day.day in (8, 11) else f"il {text}"


@pass_context
def _long_date_filter(context: Any, day: date) -> str:
    return format_long_date(day, context["language"])


@pass_context
def _date_with_article_filter(context: Any, day: date) -> str:
    return format_date_with_article(day, context["language"])


# -- Templates -----------------------------------------------------------------------------


class _PackageResourceLoader(BaseLoader):
    """Templates read through importlib.resources, so they load from any kind of install."""

    def __init__(self, root: Traversable):
        self._root = root

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool]]:
        path = self._root
        for part in template.split("/"):
            if part in ("", ".", "..") or part.startswith("__"):
                raise TemplateNotFound(template)
            path = path.joinpath(part)
        if not path.is_file():
            raise TemplateNotFound(template)
        return path.read_text(encoding="utf-8"), None, lambda: True

    def list_templates(self) -> list[str]:
        names: list[str] = []

        def walk(folder: Traversable, prefix: str) -> None:
            for entry in folder.iterdir():
                if entry.name.startswith(("__", ".")):
                    continue
                if entry.is_dir():
                    walk(entry, f"{prefix}{entry.name}/")
                elif entry.name.endswith((".txt", ".html")):
                    names.append(prefix + entry.name)

        walk(self._root, "")
        return sorted(names)


@cache
def template_environment() -> Environment:
    """The one Jinja environment of the process: HTML autoescaped, text not, undefined is an error."""
    environment = Environment(
        loader=_PackageResourceLoader(files("email_templates")),
        autoescape=lambda name: name is not None and name.endswith(".html"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,
    )
    environment.filters["long_date"] = _long_date_filter
    environment.filters["date_with_article"] = _date_with_article_filter
    return environment


def template_name(kind: str, part: Literal["subject", "text", "html"], language: str) -> str:
    file_name = {"subject": "subject.{}.txt", "text": "body.{}.txt", "html": "body.{}.html"}[part]
    return f"{kind}/{file_name.format(language)}"


@cache
def _templates() -> dict[tuple[str, str, str], Template]:
    """Every template of every kind and language, compiled once per process."""
    environment = template_environment()
    return {
        (kind, part, language): environment.get_template(template_name(kind, part, language))
        for kind in KINDS
        for language in LANGUAGES
        for part in ("subject", "text", "html")
    }


@cache
def _css_inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


def compile_templates() -> None:
    """Compile every template now (once per process; what a fork inherits is not compiled again)."""
    _templates()
    _css_inliner()


# -- Checks on what reaches a header ------------------------------------------------------

#: Why the renderer refused a value: the ``reason`` of a :class:`Refused`, and the ``reason``
#: label of the refusal metrics (a short, fixed set).
NON_ASCII_LOCAL_PART = "non-ascii-local-part"
NOT_AN_ADDRESS = "not-an-address"
ENCODED_WORD = "encoded-word"
INVALID_DOMAIN = "invalid-domain"
INVALID_DATA = "invalid-data"
#: An email whose every mailbox was refused (each is recorded with its own reason).
NO_MAILBOX_LEFT = "no-mailbox-left"


class Refused(ValueError):
    """A value the renderer refuses, with a short ``reason`` (one of the constants above).

    ``mailboxes``: when every mailbox of an email was refused, each with its own reason.
    """

    def __init__(self, message: str, reason: str = INVALID_DATA, mailboxes: tuple[RefusedMailbox, ...] = ()):
        super().__init__(message)
        self.reason = reason
        self.mailboxes = mailboxes


def refusal_reason(error: ValueError) -> str:
    """The short reason of a refusal: a :class:`Refused`'s own, else ``invalid-data``."""
    return error.reason if isinstance(error, Refused) else INVALID_DATA


def _refuse_line_breaks(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} holds a line break")
    return value


def header_address(address: str, what: str = "address") -> str:
    """An address fit for a header and the SMTP envelope, or :class:`Refused` with the reason.

    What can be sent is :func:`worker.rules.holder_data.sendable_address`'s one rule (the import and
    the order form refuse the same addresses at the door); this adds the reason's code.
    """
    try:
        _refuse_line_breaks(address, what)
    except ValueError as error:
        raise Refused(str(error), NOT_AN_ADDRESS) from None
    try:
        return sendable_address(address)
    except ValueError as error:
        raise Refused(f"{what} {error}", _refusal_code(address)) from None


def _refusal_code(address: str) -> str:
    """The metric label of an address that :func:`sendable_address` refused."""
    if not _ADDRESS_RE.fullmatch(address):
        return NOT_AN_ADDRESS
    if "=?" in address:
        return ENCODED_WORD
    local = address.rpartition("@")[0]
    if not local.isascii():
        return NON_ASCII_LOCAL_PART
    return NOT_AN_ADDRESS if len(local) > LOCAL_PART_MAX else INVALID_DOMAIN


#: The ``worker_state`` key of this installation's id (see :func:`installation_id`).
INSTALLATION_ID_KEY = "installation_id"
_INSTALLATION_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_RESEND_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


@dataclass(frozen=True)
class OrderEmail:
    """What an order's email is about: its kind and the order's number (one email per kind and order)."""

    kind: str
    order_number: str


LedgerKey = tuple[int, str, str]


def message_id_for(
    about: Iterable[LedgerKey] | OrderEmail,
    domain: str,
    *,
    installation_id: str,
    resend: int | str = 0,
) -> str:
    """The Message-ID (without angle brackets) of an email; the one function every writer of
    outbox rows uses.

    ``about`` is what the email is about: the ledger keys it carries, each
    ``(mailbox_id, cycle_expires_on_iso, stage)`` (the notices and the auto-renew emails), or an
    :class:`OrderEmail`.  ``domain`` is the domain of ``MAIL_FROM``.  The value depends on:

    * ``installation_id`` (:func:`installation_id`: random, kept in the database), so two
      installations, or one rebuilt from scratch whose ids start again from 1, never give the
      same Message-ID to different emails;
    * what the email is about; for ledger keys the set, not their order, so a message rebuilt
      from the same ledger rows gets the same Message-ID and a receiver can drop a copy
      delivered twice;
    * ``resend``: 0 for the email itself.  A deliberate re-send of it as a new message passes
      anything else, a counter (1, 2, …) or a nonce (``secrets.token_hex(8)``), and gets a
      Message-ID of its own.

    A retry of an outbox message does not come here: it keeps the Message-ID stored on its row.
    """
    _refuse_line_breaks(domain, "Message-ID domain")
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(f"{domain!r} is not a domain for a Message-ID")
    if not isinstance(installation_id, str) or not _INSTALLATION_ID_RE.fullmatch(installation_id):
        raise ValueError(f"installation id {installation_id!r} is not 1 to 64 letters, digits, '_', '.' or '-'")
    if isinstance(resend, bool) or not isinstance(resend, (int, str)):
        raise ValueError(f"resend {resend!r} is not a counter or a nonce")
    if isinstance(resend, int) and resend < 0:
        raise ValueError(f"resend {resend!r} is negative")
    if isinstance(resend, str) and not _RESEND_RE.fullmatch(resend):
        raise ValueError(f"resend nonce {resend!r} is not 1 to 64 letters, digits, '_', '.', ':' or '-'")
    if isinstance(about, OrderEmail):
        if about.kind not in KINDS:
            raise ValueError(f"unknown email kind {about.kind!r}")
        if not isinstance(about.order_number, str) or not _ORDER_NUMBER_RE.fullmatch(about.order_number):
            raise ValueError(f"order number {about.order_number!r} is not like PEC-2027-000123")
        lines = [f"order|{about.kind}|{about.order_number}"]
    else:
        canonical = sorted(
            {(int(mailbox_id), date.fromisoformat(str(expires_on)).isoformat(), parse_stage(str(stage)).name)
             for mailbox_id, expires_on, stage in about}
        )  # fmt: skip
        if not canonical:
            raise ValueError("a message carries at least one ledger key")
        lines = [f"{m}|{e}|{s}" for m, e, s in canonical]
    text = "\n".join([f"installation|{installation_id}", f"resend|{resend}", *lines])
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    return f"{digest[:32]}@{domain}"


#: Engine -> the installation id last read through it (it never changes once created).
_installation_ids: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
_installation_lock = threading.Lock()


def installation_id(bind: Session | Connection | Engine) -> str:
    """This installation's id: random (uuid4), created once and kept in ``worker_state``.

    Migration 0008 creates it; a database without it (emptied by hand, say) gets one at first
    use.  With a session or a connection it is read in that transaction, and created there if
    missing: ``INSERT … ON CONFLICT DO NOTHING``, then read again, so processes creating it
    at once all end with the one that was committed first.  With an engine, the value last
    read through that engine is reused (it never changes); the first read takes a connection
    of its own, outside the engine's pool, so a thread that holds a pooled connection never
    waits for a second one.  An id read through a session is remembered for its engine; one
    created in a session is not, until it has been read committed.
    """
    if isinstance(bind, Engine):
        known = _installation_ids.get(bind)
        if known is not None:
            return known
        with _installation_lock:
            known = _installation_ids.get(bind)
            if known is None:
                if bind.dialect.name == "sqlite":
                    with bind.begin() as connection:
                        known, _created = _read_or_create_installation_id(connection)
                else:
                    own = create_engine(bind.url, poolclass=NullPool)
                    try:
                        with own.begin() as connection:
                            known, _created = _read_or_create_installation_id(connection)
                    finally:
                        own.dispose()
                _installation_ids[bind] = known
        return known
    value, created = _read_or_create_installation_id(bind)
    engine = bind.get_bind() if isinstance(bind, Session) else bind.engine
    engine = engine.engine if isinstance(engine, Connection) else engine
    if created:
        # Not committed yet (a dry run rolls it back): the engine reads it again when it needs it,
        # and waits for this transaction to end if it reads meanwhile.
        _installation_ids.pop(engine, None)
    else:
        _installation_ids[engine] = value
    return value


def _read_or_create_installation_id(executor: Session | Connection) -> tuple[str, bool]:
    """The stored id, and whether this transaction created it."""
    read = select(WorkerState.value).where(WorkerState.key == INSTALLATION_ID_KEY)
    value = executor.execute(read).scalar()
    if value is not None:
        return value, False
    executor.execute(
        dialect_insert(executor, WorkerState)
        .values(key=INSTALLATION_ID_KEY, value=uuid.uuid4().hex)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    return executor.execute(read).scalar_one(), True


# -- What the templates see ---------------------------------------------------------------


@dataclass(frozen=True)
class PendingOrderView:
    """The holder's order awaiting payment for a mailbox's cycle, as a notice mentions it."""

    number: str
    amount: str
    #: The method's label in the email's language ("" when none was chosen yet).
    method: str
    #: The method's key (``bank_transfer``, ``postal_slip``, ``card``, ``paypal``) or None.
    method_key: str | None


@dataclass(frozen=True)
class MailboxView:
    id: int
    address: str
    plan: str
    plan_label: str
    domain: str | None
    expires_on: date
    last_renewable_on: date
    deletion_on: date
    renewal_url: str | None
    pending_order: PendingOrderView | None = None


def _pending_order_view(raw: Any, language: str) -> PendingOrderView | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError("a mailbox's pending order must be an object")
    number, method = raw.get("number"), raw.get("method")
    if not isinstance(number, str) or not _ORDER_NUMBER_RE.fullmatch(number):
        raise ValueError(f"order number {number!r} is not like PEC-2027-000123")
    if method is not None and method not in _PAYMENT_METHODS:
        raise ValueError(f"payment method {method!r} is not one of {', '.join(_PAYMENT_METHODS)}")
    return PendingOrderView(
        number=number,
        amount=_euro(raw.get("amount_cents"), language),
        method=_METHOD_LABELS[language].get(method or "", ""),
        method_key=method,
    )


def _mailbox_view(raw: Any, signer: LinkSigner, with_renewal_link: bool, language: str = "it") -> MailboxView:
    if not isinstance(raw, Mapping):
        raise ValueError("each mailbox in the context must be an object")
    try:
        mailbox_id, address, expires_text, plan = raw["id"], raw["address"], raw["expires_on"], raw["plan"]
    except KeyError as missing:
        raise ValueError(f"a mailbox in the context has no {missing.args[0]!r}") from None
    if not isinstance(mailbox_id, int) or isinstance(mailbox_id, bool):
        raise ValueError(f"mailbox id {mailbox_id!r} is not a whole number")
    address = header_address(address, "mailbox address")
    if plan not in PLANS:
        raise ValueError(f"plan {plan!r} is not one of {', '.join(PLANS)}")
    try:
        expires_on = date.fromisoformat(expires_text)
    except (TypeError, ValueError):
        raise ValueError(f"expires_on {expires_text!r} is not a date YYYY-MM-DD") from None
    domain = raw.get("domain")
    if domain is not None:
        _refuse_line_breaks(domain, "domain")
        if not _DISPLAYED_DOMAIN_RE.fullmatch(domain):
            raise ValueError(f"domain {domain!r} is not a domain name")
    return MailboxView(
        id=mailbox_id,
        address=address,
        plan=plan,
        plan_label=PLAN_LABELS[plan],
        domain=domain,
        expires_on=expires_on,
        last_renewable_on=last_renewable_day(expires_on),
        deletion_on=deletion_date(expires_on),
        renewal_url=signer.renewal_url(mailbox_id, expires_on) if with_renewal_link else None,
        pending_order=_pending_order_view(raw.get("pending_order"), language),
    )


@dataclass(frozen=True)
class RefusedMailbox:
    """A mailbox left out of its email because the renderer refused its data."""

    #: The mailbox's id, when the stored context holds a valid one (it names its ledger row).
    mailbox_id: int | None
    #: The address as stored (not fit for a header: for the ledger and the logs only).
    address: str
    #: A short code (``non-ascii-local-part``, …) and the full explanation.
    reason: str
    detail: str

    @classmethod
    def of(cls, raw: Any, error: ValueError) -> RefusedMailbox:
        mailbox_id = raw.get("id") if isinstance(raw, Mapping) else None
        address = raw.get("address") if isinstance(raw, Mapping) else None
        return cls(
            mailbox_id=mailbox_id if isinstance(mailbox_id, int) and not isinstance(mailbox_id, bool) else None,
            address=address if isinstance(address, str) else repr(address),
            reason=refusal_reason(error),
            detail=str(error),
        )


def _common(values: Iterable[date]) -> date | None:
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def _display_name(value: Any) -> str | None:
    """The holder's name for the bodies: one line, or None.  Never used in a header."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("holder_name must be a string or null")
    return " ".join(value.split()) or None


# -- The rendered message -----------------------------------------------------------------


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    #: The envelope sender (MAIL FROM) and recipient (RCPT TO).
    sender: str
    recipient: str
    from_header: str
    date_header: str
    message_id: str
    kind: str
    stage: str
    mailbox_addresses: tuple[str, ...]
    #: The mailboxes of the stored context left out of this email (their data was refused).
    refused: tuple[RefusedMailbox, ...] = ()

    def __post_init__(self) -> None:
        # render() checked all of these; this guards a RenderedEmail built any other way.
        for name in ("subject", "sender", "recipient", "from_header", "date_header", "message_id", "kind", "stage"):
            _refuse_line_breaks(getattr(self, name), name)
        if not self.mailbox_addresses:
            raise ValueError("an email names at least one mailbox")
        for address in self.mailbox_addresses:
            _refuse_line_breaks(address, "mailbox address")

    def as_bytes(self) -> bytes:
        """The whole RFC 5322 message, ASCII with CRLF line ends, ready for SMTP DATA.

        The shape is fixed (multipart/alternative: text/plain, then text/html,
        both UTF-8 in base64) and every header value was checked when the
        email was rendered, so the message is written directly: several times
        faster than the ``email`` package, byte-for-byte deterministic, and
        folded exactly as intended.
        """
        # The "-" in the boundary never occurs in base64, so no part can contain it.
        boundary = "==pec-renewal-" + hashlib.sha256(self.message_id.encode("ascii")).hexdigest()[:24]
        head = "\r\n".join(
            (
                f"From: {self.from_header}",
                f"To: {self.recipient}",
                _folded_subject(self.subject),
                f"Date: {self.date_header}",
                f"Message-ID: <{self.message_id}>",
                "Auto-Submitted: auto-generated",
                f"X-PEC-Renewal-Kind: {self.kind}",
                f"X-PEC-Renewal-Stage: {self.stage}",
                _folded_list("X-PEC-Renewal-Mailboxes", self.mailbox_addresses),
                "MIME-Version: 1.0",
                "Content-Type: multipart/alternative;",
                f' boundary="{boundary}"',
                "",
                f"--{boundary}",
                'Content-Type: text/plain; charset="utf-8"',
                "Content-Transfer-Encoding: base64",
                "",
                "",
            )
        )
        html_head = "\r\n".join(
            (f"--{boundary}", 'Content-Type: text/html; charset="utf-8"', "Content-Transfer-Encoding: base64", "", "")
        )
        return b"".join(
            (
                head.encode("ascii"),
                _base64_lines(self.text),
                html_head.encode("ascii"),
                _base64_lines(self.html),
                f"--{boundary}--\r\n".encode("ascii"),
            )
        )


def _folded_subject(subject: str) -> str:
    """``Subject: ...`` folded within 78 columns; RFC 2047 base64 encoded-words when not ASCII."""
    if subject.isascii():
        if len(subject) <= 78 - len("Subject: "):
            # Nothing to fold: what Header would return, without its cost (a fifth of a render).
            return "Subject: " + subject
        return "Subject: " + Header(subject, "us-ascii", header_name="Subject").encode(linesep="\r\n")
    # 42 bytes make 56 base64 characters: "Subject: =?utf-8?b?...?=" stays within 78 columns.
    words = (f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=" for chunk in _utf8_chunks(subject, 42))
    return "Subject: " + "\r\n ".join(words)


def _utf8_chunks(text: str, size: int) -> Iterator[bytes]:
    """The UTF-8 bytes of ``text`` in pieces of at most ``size`` bytes, never splitting a character."""
    data = text.encode("utf-8")
    start = 0
    while start < len(data):
        end = min(start + size, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # a continuation byte: back off
            end -= 1
        yield data[start:end]
        start = end


def _folded_list(name: str, values: tuple[str, ...]) -> str:
    """``Name: a,b,c``: comma-separated, no spaces, on one line up to RFC 5322's limit of
    998 characters, so that ``value.split(",")`` reads it.  A longer list (some twenty
    mailboxes or more) folds after a comma; that unfolds to ", ", so readers should
    strip the items."""
    lines = [f"{name}: {values[0]}"]
    for value in values[1:]:
        if len(lines[-1]) + len(value) + 2 <= MAX_HEADER_LINE:  # room for "," + value + a trailing ","
            lines[-1] += f",{value}"
        else:
            lines[-1] += ","
            lines.append(f" {value}")
    return "\r\n".join(lines)


def _base64_lines(text: str) -> bytes:
    return base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")


class EmailRenderer:
    """Renders outbox rows into messages.  Templates are compiled once per process."""

    def __init__(self, *, mail_from: str, signer: LinkSigner):
        _refuse_line_breaks(mail_from, "mail_from")
        display_name, address = parseaddr(mail_from)
        self._sender = header_address(address, "mail_from address")
        self._from_header = formataddr((display_name, self._sender), charset="utf-8")
        self._provider_name = display_name or self._sender
        self._signer = signer
        self._templates = _templates()
        self._inliner = _css_inliner()

    def render(
        self,
        *,
        kind: str,
        stage: str,
        language: str,
        to_address: str,
        message_id: str,
        context: Mapping[str, Any],
        now: datetime,
    ) -> RenderedEmail:
        rules = KIND_RULES.get(kind)
        if rules is None:
            raise ValueError(f"unknown email kind {kind!r}")
        if language not in LANGUAGES:
            raise ValueError(f"language {language!r} is not one of {', '.join(LANGUAGES)}")
        parsed_stage = self._checked_stage(stage, rules)
        recipient = header_address(to_address, "to_address")
        _refuse_line_breaks(message_id, "message_id")
        if not _MESSAGE_ID_RE.fullmatch(message_id):
            raise ValueError(f"message_id {message_id!r} is not of the form local@domain")
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be an aware datetime")

        variables, refused = self._variables(kind, rules, parsed_stage, language, context)
        subject = " ".join(self._templates[kind, "subject", language].render(variables).split())
        if not subject:
            raise ValueError(f"the {kind} subject rendered empty")
        text = self._templates[kind, "text", language].render(variables)
        html = self._inliner.inline(self._templates[kind, "html", language].render(variables))
        return RenderedEmail(
            subject=subject,
            text=text,
            html=html,
            sender=self._sender,
            recipient=recipient,
            from_header=self._from_header,
            date_header=format_datetime(now),
            message_id=message_id,
            kind=kind,
            stage=parsed_stage.name,
            mailbox_addresses=tuple(mailbox.address for mailbox in variables["mailboxes"]),
            refused=refused,
        )

    @staticmethod
    def _checked_stage(stage: str, rules: KindRules) -> Stage:
        _refuse_line_breaks(stage, "stage")
        parsed = parse_stage(stage)
        if parsed.name != stage:
            raise ValueError(f"stage {stage!r} is not written canonically ({parsed.name})")
        if rules.stages == "before" and parsed.after_expiry:
            raise ValueError(f"stage {stage} falls after expiry: not for this kind")
        if rules.stages == "after" and not parsed.after_expiry:
            raise ValueError(f"stage {stage} falls before expiry: not for this kind")
        return parsed

    def _variables(
        self, kind: str, rules: KindRules, stage: Stage, language: str, context: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[RefusedMailbox, ...]]:
        """The template variables, and the mailboxes left out (``mailboxes_apart`` kinds only)."""
        if not isinstance(context, Mapping):
            raise ValueError("the context must be an object")
        raw_mailboxes = context.get("mailboxes")
        if not isinstance(raw_mailboxes, list) or not raw_mailboxes:
            raise ValueError("the context names no mailboxes")
        mailboxes: list[MailboxView] = []
        refused: list[RefusedMailbox] = []
        for raw in raw_mailboxes:
            try:
                mailboxes.append(_mailbox_view(raw, self._signer, rules.renewal_links, language))
            except ValueError as error:
                if not rules.mailboxes_apart:
                    raise
                refused.append(RefusedMailbox.of(raw, error))
        if not mailboxes:
            # Each mailbox is recorded with its own reason; the email has nothing left to say.
            raise Refused(
                f"every mailbox of the email was refused; the first: {refused[0].detail}",
                NO_MAILBOX_LEFT,
                tuple(refused),
            )
        variables: dict[str, Any] = {
            "kind": kind,
            "language": language,
            "stage": stage.name,
            "after_expiry": stage.after_expiry,
            "expires_today": stage.name == "0d",
            # The manual process recommends renewing at least 15 days before expiry.
            "early_enough": not stage.after_expiry and (stage.months < 0 or stage.days <= -15),
            "holder_name": _display_name(context.get("holder_name")),
            "provider_name": self._provider_name,
            "mailboxes": mailboxes,
            "count": len(mailboxes),
            "common_expires_on": _common(m.expires_on for m in mailboxes),
            "common_last_renewable_on": _common(m.last_renewable_on for m in mailboxes),
            "common_deletion_on": _common(m.deletion_on for m in mailboxes),
            "domains": sorted({m.domain for m in mailboxes if m.domain}),
        }
        if rules.extra_context is not None:
            variables.update(rules.extra_context(context, variables, self._signer))
        return variables, tuple(refused)
