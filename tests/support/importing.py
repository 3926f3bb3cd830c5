"""Import files and imports for the tests: good rows to vary, CSV text, the import run, what it refused.

Also two fixtures (registered in ``tests/conftest.py``): ``any_database``, a
session factory on PostgreSQL then on SQLite, and ``bulk_starts``, whether
each import took PostgreSQL's bulk-load path.
"""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from worker.rules.schedule import DEFAULT_STAGES
from worker.services.importer import ImportRefused, ImportReport, import_mailboxes
from worker.store import migrate
from worker.store.bulk_load import BulkLoad
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Holder, Mailbox

VAT = "00743110157"
AGENCY_TAX_CODE = "80001250580"  # an 11-digit numeric codice fiscale with a valid check digit
TAX_CODE = "RSSMRA80A01H501U"

BASE = {
    "address": "user1@pec.example.it",
    "account": "mario.rossi",
    "holder_name": "Mario Rossi",
    "holder_kind": "private",
    "reference_email": "mario@example.it",
    "plan": "standard",
    "expires_on": "2027-03-31",
}


def row(number: int = 1, **changes: str) -> dict[str, str]:
    """A good row for mailbox ``user{number}@pec.example.it``, with ``changes``."""
    values = dict(BASE, address=f"user{number}@pec.example.it")
    values.update(changes)
    return values


def domain_row(number: int, name: str, expires: str, **changes: str) -> dict[str, str]:
    """A good row for mailbox ``box{number}@pec.{name}`` on the customer domain ``name``, expiring ``expires``."""
    values = {"address": f"box{number}@pec.{name}", "expires_on": "", "domain": name, "domain_expires_on": expires}
    return row(number, **{**values, **changes})


def make_csv(*rows: dict[str, str], columns: list[str] | None = None) -> str:
    """CSV text whose header is ``columns`` or every key of the rows, in order of appearance."""
    if columns is None:
        columns = list(dict.fromkeys(key for values in rows for key in values))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for values in rows:
        writer.writerow([values.get(column, "") for column in columns])
    return out.getvalue()


def run(session_factory, text: str, **kwargs) -> ImportReport:
    """Import the CSV ``text`` with the default schedule; ``kwargs`` go to ``import_mailboxes``."""
    return import_mailboxes(session_factory, io.StringIO(text), stages=DEFAULT_STAGES, **kwargs)


def refusal(session_factory, text: str, **kwargs) -> list[str]:
    """The problems of a refused import of ``text``, one string each."""
    with pytest.raises(ImportRefused) as refused:
        run(session_factory, text, **kwargs)
    return [str(error) for error in refused.value.errors]


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def mailbox(session_factory, address: str) -> Mailbox:
    with session_factory() as session:
        found = session.scalars(
            select(Mailbox).where(Mailbox.address == address).options(selectinload(Mailbox.schedule))
        ).one()
        session.expunge_all()
        return found


def holder_of(session_factory, address: str) -> Holder:
    with session_factory() as session:
        found = session.scalars(
            select(Holder).join(Mailbox, Mailbox.holder_id == Holder.id).where(Mailbox.address == address)
        ).one()
        session.expunge_all()
        return found


@pytest.fixture(params=["postgresql", "sqlite"])
def any_database(request, tmp_path):
    """A session factory on the test PostgreSQL database, then on a new SQLite file."""
    if request.param == "postgresql":
        yield request.getfixturevalue("session_factory")
        return
    url = "sqlite:///" + str(tmp_path / "import.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def bulk_starts(monkeypatch) -> list[bool]:
    """For each import on PostgreSQL: True if it took the bulk-load path, False if it found a fleet."""
    seen: list[bool] = []
    start = BulkLoad.start.__func__

    def spy(cls, connection):
        bulk = start(cls, connection)
        seen.append(bulk is not None)
        return bulk

    monkeypatch.setattr(BulkLoad, "start", classmethod(spy))
    return seen
