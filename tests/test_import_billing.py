"""The billing address columns of the import, on both databases (and the bulk load), and invoices on SQLite."""

from __future__ import annotations

from datetime import timedelta

from tests.support.importing import holder_of, make_csv, refusal, row, run
from tests.support.invoices import SELLER, holder_mailbox, invoices
from tests.support.orders import NOW, TODAY, complete_order
from tests.support.settings import make_settings
from worker.services import payments
from worker.services.invoices.export import export_invoices
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory

ADDRESS = {
    "billing_address": "Via Garibaldi 10",
    "billing_postcode": "20121",
    "billing_city": "Milano",
    "billing_province": "mi",
}


def test_the_billing_address_is_stored_on_the_holder_with_italy_by_default(any_database):
    run(any_database, make_csv(row(1, **ADDRESS), row(2)))
    holder = holder_of(any_database, "user1@pec.example.it")
    assert (
        holder.billing_address,
        holder.billing_postcode,
        holder.billing_city,
        holder.billing_province,
        holder.billing_country,
    ) == ("Via Garibaldi 10", "20121", "Milano", "MI", "IT")
    other = holder_of(any_database, "user2@pec.example.it")
    assert other.billing_address is None and other.billing_country is None


def test_the_bulk_load_carries_the_billing_columns(session_factory, bulk_starts):
    run(session_factory, make_csv(row(1, **ADDRESS, billing_country="IT")))
    assert bulk_starts == [True]
    assert holder_of(session_factory, "user1@pec.example.it").billing_city == "Milano"


def test_billing_data_that_come_later_make_a_new_holder_row(any_database):
    run(any_database, make_csv(row(1)))
    before = holder_of(any_database, "user1@pec.example.it")
    report = run(any_database, make_csv(row(1, **ADDRESS)))
    after = holder_of(any_database, "user1@pec.example.it")
    assert report.updated == 1 and after.id != before.id and after.billing_postcode == "20121"


def test_bad_billing_values_are_refused_with_their_line_and_column(any_database):
    text = make_csv(
        row(1, **{**ADDRESS, "billing_city": ""}),
        row(2, **{**ADDRESS, "billing_postcode": "2012"}),
        row(3, **{**ADDRESS, "billing_country": "Italia"}),
        row(4, **{**ADDRESS, "billing_country": "FR", "billing_postcode": "75008"}),
        row(5, **{**ADDRESS, "billing_address": "x" * 61}),
        row(6, billing_province="RM"),
    )
    assert refusal(any_database, text) == [
        "line 2, column billing_city: is required with the other billing address columns",
        "line 3, column billing_postcode: '2012' is not an Italian postcode (CAP): 5 digits",
        "line 4, column billing_country: 'ITALIA' is not a 2-letter country code (ISO 3166), such as IT",
        "line 5, column billing_province: is only for an address in Italy",
        "line 6, column billing_address: is 61 characters long; at most 60",
        "line 7, column billing_address: is required with the other billing address columns",
        "line 7, column billing_postcode: is required with the other billing address columns",
        "line 7, column billing_city: is required with the other billing address columns",
    ]


def test_an_order_paid_on_sqlite_is_invoiced_and_exported(tmp_path):
    url = "sqlite:///" + str(tmp_path / "invoices.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    settings = make_settings(tmp_path, database_url=url, **SELLER)
    with factory() as session:
        order = complete_order(session, settings, holder_mailbox(session, "company", expires_on=TODAY))
        payments.register_payment(
            session,
            order_number=order.order_number,
            amount_cents=order.total_cents,
            method="bank_transfer",
            reference="CRO 1",
            now=NOW,
            today=TODAY,
            settings=settings,
        )
        session.commit()
        [invoice] = invoices(session)
    assert (invoice.status, invoice.document_number) == ("issued", "1/2027")
    result = export_invoices(
        engine, settings.seller, since=TODAY, out_dir=tmp_path / "out", today=TODAY, now=NOW + timedelta(hours=1)
    )
    assert result.written == ["IT01234560017_00001.xml"]
    engine.dispose()
