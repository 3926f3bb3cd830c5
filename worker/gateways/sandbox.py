"""The sandbox gateway: a real adapter with its own record, deterministic per token.

It behaves like a gateway, not like a mock: every attempt is written to the
``sandbox_charges`` table (its "dashboard"), idempotency works exactly like
Stripe's (the same key gives back the same stored result and never a second
charge; the same key with other parameters is refused), and ``latency_ms``
makes each call wait as long as a real gateway would.

Tokens and what they do:

=========================================  =========================
``pm_card_visa``, ``paypal_ok``            succeeded
``pm_card_chargeDeclinedInsufficientFunds`` soft decline (``insufficient_funds``)
``pm_card_chargeDeclined``                 hard decline (``generic_decline``)
``pm_card_chargeDeclinedExpiredCard``      hard decline (``expired_card``)
``paypal_declined``                        hard decline (``INSTRUMENT_DECLINED``)
``pm_card_authenticationRequired``         requires authentication, every time
``pm_card_authenticationRequired``         requires authentication until one of its charges was
``SetupForOffSession``                     approved on the 3-D Secure challenge
                                           (:mod:`~worker.gateways.sandbox_challenge`); then
                                           succeeded (Stripe's 4000 0025 0000 3155)
``pm_sandbox_timeout``                     charged (recorded as succeeded), but every answer to
                                           ``charge`` is lost: the caller gets UNKNOWN and must
                                           ``lookup`` the key, which answers SUCCEEDED
anything else                              hard decline (``invalid_payment_method``)
=========================================  =========================

Each call is one statement (two for a replay) on a connection of its own,
committed at once, independently of the caller's transaction.  The first writer
of a key wins through the unique constraint (``INSERT … ON CONFLICT DO
NOTHING``), so many threads or processes charging the same key at once record
exactly one charge.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, bindparam, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.gateways import sandbox_challenge
from worker.gateways.base import (
    AuthenticationStep,
    ChargeOutcome,
    ChargeResult,
    IdempotencyConflict,
    SavedMethod,
    mask_token,
)
from worker.gateways.refunds import RefundOutcome, RefundResult
from worker.store.db import dialect_insert
from worker.store.models import SandboxCharge

log = logging.getLogger(__name__)

TIMEOUT_TOKEN = "pm_sandbox_timeout"
#: Authenticated once on session (its challenge approved), then charged off session without asking.
SET_UP_ON_SESSION_TOKEN = "pm_card_authenticationRequiredSetupForOffSession"

#: token -> (outcome, decline code, message)
BEHAVIOUR: dict[str, tuple[ChargeOutcome, str | None, str]] = {
    "pm_card_visa": (ChargeOutcome.SUCCEEDED, None, "charge succeeded"),
    "paypal_ok": (ChargeOutcome.SUCCEEDED, None, "charge succeeded"),
    TIMEOUT_TOKEN: (ChargeOutcome.SUCCEEDED, None, "charge succeeded"),
    "pm_card_chargeDeclinedInsufficientFunds": (
        ChargeOutcome.SOFT_DECLINE,
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
    "pm_card_chargeDeclined": (ChargeOutcome.HARD_DECLINE, "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedExpiredCard": (ChargeOutcome.HARD_DECLINE, "expired_card", "Your card has expired."),
    "paypal_declined": (
        ChargeOutcome.HARD_DECLINE,
        "INSTRUMENT_DECLINED",
        "The instrument presented was declined by the processor or bank.",
    ),
    "pm_card_authenticationRequired": (
        ChargeOutcome.REQUIRES_AUTHENTICATION,
        "authentication_required",
        "The card requires the holder's authentication.",
    ),
    SET_UP_ON_SESSION_TOKEN: (
        ChargeOutcome.REQUIRES_AUTHENTICATION,
        "authentication_required",
        "The card requires the holder's authentication.",
    ),
}
UNKNOWN_TOKEN = (ChargeOutcome.HARD_DECLINE, "invalid_payment_method", "No such payment method.")

LOST_ANSWER_MESSAGE = "no answer from the sandbox gateway (simulated timeout); look the charge up"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def sandbox_reference(idempotency_key: str) -> str:
    """The sandbox's charge id: derived from the key, so it is stable across replays."""
    return "sbx_ch_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]


