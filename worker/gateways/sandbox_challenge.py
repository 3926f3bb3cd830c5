"""The sandbox gateway's 3-D Secure challenge: the holder approves or refuses a payment on its page.

A sandbox charge with ``pm_card_authenticationRequired`` is recorded ``requires_authentication``
(``sandbox_charges``), as an issuer that wants the holder present.  Brought back on session
(:func:`open_challenge`), it gets a challenge (``sandbox_challenges``) whose page, served by the
link handler like the sandbox's checkout, shows "Approva" and "Rifiuta".  The answer is
recorded on both tables in one transaction (:func:`decide_challenge`): approved, the charge's
outcome becomes ``succeeded`` (so ``lookup`` and refunds see the money taken); refused, it stays
``requires_authentication`` and the challenge says ``refused``.  A challenge is answered once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select, update

from worker.gateways.base import ChargeOutcome, mask_token
from worker.store.models import SandboxChallenge, SandboxCharge

PENDING = "pending"
APPROVED = "approved"
REFUSED = "refused"

_CHALLENGES = SandboxChallenge.__table__
_CHARGES = SandboxCharge.__table__


@dataclass(frozen=True)
class Challenge:
    """One challenge, as its page shows it."""

    public_id: str
    status: str
    return_path: str
    amount_cents: int
    currency: str
    #: The card, masked (never the token).
    card: str
    description: str | None


def challenge_path(public_id: str) -> str:
    """The challenge page's path in the link handler (``worker/web/sandbox_challenge.py``)."""
    return f"/sandbox/3ds/{public_id}"


def open_challenge(engine: Engine, *, charge_reference: str, return_path: str, now: datetime) -> str | None:
    """A new challenge for the sandbox charge ``charge_reference``, when that charge awaits the
    holder's authentication; its page's path, or None (no such charge, or it needs none)."""
    if not return_path.startswith("/") or return_path.startswith("//"):
        raise ValueError("a challenge returns to a path of the link handler")
    public_id = secrets.token_urlsafe(24)
    with engine.begin() as connection:
        outcome = connection.execute(
            select(_CHARGES.c.outcome).where(_CHARGES.c.reference == charge_reference)
        ).scalar_one_or_none()
        if outcome != ChargeOutcome.REQUIRES_AUTHENTICATION.value:
            return None
        connection.execute(
            insert(_CHALLENGES).values(
                public_id=public_id,
                charge_reference=charge_reference,
                return_path=return_path,
                status=PENDING,
                created_at=now,
            )
        )
    return challenge_path(public_id)


_READ = select(
    _CHALLENGES.c.public_id,
    _CHALLENGES.c.status,
    _CHALLENGES.c.return_path,
    _CHARGES.c.amount_cents,
    _CHARGES.c.currency,
    _CHARGES.c.payment_method,
    _CHARGES.c.description,
).join(_CHARGES, _CHARGES.c.reference == _CHALLENGES.c.charge_reference)


def read_challenge(engine: Engine, public_id: str) -> Challenge | None:
    """The challenge ``public_id`` with its charge, or None.  Reads only."""
    with engine.connect() as connection:
        row = connection.execute(_READ.where(_CHALLENGES.c.public_id == public_id)).first()
        connection.rollback()
    if row is None:
        return None
    return Challenge(
        row.public_id,
        row.status,
        row.return_path,
        row.amount_cents,
        row.currency,
        mask_token(row.payment_method),
        row.description,
    )


def decide_challenge(
    engine: Engine,
    public_id: str,
    *,
    approve: bool,
    now: datetime,
    on_approved: Callable[[Connection, str], None] | None = None,
) -> Challenge | None:
    """Record the holder's answer (once: a second answer leaves the first); the challenge as it
    stands afterwards, or None when there is no such challenge.  ``on_approved(connection, charge
    reference)`` runs in the same transaction once the charge is recorded as succeeded (the
    sandbox's webhook event of it)."""
    with engine.begin() as connection:
        decided = connection.execute(
            update(_CHALLENGES)
            .where(_CHALLENGES.c.public_id == public_id, _CHALLENGES.c.status == PENDING)
            .values(status=APPROVED if approve else REFUSED, decided_at=now)
            .returning(_CHALLENGES.c.charge_reference)
        ).first()
        if decided is not None and approve:
            connection.execute(
                update(_CHARGES)
                .where(
                    _CHARGES.c.reference == decided.charge_reference,
                    _CHARGES.c.outcome == ChargeOutcome.REQUIRES_AUTHENTICATION.value,
                )
                .values(outcome=ChargeOutcome.SUCCEEDED.value)
            )
            if on_approved is not None:
                on_approved(connection, decided.charge_reference)
    return read_challenge(engine, public_id)


def set_up_on_session(connection: Connection, payment_method: str, *, stored: bool) -> bool:
    """Whether ``payment_method`` was set up with the holder present, so that the issuer lets it be
    charged off session: a method the sandbox stored (it keeps only a card whose charge or setup
    went through, its authentication included), or a card one of whose charges was approved on a
    challenge."""
    if stored:
        return True
    found = connection.execute(
        select(_CHALLENGES.c.id)
        .join(_CHARGES, _CHARGES.c.reference == _CHALLENGES.c.charge_reference)
        .where(_CHARGES.c.payment_method == payment_method, _CHALLENGES.c.status == APPROVED)
        .limit(1)
    ).first()
    return found is not None


def list_challenges(engine: Engine) -> list[dict]:
    """Every challenge, oldest first, as plain dicts (the sandbox's record)."""
    with engine.connect() as connection:
        rows = connection.execute(select(_CHALLENGES).order_by(_CHALLENGES.c.id)).all()
        connection.rollback()
    return [
        {
            "charge_reference": row.charge_reference,
            "status": row.status,
            "created_at": row.created_at.isoformat(),
            "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        }
        for row in rows
    ]
