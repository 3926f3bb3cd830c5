"""The gateway calls of the charge work, made outside any transaction once the intent is committed.

A call is prepared in the transaction that claims it (from the committed intent) and
made after the commit; it returns the gateway's answer for the next transaction to record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from worker.gateways import ChargeOutcome, ChargeResult, PaymentGateway
from worker.rules.auto_renew import NOT_CHARGED, charge_description
from worker.services.charges.results import ChargeRun

Call = Callable[[], ChargeResult]


def charge_parameters(
    *,
    mailbox_id: int,
    cycle_expires_on: date,
    idempotency_key: str,
    amount_cents: int,
    currency: str,
    payment_method: str,
    **_other_columns: Any,
) -> dict[str, Any]:
    """``gateway.charge``'s arguments for a committed intent, from its columns."""
    return {
        "payment_method": payment_method,
        "amount_cents": amount_cents,
        "currency": currency,
        "idempotency_key": idempotency_key,
        "description": charge_description(mailbox_id, cycle_expires_on),
    }


def charge_call(gateway: PaymentGateway, parameters: dict[str, Any], run: ChargeRun) -> Call:
    """Charge an intent (``gateway.charge``'s ``parameters``); when the answer is lost, ask the
    gateway at once what happened."""

    def call() -> ChargeResult:
        run.charges += 1
        answer = gateway.charge(**parameters)
        if answer.outcome is ChargeOutcome.UNKNOWN:
            # The answer was lost: ask at once; the caller records what the gateway knows.
            run.lookups += 1
            found = gateway.lookup(parameters["idempotency_key"])
            if found is not None and found.outcome is not ChargeOutcome.UNKNOWN:
                return found
        return answer

    return call


def reconcile_call(gateway: PaymentGateway, intent: Any, today: date, expires_on: date, run: ChargeRun) -> Call:
    """Look an unresolved intent up; if no money moved under its key, charge it with the same
    key while still before expiry (safe: the gateway charges a key once), else a soft decline
    ``not_charged``."""
    parameters = charge_parameters(**intent._mapping)
    key = parameters["idempotency_key"]

    def call() -> ChargeResult:
        run.lookups += 1
        found = gateway.lookup(key)
        if found is not None:
            return found
        if today >= expires_on:
            return ChargeResult(ChargeOutcome.SOFT_DECLINE, None, "not charged before expiry", NOT_CHARGED)
        run.charges += 1
        answer = gateway.charge(**parameters)
        if answer.outcome is ChargeOutcome.UNKNOWN:
            run.lookups += 1
            again = gateway.lookup(key)
            if again is not None and again.outcome is not ChargeOutcome.UNKNOWN:
                return again
        return answer

    return call