class SandboxGateway:
    name = "sandbox"

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        latency_ms: int = 0,
        clock: Callable[[], datetime] | None = None,
    ):
        self._session_factory = session_factory
        with session_factory() as session:
            bind = session.get_bind()
        #: Each call is one short transaction on a connection of the factory's engine.
        self._engine = bind if isinstance(bind, Engine) else bind.engine
        self._latency = max(0, latency_ms) / 1000.0
        self._clock = clock or _utc_now

    def charge(
        self,
        *,
        payment_method: str,
        amount_cents: int,
        currency: str,
        idempotency_key: str,
        description: str,
    ) -> ChargeResult:
        if amount_cents <= 0:
            raise ValueError(f"amount_cents must be positive, not {amount_cents}")
        if not idempotency_key or len(idempotency_key) > 200:
            raise ValueError("idempotency_key must be 1 to 200 characters")
        currency = currency.upper()
        self._wait()
        outcome, decline_code, _message = BEHAVIOUR.get(payment_method, UNKNOWN_TOKEN)
        if payment_method == SET_UP_ON_SESSION_TOKEN and sandbox_challenge.approved_before(
            self._engine, payment_method
        ):
            outcome = ChargeOutcome.SUCCEEDED
        values = {
            "idempotency_key": idempotency_key,
            "payment_method": payment_method,
            "amount_cents": amount_cents,
            "currency": currency,
            "outcome": outcome.value,
            "reference": sandbox_reference(idempotency_key),
            "description": description,
            "at": self._clock(),
        }
        with self._autocommit() as connection:
            row = connection.execute(_insert(connection), values).first()
            inserted = row is not None
            if row is None:
                # Another call recorded the key first (the insert waited for its transaction on
                # PostgreSQL; SQLite's transactions are serial): read what it recorded.
                row = connection.execute(_ROW, {"key": idempotency_key}).one()
            connection.commit()
        if not inserted:
            # A replay: Stripe compares the parameters and refuses a key reused for another charge.
            if (row.payment_method, row.amount_cents, row.currency) != (payment_method, amount_cents, currency):
                raise IdempotencyConflict(
                    f"idempotency key already used for another charge "
                    f"({mask_token(row.payment_method)} {row.amount_cents} {row.currency})"
                )
            log.debug("sandbox: replay of %s -> %s", row.reference, row.outcome)
        else:
            log.info(
                "sandbox: charged %s %s %s -> %s", mask_token(payment_method), amount_cents, currency, outcome.value
            )
        if payment_method == TIMEOUT_TOKEN:
            return ChargeResult(ChargeOutcome.UNKNOWN, None, LOST_ANSWER_MESSAGE)
        return _result(row)

    def lookup(self, idempotency_key: str) -> ChargeResult | None:
        self._wait()
        with self._autocommit() as connection:
            row = connection.execute(_ROW, {"key": idempotency_key}).first()
            connection.commit()
        return None if row is None else _result(row)

    def refund(
        self, *, reference: str, amount_cents: int, currency: str, idempotency_key: str, kind: str, reason: str
    ) -> RefundResult:
        """A refund of the sandbox charge ``reference``, recorded as a row of its own (``refund:<charge>``
        as the method, outcome ``refunded``) under its idempotency key."""
        del kind
        self._wait()
        values = {
            "idempotency_key": idempotency_key,
            "payment_method": f"refund:{reference}"[:200],
            "amount_cents": amount_cents,
            "currency": currency.upper(),
            "outcome": "refunded",
            "reference": "sbx_re_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32],
            "description": reason,
            "at": self._clock(),
        }
        with self._autocommit() as connection:
            charged = connection.execute(
                select(_SANDBOX.c.amount_cents).where(
                    _SANDBOX.c.reference == reference, _SANDBOX.c.outcome == ChargeOutcome.SUCCEEDED.value
                )
            ).first()
            if charged is None or amount_cents > charged.amount_cents:
                connection.commit()
                return RefundResult(RefundOutcome.FAILED, None, "no such sandbox charge, or more than it charged")
            row = connection.execute(_insert(connection), values).first()
            if row is None:
                row = connection.execute(_ROW, {"key": idempotency_key}).one()
            connection.commit()
        log.info("sandbox: refunded %s of %s", amount_cents, reference)
        return RefundResult(RefundOutcome.SUCCEEDED, row.reference, "refund succeeded")

    def save_method(self, setup_reference: str) -> SavedMethod | None:
        """The sandbox's hosted page hands back the test token chosen: one of its tokens is saved
        as it is (a card's expiry is not known), anything else is refused."""
        self._wait()
        if setup_reference not in BEHAVIOUR:
            return None
        return SavedMethod(setup_reference)

    def start_authentication(self, *, reference: str, payment_method: str, return_url: str) -> AuthenticationStep:
        """The sandbox's 3-D Secure challenge page for the charge ``reference``
        (:mod:`worker.gateways.sandbox_challenge`), returning to ``return_url``'s path."""
        del payment_method
        parts = urlsplit(return_url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        url = sandbox_challenge.open_challenge(
            self._engine, charge_reference=reference, return_path=path, now=self._clock()
        )
        if url is None:
            found = self._charge_by_reference(reference)
            return AuthenticationStep(result=found or ChargeResult(ChargeOutcome.HARD_DECLINE, None, "no such charge"))
        return AuthenticationStep(url=url)

    def finish_authentication(self, *, reference: str, idempotency_key: str) -> ChargeResult:
        """The charge as its challenge left it: succeeded once approved, else still awaiting authentication."""
        del idempotency_key
        found = self._charge_by_reference(reference)
        return found or ChargeResult(ChargeOutcome.HARD_DECLINE, None, "no such charge", "invalid_payment_method")

    def _charge_by_reference(self, reference: str) -> ChargeResult | None:
        with self._autocommit() as connection:
            row = connection.execute(select(*_ROW_COLUMNS).where(_SANDBOX.c.reference == reference)).first()
            connection.commit()
        return None if row is None else _result(row)

    def _autocommit(self) -> Connection:
        """A connection whose statements commit on their own on PostgreSQL (a call is one statement,
        two for a replay: no BEGIN or COMMIT to wait for).  SQLite's connections open their own
        transaction (:func:`worker.store.db.make_engine`): ``commit()`` ends it."""
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def check_credentials(self) -> str:
        with self._session_factory() as session:
            recorded = session.scalar(select(func.count()).select_from(SandboxCharge))
        return f"sandbox, {recorded} charge(s) recorded"

    def close(self) -> None:
        pass

    def _wait(self) -> None:
        if self._latency:
            time.sleep(self._latency)


_SANDBOX = SandboxCharge.__table__
_ROW_COLUMNS = (
    _SANDBOX.c.payment_method,
    _SANDBOX.c.amount_cents,
    _SANDBOX.c.currency,
    _SANDBOX.c.outcome,
    _SANDBOX.c.reference,
)
_ROW = select(*_ROW_COLUMNS).where(_SANDBOX.c.idempotency_key == bindparam("key"))
#: dialect name -> the insert of a charge whose key is new, built once.
_INSERTS: dict[str, Any] = {}


def _insert(connection: Connection) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` the row, for the connection's dialect."""
    statement = _INSERTS.get(connection.dialect.name)
    if statement is None:
        statement = dialect_insert(connection, _SANDBOX).on_conflict_do_nothing().returning(*_ROW_COLUMNS)
        _INSERTS[connection.dialect.name] = statement
    return statement


def _result(row: Any) -> ChargeResult:
    outcome = ChargeOutcome(row.outcome)
    _, decline_code, message = BEHAVIOUR.get(row.payment_method, UNKNOWN_TOKEN)
    if outcome is ChargeOutcome.SUCCEEDED:
        decline_code, message = None, "charge succeeded"
    return ChargeResult(outcome, row.reference, message, decline_code)


def list_charges(session_factory: sessionmaker[Session], *, limit: int | None = None) -> list[dict]:
    """The sandbox's record, oldest first, as plain dicts (for the CLI)."""
    with session_factory() as session:
        query = select(SandboxCharge).order_by(SandboxCharge.id)
        if limit is not None:
            query = query.limit(limit)
        rows = session.execute(query).scalars().all()
        return [
            {
                "id": row.id,
                "at": row.at.isoformat(),
                "idempotency_key": row.idempotency_key,
                "payment_method": row.payment_method,
                "amount_cents": row.amount_cents,
                "currency": row.currency,
                "outcome": row.outcome,
                "reference": row.reference,
                "description": row.description,
            }
            for row in rows
        ]
