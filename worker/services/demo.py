"""``pec-renewal demo``: a sample fleet in its own SQLite database, run through today's job.

The demo writes only into a database it created itself: the embedded SQLite
file (``VAR_DIR/pec-renewal.sqlite3`` by default), created fresh and marked
in ``worker_state`` (:data:`DEMO_MARK`).  It refuses a server database, and an
existing file it did not create (or one that gained mailboxes the demo did not
import), so a second run can never overwrite renewals made in a real fleet.
Its own database it rebuilds from scratch, and says so.
"""

from __future__ import annotations

import csv
import mailbox as maildir_module
import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from email.header import decode_header, make_header
from pathlib import Path

import click
from sqlalchemy import create_engine, exists, func, inspect, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from stdnum import luhn
from stdnum.it import codicefiscale

from config.settings import Settings
from worker.rules import einvoice
from worker.rules.import_rows import KNOWN_COLUMNS
from worker.rules.schedule import Stage, add_months
from worker.services.daily import DaySummary, run_day
from worker.services.desk import failed_without_charge_attempt
from worker.services.importer import ImportReport, import_mailboxes
from worker.services.runtime import Runtime
from worker.store.db import make_engine
from worker.store.migrate import upgrade
from worker.store.models import Mailbox, WorkerState

#: The ``worker_state`` row that marks a database the demo created (its value: when).
DEMO_MARK = "demo_database"
#: The domains of the demo's mailboxes: ``…@pec.provider-demo.it`` and ``info@pec.<name>-demo.it``.
DEMO_ADDRESS_PATTERNS = ("%@pec.provider-demo.it", "%-demo.it")
#: Tables that hold no fleet data: a database with rows only in these is empty.
_BOOKKEEPING_TABLES = ("alembic_version", "worker_state")


class DemoRefused(click.ClickException):
    """The demo will not run here: one line, exit status 2, nothing written."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"pec-renewal: {self.message}", err=True)


FIRST_NAMES = ["Mario", "Giulia", "Luca", "Francesca", "Marco", "Chiara", "Alessandro", "Sara", "Davide", "Elena"]
LAST_NAMES = ["Rossi", "Bianchi", "Russo", "Ferrari", "Esposito", "Romano", "Colombo", "Ricci", "Marino", "Greco"]
COMPANIES = ["Edilizia Verdi", "Studio Neri", "Trasporti Galli", "Ottica Conti", "Panificio Bruno", "Farmacia Costa"]


def _vat(rng: random.Random) -> str:
    """A partita IVA that passes its checks: 7 digits, a provincial office code, a Luhn digit."""
    body = f"{rng.randrange(10**6, 10**7):07d}{rng.randrange(1, 101):03d}"
    return body + luhn.calc_check_digit(body)


def _personal_tax_code(rng: random.Random, first: str, last: str) -> str:
    """A codice fiscale of ``first last`` (its letters made from the name, as an invoice checks them)."""
    body = (
        einvoice.tax_code_letters(first, last)
        + f"{rng.randrange(40, 99):02d}"
        + rng.choice("ABCDEHLMPRST")
        + f"{rng.randrange(1, 28):02d}"
        + "H501"
    )
    return body + codicefiscale.calc_check_digit(body)


def sample_rows(count: int, today: date, seed: int = 2026) -> list[dict[str, str]]:
    """Varied mailboxes whose expiries put many of them on a stage today."""
    rng = random.Random(seed)
    offsets = [
        ("m", 3),
        ("m", 2),
        ("m", 1),
        ("d", 15),
        ("d", 7),
        ("d", 1),
        ("d", 0),
        ("d", -1),
        ("d", -30),
        ("d", -60),
        ("d", -83),
        ("d", -95),
        ("d", 40),
        ("d", 200),
    ]
    rows = []
    for number in range(count):
        unit, amount = offsets[number % len(offsets)]
        expires_on = add_months(today, amount) if unit == "m" else today + timedelta(days=amount)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        kind = rng.choice(["private", "private", "private", "company", "sole_proprietor", "professional"])
        # Every fifth holder has several mailboxes under one reference address.
        owner = number - number % 3 if number % 5 == 0 else number
        row = dict.fromkeys(KNOWN_COLUMNS, "")
        row.update(
            address=f"{first.lower()}.{last.lower()}{number}@pec.provider-demo.it",
            account=f"account{owner}@provider-demo.it",
            holder_name=f"{first} {last}" if kind == "private" else f"{rng.choice(COMPANIES)} S.r.l.",
            holder_kind=kind,
            reference_email=f"{first.lower()}.{last.lower()}{owner}@example.it",
            plan=rng.choice(["standard", "standard", "pro", "premium"]),
            expires_on=expires_on.isoformat(),
            language="en" if number % 7 == 0 else "it",
            used_space_mb=str(rng.randrange(0, 900)),
        )
        if kind == "private":
            row["tax_code"] = _personal_tax_code(rng, first, last)
        else:
            row["vat_number"] = _vat(rng)
            row["einvoice_code"] = rng.choice(["0000000", "M5UXCR1", f"fatture@pec.{last.lower()}-demo.it"])
        if row["plan"] != "standard" and rng.random() < 0.3:
            row["extra_archive_gb"] = str(rng.randrange(1, 4))
        if number % 11 == 0:  # a mailbox on a customer domain
            domain = f"{last.lower()}{number}-demo.it"
            row.update(
                address=f"info@pec.{domain}",
                expires_on="",
                domain=domain,
                domain_expires_on=expires_on.isoformat(),
            )
        elif number % 9 == 0:  # auto-renew with a stored card
            row.update(auto_renew="true", payment_method="pm_card_visa", card_expiry=f"{today.year + 2}-06")
        if number % 13 == 0 and not row["domain"]:
            row.update(promo="true", renewal_years="2")
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=KNOWN_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def build_fleet(
    session_factory: sessionmaker[Session], csv_path: Path, *, count: int, today: date, stages: tuple[Stage, ...]
) -> ImportReport:
    """The demo's fleet: ``count`` sample mailboxes written to ``csv_path`` and imported like any file."""
    write_csv(sample_rows(count, today), csv_path)
    return import_mailboxes(session_factory, csv_path, stages=stages)


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite URL; None for a server database or an in-memory one."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _read_only_engine(path: Path):
    return create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")


