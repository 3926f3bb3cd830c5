"""Stored contexts of every email kind, as the services write them: the demo's, and the ones it never writes.

``demo_samples`` runs ``pec-renewal demo`` into a folder and takes the first outbox row of each
kind and stage it wrote (its notices, charge notices and failed charges, one mailbox each).
``SAMPLES`` adds what the demo does not send and the widest cases a layout must hold: grouped
notices with long addresses, an order of three mailboxes with extras and a plan change, each
payment method, the auto-renew emails.  Every sample is rendered in both languages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import time_machine
from click.testing import CliRunner
from sqlalchemy import select

from tests.support.settings import TEST_SECRET_KEYS
from worker.cli.main import main
from worker.store.db import make_engine, make_session_factory
from worker.store.models import OutboxMessage

#: The day the demo is run on, and the rendering time of the samples.
DEMO_DAY = date(2026, 12, 6)
RENDERED_AT = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str
    stage: str
    context: dict[str, Any]


def _mailbox(mailbox_id: int, address: str, expires_on: str, plan: str, domain: str | None = None) -> dict[str, Any]:
    # One account for all: a grouped notice carries its "Rinnova tutte" link.
    return {"id": mailbox_id, "address": address, "expires_on": expires_on, "plan": plan, "domain": domain,
            "account": 77}  # fmt: skip


_COMPANY = "Edilizia Verdi Costruzioni Generali S.r.l."
_GROUPED = [
    _mailbox(501, "amministrazione.fornitori@pec.edilizia-verdi-costruzioni.it", "2027-01-06", "premium"),
    _mailbox(502, "ufficio.gare.appalti@pec.edilizia-verdi-costruzioni.it", "2027-01-06", "pro"),
    _mailbox(503, "direzione@pec.edilizia-verdi-costruzioni.it", "2027-01-06", "standard"),
]
_EXPIRED = [
    _mailbox(511, "amministrazione.fornitori@pec.edilizia-verdi-costruzioni.it", "2026-11-05", "premium"),
    _mailbox(512, "ufficio.gare.appalti@pec.edilizia-verdi-costruzioni.it", "2026-10-20", "pro"),
    _mailbox(513, "direzione@pec.edilizia-verdi-costruzioni.it", "2026-09-30", "standard"),
]
_ON_DOMAINS = [
    _mailbox(521, "amministrazione@pec.studio-associato-neri-bianchi.it", "2026-11-05", "pro",
             "studio-associato-neri-bianchi.it"),
    _mailbox(522, "info@pec.studio-associato-neri-bianchi.it", "2026-11-05", "standard",
             "studio-associato-neri-bianchi.it"),
]  # fmt: skip


def _order_line(item: str, address: str, amount_cents: int, it: str, en: str) -> dict[str, Any]:
    return {"label_it": f"{it} – {address} – 2 anni", "label_en": f"{en} – {address} – 2 years",
            "amount_cents": amount_cents, "item": item}  # fmt: skip


def _order(method: str | None) -> dict[str, Any]:
    first, second, third = (mailbox["address"] for mailbox in _GROUPED)
    lines = [
        _order_line("plan", first, 8400, "Casella PEC Premium", "PEC mailbox Premium"),
        _order_line("extra_archive", first, 2000, "Archivio aggiuntivo, 5 GB", "Extra archive, 5 GB"),
        _order_line("plan", second, 5000, "Casella PEC Pro", "PEC mailbox Pro"),
        _order_line("plan", third, 1000, "Casella PEC Standard", "PEC mailbox Standard"),
        _order_line("extra_space", third, 1000, "Spazio casella aggiuntivo, 1 GB", "Extra mailbox space, 1 GB"),
    ]
    for line in lines:
        del line["item"]
    return {
        "holder_name": _COMPANY,
        "holder_kind": "company",
        "mailboxes": [
            {**_GROUPED[0], "old_plan": "premium", "extra_archive_gb": 5, "new_expires_on": "2029-01-06"},
            {**_GROUPED[1], "old_plan": "premium", "new_expires_on": "2029-01-06"},
            {
                **_GROUPED[2],
                "old_plan": "pro",
                "extra_space_gb": 1,
                "archive_deleted": True,
                "new_expires_on": "2029-01-06",
            },
        ],  # fmt: skip
        "order": {
            "number": "PEC-2026-000123",
            "years": 2,
            "method": method,
            "subtotal_cents": 17400,
            "vat_percent": 22,
            "vat_cents": 3828,
            "total_cents": 21228,
            "lines": lines,
            "auto_renew": method in ("card", "paypal"),
        },
        "payment": {
            "iban": "IT60X0542811101000000123456",
            "beneficiary": "Provider PEC S.p.A.",
            "postal_account": "001234567890",
            "checkout_url": "https://rinnovi.provider-pec.example.it/ordine/Xq3v9sLk2Pa8RtYw/pagamento",
        },
    }


def _charge(**charge: Any) -> dict[str, Any]:
    base = {"amount_cents": 5124, "subtotal_cents": 4200, "vat_cents": 924, "vat_percent": 22, "years": 1,
            "method": "Mastercard •••• 5454", "charge_on": "2027-01-02", "new_expires_on": "2028-01-09"}  # fmt: skip
    return {
        "holder_name": "Studio Legale Avv. Francesca Colombo e Associati",
        "holder_kind": "professional",
        "mailboxes": [_mailbox(531, "segreteria.studio.legale@pec.avvocati-colombo-associati.it", "2027-01-09",
                               "premium")],
        "charge": {**base, **charge},
    }  # fmt: skip


SAMPLES = (
    Sample("expiry-grouped", "expiry-notice", "-1m", {"holder_name": _COMPANY, "holder_kind": "company",
                                                       "mailboxes": _GROUPED}),
    Sample("expiry-tomorrow", "expiry-notice", "-1d", {"holder_name": "Mario Rossi", "holder_kind": "private",
                                                        "mailboxes": [_mailbox(504, "mario.rossi@pec.it", "2026-12-07",
                                                                               "standard")]}),
    Sample("expired-grouped", "expired-notice", "+30d", {"holder_name": _COMPANY, "holder_kind": "company",
                                                          "mailboxes": _EXPIRED}),
    Sample("domain-grouped", "domain-expiry-notice", "+1d", {"holder_name": None, "holder_kind": "professional",
                                                              "mailboxes": _ON_DOMAINS}),
    Sample("order-bank-transfer", "order-confirmation", "0d", _order("bank_transfer")),
    Sample("order-postal-slip", "order-confirmation", "0d", _order("postal_slip")),
    Sample("order-card", "order-confirmation", "0d", _order("card")),
    Sample("renewal-completed", "renewal-completed", "0d", _order("paypal")),
    Sample("payment-refunded", "payment-refunded", "0d",
           {**_order("card"), "refund": {"kind": "automatic", "method": "card", "amount_cents": 21228}}),
    Sample("payment-refunded-charge", "payment-refunded", "0d",
           {**{k: v for k, v in _charge().items() if k != "charge"},
            "refund": {"kind": "automatic", "method": "paypal", "amount_cents": 5124, "charge": True}}),
    Sample("charge-notice", "charge-notice", "-30d", _charge(card_expires_on="2026-12-31")),
    Sample("card-expiring", "card-expiring", "-30d", _charge(card_expires_on="2026-12-31")),
    Sample("charge-succeeded", "charge-succeeded", "-7d",
           _charge(charged_on="2027-01-02", reference="ch_3PqR7sLkT2mNa8RtYw0x1y2z")),
    Sample("charge-failed", "charge-failed", "-1d",
           _charge(reason="retries_exhausted", order_number="PEC-2026-000124")),
    Sample("charge-skipped", "charge-skipped", "-7d",
           _charge(order_number="PEC-2026-000125", order_method="bank_transfer", cancel_by="2027-01-07")),
    Sample("charge-authentication-required", "charge-authentication-required", "-7d",
           _charge(intent_id=41, authenticate_by="2027-01-12")),
    Sample("expiry-pending-order", "expiry-notice", "-7d", {
        "holder_name": "Mario Rossi", "holder_kind": "private",
        "mailboxes": [{**_mailbox(505, "mario.rossi@pec.it", "2026-12-14", "standard"),
                       "pending_order": {"number": "PEC-2026-000126", "amount_cents": 3660,
                                         "method": "postal_slip"}}]}),
)  # fmt: skip


def demo_samples(folder: Path) -> list[Sample]:
    """Run ``pec-renewal demo`` in ``folder`` on :data:`DEMO_DAY`; the first outbox row of each kind and stage."""
    environment = {"PEC_RENEWAL_VAR_DIR": str(folder), "PEC_RENEWAL_SECRET_KEYS": TEST_SECRET_KEYS}
    travel = datetime(DEMO_DAY.year, DEMO_DAY.month, DEMO_DAY.day, 7, 0, tzinfo=UTC)
    with time_machine.travel(travel, tick=False):
        result = CliRunner().invoke(main, ["demo"], env=environment, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{folder / 'pec-renewal.sqlite3'}")
    try:
        with make_session_factory(engine)() as session:
            rows = session.execute(
                select(OutboxMessage.kind, OutboxMessage.stage, OutboxMessage.context).order_by(OutboxMessage.id)
            ).all()
    finally:
        engine.dispose()
    first: dict[tuple[str, str], Sample] = {}
    for kind, stage, context in rows:
        first.setdefault((kind, stage), Sample(f"demo-{kind}-{stage}", kind, stage, context))
    return list(first.values())
