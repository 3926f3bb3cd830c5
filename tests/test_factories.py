"""The test factories' traits build what they say, and rows are shared as the import shares them."""

from __future__ import annotations

from datetime import date

from sqlalchemy import func, select

from tests.support.factories import AGENCY_TAX_CODE, COMPANY_VAT_NUMBER, make_mailbox
from worker.rules.auto_renew import card_expires_too_soon
from worker.rules.holder_data import check_tax_code, check_vat_number
from worker.store.models import Account, Domain, Holder

EXPIRES = date(2027, 3, 31)


def test_traits(session_factory):
    with session_factory() as session, session.begin():
        card = make_mailbox(session, expires_on=EXPIRES, card=True)
        paypal = make_mailbox(session, expires_on=EXPIRES, paypal=True, english=True)
        expiring = make_mailbox(session, expires_on=EXPIRES, card_expiring=True)
        company = make_mailbox(session, expires_on=EXPIRES, company=True)
        agency = make_mailbox(session, expires_on=EXPIRES, public_administration=True)
        expired = make_mailbox(session, expired=True, today=date(2027, 5, 1))

        assert (card.auto_renew, card.payment_method, card.card_expires_on) == (True, "pm_card_visa", None)
        assert (paypal.auto_renew, paypal.payment_method, paypal.language) == (True, "paypal_ok", "en")
        assert expiring.payment_method == "pm_card_visa"
        assert card_expires_too_soon(expiring.card_expires_on, EXPIRES)
        assert (company.holder.kind, company.holder.vat_number) == ("company", COMPANY_VAT_NUMBER)
        assert check_vat_number(COMPANY_VAT_NUMBER) == COMPANY_VAT_NUMBER
        assert (agency.holder.kind, agency.holder.tax_code) == ("public_administration", AGENCY_TAX_CODE)
        assert check_tax_code(AGENCY_TAX_CODE, kind="public_administration") == AGENCY_TAX_CODE
        assert expired.expires_on < date(2027, 5, 1)
        assert card.language == "it" and not make_mailbox(session, expires_on=EXPIRES).auto_renew


def test_an_account_a_holder_and_a_domain_are_shared_by_their_mailboxes(session_factory):
    with session_factory() as session, session.begin():
        first = make_mailbox(
            session, expires_on=EXPIRES, reference_email="studio@example.it", domain="studio.example.it"
        )
        second = make_mailbox(
            session, expires_on=EXPIRES, reference_email="studio@example.it", domain="studio.example.it"
        )
        other = make_mailbox(session, expires_on=EXPIRES, reference_email="studio@example.it", holder_name="Anna Neri")

        assert first.address.endswith("@pec.studio.example.it") and first.address != second.address
        assert (first.account_id, first.holder_id, first.domain_id) == (
            second.account_id,
            second.holder_id,
            second.domain_id,
        )
        assert other.account_id == first.account_id and other.holder_id != first.holder_id
        counts = [session.scalar(select(func.count()).select_from(model)) for model in (Account, Holder, Domain)]
        assert counts == [1, 2, 1]
