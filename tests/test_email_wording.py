"""What the emails say: the greeting by kind of holder, "scade domani" the day before, one colon per
subject, amounts that never wrap, and one support instruction with the contract's documents linked."""

from __future__ import annotations

import html as html_module
import re

import pytest

from tests.support.email_samples import RENDERED_AT, SAMPLES, Sample
from worker.mail.emails import EmailRenderer
from worker.mail.kinds import KINDS
from worker.rules.links import LinkSigner
from worker.rules.vocabulary import LANGUAGES

TERMS = "https://www.example-pec.it/contratto?versione=3"
MANUAL = "https://www.example-pec.it/manuale.pdf"
SUPPORT = "https://www.example-pec.it/supporto"


@pytest.fixture(scope="module")
def renderer() -> EmailRenderer:
    signer = LinkSigner(["k" * 40], "https://rinnovi.example-pec.it", max_age_days=200)
    return EmailRenderer(
        mail_from="Rinnovi PEC <rinnovi@example-pec.it>",
        signer=signer,
        terms_url=TERMS,
        manual_url=MANUAL,
        support_url=SUPPORT,
    )


def render(renderer, sample: Sample, language: str, **context):
    return renderer.render(
        kind=sample.kind,
        stage=sample.stage,
        language=language,
        to_address="ufficio@example.it",
        message_id="0123456789abcdef0123456789abcdef@example-pec.it",
        context={**sample.context, **context},
        now=RENDERED_AT,
    )


def sample(name: str) -> Sample:
    return next(sample for sample in SAMPLES if sample.name == name)


@pytest.mark.parametrize("kind", ["company", "public_administration"])
def test_a_company_or_a_public_body_is_greeted_spettabile(renderer, kind):
    email = render(renderer, sample("expiry-grouped"), "it", holder_name="Comune di Esempio", holder_kind=kind)
    assert "Spett.le Comune di Esempio," in email.text and "Spett.le Comune di Esempio," in email.html
    assert "Gentile" not in email.text and "Gentile" not in email.html


@pytest.mark.parametrize("kind", ["private", "sole_proprietor", "professional", None])
def test_a_person_is_greeted_gentile(renderer, kind):
    email = render(renderer, sample("expiry-grouped"), "it", holder_name="Anna Neri", holder_kind=kind)
    assert "Gentile Anna Neri," in email.text and "Gentile Anna Neri," in email.html
    assert "Spett.le" not in email.text + email.html


@pytest.mark.parametrize(
    "language, subject, sentence",
    [
        ("it", "La casella PEC mario.rossi@pec.it scade domani", "scade domani, 7 dicembre 2026"),
        ("en", "Your PEC mailbox mario.rossi@pec.it expires tomorrow", "expires tomorrow, 7 December 2026"),
    ],
)
def test_the_day_before_expiry_says_tomorrow(renderer, language, subject, sentence):
    email = render(renderer, sample("expiry-tomorrow"), language)
    assert email.subject == subject
    assert sentence in email.text and sentence in email.html
    assert "il 7 dicembre 2026" not in email.subject


def test_grouped_and_domain_notices_say_tomorrow_too(renderer):
    grouped = render(renderer, sample("expiry-grouped"), "it")
    assert "domani" not in grouped.subject  # -1m: a date
    day_before = Sample("grouped-1d", "expiry-notice", "-1d", sample("expiry-grouped").context)
    assert render(renderer, day_before, "it").subject == "3 caselle PEC scadono domani"
    on_domain = Sample("domain-1d", "domain-expiry-notice", "-1d", sample("domain-grouped").context)
    assert "scadono domani" in render(renderer, on_domain, "it").html


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("chosen", SAMPLES, ids=lambda chosen: chosen.name)
def test_subjects_have_at_most_one_colon(renderer, chosen, language):
    subject = render(renderer, chosen, language).subject
    assert subject.count(":") <= 1, subject


def test_the_receipt_subject_reads_without_stacked_colons(renderer):
    subject = render(renderer, sample("charge-succeeded"), "it").subject
    expected = "Ricevuta: la casella PEC segreteria.studio.legale@pec.avvocati-colombo-associati.it è rinnovata"
    assert subject.startswith(expected + ", nuova scadenza 9 gennaio 2028")


@pytest.mark.parametrize("language", LANGUAGES)
def test_amounts_never_wrap(renderer, language):
    email = render(renderer, sample("order-postal-slip"), language)
    amount = "212,28\u00a0€" if language == "it" else "€212.28"
    assert amount in email.text and amount in html_module.unescape(email.html)
    assert not re.search(r"\d,\d\d €", email.text + html_module.unescape(email.html))  # an ordinary space


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_email_gives_one_support_instruction_and_links_the_contract(renderer, kind, language):
    email = render(renderer, next(sample for sample in SAMPLES if sample.kind == kind), language)
    for part in (email.text, html_module.unescape(email.html)):
        assert SUPPORT in part and TERMS in part and MANUAL in part
        assert ("non rispondere" if language == "it" else "do not reply") in part
        assert "risponda" not in part and "reply to the notice" not in part
