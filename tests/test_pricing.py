"""The pure order rules: plan limits, used space, prices and VAT, years, working days."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import catalogue
from worker.rules import pricing
from worker.rules.pricing import LineInput, check_mailbox_choice


def choice(**overrides):
    values = dict(
        address="a@pec.example.it",
        current_plan="standard",
        used_space_mb=100,
        on_domain=False,
        deleted=False,
        auto_renew=False,
        plan="standard",
        extra_space_gb=0,
        extra_archive_gb=0,
        confirm_archive_deletion=False,
    )
    values.update(overrides)
    return [(problem.field, problem.key) for problem in check_mailbox_choice(**values)]


# -- Plans and space ---------------------------------------------------------------------------------


def test_a_plain_renewal_is_good():
    assert choice() == []
    assert choice(current_plan="pro", plan="pro", extra_archive_gb=5, extra_space_gb=3) == []


def test_unknown_plan():
    assert choice(plan="gold") == [("plan", "plan_unknown")]
    assert choice(plan=None) == [("plan", "plan_unknown")]


def test_standard_extra_space_at_most_one_gb():
    assert choice(extra_space_gb=1) == []
    assert choice(extra_space_gb=2) == [("extra_space_gb", "extra_space_standard_max")]


def test_pro_extra_space_limit_from_the_catalogue():
    limit = catalogue.PLAN_MAX_EXTRA_SPACE_GB["pro"]
    assert choice(current_plan="pro", plan="pro", extra_space_gb=limit) == []
    assert choice(current_plan="pro", plan="pro", extra_space_gb=limit + 1) == [("extra_space_gb", "extra_space_max")]


def test_extra_archive_only_on_pro_and_premium():
    assert choice(extra_archive_gb=1) == [("extra_archive_gb", "archive_standard")]
    assert choice(current_plan="pro", plan="premium", extra_archive_gb=1) == []
    limit = catalogue.PLAN_MAX_EXTRA_ARCHIVE_GB["premium"]
    assert choice(current_plan="premium", plan="premium", extra_archive_gb=limit + 1) == [
        ("extra_archive_gb", "extra_archive_max")
    ]


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, None])
def test_extras_must_be_whole_numbers(bad):
    assert choice(extra_space_gb=bad) == [("extra_space_gb", "not_whole")]
    assert ("extra_archive_gb", "not_whole") in choice(current_plan="pro", plan="pro", extra_archive_gb=bad)


def test_used_space_above_1_gb_on_standard_needs_the_extra_gb():
    assert choice(used_space_mb=1024) == []
    assert choice(used_space_mb=1025) == [("extra_space_gb", "space_needed_one")]
    assert choice(used_space_mb=1025, extra_space_gb=1) == []
    assert choice(used_space_mb=2048, extra_space_gb=1) == []


def test_used_space_above_2_gb_on_standard_must_be_freed_first():
    assert choice(used_space_mb=2049, extra_space_gb=1) == [("plan", "free_space")]
    assert choice(used_space_mb=2049) == [("plan", "free_space")]
    # A larger plan holds it.
    assert choice(used_space_mb=2049, plan="pro", extra_space_gb=1) == []


def test_used_space_on_pro_needs_extra_gb_above_2_gb():
    assert choice(current_plan="pro", plan="pro", used_space_mb=2048) == []
    assert choice(current_plan="pro", plan="pro", used_space_mb=3500) == [("extra_space_gb", "space_needed")]
    assert choice(current_plan="pro", plan="pro", used_space_mb=3500, extra_space_gb=2) == []
    problems = check_mailbox_choice(
        address="a@pec.example.it",
        current_plan="pro",
        used_space_mb=3500,
        on_domain=False,
        deleted=False,
        auto_renew=False,
        plan="pro",
        extra_space_gb=1,
        extra_archive_gb=0,
        confirm_archive_deletion=False,
    )
    assert problems[0].values["needed"] == 2
    assert "almeno 2 GB" in problems[0].message("it")
    assert "at least 2 GB" in problems[0].message("en")


def test_downgrade_to_standard_needs_confirmation_of_the_archive_deletion():
    assert choice(current_plan="pro", plan="standard") == [("confirm_archive_deletion", "archive_deletion")]
    assert choice(current_plan="premium", plan="standard") == [("confirm_archive_deletion", "archive_deletion")]
    assert choice(current_plan="pro", plan="standard", confirm_archive_deletion=True) == []
    # Pro to Premium and Standard to Pro keep (or create) an archive: nothing to confirm.
    assert choice(current_plan="pro", plan="premium") == []
    assert choice(current_plan="standard", plan="pro") == []
    assert pricing.is_downgrade_to_standard("premium", "standard")
    assert not pricing.is_downgrade_to_standard("premium", "pro")


def test_mailbox_on_a_domain_cannot_be_ordered():
    assert choice(on_domain=True) == [("plan", "on_domain")]
    assert choice(on_domain=True, plan="pro") == [("plan", "on_domain")]


def test_deleted_mailbox_cannot_be_ordered():
    assert choice(deleted=True) == [("plan", "deleted")]


def test_auto_renew_only_with_a_plan_change():
    assert choice(auto_renew=True) == [("plan", "auto_renew_plan_change")]
    assert choice(auto_renew=True, plan="pro") == []
    # The unpaid order of a failed auto-renew charge is payable as it is.
    assert choice(auto_renew=True, auto_renew_exempt=True) == []


def test_messages_in_italian_and_english():
    problem = check_mailbox_choice(
        address="x@pec.example.it",
        current_plan="pro",
        used_space_mb=0,
        on_domain=False,
        deleted=False,
        auto_renew=False,
        plan="standard",
        extra_space_gb=0,
        extra_archive_gb=0,
        confirm_archive_deletion=False,
    )[0]
    assert problem.message("it") == (
        "Passando alla tipologia Standard l'archivio della casella x@pec.example.it verrà cancellato. "
        "Confermi di voler procedere."
    )
    assert problem.message("en") == (
        "Moving to the Standard plan deletes the archive of x@pec.example.it. Confirm that you want to go ahead."
    )


# -- Years -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("years", [1, 2, 3, 4, 5])
def test_one_to_five_years(years):
    assert pricing.check_years(years, any_promo=False) is None


@pytest.mark.parametrize("years", [0, 6, -1, "2", 2.0, None, True])
def test_years_out_of_range(years):
    assert pricing.check_years(years, any_promo=False).key == "years_range"


def test_promo_one_or_two_years():
    assert pricing.check_years(2, any_promo=True) is None
    assert pricing.check_years(3, any_promo=True).key == "years_promo"
    assert pricing.check_years(0, any_promo=True).values == {"max": 2}


# -- Prices ------------------------------------------------------------------------------------------


def test_price_line_by_line_with_vat():
    summary = pricing.price_order(
        [
            LineInput("a@pec.example.it", "pro", extra_space_gb=2, extra_archive_gb=3),
            LineInput("b@pec.example.it", "standard"),
        ],
        years=2,
    )
    assert [(line.address, line.item, line.quantity, line.amount_cents) for line in summary.lines] == [
        ("a@pec.example.it", "plan", 1, 2 * 2500),
        ("a@pec.example.it", "extra_space", 2, 2 * 2 * 200),
        ("a@pec.example.it", "extra_archive", 3, 2 * 3 * 100),
        ("b@pec.example.it", "plan", 1, 2 * 500),
    ]
    assert summary.subtotal_cents == 5000 + 800 + 600 + 1000
    assert summary.vat_percent == 22
    assert summary.vat_cents == 1628  # 7400 x 22% = 1628
    assert summary.total_cents == 9028
    assert summary.lines[0].label("it") == "Casella PEC Pro – a@pec.example.it – 2 anni"
    assert summary.lines[1].label("en") == "Extra mailbox space, 2 GB – a@pec.example.it – 2 years"


def test_vat_rounds_half_up_to_the_cent():
    assert pricing.vat_cents(2) == 0  # 0.44 cents
    assert pricing.vat_cents(3) == 1  # 0.66
    assert pricing.vat_cents(25) == 6  # 5.5 -> 6
    assert pricing.vat_cents(500) == 110


@given(
    st.lists(
        st.tuples(st.sampled_from(["standard", "pro", "premium"]), st.integers(0, 50), st.integers(0, 100)),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 5),
)
def test_total_is_the_sum_of_the_lines_plus_vat(items, years):
    lines = [
        LineInput(f"m{i}@pec.example.it", plan, space, archive if plan != "standard" else 0)
        for i, (plan, space, archive) in enumerate(items)
    ]
    summary = pricing.price_order(lines, years)
    assert summary.subtotal_cents == sum(line.amount_cents for line in summary.lines)
    assert summary.total_cents == summary.subtotal_cents + summary.vat_cents
    assert abs(summary.vat_cents * 100 - summary.subtotal_cents * 22) <= 50
    # Linear in the years.
    assert summary.subtotal_cents == years * pricing.price_order(lines, 1).subtotal_cents


def test_amounts_for_operators():
    assert pricing.format_amount(4880) == "48.80"
    assert pricing.format_amount(5) == "0.05"


# -- Working days ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "year, easter",
    [
        (2024, date(2024, 3, 31)),
        (2025, date(2025, 4, 20)),
        (2026, date(2026, 4, 5)),
        (2027, date(2027, 3, 28)),
        (2038, date(2038, 4, 25)),
    ],
)
def test_easter(year, easter):
    assert pricing.easter_sunday(year) == easter


def test_italian_holidays_are_not_working_days():
    for day in (
        date(2027, 1, 1),
        date(2027, 1, 6),
        date(2027, 3, 29),  # Easter Monday 2027
        date(2027, 4, 26) - timedelta(days=1),  # 25 April 2027 is a Sunday anyway
        date(2027, 6, 2),
        date(2027, 11, 1),
        date(2027, 12, 8),
        date(2026, 12, 25),
        date(2028, 12, 26),
        date(2026, 10, 5) - timedelta(days=1),  # 4 October (a Sunday in 2026)
        date(2027, 10, 4),  # St Francis, a Monday in 2027
    ):
        assert not pricing.is_working_day(day), day
    assert pricing.is_working_day(date(2027, 3, 30))
    assert not pricing.is_working_day(date(2027, 3, 27))  # Saturday
    assert pricing.is_working_day(date(2025, 10, 3))


def test_add_working_days():
    # Friday 26 March 2027 + 1 working day: Monday 29 is Easter Monday, so Tuesday 30.
    assert pricing.add_working_days(date(2027, 3, 26), 1) == date(2027, 3, 30)
    # Thursday 23 December 2027 + 7: skips 25-26 (weekend anyway) and 1 January 2028... and 6 January.
    assert pricing.add_working_days(date(2027, 12, 23), 7) == date(2028, 1, 3)
    assert pricing.add_working_days(date(2027, 12, 23), 9) == date(2028, 1, 5)
    assert pricing.add_working_days(date(2027, 12, 23), 10) == date(2028, 1, 7)  # Thursday 6 January skipped
    assert pricing.add_working_days(date(2027, 3, 26), 0) == date(2027, 3, 26)


@given(st.dates(min_value=date(2024, 1, 1), max_value=date(2032, 12, 31)), st.integers(0, 10))
def test_working_days_property(start, count):
    end = pricing.add_working_days(start, count)
    between = [start + timedelta(days=offset) for offset in range(1, (end - start).days + 1)]
    assert sum(pricing.is_working_day(day) for day in between) == count
    if count:
        assert pricing.is_working_day(end)
    assert (end - start).days <= count * 2 + 6  # never more than a long holiday weekend per step


def test_registration_delays_by_method():
    friday = date(2027, 3, 26)
    assert pricing.registered_by("card", friday) == friday
    assert pricing.registered_by("paypal", friday) == friday
    assert pricing.registered_by("bank_transfer", friday) == date(2027, 3, 30)
    assert pricing.registered_by("postal_slip", friday) == date(2027, 4, 7)


def test_method_in_time_before_deletion():
    deletion_on = date(2027, 4, 1)
    friday = date(2027, 3, 26)
    assert pricing.method_in_time("bank_transfer", friday, deletion_on)  # 30 March < 1 April
    assert not pricing.method_in_time("postal_slip", friday, deletion_on)  # 7 April
    assert pricing.method_in_time("card", date(2027, 3, 31), deletion_on)
    assert not pricing.method_in_time("bank_transfer", date(2027, 3, 31), deletion_on)  # 1 April: deleted


def test_one_gb_takes_the_singular_verb():
    problems = check_mailbox_choice(
        address="a@pec.example.it", current_plan="standard", used_space_mb=1500, on_domain=False, deleted=False,
        auto_renew=False, plan="standard", extra_space_gb=0, extra_archive_gb=0, confirm_archive_deletion=False,
    )  # fmt: skip
    italian = problems[0].message("it")
    assert "serve almeno 1 GB" in italian and "servono" not in italian
    assert "needs at least 1 GB" in problems[0].message("en")
