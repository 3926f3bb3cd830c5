"""The domain's words, defined once: every module that names a plan, a holder kind, a language or a
payment method takes it from ``worker.rules.vocabulary``.  Pure rules: no database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import catalogue
from worker.rules import holder_data, import_values, vocabulary
from worker.store import models


def test_the_catalogue_prices_and_limits_exactly_the_vocabularys_plans():
    for table in (
        catalogue.PLAN_PRICES_CENTS,
        catalogue.PLAN_MAILBOX_GB,
        catalogue.PLAN_ARCHIVE_GB,
        catalogue.PLAN_MAX_EXTRA_SPACE_GB,
        catalogue.PLAN_MAX_EXTRA_ARCHIVE_GB,
    ):
        assert tuple(table) == vocabulary.PLANS
    assert catalogue.PLANS == vocabulary.PLANS


def test_every_word_has_a_label_in_every_language():
    assert set(vocabulary.PLAN_LABELS) == set(vocabulary.PLANS)
    for language in vocabulary.LANGUAGES:
        assert tuple(vocabulary.HOLDER_KIND_LABELS[language]) == vocabulary.HOLDER_KINDS
        assert tuple(vocabulary.METHOD_LABELS[language]) == vocabulary.PAYMENT_METHODS
    assert vocabulary.DEFAULT_LANGUAGE in vocabulary.LANGUAGES
    assert set(vocabulary.GATEWAY_METHODS) < set(vocabulary.PAYMENT_METHODS)
    assert set(vocabulary.BUSINESS_KINDS) | {vocabulary.PRIVATE, vocabulary.PUBLIC_ADMINISTRATION} == set(
        vocabulary.HOLDER_KINDS
    )


def test_a_label_falls_back_to_the_default_language_then_to_the_word_itself():
    assert vocabulary.label(vocabulary.HOLDER_KIND_LABELS, "company", "en") == "Company"
    assert vocabulary.label(vocabulary.HOLDER_KIND_LABELS, "company", "fr") == "Azienda"
    assert vocabulary.label(vocabulary.METHOD_LABELS, "cash", "it") == "cash"


def test_the_tables_the_rules_and_the_emails_use_the_same_words():
    assert models.Plan is vocabulary.Plan and models.HolderKind is vocabulary.HolderKind
    assert holder_data.HOLDER_KINDS is vocabulary.HOLDER_KINDS
    assert import_values.PLANS is vocabulary.PLANS and import_values.LANGUAGES is vocabulary.LANGUAGES


@pytest.mark.parametrize(
    "cents, italian, english",
    [
        (0, "0,00\u00a0€", "€0.00"),
        (5, "0,05\u00a0€", "€0.05"),
        (4880, "48,80\u00a0€", "€48.80"),
        (123456, "1.234,56\u00a0€", "€1,234.56"),
        (123456789, "1.234.567,89\u00a0€", "€1,234,567.89"),
        (-4880, "-48,80\u00a0€", "-€48.80"),
    ],
)
def test_euro_amounts_as_holders_read_them(cents, italian, english):
    assert vocabulary.format_euro(cents, "it") == italian
    assert vocabulary.format_euro(cents) == italian
    assert vocabulary.format_euro(cents, "en") == english


@given(st.integers(min_value=0, max_value=10**12))
def test_an_amount_reads_back_to_its_cents(cents):
    italian = vocabulary.format_euro(cents, "it").removesuffix("\u00a0€").replace(".", "").replace(",", "")
    english = vocabulary.format_euro(cents, "en").removeprefix("€").replace(",", "").replace(".", "")
    assert int(italian) == int(english) == cents
