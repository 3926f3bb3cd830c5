"""What a good mailbox import writes: every field, re-imports, chunks, domains, warnings, SQLite, chunks undone."""

from __future__ import annotations

import sys
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.importing import (
    AGENCY_TAX_CODE,
    TAX_CODE,
    VAT,
    count,
    domain_row,
    holder_of,
    mailbox,
    make_csv,
    refusal,
    row,
    run,
)
from worker.rules.schedule import DEFAULT_STAGES, first_action_on
from worker.services.importer import SWITCH_INTERVAL, ImportReport, count_records, import_mailboxes
from worker.store import migrate
from worker.store.db import make_engine, make_session_factory
from worker.store.models import Account, Domain, Holder, Mailbox

# --------------------------------------------------------------------------
# Good files


def test_a_good_file_imports_every_field(session_factory, tmp_path):
    rows = [
        row(
            1,
            address="Mario.Rossi@PEC.Example.it",
            reference_email="Mario@Example.IT",
            plan="Pro",
            expires_on="2027-03-31",
            auto_renew="TRUE",
            payment_method="pm_card_visa",
            card_expiry="2028-02",
            renewal_years="2",
            promo="true",
            extra_space_gb="3",
            extra_archive_gb="5",
            used_space_mb="1500",
            tax_code="rssmra80a01h501u",
            language="EN",
            postal_address="Via Roma 1, 00100 Roma",
        ),
        row(
            2,
            holder_name="ACME Srl",
            holder_kind="company",
            reference_email="amministrazione@acme.example.it",
            vat_number=VAT,
            einvoice_code="m5uxcr1",
            plan="premium",
        ),
        row(
            3,
            holder_name="Comune di Esempio",
            holder_kind="public_administration",
            reference_email="protocollo@comune.example.it",
            tax_code=AGENCY_TAX_CODE,
            einvoice_code="uf3xq2",
            cig="z1a2b3c4d5",
            cup="J71B19000010005",
        ),
    ]
    path = tmp_path / "mailboxes.csv"
    path.write_text(make_csv(*rows))
    report = import_mailboxes(session_factory, path, stages=DEFAULT_STAGES)
    assert report == ImportReport(rows=3, created=3, updated=0, domains=0, warnings=[])

    first = mailbox(session_factory, "mario.rossi@pec.example.it")
    assert (
        first.plan,
        first.expires_on,
        first.auto_renew,
        first.payment_method,
        first.card_expires_on,
        first.renewal_years,
        first.promo,
        first.extra_space_gb,
        first.extra_archive_gb,
        first.used_space_mb,
        first.language,
        first.domain_id,
        first.next_action_on,
    ) == (
        "pro",
        date(2027, 3, 31),
        True,
        "pm_card_visa",
        date(2028, 2, 29),
        2,
        True,
        3,
        5,
        1500,
        "en",
        None,
        date(2026, 12, 31),
    )
    holder = holder_of(session_factory, "mario.rossi@pec.example.it")
    assert (holder.name, holder.kind, holder.reference_email, holder.tax_code, holder.postal_address) == (
        "Mario Rossi",
        "private",
        "mario@example.it",
        TAX_CODE,
        "Via Roma 1, 00100 Roma",
    )
    assert len(holder.holder_key) == 64

    second = mailbox(session_factory, "user2@pec.example.it")
    assert (
        second.plan,
        second.auto_renew,
        second.payment_method,
        second.card_expires_on,
        second.renewal_years,
        second.promo,
    ) == (
        "premium",
        False,
        None,
        None,
        1,
        False,
    )
    assert (second.extra_space_gb, second.extra_archive_gb, second.used_space_mb, second.language) == (0, 0, 0, "it")
    company = holder_of(session_factory, "user2@pec.example.it")
    assert (company.kind, company.vat_number, company.sdi_code, company.einvoice_pec, company.office_code) == (
        "company",
        VAT,
        "M5UXCR1",
        None,
        None,
    )
    agency = holder_of(session_factory, "user3@pec.example.it")
    assert (agency.tax_code, agency.office_code, agency.cig, agency.cup, agency.sdi_code) == (
        AGENCY_TAX_CODE,
        "UF3XQ2",
        "Z1A2B3C4D5",
        "J71B19000010005",
        None,
    )
    # One account, three holders.
    with session_factory() as session:
        assert session.scalars(select(Account.login)).all() == ["mario.rossi"]
        assert {m.account_id for m in session.scalars(select(Mailbox))} == {session.scalar(select(Account.id))}
    assert count(session_factory, Holder) == 3


