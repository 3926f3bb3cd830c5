"""The order service on the real PostgreSQL: link states, steps, refusals, confirmation and its email."""

from __future__ import annotations

import email
import email.policy
import json
from datetime import date

import pytest
from sqlalchemy import select

from tests.support.factories import make_mailbox
from tests.support.orders import EXPIRES, NOW, TODAY, complete_order, link_for
from tests.support.rows import count
from worker.mail.emails import EmailRenderer
from worker.rules.links import ACCOUNT, MAILBOX, LinkSigner, RenewalLink
from worker.services import orders
from worker.services.orders import LinkNotUsable, LinkState, MailboxChoice, OrderNotOpen, OrderValidationError
from worker.store.models import OutboxMessage, RenewalOrder

COMPANY = {
    "name": "Rossi S.r.l.",
    "kind": "company",
    "reference_email": "amministrazione@rossi.example.it",
    "vat_number": "00743110157",
    "einvoice_code": "abc1234",
    "postal_address": "Via Roma 1, 00100 Roma",
}


def renderer_for(settings) -> EmailRenderer:
    signer = LinkSigner(settings.secret_keys, settings.base_url, settings.link_max_age_days)
    return EmailRenderer(mail_from=settings.mail_from, signer=signer)


def parse(rendered):
    message = email.message_from_bytes(rendered.as_bytes(), policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    return message, text, html


def render_outbox(settings, row: OutboxMessage):
    return renderer_for(settings).render(
        kind=row.kind, stage=row.stage, language=row.language, to_address=row.to_address,
        message_id=row.message_id, context=row.context, now=NOW,
    )  # fmt: skip


# -- describe_link ------------------------------------------------------------------------------------


def test_renewable_link_describes_the_mailbox_and_writes_nothing(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, plan="pro")
        session.commit()
        view = orders.describe_link(session, link_for(mailbox), TODAY)
        assert view.state == LinkState.RENEWABLE
        assert view.language == "it"
        assert [m.address for m in view.mailboxes] == [mailbox.address]
        summary = view.mailboxes[0]
        assert summary.plan == "pro"
        assert summary.expires_on == EXPIRES
        assert summary.deletion_on == date(2027, 7, 30)
        assert summary.state == "active"
        assert view.order_public_id is None
        assert not session.dirty and not session.new
        assert count(session, RenewalOrder) == 0


def test_link_states(session_factory):
    with session_factory() as session:
        auto = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_visa")
        on_domain = make_mailbox(session, expires_on=EXPIRES, domain="rossi.example.it")
        renewed = make_mailbox(session, expires_on=date(2028, 4, 30), language="en")
        deleted = make_mailbox(session, expires_on=date(2026, 11, 30))
        last_day = make_mailbox(session, expires_on=date(2026, 12, 1))
        assert orders.describe_link(session, link_for(auto), TODAY).state == LinkState.AUTO_RENEW
        assert orders.describe_link(session, link_for(on_domain), TODAY).state == LinkState.ON_DOMAIN
        view = orders.describe_link(session, link_for(renewed, date(2027, 4, 30)), TODAY)
        assert (view.state, view.new_expires_on, view.language) == (LinkState.ALREADY_RENEWED, date(2028, 4, 30), "en")
        # 30 Nov 2026 + 90 days = 28 Feb 2027: on 1 March 2027 the mailbox is deleted.
        assert orders.describe_link(session, link_for(deleted), TODAY).state == LinkState.DELETED
        view = orders.describe_link(session, link_for(last_day), TODAY)
        assert (view.state, view.mailboxes[0].state) == (LinkState.RENEWABLE, "expired")
        assert orders.describe_link(session, RenewalLink(MAILBOX, 999999, EXPIRES), TODAY).state == LinkState.NOT_FOUND


def test_account_link_lists_every_mailbox_in_its_renewal_window(session_factory):
    with session_factory() as session:
        first = make_mailbox(session, expires_on=date(2027, 5, 31), reference_email="ufficio@example.it")
        account_id = first.account_id
        expired = make_mailbox(session, expires_on=date(2027, 1, 15), reference_email="ufficio@example.it")
        later = make_mailbox(
            session, expires_on=date(2027, 6, 2), reference_email="ufficio@example.it"
        )  # 3m window opens 2 March
        auto = make_mailbox(
            session, expires_on=date(2027, 4, 1), reference_email="ufficio@example.it", auto_renew=True,
            payment_method="pm_card_visa",
        )  # fmt: skip
        gone = make_mailbox(session, expires_on=date(2026, 11, 1), reference_email="ufficio@example.it")
        link = RenewalLink(ACCOUNT, account_id, date(2027, 5, 31))
        view = orders.describe_link(session, link, TODAY)
        assert view.state == LinkState.RENEWABLE
        assert view.account_login == "ufficio@example.it"
        assert sorted(m.address for m in view.mailboxes) == sorted([first.address, expired.address, auto.address])
        assert later.address not in [m.address for m in view.mailboxes]
        assert gone.address not in [m.address for m in view.mailboxes]

        order = orders.start_order(session, link, TODAY, NOW)
        selected = {line.mailbox_id: line.selected for line in order.lines}
        assert selected == {first.id: True, expired.id: True, auto.id: False}
        assert orders.start_order(session, link, TODAY, NOW).id == order.id


# -- start_order ---------------------------------------------------------------------------------------


def test_start_order_is_idempotent_per_link(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        session.commit()
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        session.commit()
        assert order.status == "draft"
        assert len(order.public_id) >= 32
        assert order.order_number is None
        again = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        assert again.id == order.id
    with session_factory() as other:  # another request, another session
        assert orders.start_order(other, link_for(mailbox), TODAY, NOW).id == order.id
        assert count(other, RenewalOrder) == 1
        view = orders.describe_link(other, link_for(mailbox), TODAY)
        assert view.order_public_id == order.public_id
        assert orders.find_order(other, order.public_id).id == order.id
        assert orders.find_order(other, "nope") is None


@pytest.mark.parametrize(
    "kwargs, link_expiry, state",
    [
        ({"domain": "bianchi.example.it"}, None, LinkState.ON_DOMAIN),
        ({"expires_on": date(2026, 11, 30)}, None, LinkState.DELETED),
        ({"expires_on": date(2028, 4, 30)}, date(2027, 4, 30), LinkState.ALREADY_RENEWED),
    ],
)
def test_start_order_refused(session_factory, kwargs, link_expiry, state):
    with session_factory() as session:
        kwargs.setdefault("expires_on", EXPIRES)
        mailbox = make_mailbox(session, **kwargs)
        with pytest.raises(LinkNotUsable) as refused:
            orders.start_order(session, link_for(mailbox, link_expiry), TODAY, NOW)
        assert refused.value.state == state
        assert count(session, RenewalOrder) == 0


# -- Step 1: mailboxes --------------------------------------------------------------------------------


def test_downgrade_to_standard_requires_confirmation(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, plan="premium")
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard")], TODAY)
        assert error.value.errors == {
            f"confirm_archive_deletion-{mailbox.id}": (
                f"Passando alla tipologia Standard l'archivio della casella {mailbox.address} verrà cancellato. "
                "Confermi di voler procedere."
            )
        }
        assert order.lines[0].plan == "premium" and not order.mailboxes_confirmed  # nothing changed
        orders.choose_mailboxes(
            session, order, [MailboxChoice(mailbox.id, "standard", confirm_archive_deletion=True)], TODAY
        )
        assert (order.lines[0].plan, order.lines[0].archive_deletion_confirmed) == ("standard", True)
        assert order.mailboxes_confirmed
        assert orders.next_step(order) == "holder"


def test_space_rules_and_english_messages(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, language="en")
        mailbox.used_space_mb = 1500
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard", extra_archive_gb=2)])
        assert error.value.errors == {
            f"extra_space_gb-{mailbox.id}": (
                "The mailbox uses 1500 MB: on the Standard plan it needs at least 1 GB of extra space."
            ),
            f"extra_archive_gb-{mailbox.id}": "Extra archive space is only available on the Pro and Premium plans.",
        }
        mailbox.used_space_mb = 2100
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard", extra_space_gb=1)])
        assert list(error.value.errors) == [f"plan-{mailbox.id}"]
        assert "Free some space" in error.value.errors[f"plan-{mailbox.id}"]
        orders.choose_mailboxes(
            session, order, [MailboxChoice(mailbox.id, "pro", extra_space_gb=1, extra_archive_gb=2)]
        )
        assert (order.lines[0].plan, order.lines[0].extra_space_gb, order.lines[0].extra_archive_gb) == ("pro", 1, 2)


def test_auto_renew_mailbox_only_with_a_plan_change(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_visa")
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard")], TODAY)
        assert "solo cambiando tipologia" in error.value.errors[f"plan-{mailbox.id}"]
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "pro")], TODAY)
        assert order.lines[0].plan == "pro"


