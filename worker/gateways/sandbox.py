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

A stored method (``pm_sbx_…``, ``paypal_sbx_…``: :mod:`worker.gateways.sandbox_methods`)
answers as the token it was made from; the record keeps the stored method's id.

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
from sqlalchemy.sql.functions import coalesce

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
from worker.gateways.sandbox_methods import (
    behaviour_of,
    card_expiry,
    create_method,
    describe_stored,
    is_stored_method,
)
from worker.gateways.sandbox_webhooks import CHARGE_FAILED, CHARGE_SUCCEEDED, REFUND_SUCCEEDED, write_event
from worker.store.db import dialect_insert
from worker.store.models import SandboxCharge, SandboxMethod

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

#: The outcome of a refund's row in the sandbox's record.
REFUNDED = "refunded"

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
        webhooks: bool = False,
    ):
        self._session_factory = session_factory
        with session_factory() as session:
            bind = session.get_bind()
        #: Each call is one short transaction on a connection of the factory's engine.
        self._engine = bind if isinstance(bind, Engine) else bind.engine
        self._latency = max(0, latency_ms) / 1000.0
        self._clock = clock or _utc_now
        #: Write a webhook event with each new record (``SANDBOX_WEBHOOK_URL`` set): :mod:`.sandbox_webhooks`.
        self._webhooks = webhooks

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
        values = {
            "idempotency_key": idempotency_key,
            "payment_method": payment_method,
            "amount_cents": amount_cents,
            "currency": currency,
            "reference": sandbox_reference(idempotency_key),
            "description": description,
            "at": self._clock(),
        }
        with self._connection() as connection:
            behaviour = behaviour_of(connection, payment_method)
            outcome = BEHAVIOUR.get(behaviour, UNKNOWN_TOKEN)[0]
            if behaviour == SET_UP_ON_SESSION_TOKEN and sandbox_challenge.set_up_on_session(
                connection, payment_method, stored=is_stored_method(payment_method)
            ):
                outcome = ChargeOutcome.SUCCEEDED
            values["outcome"] = outcome.value
            row = connection.execute(_insert(connection), values).first()
            inserted = row is not None
            if row is None:
                # Another call recorded the key first (the insert waited for its transaction on
                # PostgreSQL; SQLite's transactions are serial): read what it recorded.
                row = connection.execute(_ROW, {"key": idempotency_key}).one()
                behaviour = row.behaviour
            elif self._webhooks:
                _charge_event(connection, row, values, _result(row, behaviour))
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
        if behaviour == TIMEOUT_TOKEN:
            return ChargeResult(ChargeOutcome.UNKNOWN, None, LOST_ANSWER_MESSAGE)
        return _result(row, behaviour)

    def lookup(self, idempotency_key: str) -> ChargeResult | None:
        self._wait()
        with self._autocommit() as connection:
            row = connection.execute(_ROW, {"key": idempotency_key}).first()
            connection.commit()
        return None if row is None else _result(row, row.behaviour)

    def refund(
        self, *, reference: str, amount_cents: int, currency: str, idempotency_key: str, kind: str, reason: str
    ) -> RefundResult:
        """A refund of the sandbox charge ``reference`` (its id, or the key it was charged under, as a
        payment registered by the sandbox's checkout names it), recorded as a row of its own
        (``refund:<charge>`` as the method, outcome ``refunded``) under its idempotency key.

        Idempotent as its charges are: the same key gives back the first refund and never a second
        one; the same key with another amount or charge is refused.  The charge's row is locked
        while its refunds are summed, so two refunds at once never give back more than it took."""
        del kind
        if amount_cents <= 0:
            return RefundResult(RefundOutcome.FAILED, None, "the amount to refund must be positive")
        self._wait()
        with self._engine.connect() as connection:
            charged = connection.execute(
                select(_SANDBOX.c.id, _SANDBOX.c.reference, _SANDBOX.c.amount_cents, _SANDBOX.c.currency)
                .where(
                    (_SANDBOX.c.reference == reference) | (_SANDBOX.c.idempotency_key == reference),
                    _SANDBOX.c.outcome == ChargeOutcome.SUCCEEDED.value,
                )
                .with_for_update()
            ).first()
            if charged is None:
                connection.rollback()
                return RefundResult(RefundOutcome.FAILED, None, "no such sandbox charge")
            method = f"refund:{charged.reference}"
            earlier = connection.execute(_ROW, {"key": idempotency_key}).first()
            if earlier is not None:
                connection.rollback()
                if (earlier.payment_method, earlier.amount_cents, earlier.outcome) != (method, amount_cents, REFUNDED):
                    return RefundResult(
                        RefundOutcome.FAILED, None, "idempotency key already used for another refund or charge"
                    )
                log.debug("sandbox: replay of refund %s", earlier.reference)
                return RefundResult(RefundOutcome.SUCCEEDED, earlier.reference, "refund succeeded")
            refunded = connection.execute(
                select(func.coalesce(func.sum(_SANDBOX.c.amount_cents), 0)).where(
                    _SANDBOX.c.payment_method == method, _SANDBOX.c.outcome == REFUNDED
                )
            ).scalar_one()
            if currency.upper() != charged.currency or amount_cents > charged.amount_cents - refunded:
                connection.rollback()
                return RefundResult(RefundOutcome.FAILED, None, "more than is left of the sandbox charge")
            values = {
                "idempotency_key": idempotency_key,
                "payment_method": method[:200],
                "amount_cents": amount_cents,
                "currency": currency.upper(),
                "outcome": REFUNDED,
                "reference": "sbx_re_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:32],
                "description": reason,
                "at": self._clock(),
            }
            row = connection.execute(_insert(connection), values).first()
            if row is None:
                row = connection.execute(_ROW, {"key": idempotency_key}).one()
            elif self._webhooks:
                write_event(
                    connection,
                    REFUND_SUCCEEDED,
                    key=idempotency_key,
                    stream_id=charged.id,
                    data={
                        "refund": row.reference,
                        "charge": charged.reference,
                        "payment": reference,
                        "amount_cents": amount_cents,
                        "currency": values["currency"],
                    },
                    now=values["at"],
                )
            connection.commit()
        log.info("sandbox: refunded %s of %s", amount_cents, charged.reference)
        return RefundResult(RefundOutcome.SUCCEEDED, row.reference, "refund succeeded")

    def save_method(self, setup_reference: str) -> SavedMethod | None:
        """The sandbox's hosted page hands back the test token chosen: a stored method is created
        from one of its tokens (``pm_sbx_…`` with the card's expiry, or ``paypal_sbx_…``), anything
        else is refused."""
        self._wait()
        if setup_reference not in BEHAVIOUR:
            return None
        with self._autocommit() as connection:
            saved = create_method(connection, setup_reference, now=self._clock())
            connection.commit()
        log.info("sandbox: stored a new method %s", mask_token(saved.token))
        return saved

    def keep_charged_method(self, idempotency_key: str) -> SavedMethod | None:
        """The method of the successful charge made under ``idempotency_key``, kept for off-session
        charges (Stripe's ``setup_future_usage``): the same key always gives the same method.  A
        charge of a stored method keeps that method; None when no charge succeeded under the key."""
        with self._autocommit() as connection:
            row = connection.execute(_ROW, {"key": idempotency_key}).first()
            saved = None
            if row is not None and row.outcome == ChargeOutcome.SUCCEEDED.value:
                if is_stored_method(row.payment_method):
                    found = connection.execute(
                        select(_METHODS.c.exp_month, _METHODS.c.exp_year).where(
                            _METHODS.c.method_id == row.payment_method
                        )
                    ).first()
                    if found is not None:
                        saved = SavedMethod(row.payment_method, card_expiry(found.exp_month, found.exp_year))
                else:
                    saved = create_method(connection, row.behaviour, now=self._clock(), source_key=idempotency_key)
            connection.commit()
        return saved

    def _connection(self) -> Connection:
        """The connection of a charge: one that commits each statement, unless a webhook event is
        written with the record (then both commit together)."""
        return self._engine.connect() if self._webhooks else self._autocommit()

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

    def answer_challenge(self, public_id: str, *, approve: bool) -> sandbox_challenge.Challenge | None:
        """The holder's answer on the challenge ``public_id``, recorded once; approved, the charge
        succeeds and, with webhooks on, its ``charge.succeeded`` event is written with it."""

        def announce(connection: Connection, reference: str) -> None:
            if not self._webhooks:
                return
            row = connection.execute(select(_SANDBOX).where(_SANDBOX.c.reference == reference)).one()
            values = {"idempotency_key": row.idempotency_key, "description": row.description, "at": self._clock()}
            _charge_event(
                connection, row, values, ChargeResult(ChargeOutcome.SUCCEEDED, row.reference, "authenticated")
            )

        return sandbox_challenge.decide_challenge(
            self._engine, public_id, approve=approve, now=self._clock(), on_approved=announce
        )

    def finish_authentication(self, *, reference: str, idempotency_key: str) -> ChargeResult:
        """The charge as its challenge left it: succeeded once approved, else still awaiting authentication."""
        del idempotency_key
        found = self._charge_by_reference(reference)
        return found or ChargeResult(ChargeOutcome.HARD_DECLINE, None, "no such charge", "invalid_payment_method")

    def _charge_by_reference(self, reference: str) -> ChargeResult | None:
        with self._autocommit() as connection:
            row = connection.execute(_ROW_BY_REFERENCE, {"reference": reference}).first()
            connection.commit()
        return None if row is None else _result(row, row.behaviour)

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
_METHODS = SandboxMethod.__table__
_ROW_COLUMNS = (
    _SANDBOX.c.id,
    _SANDBOX.c.payment_method,
    _SANDBOX.c.amount_cents,
    _SANDBOX.c.currency,
    _SANDBOX.c.outcome,
    _SANDBOX.c.reference,
)
#: A recorded charge, with the test token it answered as (a stored method's, or the token charged).
_ANSWERED_AS = select(
    *_ROW_COLUMNS, coalesce(_METHODS.c.behaviour, _SANDBOX.c.payment_method).label("behaviour")
).select_from(_SANDBOX.outerjoin(_METHODS, _METHODS.c.method_id == _SANDBOX.c.payment_method))
_ROW = _ANSWERED_AS.where(_SANDBOX.c.idempotency_key == bindparam("key"))
#: The same, found by the charge's id (a 3-D Secure challenge names its charge so).
_ROW_BY_REFERENCE = _ANSWERED_AS.where(_SANDBOX.c.reference == bindparam("reference"))
#: dialect name -> the insert of a charge whose key is new, built once.
_INSERTS: dict[str, Any] = {}


