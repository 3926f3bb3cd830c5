"""Bank statements: the bank transfers of a statement (CSV) matched to orders and registered.

Bank statement CSV (UTF-8, a header row, comma or semicolon separated):

=============  ==========================================================
``date``       the value date: ``2027-03-31`` or ``31/03/2027``
``amount``     the credit in euro: ``48.80``, ``48,80``, ``1.234,56`` or
               ``1,234.56`` (an optional ``€`` / ``EUR``); a debit
               (negative amount) is skipped
``reference``  the payment reference (causale) as the bank shows it; the
               order number ``PEC-2027-000123`` is found anywhere in it
``id``         optional: the bank's transaction id (CRO / TRN); when given
               it is the payment's reference for idempotency, else the
               date and the reference text are
=============  ==========================================================

Header names are case-insensitive, and the Italian ``data``, ``data valuta``,
``importo``, ``causale`` and ``descrizione`` are accepted.  Other columns are
ignored.  Lines that match no order, match several, or
carry the wrong amount are reported and change nothing.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import IO

from sqlalchemy.orm import Session

from config.settings import Settings
from worker.rules.schedule import Stage
from worker.rules.vocabulary import BANK_TRANSFER
from worker.services.payments.registration import PaymentRefused, register_payment

ORDER_NUMBER_RE = re.compile(r"PEC-(\d{4})-(\d{6,})", re.IGNORECASE)


def parse_euro(text: str) -> int:
    """Euro cents from ``48.80``, ``48,80``, ``48``, ``1.234,56``, ``1,234.56``, ``€ 48,80``, ``48.80 EUR``.

    ValueError for anything else (more than 2 decimals, letters, empty).  A
    leading ``-`` gives a negative amount.
    """
    value = text.strip().replace("\u00a0", " ")
    value = re.sub(r"(?i)^(eur|€)\s*|\s*(eur|€)$", "", value).strip().replace(" ", "")
    negative = value.startswith("-")
    if value[:1] in "+-":
        value = value[1:]
    if not value:
        raise ValueError(f"{text!r} is not an amount in euro")
    match = re.fullmatch(r"(\d{1,3}(?:([.,])\d{3})*|\d+)(?:([.,])(\d{1,2}))?", value)
    if not match:
        raise ValueError(f"{text!r} is not an amount in euro such as 48.80 or 48,80")
    whole, thousands, decimal, cents = match.groups()
    # With thousands separators the decimals must follow with the other one ("1.234,56"):
    # "1.234" alone could be 1234 euro or a mistyped 1.23, and money is not guessed.
    if thousands and (decimal is None or decimal == thousands):
        raise ValueError(f"{text!r} is ambiguous: write 1234.56, 1234,56, 1.234,56 or 1,234.56")
    euros = int(whole.replace(".", "").replace(",", "")) if thousands else int(whole)
    amount = euros * 100 + (int(cents.ljust(2, "0")) if cents else 0)
    return -amount if negative else amount


def find_order_numbers(reference: str) -> list[str]:
    """The distinct order numbers in a payment reference, normalised (``PEC-2027-000123``)."""
    found = []
    for year, number in ORDER_NUMBER_RE.findall(reference):
        value = f"PEC-{year}-{number}"
        if value not in found:
            found.append(value)
    return found


REGISTERED = "registered"
ALREADY_REGISTERED = "already_registered"
UNMATCHED = "unmatched"
WRONG_AMOUNT = "wrong_amount"
REFUSED = "refused"
INVALID = "invalid"
SKIPPED = "skipped"


@dataclass(frozen=True)
class BankLineResult:
    line: int  # the record number, the header being line 1
    status: str  # one of the constants above
    message: str
    order_number: str | None = None
    amount_cents: int | None = None


@dataclass
class BankImportReport:
    lines: list[BankLineResult] = field(default_factory=list)

    @property
    def counts(self) -> Counter:
        return Counter(result.status for result in self.lines)

    @property
    def problems(self) -> list[BankLineResult]:
        return [result for result in self.lines if result.status not in (REGISTERED, ALREADY_REGISTERED, SKIPPED)]


class BankStatementInvalid(Exception):
    """The file itself cannot be read as a statement (no header, missing columns)."""


def _parse_bank_date(text: str) -> date:
    value = text.strip()
    match = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", value)
    if match:
        day, month, year = (int(part) for part in match.groups())
        return date(year, month, day)
    return date.fromisoformat(value)


def _open_text(source: str | Path | IO[str] | IO[bytes]) -> IO[str]:
    if isinstance(source, (str, Path)):
        return open(source, encoding="utf-8-sig", newline="")
    if isinstance(source, io.TextIOBase):
        return source
    # A binary file object is what TextIOWrapper wraps; typeshed types its argument as a narrower
    # buffer protocol than IO[bytes], which every binary file object here provides.
    return io.TextIOWrapper(source, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]


#: Italian headers, as Italian banks export them.
_COLUMN_ALIASES = {
    "data": "date",
    "data valuta": "date",
    "importo": "amount",
    "causale": "reference",
    "descrizione": "reference",
}


def read_bank_statement(source: str | Path | IO[str] | IO[bytes]) -> Iterable[tuple[int, dict[str, str]]]:
    """The statement's records as ``(line number, {column: value})``, columns lower-cased."""
    handle = _open_text(source)
    try:
        text = handle.read()
    finally:
        if isinstance(source, (str, Path)):
            handle.close()
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise BankStatementInvalid("the statement is empty: it needs a header row date,amount,reference")
    columns = [_COLUMN_ALIASES.get(name.strip().lower(), name.strip().lower()) for name in header]
    missing = [name for name in ("date", "amount", "reference") if name not in columns]
    if missing:
        raise BankStatementInvalid(f"the header lacks the column(s) {', '.join(missing)} (date,amount,reference[,id])")
    records = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        records.append((number, {name: (row[index] if index < len(row) else "") for index, name in enumerate(columns)}))
    return records


