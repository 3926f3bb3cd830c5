"""Message-IDs: the one function every writer of outbox rows uses, and the installation id they start from."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Connection, Engine, create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from worker.mail.headers import refuse_line_breaks
from worker.mail.kinds import KINDS, ORDER_NUMBER_RE
from worker.rules.schedule import parse_stage
from worker.store.db import dialect_insert
from worker.store.models import WorkerState

_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9.\-]+")
_DOMAIN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")

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
    refuse_line_breaks(domain, "Message-ID domain")
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
        if not isinstance(about.order_number, str) or not ORDER_NUMBER_RE.fullmatch(about.order_number):
            raise ValueError(f"order number {about.order_number!r} is not like PEC-2027-000123")
        lines = [f"order|{about.kind}|{about.order_number}"]
    else:
        canonical = sorted(
            {
                (int(mailbox_id), date.fromisoformat(str(expires_on)).isoformat(), parse_stage(str(stage)).name)
                for mailbox_id, expires_on, stage in about
            }
        )
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


def checked_message_id(message_id: str) -> str:
    """``message_id`` if it is fit for the Message-ID header (``local@domain``, no line break)."""
    refuse_line_breaks(message_id, "message_id")
    if not _MESSAGE_ID_RE.fullmatch(message_id):
        raise ValueError(f"message_id {message_id!r} is not of the form local@domain")
    return message_id