def test_unknown_mailbox_and_nothing_selected(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        stranger = make_mailbox(session, expires_on=EXPIRES)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(stranger.id, "pro")])
        assert error.value.errors == {"mailboxes": "Questa casella PEC non fa parte dell'ordine."}
        with pytest.raises(OrderValidationError) as error:
            orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "pro", renew=False)])
        assert error.value.errors == {"mailboxes": "Scelga almeno una casella PEC da rinnovare."}


# -- Step 2: holder ------------------------------------------------------------------------------------


def test_holder_rules_in_italian(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        assert orders.holder_form_data(order)["name"] == "Mario Rossi"
        bad = dict(COMPANY, vat_number="00743110158", einvoice_code="")
        with pytest.raises(OrderValidationError) as error:
            orders.set_holder(session, order, bad)
        assert error.value.errors == {
            "vat_number": "La partita IVA non è corretta: la cifra di controllo non corrisponde.",
            "einvoice_code": (
                "Indichi il codice destinatario SDI (7 caratteri) o un indirizzo PEC per la fattura elettronica."
            ),
        }
        assert order.holder_data is None
        orders.set_holder(session, order, COMPANY)
        assert order.holder_data["sdi_code"] == "ABC1234"
        assert order.holder_data["vat_number"] == "00743110157"
        assert orders.holder_form_data(order)["einvoice_code"] == "ABC1234"


def test_public_administration_office_code_cig_cup(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        pa = {
            "name": "Comune di Esempio",
            "kind": "public_administration",
            "reference_email": "protocollo@comune.example.it",
            "tax_code": "80012345678",
            "einvoice_code": "UF1234",
            "cig": "1234567890",
            "cup": "ABCDEFGHIJ12345X",
        }
        with pytest.raises(OrderValidationError) as error:
            orders.set_holder(session, order, pa)
        assert set(error.value.errors) == {"tax_code", "cup"}
        assert error.value.errors["cup"] == "Il CUP non è valido: ha 15 lettere o cifre."
        with pytest.raises(OrderValidationError) as error:
            orders.set_holder(session, order, dict(COMPANY, cig="1234567890"))
        assert error.value.errors == {"cig": "Il CIG si indica solo per una pubblica amministrazione."}


def test_holder_messages_in_english(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, language="en")
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.set_holder(session, order, dict(COMPANY, vat_number=""))
        assert error.value.errors == {"vat_number": "The VAT number is required for a company: its partita IVA."}


# -- Step 3: payment -----------------------------------------------------------------------------------


def test_payment_methods_offered_only_if_registered_before_deletion(session_factory):
    with session_factory() as session:
        # Expired 2 December 2026: deleted from 3 March 2027 (Wednesday).
        mailbox = make_mailbox(session, expires_on=date(2026, 12, 2))
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard")], TODAY)
        options = {option.method: option for option in orders.payment_options(session, order, TODAY)}
        assert options["card"].available and options["paypal"].available
        assert options["card"].switches_auto_renew_on and not options["bank_transfer"].switches_auto_renew_on
        assert options["bank_transfer"].available  # Tuesday 2 March
        assert options["bank_transfer"].registered_by == date(2027, 3, 2)
        assert not options["postal_slip"].available
        assert options["postal_slip"].reason == (
            "Questa modalità di pagamento non è più disponibile: il pagamento verrebbe registrato dopo la "
            "cancellazione della casella (3 marzo 2027). Scelga carta di credito, PayPal o bonifico bancario."
        )  # the bank transfer is still offered: the message names it
        with pytest.raises(OrderValidationError) as error:
            orders.choose_payment(session, order, "postal_slip", 1, TODAY)
        assert list(error.value.errors) == ["method"]
        # The next day a bank transfer is too late as well.
        tuesday = date(2027, 3, 2)
        assert [o.method for o in orders.payment_options(session, order, tuesday) if o.available] == ["card", "paypal"]
        with pytest.raises(OrderValidationError):
            orders.choose_payment(session, order, "bank_transfer", 1, tuesday)
        orders.choose_payment(session, order, "card", 1, tuesday)
        assert order.payment_method == "card"


def test_years_and_promo(session_factory):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, plan="pro")
        mailbox.promo = True
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_payment(session, order, "card", 1, TODAY)
        assert error.value.errors == {"order": "Confermi prima le caselle PEC da rinnovare."}
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "pro")], TODAY)
        with pytest.raises(OrderValidationError) as error:
            orders.choose_payment(session, order, "card", 3, TODAY)
        assert error.value.errors == {"years": "Per i prodotti in promozione la frequenza di rinnovo è di 1 o 2 anni."}
        with pytest.raises(OrderValidationError) as error:
            orders.choose_payment(session, order, "cash", 0, TODAY)
        assert set(error.value.errors) == {"method", "years"}
        assert error.value.errors["years"] == "Scelga una frequenza di rinnovo da 1 a 2 anni."
        orders.choose_payment(session, order, "bank_transfer", 2, TODAY)
        assert (order.years, order.subtotal_cents, order.vat_cents, order.total_cents) == (2, 5000, 1100, 6100)
        summary = orders.order_summary(order)
        assert [line.amount_cents for line in summary.lines] == [5000]
        assert order.lines[0].price_cents == 5000


