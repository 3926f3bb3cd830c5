"""Open refunds (a refund whose gateway answer was lost) asked again: the one service behind
``pec-renewal payments refunds-retry`` and the beat entry ``refunds-retry``.

Each refund left ``started`` or ``unknown`` is asked again, through the gateway that took the
payment, with its own idempotency key
(:func:`worker.services.payments.refunds.settle_open_refunds`: never twice); when the money
went back, the holder is emailed: an order's refund as the order's email, an auto-renew
charge's as the mailbox's (:func:`worker.services.charges.emails.queue_charge_refund_email`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date, datetime

from sqlalchemy.orm import Session, sessionmaker

from config.settings import Settings
from worker.gateways import PaymentGateway, make_gateway
from worker.services.charges.emails import queue_charge_refund_email
from worker.services.orders import mail_domain
from worker.services.payments.refunds import RefundDone, settle_open_refunds


def retry_open_refunds(
    session_factory: sessionmaker[Session],
    *,
    settings: Settings,
    clock: Callable[[], datetime],
    today: date,
) -> list[RefundDone]:
    """Ask the gateways again for every open refund; what each answered."""
    adapters: dict[str, PaymentGateway] = {}

    def gateway(name: str) -> PaymentGateway:
        if name not in adapters:
            adapters[name] = make_gateway(settings, session_factory, clock=clock, name=name)
        return adapters[name]

    try:
        return settle_open_refunds(
            session_factory,
            gateway,
            clock=clock,
            today=today,
            settings=settings,
            charge_email=functools.partial(queue_charge_refund_email, mail_domain=mail_domain(settings)),
        )
    finally:
        for adapter in adapters.values():
            adapter.close()