def test_next_action_on_is_the_first_stage_of_the_cycle(session_factory):
    run(session_factory, make_csv(row(1, expires_on="2027-05-31")))
    assert mailbox(session_factory, "user1@pec.example.it").next_action_on == date(2027, 2, 28)
    assert first_action_on(DEFAULT_STAGES, date(2027, 5, 31)) == date(2027, 2, 28)


def test_an_empty_cell_means_absent(session_factory):
    text = make_csv(
        row(1, renewal_years="", promo="", auto_renew="", language="", extra_space_gb="", payment_method=" ")
    )
    run(session_factory, text)
    first = mailbox(session_factory, "user1@pec.example.it")
    assert (
        first.renewal_years,
        first.promo,
        first.auto_renew,
        first.language,
        first.extra_space_gb,
        first.payment_method,
    ) == (
        1,
        False,
        False,
        "it",
        0,
        None,
    )


def test_same_holder_data_is_stored_once_per_account(session_factory):
    text = make_csv(row(1), row(2), row(3, account="other.account"))
    run(session_factory, text)
    assert count(session_factory, Holder) == 2
    assert count(session_factory, Account) == 2


def test_a_reimport_updates(session_factory):
    first = run(session_factory, make_csv(row(1), row(2)))
    assert (first.created, first.updated) == (2, 0)
    second = run(
        session_factory,
        make_csv(
            row(
                1,
                plan="premium",
                expires_on="2028-03-31",
                holder_name="Mario Rossi Jr",
                reference_email="jr@example.it",
            ),
            row(2),
            row(3),
        ),
    )
    assert (second.rows, second.created, second.updated, second.unchanged) == (3, 1, 1, 1)
    updated = mailbox(session_factory, "user1@pec.example.it")
    assert updated.reference_email == "jr@example.it"  # the scan's copy follows the holder
    assert (
        mailbox(session_factory, "user2@pec.example.it").reference_email
        == holder_of(session_factory, "user2@pec.example.it").reference_email
    )
    assert (updated.plan, updated.expires_on, updated.next_action_on) == (
        "premium",
        date(2028, 3, 31),
        date(2027, 12, 31),
    )
    assert holder_of(session_factory, "user1@pec.example.it").name == "Mario Rossi Jr"
    assert holder_of(session_factory, "user2@pec.example.it").name == "Mario Rossi"
    assert count(session_factory, Mailbox) == 3
    assert count(session_factory, Account) == 1


def test_a_reimport_of_the_same_file_changes_nothing(session_factory):
    text = make_csv(row(1), row(2))
    run(session_factory, text)
    with session_factory() as session:
        before = [
            (m.id, m.holder_id, m.account_id, m.expires_on)
            for m in session.scalars(select(Mailbox).order_by(Mailbox.id))
        ]
    assert run(session_factory, text) == ImportReport(rows=2, created=0, updated=0, unchanged=2, domains=0, warnings=[])
    with session_factory() as session:
        after = [
            (m.id, m.holder_id, m.account_id, m.expires_on)
            for m in session.scalars(select(Mailbox).order_by(Mailbox.id))
        ]
    assert after == before
    assert count(session_factory, Holder) == 1


def test_chunks_and_progress(session_factory):
    rows = [row(number, account=f"account{number % 5}", holder_name=f"Holder {number % 7}") for number in range(1, 12)]
    seen: list[int] = []
    report = run(session_factory, make_csv(*rows), progress=seen.append, chunk_rows=4)
    assert (report.rows, report.created) == (11, 11)
    # Records checked plus rows written, every 4 records, then the total:
    # writing overlaps checking, so the figures in between vary.
    assert seen == sorted(seen) and seen[-1] == 22
    assert 4 <= seen[0] <= 8 and 8 <= seen[1] <= 16
    with session_factory() as session:
        pairs = session.execute(
            select(Mailbox.address, Account.login, Holder.name)
            .join(Account, Account.id == Mailbox.account_id)
            .join(Holder, Holder.id == Mailbox.holder_id)
        ).all()
    assert sorted(pairs) == sorted(
        (f"user{n}@pec.example.it", f"account{n % 5}", f"Holder {n % 7}") for n in range(1, 12)
    )


