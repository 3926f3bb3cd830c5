"""An address on two lines of one import file is refused on every database and every import path.

PostgreSQL has two paths: the bulk-load path for a first import into an empty
fleet (no unique index on the address during the load) and the normal path,
upserting chunk by chunk, for a fleet that has mailboxes.  SQLite always takes
the normal path.  Each refusal names the lines, and nothing is written.
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.support.importing import count, mailbox, make_csv, refusal, row, run
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Account, Holder, Mailbox

#: The same address twice (the second time in other case), and another address twice.
REPEATS = [
    row(1, plan="pro"),
    row(2),
    row(3),
    row(4, address="USER1@pec.example.it", holder_name="Someone Else"),
    row(5),
    row(6, address="user2@pec.example.it", plan="premium"),
    row(7),
]
REFUSED = [
    "line 5, column address: user1@pec.example.it is already on line 2",
    "line 7, column address: user2@pec.example.it is already on line 3",
]


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request, tmp_path):
    """(name, session factory): the test PostgreSQL database, then a new SQLite file."""
    if request.param == "postgresql":
        yield "postgresql", request.getfixturevalue("session_factory")
        return
    url = "sqlite:///" + str(tmp_path / "import.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield "sqlite", make_session_factory(engine)
    engine.dispose()


def fleet_of(factory) -> dict[str, tuple]:
    """Every mailbox's stored values that the refused files would change."""
    with factory() as session:
        return {m.address: (m.plan, m.holder.name, m.expires_on) for m in session.scalars(select(Mailbox))}


@pytest.mark.parametrize("chunk_rows", [2, 50_000], ids=["across-chunks", "one-chunk"])
@pytest.mark.parametrize("fleet", ["empty", "with-mailboxes"])
def test_an_address_twice_is_refused_and_nothing_is_written(database, bulk_starts, fleet, chunk_rows):
    name, factory = database
    if fleet == "with-mailboxes":
        run(factory, make_csv(row(1), row(9)))
    before = fleet_of(factory)
    accounts, holders = count(factory, Account), count(factory, Holder)
    del bulk_starts[:]

    assert refusal(factory, make_csv(*REPEATS), chunk_rows=chunk_rows) == REFUSED

    # The path this import took: bulk only on PostgreSQL into an empty fleet.
    assert bulk_starts == ([fleet == "empty"] if name == "postgresql" else [])
    assert fleet_of(factory) == before
    assert (count(factory, Account), count(factory, Holder)) == (accounts, holders)
    if fleet == "with-mailboxes":
        assert mailbox(factory, "user1@pec.example.it").plan == "standard"


@pytest.mark.parametrize("fleet", ["empty", "with-mailboxes"])
def test_an_address_of_the_fleet_twice_in_a_file_that_is_otherwise_good(database, bulk_starts, fleet):
    """The repeat is the file's only problem, and its address may already be a mailbox."""
    name, factory = database
    if fleet == "with-mailboxes":
        run(factory, make_csv(row(8, plan="pro")))
    before = fleet_of(factory)
    del bulk_starts[:]

    text = make_csv(row(8), row(9), row(10, address="user8@pec.example.it", plan="premium"))
    assert refusal(factory, text) == ["line 4, column address: user8@pec.example.it is already on line 2"]

    assert bulk_starts == ([fleet == "empty"] if name == "postgresql" else [])
    assert fleet_of(factory) == before
    # The same file without the repeat imports.
    report = run(factory, make_csv(row(8), row(9)))
    assert (report.created, report.updated) == ((1, 1) if fleet == "with-mailboxes" else (2, 0))
