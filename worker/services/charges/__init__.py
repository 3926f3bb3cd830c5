"""Auto-renew charges: the service that carries out :mod:`worker.rules.auto_renew`.

- :mod:`~worker.services.charges.state`: the state of a cycle, from the database (the
  ledger rows and charge intents the rule reads), and the lock of one mailbox;
- :mod:`~worker.services.charges.emails`: what the auto-renew emails carry, and the
  writing of one (its outbox and ledger rows);
- :mod:`~worker.services.charges.service`: one mailbox's charge work, intent then act
  then record (:func:`charge_mailbox`);
- :mod:`~worker.services.charges.outcomes`: what its transactions write besides the
  intent: the invoice, the receipt and the new expiry, the authentication's, charge-skipped
  and charge-failed emails, the unpaid order;
- :mod:`~worker.services.charges.calls`: the gateway calls it makes between its transactions;
- :mod:`~worker.services.charges.batch`: which mailboxes are due, and running many at
  once (:func:`run_charges`).

The rule's own names (plan, kinds, decisions) are :mod:`worker.rules.auto_renew`'s; they
are also here for the callers of the service.
"""

from __future__ import annotations

from worker.rules.auto_renew import (
    AUTO_RENEW_KINDS,
    CARD_EXPIRING,
    CHARGE,
    CHARGE_DAYS_BEFORE_EXPIRY,
    CHARGE_FAILED,
    CHARGE_NOTICE,
    CHARGE_NOTICE_DAYS_BEFORE_EXPIRY,
    CHARGE_NOTICE_STAGE,
    CHARGE_SUCCEEDED,
    DEFAULT_CHARGE_PLAN,
    FAIL,
    RECONCILE,
    UNRESOLVED,
    AttemptRecord,
    AutoRenewDecision,
    ChargePlan,
    charge_on,
    day_stage,
    decide_auto_renew,
    first_auto_renew_action_on,
    idempotency_key,
)
from worker.services.charges.authentication import (
    AuthenticationState,
    AuthenticationUnavailable,
    AuthenticationView,
    finish_authentication,
    intent_by_reference,
    read_authentication,
    start_authentication,
    waiting_intent_for,
)
from worker.services.charges.batch import due_charge_ids, iter_due_charge_batches, run_charges
from worker.services.charges.emails import charge_context, charge_price, mailbox_context, queue_mailbox_email
from worker.services.charges.outcomes import ChargeDay
from worker.services.charges.results import ChargeRun, ChargesResult
from worker.services.charges.service import charge_mailbox, complete_authenticated_charge
from worker.services.charges.state import CycleState, decide_for, is_auto_renew, load_cycle_states, lock_mailbox

__all__ = [
    "AuthenticationState",
    "AuthenticationUnavailable",
    "AuthenticationView",
    "finish_authentication",
    "intent_by_reference",
    "read_authentication",
    "start_authentication",
    "waiting_intent_for",
    "AUTO_RENEW_KINDS",
    "CARD_EXPIRING",
    "CHARGE",
    "CHARGE_DAYS_BEFORE_EXPIRY",
    "CHARGE_FAILED",
    "CHARGE_NOTICE",
    "CHARGE_NOTICE_DAYS_BEFORE_EXPIRY",
    "CHARGE_NOTICE_STAGE",
    "CHARGE_SUCCEEDED",
    "DEFAULT_CHARGE_PLAN",
    "FAIL",
    "RECONCILE",
    "UNRESOLVED",
    "AttemptRecord",
    "AutoRenewDecision",
    "ChargeDay",
    "ChargePlan",
    "ChargeRun",
    "ChargesResult",
    "CycleState",
    "charge_context",
    "charge_mailbox",
    "complete_authenticated_charge",
    "charge_on",
    "charge_price",
    "day_stage",
    "decide_auto_renew",
    "decide_for",
    "due_charge_ids",
    "first_auto_renew_action_on",
    "idempotency_key",
    "is_auto_renew",
    "iter_due_charge_batches",
    "load_cycle_states",
    "lock_mailbox",
    "mailbox_context",
    "queue_mailbox_email",
    "run_charges",
]