# -- Steps 4 and 5 -------------------------------------------------------------------------------------


def test_confirm_needs_every_step(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        with pytest.raises(OrderValidationError) as error:
            orders.confirm_order(session, order, now=NOW, today=TODAY, settings=settings)
        assert error.value.errors == {"order": "Confermi prima le caselle PEC da rinnovare."}
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard")], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        with pytest.raises(OrderValidationError) as error:
            orders.accept_terms(session, order, NOW, accepted=False)
        assert error.value.errors == {
            "terms": "Per completare l'ordine deve leggere e accettare le condizioni contrattuali."
        }
        with pytest.raises(OrderValidationError) as error:
            orders.confirm_order(session, order, now=NOW, today=TODAY, settings=settings)
        assert list(error.value.errors) == ["terms"]
        assert order.status == "draft" and count(session, OutboxMessage) == 0


def test_confirm_is_idempotent_and_queues_the_confirmation_email(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, plan="pro", holder_name="Anna Verdi")
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "pro", extra_archive_gb=2)], TODAY)
        orders.set_holder(session, order, COMPANY)
        orders.choose_payment(session, order, "bank_transfer", 3, TODAY)
        orders.accept_terms(session, order, NOW)
        assert orders.next_step(order) == "confirm"
        orders.confirm_order(session, order, now=NOW, today=TODAY, settings=settings)
        session.commit()
        assert order.status == "awaiting_payment"
        assert order.order_number == f"PEC-2027-{order.id:06d}"
        assert order.confirmed_at == NOW
        assert orders.next_step(order) == "pay"
        # (2500 + 2 x 100) x 3 = 8100 + 22% = 9882
        assert order.total_cents == 9882
    with session_factory() as session:
        again = orders.find_order(session, order.public_id)
        orders.confirm_order(session, again, now=NOW, today=TODAY, settings=settings)
        session.commit()
        assert again.order_number == order.order_number
        rows = session.scalars(select(OutboxMessage)).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.kind, row.to_address, row.language) == (
            "order-confirmation",
            "amministrazione@rossi.example.it",
            "it",
        )
        with pytest.raises(OrderNotOpen):
            orders.choose_payment(session, again, "card", 1, TODAY)

        message, text, html = parse(render_outbox(settings, row))
        assert (
            message["Subject"] == f"Conferma ordine {order.order_number}: rinnovo della casella PEC {mailbox.address}"
        )
        assert message["To"] == "amministrazione@rossi.example.it"
        assert message["X-PEC-Renewal-Kind"] == "order-confirmation"
        for part in (text, html):
            assert "IT60X0542811101000000123456" in part
            assert "Provider PEC S.p.A." in part
            assert "98,82\u00a0€" in part.replace("&nbsp;", "\u00a0")  # never wraps
            assert part.count(order.order_number) >= 2
            assert "30 aprile 2030" in part  # the new expiry once paid
        assert "Causale: PEC-2027-" in text
        assert "Spett.le Rossi S.r.l.," in text and "Gentile" not in text  # a company


