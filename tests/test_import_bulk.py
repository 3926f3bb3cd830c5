"""The bulk-load path of the import (PostgreSQL, into an empty fleet).

It drops the secondary indexes and foreign keys of ``mailboxes`` and
``holders`` for the load and rebuilds them after it, inside the import's
transaction.  These tests check that the schema afterwards is exactly a fresh
``alembic upgrade head``, that a refused file leaves rows and schema as they
were, and that the rows written are those of the normal path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from tests.support.importing import count, make_csv, refusal, row, run
from worker.services.importer import across_rows
from worker.store import migrate
from worker.store.bulk_load import BulkLoad
from worker.store.models import Account, Domain, Holder, Mailbox

BENCH = Path(__file__).resolve().parent.parent / "bench" / "import.py"

SCHEMA_QUERIES = (
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2",
    "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid), condeferrable, condeferred,"
    " convalidated FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    # Foreign keys are enforced by internal triggers: one set per constraint, none left over.
    "SELECT tgrelid::regclass::text, tgconstraint::regclass::text IS NOT NULL, count(*) FROM pg_trigger"
    " JOIN pg_constraint c ON c.oid = tgconstraint WHERE tgisinternal GROUP BY 1, 2, c.conname ORDER BY 1, 2, 3",
)


def schema(url: str) -> list[list[tuple]]:
    """Every index and constraint of the public schema, as PostgreSQL prints their definitions."""
    with psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    ) as connection:
        return [connection.execute(query).fetchall() for query in SCHEMA_QUERIES]


@pytest.fixture(scope="module")
def fresh_schema(database_url) -> list[list[tuple]]:
    """The schema of a new database migrated with ``alembic upgrade head``."""
    url = make_url(database_url)
    fresh = url.set(database=f"{url.database}_fresh").render_as_string(hide_password=False)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{url.database}_fresh"')
        connection.execute(f'CREATE DATABASE "{url.database}_fresh"')
    try:
        migrate.upgrade(fresh)
        yield schema(fresh)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{url.database}_fresh"')


def bench_csv(path: Path, rows: int) -> str:
    """The benchmark's generated file: every kind of holder, domains, auto-renew, promos, extras."""
    spec = importlib.util.spec_from_file_location("bench_import", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_csv(path, rows)
    return path.read_text()


def test_the_schema_after_a_bulk_import_is_a_fresh_upgrade(session_factory, database_url, fresh_schema, bulk_starts):
    assert schema(database_url) == fresh_schema
    report = run(session_factory, make_csv(*(row(number) for number in range(1, 6))))
    assert report.bulk and bulk_starts == [True]
    assert report.created == 5
    after = schema(database_url)
    assert after == fresh_schema
    # Nothing trivially equal: the definitions are there.
    indexes = {name: definition for _, name, definition in after[0]}
    assert (
        indexes["uq_mailboxes_address"]
        == "CREATE UNIQUE INDEX uq_mailboxes_address ON public.mailboxes USING btree (address)"
    )
    assert "ix_mailbox_schedule_next_action_on" in indexes and "ix_holders_account_id" in indexes
    constraints = {name: definition for _, name, _, definition, *_ in after[1]}
    assert constraints["fk_mailboxes_holder_id_holders"] == "FOREIGN KEY (holder_id) REFERENCES holders(id)"


def test_the_rebuilt_constraints_hold(session_factory):
    run(session_factory, make_csv(row(1), row(2)))
    with session_factory() as session, pytest.raises(Exception, match="uq_mailboxes_address"):
        session.execute(
            text(
                "INSERT INTO mailboxes (address, account_id, holder_id, reference_email, plan, extra_space_gb,"
                " extra_archive_gb, used_space_mb, expires_on, auto_renew, renewal_years, promo, language)"
                " SELECT 'user1@pec.example.it', account_id, holder_id, reference_email, plan, 0, 0, 0, expires_on,"
                " false, 1, false, 'it' FROM mailboxes LIMIT 1"
            )
        )
    with session_factory() as session, pytest.raises(Exception, match="fk_mailboxes_holder_id_holders"):
        session.execute(text("UPDATE mailboxes SET holder_id = -1"))


def test_a_file_refused_late_leaves_rows_and_schema_as_they_were(
    session_factory, database_url, fresh_schema, bulk_starts
):
    """Chunks are written, the indexes dropped, then a bad row near the end: all of it is rolled back."""
    rows = [row(number, account=f"account{number % 4}") for number in range(1, 21)]
    rows[18] = row(19, renewal_years="9")
    assert refusal(session_factory, make_csv(*rows), chunk_rows=3) == [
        "line 20, column renewal_years: 9 is not a number of years from 1 to 5"
    ]
    assert bulk_starts == [True]
    assert (count(session_factory, Mailbox), count(session_factory, Account), count(session_factory, Holder)) == (
        0,
        0,
        0,
    )
    assert schema(database_url) == fresh_schema


@pytest.mark.parametrize("chunk_rows", [2, 50_000])
def test_an_address_twice_is_found_by_the_unique_index_and_reported_by_the_rule(
    session_factory, database_url, fresh_schema, monkeypatch, chunk_rows
):
    """An address twice is inserted twice (no unique index during the load); rebuilding the index
    fails, and the rule across rows then names the lines."""
    calls: list[dict] = []
    check = across_rows.check_across_rows

    def spy(connection, checked, **rules):
        calls.append(rules)
        return check(connection, checked, **rules)

    monkeypatch.setattr(across_rows, "check_across_rows", spy)
    text_ = make_csv(
        row(1), row(2), row(3), row(4, address="USER1@pec.example.it"), row(5), row(6, address="user5@pec.example.it")
    )
    assert refusal(session_factory, text_, chunk_rows=chunk_rows) == [
        "line 5, column address: user1@pec.example.it is already on line 2",
        "line 7, column address: user5@pec.example.it is already on line 6",
    ]
    assert calls == [{"addresses": False}, {"domains": False}]
    assert count(session_factory, Mailbox) == 0
    assert schema(database_url) == fresh_schema


def test_an_address_twice_beside_another_problem(session_factory):
    """With a problem already found, the rules run whole before anything is rebuilt."""
    text_ = make_csv(
        row(1, address="a@pec.example.it", expires_on="", domain="example.it", domain_expires_on="2027-05-31"),
        row(2, address="b@pec.example.it", expires_on="", domain="example.it", domain_expires_on="2027-06-30"),
        row(3),
        row(4, address="user3@pec.example.it"),
    )
    assert refusal(session_factory, text_, chunk_rows=2) == [
        "line 3, column domain_expires_on: 2027-06-30 differs from 2027-05-31 given for example.it on line 2",
        "line 5, column address: user3@pec.example.it is already on line 4",
    ]
    assert count(session_factory, Mailbox) == 0


def test_a_failure_while_rebuilding_rolls_everything_back(session_factory, database_url, fresh_schema, monkeypatch):
    def broken(self, connection, timed):
        connection.exec_driver_sql("SELECT 1 / 0")

    monkeypatch.setattr(BulkLoad, "rebuild", broken)
    with pytest.raises(Exception, match="division by zero"):
        run(session_factory, make_csv(row(1), row(2)))
    assert count(session_factory, Mailbox) == 0
    assert schema(database_url) == fresh_schema


def test_the_bulk_path_is_only_for_an_empty_fleet(session_factory, bulk_starts):
    assert run(session_factory, make_csv(row(1))).bulk
    report = run(session_factory, make_csv(row(1, plan="pro"), row(2)))
    assert not report.bulk and (report.created, report.updated) == (1, 1)
    assert bulk_starts == [True, False]


def test_accounts_and_domains_already_there_are_reused(session_factory):
    """An empty fleet may still have accounts and domains (mailboxes deleted): they are upserted as usual."""
    with session_factory.begin() as session:
        session.add(Account(login="mario.rossi"))
        session.add(Domain(name="theirdomain.it", expires_on="2026-01-31"))
    text_ = make_csv(
        row(1),
        row(
            2, address="box2@pec.theirdomain.it", expires_on="", domain="theirdomain.it", domain_expires_on="2027-05-31"
        ),
    )
    report = run(session_factory, text_)
    assert report.bulk and (report.created, report.domains) == (2, 1)
    assert (count(session_factory, Account), count(session_factory, Domain)) == (1, 1)
    with session_factory() as session:
        assert str(session.scalar(select(Domain.expires_on))) == "2027-05-31"


def fleet(session_factory) -> dict[str, list[tuple]]:
    """Every row the import writes, by natural keys (ids are the sequences' business)."""
    accounts = Account.__table__
    holders = Holder.__table__.alias("h")
    holder_account = Account.__table__.alias("ha")
    domains = Domain.__table__
    mailboxes = Mailbox.__table__
    holder_columns = [column for column in holders.c if column.name not in ("id", "account_id")]
    mailbox_columns = [
        column for column in mailboxes.c if column.name not in ("id", "account_id", "holder_id", "domain_id")
    ]
    with session_factory() as session:
        return {
            "accounts": sorted(session.execute(select(accounts.c.login)).all()),
            "domains": sorted(session.execute(select(domains.c.name, domains.c.expires_on)).all()),
            "holders": sorted(
                session.execute(
                    select(holder_account.c.login, *holder_columns).join(
                        holder_account, holder_account.c.id == holders.c.account_id
                    )
                ).all(),
                key=repr,
            ),
            "mailboxes": sorted(
                session.execute(
                    select(
                        *mailbox_columns, accounts.c.login, holders.c.holder_key, holder_account.c.login, domains.c.name
                    )
                    .join(accounts, accounts.c.id == mailboxes.c.account_id)
                    .join(holders, holders.c.id == mailboxes.c.holder_id)
                    .join(holder_account, holder_account.c.id == holders.c.account_id)
                    .outerjoin(domains, domains.c.id == mailboxes.c.domain_id)
                ).all(),
                key=repr,
            ),
        }


@pytest.mark.parametrize("chunk_rows", [50_000, 377])
def test_the_bulk_path_writes_the_rows_of_the_normal_path(session_factory, engine, tmp_path, chunk_rows):
    generated = bench_csv(tmp_path / "fleet.csv", 3000)
    header = generated.splitlines()[0].split(",")
    # Warnings too: a reference address on the mailbox's own domain, and the mailbox itself.
    extra = make_csv(
        row(
            1,
            address="box1@pec.theirdomain.it",
            expires_on="",
            domain="theirdomain.it",
            domain_expires_on="2027-05-31",
            reference_email="boss@theirdomain.it",
        ),
        row(2, reference_email="user2@pec.example.it"),
        columns=header,
    )
    text_ = generated + extra.split("\n", 1)[1]

    normal = run(session_factory, text_, chunk_rows=chunk_rows, bulk_load=False)
    normal_rows = fleet(session_factory)
    assert not normal.bulk

    with engine.begin() as connection:
        connection.exec_driver_sql("TRUNCATE mailboxes, holders, domains, accounts RESTART IDENTITY CASCADE")
    bulk = run(session_factory, text_, chunk_rows=chunk_rows)
    assert bulk.bulk
    assert bulk == normal  # rows, created, updated, domains, warnings
    assert (bulk.rows, bulk.created, len(bulk.warnings)) == (3002, 3002, 2)
    bulk_rows = fleet(session_factory)
    assert bulk_rows == normal_rows
    assert len(bulk_rows["mailboxes"]) == 3002
    assert len(bulk_rows["domains"]) > 10 and len(bulk_rows["holders"]) > 1000
