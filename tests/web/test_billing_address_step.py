"""The order's holder step carries the billing address: pre-filled from the holder's data, checked, kept."""

from __future__ import annotations

from datetime import date

from sqlalchemy import select

from tests.support.invoices import BILLING, holder_mailbox
from tests.support.link_handler import link_path
from tests.support.web_flow import PRIVATE_HOLDER, post_form, start
from worker.store.models import RenewalOrder


def test_the_billing_address_is_pre_filled_checked_and_kept_on_the_order(client, runtime, session_factory):
    with session_factory() as session:
        mailbox = holder_mailbox(
            session, "private", expires_on=date(2027, 2, 10), address="anna@pec.provider.example.it"
        )
        session.commit()
        session.expunge(mailbox)
    order = start(client, link_path(runtime, mailbox))
    post_form(client, f"{order}/caselle", {f"plan-{mailbox.id}": "standard"})
    page = client.get(f"{order}/intestatario").get_data(as_text=True)
    for name in ("billing_address", "billing_postcode", "billing_city", "billing_province"):
        assert f'name="{name}"' in page and f'value="{BILLING[name]}"' in page, name

    holder = dict(PRIVATE_HOLDER, **BILLING)
    response = post_form(client, f"{order}/intestatario", dict(holder, billing_postcode="2012", billing_city=""))
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="billing_postcode-error"' in html and "Il CAP non è valido" in html
    assert 'id="billing_city-error"' in html and "Indichi anche il comune" in html

    response = post_form(client, f"{order}/intestatario", dict(holder, billing_city="Monza", billing_province="mb"))
    assert response.status_code == 303
    with session_factory() as session:
        kept = session.scalars(select(RenewalOrder)).one().holder_data
    assert (kept["billing_city"], kept["billing_province"], kept["billing_country"]) == ("Monza", "MB", "IT")