def import_bank_statement(
    session: Session,
    source: str | Path | IO[str] | IO[bytes],
    *,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None = None,
) -> BankImportReport:
    """Register the bank transfers of a statement; see the module's docstring for the columns.

    Each line is matched to an order by the order number in its reference and
    registered with :func:`register_payment` (method ``bank_transfer``) in its
    own savepoint: a refused line changes nothing and the others go on.
    Importing the same statement again registers nothing more.  Raises
    :class:`BankStatementInvalid` when the file is not a statement at all.
    The caller commits.
    """
    report = BankImportReport()
    for number, record in read_bank_statement(source):
        report.lines.append(
            _register_bank_line(session, number, record, now=now, today=today, settings=settings, stages=stages)
        )
    return report


def _register_bank_line(
    session: Session,
    number: int,
    record: dict[str, str],
    *,
    now: datetime,
    today: date,
    settings: Settings,
    stages: tuple[Stage, ...] | None,
) -> BankLineResult:
    """One line of a statement, registered in its own savepoint, or why not."""
    reference_text = " ".join(record.get("reference", "").split())
    try:
        amount = parse_euro(record.get("amount", ""))
        value_date = _parse_bank_date(record.get("date", ""))
    except ValueError as error:
        return BankLineResult(number, INVALID, str(error))
    if amount <= 0:
        return BankLineResult(number, SKIPPED, "not a credit", amount_cents=amount)
    found = find_order_numbers(reference_text)
    if not found:
        return BankLineResult(
            number, UNMATCHED, f"no order number in the reference {reference_text!r}", amount_cents=amount
        )
    if len(found) > 1:
        return BankLineResult(
            number, UNMATCHED, f"several order numbers in the reference: {', '.join(found)}", amount_cents=amount
        )
    bank_id = (record.get("id") or "").strip()
    payment_reference = f"bank:{bank_id}" if bank_id else f"bank:{value_date.isoformat()}:{reference_text}"
    try:
        with session.begin_nested():
            result = register_payment(
                session,
                order_number=found[0],
                amount_cents=amount,
                method=BANK_TRANSFER,
                reference=payment_reference,
                now=now,
                today=today,
                settings=settings,
                stages=stages,
            )
    except PaymentRefused as refused:
        status = {"unknown_order": UNMATCHED, "wrong_amount": WRONG_AMOUNT}.get(refused.code, REFUSED)
        return BankLineResult(number, status, str(refused), found[0], amount)
    if not result.registered:
        return BankLineResult(number, ALREADY_REGISTERED, f"{found[0]}: already registered", found[0], amount)
    renewed = ", ".join(f"{item.address} to {item.new_expires_on}" for item in result.renewed)
    return BankLineResult(number, REGISTERED, f"{found[0]} paid: renewed {renewed}", found[0], amount)
