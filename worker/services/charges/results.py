"""What the charge work reports: per mailbox (:class:`ChargeRun`) and per run (:class:`ChargesResult`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ChargeRun:
    """What one call of :func:`worker.services.charges.charge_mailbox` did."""

    mailbox_id: int
    #: "skipped" (not due, or claimed elsewhere), "succeeded", "failed" (charge-failed sent),
    #: "retry" (soft decline, retried later), "unknown" (still unresolved), "idle" (nothing for charges),
    #: "succeeded-already-renewed" (the cycle was renewed another way while the charge was unresolved),
    #: "skipped-order-pending" (no charge: the holder's own order for the cycle awaits payment),
    #: "authentication-required" (the charge waits for the holder's authentication on session),
    #: "succeeded-refunded" (authenticated once auto-renew was switched off: refunded automatically).
    outcome: str = "skipped"
    charges: int = 0  # gateway.charge calls
    lookups: int = 0  # gateway.lookup calls
    outbox_ids: list[int] = field(default_factory=list)
    emails: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, stage) -> emails
    #: Refunds this run started (a charge that succeeded for a cycle renewed another way).
    refund_ids: list[int] = field(default_factory=list)


@dataclass
class ChargesResult:
    examined: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    charges: int = 0
    lookups: int = 0
    errors: int = 0
    outbox_ids: list[int] = field(default_factory=list)
    emails: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Invoices the batch's numbering step numbered (its charges', and any a crash left unnumbered).
    invoices_numbered: int = 0

    def add(self, run: ChargeRun) -> None:
        self.examined += 1
        self.outcomes[run.outcome] += 1
        self.charges += run.charges
        self.lookups += run.lookups
        self.outbox_ids.extend(run.outbox_ids)
        self.emails.update(run.emails)

    def merge(self, other: ChargesResult) -> None:
        self.examined += other.examined
        self.outcomes.update(other.outcomes)
        self.charges += other.charges
        self.lookups += other.lookups
        self.errors += other.errors
        self.outbox_ids.extend(other.outbox_ids)
        self.emails.update(other.emails)
        self.invoices_numbered += other.invoices_numbered

    def as_dict(self) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "outcomes": dict(sorted(self.outcomes.items())),
            "gateway_charges": self.charges,
            "gateway_lookups": self.lookups,
            "errors": self.errors,
        }
