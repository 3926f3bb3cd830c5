"""payment-refunded in its two shapes: an order's payment given back, and an auto-renew charge of a
mailbox renewed meanwhile (no order: the mailbox and its charge)."""

from __future__ import annotations

import html as html_module
import re

import pytest

from tests.support.email_samples import RENDERED_AT, SAMPLES
from worker.mail.emails import EmailRenderer
from worker.rules.links import LinkSigner


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    signer = LinkSigner(["k" * 40], "https://rinnovi.example-pec.it", max_age_days=200)
    return EmailRenderer(mail_from="Rinnovi PEC <rinnovi@example-pec.it>", signer=signer)


def render(renderer, name: str, language: str, **refund):
    sample = next(sample for sample in SAMPLES if sample.name == name)
    context = {**sample.context, "refund": {**sample.context["refund"], **refund}}
    return renderer.render(
        kind=sample.kind,
        stage=sample.stage,
        language=language,
        to_address="ufficio@example.it",
        message_id="0123456789abcdef0123456789abcdef@example-pec.it",
        context=context,
        now=RENDERED_AT,
    )


def texts(email) -> tuple[str, str]:
    return email.text, html_module.unescape(re.sub(r"<[^>]+>", "", email.html))


ADDRESS = "segreteria.studio.legale@pec.avvocati-colombo-associati.it"


@pytest.mark.parametrize(
    ("language", "subject", "sentence", "reason"),
    [
        (
            "it",
            f"Rimborso di 51,24 € per il rinnovo automatico di {ADDRESS}",
            "rimborso dell'addebito di 51,24 € effettuato con PayPal per il rinnovo automatico della casella PEC",
            "la casella risultava già rinnovata con un altro",
        ),
        (
            "en",
            f"Refund of €51.24 for the auto-renewal of {ADDRESS}",
            "refunded the charge of €51.24 made with PayPal for the auto-renewal of the PEC mailbox",
            "the mailbox had already been renewed by another",
        ),
    ],
)
def test_an_auto_renew_charge_given_back_names_the_mailbox_not_an_order(renderer, language, subject, sentence, reason):
    email = render(renderer, "payment-refunded-charge", language)
    assert email.subject == subject
    for body in texts(email):
        flat = " ".join(body.split())
        assert sentence in flat and reason in flat
        assert ADDRESS in flat
        assert "ordine" not in flat.lower().replace("ordinari", "") and "order " not in flat


def test_an_order_s_refund_still_names_the_order(renderer):
    email = render(renderer, "payment-refunded", "it")
    assert email.subject.startswith("Rimborso di ") and "per l'ordine PEC-" in email.subject
    text, _html = texts(email)
    assert "Il pagamento è arrivato quando l'ordine risultava già pagato" in " ".join(text.split())
    assert "rinnovo automatico della casella" not in text


def test_a_charge_s_refund_is_automatic_and_about_one_mailbox(renderer):
    with pytest.raises(ValueError, match="automatically, about one mailbox"):
        render(renderer, "payment-refunded-charge", "it", kind="requested")