def _insert(connection: Connection) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING RETURNING`` the row, for the connection's dialect."""
    statement = _INSERTS.get(connection.dialect.name)
    if statement is None:
        statement = dialect_insert(connection, _SANDBOX).on_conflict_do_nothing().returning(*_ROW_COLUMNS)
        _INSERTS[connection.dialect.name] = statement
    return statement


def _charge_event(connection: Connection, row: Any, values: dict, result: ChargeResult) -> None:
    """The webhook event of a charge just recorded (its outcome is final: a lost answer is the
    caller's, the sandbox knows what it did)."""
    write_event(
        connection,
        CHARGE_SUCCEEDED if result.succeeded else CHARGE_FAILED,
        key=values["idempotency_key"],
        stream_id=row.id,
        data={
            "charge": row.reference,
            "idempotency_key": values["idempotency_key"],
            "amount_cents": row.amount_cents,
            "currency": row.currency,
            "outcome": row.outcome,
            "decline_code": result.decline_code,
            "description": values["description"],
        },
        now=values["at"],
    )


def _result(row: Any, behaviour: str) -> ChargeResult:
    outcome = ChargeOutcome(row.outcome)
    _, decline_code, message = BEHAVIOUR.get(behaviour, UNKNOWN_TOKEN)
    if outcome is ChargeOutcome.SUCCEEDED:
        decline_code, message = None, "charge succeeded"
    return ChargeResult(outcome, row.reference, message, decline_code)


def list_charges(session_factory: sessionmaker[Session], *, limit: int | None = None) -> list[dict]:
    """The sandbox's record, oldest first, as plain dicts (for the CLI); a stored method's charge
    names its card (``stored_method``: ``Visa •••• 4242``)."""
    with session_factory() as session:
        query = select(SandboxCharge).order_by(SandboxCharge.id)
        if limit is not None:
            query = query.limit(limit)
        rows = session.execute(query).scalars().all()
        connection = session.connection()
        stored = {
            token: describe_stored(connection, token)
            for token in {row.payment_method for row in rows}
            if is_stored_method(token)
        }
        return [
            {
                "id": row.id,
                "at": row.at.isoformat(),
                "idempotency_key": row.idempotency_key,
                "payment_method": row.payment_method,
                "stored_method": stored.get(row.payment_method),
                "amount_cents": row.amount_cents,
                "currency": row.currency,
                "outcome": row.outcome,
                "reference": row.reference,
                "description": row.description,
            }
            for row in rows
        ]
