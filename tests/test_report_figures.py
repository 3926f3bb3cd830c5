"""``pec-renewal report`` agrees with ``run-daily --dry-run`` and with what the job then does, and reads at 80 columns."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.settings import make_settings
from worker.cli.main import main
from worker.services.daily import run_day
from worker.services.demo import build_fleet
from worker.services.report import CHARGE, build_report
from worker.services.runtime import Runtime

START = date(2027, 1, 15)
FORECAST_DAYS = 7


class Clock:
    def __init__(self, day: date):
        self.day = day

    def __call__(self) -> datetime:
        return datetime.combine(self.day, time(6, 0), tzinfo=UTC)


def dry_run_figures(rt: Runtime, day: date) -> dict[str, int]:
    """What ``run-daily --dry-run`` lists for ``day``, in the report's terms: mailboxes by step."""
    summary = run_day(rt, day, dry_run=True)
    figures = Counter()
    for (kind, _stage), mailboxes in summary.scan.notices.items():
        figures[kind] += mailboxes
    figures[CHARGE] += len(summary.scan.charges_due)
    return dict(+figures)


def test_report_and_dry_run_agree_every_day_of_a_year_on_the_demo_fleet(tmp_path, database_url, session_factory):
    clock = Clock(START)
    rt = Runtime(make_settings(tmp_path, database_url=database_url), clock=clock)
    rt.session_factory = session_factory
    settings = rt.settings
    try:
        imported = build_fleet(
            session_factory, tmp_path / "fleet.csv", count=300, today=START, stages=settings.notice_stages
        )
        assert imported.created == 300
        forecasts: dict[date, dict[date, dict[str, int]]] = {}
        observed: dict[date, dict[str, int]] = {}
        kinds_seen = set()
        for offset in range(366):
            day = START + timedelta(days=offset)
            clock.day = day
            with session_factory() as session:
                report = build_report(
                    session, start=day, days=FORECAST_DAYS, stages=settings.notice_stages, plan=rt.charge_plan
                )
            forecasts[day] = {when: dict(+counts) for when, counts in report.due.items()}
            observed[day] = dry_run_figures(rt, day)
            assert forecasts[day][day] == observed[day], f"report and run-daily --dry-run disagree on {day}"
            kinds_seen.update(observed[day])
            run_day(rt, day)
        # Every kind of step came up, so the comparison covered each of them.
        assert kinds_seen >= {"expiry-notice", "expired-notice", "domain-expiry-notice", "charge-notice", CHARGE}
        # The days after the first: what the forecast said is what the job then found due
        # (the demo's cards are charged successfully and nothing is renewed by hand).
        for day, forecast in forecasts.items():
            for when, figures in forecast.items():
                if when in observed:
                    assert figures == observed[when], (
                        f"the report of {day} forecast {figures} for {when}, not {observed[when]}"
                    )
    finally:
        rt.close()


# -- The CLI on the embedded default -----------------------------------------------------------------------

AUTO_RENEW_HEADER = [
    "address",
    "account",
    "holder_name",
    "holder_kind",
    "reference_email",
    "plan",
    "expires_on",
    "auto_renew",
    "payment_method",
    "card_expiry",
    "domain",
    "domain_expires_on",
]


def write_auto_renew_fleet(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=AUTO_RENEW_HEADER)
        writer.writeheader()
        for number, row in enumerate(rows):
            writer.writerow(
                {
                    "address": f"casella{number}@pec.provider.example.it",
                    "account": f"cliente{number}@example.it",
                    "holder_name": f"Titolare {number}",
                    "holder_kind": "private",
                    "reference_email": f"titolare{number}@example.it",
                    "plan": "standard",
                    "auto_renew": "true",
                    "payment_method": "pm_card_visa",
                    **row,
                }
            )
    return path


@pytest.fixture
def embedded_env(tmp_path):
    return {"PEC_RENEWAL_VAR_DIR": str(tmp_path / "var")}


def invoke(env, *args):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_card_expiring_is_counted_only_for_cards_that_expire_before_the_charge(tmp_path, embedded_env):
    # Four auto-renew mailboxes expiring on 2027-06-30: the scan looks at them first three
    # months before (2027-03-30).  Only the card that expires in May needs a card notice.
    rows = [
        {"expires_on": "2027-06-30", "card_expiry": "2029-06"},
        {"expires_on": "2027-06-30", "card_expiry": "2028-01"},
        {"expires_on": "2027-06-30", "card_expiry": ""},
        {"expires_on": "2027-06-30", "card_expiry": "2027-05"},
    ]
    result = invoke(embedded_env, "import", "mailboxes", str(write_auto_renew_fleet(tmp_path / "fleet.csv", rows)))
    assert result.exit_code == 0, result.output
    report = json.loads(invoke(embedded_env, "report", "--date", "2027-03-30", "--days", "3", "--json").output)
    assert report["due"]["2027-03-30"] == {"card-expiring": 1}
    dry = json.loads(invoke(embedded_env, "run-daily", "--date", "2027-03-30", "--dry-run", "--json").output)
    assert dry["notices"] == {"card-expiring -3m": 1}


def test_the_report_shows_whole_dates_at_80_columns(tmp_path, embedded_env):
    # Every kind of step in the week from 2027-03-30, so the table has all its columns.
    manual = {"auto_renew": "false", "payment_method": ""}
    rows = [
        {"expires_on": "2027-06-30", "card_expiry": "2027-05"},  # card-expiring on 03-30
        {"expires_on": "2027-04-30", "card_expiry": "2029-01"},  # charge-notice on 03-31
        {"expires_on": "2027-04-06", "card_expiry": "2029-01"},  # charge-notice on 03-30, the charge on 03-31
        {"expires_on": "2027-04-06", **manual},  # expiry-notice -7d on 03-30
        {"expires_on": "2027-03-29", **manual},  # expired-notice +1d on 03-30
        {
            "address": "info@pec.rossi-srl.it",
            "expires_on": "",
            "domain": "rossi-srl.it",
            "domain_expires_on": "2027-04-06",
            **manual,
        },
    ]
    result = invoke(embedded_env, "import", "mailboxes", str(write_auto_renew_fleet(tmp_path / "fleet.csv", rows)))
    assert result.exit_code == 0, result.output
    result = invoke({**embedded_env, "COLUMNS": "80"}, "report", "--date", "2027-03-30", "--days", "7")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80, result.output
    for offset in range(7):
        day = (date(2027, 3, 30) + timedelta(days=offset)).isoformat()
        assert day in result.output, f"{day} is not shown whole:\n{result.output}"
    assert "…" not in result.output
    # Every step has its column, its name wrapped at the hyphens.
    for word in ("card", "expiring", "charge", "domain", "expired", "expiry", "notice", "total"):
        assert word in result.output, result.output
