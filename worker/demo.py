"""``pec-renewal demo``: a sample fleet in ./var, imported and run through today's job."""

from __future__ import annotations

import csv
import mailbox as maildir_module
import random
from collections.abc import Callable
from datetime import date, timedelta
from email.header import decode_header, make_header
from pathlib import Path

from stdnum import luhn
from stdnum.it import codicefiscale

from worker.runtime import Runtime
from worker.schedule import add_months

FIRST_NAMES = ["Mario", "Giulia", "Luca", "Francesca", "Marco", "Chiara", "Alessandro", "Sara", "Davide", "Elena"]
LAST_NAMES = ["Rossi", "Bianchi", "Russo", "Ferrari", "Esposito", "Romano", "Colombo", "Ricci", "Marino", "Greco"]
COMPANIES = ["Edilizia Verdi", "Studio Neri", "Trasporti Galli", "Ottica Conti", "Panificio Bruno", "Farmacia Costa"]

COLUMNS = [
    "address", "account", "holder_name", "holder_kind", "reference_email", "plan", "expires_on",
    "domain", "domain_expires_on", "auto_renew", "payment_method", "card_expiry", "renewal_years", "promo",
    "extra_space_gb", "extra_archive_gb", "used_space_mb", "tax_code", "vat_number", "einvoice_code", "language",
]


def _vat(rng: random.Random) -> str:
    """A partita IVA that passes its checks: 7 digits, a provincial office code, a Luhn digit."""
    body = f"{rng.randrange(10**6, 10**7):07d}{rng.randrange(1, 101):03d}"
    return body + luhn.calc_check_digit(body)


def _personal_tax_code(rng: random.Random) -> str:
    letters = "BCDFGLMNPRSTVZ"
    body = (
        "".join(rng.choice(letters) for _ in range(6))
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
        ("m", 3), ("m", 2), ("m", 1), ("d", 15), ("d", 7), ("d", 1), ("d", 0),
        ("d", -1), ("d", -30), ("d", -60), ("d", -83), ("d", -95), ("d", 40), ("d", 200),
    ]
    rows = []
    for number in range(count):
        unit, amount = offsets[number % len(offsets)]
        expires_on = add_months(today, amount) if unit == "m" else today + timedelta(days=amount)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        kind = rng.choice(["private", "private", "private", "company", "sole_proprietor", "professional"])
        # Every fifth holder has several mailboxes under one reference address.
        owner = number - number % 3 if number % 5 == 0 else number
        row = dict.fromkeys(COLUMNS, "")
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
            row["tax_code"] = _personal_tax_code(rng)
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
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_demo(rt: Runtime, count: int, echo: Callable[[str], None]) -> None:
    from worker.daily import run_day
    from worker.importer import import_mailboxes
    from worker.migrate import upgrade

    settings = rt.settings
    if not settings.is_embedded:
        raise SystemExit("pec-renewal: the demo only runs on the embedded SQLite database; unset PEC_RENEWAL_DATABASE_URL")
    upgrade(settings.database_url)
    today = rt.today()
    csv_path = settings.var_dir / "demo" / "mailboxes.csv"
    write_csv(sample_rows(count, today), csv_path)
    report = import_mailboxes(rt.session_factory, csv_path, stages=settings.notice_stages)
    echo(f"imported {report.rows} sample mailboxes from {csv_path} ({report.created} new, {report.updated} updated)")
    maildir_before = _maildir_keys(settings.maildir) if settings.mail_backend == "maildir" else set()
    summary = run_day(rt, today)
    echo(f"ran the daily job for {today}: examined {summary.scan.examined} mailboxes")
    for (kind, stage), emails in sorted(summary.scan.emails.items()):
        echo(f"  {kind:<22} {stage:>5}  {emails} emails")
    echo(f"  skipped: {dict(sorted(summary.scan.skipped.items()))}")
    echo(f"  delivered: {summary.delivery.sent} sent, {summary.delivery.deferred} deferred, {summary.delivery.bounced} bounced")
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


def _maildir_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return set(maildir_module.Maildir(path, create=False).keys())