def test_count_records(tmp_path):
    path = tmp_path / "three.csv"
    path.write_text(make_csv(row(1), row(2), row(3)))
    assert count_records(path) == 3
    path.write_text(make_csv(row(1), row(2)).rstrip("\n"))
    assert count_records(path) == 2
    path.write_text("")
    assert count_records(path) == 0


# --------------------------------------------------------------------------
# Mailboxes on a customer domain


def test_domain_mailboxes_take_the_domain_expiry(session_factory):
    report = run(
        session_factory,
        make_csv(
            row(1),
            domain_row(2, "theirdomain.it", "2027-05-31"),
            domain_row(3, "theirdomain.it", "2027-05-31"),
            domain_row(4, "other.it", "2027-08-31", address="box4@other.it"),
        ),
    )
    assert (report.rows, report.created, report.domains) == (4, 4, 2)
    with session_factory() as session:
        domains = dict(session.execute(select(Domain.name, Domain.expires_on)).all())
        domain_id = session.scalar(select(Domain.id).where(Domain.name == "theirdomain.it"))
    assert domains == {"theirdomain.it": date(2027, 5, 31), "other.it": date(2027, 8, 31)}
    box = mailbox(session_factory, "box2@pec.theirdomain.it")
    assert (box.domain_id, box.expires_on, box.next_action_on) == (domain_id, date(2027, 5, 31), date(2027, 2, 28))
    assert mailbox(session_factory, "user1@pec.example.it").domain_id is None


def test_a_new_domain_expiry_moves_every_mailbox_of_the_domain(session_factory):
    run(
        session_factory,
        make_csv(domain_row(1, "theirdomain.it", "2027-05-31"), domain_row(2, "theirdomain.it", "2027-05-31")),
    )
    report = run(session_factory, make_csv(domain_row(1, "theirdomain.it", "2028-05-31")))
    assert (report.rows, report.created, report.updated, report.domains) == (1, 0, 1, 1)
    for address in ("box1@pec.theirdomain.it", "box2@pec.theirdomain.it"):
        box = mailbox(session_factory, address)
        assert (box.expires_on, box.next_action_on) == (date(2028, 5, 31), date(2028, 2, 29))
    assert count(session_factory, Domain) == 1


# --------------------------------------------------------------------------
# Warnings


def test_warnings_about_reference_addresses(session_factory):
    report = run(
        session_factory,
        make_csv(
            row(1, reference_email="User1@pec.example.it"),
            domain_row(2, "theirdomain.it", "2027-05-31", reference_email="boss@theirdomain.it"),
            domain_row(3, "theirdomain.it", "2027-05-31", reference_email="boss@mail.theirdomain.it"),
            domain_row(4, "theirdomain.it", "2027-05-31", reference_email="boss@nottheirdomain.it"),
            row(5, reference_email="boss@theirdomain.it"),
        ),
    )
    assert report.warnings == [
        "line 2, column reference_email: is the mailbox itself; notices may never be read",
        "line 3, column reference_email: boss@theirdomain.it is on theirdomain.it, the domain this mailbox depends on;"
        " if the domain expires, notices may never be read",
        "line 4, column reference_email: boss@mail.theirdomain.it is on theirdomain.it, the domain this mailbox "
        "depends on;"
        " if the domain expires, notices may never be read",
    ]
    assert report.created == 5


# --------------------------------------------------------------------------
# SQLite


