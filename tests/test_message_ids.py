"""Message-IDs unique in the world: one function for every writer of outbox rows, from an
installation id that is random, created once and kept in the database.

Two installations, or one rebuilt from scratch (its ids start again from 1), never give the
same Message-ID to different emails; a retry of an outbox message keeps the one on its row;
a deliberate re-send (``resend``) gets a new one.
"""

from __future__ import annotations

import re
import threading
from datetime import date, timedelta

import pytest
import time_machine
from alembic import command
from sqlalchemy import select, text

from tests.support.charges import CHARGE_DAY, add_auto_renew, at_morning, build_runtime, run_on
from tests.support.factories import make_mailbox
from tests.support.orders import complete_order
from tests.support.settings import smtp_runtime
from worker.mail.message_ids import INSTALLATION_ID_KEY, OrderEmail, installation_id, message_id_for
from worker.services import charges
from worker.services.daily import scan_day
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Base, OutboxMessage, WorkerState

DAY = date(2027, 3, 31)
KEYS = [(101, "2027-03-31", "-2m"), (102, "2027-03-31", "-2m")]
ONE, OTHER = "0a1b2c3d4e5f60718293a4b5c6d7e8f9", "f9e8d7c6b5a4938271605f4e3d2c1b0a"


# -- The function ---------------------------------------------------------------------------


def test_two_installations_never_share_a_message_id():
    first = message_id_for(KEYS, "pec-provider.example", installation_id=ONE)
    assert message_id_for(list(reversed(KEYS)), "pec-provider.example", installation_id=ONE) == first
    assert message_id_for(KEYS, "pec-provider.example", installation_id=OTHER) != first
    assert re.fullmatch(r"[0-9a-f]{32}@pec-provider\.example", first)


def test_a_deliberate_resend_gets_a_message_id_of_its_own():
    original = message_id_for(KEYS, "pec-provider.example", installation_id=ONE)
    assert message_id_for(KEYS, "pec-provider.example", installation_id=ONE, resend=0) == original
    resends = {
        message_id_for(KEYS, "pec-provider.example", installation_id=ONE, resend=n) for n in (1, 2, "a1b2c3d4e5f60718")
    }
    assert len(resends) == 3 and original not in resends
    # The same re-send asked twice is the same message (a retry of it, say).
    assert message_id_for(KEYS, "pec-provider.example", installation_id=ONE, resend=1) in resends


def test_order_emails_are_named_by_the_same_function():
    confirmation = message_id_for(
        OrderEmail("order-confirmation", "PEC-2027-000001"), "pec-provider.example", installation_id=ONE
    )
    assert confirmation != message_id_for(
        OrderEmail("renewal-completed", "PEC-2027-000001"), "pec-provider.example", installation_id=ONE
    )
    assert confirmation != message_id_for(
        OrderEmail("order-confirmation", "PEC-2027-000002"), "pec-provider.example", installation_id=ONE
    )
    assert confirmation != message_id_for(
        OrderEmail("order-confirmation", "PEC-2027-000001"), "pec-provider.example", installation_id=OTHER
    )


@pytest.mark.parametrize(
    "arguments",
    [
        dict(installation_id=""),
        dict(installation_id="abc\r\nX-Evil: 1"),
        dict(installation_id=None),
        dict(installation_id=ONE, resend=-1),
        dict(installation_id=ONE, resend=True),
        dict(installation_id=ONE, resend="a b"),
        dict(installation_id=ONE, resend="x\ny"),
    ],
)
def test_bad_installation_ids_and_resends_are_refused(arguments):
    with pytest.raises(ValueError):
        message_id_for(KEYS, "pec-provider.example", **arguments)


def test_an_order_key_must_be_an_order_of_a_known_kind():
    with pytest.raises(ValueError, match="order number"):
        message_id_for(OrderEmail("order-confirmation", "PEC-2027-1\r\n"), "pec-provider.example", installation_id=ONE)
    with pytest.raises(ValueError, match="unknown email kind"):
        message_id_for(OrderEmail("welcome", "PEC-2027-000001"), "pec-provider.example", installation_id=ONE)


# -- The installation id --------------------------------------------------------------------


def stored_id(session) -> str | None:
    return session.scalar(select(WorkerState.value).where(WorkerState.key == INSTALLATION_ID_KEY))