def inspect_existing(path: Path) -> tuple[str | None, bool, int]:
    """What an existing SQLite file holds, read without writing: (the demo's mark or None,
    whether any table other than the bookkeeping ones has a row, mailboxes the demo did not import).

    A file that is not a readable database counts as unmarked and holding data.
    """
    engine = _read_only_engine(path)
    try:
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            mark = None
            if "worker_state" in names:
                mark = connection.scalar(select(WorkerState.value).where(WorkerState.key == DEMO_MARK))
            holds_data = any(
                connection.scalar(select(exists().select_from(table(name))))
                for name in sorted(names - set(_BOOKKEEPING_TABLES))
            )
            foreign = 0
            if "mailboxes" in names:
                foreign = (
                    connection.scalar(
                        select(func.count())
                        .select_from(Mailbox)
                        .where(*(Mailbox.address.not_like(pattern) for pattern in DEMO_ADDRESS_PATTERNS))
                    )
                    or 0
                )
            return mark, holds_data, foreign
    except SQLAlchemyError:
        return None, True, 0
    finally:
        engine.dispose()


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        candidate = path.with_name(path.name + suffix)
        if candidate.exists():
            candidate.unlink()


def prepare_database(settings: Settings, now: datetime, echo: Callable[[str], None]) -> Path:
    """Create the demo's own database (rebuilding one it created before), or raise :class:`DemoRefused`."""
    path = sqlite_path(settings.database_url)
    if not settings.is_embedded:
        raise DemoRefused(
            "the demo builds its own SQLite database and never writes into a server database; "
            "unset PEC_RENEWAL_DATABASE_URL to run it on the embedded default"
        )
    if path is None:
        raise DemoRefused("the demo needs a SQLite file, not an in-memory database: unset PEC_RENEWAL_DATABASE_URL")
    default = settings.database_url == f"sqlite:///{settings.var_dir / 'pec-renewal.sqlite3'}"
    elsewhere = (
        "run it with a folder of its own, such as PEC_RENEWAL_VAR_DIR=./demo-var pec-renewal demo"
        if default
        else "point PEC_RENEWAL_DATABASE_URL at a file that does not exist yet"
    )
    if path.exists():
        mark, holds_data, foreign = inspect_existing(path)
        if mark is None and holds_data:
            raise DemoRefused(f"{path} is a database the demo did not create; it is left as it is: {elsewhere}")
        if foreign:
            raise DemoRefused(
                f"{path} holds {foreign} mailbox(es) the demo did not import; it is left as it is: {elsewhere}"
            )
        if mark is not None:
            echo(
                f"rebuilding the demo database {path} (created by the demo at {mark}):"
                " everything done in it since is discarded"
            )
        else:
            echo(f"building the demo database in the empty database {path}")
        _remove_sqlite_files(path)
    else:
        echo(f"building the demo database {path}")
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session, session.begin():
            session.merge(WorkerState(key=DEMO_MARK, value=now.isoformat(timespec="seconds")))
    finally:
        engine.dispose()
    return path