def test_import_on_sqlite(tmp_path):
    url = "sqlite:///" + str(tmp_path / "import.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        factory = make_session_factory(engine)
        text = make_csv(
            row(1),
            domain_row(2, "theirdomain.it", "2027-05-31"),
            row(3, holder_kind="company", vat_number=VAT, einvoice_code="0000000"),
        )
        assert run(factory, text) == ImportReport(rows=3, created=3, updated=0, domains=1, warnings=[])
        again = make_csv(row(1, plan="pro"), domain_row(2, "theirdomain.it", "2027-06-30"), row(4))
        assert run(factory, again) == ImportReport(rows=3, created=1, updated=2, unchanged=0, domains=1, warnings=[])
        assert mailbox(factory, "user1@pec.example.it").plan == "pro"
        box = mailbox(factory, "box2@pec.theirdomain.it")
        assert (box.expires_on, box.next_action_on) == (date(2027, 6, 30), date(2027, 3, 30))
        assert count(factory, Mailbox) == 4
        assert refusal(factory, make_csv(row(9, plan="gold"))) == [
            "line 2, column plan: 'gold' is not a plan: one of standard, pro, premium"
        ]
        assert count(factory, Mailbox) == 4
    finally:
        engine.dispose()


def test_a_path_given_as_a_string(session_factory, tmp_path):
    path = tmp_path / "mailboxes.csv"
    path.write_text(make_csv(row(1), row(2)))
    assert import_mailboxes(session_factory, str(path), stages=DEFAULT_STAGES).created == 2


# --------------------------------------------------------------------------
# Chunks written before a problem further down the file


def test_chunks_written_before_a_bad_row_are_undone(any_database):
    """Good chunks are upserted while the rest of the file is checked; a bad row later undoes them."""
    factory = any_database
    run(factory, make_csv(row(1, plan="pro")))
    rows = [row(number) for number in range(1, 11)]
    rows[8] = row(9, language="fr")
    assert refusal(factory, make_csv(*rows), chunk_rows=3) == [
        "line 10, column language: 'fr' is not a language: it or en"
    ]
    assert (count(factory, Mailbox), count(factory, Account), count(factory, Holder)) == (1, 1, 1)
    assert mailbox(factory, "user1@pec.example.it").plan == "pro"
    report = run(factory, make_csv(*(row(number) for number in range(1, 11))), chunk_rows=3)
    assert (report.rows, report.created, report.updated) == (10, 9, 1)
    assert mailbox(factory, "user1@pec.example.it").plan == "standard"


def test_repeats_inside_one_chunk_and_across_chunks(any_database):
    """Rows one statement could not upsert together are reported, not a database error."""
    domain = {"expires_on": "", "domain": "example.it"}
    text = make_csv(
        row(1),
        row(2, address="user1@pec.example.it"),  # the same chunk
        row(3, address="a@pec.example.it", domain_expires_on="2027-05-31", **domain),
        row(4, address="b@pec.example.it", domain_expires_on="2027-06-30", **domain),  # the same chunk
        row(5),
        row(6, address="user5@pec.example.it"),  # the same chunk, the second one
        row(7, address="c@pec.example.it", domain_expires_on="2027-07-31", **domain),  # a later chunk
        row(8, address="USER1@pec.example.it"),  # a later chunk
    )
    assert refusal(any_database, text, chunk_rows=4) == [
        "line 3, column address: user1@pec.example.it is already on line 2",
        "line 5, column domain_expires_on: 2027-06-30 differs from 2027-05-31 given for example.it on line 4",
        "line 7, column address: user5@pec.example.it is already on line 6",
        "line 8, column domain_expires_on: 2027-07-31 differs from 2027-05-31 given for example.it on line 4",
        "line 9, column address: user1@pec.example.it is already on line 2",
    ]
    assert count(any_database, Mailbox) == 0


def test_backslashes_are_stored_as_they_are(session_factory):
    """COPY's text format gives backslashes a meaning; they must reach the table unchanged."""
    run(session_factory, make_csv(row(1, holder_name="Studio \\N \\t Neri\\", postal_address="Via \\\\ Roma")))
    holder = holder_of(session_factory, "user1@pec.example.it")
    assert (holder.name, holder.postal_address) == ("Studio \\N \\t Neri\\", "Via \\\\ Roma")


@pytest.mark.parametrize("process_interval", [0.005, 0.00005])
def test_an_import_switches_threads_promptly_and_gives_the_interval_back(session_factory, process_interval):
    """The writer thread gets the GIL back within ``SWITCH_INTERVAL`` of asking (worker.services.importer), and only "
    "while importing."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(process_interval)
    try:
        seen: list[float] = []
        rows = make_csv(*(row(number) for number in range(1, 8)))
        report = run(session_factory, rows, progress=lambda done: seen.append(sys.getswitchinterval()), chunk_rows=2)
        assert report.created == 7 and len(seen) >= 4
        expected = min(process_interval, SWITCH_INTERVAL)  # a process already quicker keeps its own
        during = seen[:-1]  # the last call reports the end, once the import has committed
        assert during == [pytest.approx(expected, rel=0.05)] * len(during)  # kept in whole microseconds
        assert sys.getswitchinterval() == pytest.approx(process_interval, rel=0.05)
        bad = [row(1), row(2, language="fr")]
        assert refusal(session_factory, make_csv(*bad), chunk_rows=2) == [
            "line 3, column language: 'fr' is not a language: it or en"
        ]
        assert sys.getswitchinterval() == pytest.approx(process_interval, rel=0.05)  # given back after a refusal too
    finally:
        sys.setswitchinterval(previous)