def test_confirmation_email_for_card_links_to_the_order_from_any_device_in_english(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, language="en")
        order = complete_order(session, settings, mailbox, method="card", years=2)
        session.commit()
        row = session.scalar(select(OutboxMessage))
        assert "/rinnova/" not in json.dumps(row.context)  # no token is stored
        message, text, html = parse(render_outbox(settings, row))
        assert message["Subject"].startswith(f"Order confirmation {order.order_number}")
        # The signed link the order was started from: it resumes the order in any browser.
        (url,) = {line.strip() for line in text.splitlines() if "/rinnova/" in line}
        assert f'href="{url}"' in html
        signer = LinkSigner(settings.secret_keys, settings.base_url, settings.link_max_age_days)
        link = signer.read_renewal_token(url.rsplit("/", 1)[1])
        assert (link.target, link.target_id, link.expires_on) == ("m", mailbox.id, EXPIRES)
        assert f"/ordine/{order.public_id}" not in text
        assert "switches auto-renew" in text
        assert "IT60X" not in text
        assert "€12.20" in text  # 2 x 5.00 + 22%


def test_confirmation_email_for_postal_slip(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        order = complete_order(session, settings, mailbox, method="postal_slip")
        row = session.scalar(select(OutboxMessage))
        _message, text, _html = parse(render_outbox(settings, row))
        assert "bollettino postale" in text and "Conto corrente postale n." in text
        assert f"Causale: {order.order_number}" in text
        assert "6,10\u00a0€" in text


def test_confirm_refuses_a_mailbox_renewed_meanwhile(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES)
        order = orders.start_order(session, link_for(mailbox), TODAY, NOW)
        orders.choose_mailboxes(session, order, [MailboxChoice(mailbox.id, "standard")], TODAY)
        orders.set_holder(session, order, orders.holder_form_data(order))
        orders.choose_payment(session, order, "card", 1, TODAY)
        orders.accept_terms(session, order, NOW)
        mailbox.expires_on = date(2028, 4, 30)
        with pytest.raises(OrderValidationError) as error:
            orders.confirm_order(session, order, now=NOW, today=TODAY, settings=settings)
        assert error.value.errors == {
            f"plan-{mailbox.id}": (
                f"La casella PEC {mailbox.address} è stata rinnovata o modificata dopo l'inizio dell'ordine."
            )
        }


# -- The unpaid order of a failed auto-renew charge ----------------------------------------------------


def test_unpaid_renewal_order_is_payable_by_any_method(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, auto_renew=True, payment_method="pm_card_chargeDeclined")
        assert orders.describe_link(session, link_for(mailbox), TODAY).state == LinkState.AUTO_RENEW
        order = orders.create_unpaid_renewal_order(session, mailbox, 1, NOW, TODAY)
        session.commit()
        assert order.status == "awaiting_payment"
        assert order.order_number == f"PEC-2027-{order.id:06d}"
        assert order.total_cents == 610
        assert orders.next_step(order) == "payment"
        assert orders.create_unpaid_renewal_order(session, mailbox, 1, NOW, TODAY).id == order.id
        view = orders.describe_link(session, link_for(mailbox), TODAY)
        assert (view.state, view.order_public_id) == (LinkState.RENEWABLE, order.public_id)
        assert orders.start_order(session, link_for(mailbox), TODAY, NOW).id == order.id
        orders.choose_payment(session, order, "bank_transfer", 1, TODAY)
        assert order.payment_method == "bank_transfer"
        assert orders.next_step(order) == "pay"
        assert count(session, OutboxMessage) == 0


def test_order_emails_escape_the_holder_name(session_factory, settings):
    with session_factory() as session:
        mailbox = make_mailbox(session, expires_on=EXPIRES, holder_name="<script>alert(1)</script>")
        complete_order(session, settings, mailbox)
        row = session.scalar(select(OutboxMessage))
        _message, text, html = parse(render_outbox(settings, row))
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert "Gentile <script>alert(1)</script>," in text


def test_order_email_context_is_checked(settings):
    renderer = renderer_for(settings)
    mailbox = {"id": 1, "address": "a@pec.example.it", "expires_on": "2027-04-30", "plan": "standard", "domain": None}
    context = {
        "holder_name": "Mario",
        "mailboxes": [{**mailbox, "new_expires_on": "2028-04-30"}],
        "order": {
            "number": "PEC-2027-000001\r\nBcc: x@evil.example",
            "years": 1,
            "method": "card",
            "subtotal_cents": 500,
            "vat_percent": 22,
            "vat_cents": 110,
            "total_cents": 610,
            "lines": [],
        },
        "payment": {
            "iban": "IT60X0542811101000000123456",
            "beneficiary": "B",
            "postal_account": "1",
            "checkout_url": "https://x.example/ordine/a/pagamento",
        },
    }
    with pytest.raises(ValueError, match="order number"):
        renderer.render(
            kind="order-confirmation",
            stage="0d",
            language="it",
            to_address="m@example.it",
            message_id="abc@pec-provider.example",
            context=context,
            now=NOW,
        )