def run_demo(rt: Runtime, count: int, echo: Callable[[str], None]) -> None:
    settings = rt.settings
    prepare_database(settings, rt.clock(), echo)
    today = rt.today()
    csv_path = settings.var_dir / "demo" / "mailboxes.csv"
    report = build_fleet(rt.session_factory, csv_path, count=count, today=today, stages=settings.notice_stages)
    echo(f"imported {report.rows} sample mailboxes from {csv_path} ({report.created} new, {report.updated} updated)")
    maildir_before = _maildir_keys(settings.maildir) if settings.mail_backend == "maildir" else set()
    summary = run_day(rt, today)
    for line in summary_lines(summary, not_charged=_not_charged(rt, today)):
        echo(line)
    if settings.mail_backend != "maildir":
        return
    box = maildir_module.Maildir(settings.maildir, create=True)
    new_keys = set(box.keys()) - maildir_before
    if not new_keys:
        echo("nothing new was sent: today's notices had already gone out (run it tomorrow, or use run-daily --date)")
        return
    echo(f"{len(new_keys)} emails written to the Maildir {settings.maildir}; one of each kind and stage:")
    examples = {}
    for key in sorted(new_keys):
        message = box[key]
        examples.setdefault((message["X-PEC-Renewal-Kind"], message["X-PEC-Renewal-Stage"]), message)
    for (kind, stage), message in sorted(examples.items()):
        subject = " ".join(str(make_header(decode_header(message["Subject"]))).split())
        echo(f"  {kind:<22} {stage:>5}  to {message['To']}: {subject}")


def _not_charged(rt: Runtime, today: date) -> int:
    with rt.session_factory() as session:
        return failed_without_charge_attempt(session, today)


def summary_lines(summary: DaySummary, *, not_charged: int) -> list[str]:
    """The demo's account of the day: what was sent, by kind and stage (the lines add up to the
    total), and what the charge work did, with the gateway calls the sandbox recorded.

    ``not_charged``: the charge-failed emails of mailboxes that were never charged (no intent).
    """
    delivery, work = summary.delivery, summary.charges
    lines = [f"ran the daily job for {summary.business_date}: examined {summary.scan.examined} mailboxes"]
    lines.append(
        f"  sent {delivery.sent} emails (deferred {delivery.deferred}, bounced {delivery.bounced},"
        f" failed {delivery.failed}):"
    )
    for (kind, stage), emails in sorted(delivery.sent_by_kind.items()):
        lines.append(f"    {kind:<22} {stage:>5}  {emails} emails")
    lines.append(f"  skipped: {dict(sorted(summary.scan.skipped.items()))}")
    if work.examined:
        outcomes = ", ".join(f"{outcome} {count}" for outcome, count in sorted(work.outcomes.items()))
        lines.append(f"  auto-renew charge work: {work.examined} mailboxes ({outcomes})")
        lines.append(f"    gateway calls: {work.charges} (the gateway's own record: pec-renewal sandbox charges)")
        if not_charged:
            lines.append(f"    {not_charged} charge-failed without any charge attempt: their charge days had")
            lines.append("    passed before the fleet was imported; each holder got an unpaid renewal order")
    return lines


def _maildir_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return set(maildir_module.Maildir(path, create=False).keys())
