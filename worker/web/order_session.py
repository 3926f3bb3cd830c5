"""What every order page shares: the runtime's clock and database session, and the orders this
browser session may open (their public ids, kept in the signed Flask session).

An order is reachable only from the browser session that started it, or that reached it again
through its Rinnova link: any other public id is a 404, which never says whether it exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime

from flask import abort, current_app, session
from sqlalchemy.orm import Session

from worker.services import orders
from worker.services.runtime import Runtime
from worker.web import i18n
from worker.web.runtime import runtime_of

#: What a public order id may look like (checked before any lookup).
PUBLIC_ID_RE = re.compile(r"[A-Za-z0-9_\-]{8,64}")
#: The orders one browser session may hold (the newest are kept).
MAX_ORDERS_IN_SESSION = 20


def runtime() -> Runtime:
    return runtime_of(current_app)


def today() -> date:
    return runtime().today()


def now() -> datetime:
    return runtime().clock()


@contextmanager
def db() -> Iterator[Session]:
    """A database session for one request; rolled back if the view raises."""
    with runtime().session_factory() as db_session:
        try:
            yield db_session
        except BaseException:
            db_session.rollback()
            raise


def remember_order(public_id: str) -> None:
    kept = [value for value in session.get("orders", []) if value != public_id]
    kept.append(public_id)
    session["orders"] = kept[-MAX_ORDERS_IN_SESSION:]


def load_order(db_session: Session, public_id: str):
    """The order, if it belongs to this browser session; 404 otherwise (never says which)."""
    if not PUBLIC_ID_RE.fullmatch(public_id) or public_id not in session.get("orders", []):
        abort(404)
    order = orders.find_order(db_session, public_id)
    if order is None:
        abort(404)
    i18n.set_language(getattr(order, "language", None))
    return order