def test_the_migration_creates_one_and_a_downgrade_keeps_it(tmp_path):
    ids = []
    for name in ("one", "other"):
        url = f"sqlite:///{tmp_path / name}.sqlite3"
        migrate.upgrade(url)
        engine = make_engine(url)
        try:
            with make_session_factory(engine)() as session:
                ids.append(stored_id(session))
            command.downgrade(migrate.alembic_config(url), "0007")
            migrate.upgrade(url)
            with make_session_factory(engine)() as session:
                assert stored_id(session) == ids[-1]  # the same installation after a downgrade and upgrade
        finally:
            engine.dispose()
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert ids[0] != ids[1]


def test_a_database_without_one_gets_one_at_first_use_and_keeps_it(session_factory):
    with session_factory() as session:
        assert stored_id(session) is None  # emptied by the fixture, as by an operator
    with session_factory() as session, session.begin():
        created = installation_id(session)
    with session_factory() as session:
        assert stored_id(session) == created
        assert installation_id(session) == created
    assert installation_id(session_factory.kw["bind"]) == created  # through the engine too


def test_an_engine_reads_it_once_outside_its_pool_and_keeps_it(session_factory, database_url):
    """The charges' fast path asks an engine: the first read takes a connection of its own (so a
    thread holding the pool's last connection cannot wait on itself), and creates the id if missing."""
    engine = make_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=1)
    try:
        with engine.connect() as held:  # the engine's only pooled connection, held meanwhile
            held.exec_driver_sql("SELECT 1")
            created = installation_id(engine)
            with session_factory() as session, session.begin():
                assert stored_id(session) == created
                session.execute(
                    text("UPDATE worker_state SET value = :v WHERE key = :k"), {"v": OTHER, "k": INSTALLATION_ID_KEY}
                )
            assert installation_id(engine) == created  # kept: the id of a database never changes
    finally:
        engine.dispose()


def test_an_id_created_by_a_dry_run_is_not_remembered(tmp_path, database_url, session_factory, smtp_server):
    """``run-daily --dry-run`` on a database without an id creates one and rolls it back: the
    engine must not go on naming emails with it."""
    engine = make_engine(database_url)
    runtime = smtp_runtime(tmp_path, database_url, make_session_factory(engine), smtp_server)
    try:
        with runtime.session_factory() as session, session.begin():
            make_mailbox(session, expires_on=DAY)
        with time_machine.travel(at_morning(DAY), tick=False):
            assert sum(scan_day(runtime, DAY, dry_run=True).emails.values()) == 1
        with session_factory() as session:
            assert stored_id(session) is None
        kept = installation_id(engine)
        with session_factory() as session:
            assert stored_id(session) == kept
    finally:
        runtime.close()
        engine.dispose()


def test_sessions_creating_it_at_once_all_get_the_one_committed(session_factory):
    """Eight transactions find no id and create one at the same moment: one wins, all read it."""
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        try:
            with session_factory() as session, session.begin():
                session.execute(text("SELECT 1"))  # the transaction has started
                barrier.wait(timeout=10)
                results.append(installation_id(session))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    with session_factory() as session:
        assert set(results) == {stored_id(session)}


# -- Every writer of outbox rows ------------------------------------------------------------


def test_a_database_rebuilt_from_scratch_names_its_emails_anew(
    tmp_path, database_url, session_factory, smtp_server, engine
):
    """The same mailboxes with the same ids after a rebuild: the notices get other Message-IDs,
    so a receiver that drops copies by Message-ID does not drop the new ones."""

    def first_day_message_ids() -> set[str]:
        runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
        try:
            with runtime.session_factory() as session, session.begin():
                for number in range(3):
                    make_mailbox(
                        session,
                        expires_on=DAY,
                        address=f"casella{number}@pec.example.it",
                        reference_email=f"titolare{number}@example.it",
                    )
            with time_machine.travel(at_morning(DAY), tick=False):
                scan_day(runtime, DAY)
                runtime.relay.deliver_due()
        finally:
            runtime.close()
        with session_factory() as session:
            return set(session.scalars(select(OutboxMessage.message_id)))

    before = first_day_message_ids()
    with engine.begin() as connection:  # rebuilt from scratch: every table emptied, ids from 1 again
        names = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    after = first_day_message_ids()
    assert len(before) == len(after) == 3
    assert before.isdisjoint(after)
    assert {m.message_id for m in smtp_server.messages} == before | after


