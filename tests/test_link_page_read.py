"""The link page's read of a mailbox link: one statement in autocommit, every state, on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import event

from tests.support.factories import make_mailbox
from tests.support.orders import EXPIRES, NOW, TODAY, link_for
from worker.rules.links import ACCOUNT, MAILBOX, RenewalLink
from worker.services import orders
from worker.services.orders import LinkState
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import OrderStatus


def links_in_every_state(session, settings):
    """(link, state, public id of the order to resume) for a mailbox link in every state the page knows."""
    plain = make_mailbox(session, expires_on=EXPIRES, plan="pro", holder_name="Anna Bianchi")
    auto = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_visa")
    on_domain = make_mailbox(session, expires_on=EXPIRES, domain="bianchi.example.it")
    renewed = make_mailbox(session, expires_on=date(2028, 4, 30), language="en")
    deleted = make_mailbox(session, expires_on=date(2026, 11, 30))
    ordered = make_mailbox(session, expires_on=EXPIRES)
    cancelled = make_mailbox(session, expires_on=EXPIRES)
    unpaid = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_chargeDeclined")
    session.commit()
    started = orders.start_order(session, link_for(ordered), TODAY, NOW)
    orders.start_order(session, link_for(cancelled), TODAY, NOW).status = OrderStatus.CANCELLED.value
    left_unpaid = orders.create_unpaid_renewal_order(session, unpaid, 1, NOW, TODAY)
    session.commit()
    return [
        (link_for(plain), LinkState.RENEWABLE, None),
        (link_for(auto), LinkState.AUTO_RENEW, None),
        (link_for(on_domain), LinkState.ON_DOMAIN, None),
        (link_for(renewed, date(2027, 4, 30)), LinkState.ALREADY_RENEWED, None),
        (link_for(deleted), LinkState.DELETED, None),
        (link_for(ordered), LinkState.RENEWABLE, started.public_id),
        (link_for(cancelled), LinkState.RENEWABLE, None),  # a cancelled order is not resumed
        (link_for(unpaid), LinkState.RENEWABLE, left_unpaid.public_id),  # payable by any method
        (link_for(plain, date(2027, 5, 31)), LinkState.NOT_FOUND, None),  # a cycle it never had
        (RenewalLink(MAILBOX, 999999, EXPIRES), LinkState.NOT_FOUND, None),
    ]


def test_a_mailbox_link_reads_in_one_statement_outside_a_transaction(session_factory, settings):
    """The link page reads a mailbox link on a connection in autocommit, in one SELECT that joins
    the holder and the link's order: every state, the holder's name and the order to resume must
    come out right, and nothing else may be asked of the database."""
    with session_factory() as session:
        cases = links_in_every_state(session, settings)
    plain, renewed = cases[0][0], cases[3][0]

    engine = session_factory.kw["bind"].execution_options(isolation_level="AUTOCOMMIT")
    statements = []
    with engine.connect() as connection:

        @event.listens_for(connection, "before_cursor_execute")
        def _record(conn, _cursor, statement, _parameters, _context, _executemany):
            statements.append((statement, conn.connection.dbapi_connection.autocommit))

        for link, state, order_public_id in cases:
            statements.clear()
            view = orders.describe_link(connection, link, TODAY)
            assert (view.state, view.order_public_id) == (state, order_public_id), link
            assert len(statements) == 1 and statements[0][1] is True, statements  # one statement, autocommit
    with engine.connect() as connection:
        view = orders.describe_link(connection, plain, TODAY)
    assert (view.holder_name, view.language, view.mailboxes[0].plan) == ("Anna Bianchi", "it", "pro")
    assert view.mailboxes[0].expires_on == EXPIRES and view.mailboxes[0].state == "active"
    with engine.connect() as connection:
        view = orders.describe_link(connection, renewed, TODAY)
    assert (view.language, view.new_expires_on, view.holder_name) == ("en", date(2028, 4, 30), "Mario Rossi")


def test_the_link_pages_read_gives_every_state_and_leaves_the_pool_as_it_found_it(session_factory, settings):
    with session_factory() as session:
        cases = links_in_every_state(session, settings)
    engine = session_factory.kw["bind"]
    for link, state, order_public_id in cases:
        view = orders.read_mailbox_link(engine, link, TODAY)
        assert (view.state, view.order_public_id) == (state, order_public_id), link
    with engine.connect() as connection:  # the pooled connection is back out of autocommit
        assert connection.connection.dbapi_connection.autocommit is False


def test_the_link_pages_read_works_on_sqlite_the_embedded_default(tmp_path, settings):
    url = f"sqlite:///{tmp_path / 'renewal.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            cases = links_in_every_state(session, settings)
        for link, state, order_public_id in cases:
            view = orders.read_mailbox_link(engine, link, TODAY)
            assert (view.state, view.order_public_id) == (state, order_public_id), link
            if view.mailboxes:  # SQLite keeps dates as text and booleans as integers: read back as such
                assert type(view.mailboxes[0].expires_on) is date and type(view.mailboxes[0].auto_renew) is bool
        view = orders.read_mailbox_link(engine, cases[0][0], TODAY)
        assert (view.holder_name, view.mailboxes[0].plan) == ("Anna Bianchi", "pro")
    finally:
        engine.dispose()


def test_an_account_link_is_not_the_link_pages_mailbox_read(session_factory):
    with pytest.raises(ValueError):
        orders.read_mailbox_link(session_factory.kw["bind"], RenewalLink(ACCOUNT, 1, EXPIRES), TODAY)
    with session_factory.kw["bind"].connect() as connection, pytest.raises(TypeError):
        orders.describe_link(connection, RenewalLink(ACCOUNT, 1, EXPIRES), TODAY)
