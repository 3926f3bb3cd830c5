"""The database schema (SQLAlchemy 2).  Migrations live in ``worker/store/migrations``.

The same models run on SQLite (the embedded default) and PostgreSQL.  One module per group of
tables; every name is importable from here, and importing this package maps every table, so the
relationships named by string resolve:

- :mod:`.base`: the declarative base, the naming convention, ``Id`` and ``UTCDateTime``;
- :mod:`.fleet`: accounts, holders, domains, mailboxes and their schedule rows;
- :mod:`.outbox`: the outbox, its queue, the notice ledger and the bounced addresses;
- :mod:`.runs`: the daily runs and the worker's own state;
- :mod:`.orders`: renewal orders, their lines and payments;
- :mod:`.gateways`: auto-renew charge intents, gateway events, refunds and the sandbox's tables;
- :mod:`.invoices`: electronic invoices and platform events.
"""

from worker.rules.auto_renew import ChargeStatus
from worker.rules.vocabulary import HolderKind, Plan
from worker.store.models.base import NAMING, Base, Id, UTCDateTime
from worker.store.models.fleet import Account, Domain, Holder, Mailbox, MailboxSchedule
from worker.store.models.gateways import (
    REFUND_OPEN_STATES,
    ChargeIntent,
    GatewayEvent,
    GatewayRefund,
    SandboxChallenge,
    SandboxCharge,
    SandboxMethod,
    SandboxWebhook,
)
from worker.store.models.invoices import EventStatus, Invoice, InvoiceCounter, InvoiceStatus, PlatformEvent
from worker.store.models.orders import (
    LIVE_ORDER_STATUSES,
    OPEN_ORDER_STATUSES,
    OrderOrigin,
    OrderStatus,
    Payment,
    RenewalOrder,
    RenewalOrderLine,
)
from worker.store.models.outbox import BouncedAddress, NoticeLedgerEntry, OutboxMessage, OutboxQueueEntry, OutboxStatus
from worker.store.models.runs import DailyRun, WorkerState

__all__ = [
    "LIVE_ORDER_STATUSES",
    "NAMING",
    "OPEN_ORDER_STATUSES",
    "REFUND_OPEN_STATES",
    "Account",
    "Base",
    "BouncedAddress",
    "ChargeIntent",
    "ChargeStatus",
    "DailyRun",
    "Domain",
    "EventStatus",
    "GatewayEvent",
    "GatewayRefund",
    "Holder",
    "HolderKind",
    "Id",
    "Invoice",
    "InvoiceCounter",
    "InvoiceStatus",
    "Mailbox",
    "MailboxSchedule",
    "NoticeLedgerEntry",
    "OrderOrigin",
    "OrderStatus",
    "OutboxMessage",
    "OutboxQueueEntry",
    "OutboxStatus",
    "Payment",
    "PlatformEvent",
    "Plan",
    "RenewalOrder",
    "RenewalOrderLine",
    "SandboxChallenge",
    "SandboxCharge",
    "SandboxMethod",
    "SandboxWebhook",
    "UTCDateTime",
    "WorkerState",
]
