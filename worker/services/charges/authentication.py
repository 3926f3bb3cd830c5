"""An auto-renew charge that waits for the holder's authentication, brought back on session.

The charge-authentication-required email links (signed, :meth:`LinkSigner.charge_authentication_url`)
to a page that reads the charge (:func:`read_authentication`); its POST sends the holder to
authenticate THAT payment (:func:`start_authentication`: the sandbox's challenge page, Stripe's
``next_action.redirect_to_url``, PayPal's ``payer-action`` link); on the way back (or on the
gateway's webhook) :func:`finish_authentication` asks the gateway where the payment stands and
completes the renewal with :func:`~worker.services.charges.service.complete_authenticated_charge`,
exactly once.  Once the cycle failed (charge-failed, its unpaid order), the holder is sent to
that order instead: no authentication is started any more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from worker.gateways import describe_payment_method
from worker.gateways.base import (
    AuthenticationStep,
    ChargeAuthentication,
    ChargeOutcome,
    ChargeResult,
    PaymentGateway,
)
from worker.rules import schedule
from worker.rules.auto_renew import (
    AWAITING_AUTHENTICATION,
    CHARGE_FAILED,
    DEFAULT_CHARGE_PLAN,
    ChargePlan,
    ChargeStatus,
    authentication_deadline,
    charge_dates,
)
from worker.rules.einvoice import Seller
from worker.rules.schedule import Stage
from worker.services.charges.results import ChargeRun
from worker.services.charges.service import complete_authenticated_charge
from worker.store.models import ChargeIntent, Mailbox, NoticeLedgerEntry


class AuthenticationState(StrEnum):
    #: The charge waits for the holder: the page offers to authenticate it.
    WAITING = "waiting"
    #: Authenticated: the mailbox was renewed by this charge.
    RENEWED = "renewed"
    #: Given up: the cycle ended in charge-failed, with an unpaid order to pay by any method.
    FAILED = "failed"
    #: Nothing to authenticate any more: the mailbox was renewed another way, or auto-renew was
    #: switched off.
    CLOSED = "closed"


@dataclass(frozen=True)
class AuthenticationView:
    state: AuthenticationState
    intent_id: int
    mailbox_id: int
    address: str
    language: str
    amount_cents: int
    method: str
    cycle_expires_on: date
    #: The last day to authenticate, while waiting.
    authenticate_by: date
    #: The mailbox's expiry now (the new one once renewed).
    expires_on: date


def read_authentication(
    session: Session, intent_id: int, plan: ChargePlan = DEFAULT_CHARGE_PLAN
) -> AuthenticationView | None:
    """The charge ``intent_id`` as its authentication page shows it, or None.  Reads only."""
    row = session.execute(
        select(ChargeIntent, Mailbox)
        .join(Mailbox, Mailbox.id == ChargeIntent.mailbox_id)
        .where(ChargeIntent.id == intent_id)
    ).first()
    if row is None:
        return None
    intent, mailbox = row
    failed = session.scalar(
        select(NoticeLedgerEntry.id)
        .where(
            NoticeLedgerEntry.mailbox_id == mailbox.id,
            NoticeLedgerEntry.cycle_expires_on == intent.cycle_expires_on,
            NoticeLedgerEntry.kind == CHARGE_FAILED,
        )
        .limit(1)
    )
    if intent.status == ChargeStatus.SUCCEEDED.value:
        state = AuthenticationState.RENEWED
    elif failed is not None:
        state = AuthenticationState.FAILED
    elif (
        intent.status == AWAITING_AUTHENTICATION
        and mailbox.auto_renew
        and mailbox.expires_on == intent.cycle_expires_on
    ):
        state = AuthenticationState.WAITING
    else:
        state = AuthenticationState.CLOSED
    language = mailbox.language if mailbox.language in ("it", "en") else "it"
    return AuthenticationView(
        state=state,
        intent_id=intent.id,
        mailbox_id=mailbox.id,
        address=mailbox.address,
        language=language,
        amount_cents=intent.amount_cents,
        method=describe_payment_method(intent.payment_method, language),
        cycle_expires_on=intent.cycle_expires_on,
        authenticate_by=authentication_deadline(
            intent.business_date, charge_dates(intent.cycle_expires_on, plan)[-1], intent.cycle_expires_on
        ),
        expires_on=mailbox.expires_on,
    )


class AuthenticationUnavailable(Exception):
    """The charge cannot be authenticated now (not waiting, or the gateway has no on-session step)."""


def start_authentication(
    session: Session,
    gateway: PaymentGateway,
    intent_id: int,
    *,
    return_url: str,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
) -> AuthenticationStep:
    """Send the holder to authenticate the waiting charge ``intent_id``: where to go, or the
    gateway's answer when no page is needed.  Writes nothing of ours (the gateway records its own
    step); raises :class:`AuthenticationUnavailable` unless the charge is waiting."""
    view = read_authentication(session, intent_id, plan)
    intent = session.get(ChargeIntent, intent_id)
    reference, payment_method = (intent.reference, intent.payment_method) if intent is not None else (None, "")
    session.rollback()  # no transaction is held while the gateway is asked
    if view is None or view.state is not AuthenticationState.WAITING or not reference:
        raise AuthenticationUnavailable("the charge is not waiting for an authentication")
    if not isinstance(gateway, ChargeAuthentication):
        raise AuthenticationUnavailable(f"the {gateway.name} gateway cannot authenticate on session")
    return gateway.start_authentication(reference=reference, payment_method=payment_method, return_url=return_url)


def finish_authentication(
    session_factory: sessionmaker[Session],
    gateway: PaymentGateway,
    intent_id: int,
    *,
    today: date,
    clock: Callable[[], datetime],
    mail_domain: str,
    stages: tuple[Stage, ...] = schedule.DEFAULT_STAGES,
    plan: ChargePlan = DEFAULT_CHARGE_PLAN,
    seller: Seller | None = None,
    answer: ChargeResult | None = None,
) -> ChargeRun:
    """Ask the gateway where the waiting charge stands (unless ``answer`` is given: a step that
    needed no page) and, authenticated, complete the renewal, once."""
    with session_factory() as session:
        intent = session.get(ChargeIntent, intent_id)
        if intent is None:
            return ChargeRun(0)
        reference, key, mailbox_id = intent.reference, intent.idempotency_key, intent.mailbox_id
        waiting = intent.status == AWAITING_AUTHENTICATION
    if not waiting or not reference:
        return ChargeRun(mailbox_id)
    if answer is None:
        if not isinstance(gateway, ChargeAuthentication):
            return ChargeRun(mailbox_id)
        answer = gateway.finish_authentication(reference=reference, idempotency_key=key)
    if answer.outcome is not ChargeOutcome.SUCCEEDED:
        return ChargeRun(mailbox_id)
    return complete_authenticated_charge(
        session_factory,
        gateway,
        intent_id,
        answer,
        today=today,
        clock=clock,
        stages=stages,
        mail_domain=mail_domain,
        plan=plan,
        seller=seller,
    )


def waiting_intent_for(session: Session, reference: str) -> int | None:
    """The charge intent waiting for authentication that a webhook names: by its gateway reference
    (a PaymentIntent, a PayPal order) or by its idempotency key (the sandbox's events); or None."""
    return session.scalar(
        select(ChargeIntent.id).where(
            or_(ChargeIntent.reference == reference, ChargeIntent.idempotency_key == reference),
            ChargeIntent.status == AWAITING_AUTHENTICATION,
        )
    )


def intent_by_reference(session: Session, reference: str) -> int | None:
    """The auto-renew charge whose gateway reference is ``reference`` (PayPal's return names the
    order), waiting or not, or None."""
    return session.scalar(
        select(ChargeIntent.id).where(ChargeIntent.reference == reference).order_by(ChargeIntent.id.desc()).limit(1)
    )