def test_notices_are_named_with_the_installation_id(tmp_path, database_url, session_factory, smtp_server):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        with runtime.session_factory() as session, session.begin():
            ids = [make_mailbox(session, expires_on=DAY, reference_email="anna@example.it").id for _ in range(2)]
        with time_machine.travel(at_morning(DAY), tick=False):
            scan_day(runtime, DAY)
    finally:
        runtime.close()
    with session_factory() as session:
        row = session.scalars(select(OutboxMessage)).one()
        keys = [(mailbox_id, DAY.isoformat(), row.stage) for mailbox_id in ids]
        assert row.message_id == message_id_for(keys, "pec-provider.example", installation_id=stored_id(session))


def test_charge_emails_are_named_with_the_installation_id(tmp_path, database_url, session_factory, smtp_server):
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        mailbox = add_auto_renew(rt, "pm_card_visa", notified=True)
        with session_factory() as session, session.begin():
            current = installation_id(session)
        with time_machine.travel(at_morning(CHARGE_DAY), tick=False):
            charges.run_charges(
                session_factory,
                rt.gateway,
                [mailbox.id],
                today=CHARGE_DAY,
                clock=rt.clock,
                mail_domain=rt.mail_domain,
                concurrency=1,
            )
    finally:
        rt.close()
    with session_factory() as session:
        receipt = session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "charge-succeeded")).one()
        keys = [(mailbox.id, mailbox.expires_on.isoformat(), receipt.stage)]
        assert receipt.message_id == message_id_for(keys, "pec-provider.example", installation_id=current)


def test_order_emails_are_named_with_the_installation_id(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=date(2027, 4, 30))
        order = complete_order(session, settings, mailbox)
        session.commit()
        row = session.scalars(select(OutboxMessage)).one()
        expected = OrderEmail("order-confirmation", order.order_number)
        assert row.message_id == message_id_for(expected, "pec-provider.example", installation_id=stored_id(session))


def test_a_retry_keeps_the_message_id_of_its_row(tmp_path, database_url, session_factory, smtp_server):
    runtime = smtp_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        with runtime.session_factory() as session, session.begin():
            make_mailbox(session, expires_on=DAY, reference_email="anna@example.it")
        smtp_server.fail_next("451 4.3.0 Try again later")
        with time_machine.travel(at_morning(DAY), tick=False):
            scan_day(runtime, DAY)
            first = runtime.relay.deliver_due()
        with session_factory() as session, session.begin():
            queued = session.scalars(select(OutboxMessage.message_id)).one()
            # The installation id changing meanwhile (restored by hand, say) changes nothing for the row.
            session.execute(
                text("UPDATE worker_state SET value = :v WHERE key = :k"), {"v": OTHER, "k": INSTALLATION_ID_KEY}
            )
        with time_machine.travel(at_morning(DAY) + timedelta(hours=1), tick=False):
            second = runtime.relay.deliver_due()
    finally:
        runtime.close()
    assert (first.deferred, second.sent) == (1, 1)
    with session_factory() as session:
        assert session.scalars(select(OutboxMessage.message_id)).one() == queued
    assert [m.message_id for m in smtp_server.messages] == [queued]


def test_the_whole_day_uses_one_installation(tmp_path, database_url, session_factory, smtp_server):
    """Notices and charge emails of one run carry Message-IDs of the installation in the database."""
    rt = build_runtime(tmp_path, database_url, session_factory, smtp_server)
    try:
        add_auto_renew(rt, "pm_card_visa", notified=True)
        with rt.session_factory() as session, session.begin():
            make_mailbox(session, expires_on=CHARGE_DAY + timedelta(days=7))
        run_on(rt, CHARGE_DAY)
    finally:
        rt.close()
    with session_factory() as session:
        installation = stored_id(session)
        rows = session.scalars(select(OutboxMessage)).all()
        assert {row.kind for row in rows} == {"expiry-notice", "charge-succeeded"}
        for row in rows:
            keys = [(m["id"], m["expires_on"], row.stage) for m in row.context["mailboxes"]]
            assert row.message_id == message_id_for(keys, "pec-provider.example", installation_id=installation)
